"""Greedy decoding that favours copying from the recalled memory items.

The chat model is small, and with the right fact in its prompt it still
shifts dates, rewrites codes and invents names. Three logit processors push
each step towards the text that memory holds:

- `CopyBias` adds a bonus to every token that continues a span of a source
  text (the token after the last generated one, wherever that one occurs in
  a source), which works like a pointer network without training.
- `SpanForcer` completes a value verbatim once the model has started it: when
  the generated tail matches the first characters of a remembered value, the
  rest of the value's tokens are forced one by one.
- `DigitGuard` forbids tokens that contain a digit unless the same token
  occurs in a source, so no number, code or address can be made up.
- `ValueBoundary` ends a value once it is complete: right after the last
  token of a remembered value, tokens that would glue more letters or digits
  onto it are forbidden. Without it the copy bias can extend the value with
  its own continuation: "192.0.2.119" followed by "2", because "2" follows
  "9" inside "192".

The decoder runs against the HydraLM streaming contract: `model(input_ids,
state=None, logits_to_keep=1)` returns `.logits` (B, 1, V) and `.state`, and
`model.step(token_ids, state)` returns `(logits (B, V), state)`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

# A processor edits the next-token logits (V,) in place, given the tokens
# generated so far.
LogitsProcessor = Callable[[list[int], torch.Tensor], None]


class CopyBias:
    """Add `bonus` to each token that continues a source span.

    After the generated token `t`, every token that follows an occurrence of
    `t` in any source gets the bonus. At the first step the first token of
    each source gets it. A token gets the bonus once, however many sources
    propose it.
    """

    def __init__(self, sources: Iterable[Sequence[int]], bonus: float) -> None:
        if bonus < 0:
            raise ValueError(f"copy bonus must be >= 0, got {bonus}")
        self.bonus = bonus
        self.next_tokens: dict[int, set[int]] = {}
        self.first_tokens: set[int] = set()
        for source in sources:
            if not source:
                continue
            self.first_tokens.add(source[0])
            for previous, following in zip(source[:-1], source[1:]):
                self.next_tokens.setdefault(previous, set()).add(following)

    def __call__(self, generated: list[int], logits: torch.Tensor) -> None:
        if self.bonus == 0:
            return
        candidates = self.next_tokens.get(generated[-1], set()) if generated else self.first_tokens
        if candidates:
            index = torch.tensor(sorted(candidates), dtype=torch.long)
            logits[index] += self.bonus


class SpanForcer:
    """Force the rest of a remembered value once the model has begun it.

    `spans` are token sequences of the values (with and without a leading
    space). Forcing starts only when the matched beginning covers at least
    `min_chars` non-space characters, so a lone space or a single digit does
    not lock the answer onto one value. It also starts only at a word
    boundary: in "192.0.2.119" the tail "19" is the value's own beginning,
    and forcing from there would run the value on into itself.
    """

    def __init__(
        self,
        spans: Iterable[Sequence[int]],
        decode: Callable[[Sequence[int]], str],
        min_chars: int = 2,
    ) -> None:
        self.spans = [list(span) for span in spans if len(span) > 1]
        self.decode = decode
        self.min_chars = min_chars

    def forced_token(self, generated: list[int]) -> int | None:
        """Return the token that continues a begun value, or None."""
        best: tuple[int, int] | None = None  # (matched length, next token)
        for span in self.spans:
            for length in range(min(len(span) - 1, len(generated)), 0, -1):
                if generated[-length:] != span[:length]:
                    continue
                begun = self.decode(span[:length])
                if len(begun.strip()) < self.min_chars:
                    break
                if length < len(generated) and begun[:1].isalnum():
                    before = self.decode(generated[-length - 1 : -length])
                    if before[-1:].isalnum():
                        continue
                if best is None or length > best[0]:
                    best = (length, span[length])
                break
        return None if best is None else best[1]

    def __call__(self, generated: list[int], logits: torch.Tensor) -> None:
        token = self.forced_token(generated)
        if token is not None:
            keep = logits[token].clone()
            logits.fill_(float("-inf"))
            logits[token] = keep


class DigitGuard:
    """Forbid tokens containing a digit that no source contains."""

    def __init__(self, digit_tokens: torch.Tensor, allowed: Iterable[int]) -> None:
        # digit_tokens: (V,) bool, True where the token's text has a digit.
        mask = digit_tokens.clone()
        allowed_ids = [token for token in set(allowed) if token < mask.numel()]
        if allowed_ids:
            mask[torch.tensor(allowed_ids, dtype=torch.long)] = False
        self.forbidden = mask  # (V,)

    def __call__(self, generated: list[int], logits: torch.Tensor) -> None:
        logits[: self.forbidden.numel()].masked_fill_(self.forbidden, float("-inf"))


class ValueBoundary:
    """Forbid word-continuing tokens right after a complete remembered value.

    `word_tokens` is a (V,) bool mask, True where the token's text starts
    with a letter or digit and so would extend the previous word or number.
    A value extended that way is a different value ("555-71489" for
    "555-7148"), which the fidelity check rejects anyway.
    """

    def __init__(self, spans: Iterable[Sequence[int]], word_tokens: torch.Tensor) -> None:
        self.spans = [list(span) for span in spans if span]
        self.word_tokens = word_tokens  # (V,)

    def __call__(self, generated: list[int], logits: torch.Tensor) -> None:
        if any(len(span) <= len(generated) and generated[-len(span):] == span for span in self.spans):
            logits[: self.word_tokens.numel()].masked_fill_(self.word_tokens, float("-inf"))


def word_token_mask(pieces: Sequence[str | None], vocab_size: int) -> torch.Tensor:
    """Mark the tokens whose vocabulary piece starts with a letter or digit.

    `pieces` are the tokenizer's raw pieces (`convert_ids_to_tokens`), in
    which a leading space is a marker character ("Ġ" in byte-level BPE, "▁"
    in SentencePiece), so a piece that starts with a letter or digit
    continues the word before it. Returns a (vocab_size,) bool mask.
    """
    mask = torch.zeros(vocab_size, dtype=torch.bool)  # (V,)
    for token_id, piece in enumerate(pieces[:vocab_size]):
        if piece and piece[0] not in "Ġ▁Ċĉ" and piece[0].isalnum():
            mask[token_id] = True
    return mask


@dataclass
class Generation:
    """Tokens a decoder produced and why it stopped ("eos", "length", "cancel")."""

    token_ids: list[int] = field(default_factory=list)
    stop_reason: str = "length"


@torch.inference_mode()
def greedy_generate(
    model,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    stop_ids: Iterable[int],
    processors: Sequence[LogitsProcessor] = (),
    on_token_id: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> Generation:
    """Decode greedily from `prompt_ids`, applying `processors` at each step.

    `on_token_id` gets each new token (stop tokens excluded) as soon as it is
    chosen; `cancel` is checked before every step.
    """
    if not prompt_ids:
        raise ValueError("prompt_ids is empty: the chat template produced no tokens")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    stop = set(stop_ids)
    device = next(model.parameters()).device
    result = Generation()

    # Prefill: one forward over the whole prompt; the state carries the prefix.
    input_ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)  # (1, T)
    output = model(input_ids, state=None, logits_to_keep=1)
    logits = output.logits[0, -1].float()  # (V,)
    state = output.state

    for _ in range(max_new_tokens):
        if cancel is not None and cancel.is_set():
            result.stop_reason = "cancel"
            return result

        for processor in processors:
            processor(result.token_ids, logits)
        token = int(torch.argmax(logits))
        if token in stop:
            result.stop_reason = "eos"
            return result
        result.token_ids.append(token)
        if on_token_id is not None:
            on_token_id(token)

        # The previous state is dropped, so the step may update it in place.
        step_logits, state = model.step(torch.tensor([token], device=device), state, reuse_state=True)  # (1, V)
        logits = step_logits[0].float()  # (V,)

    result.stop_reason = "length"
    return result


class RepetitionPenalty:
    """Divide positive logits (multiply negative ones) of tokens already seen.

    The CTRL penalty, as transformers applies it: open conversation decoded
    greedily otherwise falls into loops that repeat the question.
    """

    def __init__(self, penalty: float) -> None:
        if penalty < 1.0:
            raise ValueError(f"repetition penalty must be >= 1.0, got {penalty}")
        self.penalty = penalty

    def __call__(self, generated: list[int], logits: torch.Tensor) -> None:
        if self.penalty == 1.0 or not generated:
            return
        index = torch.tensor(sorted(set(generated)), dtype=torch.long)
        scores = logits[index]
        logits[index] = torch.where(scores > 0, scores / self.penalty, scores * self.penalty)
