"""Folder walker: which files under a folder are candidates for ingestion.

The walk is iterative (no recursion limit), visits directories in sorted
order so runs are reproducible, and never follows a directory symlink back
into a directory it has already visited, so symlink loops end. Hidden
entries (names starting with ".", which covers .git, .hg and .svn) and
well-known tool folders are skipped without a record, because they are not
the user's documents. Every other file becomes either a `FileEntry` to
extract or a `SkippedFile` with the reason.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from app.ingest.extractors import SNIFF_BYTES, format_for_path, sniff_binary

logger = logging.getLogger(__name__)

# Folders that hold tool output or dependencies rather than documents. Hidden
# folders (".git", ".venv", ".tox", ...) are skipped by the dot rule.
SKIPPED_DIR_NAMES = frozenset(
    {
        "__pycache__",
        "node_modules",
        "CVS",
        "_darcs",
        "site-packages",
        "__MACOSX",
    }
)

DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class FileEntry:
    """A regular file to extract: absolute path, size in bytes, mtime in seconds."""

    path: Path
    size: int
    mtime: float
    format: str


@dataclass(frozen=True)
class SkippedFile:
    """A file that will not be extracted, with the reason shown to the user."""

    path: Path
    size: int
    mtime: float
    reason: str


def is_hidden(name: str) -> bool:
    """Return True for hidden names (a leading dot), which the walk skips silently."""
    return name.startswith(".")


def walk_folder(
    root: str | os.PathLike[str],
    *,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    sniff: bool = True,
    cancel: Callable[[], bool] | None = None,
) -> Iterator[FileEntry | SkippedFile]:
    """Yield every non-hidden file under `root` as a `FileEntry` or `SkippedFile`.

    Paths are absolute and keep the names under `root` as they are spelled
    there (symlinks inside the folder are not resolved, so a document keeps
    the path shown in the folder). Directory symlinks are followed once: a link to a
    directory that the walk has already entered is skipped with a log line.
    Files are skipped when they are larger than `max_file_bytes`, are not
    regular files, have a format no extractor reads, or look binary from
    their first bytes (`sniff=False` turns the last check off).

    Raises `FileNotFoundError` or `NotADirectoryError` naming `root` when it is
    not a readable folder.
    """
    if max_file_bytes <= 0:
        raise ValueError(f"max_file_bytes must be positive, got {max_file_bytes}")
    root_path = Path(os.path.abspath(os.fspath(root)))
    if not root_path.exists():
        raise FileNotFoundError(f"folder not found: {root_path}")
    if not root_path.is_dir():
        raise NotADirectoryError(f"not a folder: {root_path} (pass the folder that contains the documents)")

    root_stat = root_path.stat()
    visited: set[tuple[int, int]] = {(root_stat.st_dev, root_stat.st_ino)}
    # One iterator per open folder: a depth-first walk in name order that
    # never recurses, however deep the tree.
    stack: list[Iterator[os.DirEntry[str]]] = [_list_folder(root_path)]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
            continue
        if cancel is not None and cancel():
            return
        if is_hidden(child.name):
            continue
        item = _classify(Path(child.path), child, visited, max_file_bytes, sniff)
        if isinstance(item, Path):
            stack.append(_list_folder(item))
        elif item is not None:
            yield item


def _list_folder(directory: Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as scan:
            children = sorted(scan, key=lambda entry: entry.name)
    except OSError as error:
        logger.warning("cannot list folder %s: %s", directory, error.strerror or error)
        return iter(())
    return iter(children)


def _classify(
    path: Path,
    entry: os.DirEntry[str],
    visited: set[tuple[int, int]],
    max_file_bytes: int,
    sniff: bool,
) -> Path | FileEntry | SkippedFile | None:
    """Return a folder to descend into, a file entry, a skip record or None."""
    try:
        info = entry.stat(follow_symlinks=True)
    except OSError as error:
        if entry.is_symlink():
            return SkippedFile(path, 0, 0.0, "broken symlink: its target does not exist")
        return SkippedFile(path, 0, 0.0, f"unreadable: {error.strerror or error}")

    if stat.S_ISDIR(info.st_mode):
        if entry.name in SKIPPED_DIR_NAMES:
            return None
        key = (info.st_dev, info.st_ino)
        if key in visited:
            logger.info("not following %s: it leads to a folder already visited (symlink loop)", path)
            return None
        visited.add(key)
        return path

    size, mtime = info.st_size, info.st_mtime
    if not stat.S_ISREG(info.st_mode):
        return SkippedFile(path, 0, mtime, "not a regular file (device, socket or pipe)")
    fmt = format_for_path(path)
    if fmt is None:
        return SkippedFile(path, size, mtime, f"unsupported file type {path.suffix or '(no extension)'}")
    if size > max_file_bytes:
        return SkippedFile(
            path, size, mtime, f"too large: {size} bytes exceeds the limit of {max_file_bytes} bytes"
        )
    if sniff and fmt != "pdf":
        try:
            with open(path, "rb") as handle:
                head = handle.read(SNIFF_BYTES)
        except OSError as error:
            return SkippedFile(path, size, mtime, f"unreadable: {error.strerror or error}")
        reason = sniff_binary(head)
        if reason is not None:
            return SkippedFile(path, size, mtime, reason)
    return FileEntry(path, size, mtime, fmt)
