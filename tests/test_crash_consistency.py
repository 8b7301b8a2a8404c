"""Crash consistency: SIGKILL a writer at random points, then reopen and check.

A child process (see `memory_child.py`) opens the memory and runs teach,
forget, undo and document writes (or a whole folder ingest) in a loop,
printing each write id as soon as the call returns. The test kills it with
SIGKILL after a random delay, so kills land inside SQLite commits, state
applies and state checkpoints (the checkpoint interval is small on purpose).
After every kill:

- the memory reopens without error;
- every write the child reported as done is in the log;
- the state (checkpoint plus replay) equals, bit for bit, a state rebuilt by
  replaying the whole log from empty;
- the live facts equal the `live_after` of each subject's last log row;
- an interrupted ingest completes when it is run again.

Each test kills HYDRA_CRASH_KILLS times (default 25, so 50 in all); set it
higher for a longer run.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from app.memory import Memory, MemoryConfig
from memory_child import Child

CONFIG = MemoryConfig(
    fact_key_dim=1 << 11, fact_value_dim=32, passage_key_dim=1 << 11, passage_value_dim=32, checkpoint_every=5,
    semantic=False,
)
KILLS_PER_KIND = int(os.environ.get("HYDRA_CRASH_KILLS", "25"))
# Children started ahead of the one being killed.
PRESTART = 2
SUBJECTS = [f"door code of shed {i}" for i in range(12)]


@dataclasses.dataclass
class KillRound:
    lines: list[str]  # what the child printed before it died
    killed: bool  # False when the child had already finished its command


def _kill_rounds(
    tmp_path: Path, child_args: Callable[[int], list[str]], delays: list[float]
) -> Iterator[KillRound]:
    """Run one child per delay and SIGKILL it `delay` seconds after `go` unless it finished first.

    The next `PRESTART` children start while the current one runs, so that
    their seconds of importing torch overlap the current round instead of
    adding to it.
    """
    def spawn(index: int) -> Child:
        return Child(*child_args(index), config=CONFIG, stderr_path=tmp_path / f"child{index}.err")

    upcoming = collections.deque(spawn(index) for index in range(min(PRESTART, len(delays))))
    try:
        for index, delay in enumerate(delays):
            with upcoming.popleft() as child:
                child.start()
                if index + PRESTART < len(delays):
                    upcoming.append(spawn(index + PRESTART))
                time.sleep(delay)
                exit_status = child.process.poll()
                if exit_status is None:
                    yield KillRound(lines=child.kill(), killed=True)
                else:
                    assert exit_status == 0, f"child {child.pid} failed with {exit_status}; stderr:\n{child.stderr()}"
                    yield KillRound(lines=child.finish(timeout=10)[1], killed=False)
    finally:
        for child in upcoming:
            child.kill()


def _check_consistent(folder: Path, acknowledged: set[int]) -> None:
    with Memory.open(folder, config=CONFIG) as memory:
        logged = {record.write_id for record in memory.writes()}
        missing = acknowledged - logged
        assert not missing, f"writes reported as done are missing from the log: {sorted(missing)}"

        live = memory.state_tensors()
        replayed = memory.replayed_state_tensors()
        for name, tensor in replayed.items():
            assert torch.equal(live[name], tensor), f"state tensor {name} differs from a replay of the log"

        for subject in SUBJECTS:
            history = memory.history(subject)
            expected = history[-1].live_after if history else None
            facts = {f.subject.casefold(): f.write_id for f in memory.facts()}
            assert facts.get(subject) == expected, f"live fact of {subject!r} disagrees with its last log row"


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.timeout(600)
def test_kill_during_fact_and_document_writes(tmp_path):
    folder = tmp_path / "mem"
    rng = random.Random(1234)
    delays = [rng.uniform(0.02, 0.4) for _ in range(KILLS_PER_KIND)]
    acknowledged: set[int] = set()
    kills = kills_with_writes = 0

    def child_args(index: int) -> list[str]:
        return ["random-writes", str(folder), str(index), json.dumps(SUBJECTS)]

    for result in _kill_rounds(tmp_path, child_args, delays):
        assert result.killed, "a random-writes child never finishes on its own"
        kills += 1
        acknowledged |= {int(line) for line in result.lines}
        kills_with_writes += bool(result.lines)
        _check_consistent(folder, acknowledged)

    assert kills == KILLS_PER_KIND
    assert kills_with_writes >= KILLS_PER_KIND // 3, "too few kills landed after a write finished"
    assert len(acknowledged) > KILLS_PER_KIND


def _make_documents(root: Path, count: int) -> Path:
    root.mkdir()
    for i in range(count):
        body = "\n\n".join(f"Section {j} of file {i}: the pump at station {i * 7 + j} needs oil." for j in range(8))
        (root / f"file{i:03d}.md").write_text(f"# File {i}\n\n{body}\n")
    return root


@pytest.mark.timeout(600)
def test_kill_during_ingest_then_rerun_completes(tmp_path):
    folder = tmp_path / "mem"
    documents = _make_documents(tmp_path / "docs", 40)
    rng = random.Random(99)
    delays = [rng.uniform(0.05, 0.8) for _ in range(KILLS_PER_KIND)]
    kills = 0

    def child_args(index: int) -> list[str]:
        return ["ingest", str(folder), str(documents)]

    for result in _kill_rounds(tmp_path, child_args, delays):
        kills += result.killed
        if not result.killed:
            assert result.lines[-1] == "done 0", result.lines
        _check_consistent(folder, set())
        # Change several files so that the next run replaces passages as well
        # as adding them, and has work left for the next kill to interrupt.
        for path in rng.sample(sorted(documents.iterdir()), 8):
            path.write_text(path.read_text() + f"\nAppended note {rng.randrange(1000)}.\n")

    assert kills >= KILLS_PER_KIND * 4 // 5, f"only {kills} of {KILLS_PER_KIND} kills landed before the ingest finished"
    with Memory.open(folder, config=CONFIG) as memory:
        report = memory.ingest(documents)
        assert not report.failed
        records = memory.documents()
        assert len(records) == 40
        assert all(record.status == "ingested" for record in records)
        live_paths = {row[0] for row in memory.db.conn.execute("SELECT DISTINCT path FROM passages WHERE removed_by IS NULL")}
        assert live_paths == {record.path for record in records}
        assert memory.stats().passages == sum(record.passages for record in records)
    _check_consistent(folder, set())
