"""Multi-query associative recall (MQAR): data, a small trainer and an evaluator.

The data follow the Zoology protocol (Arora et al. 2023, "Zoology: Measuring
and Improving Recall in Efficient Language Models", arXiv:2312.04927, and its
reference generator ``zoology/data/multiquery_ar.py``). An example of
``seq_len`` tokens is::

    k1 v1 k2 v2 ... kP vP | 0 0 kq 0 0 0 kr 0 ...
    \\_____ P pairs _____/  \\__ queries at even offsets of the query region __/

- keys come from the lower half of the vocabulary, ``1 .. vocab_size//2 - 1``,
  and are distinct within an example; values come from the upper half,
  ``vocab_size//2 .. vocab_size - 1``, and are distinct within an example;
- token 0 is the padding token: it is in the key half but is never a key, so
  a pad can never be mistaken for a query;
- every query is a distinct key of the example, placed after all pairs at
  offset ``2 * gap`` of the query region. The gaps are drawn without
  replacement from Zoology's power law ``p(gap) ~ gap**(power_a - 1)``, so a
  small ``power_a`` puts most queries close to the pairs;
- the label at a query position is that key's value (the next token the
  model must produce); every other label is -100.

The trainer and evaluator work with any causal LM whose call
``model(input_ids, labels=labels)`` returns an object with ``.logits``
``(B, T, vocab)`` and ``.loss``, shifted as in transformers: the logit at
position ``t`` predicts the token at ``t + 1``. Because MQAR labels the query
position itself, the trainer passes ``labels`` shifted right by one so that
the model's own shift lines them up again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "IGNORE_INDEX",
    "PAD_TOKEN_ID",
    "MQARBatch",
    "MQARConfig",
    "TrainResult",
    "VALIDATION_SEED",
    "evaluate_mqar",
    "generate_mqar",
    "mqar_accuracy",
    "train_mqar",
]

IGNORE_INDEX = -100
PAD_TOKEN_ID = 0


@dataclass(frozen=True)
class MQARConfig:
    """Shape of an MQAR task.

    Attributes:
        vocab_size: tokens in the vocabulary; the lower half contains the keys
            (and the pad token 0), the upper half the values.
        seq_len: tokens per example.
        num_kv_pairs: P, key-value pairs per example.
        num_queries: Q, queries per example (distinct keys); ``None`` means P.
        power_a: exponent of the power law of query gaps; 1.0 is uniform.
    """

    vocab_size: int = 64
    seq_len: int = 32
    num_kv_pairs: int = 2
    num_queries: int | None = None
    power_a: float = 0.01

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "num_kv_pairs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_queries is None:
            object.__setattr__(self, "num_queries", self.num_kv_pairs)
        queries = self.num_queries
        if isinstance(queries, bool) or not isinstance(queries, int) or not 1 <= queries <= self.num_kv_pairs:
            raise ValueError(
                f"num_queries must be an integer in [1, num_kv_pairs={self.num_kv_pairs}], got {queries!r}"
            )
        if not isinstance(self.power_a, (int, float)) or not 0.0 < self.power_a <= 1.0:
            raise ValueError(f"power_a must be in (0, 1], got {self.power_a!r}")

        num_keys = self.vocab_size // 2 - 1  # token 0 is the pad
        num_values = self.vocab_size - self.vocab_size // 2
        if self.num_kv_pairs > min(num_keys, num_values):
            raise ValueError(
                f"vocab_size={self.vocab_size} has {num_keys} key tokens and {num_values} value tokens, "
                f"too few for num_kv_pairs={self.num_kv_pairs} distinct pairs; "
                f"use vocab_size >= {2 * self.num_kv_pairs + 2}"
            )
        if self.num_query_slots < queries:
            raise ValueError(
                f"seq_len={self.seq_len} leaves {self.num_query_slots} query slots after "
                f"{self.num_kv_pairs} pairs, too few for num_queries={queries}; "
                f"use seq_len >= {2 * self.num_kv_pairs + 2 * queries}"
            )

    @property
    def context_len(self) -> int:
        """Tokens taken by the key-value pairs."""
        return 2 * self.num_kv_pairs

    @property
    def num_query_slots(self) -> int:
        """Positions a query may take: the even offsets of the query region."""
        return (self.seq_len - self.context_len) // 2


@dataclass(frozen=True)
class MQARBatch:
    """A batch of MQAR examples.

    Attributes:
        input_ids: ``(B, T)`` int64 tokens.
        labels: ``(B, T)`` int64; the value token at each query position, -100 elsewhere.
        keys: ``(B, P)`` the keys in the order they appear.
        values: ``(B, P)`` the value stored under each key.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor

    def to(self, device: torch.device | str) -> MQARBatch:
        return MQARBatch(*(tensor.to(device) for tensor in (self.input_ids, self.labels, self.keys, self.values)))


def _distinct_samples(num_rows: int, population: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` distinct integers in ``[0, population)`` per row: ``(num_rows, size)``."""
    scores = torch.rand(num_rows, population, generator=generator)  # (B, population)
    return scores.argsort(dim=-1)[:, :size]


def generate_mqar(config: MQARConfig, num_examples: int, seed: int = 0) -> MQARBatch:
    """Generate ``num_examples`` MQAR examples; the same seed gives the same batch."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
    generator = torch.Generator().manual_seed(seed)
    B, T, P, Q = num_examples, config.seq_len, config.num_kv_pairs, config.num_queries
    key_start, value_start = 1, config.vocab_size // 2

    # Pairs: distinct keys and distinct values per example.
    keys = _distinct_samples(B, value_start - key_start, P, generator) + key_start  # (B, P)
    values = _distinct_samples(B, config.vocab_size - value_start, P, generator) + value_start  # (B, P)
    input_ids = torch.full((B, T), PAD_TOKEN_ID, dtype=torch.long)
    input_ids[:, 0 : 2 * P : 2] = keys
    input_ids[:, 1 : 2 * P : 2] = values

    # Queries: Q distinct pairs, asked at distinct power-law gaps.
    asked = _distinct_samples(B, P, Q, generator)  # (B, Q)
    slots = torch.arange(1, config.num_query_slots + 1, dtype=torch.float64)
    gap_probs = config.power_a * slots ** (config.power_a - 1)  # (slots,)
    gaps = torch.multinomial(gap_probs.expand(B, -1), Q, replacement=False, generator=generator)  # (B, Q)
    positions = config.context_len + 2 * gaps  # (B, Q)

    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    input_ids.scatter_(1, positions, keys.gather(1, asked))
    labels.scatter_(1, positions, values.gather(1, asked))
    return MQARBatch(input_ids=input_ids, labels=labels, keys=keys, values=values)


# ---------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------


def _model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _shift_for_causal_loss(labels: torch.Tensor) -> torch.Tensor:
    """Shift labels right by one so a model that predicts ``t + 1`` from ``t`` scores the query position."""
    shifted = torch.full_like(labels, IGNORE_INDEX)  # (B, T)
    shifted[:, 1:] = labels[:, :-1]
    return shifted


def mqar_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Count correct predictions and labelled positions: argmax of ``logits (B, T, V)`` at positions where ``labels (B, T)`` is set."""
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (B, T)")
    answered = labels != IGNORE_INDEX  # (B, T)
    predictions = logits.argmax(dim=-1)  # (B, T)
    correct = (predictions[answered] == labels[answered]).sum().item()
    return int(correct), int(answered.sum().item())


@dataclass
class TrainResult:
    """Record of a training run.

    Attributes:
        losses: training loss of each step.
        steps: steps run (fewer than requested when cancelled or stopped at the target).
        seconds: wall time of the run.
        cancelled: whether ``cancel`` stopped the run early.
        validation: ``(step, accuracy)`` of each check against ``target_accuracy``.
        reached_target: whether training stopped because it reached ``target_accuracy``.
    """

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    cancelled: bool = False
    validation: list[tuple[int, float]] = field(default_factory=list)
    reached_target: bool = False


VALIDATION_SEED = -2
"""Seed of the held-out examples that early stopping scores; training uses seeds >= 0, ``evaluate_mqar`` -1."""


def train_mqar(
    model: torch.nn.Module,
    config: MQARConfig,
    *,
    steps: int,
    batch_size: int,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup_steps: int | None = None,
    max_grad_norm: float = 1.0,
    seed: int = 0,
    target_accuracy: float | None = None,
    check_every: int = 50,
    check_examples: int = 256,
    progress: Callable[[int, int, float], None] | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Train ``model`` on fresh MQAR batches with AdamW and a cosine schedule.

    Every step draws a new batch, seeded by ``seed`` and the step, so the
    run never cycles through a fixed training set. The learning rate warms up
    linearly for ``warmup_steps`` (default: 10% of ``steps``) and then
    decays to zero on a cosine over all ``steps``.

    With ``target_accuracy`` set, the run scores ``check_examples`` held-out
    examples every ``check_every`` steps and stops once their accuracy
    reaches the target, as Zoology's trainer stops at a validation accuracy
    of 0.99. The schedule still spans ``steps``, so stopping early never
    changes the learning rate of the steps that ran.

    Args:
        model: a causal LM, see the module docstring; trained in place.
        config: the task.
        steps: optimiser steps.
        batch_size: examples per step.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: steps of linear warm-up.
        max_grad_norm: gradient clipping threshold.
        seed: seed of the training data.
        target_accuracy: stop once held-out accuracy reaches this; ``None`` trains every step.
        check_every: steps between held-out scores when ``target_accuracy`` is set.
        check_examples: held-out examples per score, the same ones each time (``VALIDATION_SEED``).
        progress: called as ``progress(step, steps, loss)`` after each step.
        cancel: when set, training stops after the current step.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    warmup_steps = max(1, steps // 10) if warmup_steps is None else warmup_steps
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if target_accuracy is not None:
        is_number = isinstance(target_accuracy, (int, float)) and not isinstance(target_accuracy, bool)
        if not is_number or not 0.0 < target_accuracy <= 1.0:
            raise ValueError(f"target_accuracy must be a number in (0, 1], got {target_accuracy!r}")
        for name, value in (("check_every", check_every), ("check_examples", check_examples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab_size is not None and vocab_size < config.vocab_size:
        raise ValueError(
            f"the model's vocab_size={vocab_size} is smaller than the task's vocab_size={config.vocab_size}"
        )

    device = _model_device(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress_fraction = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress_fraction))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    result = TrainResult()
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        if cancel is not None and cancel.is_set():
            result.cancelled = True
            logger.info("MQAR training cancelled after %d of %d steps", step, steps)
            break

        # Data seeds never overlap with evaluate_mqar's default seed range.
        batch = generate_mqar(config, batch_size, seed=seed * 1_000_003 + step).to(device)
        output = model(batch.input_ids, labels=_shift_for_causal_loss(batch.labels))
        loss = output.loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"MQAR training loss became {loss.item()} at step {step}; lower lr={lr}")

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()

        result.losses.append(loss.item())
        result.steps = step + 1
        if progress is not None:
            progress(step + 1, steps, result.losses[-1])
        if target_accuracy is not None and (step + 1) % check_every == 0:
            accuracy = evaluate_mqar(model, config, num_examples=check_examples, seed=VALIDATION_SEED)
            result.validation.append((step + 1, accuracy))
            if accuracy >= target_accuracy:
                result.reached_target = True
                logger.info("MQAR training reached accuracy %.3f at step %d of %d", accuracy, step + 1, steps)
                break

    model.eval()
    result.seconds = time.perf_counter() - started
    return result


@torch.no_grad()
def evaluate_mqar(
    model: torch.nn.Module,
    config: MQARConfig,
    *,
    num_examples: int = 1000,
    batch_size: int = 250,
    seed: int = -1,
) -> float:
    """Accuracy at the answer positions of ``num_examples`` held-out examples.

    The default seed -1 is outside the seeds ``train_mqar`` draws from for
    ``seed >= 0``, so training and evaluation examples come from different
    random streams.
    """
    for name, value in (("num_examples", num_examples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    data = generate_mqar(config, num_examples, seed=seed)
    correct = total = 0
    for start in range(0, num_examples, batch_size):
        input_ids = data.input_ids[start : start + batch_size].to(device)  # (b, T)
        labels = data.labels[start : start + batch_size].to(device)  # (b, T)
        logits = model(input_ids).logits  # (b, T, V)
        # The logit at t predicts token t + 1, which is the value stored under the query key at t.
        batch_correct, batch_total = mqar_accuracy(logits, labels)
        correct += batch_correct
        total += batch_total
    model.train(was_training)
    return correct / total
