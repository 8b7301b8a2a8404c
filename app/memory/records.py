"""Plain records returned by the memory engine."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WriteRecord:
    """One row of the write log.

    `op` is "teach", "forget", "undo", "ingest" or "remove". `supersedes` is
    the write id of the fact row that was live before this write, and
    `live_after` the one live after it (None when the subject is unknown
    afterwards). `undoes` is the write an undo reverted.
    """

    write_id: int
    op: str
    subject: str | None
    value: str | None
    source: str
    created_at: str
    supersedes: int | None
    live_after: int | None
    undoes: int | None
    document: str | None = None
    passages: int = 0


@dataclass(frozen=True)
class Fact:
    """A live fact: the subject's newest value and the write that set it."""

    subject: str
    value: str
    write_id: int
    taught_at: str
    source: str


@dataclass(frozen=True)
class DocumentRecord:
    """A file the ingest pipeline has seen, with its status and passage count."""

    path: str
    sha256: str
    size: int
    mtime: float
    status: str
    reason: str
    passages: int


@dataclass(frozen=True)
class MemoryItem:
    """One recalled item.

    `score` is the clean-up score: about 1.0 when the question's key equals
    the item's key, near 0 for unrelated items. `origin` names where the item
    came from ("taught 2026-12-04 via cli", or "notes/a.md:1234" for the
    passage starting at character 1234 of the extracted text).
    """

    kind: str
    text: str
    subject: str | None
    value: str | None
    origin: str
    score: float
    item_id: int


@dataclass(frozen=True)
class Recall:
    """Ranked items for a question; `known` is False when none clears the threshold."""

    question: str
    items: list[MemoryItem] = field(default_factory=list)
    known: bool = False
    threshold: float = 0.0


@dataclass(frozen=True)
class MemoryStats:
    """Sizes and counts of one memory."""

    state_bytes: int
    state_file_bytes: int
    facts: int
    documents: int
    passages: int
    writes: int
    tokens_streamed: int
