"""Measurement helpers shared by the claim checks: slopes, timers and memory."""

from __future__ import annotations

import ctypes
import gc
import math
import os
import threading
import time
from pathlib import Path
from typing import Callable, Sequence


def loglog_slope(lengths: Sequence[float], costs: Sequence[float]) -> float:
    """Least-squares slope of log(cost) against log(length).

    A cost that grows as N**p gives slope p, so 1 means linear and 2 quadratic.
    """
    if len(lengths) != len(costs):
        raise ValueError(f"got {len(lengths)} lengths but {len(costs)} costs; expected one cost per length")
    if len(lengths) < 2:
        raise ValueError(f"a slope needs at least 2 points, got {len(lengths)}")
    if min(lengths) <= 0 or min(costs) <= 0:
        raise ValueError("lengths and costs must be positive to take logarithms")
    xs = [math.log(x) for x in lengths]
    ys = [math.log(y) for y in costs]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        raise ValueError("all lengths are equal; a slope needs at least two different lengths")
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread


def best_time(function: Callable[[], object], repeats: int) -> float:
    """Return the fastest of `repeats` wall-clock runs of `function`, in seconds.

    The minimum is the estimate least disturbed by other processes on a
    shared machine.
    """
    best = math.inf
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def release_free_memory() -> None:
    """Collect garbage and ask glibc to return freed heap memory to the OS.

    Without this, memory freed by an earlier run stays in the allocator and a
    later run that reuses it shows no RSS growth.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the peak may then be understated


def rss_bytes() -> int:
    """Return the resident set size of this process."""
    import psutil

    return psutil.Process().memory_info().rss


class PeakRSS:
    """Track the peak resident set size inside a `with` block.

    On Linux the kernel's high-water mark (VmHWM) is reset on entry by
    writing 5 to /proc/self/clear_refs and read on exit. Elsewhere a thread
    samples the RSS every millisecond, which can miss a short spike.
    `peak_growth` is the peak minus the RSS on entry, in bytes.
    """

    def __init__(self) -> None:
        self.start = 0
        self.peak = 0
        self._use_kernel = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakRSS":
        self.start = rss_bytes()
        self.peak = self.start
        self._use_kernel = _reset_high_water_mark()
        if not self._use_kernel:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._use_kernel:
            high_water = _read_high_water_mark()
            self.peak = max(self.peak, high_water or 0, rss_bytes())
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, rss_bytes())

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_bytes())

    @property
    def peak_growth(self) -> int:
        """Peak RSS above the RSS at entry, in bytes (never negative)."""
        return max(0, self.peak - self.start)


def _reset_high_water_mark() -> bool:
    try:
        Path(f"/proc/{os.getpid()}/clear_refs").write_text("5")
    except OSError:
        return False
    return _read_high_water_mark() is not None


def _read_high_water_mark() -> int | None:
    try:
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
