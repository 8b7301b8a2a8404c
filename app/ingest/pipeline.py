"""Ingest pipeline: bring a memory's record of a folder up to date.

For each file under the folder the pipeline compares size and mtime (then,
when they differ, the SHA-256) with what the memory recorded last time, and
only extracts and writes the files that are new or changed. A file that
failed is tried again only once it changes. The memory's
`add_document` replaces an older version of a path, so a changed file's old
passages are forgotten before its new ones are written. Files that the walk no
longer finds are removed from memory; files that cannot be read are recorded
with the reason.

Cancellation is checked between files. Each file is one `add_document`,
`remove_document` or `record_file_status` call, so a cancelled run leaves
every file either fully at its old version or fully at its new one, and a
re-run picks up where it stopped. Deleted files are only removed after a walk
that was not cancelled, because an unfinished walk has not seen every file.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.ingest.extractors import (
    DEFAULT_PDF_TIMEOUT_S,
    ExtractionError,
    FileScan,
    extract,
    scan_file,
)
from app.ingest.splitter import DEFAULT_MAX_CHARS, Passage, split_passages
from app.ingest.walker import DEFAULT_MAX_FILE_BYTES, FileEntry, SkippedFile, walk_folder

logger = logging.getLogger(__name__)

STATUS_INGESTED = "ingested"
STATUS_SKIPPED = "skipped"
STATUS_FAILED = "failed"
PROGRESS_INTERVAL_S = 0.25
INVALID_NAME_REASON = "file name is not valid UTF-8, so it cannot be recorded; rename the file"


class DocumentStore(Protocol):
    """The part of the memory engine that the pipeline writes through.

    `add_document` replaces an older version of the path, and
    `record_file_status` forgets the passages of an older version before it
    records a skipped or failed file, each in one transaction.
    """

    def documents(self) -> list[Any]: ...

    def add_document(self, path: str, sha256: str, size: int, mtime: float, passages: Iterable[Passage]) -> int: ...

    def remove_document(self, path: str) -> None: ...

    def record_file_status(
        self, path: str, sha256: str, size: int, mtime: float, status: str, reason: str
    ) -> None: ...


@dataclass(frozen=True)
class IngestProgress:
    """A progress snapshot; `eta_s` is None until a rate is known."""

    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    passages: int
    passages_per_s: float
    eta_s: float | None
    current: str


@dataclass
class IngestReport:
    """The outcome of one ingest run, file by file.

    `added`, `updated`, `unchanged` and `removed` list paths; `skipped` and
    `failed` list (path, reason) pairs. `cancelled` is True when the run
    stopped early; the files it had not reached are in none of the lists.
    """

    folder: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    passages: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    cancelled: bool = False

    @property
    def passages_per_s(self) -> float:
        """Passages written per second of wall time over the whole run."""
        return self.passages / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """Format the counts, passages and rate as one line for a terminal."""
        state = "cancelled" if self.cancelled else "done"
        return (
            f"ingest {state}: {len(self.added)} added, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged, {len(self.removed)} removed, "
            f"{len(self.skipped)} skipped, {len(self.failed)} failed; "
            f"{self.passages} passages in {self.seconds:.1f} s ({self.passages_per_s:.1f}/s)"
        )


CancelToken = Callable[[], bool] | Any


def _cancel_check(cancel: CancelToken | None) -> Callable[[], bool]:
    """Accept a callable returning bool or an object with `is_set()` (threading.Event)."""
    if cancel is None:
        return lambda: False
    is_set = getattr(cancel, "is_set", None)
    if callable(is_set):
        return is_set
    if callable(cancel):
        return cancel
    raise TypeError(f"cancel must be a callable or a threading.Event, got {type(cancel).__name__}")


def display_path(path: str) -> str:
    """Return `path` printable in any UTF-8 terminal: undecodable bytes become `\\xNN` escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class _Progress:
    """Throttled progress reporting with rates measured from the run's start.

    The pipeline updates `files_done`, `bytes_done`, `passages` and `current`
    as files finish; `send` adds the part of the current file written so far.
    """

    def __init__(self, callback: Callable[[IngestProgress], None] | None, files_total: int, bytes_total: int):
        self.callback = callback
        self.files_total = files_total
        self.bytes_total = bytes_total
        self.files_done = 0
        self.bytes_done = 0
        self.passages = 0
        self.current = ""
        self.started = time.monotonic()
        self.last_sent = 0.0

    def send(self, *, file_passages: int = 0, file_bytes: int = 0, force: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if not force and now - self.last_sent < PROGRESS_INTERVAL_S:
            return
        self.last_sent = now
        elapsed = max(now - self.started, 1e-9)
        bytes_done = self.bytes_done + file_bytes
        passages = self.passages + file_passages
        eta = None
        if self.files_done >= self.files_total:
            eta = 0.0
        elif bytes_done > 0 and elapsed > 0.05:
            eta = max(self.bytes_total - bytes_done, 0) / (bytes_done / elapsed)
        self.callback(
            IngestProgress(
                files_done=self.files_done,
                files_total=self.files_total,
                bytes_done=bytes_done,
                bytes_total=self.bytes_total,
                passages=passages,
                passages_per_s=passages / elapsed,
                eta_s=eta,
                current=self.current,
            )
        )


class _CountingPassages:
    """Wrap a file's passage iterator: count what the memory consumed and report progress.

    Inside a file, progress estimates the bytes read by the passage's
    character offset, exact for ASCII text.
    """

    def __init__(self, passages: Iterator[Passage], tracker: _Progress, size: int):
        self._passages = passages
        self._tracker = tracker
        self._size = size
        self.count = 0

    def __iter__(self) -> Iterator[Passage]:
        for passage in self._passages:
            self.count += 1
            if self.count % 64 == 0:
                self._tracker.send(file_passages=self.count, file_bytes=min(passage.end, self._size))
            yield passage


def ingest_folder(
    memory: DocumentStore,
    folder: str | os.PathLike[str],
    progress: Callable[[IngestProgress], None] | None = None,
    cancel: CancelToken | None = None,
    *,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_chars: int = DEFAULT_MAX_CHARS,
    pdf_timeout_s: float = DEFAULT_PDF_TIMEOUT_S,
    skip_site_assets: bool = True,
) -> IngestReport:
    """Ingest every supported file under `folder` into `memory`; return the report.

    `progress` is called with an `IngestProgress` at most every 0.25 s and
    once at the end. `cancel` is a callable returning True, or a
    `threading.Event`, checked between files. Files larger than
    `max_file_bytes` are skipped. Passages are at most `max_chars`
    characters. A PDF that takes longer than `pdf_timeout_s` seconds to parse
    is recorded as failed. `skip_site_assets` leaves out the support folders
    and asset files of generated documentation sites (see `walker.py`).

    Raises `FileNotFoundError` or `NotADirectoryError` when `folder` is not a
    folder. Errors from the memory itself (disk full, memory in use) propagate
    after the files before it were committed.
    """
    started = time.monotonic()
    # The resolved path keys the documents, so the same folder reached by a
    # relative path or through a symlink maps to the same records.
    root = os.path.realpath(os.fspath(folder))
    if not _is_utf8(root):
        raise ValueError(f"folder name is not valid UTF-8: {display_path(root)}; rename the folder")
    is_cancelled = _cancel_check(cancel)
    report = IngestReport(folder=root)

    # Walk first: the totals make the progress and ETA meaningful.
    entries = list(
        walk_folder(root, max_file_bytes=max_file_bytes, cancel=is_cancelled, skip_site_assets=skip_site_assets)
    )
    if is_cancelled():
        report.cancelled = True
        report.seconds = time.monotonic() - started
        logger.info("ingest of %s cancelled during the walk; nothing was written", root)
        return report

    known = {doc.path: doc for doc in memory.documents() if _is_under(doc.path, root)}
    files_total = len(entries)
    bytes_total = sum(entry.size for entry in entries)
    tracker = _Progress(progress, files_total, bytes_total)
    logger.info("ingesting %s: %d files, %d bytes", root, files_total, bytes_total)

    seen: set[str] = set()
    bytes_done = 0
    files_done = 0
    for entry in entries:
        if is_cancelled():
            report.cancelled = True
            break
        path = str(entry.path)
        tracker.files_done, tracker.bytes_done, tracker.passages = files_done, bytes_done, report.passages
        tracker.current = display_path(path)
        tracker.send()
        if not _is_utf8(path):
            # SQLite stores text as UTF-8, so such a path cannot be recorded.
            report.skipped.append((display_path(path), INVALID_NAME_REASON))
            bytes_done += entry.size
            files_done += 1
            continue
        seen.add(path)
        if isinstance(entry, SkippedFile):
            _record_skip(memory, report, known.get(path), entry)
        else:
            _ingest_file(memory, report, known.get(path), entry, tracker, max_chars=max_chars, pdf_timeout_s=pdf_timeout_s)
        bytes_done += entry.size
        files_done += 1

    if not report.cancelled:
        for path in sorted(set(known) - seen):
            memory.remove_document(path)
            report.removed.append(path)

    report.seconds = time.monotonic() - started
    report.bytes_read = bytes_done
    tracker.files_done, tracker.bytes_done, tracker.passages = files_done, bytes_done, report.passages
    tracker.current = ""
    tracker.send(force=True)
    logger.info("%s", report.summary())
    if report.failed:
        logger.warning("%d files under %s could not be read; the report lists each with the reason", len(report.failed), root)
    return report


def _record_skip(memory: DocumentStore, report: IngestReport, previous: Any, entry: SkippedFile) -> None:
    path = str(entry.path)
    report.skipped.append((path, entry.reason))
    if (
        previous is not None
        and previous.status == STATUS_SKIPPED
        and previous.reason == entry.reason
        and previous.size == entry.size
        and previous.mtime == entry.mtime
    ):
        return
    memory.record_file_status(path, "", entry.size, entry.mtime, STATUS_SKIPPED, entry.reason)


def _ingest_file(
    memory: DocumentStore,
    report: IngestReport,
    previous: Any,
    entry: FileEntry,
    tracker: _Progress,
    *,
    max_chars: int,
    pdf_timeout_s: float,
) -> None:
    path = str(entry.path)

    # Unchanged: same size and mtime, or same content after hashing. A record
    # without a hash is a walker skip (size limit, binary), which depends on
    # the options of that run, so such a file is looked at again.
    if previous is not None and previous.sha256 and previous.size == entry.size and previous.mtime == entry.mtime:
        _report_unchanged(report, previous, path)
        return
    try:
        scan = scan_file(entry.path, entry.format)
    except ExtractionError as error:
        _record_failure(memory, report, entry, None, str(error))
        return
    if previous is not None and previous.sha256 == scan.sha256:
        # NOTE: the stored mtime stays the old one, so a touched file is
        # hashed again on every run until its content changes.
        _report_unchanged(report, previous, path)
        return

    # NOTE: the file is read twice, for the hash and then for the text. A write
    # between the two reads stores new text under the old hash, which the
    # next run notices by the new mtime and re-reads.
    try:
        extracted = extract(entry.path, entry.format, scan, pdf_timeout_s=pdf_timeout_s)
        passages = split_passages(extracted.chunks, style=extracted.style, headings=extracted.headings, max_chars=max_chars)
        # Pull the first passage before touching memory, so that an empty
        # file or an extraction error never reaches the store.
        first = next(passages, None)
    except ExtractionError as error:
        _record_failure(memory, report, entry, scan, str(error))
        return
    if first is None:
        reason = "no text: the file is empty or has only whitespace"
        _record_failure(memory, report, entry, scan, reason, STATUS_SKIPPED)
        return

    counted = _CountingPassages(_chain(first, passages), tracker, entry.size)
    try:
        written = memory.add_document(path, scan.sha256, scan.size, entry.mtime, counted)
    except ExtractionError as error:
        # A read error in the middle of a streamed file; the memory rolled
        # the document back, so record it as failed.
        _record_failure(memory, report, entry, scan, str(error))
        return
    report.passages += written if isinstance(written, int) else counted.count
    replaced = previous is not None and previous.status == STATUS_INGESTED
    (report.updated if replaced else report.added).append(path)


def _chain(first: Passage, rest: Iterator[Passage]) -> Iterator[Passage]:
    yield first
    yield from rest


def _report_unchanged(report: IngestReport, previous: Any, path: str) -> None:
    if previous.status == STATUS_FAILED:
        report.failed.append((path, previous.reason))
    elif previous.status == STATUS_SKIPPED:
        report.skipped.append((path, previous.reason))
    else:
        report.unchanged.append(path)


def _record_failure(
    memory: DocumentStore,
    report: IngestReport,
    entry: FileEntry,
    scan: FileScan | None,
    reason: str,
    status: str = STATUS_FAILED,
) -> None:
    path = str(entry.path)
    # The report lists every file, and `ingest_folder` logs one warning that
    # counts them, so a folder of broken files does not flood stderr.
    logger.info("%s %s: %s", status, path, reason)
    (report.failed if status == STATUS_FAILED else report.skipped).append((path, reason))
    sha256 = scan.sha256 if scan is not None else ""
    size = scan.size if scan is not None else entry.size
    memory.record_file_status(path, sha256, size, entry.mtime, status, reason)


__all__ = ["DocumentStore", "IngestProgress", "IngestReport", "ingest_folder"]
