"""`HydraChatApp`: the Textual app of hydra-chat.

The app has four screens, each in its own mode so that it keeps running
while another is shown (an ingest goes on while the user chats): chat (the
home screen), memory, ingest and diagnostics. Help, first-run, error and
confirmation screens are pushed on top.

Tests build the app with their own parts, for example
`HydraChatApp(memory=Memory.open(tmp), chat_model=tiny_model)`, and drive it
with `App.run_test`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, Iterable

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.signal import Signal

from app.tui.screens.chat import ChatScreen
from app.tui.screens.diagnostics import DiagnosticsScreen
from app.tui.screens.error import ErrorScreen
from app.tui.screens.first_run import FirstRunScreen
from app.tui.screens.help import HelpScreen
from app.tui.screens.ingest import IngestScreen
from app.tui.screens.memory import MemoryScreen
from app.tui.services import MissingPart, Services, StatusInfo, error_text
from app.tui.widgets.history_input import HistoryInput

logger = logging.getLogger(__name__)

STATUS_REFRESH_S = 5.0
"""Seconds between two status bar refreshes when nothing reported a change."""


class HydraChatApp(App[int]):
    """A private memory assistant for the terminal.

    | Key    | Action |
    |--------|--------|
    | f1     | Help: every key and command. |
    | f2     | Chat (home). |
    | f3     | Memory: facts, history, teach, forget, undo. |
    | f4     | Ingest a folder. |
    | f5     | Diagnostics: the six claim checks. |
    | ctrl+p | Command palette. |
    | ctrl+q | Quit. |

    Args:
        memory: an open `app.memory.Memory`; opened from `data_dir` when None.
        chat_model: a loaded chat model; the default model is prepared (first
            run) and loaded in a worker when None.
        assistant: the answer path; built from memory and chat model when None.
        data_dir: memory folder used when `memory` is None.
        device: "cpu", "cuda", "mps" or None for automatic selection.
        load_chat_model: False starts without a chat model (questions then
            show an error); teach, forget, ingest and diagnostics still work.
        claim_checks: the `hydralm.claims.Check` list the diagnostics screen
            runs; None runs every check of the six claims.
    """

    CSS_PATH = "app.tcss"
    TITLE = "hydra-chat"
    SUB_TITLE = "private memory assistant"
    MODES = {
        "chat": ChatScreen,
        "memory": MemoryScreen,
        "ingest": IngestScreen,
        "diagnostics": DiagnosticsScreen,
    }
    BINDINGS = [
        Binding("f1", "help", "Help"),
        Binding("f2", "switch_mode('chat')", "Chat"),
        Binding("f3", "switch_mode('memory')", "Memory"),
        Binding("f4", "switch_mode('ingest')", "Ingest"),
        Binding("f5", "switch_mode('diagnostics')", "Diagnostics"),
        Binding("ctrl+p", "command_palette", "Commands", show=False),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(
        self,
        memory: Any = None,
        chat_model: Any = None,
        assistant: Any = None,
        data_dir: Path | None = None,
        device: str | None = None,
        load_chat_model: bool = True,
        claim_checks: list[Any] | None = None,
    ) -> None:
        super().__init__()
        self.claim_checks = claim_checks
        self.services = Services(memory, chat_model, assistant, data_dir=data_dir, device=device)
        self.load_chat_model = load_chat_model
        self.status = StatusInfo()
        """The numbers the status bars show; published on `status_changed`."""
        self.status_changed: Signal[StatusInfo] = Signal(self, "status_changed")
        self.ready = threading.Event()
        """Set once start-up (memory open, chat model loaded or failed) is over."""

    # -- start-up ---------------------------------------------------------------

    def on_mount(self) -> None:
        self.switch_mode("chat")
        self.set_interval(STATUS_REFRESH_S, self.refresh_status)
        self.open_memory()

    @work(thread=True, exclusive=True, group="startup")
    def open_memory(self) -> None:
        try:
            self.services.open_memory()
        except Exception as error:  # noqa: BLE001 - any failure to open becomes the error screen
            missing = error if isinstance(error, MissingPart) else MissingPart(
                "Memory cannot be opened", error_text(error), "check the memory folder, or pass --data-dir"
            )
            logger.warning("memory unavailable: %s", missing)
            self.call_from_thread(self.show_error, missing, True)
            self.services.chat_ready.set()
            self.ready.set()
            return
        self.refresh_status()
        if not self.load_chat_model:
            self.services.chat_error = MissingPart(
                "No chat model", "the app was started without a chat model", "start hydra-chat without that option"
            )
            self.services.chat_ready.set()
            self.ready.set()
            return
        try:
            prepared = self.services.chat_model_prepared()
        except MissingPart as missing:
            self.services.chat_error = missing
            self.services.chat_ready.set()
            self.call_from_thread(self.show_error, missing, True)
            self.ready.set()
            return
        if prepared:
            self.load_model()
        else:
            self.call_from_thread(self.push_screen, FirstRunScreen(), self._after_first_run)

    def _after_first_run(self, prepared: bool | None) -> None:
        if prepared:
            self.run_worker(self.load_model, thread=True, exclusive=True, group="startup")
            return
        self.services.chat_ready.set()
        self.ready.set()
        if self.services.chat_error is not None:
            self.show_error(self.services.chat_error, True)

    def load_model(self) -> None:
        """Load the chat model (blocking; runs in a startup worker thread)."""
        self.services.load_chat_model()
        self.ready.set()
        self.refresh_status()
        if self.services.chat_error is not None:
            self.call_from_thread(self.show_error, self.services.chat_error, True)

    def show_error(self, missing: MissingPart, can_continue: bool) -> None:
        """Show the error screen for a missing part."""
        self.push_screen(ErrorScreen(missing.title, missing.message, missing.fix, can_continue))

    # -- status bar -------------------------------------------------------------

    def refresh_status(self) -> None:
        """Re-read the status numbers in a thread and publish them; callable from any thread."""
        if threading.get_ident() == self._thread_id:
            self._collect_status()
        else:
            self.call_from_thread(self._collect_status)

    @work(thread=True, exclusive=True, group="status")
    def _collect_status(self) -> None:
        try:
            status = self.services.status()
        except Exception as error:  # noqa: BLE001 - a status refresh must never take the app down
            logger.warning("status refresh failed: %s", error)
            return
        self.call_from_thread(self.publish_status, status)

    def publish_status(self, status: StatusInfo) -> None:
        """Show `status` on every status bar."""
        self.status = status
        self.status_changed.publish(status)

    def count_tokens(self, count: int) -> None:
        """Add `count` streamed tokens to the status bar without re-reading the memory."""
        self.services.tokens_streamed = max(self.services.tokens_streamed, self.status.tokens_streamed) + count
        self.publish_status(dataclasses.replace(self.status, tokens_streamed=self.services.tokens_streamed))

    # -- actions ----------------------------------------------------------------

    def action_help(self) -> None:
        """Show every key binding of the app and its screens."""
        if isinstance(self.screen, HelpScreen):
            return
        sections = [
            ("Everywhere", self.BINDINGS),
            ("Chat", ChatScreen.BINDINGS + HistoryInput.BINDINGS),
            ("Memory", MemoryScreen.BINDINGS),
            ("Ingest", IngestScreen.BINDINGS),
            ("Diagnostics", DiagnosticsScreen.BINDINGS),
        ]
        self.push_screen(HelpScreen(sections))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Chat", "Open the chat (home) screen", lambda: self.switch_mode("chat"))
        yield SystemCommand("Memory", "Browse, teach, overwrite, forget and undo facts", lambda: self.switch_mode("memory"))
        yield SystemCommand("Ingest", "Read a folder of documents into memory", lambda: self.switch_mode("ingest"))
        yield SystemCommand("Diagnostics", "Run the six claim checks", lambda: self.switch_mode("diagnostics"))
        yield SystemCommand("Help", "Show every key and chat command", self.action_help)

    def on_unmount(self) -> None:
        self.services.close()
