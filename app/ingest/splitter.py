"""Passage splitter: cut extracted text into passages of bounded size.

Passages end on paragraph boundaries (a blank line) where they can, else on
sentence boundaries, else on whitespace, and only as a last resort inside a
word. Consecutive short paragraphs are packed into one passage up to
`max_chars`. Each passage is an exact slice `text[start:end]` of the
extracted text, so its offsets point back into the document, and carries the
section headings above it ("Install > Linux") as context for recall.

The splitter reads its input as a stream of chunks and keeps only the
current passage and one chunk in memory, so a file of any size splits in
bounded memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

DEFAULT_MAX_CHARS = 800
HEADING_SEPARATOR = " > "

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\f\v]*\n")
# A sentence ends at ., ! or ? (optionally followed by closing quotes or
# brackets) before whitespace.
_SENTENCE_END = re.compile(r"([.!?\u2026][\"'\u2019\u201d)\]]*)\s+")
_MARKDOWN_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_MARKDOWN_FENCE = re.compile(r"^ {0,3}(```|~~~)", re.MULTILINE)
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_RST_ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1+[ \t]*$")


@dataclass(frozen=True)
class Passage:
    """A piece of a document: `text` is the extracted text's `[start:end]` slice.

    `heading` is the chain of section titles above the passage, joined by
    " > ", or None when the document has no heading before it.
    """

    text: str
    start: int
    end: int
    heading: str | None = None

    @property
    def text_with_heading(self) -> str:
        """The passage text preceded by its heading line, for embedding or display."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text


@dataclass
class _Unit:
    start: int
    end: int
    heading: tuple[int, str] | None = None  # (level, title) when the unit is a heading


class _HeadingTracker:
    """Find headings in paragraphs of Markdown or reStructuredText."""

    def __init__(self, style: str) -> None:
        self.style = style
        self.in_fence = False
        self.rst_levels: list[str] = []

    def detect(self, paragraph: str) -> tuple[int, str, int] | None:
        """Return (level, title, length of the heading lines) when `paragraph` starts with a heading."""
        if self.style == "markdown":
            return self._markdown(paragraph)
        if self.style == "rst":
            return self._rst(paragraph)
        return None

    def _markdown(self, paragraph: str) -> tuple[int, str, int] | None:
        was_in_fence = self.in_fence
        if len(_MARKDOWN_FENCE.findall(paragraph)) % 2 == 1:
            self.in_fence = not self.in_fence
        if was_in_fence:
            return None
        first, _, rest = paragraph.partition("\n")
        match = _MARKDOWN_ATX.match(first)
        if match and match.group(2).strip():
            return len(match.group(1)), match.group(2).strip(), len(first)
        second, _, _ = rest.partition("\n")
        if first.strip() and rest and _SETEXT_UNDERLINE.match(second):
            level = 1 if second.strip().startswith("=") else 2
            return level, first.strip(), len(first) + 1 + len(second)
        return None

    def _rst(self, paragraph: str) -> tuple[int, str, int] | None:
        lines = paragraph.split("\n", 3)
        # Overline, title, underline.
        if len(lines) >= 3 and _RST_ADORNMENT.match(lines[0]) and _RST_ADORNMENT.match(lines[2]):
            title = lines[1].strip()
            if title and lines[0].strip() == lines[2].strip() and len(lines[2].strip()) >= len(title):
                style = "over" + lines[0].strip()[0]
                return self._rst_level(style), title, len(lines[0]) + len(lines[1]) + len(lines[2]) + 2
        # Title, underline.
        if len(lines) >= 2 and _RST_ADORNMENT.match(lines[1]):
            title = lines[0].strip()
            if title and not _RST_ADORNMENT.match(lines[0]) and len(lines[1].strip()) >= len(title):
                return self._rst_level(lines[1].strip()[0]), title, len(lines[0]) + 1 + len(lines[1])
        return None

    def _rst_level(self, style: str) -> int:
        # reStructuredText ranks adornment styles in the order they first appear.
        if style not in self.rst_levels:
            self.rst_levels.append(style)
        return self.rst_levels.index(style) + 1


def split_passages(
    text: str | Iterable[str],
    *,
    style: str = "plain",
    headings: Sequence[object] = (),
    max_chars: int = DEFAULT_MAX_CHARS,
) -> Iterator[Passage]:
    """Yield the passages of `text` (a string or an iterable of consecutive chunks).

    `style` ("plain", "markdown" or "rst") selects heading detection;
    `headings` lists headings found by an extractor, as objects with
    `offset`, `level` and `title` attributes sorted by offset (it may grow
    while `text` is consumed). Every passage is at most `max_chars`
    characters, begins and ends on a non-whitespace character, and passages
    come in document order without overlap.
    """
    if max_chars < 16:
        raise ValueError(f"max_chars must be at least 16, got {max_chars}")
    if style not in ("plain", "markdown", "rst"):
        raise ValueError(f"style must be 'plain', 'markdown' or 'rst', got {style!r}")
    chunks: Iterable[str] = [text] if isinstance(text, str) else text
    yield from _Splitter(style, headings, max_chars).run(chunks)


class _Splitter:
    def __init__(self, style: str, headings: Sequence[object], max_chars: int) -> None:
        self.max_chars = max_chars
        self.tracker = _HeadingTracker(style)
        self.external_headings = headings
        self.next_external = 0
        self.stack: list[tuple[int, str]] = []
        # `buffer` contains the text from absolute offset `buffer_start` on,
        # which includes everything from the start of the passage being built.
        self.buffer = ""
        self.buffer_start = 0
        self.units: list[_Unit] = []
        self.passage_heading: str | None = None

    def run(self, chunks: Iterable[str]) -> Iterator[Passage]:
        scanned = 0  # absolute offset up to which paragraphs were cut
        for chunk in chunks:
            if not chunk:
                continue
            self.buffer += chunk
            scanned = yield from self._scan(scanned, final=False)
            self._trim(scanned)
        yield from self._scan(scanned, final=True)
        yield from self._flush()

    def _scan(self, scanned: int, *, final: bool) -> Iterator[Passage]:
        """Cut complete paragraphs from `scanned` on; return the new scan offset."""
        position = scanned - self.buffer_start
        for match in _PARAGRAPH_BREAK.finditer(self.buffer, position):
            yield from self._paragraph(position, match.start())
            position = match.end()
        tail = len(self.buffer) - position
        if final:
            yield from self._paragraph(position, len(self.buffer))
            position = len(self.buffer)
        elif tail > 4 * self.max_chars:
            # A paragraph with no blank line in sight: emit all but its last
            # piece now, so memory stays bounded on a file with no breaks.
            pieces = self._pieces(position, len(self.buffer))
            for start, end in pieces[:-1]:
                yield from self._add(_Unit(start, end))
            position = pieces[-1][0] - self.buffer_start
        return self.buffer_start + position

    def _trim(self, scanned: int) -> None:
        keep_from = self.units[0].start if self.units else scanned
        cut = keep_from - self.buffer_start
        if cut > 0:
            self.buffer = self.buffer[cut:]
            self.buffer_start = keep_from

    def _paragraph(self, begin: int, end: int) -> Iterator[Passage]:
        """Handle the paragraph at buffer positions [begin, end)."""
        raw = self.buffer[begin:end]
        stripped = raw.strip()
        if not stripped:
            return
        begin += len(raw) - len(raw.lstrip())
        end = begin + len(stripped)
        start_abs = self.buffer_start + begin

        detected = self.tracker.detect(stripped)
        if detected is None:
            detected = self._external_heading(start_abs, self.buffer_start + end)
        if detected is not None and detected[2] > self.max_chars:
            detected = None  # a "heading" longer than a passage is body text
        if detected is not None:
            level, title, length = detected
            heading_end = begin + len(self.buffer[begin : begin + length].rstrip())
            yield from self._add(_Unit(start_abs, self.buffer_start + heading_end, (level, title)))
            rest = self.buffer[heading_end:end]
            if not rest.strip():
                return
            begin = heading_end + len(rest) - len(rest.lstrip())
            start_abs = self.buffer_start + begin

        if end - begin <= self.max_chars:
            yield from self._add(_Unit(start_abs, self.buffer_start + end))
            return
        for piece_start, piece_end in self._pieces(begin, end):
            yield from self._add(_Unit(piece_start, piece_end))

    def _external_heading(self, start: int, end: int) -> tuple[int, str, int] | None:
        """Return the extractor's heading that starts the paragraph at [start, end)."""
        headings = self.external_headings
        while self.next_external < len(headings) and headings[self.next_external].offset < start:  # type: ignore[attr-defined]
            self.next_external += 1
        if self.next_external >= len(headings):
            return None
        heading = headings[self.next_external]
        if heading.offset != start:  # type: ignore[attr-defined]
            return None
        self.next_external += 1
        line = self.buffer[start - self.buffer_start : end - self.buffer_start].partition("\n")[0]
        return heading.level, heading.title, len(line)  # type: ignore[attr-defined]

    def _pieces(self, begin: int, end: int) -> list[tuple[int, int]]:
        """Split buffer[begin:end] into pieces of at most max_chars, returned as absolute offsets."""
        pieces: list[tuple[int, int]] = []
        limit = self.max_chars
        text = self.buffer
        while begin < end:
            while begin < end and text[begin].isspace():
                begin += 1
            if begin >= end:
                break
            if end - begin <= limit:
                cut = end
            else:
                window = text[begin : begin + limit + 1]
                cut = begin + _best_cut(window, limit)
            piece_end = cut
            while piece_end > begin and text[piece_end - 1].isspace():
                piece_end -= 1
            pieces.append((self.buffer_start + begin, self.buffer_start + piece_end))
            begin = cut
        return pieces

    def _add(self, unit: _Unit) -> Iterator[Passage]:
        if unit.heading is not None:
            yield from self._flush()
            level, title = unit.heading
            while self.stack and self.stack[-1][0] >= level:
                self.stack.pop()
            self.stack.append((level, title))
        elif self.units and unit.end - self.units[0].start > self.max_chars:
            yield from self._flush()
        if not self.units:
            parents = self.stack[:-1] if unit.heading is not None else self.stack
            self.passage_heading = HEADING_SEPARATOR.join(title for _, title in parents) or None
        self.units.append(unit)

    def _flush(self) -> Iterator[Passage]:
        if not self.units:
            return
        start, end = self.units[0].start, self.units[-1].end
        text = self.buffer[start - self.buffer_start : end - self.buffer_start]
        self.units = []
        yield Passage(text, start, end, self.passage_heading)


def _best_cut(window: str, limit: int) -> int:
    """Return where to cut `window`, keeping at most `limit` characters.

    Prefer the last sentence end in the second half of the window, then the
    last whitespace there, then a hard cut at `limit`.
    """
    floor = limit // 2
    best = -1
    for match in _SENTENCE_END.finditer(window):
        end_of_sentence = match.end(1)
        if end_of_sentence > limit:
            break
        if end_of_sentence >= floor:
            best = end_of_sentence
    if best > 0:
        return best
    head = window[:limit]
    space = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
    if space >= floor:
        return space + 1
    return limit
