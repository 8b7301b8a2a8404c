"""The screen shown in place of a crash when a part of hydra-chat is missing or broken."""

from __future__ import annotations

from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, Label, Static


class ErrorScreen(Screen[bool]):
    """A failure, its reason and its fix; dismisses with True to continue without the failed part.

    | Key | Action |
    |-----|--------|
    | c   | Continue with what works (only when `can_continue`). |
    | q   | Quit. |
    """

    BINDINGS = [
        Binding("c", "continue", "Continue"),
        Binding("q", "quit_app", "Quit"),
    ]

    def __init__(self, title: str, message: str, fix: str, can_continue: bool = True) -> None:
        super().__init__()
        self.title_text = title
        self.message = message
        self.fix = fix
        self.can_continue = can_continue

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog error-dialog"):
            yield Label(escape(self.title_text), id="error-title")
            yield Static(escape(self.message), id="error-message")
            yield Static(f"[b]Fix:[/b] {escape(self.fix)}", id="error-fix")
            with Horizontal(classes="dialog-buttons"):
                if self.can_continue:
                    yield Button("Continue without it (c)", id="continue", variant="primary")
                yield Button("Quit (q)", id="quit", variant="error")

    @on(Button.Pressed, "#continue")
    def action_continue(self) -> None:
        if self.can_continue:
            self.dismiss(True)

    @on(Button.Pressed, "#quit")
    def action_quit_app(self) -> None:
        self.app.exit(return_code=1, message=f"{self.title_text}: {self.message}\nFix: {self.fix}")
