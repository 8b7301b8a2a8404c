"""The status bar shown at the bottom of every screen."""

from __future__ import annotations

from textual.reactive import reactive
from textual.widgets import Static

from app.tui.services import StatusInfo


def format_bytes(count: int | None) -> str:
    """Format a byte count with a binary unit, e.g. 24,576 -> '24.0 KiB'."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


class StatusBar(Static):
    """One line: device and dtype, model name, memory state size, tokens streamed, facts, documents.

    The app publishes a `StatusInfo` on its `status_changed` signal whenever
    one of these numbers changes; every status bar on every screen follows it.
    """

    DEFAULT_CSS = """
    StatusBar {
        height: 1;
    }
    """

    info: reactive[StatusInfo] = reactive(StatusInfo)
    """The numbers shown; set by the app's signal."""

    def on_mount(self) -> None:
        app = self.app
        self.info = getattr(app, "status", StatusInfo())
        signal = getattr(app, "status_changed", None)
        if signal is not None:
            signal.subscribe(self, self._on_status)

    def _on_status(self, info: StatusInfo) -> None:
        self.info = info

    def render(self) -> str:
        info = self.info
        parts = [
            f"{info.device} {info.dtype}",
            info.model,
            f"state {format_bytes(info.state_bytes)}",
            f"{info.tokens_streamed:,} tokens streamed",
            _count(info.facts, "fact"),
            _count(info.documents, "document"),
        ]
        return " │ ".join(parts)


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"
