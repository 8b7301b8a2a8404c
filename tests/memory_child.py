"""Child processes that write to a memory, for the crash, lock and full-disk tests.

The tests start each child as a fresh interpreter (`sys.executable` running
this file) instead of calling `os.fork()`. Pytest's process has torch and
SQLite threads that may hold locks at the moment of a fork, and a forked
child that needs one of those locks waits forever.

Protocol on the child's stdin and stdout, one line each:

1. the child imports torch and the memory engine, then prints `ready`;
2. it waits for `go` on stdin, so a parent can start the next child while it
   still needs the current one and keep the seconds of importing torch out
   of the measured part;
3. it runs its command and prints one line per finished step (a write id, a
   progress count or an outcome), flushed at once, so a line that the parent
   reads is a step that returned before any kill.

The child inherits the parent's environment (the per-test HYDRA_DATA_DIR,
HYDRA_CONFIG_DIR and HYDRA_CACHE_DIR) with the repository put first on
PYTHONPATH and the CPU forced.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.memory import MemoryConfig

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 120.0


# The parent side ----------------------------------------------------------------


class Child:
    """One child process running `command` of this module; kill it or wait for it to finish.

    Use it as a context manager so that a failing test never leaves a child
    running.
    """

    def __init__(self, command: str, *args: str, config: MemoryConfig, stderr_path: Path):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        env["HYDRA_DEVICE"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            [sys.executable, __file__, command, json.dumps(dataclasses.asdict(config)), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            bufsize=0,  # unbuffered, so that select() reports every line the child printed
            env=env,
            cwd=REPO,
        )
        self.pid = self.process.pid

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.process.poll() is None:
            self.kill()
        self._close()

    def readline(self, timeout: float) -> str:
        """Return the child's next output line, or '' when it exited; raise TimeoutError after `timeout` seconds."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"child {self.pid} printed nothing for {timeout:.0f} s; stderr:\n{self.stderr()}")
        return self.process.stdout.readline().decode()

    def wait_ready(self) -> None:
        """Block until the child has imported everything."""
        line = self.readline(READY_TIMEOUT_S)
        if line.strip() != "ready":
            self.process.wait()
            raise RuntimeError(f"child {self.pid} did not start (printed {line!r}); stderr:\n{self.stderr()}")

    def go(self) -> None:
        """Let the child run its command."""
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()

    def start(self) -> Child:
        """Wait until the child is ready, then let it run."""
        self.wait_ready()
        self.go()
        return self

    def kill(self) -> list[str]:
        """SIGKILL the child, reap it, and return the lines it printed after `ready`."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        lines = self.process.stdout.read().decode().split("\n")
        self._close()
        return [line for line in lines if line]

    def finish(self, timeout: float) -> tuple[int, list[str]]:
        """Wait for the child to exit; return its exit status and the lines it printed after `ready`."""
        output, _ = self.process.communicate(timeout=timeout)
        self._close()
        return self.process.returncode, [line for line in output.decode().split("\n") if line]

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def _close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None and not stream.closed:
                try:
                    stream.close()
                except BrokenPipeError:
                    pass
        self._stderr.close()


# The child side ------------------------------------------------------------------


def _emit(line: str) -> None:
    os.write(1, f"{line}\n".encode())


class _Passage:
    def __init__(self, text: str, start: int):
        self.text = text
        self.start = start
        self.end = start + len(text)


def run_random_writes(memory_dir: str, seed: str, subjects: str) -> None:
    """Run random teach, forget, undo and document writes until killed, printing each finished write id."""
    import random

    from app.memory import UndoError, UnknownSubjectError

    rng = random.Random(int(seed))
    subject_list = json.loads(subjects)
    with _open(memory_dir, wait=10.0) as memory:
        while True:
            choice = rng.random()
            subject = rng.choice(subject_list)
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
                    passages = [
                        _Passage(f"note {rng.randrange(99)} about shed {j} and its door", 40 * j)
                        for j in range(rng.randrange(1, 6))
                    ]
                    memory.add_document(path, "0" * 64, 100, 1.0, passages)
                    write_id = memory.writes()[-1].write_id
            except (UnknownSubjectError, UndoError):
                continue
            _emit(str(write_id))


def run_ingest(memory_dir: str, documents: str) -> None:
    """Ingest `documents`, printing `progress N` after every finished file and `done F` (failed files) at the end."""
    from app.ingest import pipeline

    pipeline.PROGRESS_INTERVAL_S = 0.0

    def progress(update) -> None:
        _emit(f"progress {update.files_done}")

    # Like `hydra-chat ingest`, skip loading the sentence encoder, which ingest never uses.
    with _open(memory_dir, wait=10.0, warm_up_encoder=False) as memory:
        report = memory.ingest(documents, progress=progress)
    _emit(f"done {len(report.failed)}")


def run_hold_lock(memory_dir: str) -> None:
    """Open the memory, teach one fact, print `locked` and its HYDRA_* folders, and keep the lock until killed."""
    memory = _open(memory_dir)
    memory.teach("boat name", "Tern")
    folders = {name: os.environ.get(name) for name in ("HYDRA_DATA_DIR", "HYDRA_CONFIG_DIR", "HYDRA_CACHE_DIR")}
    _emit(f"locked {json.dumps(folders)}")
    time.sleep(300)


def run_full_disk(memory_dir: str) -> None:
    """Save and teach under a 64 KiB file-size limit (a full disk), printing one line per outcome."""
    import resource

    from app.memory import StorageError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    with _open(memory_dir) as memory:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
        try:
            memory.save()
            _emit("saved")
        except StorageError as error:
            _emit(f"save failed: {error}")
        try:
            for i in range(200):
                memory.teach(f"long note {i}", "x" * 5000)
            _emit("taught")
        except StorageError as error:
            _emit(f"teach failed: {error}")
        _emit(f"recall {memory.recall('What is the locker code?').items[0].value}")
        _emit(f"facts {len(memory.facts())}")
        # The final checkpoint would fail too, and the log already contains every write.
        memory._pending = 0


COMMANDS = {
    "random-writes": run_random_writes,
    "ingest": run_ingest,
    "hold-lock": run_hold_lock,
    "full-disk": run_full_disk,
}
_config: dict = {}


def _open(memory_dir: str, wait: float = 0.0, warm_up_encoder: bool = True):
    from app.memory import Memory, MemoryConfig

    return Memory.open(memory_dir, wait=wait, config=MemoryConfig(**_config), warm_up_encoder=warm_up_encoder)


def main(argv: list[str]) -> None:
    command, config, *args = argv
    if command not in COMMANDS:
        raise SystemExit(f"unknown command {command!r}; expected one of {sorted(COMMANDS)}")
    _config.update(json.loads(config))

    import torch

    import app.ingest.pipeline  # noqa: F401 - imported before `ready` so that `go` starts work at once
    import app.memory  # noqa: F401

    # One thread: the engine's small sparse updates only slow down when two
    # threads share the 2 cores with the parent and the next child.
    torch.set_num_threads(1)
    _emit("ready")
    if sys.stdin.readline().strip() != "go":
        return
    COMMANDS[command](*args)


if __name__ == "__main__":
    main(sys.argv[1:])
