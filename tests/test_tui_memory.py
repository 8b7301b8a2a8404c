"""The memory screen: teach, search, overwrite, undo and forget with real key presses.

The app runs on the real memory engine in a temporary folder, without a
chat model (this screen does not use one).
"""

from __future__ import annotations

import time

import pytest

from textual.widgets import DataTable, Input

from app.tui.app import HydraChatApp
from app.tui.screens.confirm import ConfirmScreen
from app.tui.screens.memory import MemoryScreen
from app.tui.screens.teach_form import TeachForm

memory_module = pytest.importorskip("app.memory", reason="the memory engine is not installed")

SIZE = (120, 40)


@pytest.fixture
def memory(tmp_path):
    memory = memory_module.Memory.open(data_dir=tmp_path / "memory")
    yield memory
    memory.close()


async def wait_for(pilot, condition, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.05)


def table_rows(screen, table_id: str) -> list[list[str]]:
    table = screen.query_one(table_id, DataTable)
    return [[str(cell) for cell in table.get_row_at(index)] for index in range(table.row_count)]


def fact_values(screen) -> dict[str, str]:
    return {row[0]: row[1] for row in table_rows(screen, "#facts")}


async def open_memory_screen(pilot, app) -> MemoryScreen:
    await wait_for(pilot, app.ready.is_set, what="start-up")
    await pilot.press("f3")
    await wait_for(pilot, lambda: isinstance(app.screen, MemoryScreen), what="the memory screen")
    return app.screen


async def test_teach_overwrite_undo_forget_from_forms(memory):
    app = HydraChatApp(memory=memory, load_chat_model=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_memory_screen(pilot, app)

        # Teach through the form: t, subject, tab, value, enter.
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, TeachForm), what="the teach form")
        await pilot.press(*"locker code", "tab", *"4312", "enter")
        await wait_for(pilot, lambda: fact_values(screen).get("locker code") == "4312", what="the taught fact")
        assert [record.op for record in memory.history("locker code")] == ["teach"]
        await wait_for(pilot, lambda: len(table_rows(screen, "#history")) == 1, what="the history row")

        # Overwrite: the form starts with the current value; the change is confirmed.
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, TeachForm), what="the overwrite form")
        value_input = app.screen.query_one("#value", Input)
        assert value_input.value == "4312"
        assert app.screen.query_one("#subject", Input).disabled, "the subject of an overwrite can be edited"
        await pilot.press("ctrl+u", *"5521", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the overwrite confirmation")
        assert "'4312' becomes '5521'" in app.screen.question
        await pilot.press("y")
        await wait_for(pilot, lambda: fact_values(screen).get("locker code") == "5521", what="the new value")
        history = memory.history("locker code")
        assert [record.value for record in history] == ["4312", "5521"]
        await wait_for(pilot, lambda: len(table_rows(screen, "#history")) == 2, what="two history rows")

        # Undo the overwrite, the last row of the history table.
        await pilot.click("#history")
        await pilot.press("down")
        await pilot.press("u")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the undo confirmation")
        assert f"Undo write {history[1].write_id}" in app.screen.question
        await pilot.press("y")
        await wait_for(pilot, lambda: fact_values(screen).get("locker code") == "4312", what="the undone value")

        # Forget: "n" keeps the fact and "y" removes it.
        await pilot.click("#facts")
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the forget confirmation")
        await pilot.press("n")
        await pilot.pause(0.2)
        assert "locker code" in fact_values(screen)
        assert memory.history("locker code")[-1].op != "forget"

        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the forget confirmation")
        await pilot.press("y")
        await wait_for(pilot, lambda: "locker code" not in fact_values(screen), what="the fact to go")
        assert memory.history("locker code")[-1].op == "forget"
        assert all(fact.subject != "locker code" for fact in memory.facts())


async def test_search_filters_the_facts_table(memory):
    for subject, value in [("locker code", "4312"), ("cabin wifi", "x7"), ("boat name", "Wavelet")]:
        memory.teach(subject, value, source="test")
    app = HydraChatApp(memory=memory, load_chat_model=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_memory_screen(pilot, app)
        await wait_for(pilot, lambda: len(fact_values(screen)) == 3, what="three facts")

        await pilot.press("slash", *"wave")
        assert list(fact_values(screen)) == ["boat name"], "search by value"
        await pilot.press("ctrl+u", *"CABIN")
        assert list(fact_values(screen)) == ["cabin wifi"], "search ignores case"
        await pilot.press("ctrl+u")
        assert len(fact_values(screen)) == 3


async def test_empty_teach_form_shows_error(memory):
    app = HydraChatApp(memory=memory, load_chat_model=False)
    async with app.run_test(size=SIZE) as pilot:
        await open_memory_screen(pilot, app)
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, TeachForm), what="the teach form")
        await pilot.press(*"subject only", "tab", "enter")
        assert isinstance(app.screen, TeachForm), "an empty value was accepted"
        assert "value is empty" in str(app.screen.query_one("#form-error").render())
        await pilot.press("escape")
        assert isinstance(app.screen, MemoryScreen)
        assert memory.facts() == []
