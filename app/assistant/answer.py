"""The answer path: recall from memory, then a faithful answer with sources.

Every message is first recalled against memory. What happens next depends on
what came back:

- a fact about the entity the question names: the model phrases that one
  fact under copy-biased decoding, the answer is checked against the fact
  (it must state the remembered value and no value that memory does not
  hold), a failed answer is decoded again with a stronger copy bias, and a
  second failure falls back to quoting the fact;
- document passages the sentence encoder finds related to the question: the
  model answers from them under the same decoding, an answer cut off by the
  token budget keeps its whole sentences, and an answer with a name, number
  or date that the passages lack falls back to quoting the passage's
  best-matching sentence;
- nothing relevant, or a question about a forgotten subject: "I don't
  know", without the model;
- nothing relevant, for open conversation: the model replies freely, with
  the earlier turns in its prompt, streamed as it decodes.

`known` is true only when the answer comes from memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from app.assistant import fidelity, prompting
from app.assistant.decoding import (
    CopyBias,
    DigitGuard,
    Generation,
    LogitsProcessor,
    RepetitionPenalty,
    SpanForcer,
    ValueBoundary,
    greedy_generate,
    word_token_mask,
)
from app.assistant.selection import ItemSelector, SentenceEncoder
from app.memory.engine import normalize_subject
from app.memory.features import content_words

logger = logging.getLogger(__name__)

STRATEGIES = ("faithful", "plain")
FACT_PHRASINGS = ("model", "quote")

# The baseline lists this many recalled items in its prompt: the right fact
# among a few neighbours, as a retrieval-augmented prompt usually holds.
PLAIN_PROMPT_ITEMS = 5


@dataclass(frozen=True)
class AssistantSettings:
    """Knobs of the answer path.

    `strategy` "faithful" is the product's path; "plain" is the baseline the
    benchmark compares against: greedy generation with every recalled item
    in the prompt, no copy bias and no checks.
    """

    strategy: str = "faithful"
    # "model": the chat model phrases a recalled fact under copy-biased
    # decoding and checks; "quote": the fact is stated without the model.
    fact_phrasing: str = "model"
    # Items recalled per question; selection looks past the engine's first
    # choice, so it gets more than the handful a prompt would hold.
    recall_k: int = 10
    rerank: bool = True
    attribute_threshold: float = 0.1
    attribute_margin: float = 0.1
    # Logit bonus for tokens that continue a source span, one per attempt; an
    # answer that fails the checks is decoded again with the next bonus.
    copy_bonuses: tuple[float, ...] = (4.0, 10.0)
    max_answer_tokens: int = 48
    max_chat_tokens: int = 160
    chat_repetition_penalty: float = 1.2
    max_passages: int = 3
    # Minimum sentence-encoder similarity between a question and a passage
    # that answers it (see `app.assistant.selection`).
    passage_threshold: float = 0.35
    log_turns: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.fact_phrasing not in FACT_PHRASINGS:
            raise ValueError(f"fact_phrasing must be one of {FACT_PHRASINGS}, got {self.fact_phrasing!r}")
        if self.recall_k < 1:
            raise ValueError(f"recall_k must be >= 1, got {self.recall_k}")
        if not self.copy_bonuses or any(bonus < 0 for bonus in self.copy_bonuses):
            raise ValueError(f"copy_bonuses must be one or more values >= 0, got {self.copy_bonuses}")
        for name in ("max_answer_tokens", "max_chat_tokens", "max_passages"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.chat_repetition_penalty < 1.0:
            raise ValueError(f"chat_repetition_penalty must be >= 1.0, got {self.chat_repetition_penalty}")


@dataclass
class Answer:
    """The text shown to the user, the memory items it used and whether memory knew.

    `route` is "fact", "passage", "unknown", "chat" or "plain". `method` is
    "model" (decoded and checked), "quoted" (the remembered text itself),
    "fixed" (the "I don't know" sentence) or "plain" (the unchecked
    baseline). `attempts` counts model decodes.
    """

    text: str
    sources: list[Any] = field(default_factory=list)
    known: bool = False
    route: str = "unknown"
    method: str = "fixed"
    attempts: int = 0
    seconds: float = 0.0
    cancelled: bool = False

    def to_json(self) -> dict[str, Any]:
        """Return `{"answer", "sources", "known"}`, as `hydra-chat ask --json` prints it."""
        return {
            "answer": self.text,
            "sources": [
                {"kind": item.kind, "text": item.text, "origin": item.origin, "score": float(item.score)}
                for item in self.sources
            ],
            "known": bool(self.known),
        }


class _TextStream:
    """Turn token ids into text pieces, holding back incomplete characters."""

    def __init__(self, tokenizer, on_token: Callable[[str], None] | None) -> None:
        self.tokenizer = tokenizer
        self.on_token = on_token
        self.token_ids: list[int] = []
        self.sent = ""

    def push(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        # Trailing whitespace waits for the next token, because the final
        # text is stripped and the pieces must add up to it.
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True).strip()
        if text.endswith("\ufffd"):
            return
        if self.on_token is not None and len(text) > len(self.sent) and text.startswith(self.sent):
            self.on_token(text[len(self.sent):])
        self.sent = text


def _emit(text: str, on_token: Callable[[str], None] | None) -> None:
    """Send a finished answer to `on_token` word by word."""
    if on_token is None or not text:
        return
    words = text.split(" ")
    for index, word in enumerate(words):
        on_token(word if index == 0 else " " + word)


def _normalize_history(history: Iterable[Any]) -> list[tuple[str, str]]:
    turns = []
    for turn in history:
        if isinstance(turn, dict):
            role, text = turn.get("role"), turn.get("content", turn.get("text"))
        else:
            role, text = turn
        if role not in ("user", "assistant"):
            raise ValueError(f"history role must be 'user' or 'assistant', got {role!r}")
        turns.append((role, str(text)))
    return turns


class Assistant:
    """Answer messages from memory with the chat model.

    Args:
        memory: an open `app.memory.Memory` (uses `recall` and `log_turn`).
        chat_model: a loaded `app.chat_model.ChatModel` (uses `model`,
            `tokenizer` and `apply_chat_template`).
        settings: `AssistantSettings`; the defaults are the product's.
    """

    def __init__(self, memory, chat_model, settings: AssistantSettings | None = None) -> None:
        self.memory = memory
        self.chat_model = chat_model
        self.settings = settings or AssistantSettings()
        self.tokenizer = chat_model.tokenizer
        self.model = chat_model.model
        self.stop_ids = self._stop_ids()
        encoder = SentenceEncoder.from_installed() if self.settings.rerank else None
        self.selector = ItemSelector(
            encoder,
            attribute_threshold=self.settings.attribute_threshold,
            attribute_margin=self.settings.attribute_margin,
            max_passages=self.settings.max_passages,
            passage_threshold=self.settings.passage_threshold,
        )
        self._digit_tokens: torch.Tensor | None = None
        self._word_tokens: torch.Tensor | None = None

    # -- public ---------------------------------------------------------

    def answer(
        self,
        question: str,
        history: Iterable[Any] = (),
        on_token: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Answer:
        """Answer `question` and stream the final text to `on_token`.

        `history` holds earlier turns as (role, text) pairs or chat-message
        dicts; only open conversation puts them in the prompt, so a fact
        answer never borrows a value from an earlier turn. `cancel` stops
        decoding; the returned answer then has `cancelled` set and holds the
        text streamed so far.
        """
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"question must be a non-empty string, got {question!r}")
        question = question.strip()
        turns = _normalize_history(history)
        started = time.perf_counter()

        recall = self.memory.recall(question, k=self.settings.recall_k)
        if self.settings.strategy == "plain":
            result = self._answer_plain(question, recall, on_token, cancel)
        else:
            result = self._route(question, turns, recall, on_token, cancel)
        result.seconds = time.perf_counter() - started

        if self.settings.log_turns and not result.cancelled:
            self.memory.log_turn("user", question)
            self.memory.log_turn("assistant", result.text)
        logger.debug("answered via %s/%s in %.2f s: %r", result.route, result.method, result.seconds, result.text)
        return result

    # -- routing --------------------------------------------------------

    def _route(self, question, turns, recall, on_token, cancel) -> Answer:
        selection = self.selector.select(question, recall)
        if selection.fact is not None:
            return self._answer_fact(question, selection.fact, recall.items, on_token, cancel)
        forgotten = self._forgotten_subject(question) if fidelity.is_memory_question(question) else None
        if forgotten is not None:
            # The user removed this fact on purpose; a passage that mentions
            # the same words must not answer in its place.
            logger.info("%r asks about the forgotten subject %r", question, forgotten)
            _emit(prompting.UNKNOWN_ANSWER, on_token)
            return Answer(prompting.UNKNOWN_ANSWER, [], known=False, route="unknown", method="fixed")
        if selection.passages:
            return self._answer_passages(question, selection.passages, on_token, cancel)
        if recall.known:
            logger.info("no recalled item answers %r: %s", question, selection.reason)

        if fidelity.is_memory_question(question):
            _emit(prompting.UNKNOWN_ANSWER, on_token)
            return Answer(prompting.UNKNOWN_ANSWER, [], known=False, route="unknown", method="fixed")
        return self._chat(question, turns, on_token, cancel)

    def _forgotten_subject(self, question: str) -> str | None:
        """Return a forgotten subject all of whose content words the question contains, or None."""
        forgotten_subjects = getattr(self.memory, "forgotten_subjects", None)
        if forgotten_subjects is None:
            return None
        question_words = set(content_words(question))
        for subject in forgotten_subjects():
            words = set(content_words(normalize_subject(subject)))
            if words and words <= question_words:
                return subject
        return None

    # -- fact lookups ---------------------------------------------------

    def _answer_fact(self, question, fact, recalled, on_token, cancel) -> Answer:
        statement = prompting.fact_statement(fact.subject, fact.value)
        if self.settings.fact_phrasing == "quote":
            _emit(statement, on_token)
            return Answer(statement, [fact], known=True, route="fact", method="quoted")

        prompt_ids = self._prompt_ids(prompting.fact_messages(question, statement))
        sources = [self._encode(statement), self._encode(fact.value), self._encode(" " + fact.value)]
        other_values = {
            item.value
            for item in recalled
            if item.kind == "fact"
            and item.value
            and item.item_id != fact.item_id
            and not fidelity.states_value(fact.value, item.value)
        }
        supports = [statement, question]

        attempts = 0
        for bonus in self.settings.copy_bonuses:
            attempts += 1
            generation = self._decode(prompt_ids, sources, bonus, self.settings.max_answer_tokens, cancel)
            text = self._text(generation)
            if generation.stop_reason == "cancel":
                return Answer("", [fact], known=True, route="fact", method="model", attempts=attempts, cancelled=True)
            problems = self._fact_problems(text, generation, fact.value, supports, other_values)
            if not problems:
                _emit(text, on_token)
                return Answer(text, [fact], known=True, route="fact", method="model", attempts=attempts)
            logger.info("answer %r rejected (copy bonus %.1f): %s", text, bonus, "; ".join(problems))

        _emit(statement, on_token)
        return Answer(statement, [fact], known=True, route="fact", method="quoted", attempts=attempts)

    @staticmethod
    def _fact_problems(text, generation: Generation, value, supports, other_values) -> list[str]:
        problems = []
        if not text:
            problems.append("empty answer")
        if generation.stop_reason == "length":
            problems.append("no end of answer within the token budget")
        if not fidelity.states_value(text, value):
            problems.append(f"does not state the remembered value {value!r}")
        unsupported = fidelity.unsupported_spans(text, supports)
        if unsupported:
            problems.append(f"states {unsupported} that memory does not hold")
        stated_others = sorted(other for other in other_values if fidelity.states_value(text, other))
        if stated_others:
            problems.append(f"states values of other facts {stated_others}")
        return problems

    # -- passages -------------------------------------------------------

    def _answer_passages(self, question, passages, on_token, cancel) -> Answer:
        prompt_ids = self._prompt_ids(
            prompting.passage_messages(question, [(item.origin, item.text) for item in passages])
        )
        sources = [self._encode(item.text) for item in passages]
        supports = [item.text for item in passages] + [question]

        attempts = 0
        for bonus in self.settings.copy_bonuses:
            attempts += 1
            generation = self._decode(prompt_ids, sources, bonus, self.settings.max_answer_tokens, cancel)
            text = self._text(generation)
            if generation.stop_reason == "cancel":
                return Answer("", passages, known=True, route="passage", method="model", attempts=attempts, cancelled=True)
            # Copy-biased decoding can loop over a passage sentence.
            text = prompting.drop_repeated_sentences(text)
            unsupported = fidelity.unsupported_spans(text, supports)
            if generation.stop_reason == "length" and not unsupported:
                # Under the copy bias the model tends to go on copying the
                # passage. What it copied is supported, so the answer keeps
                # its whole sentences, and a stronger bias would only copy more.
                text = prompting.whole_sentences(text)
                if text:
                    _emit(text, on_token)
                    return Answer(text, passages, known=True, route="passage", method="model", attempts=attempts)
                logger.info("passage answer rejected (copy bonus %.1f): no whole sentence within the token budget", bonus)
                break
            if text and not unsupported:
                _emit(text, on_token)
                return Answer(text, passages, known=True, route="passage", method="model", attempts=attempts)
            logger.info("passage answer %r rejected (copy bonus %.1f): unsupported %s", text, bonus, unsupported)

        top = passages[0]
        quote = f'From {top.origin}: "{prompting.best_sentence(top.text, question)}"'
        _emit(quote, on_token)
        return Answer(quote, [top], known=True, route="passage", method="quoted", attempts=attempts)

    # -- open conversation ----------------------------------------------

    def _chat(self, message, turns, on_token, cancel) -> Answer:
        prompt_ids = self._prompt_ids(prompting.chat_messages(message, turns))
        stream = _TextStream(self.tokenizer, on_token)
        processors: list[LogitsProcessor] = [RepetitionPenalty(self.settings.chat_repetition_penalty)]
        generation = greedy_generate(
            self.model,
            prompt_ids,
            max_new_tokens=self.settings.max_chat_tokens,
            stop_ids=self.stop_ids,
            processors=processors,
            on_token_id=stream.push,
            cancel=cancel,
        )
        text = self._text(generation)
        if text.startswith(stream.sent) and len(text) > len(stream.sent) and on_token is not None:
            on_token(text[len(stream.sent):])
        cancelled = generation.stop_reason == "cancel"
        return Answer(text, [], known=False, route="chat", method="model", attempts=1, cancelled=cancelled)

    # -- baseline -------------------------------------------------------

    def _answer_plain(self, question, recall, on_token, cancel) -> Answer:
        items = list(recall.items[:PLAIN_PROMPT_ITEMS])
        texts = [
            prompting.fact_statement(item.subject, item.value) if item.kind == "fact" and item.value else item.text
            for item in items
        ]
        prompt_ids = self._prompt_ids(prompting.plain_messages(question, texts))
        stream = _TextStream(self.tokenizer, on_token)
        generation = greedy_generate(
            self.model,
            prompt_ids,
            max_new_tokens=self.settings.max_answer_tokens,
            stop_ids=self.stop_ids,
            on_token_id=stream.push,
            cancel=cancel,
        )
        text = self._text(generation)
        cancelled = generation.stop_reason == "cancel"
        return Answer(text, items, known=bool(recall.known), route="plain", method="plain", attempts=1, cancelled=cancelled)

    # -- model plumbing -------------------------------------------------

    def _decode(self, prompt_ids, sources, bonus, max_new_tokens, cancel) -> Generation:
        allowed = {token for source in sources for token in source}
        value_spans = sources[1:] if len(sources) > 1 else sources
        processors: list[LogitsProcessor] = [
            CopyBias(sources, bonus),
            DigitGuard(self._digit_mask(), allowed),
            SpanForcer(value_spans, self.tokenizer.decode),
            ValueBoundary(value_spans, self._word_mask()),
        ]
        return greedy_generate(
            self.model,
            prompt_ids,
            max_new_tokens=max_new_tokens,
            stop_ids=self.stop_ids,
            processors=processors,
            cancel=cancel,
        )

    def _digit_mask(self) -> torch.Tensor:
        if self._digit_tokens is None:
            vocab_size, pieces = self._vocab_pieces()
            mask = torch.zeros(vocab_size, dtype=torch.bool)  # (V,)
            for token_id, piece in enumerate(pieces):
                if piece is not None and any(ch.isdigit() for ch in piece):
                    mask[token_id] = True
            self._digit_tokens = mask
        return self._digit_tokens

    def _vocab_pieces(self) -> tuple[int, list[str | None]]:
        config = getattr(self.model, "config", None)
        vocab_size = getattr(config, "vocab_size", None) or len(self.tokenizer)
        return vocab_size, self.tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(self.tokenizer)))))

    def _word_mask(self) -> torch.Tensor:
        if self._word_tokens is None:
            vocab_size, pieces = self._vocab_pieces()
            self._word_tokens = word_token_mask(pieces, vocab_size)
        return self._word_tokens

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _text(self, generation: Generation) -> str:
        return self.tokenizer.decode(generation.token_ids, skip_special_tokens=True).strip()

    def _prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        prompt = self.chat_model.apply_chat_template(list(messages))
        if isinstance(prompt, str):
            return self._encode(prompt)
        if isinstance(prompt, torch.Tensor):
            return prompt.reshape(-1).tolist()
        if isinstance(prompt, dict) or hasattr(prompt, "input_ids"):
            ids = prompt["input_ids"]
            return ids.reshape(-1).tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return list(prompt)

    def _stop_ids(self) -> set[int]:
        stop = set(getattr(self.chat_model, "stop_token_ids", ()) or ())
        if self.tokenizer.eos_token_id is not None:
            stop.add(int(self.tokenizer.eos_token_id))
        for token in ("<|im_end|>", "<|endoftext|>", "<|im_start|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id >= 0 and token_id != self.tokenizer.unk_token_id:
                stop.add(token_id)
        return stop
