"""Crash consistency: SIGKILL a writer at random points, then reopen and check.

A forked child opens the memory and runs teach, forget, undo and document
writes (or a whole folder ingest) in a loop, reporting each write id on a
pipe as soon as the call returns. The parent kills it with SIGKILL after a
random delay, so kills land inside SQLite commits, state applies and state
checkpoints (the checkpoint interval is small on purpose). After every kill:

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

import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from app.memory import Memory, MemoryConfig, UndoError, UnknownSubjectError

CONFIG = MemoryConfig(
    fact_key_dim=1 << 11, fact_value_dim=32, passage_key_dim=1 << 11, passage_value_dim=32, checkpoint_every=5,
    semantic=False,
)
KILLS_PER_KIND = int(os.environ.get("HYDRA_CRASH_KILLS", "25"))
SUBJECTS = [f"door code of shed {i}" for i in range(12)]


class _Passage:
    def __init__(self, text: str, start: int):
        self.text = text
        self.start = start
        self.end = start + len(text)


def _child_writes(folder: Path, ack_fd: int, seed: int) -> None:
    """Run random fact and document writes forever, writing each finished write id to `ack_fd`."""
    rng = random.Random(seed)
    with Memory.open(folder, wait=10.0, config=CONFIG) as memory:
        while True:
            choice = rng.random()
            subject = rng.choice(SUBJECTS)
            try:
                if choice < 0.45:
                    write_id = memory.teach(subject, f"v{rng.randrange(10_000)}", source="crash").write_id
                elif choice < 0.6:
                    write_id = memory.forget(subject, source="crash").write_id
                elif choice < 0.75:
                    history = memory.history(subject)
                    if not history:
                        continue
                    write_id = memory.undo(history[-1].write_id, source="crash").write_id
                else:
                    path = f"notes/doc{rng.randrange(6)}.md"
                    passages = [_Passage(f"note {rng.randrange(99)} about shed {j} and its door", 40 * j) for j in range(rng.randrange(1, 6))]
                    memory.add_document(path, "0" * 64, 100, 1.0, passages)
                    write_id = memory.writes()[-1].write_id
            except (UnknownSubjectError, UndoError):
                continue
            os.write(ack_fd, f"{write_id}\n".encode())


def _child_ingest(folder: Path, documents: Path, ack_fd: int) -> None:
    with Memory.open(folder, wait=10.0, config=CONFIG) as memory:
        report = memory.ingest(documents)
        os.write(ack_fd, f"done {len(report.failed)}\n".encode())


def _run_and_kill(target, delay_s: float) -> list[str]:
    """Fork a child running `target(ack_fd)`, SIGKILL it after `delay_s`, return its acknowledged lines."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        code = 0
        try:
            target(write_fd)
        except BaseException:  # noqa: BLE001 - a child must never return into pytest
            code = 1
        os._exit(code)
    os.close(write_fd)
    time.sleep(delay_s)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    chunks = []
    while True:
        data = os.read(read_fd, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(read_fd)
    return b"".join(chunks).decode().split()


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


def test_kill_during_fact_and_document_writes(tmp_path):
    folder = tmp_path / "mem"
    rng = random.Random(1234)
    acknowledged: set[int] = set()
    kills_with_writes = 0
    for round_index in range(KILLS_PER_KIND):
        delay = rng.uniform(0.02, 0.4)
        lines = _run_and_kill(lambda fd, s=round_index: _child_writes(folder, fd, s), delay)
        acknowledged |= {int(x) for x in lines}
        kills_with_writes += bool(lines)
        _check_consistent(folder, acknowledged)
    assert kills_with_writes >= KILLS_PER_KIND // 3, "too few kills landed after a write finished"
    assert len(acknowledged) > KILLS_PER_KIND


def _make_documents(root: Path, count: int) -> Path:
    root.mkdir()
    for i in range(count):
        body = "\n\n".join(f"Section {j} of file {i}: the pump at station {i * 7 + j} needs oil." for j in range(8))
        (root / f"file{i:03d}.md").write_text(f"# File {i}\n\n{body}\n")
    return root


def test_kill_during_ingest_then_rerun_completes(tmp_path):
    folder = tmp_path / "mem"
    documents = _make_documents(tmp_path / "docs", 40)
    rng = random.Random(99)
    finished = 0
    for _ in range(KILLS_PER_KIND):
        lines = _run_and_kill(lambda fd: _child_ingest(folder, documents, fd), rng.uniform(0.05, 0.8))
        finished += bool(lines)
        _check_consistent(folder, set())
        # Change a few files so that the next run replaces passages as well as adding them.
        for path in rng.sample(sorted(documents.iterdir()), 2):
            path.write_text(path.read_text() + f"\nAppended note {rng.randrange(1000)}.\n")

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
