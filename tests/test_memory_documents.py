"""Document passages in memory: add, replace, remove, record status, recall, ingest."""

from __future__ import annotations

import pytest

from app.memory import Memory, MemoryConfig

SMALL = MemoryConfig(fact_key_dim=1 << 12, fact_value_dim=64, passage_key_dim=1 << 14, passage_value_dim=128, semantic=False)


class Passage:
    def __init__(self, text: str, start: int):
        self.text = text
        self.start = start
        self.end = start + len(text)


@pytest.fixture
def memory(tmp_path):
    with Memory.open(tmp_path / "mem", config=SMALL) as mem:
        yield mem


def test_add_document_recalls_passage_with_origin(memory):
    count = memory.add_document(
        "notes/boat.md", "a" * 64, 120, 1.0,
        [Passage("The boat's engine takes two-stroke oil mixed at 50 to 1.", 0),
         Passage("The mooring fee is paid every March at the harbour office.", 60)],
    )
    assert count == 2
    recall = memory.recall("When is the mooring fee paid?")
    assert recall.known
    assert recall.items[0].kind == "passage"
    assert recall.items[0].origin == "notes/boat.md:60"
    assert "March" in recall.items[0].text
    assert [(d.path, d.status, d.passages) for d in memory.documents()] == [("notes/boat.md", "ingested", 2)]


def test_changed_document_forgets_old_passages(memory):
    memory.add_document("a.md", "1" * 64, 10, 1.0, [Passage("The gate code of the depot is 1234.", 0)])
    memory.add_document("a.md", "2" * 64, 10, 2.0, [Passage("The depot closes at nine in the evening.", 0)])
    stats = memory.stats()
    assert stats.passages == 1
    assert stats.documents == 1
    texts = [item.text for item in memory.recall("What is the gate code of the depot?").items]
    assert "The gate code of the depot is 1234." not in texts
    ops = [(r.op, r.document, r.passages) for r in memory.writes()]
    assert ops == [("ingest", "a.md", 1), ("ingest", "a.md", 1)]


def test_remove_and_record_status(memory):
    memory.add_document("a.md", "1" * 64, 10, 1.0, [Passage("Lighthouse keys hang in the blue cabinet.", 0)])
    memory.record_file_status("a.md", "3" * 64, 10, 3.0, "failed", "broken PDF")
    assert memory.stats().passages == 0
    assert [(d.status, d.reason) for d in memory.documents()] == [("failed", "broken PDF")]
    memory.add_document("b.md", "4" * 64, 10, 1.0, [Passage("The kayak paddles are in the shed.", 0)])
    memory.remove_document("b.md")
    assert [d.path for d in memory.documents()] == ["a.md"]
    assert memory.stats().passages == 0
    assert not memory.recall("Where are the kayak paddles?").known


def test_ingest_folder_then_rerun_handles_changes(tmp_path, memory):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "boat.md").write_text("# Boat\n\nThe outboard motor needs a new spark plug every spring.\n")
    (folder / "garden.txt").write_text("The tomato seedlings go into the greenhouse in April.\n")
    (folder / "blob.bin").write_bytes(bytes(range(256)) * 8)
    report = memory.ingest(folder)
    assert sorted(p.rsplit("/", 1)[1] for p in report.added) == ["boat.md", "garden.txt"]
    assert memory.recall("When do the tomato seedlings go into the greenhouse?").items[0].origin.endswith("garden.txt:0")

    (folder / "garden.txt").unlink()
    (folder / "boat.md").write_text("# Boat\n\nThe outboard motor was sold in June.\n")
    report = memory.ingest(folder)
    assert [p.rsplit("/", 1)[1] for p in report.updated] == ["boat.md"]
    assert [p.rsplit("/", 1)[1] for p in report.removed] == ["garden.txt"]
    assert {d.path.rsplit("/", 1)[1]: d.status for d in memory.documents()} == {"blob.bin": "skipped", "boat.md": "ingested"}
    texts = " ".join(item.text for item in memory.recall("spark plug of the outboard motor").items)
    assert "spark plug" not in texts
    assert "sold in June" in texts


def test_passage_rerank_matches_exact_search(tmp_path):
    from app.memory.recall import ExactIndex

    # A tiny passage state holding many passages: its clean-up order is noisy,
    # and re-ranking every candidate must give the order of exact search.
    config = MemoryConfig(
        fact_key_dim=1 << 10, fact_value_dim=32, passage_key_dim=1 << 10, passage_value_dim=16,
        semantic=False, passage_rerank_top=1000,
    )
    words = "harbour engine mooring fee ledger invoice anchor sail rope tide chart compass beacon keel mast".split()
    texts = [f"{words[i % 15]} {words[(3 * i) % 15]} {words[(7 * i + 1) % 15]} note {i}" for i in range(300)]
    with Memory.open(tmp_path / "mem", config=config) as memory:
        memory.add_document("log.txt", "a" * 64, 1, 1.0, [Passage(t, 40 * i) for i, t in enumerate(texts)])
        rows = memory.db.conn.execute("SELECT id, text FROM passages ORDER BY id").fetchall()
        exact = ExactIndex(memory.passages_state, [r[1] for r in rows], [r[0] for r in rows])
        for question in ("Where is the mooring fee ledger?", "What does the beacon on the keel do?"):
            expected = exact.search(question, k=1)[0][0]
            assert memory.recall(question, k=5).items[0].item_id == expected, question
