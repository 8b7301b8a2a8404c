"""Save an SVG screenshot of every hydra-chat screen into docs/screenshots/.

The app runs headless (Textual's `run_test`) at 120 x 40 cells on a fresh
memory in a temporary folder, with the real default chat model. The screens
are filled the way a user would fill them: facts taught from the chat, a
question answered, a small folder ingested, the claim checks run. The first-run screen is shown against an empty model cache and the
error screen against a memory that another process holds.

Usage:
    .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--diagnostics all|analytic|none] [--skip-first-run]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZE = (120, 40)

NOTES = {
    "garden.md": "# Garden\n\nThe tomato seedlings go into the greenhouse on the first of May. "
    "Water them every second morning.\n",
    "trips/cabin.txt": "The cabin key is under the blue flowerpot next to the shed. "
    "The boat is moored at the north jetty.\n",
    "recipes/bread.rst": "Bread\n=====\n\n500 g flour, 350 g water, 10 g salt, 4 g yeast. Bake at 230 C for 40 minutes.\n",
    "scan.pdf": "%PDF-1.4\nbroken on purpose\n",
    "photo.txt": "\x00\x01\x02binary\x00" * 100,
}


async def wait_for(pilot, condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.1)


async def main_screens(out: Path, work: Path, diagnostics: str) -> None:
    from app.chat_model import load_chat_model
    from app.memory import Memory
    from app.tui.app import HydraChatApp
    from app.tui.widgets.message import ChatMessage

    notes = work / "notes"
    for name, text in NOTES.items():
        path = notes / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    chat_model = load_chat_model(device="cpu")
    memory = Memory.open(data_dir=work / "memory")
    checks = None
    if diagnostics == "analytic":
        from hydralm.claims import default_checks

        checks = [check for check in default_checks() if check.kind == "analytic"]
    app = HydraChatApp(memory=memory, chat_model=chat_model, claim_checks=checks)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, app.ready.is_set, 60, "start-up")

            def answers_done(count: int) -> bool:
                done = [m for m in app.screen.query(ChatMessage) if m.role == "assistant" and m.finished]
                return len(done) >= count

            for line in ("remember that my locker code is 4312", "remember that the cabin wifi password is x7-blue"):
                await pilot.press(*line, "enter")
                await pilot.pause(0.5)
            await pilot.press(*"What is my locker code?", "enter")
            await wait_for(pilot, lambda: answers_done(1), 120, "the answer")
            await pilot.press(*"/teach my locker code = 5521", "enter")
            await pilot.pause(0.5)
            await pilot.press(*"What is my locker code?", "enter")
            await wait_for(pilot, lambda: answers_done(2), 120, "the second answer")
            await pilot.pause(0.5)
            app.save_screenshot("chat.svg", str(out))

            await pilot.press("f3")
            await pilot.pause(1.0)
            app.save_screenshot("memory.svg", str(out))

            await pilot.press("f4")
            await pilot.press(*str(notes), "enter")
            await wait_for(pilot, lambda: app.screen.report is not None, 120, "the ingest")
            await pilot.pause(0.5)
            app.save_screenshot("ingest.svg", str(out))

            if diagnostics != "none":
                await pilot.press("f5")
                await pilot.press("r")
                await wait_for(pilot, lambda: app.screen.cancel is None and app.screen.results, 900, "the claims")
                await pilot.pause(0.5)
                app.save_screenshot("diagnostics.svg", str(out))

            await pilot.press("f1")
            await pilot.pause(0.5)
            app.save_screenshot("help.svg", str(out))
    finally:
        memory.close()


async def first_run_screen(out: Path, work: Path) -> None:
    """Show the first-run screen with an empty cache; the conversion is left to finish in the background."""
    from app.memory import Memory
    from app.tui.app import HydraChatApp
    from app.tui.screens.first_run import FirstRunScreen

    os.environ["HYDRA_CACHE_DIR"] = str(work / "empty-cache")
    memory = Memory.open(data_dir=work / "first-run-memory")
    app = HydraChatApp(memory=memory)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, FirstRunScreen), 30, "the first-run screen")
            await wait_for(
                pilot,
                lambda: app.screen.query_one("#prepare-progress").progress > 0.05,
                300,
                "preparation progress",
            )
            app.save_screenshot("first_run.svg", str(out))
            app.exit()
    finally:
        memory.close()


async def error_screen(out: Path, work: Path) -> None:
    """Show the error screen for a memory that another open `Memory` holds."""
    from app.memory import Memory
    from app.tui.app import HydraChatApp
    from app.tui.screens.error import ErrorScreen

    holder = Memory.open(data_dir=work / "held-memory")
    app = HydraChatApp(data_dir=work / "held-memory", load_chat_model=False)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen), 30, "the error screen")
            app.save_screenshot("error.svg", str(out))
    finally:
        holder.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots", help="folder for the SVG files")
    parser.add_argument(
        "--diagnostics",
        choices=("all", "analytic", "none"),
        default="all",
        help="checks run for the diagnostics screenshot: all (minutes), the analytic gates only (seconds), or none",
    )
    parser.add_argument(
        "--skip-first-run",
        action="store_true",
        help="keep the existing first_run.svg; its conversion takes minutes to finish in the background",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hydra-screens-") as temporary:
        work = Path(temporary)
        asyncio.run(main_screens(args.out, work, args.diagnostics))
        asyncio.run(error_screen(args.out, work))
        if not args.skip_first_run:
            asyncio.run(first_run_screen(args.out, work))
    for path in sorted(args.out.glob("*.svg")):
        print(f"{path.relative_to(REPO)}  {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
