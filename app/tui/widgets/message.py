"""One turn of the conversation: the user's line, an answer, or a note from the app."""

from __future__ import annotations

from typing import Any, Sequence

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Markdown

from app.tui.widgets.sources import SourcesList

ROLES = ("user", "assistant", "note", "error")


class ChatMessage(Vertical):
    """A titled block of Markdown; an answer can grow token by token.

    `role` is one of "user", "assistant", "note" (a confirmation from the
    app, such as a taught fact) and "error". The CSS class `-{role}` styles
    it. An assistant message streams through `append()` and gets its sources
    with `finish()`.
    """

    def __init__(self, role: str, text: str = "", **kwargs) -> None:
        if role not in ROLES:
            raise ValueError(f"invalid role {role!r}; expected one of {ROLES}")
        super().__init__(classes=f"message -{role}", **kwargs)
        self.role = role
        self.text = text
        self.finished = role != "assistant"
        self._stream = None

    def compose(self) -> ComposeResult:
        titles = {"user": "you", "assistant": "hydra-chat", "note": "memory", "error": "error"}
        yield Label(titles[self.role], classes="message-title")
        yield Markdown(self.text, classes="message-body")

    @property
    def body(self) -> Markdown:
        """The Markdown widget that shows the text."""
        return self.query_one(".message-body", Markdown)

    async def append(self, fragment: str) -> None:
        """Append streamed text; fast streams are merged into fewer Markdown updates."""
        if self._stream is None:
            self._stream = Markdown.get_stream(self.body)
        self.text += fragment
        await self._stream.write(fragment)

    async def finish(self, text: str | None, sources: Sequence[Any], known: bool, stopped: bool = False) -> None:
        """End the stream, show the final `text` if it differs from what streamed, and list the sources."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        if text is not None and text != self.text:
            self.text = text
            await self.body.update(text)
        if stopped:
            self.add_class("-stopped")
            await self.mount(Label("stopped", classes="message-stopped"))
        await self.mount(SourcesList(sources, known=known, classes="message-sources"))
        self.finished = True
