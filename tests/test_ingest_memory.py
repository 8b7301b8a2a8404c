"""Ingestion into the real memory engine: recall, re-runs, failures and a kill -9."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from app.ingest.pipeline import ingest_folder
from app.memory import Memory, MemoryConfig

from memory_child import Child
from test_ingest_extractors import make_pdf

SMALL = MemoryConfig(fact_key_dim=1 << 12, fact_value_dim=128, passage_key_dim=1 << 13, passage_value_dim=128)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run the engine's small sparse tensor updates on one thread.

    On a busy 2-core machine two threads make each update several times
    slower, because the threads wait for each other.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def live_passages(memory: Memory, path: Path) -> list[str]:
    rows = memory.db.conn.execute(
        "SELECT text FROM passages WHERE path = ? AND removed_by IS NULL ORDER BY start", (str(path),)
    ).fetchall()
    return [text for (text,) in rows]


def assert_consistent(memory: Memory) -> None:
    """Every ingested document's passage count matches its live passages, and no live passage is orphaned."""
    recorded = {doc.path: doc for doc in memory.documents()}
    for doc in recorded.values():
        live = len(live_passages(memory, Path(doc.path)))
        expected = doc.passages if doc.status == "ingested" else 0
        assert live == expected, (doc.path, doc.status, live, doc.passages)
    orphans = memory.db.conn.execute(
        "SELECT DISTINCT path FROM passages WHERE removed_by IS NULL"
    ).fetchall()
    for (path,) in orphans:
        assert path in recorded, path
        assert recorded[path].status == "ingested", path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "notes"
    root.mkdir()
    (root / "cabin.md").write_text(
        "# Cabin\n\nThe wifi password at the cabin is x7-gull.\n\n"
        "## Boat\n\nThe boat key hangs on the hook behind the kitchen door.\n"
    )
    (root / "garden.txt").write_text("Tomatoes go into the greenhouse in early May.\n")
    (root / "recipes.html").write_text(
        "<html><body><h1>Pancakes</h1><p>Pancake batter rests for thirty minutes.</p>"
        "<script>tracker()</script></body></html>"
    )
    (root / "manual.pdf").write_bytes(make_pdf("The heat pump filter is cleaned every spring"))
    (root / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\nxref\n0 9\nbroken\n")
    (root / "empty.txt").write_text("")
    (root / "latin1.txt").write_bytes("Le caf\xe9 ouvre \xe0 sept heures.".encode("latin-1"))
    (root / "undecodable.txt").write_bytes(b"\x81\x8d\x8f" * 50)
    (root / "binary.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00" + os.urandom(256))
    (root / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(64))
    (root / "huge.txt").write_text("z" * 300_000)
    return root


def ingest(memory: Memory, folder: Path):
    return ingest_folder(memory, folder, max_file_bytes=100_000)


def test_ingest_then_recall_with_origin(tmp_path, folder):
    with Memory.open(tmp_path / "mem", config=SMALL) as memory:
        state_before = memory.stats().state_bytes
        file_before = memory.stats().state_file_bytes
        report = ingest_folder(memory, folder, max_file_bytes=100_000)

        names = sorted(Path(path).name for path in report.added)
        assert names == ["cabin.md", "garden.txt", "latin1.txt", "manual.pdf", "recipes.html"]
        reasons = {Path(path).name: reason for path, reason in report.skipped + report.failed}
        assert reasons["broken.pdf"].startswith("broken PDF")
        assert reasons["undecodable.txt"].startswith("undecodable")
        assert reasons["binary.txt"] == "binary file: ELF executable"
        assert reasons["photo.jpg"] == "unsupported file type .jpg"
        assert reasons["empty.txt"].startswith("no text")
        assert reasons["huge.txt"] == "too large: 300000 bytes exceeds the limit of 100000 bytes"

        recall = memory.recall("What is the wifi password at the cabin?")
        assert recall.known
        top = recall.items[0]
        assert top.kind == "passage"
        assert "x7-gull" in top.text
        assert top.origin == f"{folder / 'cabin.md'}:0"

        recall = memory.recall("When is the heat pump filter cleaned?")
        assert "every spring" in recall.items[0].text
        recall = memory.recall("How long does pancake batter rest?")
        assert "thirty minutes" in recall.items[0].text
        assert "tracker" not in recall.items[0].text

        statuses = {Path(doc.path).name: doc.status for doc in memory.documents()}
        assert statuses["broken.pdf"] == "failed"
        assert statuses["photo.jpg"] == "skipped"
        assert statuses["cabin.md"] == "ingested"
        assert memory.stats().state_bytes == state_before
        assert_consistent(memory)
    assert (tmp_path / "mem" / "state.safetensors").stat().st_size == file_before


def test_rerun_updates_changed_and_removes_deleted(tmp_path, folder):
    with Memory.open(tmp_path / "mem", config=SMALL) as memory:
        ingest(memory, folder)
        writes_before = memory.stats().writes

        again = ingest(memory, folder)
        assert again.added == again.updated == again.removed == []
        assert memory.stats().writes == writes_before

        cabin = folder / "cabin.md"
        cabin.write_text("# Cabin\n\nThe wifi password at the cabin is now osprey-42.\n")
        os.utime(cabin, (2_000_000_000, 2_000_000_000))
        (folder / "garden.txt").unlink()
        report = ingest(memory, folder)

        assert [Path(path).name for path in report.updated] == ["cabin.md"]
        assert [Path(path).name for path in report.removed] == ["garden.txt"]
        assert live_passages(memory, cabin) == ["# Cabin\n\nThe wifi password at the cabin is now osprey-42."]
        assert live_passages(memory, folder / "garden.txt") == []
        recall = memory.recall("What is the wifi password at the cabin?")
        assert "osprey-42" in recall.items[0].text
        assert all("x7-gull" not in item.text for item in recall.items)
        recall = memory.recall("When do tomatoes go into the greenhouse?")
        assert all("Tomatoes" not in item.text for item in recall.items)
        assert_consistent(memory)


def test_file_turning_undecodable_forgets_it(tmp_path, folder):
    with Memory.open(tmp_path / "mem", config=SMALL) as memory:
        ingest(memory, folder)
        garden = folder / "garden.txt"
        garden.write_bytes(b"\x81\x8d" * 40)
        report = ingest(memory, folder)
        assert [Path(path).name for path, _ in report.failed if "garden" in path] == ["garden.txt"]
        assert live_passages(memory, garden) == []
        assert_consistent(memory)


FILES = 40


@pytest.mark.timeout(300)
def test_kill_during_ingest_then_rerun(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(FILES):
        (folder / f"note{index:03}.txt").write_text(
            f"Note {index}. " + " ".join(f"word{index}x{j}" for j in range(60))
        )
    data = tmp_path / "mem"

    # The child prints `progress N` after each finished file; kill it after the fifth.
    killed = False
    with Child("ingest", str(data), str(folder), config=SMALL, stderr_path=tmp_path / "child.err") as child:
        child.start()
        while line := child.readline(timeout=120):
            if line.startswith("progress") and int(line.split()[1]) >= 5:
                child.kill()
                killed = True
                break
        assert killed, f"the child finished before it could be killed; use more files\n{child.stderr()}"

    with Memory.open(data, config=SMALL, wait=5.0) as memory:
        assert_consistent(memory)
        done_before = len([doc for doc in memory.documents() if doc.status == "ingested"])
        assert 0 < done_before < FILES
        report = memory.ingest(folder)
        assert len(report.added) == FILES - done_before
        assert len(report.unchanged) == done_before
        assert memory.stats().documents == FILES
        assert_consistent(memory)
        recall = memory.recall("word27x12 word27x13")
        assert recall.items[0].origin.startswith(str(folder / "note027.txt"))
