"""Key-press latency of the hydra-chat app: idle, while an answer streams, while a folder is ingested.

The app runs headless (Textual's `run_test`, 120 x 40 cells) on a fresh
memory with the real default chat model. A key event is posted to the app
and the clock stops when the chat input shows the typed character, so each
number is the time from the key's arrival in the app's queue to the widget
having handled it. The screen repaint that follows is not included; Textual
repaints at most 60 times a second, which adds up to about 17 ms.

The idle run is the baseline of the same process and machine; a key counts
for "generating" or "ingesting" only while that work was still running when
the key was handled.

Usage:
    .venv/bin/python bench/bench_tui.py [--keys 60] [--files 400]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZE = (120, 40)
KEY_GAP_S = 0.05
"""Pause between two measured keys, about the gap between keys of a fast typist."""
STORY = "Tell me a long story about a lighthouse keeper who finds a dragon egg"


async def measure_key(app, prompt) -> float:
    """Post one key press and return the seconds until the input has handled it."""
    from textual import events

    before = len(prompt.value)
    started = time.perf_counter()
    app.post_message(events.Key("x", "x"))
    while len(prompt.value) == before:
        await asyncio.sleep(0.0005)
    return time.perf_counter() - started


async def measure_while(app, prompt, count: int, busy) -> list[float]:
    """Measure up to `count` keys, keeping only those handled while `busy()` was true."""
    latencies = []
    for _ in range(count):
        if not busy():
            break
        latency = await measure_key(app, prompt)
        if busy():
            latencies.append(latency)
        if len(prompt.value) > 80:
            prompt.value = ""
        await asyncio.sleep(KEY_GAP_S)
    return latencies


def summary(name: str, latencies: list[float]) -> str:
    if not latencies:
        return f"| {name} | 0 | - | - | - | - |"
    ms = sorted(1000 * value for value in latencies)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    under = sum(value < 100 for value in ms) / len(ms)
    return f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {p95:.1f} | {ms[-1]:.1f} | {under:.0%} |"


async def run(keys: int, files: int, work: Path) -> list[str]:
    from app.chat_model import load_chat_model
    from app.memory import Memory
    from app.tui.app import HydraChatApp
    from app.tui.screens.ingest import IngestScreen

    folder = work / "notes"
    folder.mkdir()
    sentence = "The harbour office opens at nine and the ferry to the island leaves from pier four. "
    for index in range(files):
        (folder / f"note-{index:04d}.md").write_text(f"# Note {index}\n\n" + sentence * 30, encoding="utf-8")

    chat_model = load_chat_model(device="cpu")
    memory = Memory.open(data_dir=work / "memory")
    app = HydraChatApp(memory=memory, chat_model=chat_model)
    rows = []
    try:
        async with app.run_test(size=SIZE) as pilot:
            while not app.ready.is_set():
                await pilot.pause(0.1)
            chat = app.screen
            prompt = chat.query_one("#prompt")
            prompt.focus()
            await pilot.pause(0.5)

            # Idle baseline.
            idle = await measure_while(app, prompt, keys, lambda: True)
            rows.append(summary("idle", idle))

            # While an answer streams: start a new one whenever the last ended.
            generating: list[float] = []
            tokens_before = app.status.tokens_streamed
            started = time.perf_counter()
            while len(generating) < keys:
                await chat.ask(STORY)
                while chat.cancel_answer is not None and not chat.query(".message.-assistant").last().text:
                    await asyncio.sleep(0.01)
                generating += await measure_while(app, prompt, keys - len(generating), lambda: chat.cancel_answer is not None)
                while chat.cancel_answer is not None:
                    await asyncio.sleep(0.05)
            seconds = time.perf_counter() - started
            tokens = app.status.tokens_streamed - tokens_before
            rows.append(summary("generating", generating))
            rows.append(f"<!-- {tokens} tokens streamed in {seconds:.1f} s while typing -->")

            # While a folder is ingested, typing on the chat screen.
            await pilot.press("f4")
            ingest = app.screen
            assert isinstance(ingest, IngestScreen)
            ingest.start_ingest(str(folder))
            await pilot.press("f2")
            prompt.focus()
            ingesting = await measure_while(app, prompt, keys, lambda: ingest.cancel is not None)
            rows.append(summary("ingesting", ingesting))
            while ingest.cancel is not None:
                await asyncio.sleep(0.1)
            report = ingest.report
            rows.append(f"<!-- ingest: {report.summary()} -->")
    finally:
        memory.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure key-press latency of the hydra-chat app.")
    parser.add_argument("--keys", type=int, default=60, help="keys measured per scenario (default: 60)")
    parser.add_argument("--files", type=int, default=400, help="files in the generated ingest folder (default: 400)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hydra-bench-tui-") as temporary:
        rows = asyncio.run(run(args.keys, args.files, Path(temporary)))

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print()
    print("| scenario | keys | median (ms) | p95 (ms) | max (ms) | under 100 ms |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
