"""Claim 2: HydraLM recalls as accurately as a dense Transformer on MQAR.

Reference gate: both models trained from scratch on multi-query associative
recall (2000 steps, batch 32, seq_len 32, 2 key-value pairs, 1 query,
vocab 64). The Transformer's accuracy must exceed 0.5, and HydraLM's must be
at least 0.9 of it. With 2 pairs a model that outputs either stored value
scores 0.5, so this setting separates little.

Measured twin: a harder setting (at the paper budget 8 pairs, seq_len 64,
vocab 64, every key queried as in Zoology) in which the dense Transformer
must reach >= 0.9. Its gate is only that the Transformer learns the task,
which makes the setting a valid comparison; HydraLM's accuracy and ratio are
reported as measured, whether HydraLM wins or loses there. The models are
wider than the reference pair and the Transformer has one attention head.
Zoology's attention baseline has one head too, as wide as the model; here
it is 16 wide, which left the plateau sooner than a head of 128 in the runs
made. Each model stops training once it reaches Zoology's early-stopping
accuracy, so the check costs what the slower learner needs rather than a
fixed number of steps.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import torch

from hydralm.claims.budgets import Budget, MQARSetting
from hydralm.claims.measure import torch_threads
from hydralm.claims.runner import Check, CheckCancelled, CheckContext, Verdict

logger = logging.getLogger(__name__)

DENSE_ACCURACY_MIN = 0.5
RATIO_MIN = 0.9
HARD_DENSE_ACCURACY_MIN = 0.9

ModelFactory = Callable[[int], torch.nn.Module]
"""Builds a fresh model for a vocabulary size."""


def train_pair(
    make_hydra: ModelFactory,
    make_dense: ModelFactory,
    setting: MQARSetting,
    ctx: CheckContext,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train HydraLM and the dense Transformer on `setting` at the same time, one thread each.

    The two runs share nothing but the task and its batches, so on a 2-core
    machine each gets a core, with one torch intra-op thread. Both models are
    built first, each right after seeding torch with `seed`, so a run is
    reproducible. `train_seconds` in each record is wall time while
    the other run shares the machine. Returns the records of (HydraLM,
    Transformer).
    """
    torch.manual_seed(seed)
    hydra_model = make_hydra(setting.vocab_size)
    torch.manual_seed(seed)
    dense_model = make_dense(setting.vocab_size)

    steps_done = {"HydraLM": 0, "Transformer": 0}
    lock = threading.Lock()
    failed = threading.Event()

    def run(model: torch.nn.Module, label: str) -> dict[str, Any]:
        def report(step: int, steps: int, loss: float) -> None:
            with lock:
                steps_done[label] = step
                fraction = sum(steps_done.values()) / (2 * steps)
                ctx.step(fraction, f"{label}: step {step} of {steps}, loss {loss:.3f}")

        try:
            record = _train(model, setting, ctx, report, seed, stop=failed)
        except BaseException:
            failed.set()  # the other run stops at its next step instead of training to the end
            raise
        with lock:
            # A run that stopped at the target is done: count its unused steps.
            steps_done[label] = setting.steps
        return record

    with torch_threads(1), ThreadPoolExecutor(max_workers=2, thread_name_prefix="mqar") as pool:
        hydra_run = pool.submit(run, hydra_model, "HydraLM")
        dense_run = pool.submit(run, dense_model, "Transformer")
        return hydra_run.result(), dense_run.result()


def _train(
    model: torch.nn.Module,
    setting: MQARSetting,
    ctx: CheckContext,
    report: Callable[[int, int, float], None],
    seed: int,
    stop: threading.Event,
) -> dict[str, Any]:
    """Train `model` on `setting`, then score it; `report` gets every twentieth step.

    Raises `CheckCancelled` at the next step once `ctx` is cancelled or `stop` is set.
    """
    from hydralm.mqar import MQARConfig, evaluate_mqar, train_mqar

    task = MQARConfig(
        vocab_size=setting.vocab_size,
        seq_len=setting.seq_len,
        num_kv_pairs=setting.num_kv_pairs,
        num_queries=setting.num_queries,
    )
    report_every = max(1, setting.steps // 20)

    def on_step(step: int, steps: int, loss: float) -> None:
        ctx.raise_if_cancelled()
        if stop.is_set():
            raise CheckCancelled(ctx.name)
        if step % report_every == 0 or step == steps:
            report(step, steps, loss)

    record = train_mqar(
        model,
        task,
        steps=setting.steps,
        batch_size=setting.batch_size,
        lr=setting.learning_rate,
        seed=seed,
        target_accuracy=setting.target_accuracy,
        progress=on_step,
    )
    accuracy = evaluate_mqar(model, task, num_examples=setting.eval_examples)
    return {
        "accuracy": accuracy,
        "final_loss": record.losses[-1] if record.losses else float("nan"),
        "steps_trained": record.steps,
        "reached_target": record.reached_target,
        "train_seconds": round(record.seconds, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _default_factories(
    setting: MQARSetting, make_hydra: ModelFactory | None, make_dense: ModelFactory | None
) -> tuple[ModelFactory, ModelFactory]:
    """Return the given factories, or the claim subjects in `setting`'s shape for those not given."""
    from hydralm.claims import subjects

    shape = {
        "hidden_size": setting.hidden_size,
        "intermediate_size": setting.intermediate_size,
        "head_dim": setting.head_dim,
    }

    def hydra(vocab_size: int) -> torch.nn.Module:
        return subjects.make_mqar_hydra(vocab_size, num_heads=setting.hydra_heads, **shape)

    def dense(vocab_size: int) -> torch.nn.Module:
        return subjects.make_mqar_dense(vocab_size, num_heads=setting.dense_heads, **shape)

    return make_hydra or hydra, make_dense or dense


def _setting_dict(setting: MQARSetting) -> dict[str, Any]:
    return {
        "vocab_size": setting.vocab_size,
        "seq_len": setting.seq_len,
        "num_kv_pairs": setting.num_kv_pairs,
        "num_queries": setting.num_queries,
        "steps": setting.steps,
        "batch_size": setting.batch_size,
        "learning_rate": setting.learning_rate,
        "eval_examples": setting.eval_examples,
        "hidden_size": setting.hidden_size,
        "intermediate_size": setting.intermediate_size,
        "hydra_head_dim": setting.head_dim or setting.hidden_size // setting.hydra_heads,
        "dense_head_dim": setting.head_dim or setting.hidden_size // setting.dense_heads,
        "hydra_heads": setting.hydra_heads,
        "dense_heads": setting.dense_heads,
        "target_accuracy": setting.target_accuracy,
        "gated_model": setting.gated_model,
        "stored_value_guess_accuracy": 1.0 / setting.num_kv_pairs,
    }


def check_reference(
    budget: Budget,
    ctx: CheckContext,
    *,
    make_hydra: ModelFactory | None = None,
    make_dense: ModelFactory | None = None,
) -> Verdict:
    """Train both models on the reference MQAR setting and compare their accuracy."""
    setting = budget.mqar
    hydra, dense = train_pair(*_default_factories(setting, make_hydra, make_dense), setting, ctx)
    ratio = hydra["accuracy"] / dense["accuracy"] if dense["accuracy"] > 0 else 0.0
    gated = {"dense": dense, "hydra": hydra}[setting.gated_model]
    passed = gated["accuracy"] > DENSE_ACCURACY_MIN and ratio >= RATIO_MIN
    notes = (
        f"Both trained from scratch for {setting.steps} steps of batch {setting.batch_size} with AdamW "
        f"(peak lr {setting.learning_rate:g}), then scored on {setting.eval_examples} held-out examples. "
        f"Outputting either stored value would score {1 / setting.num_kv_pairs:.2f} here."
    )
    if setting.gated_model == "hydra":
        notes += (
            " At this budget the dense Transformer gets too few steps to leave the plateau at which it picks "
            "one of the stored values, so the accuracy gate applies to HydraLM; the paper budget applies it "
            "to the Transformer, as the reference run does."
        )
    return Verdict(
        passed=passed,
        thresholds={
            f"{setting.gated_model}_accuracy_greater_than": DENSE_ACCURACY_MIN,
            "hydra_over_dense_min": RATIO_MIN,
        },
        measured={"setting": _setting_dict(setting), "hydra": hydra, "dense": dense, "hydra_over_dense": ratio},
        notes=notes,
        summary=f"{hydra['accuracy']:.3f} vs {dense['accuracy']:.3f} (ratio {ratio:.2f})",
    )


def check_harder(
    budget: Budget,
    ctx: CheckContext,
    *,
    make_hydra: ModelFactory | None = None,
    make_dense: ModelFactory | None = None,
) -> Verdict:
    """Train both models on the budget's harder MQAR setting and report both accuracies."""
    setting = budget.mqar_hard
    if setting is None:
        raise ValueError(f"budget {budget.name!r} has no harder MQAR setting; run it at the paper budget")
    hydra, dense = train_pair(*_default_factories(setting, make_hydra, make_dense), setting, ctx)
    ratio = hydra["accuracy"] / dense["accuracy"] if dense["accuracy"] > 0 else 0.0
    passed = dense["accuracy"] >= HARD_DENSE_ACCURACY_MIN
    guess = 1 / setting.num_kv_pairs
    if passed:
        verdict_on_hydra = "reaches" if ratio >= RATIO_MIN else "falls short of"
        validity = (
            "The Transformer learned the task, so the setting is a valid comparison: "
            f"HydraLM {verdict_on_hydra} the reference ratio of {RATIO_MIN} here (ratio {ratio:.2f})."
        )
    else:
        validity = (
            f"The Transformer did not learn the task in {dense['steps_trained']} steps "
            f"(accuracy {dense['accuracy']:.3f}; picking any stored value scores {guess:.3f}), "
            f"so the setting is not a valid comparison here and HydraLM's {hydra['accuracy']:.3f} is not compared."
        )
    return Verdict(
        passed=passed,
        thresholds={
            "dense_accuracy_min": HARD_DENSE_ACCURACY_MIN,
            "hydra_over_dense": f"reported, not gated (the reference ratio gate is {RATIO_MIN})",
        },
        measured={"setting": _setting_dict(setting), "hydra": hydra, "dense": dense, "hydra_over_dense": ratio},
        notes=(
            f"{setting.num_kv_pairs} pairs, seq_len {setting.seq_len}, vocab {setting.vocab_size}, "
            f"{setting.num_queries} queries per example: outputting any stored value would score {guess:.3f}. "
            f"{_recipe(setting, hydra, dense)} HydraLM trained {hydra['steps_trained']} steps, "
            f"the Transformer {dense['steps_trained']}. "
            f"The gate asks only that the Transformer learns the task (>= {HARD_DENSE_ACCURACY_MIN}). {validity}"
        ),
        summary=f"HydraLM {hydra['accuracy']:.3f} vs Transformer {dense['accuracy']:.3f}",
    )


def _recipe(setting: MQARSetting, hydra: dict[str, Any], dense: dict[str, Any]) -> str:
    """Describe the models (from their training records) and the training of `setting`."""
    described = _setting_dict(setting)
    dense_heads = "head" if setting.dense_heads == 1 else "heads"
    text = (
        f"Both models have width {setting.hidden_size}. HydraLM has {setting.hydra_heads} heads of "
        f"{described['hydra_head_dim']} ({max(1, setting.hydra_heads // 2)} key-value heads in its attention layer) "
        f"and {hydra['parameters']:,} parameters; the Transformer has {setting.dense_heads} {dense_heads} of "
        f"{described['dense_head_dim']} and {dense['parameters']:,} parameters (its MLP is sized to match a HydraLM "
        f"with {setting.dense_heads} {dense_heads}). Each trains from scratch for up to {setting.steps} steps of batch "
        f"{setting.batch_size} (AdamW, peak lr {setting.learning_rate:g}, linear warm-up over the first tenth, "
        f"then cosine decay to zero at step {setting.steps})."
    )
    if setting.target_accuracy is None:
        return text
    return text + f" Each stops once held-out accuracy reaches {setting.target_accuracy:g}, as Zoology's trainer does."


CHECKS = [
    Check(name="mqar_recall", title="MQAR accuracy, reference setting", claim=2, kind="measured", run=check_reference),
    Check(
        name="mqar_recall_hard",
        title="MQAR accuracy, harder setting",
        claim=2,
        kind="measured",
        run=check_harder,
        applies=lambda budget: budget.mqar_hard is not None,
    ),
]
