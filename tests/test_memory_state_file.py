"""State files: atomic saves, checksums, and bad files reported by path and left untouched."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.memory import Memory, MemoryConfig, StateFileError, StorageError
from app.memory import state_file
from memory_child import Child

SMALL = MemoryConfig(fact_key_dim=1 << 10, fact_value_dim=32, passage_key_dim=1 << 10, passage_value_dim=32, semantic=False)


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_save_and_load_round_trip(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([7], dtype=torch.int64)}
    path = tmp_path / "s.safetensors"
    size = state_file.save_state(path, tensors, {"last_write_id": "3"})
    loaded, metadata = state_file.load_state(path)
    assert size == path.stat().st_size
    assert metadata == {"last_write_id": "3"}
    assert torch.equal(loaded["a"], tensors["a"])
    assert torch.equal(loaded["b"], tensors["b"])
    assert oct(path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[: len(data) // 2], "unreadable|truncated|header length"),
        (lambda data: data[:-40] + bytes(b ^ 0xFF for b in data[-40:]), "checksum"),
        (lambda data: b"not a state file at all", "header length|too short"),
        (lambda data: b"", "too short"),
    ],
)
def test_corrupt_state_file_is_reported_and_preserved(tmp_path, damage, reason):
    folder = tmp_path / "mem"
    with Memory.open(folder, config=SMALL) as memory:
        memory.teach("locker code", "4312")
    path = folder / "state.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    before = sha(path)
    with pytest.raises(StateFileError, match=reason) as raised:
        Memory.open(folder, config=SMALL)
    assert str(path) in str(raised.value)
    assert "left untouched" in str(raised.value)
    assert sha(path) == before


def test_foreign_safetensors_file_is_rejected(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "mem"
    folder.mkdir()
    save_file({"x": torch.zeros(3)}, str(folder / "state.safetensors"), metadata={"format": "pt"})
    with pytest.raises(StateFileError, match="not a hydra-chat memory state file"):
        Memory.open(folder, config=SMALL)


def test_state_file_of_other_sizes_is_rejected(tmp_path):
    folder = tmp_path / "mem"
    with Memory.open(folder, config=SMALL):
        pass
    bigger = MemoryConfig(fact_key_dim=1 << 11, fact_value_dim=32, passage_key_dim=1 << 10, passage_value_dim=32, semantic=False)
    with pytest.raises(StateFileError, match="state sizes"):
        Memory.open(folder, config=bigger)


def test_missing_state_file_is_rebuilt_from_log(tmp_path):
    folder = tmp_path / "mem"
    with Memory.open(folder, config=SMALL) as memory:
        memory.teach("locker code", "4312")
        expected = {k: v.clone() for k, v in memory.state_tensors().items()}
    (folder / "state.safetensors").unlink()
    with Memory.open(folder, config=SMALL) as memory:
        for name, tensor in memory.state_tensors().items():
            assert torch.equal(tensor, expected[name]), name


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    folder = tmp_path / "mem"
    with Memory.open(folder, config=SMALL) as memory:
        memory.teach("locker code", "1")
        memory.save()
        before = sha(folder / "state.safetensors")

        def disk_full(fd, data):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(state_file, "_write_bytes", disk_full)
        memory.teach("locker code", "2")
        with pytest.raises(StorageError, match="No space left on device.*previous file is unchanged"):
            memory.save()
        assert sha(folder / "state.safetensors") == before
        assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []
        # The in-memory state and the log still work.
        assert memory.recall("What is the locker code?").items[0].value == "2"
        monkeypatch.undo()
    with Memory.open(folder, config=SMALL) as memory:
        assert memory.recall("What is the locker code?").items[0].value == "2"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_loader_rejects_random_bytes(tmp_path, data):
    path = tmp_path / "random.safetensors"
    path.write_bytes(data)
    with pytest.raises(StateFileError):
        state_file.load_state(path)
    assert path.read_bytes() == data


def test_read_only_folder_gives_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "mem"
    with Memory.open(folder, config=SMALL) as memory:
        memory.teach("locker code", "1")
        memory.save()
        before = sha(folder / "state.safetensors")
        real_open = os.open

        def read_only_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(30, "Read-only file system", str(path))
            return real_open(path, flags, *args, **kwargs)

        memory.teach("locker code", "2")
        monkeypatch.setattr(os, "open", read_only_open)
        with pytest.raises(StorageError, match=f"cannot write {folder}.*Read-only file system.*read-only"):
            memory.save()
        monkeypatch.undo()
        assert sha(folder / "state.safetensors") == before
        assert memory.recall("What is the locker code?").items[0].value == "2"


def test_read_only_log_gives_clear_error(tmp_path):
    folder = tmp_path / "mem"
    with Memory.open(folder, config=SMALL) as memory:
        memory.teach("locker code", "1")
        writes_before = memory.stats().writes

        # query_only makes SQLite fail every write with SQLITE_READONLY, as a
        # log file on a read-only mount does (root ignores a chmod).
        memory.db.conn.execute("PRAGMA query_only = ON")
        with pytest.raises(StorageError, match=f"memory log {folder}.*readonly.*make {folder} writable") as raised:
            memory.teach("locker code", "2")
        assert "teach" in str(raised.value)
        with pytest.raises(StorageError, match="readonly"):
            memory.forget("locker code")

        # Nothing changed: the log, the live fact and recall all still give the old value.
        assert memory.stats().writes == writes_before
        assert [fact.value for fact in memory.facts()] == ["1"]
        assert memory.recall("What is the locker code?").items[0].value == "1"

        memory.db.conn.execute("PRAGMA query_only = OFF")
        memory.teach("locker code", "2")
    with Memory.open(folder, config=SMALL) as memory:
        assert memory.recall("What is the locker code?").items[0].value == "2"


@pytest.mark.timeout(300)
def test_full_disk_keeps_memory_usable(tmp_path):
    folder = tmp_path / "mem"
    with Memory.open(folder, config=SMALL) as memory:
        memory.teach("locker code", "4312")
    before = sha(folder / "state.safetensors")

    # The child saves and teaches under a 64 KiB file-size limit, which fails
    # writes the way a full disk does.
    with Child("full-disk", str(folder), config=SMALL, stderr_path=tmp_path / "child.err") as child:
        child.start()
        status, lines = child.finish(timeout=120)
        assert status == 0, f"{lines}\n{child.stderr()}"

    assert lines[0].startswith("save failed: cannot write"), lines
    assert "previous file is unchanged" in lines[0], lines
    assert lines[1].startswith("teach failed: cannot write"), lines
    assert "free disk space" in lines[1], lines
    assert lines[2] == "recall 4312"
    taught = int(lines[3].split()[1])
    assert sha(folder / "state.safetensors") == before
    with Memory.open(folder, config=SMALL) as memory:
        assert len(memory.facts()) == taught
        assert memory.recall("What is the locker code?").items[0].value == "4312"
