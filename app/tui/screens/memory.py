"""The memory screen: live facts, each fact's history, and the forms that change them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label

from app.tui.screens.confirm import ConfirmScreen
from app.tui.screens.teach_form import TeachForm
from app.tui.services import error_text
from app.tui.widgets.status_bar import StatusBar


def format_time(value: Any) -> str:
    """Format a Unix time, datetime or ISO 8601 string as 'YYYY-MM-DD HH:MM'."""
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M")
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, str):
        try:
            return format_time(dt.datetime.fromisoformat(value))
        except ValueError:
            return value
    return ""


class MemoryScreen(Screen):
    """A searchable table of live facts; the selected fact's full history from the log.

    | Key    | Action |
    |--------|--------|
    | /      | Search facts by subject or value. |
    | t      | Teach a new fact. |
    | o      | Overwrite the selected fact, after a confirmation. |
    | f      | Forget the selected fact, after a confirmation. |
    | u      | Undo the write selected in the history, after a confirmation. |
    | r      | Reload the facts. |
    """

    BINDINGS = [
        Binding("slash", "search", "Search"),
        Binding("t", "teach", "Teach"),
        Binding("o", "overwrite", "Overwrite"),
        Binding("f", "forget", "Forget"),
        Binding("u", "undo", "Undo"),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.facts: list[Any] = []
        self.history: list[Any] = []

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="memory-panes"):
            with Vertical(id="facts-pane"):
                yield Input(placeholder="Search subject or value", id="search")
                yield DataTable(id="facts", cursor_type="row", zebra_stripes=True)
            with Vertical(id="history-pane"):
                yield Label("History: select a fact", id="history-title")
                yield DataTable(id="history", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="memory-actions"):
            yield Button("Teach (t)", id="teach", variant="primary")
            yield Button("Overwrite (o)", id="overwrite")
            yield Button("Forget (f)", id="forget", variant="error")
            yield Button("Undo (u)", id="undo", variant="warning")
        yield StatusBar()
        yield Footer()

    def on_mount(self) -> None:
        facts = self.query_one("#facts", DataTable)
        facts.add_columns("subject", "value", "write", "taught", "source")
        history = self.query_one("#history", DataTable)
        history.add_columns("write", "operation", "value", "time", "source", "supersedes")
        facts.focus()

    def on_screen_resume(self) -> None:
        self.action_reload()

    # -- loading ----------------------------------------------------------------

    def action_reload(self) -> None:
        self.load_facts()

    @work(thread=True, exclusive=True, group="memory-facts")
    def load_facts(self) -> None:
        try:
            facts = self.app.services.require_memory().facts()
        except Exception as error:  # noqa: BLE001 - shown as a notification
            self.app.call_from_thread(self.notify, f"Cannot list facts: {error_text(error)}", severity="error")
            return
        self.app.call_from_thread(self.show_facts, facts)

    def show_facts(self, facts: list[Any]) -> None:
        """Fill the facts table with the facts that match the search text."""
        self.facts = facts
        selected = self.selected_subject()
        query = self.query_one("#search", Input).value.strip().lower()
        table = self.query_one("#facts", DataTable)
        table.clear()
        for fact in facts:
            if query and query not in fact.subject.lower() and query not in str(fact.value).lower():
                continue
            table.add_row(
                Text(fact.subject),
                Text(str(fact.value)),
                str(fact.write_id),
                format_time(fact.taught_at),
                Text(str(fact.source)),
                key=fact.subject,
            )
        if selected is not None and selected in {str(key.value) for key in table.rows}:
            table.move_cursor(row=table.get_row_index(selected))
        if table.row_count == 0:
            self.show_history(None, [])

    @on(Input.Changed, "#search")
    def filter_facts(self) -> None:
        self.show_facts(self.facts)

    @on(Input.Submitted, "#search")
    def leave_search(self) -> None:
        self.query_one("#facts", DataTable).focus()

    def selected_subject(self) -> str | None:
        """Return the subject of the highlighted fact, or None when the table is empty."""
        table = self.query_one("#facts", DataTable)
        if table.row_count == 0:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return str(row_key.value)

    def selected_fact(self) -> Any | None:
        subject = self.selected_subject()
        return next((fact for fact in self.facts if fact.subject == subject), None)

    @on(DataTable.RowHighlighted, "#facts")
    def load_selected_history(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value is not None:
            self.load_history(str(event.row_key.value))

    @work(thread=True, exclusive=True, group="memory-history")
    def load_history(self, subject: str) -> None:
        try:
            records = self.app.services.require_memory().history(subject)
        except Exception as error:  # noqa: BLE001 - shown as a notification
            self.app.call_from_thread(self.notify, f"Cannot read the history: {error_text(error)}", severity="error")
            return
        self.app.call_from_thread(self.show_history, subject, records)

    def show_history(self, subject: str | None, records: list[Any]) -> None:
        """Fill the history table with every logged write of `subject`, oldest first."""
        self.history = records
        title = self.query_one("#history-title", Label)
        title.update(f"History of {subject!r}: {len(records)} writes" if subject else "History: select a fact")
        table = self.query_one("#history", DataTable)
        table.clear()
        for record in records:
            value = getattr(record, "value", None)
            table.add_row(
                str(record.write_id),
                str(getattr(record, "op", "")),
                Text("" if value is None else str(value)),
                format_time(getattr(record, "created_at", "")),
                Text(str(getattr(record, "source", ""))),
                str(getattr(record, "supersedes", None) or ""),
                key=str(record.write_id),
            )
        if records:
            table.move_cursor(row=len(records) - 1)

    # -- actions ----------------------------------------------------------------

    def action_search(self) -> None:
        self.query_one("#search", Input).focus()

    @on(Button.Pressed, "#teach")
    def action_teach(self) -> None:
        self.app.push_screen(TeachForm(), self._teach_from_form)

    def _teach_from_form(self, result: tuple[str, str] | None) -> None:
        if result is None:
            return
        subject, value = result
        known = next((fact for fact in self.facts if fact.subject == subject), None)
        if known is None:
            self.write("teach", subject, value)
            return
        # Teaching a known subject replaces its value, so it is confirmed like an overwrite.
        self._confirm_overwrite(known, value)

    @on(Button.Pressed, "#overwrite")
    def action_overwrite(self) -> None:
        fact = self.selected_fact()
        if fact is None:
            self.notify("Select a fact to overwrite first.", severity="warning")
            return

        def overwrite(result: tuple[str, str] | None) -> None:
            if result is not None:
                self._confirm_overwrite(fact, result[1])

        self.app.push_screen(TeachForm(fact.subject, str(fact.value)), overwrite)

    def _confirm_overwrite(self, fact: Any, value: str) -> None:
        question = f"Overwrite {fact.subject!r}: {fact.value!r} becomes {value!r}? The old value stays in the log."

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.write("teach", fact.subject, value)

        self.app.push_screen(ConfirmScreen(question, "Overwrite"), confirmed)

    @on(Button.Pressed, "#forget")
    def action_forget(self) -> None:
        fact = self.selected_fact()
        if fact is None:
            self.notify("Select a fact to forget first.", severity="warning")
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.write("forget", fact.subject)

        question = f"Forget {fact.subject!r} = {fact.value!r}? Undo can restore it from the log."
        self.app.push_screen(ConfirmScreen(question, "Forget"), confirmed)

    @on(Button.Pressed, "#undo")
    def action_undo(self) -> None:
        record = self._selected_write()
        if record is None:
            self.notify("Select a fact whose write to undo first.", severity="warning")
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.write("undo", record.write_id)

        question = f"Undo write {record.write_id} ({record.op} of {record.subject!r})?"
        self.app.push_screen(ConfirmScreen(question, "Undo"), confirmed)

    def _selected_write(self) -> Any | None:
        if not self.history:
            return None
        table = self.query_one("#history", DataTable)
        if table.row_count == 0:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return next((record for record in self.history if str(record.write_id) == row_key.value), self.history[-1])

    @work(thread=True, group="memory-write")
    def write(self, operation: str, *arguments: Any) -> None:
        """Run teach, forget or undo on the memory, then reload the tables."""
        try:
            memory = self.app.services.require_memory()
            if operation == "teach":
                record = memory.teach(*arguments, source="tui")
            elif operation == "forget":
                record = memory.forget(*arguments, source="tui")
            else:
                record = memory.undo(*arguments)
        except Exception as error:  # noqa: BLE001 - a failed write is shown, never crashes the app
            self.app.call_from_thread(self.notify, f"{operation} failed: {error_text(error)}", severity="error")
            return
        self.app.call_from_thread(self.notify, f"{operation}: write {record.write_id} logged.")
        self.app.refresh_status()
        self.app.call_from_thread(self.load_facts)
        subject = getattr(record, "subject", None)
        if subject:
            self.app.call_from_thread(self.load_history, subject)
