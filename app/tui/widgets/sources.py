"""The list of memory items an answer used, shown under the answer."""

from __future__ import annotations

from typing import Any, Sequence

from rich.markup import escape
from textual.widgets import Static


class SourcesList(Static):
    """Each recalled memory item with its kind, origin and score.

    `items` are memory items (kind, text, origin, score); an empty list
    shows that the answer used nothing from memory.
    """

    def __init__(self, items: Sequence[Any], known: bool = True, **kwargs) -> None:
        super().__init__(self.format_items(items, known), **kwargs)
        self.items = list(items)
        self.known = known

    @staticmethod
    def format_items(items: Sequence[Any], known: bool) -> str:
        """Format the items as Rich markup, one line each."""
        if not items:
            return "[dim]no memory items used[/]" if known else "[dim]nothing in memory matches this question[/]"
        lines = ["[b]sources[/b]" + ("" if known else " [dim](below the recall threshold)[/]")]
        for number, item in enumerate(items, start=1):
            kind = getattr(item, "kind", "item")
            text = escape(str(getattr(item, "text", item)))
            origin = escape(str(getattr(item, "origin", "")))
            score = float(getattr(item, "score", 0.0))
            lines.append(f"{number}. [b]{kind}[/b] {text} [dim]— {origin}, score {score:.2f}[/]")
        return "\n".join(lines)
