"""Ingest pipeline against an in-memory document store.

`RecordingStore` implements the four memory-engine methods the pipeline
uses and records every call, so these tests check exactly which writes a run
makes. The same flows against the real engine are in
`test_ingest_memory.py`.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.ingest.pipeline import IngestProgress, ingest_folder
from app.ingest.splitter import Passage

from test_ingest_extractors import make_pdf


@dataclass
class Document:
    path: str
    sha256: str
    size: int
    mtime: float
    status: str
    reason: str
    passages: int


class RecordingStore:
    def __init__(self) -> None:
        self.docs: dict[str, Document] = {}
        self.passages: dict[str, list[Passage]] = {}
        self.calls: list[tuple[str, str]] = []

    def documents(self) -> list[Document]:
        return list(self.docs.values())

    def add_document(self, path, sha256, size, mtime, passages) -> int:
        self.calls.append(("add", path))
        stored = list(passages)
        self.passages[path] = stored
        self.docs[path] = Document(path, sha256, size, mtime, "ingested", "", len(stored))
        return len(stored)

    def remove_document(self, path) -> None:
        self.calls.append(("remove", path))
        self.docs.pop(path, None)
        self.passages.pop(path, None)

    def record_file_status(self, path, sha256, size, mtime, status, reason) -> None:
        self.calls.append((status, path))
        self.passages.pop(path, None)
        self.docs[path] = Document(path, sha256, size, mtime, status, reason, 0)


def build_folder(root: Path) -> Path:
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "cabin.md").write_text("# Cabin\n\nThe wifi password at the cabin is x7.\n")
    (root / "notes" / "plain.txt").write_text("Buy milk.\n\nCall the plumber on Tuesday.\n")
    (root / "page.html").write_text("<h1>Recipes</h1><p>Pancakes need eggs.</p><script>x()</script>")
    (root / "doc.pdf").write_bytes(make_pdf("The boat is red"))
    (root / "code.py").write_text("def hello():\n    return 'world'\n")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4\n" + os.urandom(64))
    (root / "latin.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (root / "undecodable.txt").write_bytes(b"bad \x81\x8d bytes " * 4)
    (root / "empty.md").write_text("")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    (root / "huge.txt").write_text("y" * 5000)
    return root


def relative(root: Path, items) -> list[str]:
    return sorted(str(Path(item[0] if isinstance(item, tuple) else item).relative_to(root)) for item in items)


def test_first_run_records_every_file(tmp_path):
    root = build_folder(tmp_path / "docs")
    store = RecordingStore()
    report = ingest_folder(store, root, max_file_bytes=4096)

    assert relative(root, report.added) == [
        "code.py", "doc.pdf", "latin.txt", "notes/cabin.md", "notes/plain.txt", "page.html",
    ]
    assert relative(root, report.failed) == ["broken.pdf", "undecodable.txt"]
    assert relative(root, report.skipped) == ["empty.md", "huge.txt", "image.png"]
    reasons = {Path(path).name: reason for path, reason in report.skipped + report.failed}
    assert reasons["empty.md"].startswith("no text")
    assert reasons["huge.txt"] == "too large: 5000 bytes exceeds the limit of 4096 bytes"
    assert reasons["image.png"] == "unsupported file type .png"
    assert reasons["broken.pdf"].startswith("broken PDF")
    assert reasons["undecodable.txt"].startswith("undecodable")
    assert report.passages == sum(len(p) for p in store.passages.values())
    assert report.passages >= 6
    assert not report.cancelled

    # Every file is recorded with its status; the hash is the file's SHA-256.
    assert {Path(d.path).name: d.status for d in store.documents()}["broken.pdf"] == "failed"
    cabin = store.docs[str(root / "notes" / "cabin.md")]
    assert cabin.sha256 == hashlib.sha256((root / "notes" / "cabin.md").read_bytes()).hexdigest()
    assert "wifi password at the cabin is x7" in store.passages[cabin.path][0].text
    assert "café crème" in store.passages[str(root / "latin.txt")][0].text
    assert "script" not in store.passages[str(root / "page.html")][0].text


def test_rerun_touches_nothing_unchanged(tmp_path):
    root = build_folder(tmp_path / "docs")
    store = RecordingStore()
    ingest_folder(store, root, max_file_bytes=4096)
    store.calls.clear()

    report = ingest_folder(store, root, max_file_bytes=4096)
    assert store.calls == []
    assert len(report.unchanged) == 6
    assert report.added == report.updated == report.removed == []
    # Failures and skips are still shown on every run.
    assert relative(root, report.failed) == ["broken.pdf", "undecodable.txt"]
    assert len(report.skipped) == 3


def test_changed_touched_and_deleted_files(tmp_path):
    root = build_folder(tmp_path / "docs")
    store = RecordingStore()
    ingest_folder(store, root, max_file_bytes=4096)
    store.calls.clear()

    cabin = root / "notes" / "cabin.md"
    cabin.write_text("# Cabin\n\nThe wifi password at the cabin is now q9.\n")
    os.utime(cabin, (2_000_000_000, 2_000_000_000))
    plain = root / "notes" / "plain.txt"
    os.utime(plain, (2_000_000_000, 2_000_000_000))  # same bytes, new mtime
    (root / "code.py").unlink()

    report = ingest_folder(store, root, max_file_bytes=4096)
    assert relative(root, report.updated) == ["notes/cabin.md"]
    assert relative(root, report.removed) == ["code.py"]
    assert "notes/plain.txt" in relative(root, report.unchanged)
    assert store.calls == [("add", str(cabin)), ("remove", str(root / "code.py"))]
    assert "q9" in store.passages[str(cabin)][0].text
    assert str(root / "code.py") not in store.docs


def test_broken_file_loses_passages(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    note = root / "note.txt"
    note.write_text("Old content that was fine.")
    store = RecordingStore()
    ingest_folder(store, root)
    note.write_bytes(b"\x81\x8d" * 100)

    report = ingest_folder(store, root)
    assert [Path(p).name for p, _ in report.failed] == ["note.txt"]
    assert store.calls[-1] == ("failed", str(note))
    assert store.docs[str(note)].status == "failed"
    assert str(note) not in store.passages


def test_other_folders_are_left_alone(tmp_path):
    first = tmp_path / "first"
    second = tmp_path / "first-sibling"
    for folder in (first, second):
        folder.mkdir()
        (folder / "a.txt").write_text(f"text of {folder.name}")
    store = RecordingStore()
    ingest_folder(store, first)
    ingest_folder(store, second)
    report = ingest_folder(store, first)
    assert report.removed == []
    assert str(second / "a.txt") in store.docs


def test_folder_through_symlink_is_the_same(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.txt").write_text("alpha")
    (tmp_path / "link").symlink_to(root)
    store = RecordingStore()
    ingest_folder(store, root)
    report = ingest_folder(store, tmp_path / "link")
    assert report.unchanged == [str(root / "a.txt")]
    assert report.added == report.removed == []
    assert list(store.docs) == [str(root / "a.txt")]


def test_passage_offsets_point_into_the_text(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    text = "\n\n".join(f"Paragraph {i}. " + "word " * (i * 7 % 90) for i in range(60))
    (root / "long.txt").write_text(text)
    store = RecordingStore()
    ingest_folder(store, root, max_chars=300)
    passages = store.passages[str(root / "long.txt")]
    assert len(passages) > 5
    for passage in passages:
        assert text[passage.start : passage.end] == passage.text
        assert len(passage.text) <= 300


def test_progress_files_bytes_rate(tmp_path):
    root = build_folder(tmp_path / "docs")
    updates: list[IngestProgress] = []
    ingest_folder(RecordingStore(), root, progress=updates.append, max_file_bytes=4096)
    assert updates
    final = updates[-1]
    assert final.files_done == final.files_total == 11
    assert final.bytes_done == final.bytes_total
    assert final.passages >= 6
    assert final.passages_per_s > 0
    assert final.eta_s == 0
    done = [update.files_done for update in updates]
    assert done == sorted(done)


def test_progress_inside_a_big_file(tmp_path, monkeypatch):
    monkeypatch.setattr("app.ingest.pipeline.PROGRESS_INTERVAL_S", 0.0)
    (tmp_path / "big.txt").write_text("A sentence of filler text. " * 40_000)
    updates: list[IngestProgress] = []
    report = ingest_folder(RecordingStore(), tmp_path, progress=updates.append)
    inside = [update for update in updates if update.files_done == 0 and update.passages > 0]
    assert inside
    assert all(0 < update.bytes_done <= update.bytes_total for update in inside)
    assert [update.passages for update in inside] == sorted(update.passages for update in inside)
    assert updates[-1].passages == report.passages


def test_cancel_then_rerun_completes(tmp_path, monkeypatch):
    root = tmp_path / "docs"
    root.mkdir()
    for index in range(20):
        (root / f"note{index:02}.txt").write_text(f"Note number {index}.")
    store = RecordingStore()
    ingest_folder(store, root)
    (root / "note00.txt").unlink()
    for index in range(1, 20):
        (root / f"note{index:02}.txt").write_text(f"Note number {index}, edited.")

    stop = threading.Event()

    def on_progress(update: IngestProgress) -> None:
        if update.files_done >= 5:
            stop.set()

    monkeypatch.setattr("app.ingest.pipeline.PROGRESS_INTERVAL_S", 0.0)
    first = ingest_folder(store, root, progress=on_progress, cancel=stop)
    assert first.cancelled
    assert 0 < len(first.updated) < 19
    # The deleted file is only forgotten by a walk that finished.
    assert first.removed == []
    # Each document is wholly at its old or its new version: the recorded
    # hash matches the passage text stored with it.
    for path, passages in store.passages.items():
        assert hashlib.sha256(passages[0].text.encode()).hexdigest() == store.docs[path].sha256
    edited = [path for path, passages in store.passages.items() if "edited" in passages[0].text]
    assert sorted(edited) == sorted(first.updated)

    second = ingest_folder(store, root)
    assert not second.cancelled
    assert len(first.updated) + len(second.updated) == 19
    assert relative(root, second.removed) == ["note00.txt"]
    assert all("edited" in passages[0].text for passages in store.passages.values())


def test_cancel_accepts_a_callable(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    report = ingest_folder(RecordingStore(), tmp_path, cancel=lambda: True)
    assert report.cancelled
    assert report.added == []
    with pytest.raises(TypeError, match="cancel must be a callable or a threading.Event, got int"):
        ingest_folder(RecordingStore(), tmp_path, cancel=3)


def test_missing_folder_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found"):
        ingest_folder(RecordingStore(), tmp_path / "missing")
