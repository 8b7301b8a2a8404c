"""The form that teaches a new fact or overwrites a known one."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label


class TeachForm(ModalScreen[tuple[str, str] | None]):
    """Ask for a subject and a value; dismiss with (subject, value), or None when cancelled.

    With `subject` given the form overwrites that fact, so the subject field is
    read-only and `value` starts with the current value.

    | Key    | Action |
    |--------|--------|
    | enter  | Save the fact. |
    | escape | Cancel. |
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, subject: str | None = None, value: str = "") -> None:
        super().__init__()
        self.overwrite = subject is not None
        self.subject = subject or ""
        self.value = value

    def compose(self) -> ComposeResult:
        title = f"Overwrite {self.subject!r}" if self.overwrite else "Teach a new fact"
        with Vertical(classes="dialog"):
            yield Label(title, classes="dialog-title")
            yield Input(self.subject, placeholder="subject, e.g. locker code", id="subject", disabled=self.overwrite)
            yield Input(self.value, placeholder="value, e.g. 4312", id="value")
            yield Label("", id="form-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (enter)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#value" if self.overwrite else "#subject", Input).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#save")
    def save(self) -> None:
        subject = self.query_one("#subject", Input).value.strip()
        value = self.query_one("#value", Input).value.strip()
        if not subject or not value:
            missing = "subject" if not subject else "value"
            self.query_one("#form-error", Label).update(f"The {missing} is empty; fill it in or press Esc.")
            return
        self.dismiss((subject, value))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
