"""Checks that an answer agrees with the memory items it was built from.

These are plain string checks, independent of the model:

- `states_value` tells whether an answer states a value verbatim (case and
  spacing aside, never as part of a longer word or number);
- `unsupported_spans` lists the value-like spans of an answer (numbers,
  codes, addresses, names, months) that neither the sources nor the
  question contain, which is how a shifted date or a made-up name shows;
- `entity_mismatch` tells whether a recalled fact is about another entity
  than the one the question names ("Farid Rahman" asked, "Hugo Rahman"
  recalled);
- `is_memory_question` separates questions to answer from memory from open
  conversation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Words that may start with a capital without naming anything: sentence
# openers, pronouns and the words an answer uses to refer to memory.
_COMMON_CAPITALIZED = frozenset(
    """
    a an and as at but by for from he her his how i i'm i've if in is it it's
    its my no not of on or our she so that the their there these they this to
    we what when where which who whose why yes you your you're sure ok okay
    sorry hello hi hey thanks thank well also here according based
    """.split()
)

# Value-like spans: anything with a digit (numbers, dates' days, codes,
# addresses, phone numbers), e-mail addresses, and capitalized words.
_DIGIT_SPAN = re.compile(r"[A-Za-z0-9][\w.\-:/@]*\d[\w.\-:/@]*|\d")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_CAPITALIZED = re.compile(r"\b[A-Z][\w'\-]*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:]\s+|\n\s*|[\"“(]\s*)$")

_INTERROGATIVES = frozenset(
    "what who whom whose when where which why how is are was were do does did "
    "can could will would should shall may might has have had".split()
)
_SMALL_TALK = re.compile(
    r"^\s*(?:how are you|how's it going|how do you do|who are you|what are you|"
    r"what can you do|what is your name|what's your name|are you there|"
    r"can you help me|how can you help)\b",
    re.IGNORECASE,
)


def normalize(text: str) -> str:
    """Casefold, turn curly quotes straight and collapse whitespace."""
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    text = text.replace("\u201c", '"').replace("\u201d", '"')
    return " ".join(text.casefold().split())


def _contains(haystack: str, needle: str) -> bool:
    """Tell whether normalized `needle` occurs in `haystack` as a whole token run."""
    needle = normalize(needle).strip(" .,;:!?")
    if not needle:
        return False
    pattern = r"(?<![\w])" + re.escape(needle) + r"(?![\w]|[.\-]\w)"
    return re.search(pattern, normalize(haystack)) is not None


def states_value(answer: str, value: str) -> bool:
    """Tell whether `answer` states `value` verbatim.

    Case and runs of whitespace are ignored, and the match must not sit
    inside a longer word or number: "555-7148" is not stated by "555-71489".
    """
    return _contains(answer, value)


def _strip_possessive(word: str) -> str:
    word = word.replace("\u2019", "'")
    for suffix in ("'s", "'"):
        if word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def value_spans(text: str) -> list[str]:
    """Extract the value-like spans of `text`.

    Returns numbers and codes (anything with a digit), e-mail addresses, and
    capitalized words that do not start a sentence and are not common words.
    """
    spans: list[str] = []
    spans.extend(match.group(0) for match in _EMAIL.finditer(text))
    for match in _DIGIT_SPAN.finditer(text):
        spans.append(match.group(0).rstrip(".-:/"))
    for match in _CAPITALIZED.finditer(text):
        word = _strip_possessive(match.group(0)).rstrip(".-")
        if word.casefold() in _COMMON_CAPITALIZED:
            continue
        if _SENTENCE_START.search(text[: match.start()]):
            continue
        spans.append(word)
    return [span for span in spans if span]


def unsupported_spans(answer: str, supports: Iterable[str]) -> list[str]:
    """List the value-like spans of `answer` found in none of `supports`."""
    support_text = "\n".join(supports)
    missing = []
    for span in value_spans(answer):
        if not _contains(support_text, span):
            missing.append(span)
    return missing


def entity_tokens(text: str) -> set[str]:
    """Return the naming tokens of `text`: capitalized words and words with digits.

    The first word of each sentence and common words are skipped, so the
    result is the set of names, numbers and codes the text mentions.
    """
    tokens: set[str] = set()
    for match in re.finditer(r"[\w][\w'\-.]*[\w]|\w", text):
        word = _strip_possessive(match.group(0))
        if not word:
            continue
        has_digit = any(ch.isdigit() for ch in word)
        capitalized = word[0].isupper()
        if not (has_digit or capitalized):
            continue
        if word.casefold() in _COMMON_CAPITALIZED:
            continue
        if capitalized and not has_digit and _SENTENCE_START.search(text[: match.start()]):
            continue
        tokens.add(word.casefold())
    return tokens


def entity_mismatch(question: str, subject: str) -> bool:
    """Tell whether a fact about `subject` cannot answer `question`.

    True when the question names an entity token (a capitalized word or a
    word with a digit, not at the start of a sentence) that the subject does
    not contain. A question without such tokens ("what is my locker code?")
    never mismatches, so the engine's score alone decides for it.
    """
    question_names = entity_tokens(question)
    if not question_names:
        return False
    subject_words = {
        _strip_possessive(word).casefold()
        for word in re.findall(r"[\w][\w'\-.]*[\w]|\w", subject)
    }
    return not question_names <= subject_words


def is_memory_question(message: str) -> bool:
    """Tell whether `message` asks for information rather than making conversation.

    A message that ends with a question mark or starts with an interrogative
    word is a question, except small talk aimed at the assistant ("how are
    you?", "who are you?"). Everything else (greetings, statements, requests
    such as "tell me a joke") is open conversation.
    """
    text = message.strip()
    if not text or _SMALL_TALK.match(text):
        return False
    if text.endswith("?"):
        return True
    first = re.match(r"[A-Za-z']+", text)
    return first is not None and first.group(0).casefold() in _INTERROGATIVES
