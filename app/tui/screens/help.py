"""The help screen: every key of every screen, and the chat's slash commands."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

from app.tui.screens.chat import SLASH_COMMANDS


def binding_rows(bindings) -> list[tuple[str, str]]:
    """Return (keys, description) for each binding, in the order declared."""
    rows = []
    for binding in bindings:
        if not isinstance(binding, Binding):
            # BINDINGS may hold (key, action) or (key, action, description) tuples.
            binding = Binding(*binding)
        keys = ", ".join(part.strip() for part in binding.key.split(","))
        rows.append((keys, binding.description or binding.action))
    return rows


def help_markdown(sections: list[tuple[str, list]]) -> str:
    """Build the help text from (section title, bindings) pairs."""
    lines = ["# hydra-chat keys", ""]
    for title, bindings in sections:
        lines += [f"## {title}", "", "| key | action |", "|---|---|"]
        for keys, description in binding_rows(bindings):
            lines.append(f"| `{keys}` | {description} |")
        lines.append("")
    lines += ["## Chat commands", "", "| command | what it does |", "|---|---|"]
    for command, text in SLASH_COMMANDS.items():
        lines.append(f"| `{command}` | {text.split(': ', 1)[-1]} |")
    lines += [
        "",
        "A line such as *remember that my locker code is 4312* teaches a fact; any other line is a question.",
    ]
    return "\n".join(lines)


class HelpScreen(ModalScreen[None]):
    """Every key binding of the app and its screens, built from their `BINDINGS`.

    | Key        | Action |
    |------------|--------|
    | escape, q  | Close the help. |
    """

    BINDINGS = [Binding("escape,q,f1", "close", "Close help")]

    def __init__(self, sections: list[tuple[str, list]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog help-dialog"):
            yield Markdown(help_markdown(self.sections + [("Help", self.BINDINGS)]), id="help-text")

    def action_close(self) -> None:
        self.dismiss(None)
