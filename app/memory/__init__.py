"""The memory engine: a constant-size, zero-gradient state with a SQLite write log.

Example:
    from app.memory import Memory

    with Memory.open() as memory:
        memory.teach("locker code", "4312")
        recall = memory.recall("What is my locker code?")
        print(recall.known, recall.items[0].value)
"""

from app.memory.archive import ArchiveError
from app.memory.engine import Memory, MemoryConfig, normalize_subject
from app.memory.errors import (
    MemoryError_,
    MemoryInUseError,
    StateFileError,
    StorageError,
    UndoError,
    UnknownSubjectError,
)
from app.memory.parser import parse_statement
from app.memory.records import DocumentRecord, Fact, MemoryItem, MemoryStats, Recall, WriteRecord
from app.memory.semantic import EncoderUnavailableError

__all__ = [
    "ArchiveError",
    "DocumentRecord",
    "EncoderUnavailableError",
    "Fact",
    "Memory",
    "MemoryConfig",
    "MemoryError_",
    "MemoryInUseError",
    "MemoryItem",
    "MemoryStats",
    "Recall",
    "StateFileError",
    "StorageError",
    "UndoError",
    "UnknownSubjectError",
    "WriteRecord",
    "normalize_subject",
    "parse_statement",
]
