"""An exclusive, process-wide lock on one memory folder.

The lock is `flock` on a `lock` file inside the folder. The kernel drops it
when the holding process exits, however it exits, so a lock left behind by a
killed process never blocks anyone. The file only keeps that process's pid,
which the next owner overwrites and logs as a cleared stale lock. A clean
release empties the file.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from pathlib import Path

from app.memory.errors import MemoryInUseError, StorageError

logger = logging.getLogger(__name__)

LOCK_NAME = "lock"
POLL_INTERVAL_S = 0.05


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


class MemoryLock:
    """Hold the lock of `data_dir` until `release()`.

    Args:
        data_dir: the memory folder (must exist).
        wait: seconds to wait for another holder to finish; 0 fails at once.

    Raises:
        MemoryInUseError: another live process holds the lock after `wait`.
        StorageError: the lock file cannot be created (read-only folder).
    """

    def __init__(self, data_dir: Path, wait: float = 0.0):
        self.path = Path(data_dir) / LOCK_NAME
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise StorageError(f"cannot create the lock file {self.path}: {error.strerror}") from error
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    os.close(self._fd)
                    raise StorageError(f"cannot lock {self.path}: {error.strerror}") from error
            if time.monotonic() >= deadline:
                holder = _read_pid(self._fd)
                os.close(self._fd)
                raise MemoryInUseError(str(data_dir), holder)
            time.sleep(POLL_INTERVAL_S)

        previous = _read_pid(self._fd)
        if previous is not None and previous != os.getpid():
            logger.info("cleared a stale lock left by pid %d in %s", previous, data_dir)
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.write(self._fd, f"{os.getpid()}\n".encode("ascii"))
        self.held = True

    def release(self) -> None:
        """Clear the pid and drop the lock."""
        if not self.held:
            return
        self.held = False
        try:
            os.ftruncate(self._fd, 0)
        except OSError as error:
            logger.warning("could not clear the pid in %s: %s", self.path, error.strerror)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
