"""Errors raised by the memory engine.

Every error names the file, subject or write id involved and what to do next,
so the CLI and the app can show the message as it is.
"""

from __future__ import annotations


class MemoryError_(Exception):
    """Base class of every error the memory engine raises.

    The trailing underscore keeps the name apart from the built-in
    `MemoryError` (out of RAM), which means something else entirely.
    """


class MemoryInUseError(MemoryError_):
    """Another process holds the memory's lock."""

    def __init__(self, data_dir: str, pid: int | None):
        self.data_dir = data_dir
        self.pid = pid
        owner = f"pid {pid}" if pid else "another process"
        super().__init__(f"memory in use by {owner} (lock in {data_dir})")


class StateFileError(MemoryError_):
    """The state file is corrupt, truncated, foreign or from another format version.

    The file is left untouched so that it can be inspected or restored.
    """

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(
            f"state file {path} cannot be used: {reason}. The file was left untouched; "
            "restore it from an export (`hydra-chat import`), or move it away to rebuild "
            "the state from the log"
        )


class StorageError(MemoryError_):
    """A write to the data folder failed (disk full, read-only folder, I/O error)."""


class UnknownSubjectError(MemoryError_, KeyError):
    """The subject is not among the live facts."""

    def __init__(self, subject: str):
        self.subject = subject
        super().__init__(subject)

    def __str__(self) -> str:
        return f"memory holds no fact about {self.subject!r}; list the facts with `hydra-chat facts`"


class UndoError(MemoryError_):
    """A write cannot be undone (unknown id, or a later write changed its subject)."""
