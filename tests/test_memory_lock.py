"""The memory lock across processes: a second process is refused, a killed holder's lock is cleared."""

from __future__ import annotations

import os
import signal
import time

import pytest

from app.memory import Memory, MemoryConfig, MemoryInUseError

SMALL = MemoryConfig(fact_key_dim=1 << 10, fact_value_dim=32, passage_key_dim=1 << 10, passage_value_dim=32, semantic=False)


def _hold_lock(folder, ready_fd):
    memory = Memory.open(folder, config=SMALL)
    memory.teach("boat name", "Tern")
    os.write(ready_fd, b"ready")
    time.sleep(60)


def test_killed_holder_refuses_then_clears(tmp_path, caplog):
    folder = tmp_path / "mem"
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            _hold_lock(folder, write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    assert os.read(read_fd, 5) == b"ready"
    os.close(read_fd)
    try:
        with pytest.raises(MemoryInUseError, match=f"memory in use by pid {pid}"):
            Memory.open(folder, config=SMALL)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    caplog.set_level("INFO", logger="app.memory.lock")
    with Memory.open(folder, config=SMALL) as memory:
        assert [f.value for f in memory.facts()] == ["Tern"]
    assert f"cleared a stale lock left by pid {pid}" in caplog.text
    assert (folder / "lock").read_text() == ""
