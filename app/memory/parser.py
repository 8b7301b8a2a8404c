"""Parse natural statements ("remember that my locker code is 4312") into subject and value."""

from __future__ import annotations

import re

_PREFIX_RE = re.compile(
    r"^\s*(?:(?:please|ok|okay|hey)[,\s]+)?"
    r"(?:(?:remember|note|know|learn|store|save)(?:\s+(?:that|this))?[:,]?\s+"
    r"|(?:please\s+)?(?:keep\s+in\s+mind|note\s+down|fyi|for\s+the\s+record)(?:\s+that)?[:,]?\s+)?",
    re.IGNORECASE,
)
# The copula that separates subject and value, most specific first. The first
# occurrence wins, so "the code is 12 is wrong" splits at the first " is ".
_SPLIT_RE = re.compile(
    r"\s+(?:is|are|was|were)\s+(?:now|actually|currently|still)\s+"
    r"|\s+(?:has\s+changed\s+to|changed\s+to|is\s+set\s+to|moved\s+to)\s+"
    r"|\s+(?:is|are)\s+"
    r"|\s*(?::|=)\s*",
    re.IGNORECASE,
)
_QUESTION_START_RE = re.compile(r"^\s*(?:who|what|when|where|why|how|which|whose|is|are|do|does|did|can)\b", re.IGNORECASE)
MAX_STATEMENT_CHARS = 2000


def parse_statement(text: str) -> tuple[str, str] | None:
    """Split a statement into (subject, value), or return None when it is not one.

    The subject keeps the words as typed. The engine's `normalize_subject`
    makes its lookup key, so "my locker code" and "the locker code" are one fact.

    Examples:
        "remember that my locker code is 4312" -> ("my locker code", "4312")
        "the wifi password at the cabin is now x7" -> ("the wifi password at the cabin", "x7")
        "What is my locker code?" -> None
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_statement expects a str, got {type(text).__name__}")
    text = " ".join(text.split())
    if not text or len(text) > MAX_STATEMENT_CHARS or text.endswith("?"):
        return None
    body = _PREFIX_RE.sub("", text, count=1)
    if body == text and _QUESTION_START_RE.match(text):
        return None
    match = _SPLIT_RE.search(body)
    if match is None:
        return None
    subject = body[: match.start()].strip(" ,;")
    value = body[match.end() :].strip().rstrip(".!;,").strip()
    if not subject or not value or not any(c.isalnum() for c in subject) or not any(c.isalnum() for c in value):
        return None
    return subject, value
