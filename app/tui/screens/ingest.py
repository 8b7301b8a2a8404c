"""The ingest screen: read a folder into memory with progress, problems and a safe cancel."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, DirectoryTree, Footer, Header, Input, Label, ProgressBar

from app.tui.services import error_text
from app.tui.widgets.status_bar import StatusBar, format_bytes

class FolderTree(DirectoryTree):
    """A directory tree that lists folders only, since ingest takes a folder."""

    def filter_paths(self, paths):
        return [path for path in paths if path.is_dir() and not path.name.startswith(".")]


class IngestScreen(Screen):
    """Pick or type a folder, then follow progress in files and in bytes.

    Chatting stays possible while a folder is read: the work runs in a thread
    and this screen keeps running when another screen is shown.

    | Key    | Action |
    |--------|--------|
    | enter  | Start reading the folder typed in the input. |
    | escape | Cancel the running ingest; files already read stay in memory. |
    """

    BINDINGS = [Binding("escape", "cancel_ingest", "Cancel ingest")]

    class Progress(Message):
        """A progress report of the running ingest."""

        def __init__(self, update: Any) -> None:
            super().__init__()
            self.update = update

    class Finished(Message):
        """The ingest ended with `report`, or with `error` when it could not run."""

        def __init__(self, report: Any, error: str | None) -> None:
            super().__init__()
            self.report = report
            self.error = error

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cancel: threading.Event | None = None
        """Set to stop the running ingest; None when no ingest runs."""
        self.report: Any = None
        """The report of the last finished ingest."""

    def on_unmount(self) -> None:
        # Stop the background work when the app closes, so the process can exit.
        if self.cancel is not None:
            self.cancel.set()

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="ingest-controls"):
            yield Input(placeholder="Folder to read, e.g. ~/notes (enter starts)", id="folder")
            yield Button("Start", id="start", variant="primary")
            yield Button("Cancel (esc)", id="cancel", variant="error", disabled=True)
        with Horizontal(id="ingest-body"):
            yield FolderTree(Path.home(), id="tree")
            with Vertical(id="ingest-progress"):
                yield Label("No ingest running.", id="ingest-state")
                yield Label("current file: -", id="current-file")
                yield Label("files", classes="bar-label")
                yield ProgressBar(total=None, show_eta=False, id="files-progress")
                yield Label("bytes", classes="bar-label")
                yield ProgressBar(total=None, id="bytes-progress")
                yield Label("", id="ingest-counts")
                yield DataTable(id="problems", cursor_type="row", zebra_stripes=True)
        yield StatusBar()
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#problems", DataTable).add_columns("status", "file", "reason")
        self.query_one("#folder", Input).focus()

    @on(DirectoryTree.DirectorySelected, "#tree")
    def pick_folder(self, event: DirectoryTree.DirectorySelected) -> None:
        self.query_one("#folder", Input).value = str(event.path)

    @on(Input.Submitted, "#folder")
    @on(Button.Pressed, "#start")
    def start_from_input(self) -> None:
        self.start_ingest(self.query_one("#folder", Input).value)

    def start_ingest(self, folder_text: str) -> None:
        """Check `folder_text` and start reading it, unless an ingest already runs."""
        self.query_one("#folder", Input).value = folder_text
        if self.cancel is not None:
            self.notify("An ingest is already running; cancel it first (Esc).", severity="warning")
            return
        folder = Path(folder_text.strip()).expanduser()
        if not folder_text.strip():
            self._set_state("Type a folder path, or pick one in the tree.")
            return
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            self._set_state(f"[b]{escape(str(folder))}[/b] {what}; type another path.", error=True)
            return

        self.cancel = threading.Event()
        self.report = None
        self.query_one("#problems", DataTable).clear()
        self.query_one("#bytes-progress", ProgressBar).update(total=None, progress=0)
        self.query_one("#files-progress", ProgressBar).update(total=None, progress=0)
        self.query_one("#cancel", Button).disabled = False
        self.query_one("#start", Button).disabled = True
        self._set_state(f"Reading [b]{escape(str(folder))}[/b] …")
        self.run_ingest(folder, self.cancel)

    def _set_state(self, text: str, error: bool = False) -> None:
        label = self.query_one("#ingest-state", Label)
        label.update(text)
        label.set_class(error, "-error")

    @work(thread=True, exclusive=True, group="ingest")
    def run_ingest(self, folder: Path, cancel: threading.Event) -> None:
        def progress(update: Any) -> None:
            self.post_message(self.Progress(update))

        report, error = None, None
        try:
            memory = self.app.services.require_memory()
            report = memory.ingest(folder, progress=progress, cancel=cancel)
        except Exception as failure:  # noqa: BLE001 - shown on the screen, never crashes the app
            error = error_text(failure)
        self.post_message(self.Finished(report, error))

    @on(Progress)
    def show_progress(self, event: Progress) -> None:
        update = event.update
        files = self.query_one("#files-progress", ProgressBar)
        files.update(total=max(update.files_total, 1), progress=update.files_done)
        overall = self.query_one("#bytes-progress", ProgressBar)
        overall.update(total=max(update.bytes_total, 1), progress=update.bytes_done)
        self.query_one("#current-file", Label).update(f"current file: {escape(update.current or '-')}")
        eta = "-" if update.eta_s is None else f"{update.eta_s:.0f} s"
        self.query_one("#ingest-counts", Label).update(
            f"{update.files_done}/{update.files_total} files, "
            f"{format_bytes(update.bytes_done)} of {format_bytes(update.bytes_total)}, "
            f"{update.passages} passages ({update.passages_per_s:.0f}/s), ETA {eta}"
        )

    @on(Finished)
    def show_report(self, event: Finished) -> None:
        self.cancel = None
        self.query_one("#cancel", Button).disabled = True
        self.query_one("#start", Button).disabled = False
        if event.error is not None:
            self._set_state(f"Ingest failed: {escape(event.error)}", error=True)
            return

        report = self.report = event.report
        problems = self.query_one("#problems", DataTable)
        for path, reason in report.skipped:
            problems.add_row("skipped", Text(str(path)), Text(str(reason)))
        for path, reason in report.failed:
            problems.add_row(Text("failed", style="bold red"), Text(str(path)), Text(str(reason)))
        for bar_id in ("#files-progress", "#bytes-progress"):
            bar = self.query_one(bar_id, ProgressBar)
            if bar.total is None:
                bar.update(total=1, progress=1)

        verb = "Cancelled" if report.cancelled else "Done"
        self._set_state(
            f"{verb}: added {len(report.added)}, updated {len(report.updated)}, "
            f"unchanged {len(report.unchanged)}, removed {len(report.removed)}, skipped {len(report.skipped)}, "
            f"failed {len(report.failed)} files; {report.passages} passages in {report.seconds:.1f} s."
        )
        self.app.refresh_status()

    @on(Button.Pressed, "#cancel")
    def action_cancel_ingest(self) -> None:
        """Ask the running ingest to stop after the file it is reading."""
        if self.cancel is not None:
            self.cancel.set()
            self._set_state("Cancelling after the current file …")
