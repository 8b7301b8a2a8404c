"""Sampling settings and a streaming token generator over the recurrent state."""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from hydralm.model import HydraLM
from hydralm.state import HydraState

logger = logging.getLogger(__name__)


class CancelFlag(Protocol):
    """Anything with `is_set()`, such as `threading.Event`."""

    def is_set(self) -> bool: ...


@dataclass
class SamplingSettings:
    """Settings for choosing the next token.

    Attributes:
        temperature: 0 for greedy decoding, > 0 to sample from softmax(logits / temperature).
        top_k: keep the k most likely tokens; 0 keeps all.
        top_p: keep the smallest set of tokens whose probability reaches top_p; 1 keeps all.
        repetition_penalty: > 1 makes tokens already in the prompt or output
            less likely (positive logits are divided by it, negative ones multiplied).
        max_new_tokens: maximum number of tokens to generate.
        seed: seed of the sampling generator; None draws from torch's global generator.
    """

    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting."""
        if not isinstance(self.temperature, (int, float)) or not self.temperature >= 0:
            raise ValueError(f"temperature must be a number >= 0 (0 is greedy), got {self.temperature!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p!r}")
        if not isinstance(self.repetition_penalty, (int, float)) or not self.repetition_penalty > 0:
            raise ValueError(
                f"repetition_penalty must be a number > 0 (1 disables it), got {self.repetition_penalty!r}"
            )
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Penalise the tokens in `seen` (1-D ids) in logits (V,), as transformers does."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    scores = logits.gather(0, seen)
    scores = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits.scatter(0, seen, scores)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits (V,) outside the top-k / nucleus to -inf; the best token is always kept."""
    if top_k > 0 and top_k < logits.shape[-1]:
        threshold = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p.
        remove_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        remove_sorted[0] = False
        remove = remove_sorted.scatter(0, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def select_token(
    logits: torch.Tensor,
    settings: SamplingSettings,
    seen: torch.Tensor,
    generator: torch.Generator | None,
) -> int:
    """Choose the next token id from logits (V,)."""
    logits = apply_repetition_penalty(logits.float(), seen, settings.repetition_penalty)
    if settings.greedy:
        return int(torch.argmax(logits))
    logits = filter_logits(logits / settings.temperature, settings.top_k, settings.top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate_stream(
    model: HydraLM,
    input_ids: torch.Tensor,
    state: HydraState | None = None,
    settings: SamplingSettings | None = None,
    stop_token_ids: Iterable[int] = (),
    cancel: CancelFlag | None = None,
) -> Generator[int, None, HydraState]:
    """Yield generated token ids one by one; return the final state.

    The prompt is read in one forward call (prefill); each generated token is
    then fed with `model.step`. A stop token is yielded and ends generation
    without being read into the state. The returned state (the generator's
    return value, `StopIteration.value`) has read the prompt and every other
    yielded token, also when `max_new_tokens` or `cancel` ends the loop.

    Args:
        model: the HydraLM to run.
        input_ids: (1, T) prompt token ids; one sequence at a time.
        state: state to continue from, or None for a fresh one.
        settings: sampling settings; None uses `SamplingSettings()`.
        stop_token_ids: ids that end generation (for example the end-of-turn token).
        cancel: checked before each new token; when set, generation stops.

    Example:
        tokens = generate_stream(model, ids, settings=SamplingSettings(temperature=0))
        for token_id in tokens: ...
    """
    settings = settings or SamplingSettings()
    settings.validate()
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != 1:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(
            f"generate_stream takes input_ids of shape (1, T), got {shape}; "
            f"generate for one sequence at a time"
        )
    stop = {int(token_id) for token_id in stop_token_ids}
    vocab_size = model.config.vocab_size
    for token_id in stop:
        if not 0 <= token_id < vocab_size:
            raise ValueError(f"stop token id {token_id} is outside the vocabulary [0, {vocab_size})")

    device = input_ids.device
    generator = None
    if settings.seed is not None:
        generator = torch.Generator(device=device).manual_seed(settings.seed)
    seen = input_ids[0].long()  # (T,) tokens the repetition penalty applies to

    with torch.no_grad():
        output = model(input_ids, state=state, logits_to_keep=1)
        logits, state = output.logits[0, -1], output.state  # (V,)
        for index in range(settings.max_new_tokens):
            if cancel is not None and cancel.is_set():
                logger.debug("generation cancelled after %d tokens", index)
                break
            token_id = select_token(logits, settings, seen, generator)
            yield token_id
            if token_id in stop:
                break
            token = torch.tensor([token_id], device=device)
            # Only this loop keeps the state, so the step may update it in place.
            logits, state = model.step(token, state, reuse_state=True)
            logits = logits[0]
            if settings.repetition_penalty != 1.0:
                seen = torch.cat([seen, token])
    return state


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
