"""The ingest screen: a folder with good and bad files, a missing folder, cancel, and chat meanwhile.

The app runs on the real memory engine and the real ingestion pipeline in
temporary folders, without a chat model.
"""

from __future__ import annotations

import time

import pytest

from textual import events
from textual.widgets import DataTable, Label, ProgressBar

from app.tui.app import HydraChatApp
from app.tui.screens.chat import ChatScreen
from app.tui.screens.ingest import IngestScreen
from app.tui.widgets.message import ChatMessage
from app.tui.widgets.status_bar import StatusBar

memory_module = pytest.importorskip("app.memory", reason="the memory engine is not installed")

SIZE = (120, 40)


@pytest.fixture
def memory(tmp_path):
    memory = memory_module.Memory.open(data_dir=tmp_path / "memory")
    yield memory
    memory.close()


@pytest.fixture
def notes(tmp_path):
    """A folder with two readable notes, a binary file and a broken PDF."""
    folder = tmp_path / "notes"
    (folder / "trips").mkdir(parents=True)
    (folder / "garden.md").write_text(
        "# Garden\n\nThe tomato seedlings go into the greenhouse on the first of May.\n", encoding="utf-8"
    )
    (folder / "trips" / "cabin.txt").write_text(
        "The cabin key is under the blue flowerpot next to the shed.\n", encoding="utf-8"
    )
    (folder / "photo.txt").write_bytes(bytes(range(256)) * 64)
    (folder / "report.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\ntrailer broken\n")
    return folder


async def wait_for(pilot, condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.05)


async def send_keys(pilot, keys) -> None:
    """Post key events to the app one by one, as the terminal driver does.

    `pilot.press` waits after each key until the process is idle, which never
    happens while an ingest thread is busy, so each key would cost a second.
    """
    for key in keys:
        pilot.app.post_message(events.Key(key, key if len(key) == 1 else None))
        await pilot.pause(0.02)


def state_text(screen) -> str:
    return str(screen.query_one("#ingest-state", Label).render())


async def open_ingest_screen(pilot, app) -> IngestScreen:
    await wait_for(pilot, app.ready.is_set, what="start-up")
    await pilot.press("f4")
    await wait_for(pilot, lambda: isinstance(app.screen, IngestScreen), what="the ingest screen")
    return app.screen


async def test_ingest_folder_lists_bad_files_with_reasons(memory, notes, monkeypatch):
    monkeypatch.chdir(notes.parent)
    app = HydraChatApp(memory=memory, load_chat_model=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_ingest_screen(pilot, app)
        await pilot.press(*"notes", "enter")
        await wait_for(pilot, lambda: screen.report is not None, what="the ingest to finish")

        report = screen.report
        assert sorted(path.rsplit("/", 1)[-1] for path in report.added) == ["cabin.txt", "garden.md"]
        assert state_text(screen).startswith("Done: added 2")

        table = screen.query_one("#problems", DataTable)
        rows = {str(table.get_row_at(index)[1]).rsplit("/", 1)[-1]: table.get_row_at(index) for index in range(table.row_count)}
        assert set(rows) == {"photo.txt", "report.pdf"}, f"problem rows: {list(rows)}"
        for name, row in rows.items():
            assert str(row[0]) in ("skipped", "failed")
            assert str(row[2]).strip(), f"no reason shown for {name}"

        files_bar = screen.query_one("#files-progress", ProgressBar)
        assert files_bar.percentage == 1.0
        recorded = {document.path.rsplit("/", 1)[-1]: document.status for document in memory.documents()}
        assert set(recorded) >= {"garden.md", "cabin.txt", "photo.txt", "report.pdf"}

        bar = screen.query_one(StatusBar)
        await wait_for(pilot, lambda: "2 documents" in str(bar.render()), timeout=10, what="the document count")

        # A second run only reports the unchanged files.
        await pilot.click("#start")
        await wait_for(pilot, lambda: screen.report is not None and screen.cancel is None, what="the re-run")
        assert len(screen.report.unchanged) == 2
        assert screen.report.added == []


async def test_ingest_missing_folder_shows_error(memory, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = HydraChatApp(memory=memory, load_chat_model=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_ingest_screen(pilot, app)
        await pilot.press(*"nowhere", "enter")
        await pilot.pause(0.1)
        assert "does not exist" in state_text(screen)
        assert "nowhere" in state_text(screen)
        assert screen.query_one("#ingest-state", Label).has_class("-error")
        assert screen.cancel is None, "an ingest started on a missing folder"


async def test_cancel_ingest_and_chat_while_it_runs(memory, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(1500):
        (folder / f"note-{index:03d}.txt").write_text(
            f"Note {index}. " + "The quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8"
        )
    app = HydraChatApp(memory=memory, load_chat_model=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_ingest_screen(pilot, app)
        await pilot.press(*"many", "enter")
        await wait_for(pilot, lambda: screen.query_one("#files-progress", ProgressBar).progress > 0, what="progress")

        # Chat stays usable: teach a fact while the ingest runs.
        await send_keys(pilot, ["f2"])
        assert isinstance(app.screen, ChatScreen)
        await send_keys(pilot, [*"remember that the boat name is Wavelet", "enter"])
        await wait_for(
            pilot,
            lambda: any("Remembered" in message.text for message in app.screen.query(ChatMessage)),
            timeout=30,
            what="the taught fact",
        )
        assert screen.cancel is not None, "the ingest ended before the chat was tested; make the folder larger"

        await send_keys(pilot, ["f4", "escape"])
        await wait_for(pilot, lambda: screen.report is not None, what="the cancelled ingest")
        assert screen.report.cancelled
        assert state_text(screen).startswith("Cancelled")
        assert len(screen.report.added) < 1500
        assert [fact.value for fact in memory.facts()] == ["Wavelet"]
