"""The memory lock across processes: a second process is refused, a killed holder's lock is cleared."""

from __future__ import annotations

import json
import os


import pytest

from app.memory import Memory, MemoryConfig, MemoryInUseError
from memory_child import Child

SMALL = MemoryConfig(fact_key_dim=1 << 10, fact_value_dim=32, passage_key_dim=1 << 10, passage_value_dim=32, semantic=False)


@pytest.mark.timeout(300)
def test_killed_holder_refuses_then_clears(tmp_path, caplog):
    folder = tmp_path / "mem"
    with Child("hold-lock", str(folder), config=SMALL, stderr_path=tmp_path / "child.err") as child:
        child.start()
        status, _, folders = child.readline(timeout=60).strip().partition(" ")
        assert status == "locked", child.stderr()
        # The child runs with the per-test folders that conftest.py set.
        inherited = json.loads(folders)
        for name in ("HYDRA_DATA_DIR", "HYDRA_CONFIG_DIR", "HYDRA_CACHE_DIR"):
            assert inherited[name] == os.environ[name], name
        with pytest.raises(MemoryInUseError, match=f"memory in use by pid {child.pid}"):
            Memory.open(folder, config=SMALL)
        child.kill()

    caplog.set_level("INFO", logger="app.memory.lock")
    with Memory.open(folder, config=SMALL) as memory:
        assert [f.value for f in memory.facts()] == ["Tern"]
    assert f"cleared a stale lock left by pid {child.pid}" in caplog.text
    assert (folder / "lock").read_text() == ""
