"""Prompts and fixed sentences of the answer path."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

UNKNOWN_ANSWER = "I don't know. Nothing in my memory answers that."

FACT_SYSTEM = (
    "You are a private memory assistant. Answer the user's question in one "
    "short sentence, using the remembered fact below exactly as written. Do "
    "not add anything that the fact does not say.\n\nRemembered fact: {fact}"
)

PASSAGE_SYSTEM = (
    "You are a private memory assistant. Answer the user's question in one or "
    "two sentences, using only the notes below and copying names, numbers "
    "and dates exactly as written. If the notes do not answer it, say you "
    "don't know.\n\nNotes:\n{passages}"
)

PLAIN_SYSTEM = (
    "You are a private memory assistant. Answer the user's question using "
    "what you remember:\n{items}"
)

CHAT_SYSTEM = (
    "You are hydra-chat, a friendly private memory assistant that runs on "
    "the user's own computer. Reply briefly and naturally."
)

# Words of the user that the assistant turns around when it quotes a fact.
_SPEAKER_SWAP = {"my": "your", "mine": "yours", "me": "you", "i": "you", "i'm": "you're"}
_DETERMINERS = frozenset("the a an my your his her its our their this that".split())

_UNKNOWN_PHRASES = (
    "i don't know",
    "i do not know",
    "i don't have",
    "i do not have",
    "don't have any information",
    "no information",
    "not sure",
    "i'm not aware",
    "i am not aware",
    "i couldn't find",
    "i could not find",
    "i can't find",
    "i cannot find",
    "nothing in my memory",
    "not in my memory",
    "no record",
)


def says_unknown(text: str) -> bool:
    """Tell whether an answer says that the assistant does not know."""
    lowered = text.casefold().replace("\u2019", "'")
    return any(phrase in lowered for phrase in _UNKNOWN_PHRASES)


def _swap_speaker(text: str) -> str:
    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        replacement = _SPEAKER_SWAP.get(word.casefold())
        return word if replacement is None else replacement

    return re.sub(r"\b(?:[Mm]y|[Mm]ine|[Mm]e|I|I'm)\b", swap, text)


def fact_statement(subject: str, value: str) -> str:
    """Render a fact as a sentence in the assistant's voice.

    "my locker code", "4312" gives "Your locker code is 4312.";
    "manager of team Nimbus 1", "Quinn Duarte" gives "The manager of team
    Nimbus 1 is Quinn Duarte." The value is kept exactly as remembered.
    """
    subject = _swap_speaker(subject.strip().rstrip("."))
    first = subject.split(" ", 1)[0].casefold() if subject else ""
    # "IP address of the x server" is an attribute of something, so it takes
    # an article even though it starts with a capital; "Project Beacon" does not.
    names_attribute = re.search(r"\b(?:of|at|for|in)\b", subject) is not None
    if first not in _DETERMINERS and (names_attribute or not subject[:1].isupper()):
        subject = "the " + subject
    return f"{subject[:1].upper()}{subject[1:]} is {value.strip()}."


def fact_messages(question: str, fact_text: str) -> list[dict[str, str]]:
    """Build the chat messages that ask the model to phrase one fact."""
    return [
        {"role": "system", "content": FACT_SYSTEM.format(fact=fact_text)},
        {"role": "user", "content": question},
    ]


def passage_messages(question: str, passages: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """Build the chat messages for a question answered from (origin, text) passages."""
    notes = "\n".join(f"[{origin}] {text}" for origin, text in passages)
    return [
        {"role": "system", "content": PASSAGE_SYSTEM.format(passages=notes)},
        {"role": "user", "content": question},
    ]


def plain_messages(question: str, item_texts: Sequence[str]) -> list[dict[str, str]]:
    """Build the baseline prompt: every recalled item listed, then the question."""
    items = "\n".join(f"- {text}" for text in item_texts) or "- (nothing)"
    return [
        {"role": "system", "content": PLAIN_SYSTEM.format(items=items)},
        {"role": "user", "content": question},
    ]


def chat_messages(message: str, history: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """Build the open-conversation prompt from earlier turns and the new message."""
    messages = [{"role": "system", "content": CHAT_SYSTEM}]
    messages.extend({"role": role, "content": text} for role, text in history)
    messages.append({"role": "user", "content": message})
    return messages


def best_sentence(text: str, question: str) -> str:
    """Pick the sentence of `text` that shares the most words with `question`."""
    sentences = [part.strip() for part in re.split(r"(?<=[.!?])\s+|\n+", text) if part.strip()]
    if not sentences:
        return text.strip()
    question_words = set(re.findall(r"\w+", question.casefold()))

    def overlap(sentence: str) -> int:
        return len(question_words & set(re.findall(r"\w+", sentence.casefold())))

    return max(sentences, key=overlap)


def whole_sentences(text: str) -> str:
    """Return `text` up to the end of its last whole sentence, or "" when no sentence ends in it."""
    ends = [match.end() for match in re.finditer(r"[.!?](?=\s|$)", text)]
    return text[: ends[-1]].strip() if ends else ""


def drop_repeated_sentences(text: str) -> str:
    """Return `text` without sentences that repeat an earlier one, keeping the first of each."""
    parts = re.split(r"((?<=[.!?])\s+)", text.strip())  # sentence, separator, sentence, ...
    seen: set[str] = set()
    unique = []
    for index in range(0, len(parts), 2):
        sentence = parts[index]
        separator = parts[index + 1] if index + 1 < len(parts) else ""
        key = " ".join(sentence.casefold().split())
        if key in seen:
            continue
        seen.add(key)
        unique.append(sentence + separator)
    return "".join(unique).strip()
