"""Memory engine: teach, overwrite, forget and undo against the real log and state."""

from __future__ import annotations

import os
import random
import stat
import threading

import pytest
import torch

from app.memory import (
    Memory,
    MemoryError_,
    MemoryConfig,
    MemoryInUseError,
    StorageError,
    UndoError,
    UnknownSubjectError,
)

SMALL = MemoryConfig(
    fact_key_dim=1 << 12, fact_value_dim=128, passage_key_dim=1 << 12, passage_value_dim=64, semantic=False
)


@pytest.fixture
def memory(tmp_path):
    with Memory.open(tmp_path / "mem", config=SMALL) as mem:
        yield mem


def log_rows(mem: Memory) -> list[tuple]:
    return mem.db.conn.execute(
        "SELECT id, op, subject, value, supersedes, live_after, undoes FROM writes ORDER BY id"
    ).fetchall()


def test_teach_overwrite_forget_undo_cycle(memory):
    first = memory.teach("locker code", "4312", source="test")
    recall = memory.recall("What is my locker code?")
    assert recall.known
    assert recall.items[0].value == "4312"
    assert recall.items[0].origin.startswith("taught ")
    assert recall.items[0].origin.endswith("via test")

    second = memory.teach("Locker code", "9917")
    recall = memory.recall("Which code opens my locker?")
    assert recall.known
    assert recall.items[0].value == "9917"
    assert second.supersedes == first.write_id

    forgotten = memory.forget("locker code")
    recall = memory.recall("What is my locker code?")
    assert not recall.known
    assert all(item.value != "9917" for item in recall.items)

    restored = memory.undo(forgotten.write_id)
    recall = memory.recall("What is my locker code?")
    assert recall.known
    assert recall.items[0].value == "9917"

    assert log_rows(memory) == [
        (1, "teach", "locker code", "4312", None, 1, None),
        (2, "teach", "Locker code", "9917", 1, 2, None),
        (3, "forget", "locker code", None, 2, None, None),
        (4, "undo", "locker code", "9917", None, 2, 3),
    ]
    assert restored.live_after == second.write_id
    assert [r.op for r in memory.history("LOCKER CODE")] == ["teach", "teach", "forget", "undo"]
    assert [(f.subject, f.value, f.write_id) for f in memory.facts()] == [("Locker code", "9917", 2)]


def test_undo_of_overwrite_restores_old_value(memory):
    memory.teach("wifi password at the cabin", "old-pass")
    newer = memory.teach("wifi password at the cabin", "x7")
    memory.undo(newer.write_id)
    assert memory.recall("What's the wifi password at the cabin?").items[0].value == "old-pass"
    assert [f.value for f in memory.facts()] == ["old-pass"]


def test_undo_of_first_teach_makes_subject_unknown(memory):
    taught = memory.teach("dentist phone", "555-0101")
    memory.teach("gym locker", "17")
    memory.undo(taught.write_id)
    recalled = memory.recall("What is my dentist's phone?").items
    assert all(item.value != "555-0101" or item.score < SMALL.fact_threshold for item in recalled)
    assert [f.subject for f in memory.facts()] == ["gym locker"]


def test_undo_rejects_stale_write(memory):
    first = memory.teach("locker code", "1")
    latest = memory.teach("locker code", "2")
    with pytest.raises(UndoError, match=f"undo write {latest.write_id} first"):
        memory.undo(first.write_id)
    with pytest.raises(UndoError, match="no write with id 99"):
        memory.undo(99)


def test_forgotten_subjects_lists_subjects_without_live_fact(memory):
    memory.teach("locker code", "4312")
    memory.teach("boat name", "Wavelet")
    memory.teach("dentist appointment", "March 14")
    memory.forget("my locker code")
    memory.teach("boat name", "Petrel")
    memory.undo(memory.teach("dentist appointment", "April 2").write_id)
    assert memory.forgotten_subjects() == ["my locker code"]

    memory.teach("locker code", "7781")
    assert memory.forgotten_subjects() == []

    memory.undo(memory.forget("boat name").write_id)
    assert memory.forgotten_subjects() == []
    assert {fact.subject: fact.value for fact in memory.facts()}["boat name"] == "Petrel"


def test_forget_unknown_subject_names_it(memory):
    with pytest.raises(UnknownSubjectError, match="no fact about 'boat name'"):
        memory.forget("boat name")
    with pytest.raises(KeyError):
        memory.forget("boat name")


@pytest.mark.parametrize(
    ("subject", "value", "message"),
    [("", "1", "subject is empty"), ("x", "", "value is empty"), ("the of", "1", "no word to recall"),
     ("a" * 501, "1", "maximum is 500"), ("nul\x00", "1", "NUL")],
)
def test_teach_rejects_bad_input(memory, subject, value, message):
    with pytest.raises(ValueError, match=message):
        memory.teach(subject, value)
    assert log_rows(memory) == []


def test_reopen_replays_log_after_checkpoint(tmp_path):
    folder = tmp_path / "mem"
    with Memory.open(folder, config=SMALL) as mem:
        for i in range(20):
            mem.teach(f"room number of guest {i}", str(100 + i))
        expected = {k: v.clone() for k, v in mem.state_tensors().items()}
        mem._pending = 0  # skip the closing checkpoint: the next open must replay the log
    with Memory.open(folder, config=SMALL) as mem:
        for name, tensor in mem.state_tensors().items():
            assert torch.equal(tensor, expected[name]), name
        assert mem.recall("What is the room number of guest 7?").items[0].value == "107"


def test_state_size_constant(tmp_path):
    with Memory.open(tmp_path / "mem", config=SMALL) as mem:
        before = mem.stats()
        for i in range(200):
            mem.teach(f"badge of visitor {i}", f"B{i}")
        mem.save()
        after = mem.stats()
    assert after.state_bytes == before.state_bytes
    assert after.state_file_bytes == before.state_file_bytes
    assert after.writes == 200


def test_second_process_gets_memory_in_use(tmp_path, memory):
    with pytest.raises(MemoryInUseError, match=f"memory in use by pid {os.getpid()}"):
        Memory.open(memory.data_dir, config=SMALL)


def test_waiting_open_succeeds_after_close(tmp_path):
    folder = tmp_path / "mem"
    first = Memory.open(folder, config=SMALL)
    timer = threading.Timer(0.3, first.close)
    timer.start()
    with Memory.open(folder, wait=5.0, config=SMALL) as second:
        assert second.stats().writes == 0
    timer.join()


def test_files_are_owner_only(memory):
    memory.teach("locker code", "1")
    memory.save()
    folder_mode = stat.S_IMODE(os.stat(memory.data_dir).st_mode)
    assert folder_mode == 0o700
    for name in ("memory.db", "state.safetensors", "lock"):
        mode = stat.S_IMODE(os.stat(memory.data_dir / name).st_mode)
        assert mode == 0o600, f"{name} has mode {oct(mode)}"


def test_closed_memory_rejects_calls(tmp_path):
    mem = Memory.open(tmp_path / "mem", config=SMALL)
    mem.close()
    with pytest.raises(Exception, match="closed"):
        mem.teach("a thing", "1")


def test_data_dir_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(StorageError, match="is a file"):
        Memory.open(path)


def test_log_turn_is_logged(memory):
    memory.log_turn("user", "hello")
    memory.log_turn("assistant", "hi")
    assert [(r, t) for r, t, _ in memory.turns()] == [("user", "hello"), ("assistant", "hi")]
    with pytest.raises(ValueError, match="role must be"):
        memory.log_turn("robot", "x")


def test_log_from_newer_version_is_rejected(tmp_path):
    folder = tmp_path / "mem"
    with Memory.open(folder, config=SMALL) as memory:
        memory.db.conn.execute("INSERT INTO migrations (number, name, applied_at) VALUES (99, 'future', 'x')")
    with pytest.raises(MemoryError_, match="schema migration 99.*upgrade hydra-chat"):
        Memory.open(folder, config=SMALL)


def test_migrations_are_recorded(memory):
    rows = memory.db.conn.execute("SELECT number FROM migrations ORDER BY number").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3]
    assert "semantic" in memory.db["writes"].columns_dict


def test_live_codes_stay_in_step():
    from app.memory.codes import item_codes
    from app.memory.engine import _LiveItems

    live = _LiveItems(16, salt=7)
    expected: set[int] = set()
    rng = random.Random(0)
    for _ in range(2000):
        item_id = rng.randrange(300)
        if rng.random() < 0.6:
            live.add(item_id)
            expected.add(item_id)
        else:
            live.discard(item_id)
            expected.discard(item_id)
    ids, codes = live.codes()
    assert sorted(ids.tolist()) == sorted(expected)
    assert torch.equal(codes, item_codes(ids, 16, 7))


def test_background_encoder_failure_is_quiet(monkeypatch, capsys):
    from app.memory import engine

    calls = []

    def failing_load():
        calls.append("load")
        raise ImportError("partially initialized module")

    monkeypatch.setattr(engine, "get_encoder", failing_load)
    engine._warm_up_encoder()
    assert calls == ["load"]
    assert "Traceback" not in capsys.readouterr().err
