"""Run the memory engine's small torch ops on one intra-op thread.

The engine's tensors ops are small: a sparse key touches a few hundred rows,
and the sentence encoder embeds one short question. torch hands such ops to
its intra-op thread pool anyway, and on a 2-core machine whose other core is
busy each op then waits for a descheduled pool thread. Measured there
(`bench/bench_memory.py` machine, load average 8): one recall took 44 ms
with two torch threads and 8 ms with one, and one MiniLM encode 497 ms
against 73 ms.

`torch.set_num_threads` sets the calling thread's OpenMP team size, and
torch also keeps the value as the default for threads that start using
torch later. So the previous value is restored on exit, and other threads
that already ran torch ops (the chat model's) keep their own setting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread, then restore the previous count."""
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
