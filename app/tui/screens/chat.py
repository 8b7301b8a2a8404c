"""The home screen: a conversation with the assistant over the user's memory."""

from __future__ import annotations

import logging
import threading
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Input

from app.tui.services import MissingPart, error_text, import_part
from app.tui.widgets.history_input import HistoryInput
from app.tui.widgets.message import ChatMessage
from app.tui.widgets.status_bar import StatusBar

logger = logging.getLogger(__name__)

HISTORY_TURNS = 4
"""Earlier question-and-answer pairs the assistant sees; the model's window is small."""

SLASH_COMMANDS = {
    "/teach": "`/teach SUBJECT = VALUE` or `/teach my locker code is 4312`: teach or overwrite a fact",
    "/forget": "`/forget SUBJECT`: forget a fact (`/undo` reverts it)",
    "/undo": "`/undo WRITE_ID`: revert one logged write",
    "/facts": "`/facts`: list the live facts",
    "/ingest": "`/ingest [FOLDER]`: open the ingest screen, and start reading FOLDER when given",
    "/diagnostics": "`/diagnostics`: open the claim checks",
    "/help": "`/help`: every key and command",
}


class ChatScreen(Screen):
    """Ask questions, teach facts and run slash commands from one input line.

    | Key    | Action |
    |--------|--------|
    | enter  | Send the line: a question, a "remember that …" statement or a slash command. |
    | up     | Previous input line. |
    | down   | Next input line. |
    | escape | Stop the answer being generated. |
    """

    BINDINGS = [
        Binding("escape", "stop_answer", "Stop answer"),
    ]

    class Token(Message):
        """A piece of streamed answer text for `target`."""

        def __init__(self, target: ChatMessage, text: str) -> None:
            super().__init__()
            self.target = target
            self.text = text

    class AnswerDone(Message):
        """The answer for `target` ended: finished, stopped or failed."""

        def __init__(self, target: ChatMessage, answer: Any, stopped: bool, error: str | None) -> None:
            super().__init__()
            self.target = target
            self.answer = answer
            self.stopped = stopped
            self.error = error

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cancel_answer: threading.Event | None = None
        """Set to stop the running answer; None when no answer runs."""
        self.turns: list[tuple[str, str]] = []
        """Earlier (role, text) turns, given to the assistant for open conversation."""

    def on_unmount(self) -> None:
        # Stop the background work when the app closes, so the process can exit.
        if self.cancel_answer is not None:
            self.cancel_answer.set()

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="conversation"):
            yield ChatMessage(
                "note",
                "Ask a question about what you taught me or what I have read. "
                "Teach with *remember that …* or `/teach`; `/help` lists every command.",
            )
        yield HistoryInput(placeholder="Ask, teach (remember that …) or type /help", id="prompt")
        yield StatusBar()
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#conversation", VerticalScroll).anchor()
        self.query_one("#prompt", HistoryInput).focus()

    # -- input ----------------------------------------------------------------

    @on(Input.Submitted, "#prompt")
    async def send_line(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        prompt = self.query_one("#prompt", HistoryInput)
        prompt.value = ""
        if not text:
            return
        prompt.remember(text)

        if text.startswith("/"):
            await self.run_slash_command(text)
            return
        statement = self._parse_statement(text)
        if statement is not None:
            await self.add_message("user", text)
            self.teach(*statement)
            return
        await self.ask(text)

    def _parse_statement(self, text: str) -> tuple[str, str] | None:
        try:
            memory_module = import_part("app.memory", "The memory engine")
        except MissingPart:
            return None
        return memory_module.parse_statement(text)

    async def add_message(self, role: str, text: str = "") -> ChatMessage:
        """Append a message to the conversation and return it."""
        message = ChatMessage(role, text)
        await self.query_one("#conversation", VerticalScroll).mount(message)
        return message

    def post_note(self, role: str, text: str) -> None:
        """Append a note from any thread."""
        self.app.call_from_thread(self.add_message, role, text)

    # -- slash commands -------------------------------------------------------

    async def run_slash_command(self, line: str) -> None:
        """Run one `/command ARGS` line."""
        command, _, rest = line.partition(" ")
        command = command.lower()
        rest = rest.strip()
        await self.add_message("user", line)

        if command == "/help":
            self.app.action_help()
        elif command == "/facts":
            self.list_facts()
        elif command == "/teach":
            statement = self._parse_teach_arguments(rest)
            if statement is None:
                await self.add_message("error", f"Cannot read a subject and value from {rest!r}. {SLASH_COMMANDS['/teach']}.")
            else:
                self.teach(*statement)
        elif command == "/forget":
            if not rest:
                await self.add_message("error", f"Give the subject to forget. {SLASH_COMMANDS['/forget']}.")
            else:
                self.forget(rest)
        elif command == "/undo":
            if not rest.isdigit():
                await self.add_message("error", f"Invalid write id {rest!r}. {SLASH_COMMANDS['/undo']}; `/facts` shows ids.")
            else:
                self.undo(int(rest))
        elif command == "/ingest":
            await self.app.switch_mode("ingest")
            if rest:
                self.app.screen.start_ingest(rest)
        elif command == "/diagnostics":
            await self.app.switch_mode("diagnostics")
        else:
            known = ", ".join(SLASH_COMMANDS)
            await self.add_message("error", f"Unknown command {command!r}. Known commands: {known}.")

    def _parse_teach_arguments(self, rest: str) -> tuple[str, str] | None:
        if "=" in rest:
            subject, _, value = rest.partition("=")
            subject, value = subject.strip(), value.strip()
            return (subject, value) if subject and value else None
        statement = self._parse_statement(rest)
        if statement is None and rest:
            statement = self._parse_statement(f"remember that {rest}")
        return statement

    # -- memory writes (thread workers: SQLite and the state may block) -------

    @work(thread=True, group="memory")
    def teach(self, subject: str, value: str) -> None:
        try:
            record = self.app.services.require_memory().teach(subject, value, source="chat")
        except Exception as error:  # noqa: BLE001 - a failed write is shown, never crashes the app
            self.post_note("error", f"Could not teach {subject!r}: {error_text(error)}")
            return
        self.post_note("note", f"Remembered **{subject}** = {value} (write {record.write_id}).")
        self.app.refresh_status()

    @work(thread=True, group="memory")
    def forget(self, subject: str) -> None:
        try:
            record = self.app.services.require_memory().forget(subject, source="chat")
        except Exception as error:  # noqa: BLE001 - a failed write is shown, never crashes the app
            self.post_note("error", f"Could not forget {subject!r}: {error_text(error)}")
            return
        self.post_note("note", f"Forgot **{subject}** (write {record.write_id}; `/undo {record.write_id}` reverts it).")
        self.app.refresh_status()

    @work(thread=True, group="memory")
    def undo(self, write_id: int) -> None:
        try:
            record = self.app.services.require_memory().undo(write_id)
        except Exception as error:  # noqa: BLE001 - a failed write is shown, never crashes the app
            self.post_note("error", f"Could not undo write {write_id}: {error_text(error)}")
            return
        self.post_note("note", f"Reverted write {write_id} (new write {record.write_id}).")
        self.app.refresh_status()

    @work(thread=True, group="memory")
    def list_facts(self) -> None:
        try:
            facts = self.app.services.require_memory().facts()
        except Exception as error:  # noqa: BLE001 - shown in the conversation
            self.post_note("error", f"Could not list facts: {error_text(error)}")
            return
        if not facts:
            self.post_note("note", "Memory holds no facts yet. Teach one with *remember that …*.")
            return
        rows = ["| write | subject | value | source |", "|---|---|---|---|"]
        for fact in facts:
            rows.append(f"| {fact.write_id} | {_cell(fact.subject)} | {_cell(fact.value)} | {_cell(fact.source)} |")
        self.post_note("note", f"{len(facts)} live facts:\n\n" + "\n".join(rows))

    # -- answers ----------------------------------------------------------------

    async def ask(self, question: str) -> None:
        """Show the question and stream the answer below it."""
        if self.cancel_answer is not None:
            await self.add_message("error", "An answer is still being generated; press Esc to stop it first.")
            return
        await self.add_message("user", question)
        target = await self.add_message("assistant")
        self.cancel_answer = threading.Event()
        history = list(self.turns[-2 * HISTORY_TURNS :])
        self.turns.append(("user", question))
        self.generate_answer(question, history, target, self.cancel_answer)

    @work(thread=True, group="answer")
    def generate_answer(
        self, question: str, history: list[tuple[str, str]], target: ChatMessage, cancel: threading.Event
    ) -> None:
        def on_token(text: str) -> None:
            self.post_message(self.Token(target, text))

        answer, error = None, None
        try:
            assistant = self.app.services.require_assistant()
            answer = assistant.answer(question, history=history, on_token=on_token, cancel=cancel)
        except MissingPart as missing:
            error = f"{missing.title}: {missing.message}. Fix: {missing.fix}."
        except Exception as failure:  # noqa: BLE001 - any failure is shown in the conversation
            logger.exception("generating the answer failed")
            error = f"The answer failed: {type(failure).__name__}: {failure}"
        self.post_message(self.AnswerDone(target, answer, cancel.is_set(), error))

    @on(Token)
    async def show_token(self, event: Token) -> None:
        await event.target.append(event.text)
        self.app.count_tokens(1)

    @on(AnswerDone)
    async def show_answer(self, event: AnswerDone) -> None:
        self.cancel_answer = None
        if event.error is not None:
            await event.target.remove()
            await self.add_message("error", event.error)
            return
        answer = event.answer
        self.turns.append(("assistant", answer.text))
        await event.target.finish(answer.text, answer.sources, bool(answer.known), stopped=event.stopped)
        self.app.refresh_status()

    def action_stop_answer(self) -> None:
        """Stop the running answer; the text so far stays, marked as stopped."""
        if self.cancel_answer is not None:
            self.cancel_answer.set()


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
