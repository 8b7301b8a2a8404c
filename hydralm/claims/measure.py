"""Measurement helpers shared by the claim checks: slopes, timers, threads and memory."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

CHECK_TORCH_THREADS = 1
"""Torch intra-op threads while a check runs.

The claim models are small, so their operations are too short to split
between threads. On a 2-core development machine a 2-thread pool made an MQAR
training step 2 to 7 times slower than one thread, and slower the more other
processes ran. One thread also makes `cpu_seconds` below count all of a
forward's work, because every operation runs on the calling thread.
"""


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


@dataclass(frozen=True)
class Timing:
    """Fastest of several runs of one call, by two clocks.

    `cpu_seconds` is the CPU time of the calling thread (`time.thread_time`)
    when torch runs one intra-op thread, else the CPU time of the whole
    process. Unlike wall time it does not count the time the thread waits
    while other processes hold the cores, so it is the clock the
    wall-clock-twin gates read on a shared machine.
    """

    wall_seconds: float
    cpu_seconds: float
    runs: int


def cpu_clock() -> Callable[[], float]:
    """Return the CPU clock that covers all of torch's work in this thread (see `Timing`)."""
    return time.thread_time if torch.get_num_threads() == 1 else time.process_time


def time_call(function: Callable[[], object], repeats: int, min_cpu_seconds: float = 0.0, max_runs: int = 50) -> Timing:
    """Run `function` at least `repeats` times and return the minimum of each clock.

    Short calls run again until their CPU time adds up to `min_cpu_seconds`
    (at most `max_runs` runs), so a length whose forward takes a few
    milliseconds is not judged from two samples of scheduler noise.
    """
    cpu_now = cpu_clock()
    best_wall = best_cpu = math.inf
    total_cpu = 0.0
    runs = 0
    while runs < max(1, repeats) or (total_cpu < min_cpu_seconds and runs < max_runs):
        wall_start, cpu_start = time.perf_counter(), cpu_now()
        function()
        cpu = cpu_now() - cpu_start
        best_wall = min(best_wall, time.perf_counter() - wall_start)
        best_cpu = min(best_cpu, cpu)
        total_cpu += cpu
        runs += 1
    return Timing(wall_seconds=best_wall, cpu_seconds=best_cpu, runs=runs)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Set torch's intra-op thread count inside the block and restore it on exit.

    NOTE: the count is process-wide, so other threads of the process (a chat
    reply generated while the checks run) also use `count` threads meanwhile.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
