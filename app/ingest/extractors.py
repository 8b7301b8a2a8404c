"""Text extractors: turn one file into plain text by its format.

Plain text, Markdown, reStructuredText and source files are decoded and
streamed in chunks, so a file of hundreds of megabytes never sits in memory
whole. HTML is parsed with the standard library's `html.parser` (which does
not recurse, so deep nesting is safe) and PDF with pypdf in a worker process
(`pdf_worker.py`) that is killed after a timeout.

Encodings: a UTF-8, UTF-16 or UTF-32 byte-order mark decides the encoding.
Without one the file must be valid UTF-8, or else decode as Windows-1252 with
at most 1% of control characters. Anything else is rejected as undecodable. Control
characters other than tab, newline and form feed are replaced by spaces one
for one, so character offsets stay valid.

Every failure raises `ExtractionError` whose message is the reason recorded
for the file.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from app.ingest.pdf_worker import PdfError, PdfWorker

logger = logging.getLogger(__name__)

SNIFF_BYTES = 8192
READ_CHUNK_BYTES = 1 << 20
TEXT_CHUNK_CHARS = 1 << 20
# HTML and PDF are parsed whole, so they get a lower size limit than text.
MAX_PARSED_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_PDF_TIMEOUT_S = 60.0
MAX_CONTROL_FRACTION = 0.01

FORMAT_BY_SUFFIX: dict[str, str] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdown": "markdown",
    ".mkd": "markdown",
    ".rst": "rst",
    ".rest": "rst",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
}
SOURCE_SUFFIXES = frozenset(
    ".py .pyi .js .mjs .cjs .jsx .ts .tsx .c .h .cc .cpp .cxx .hpp .hh .rs .go .java .kt "
    ".scala .rb .php .pl .lua .swift .cs .r .jl .sh .bash .zsh .fish .ps1 .sql .css .scss "
    ".toml .yaml .yml .json .ini .cfg .conf .xml .tex .org .adoc .csv .tsv".split()
)
for _suffix in SOURCE_SUFFIXES:
    FORMAT_BY_SUFFIX[_suffix] = "source"

# Magic numbers of common binary formats that could carry a text suffix.
_BINARY_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF8", "GIF image"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
    (b"\x7fELF", "ELF executable"),
    (b"%PDF-", "PDF document"),
    (b"SQLite format 3\x00", "SQLite database"),
)
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# C0 controls and DEL, without tab (9), newline (10), vertical tab (11),
# form feed (12) and carriage return (13).
_CONTROL_BYTES = bytes([*range(0, 9), *range(14, 32), 127])
_CONTROL_CHARS = re.compile("[\x00-\x08\x0e-\x1f\x7f\ufeff]")
# Windows-1252 leaves these five bytes undefined.
_CP1252_UNDEFINED = b"\x81\x8d\x8f\x90\x9d"


class ExtractionError(Exception):
    """A file could not be turned into text; the message is the reason."""


@dataclass
class FileScan:
    """One pass over a file: its SHA-256, size in bytes and text encoding.

    `encoding` is None for PDF files, and `reason` is set (with `encoding`
    None) when the file cannot be decoded as text.
    """

    sha256: str
    size: int
    encoding: str | None
    reason: str | None = None


@dataclass
class Heading:
    """A section title found by an extractor, at a character offset of the text."""

    offset: int
    level: int
    title: str


@dataclass
class ExtractedText:
    """The text of one file as a stream of chunks.

    `chunks` yields consecutive pieces of the text. `style` selects the
    splitter's heading detection ("markdown", "rst" or "plain").
    `headings` lists titles already found by the extractor (HTML); it is
    complete only after `chunks` is exhausted.
    """

    chunks: Iterator[str]
    style: str
    headings: list[Heading] = field(default_factory=list)


def format_for_path(path: Path) -> str | None:
    """Return the extractor format for `path`, or None when none reads it.

    Files without a suffix (README, LICENSE, Makefile) count as plain text;
    the walker's binary sniffing keeps executables out.
    """
    suffix = path.suffix.lower()
    if not suffix:
        return "text"
    return FORMAT_BY_SUFFIX.get(suffix)


def sniff_binary(head: bytes) -> str | None:
    """Return why `head` (a file's first bytes) looks binary, or None for text."""
    for magic, name in _BINARY_MAGIC:
        if head.startswith(magic):
            return f"binary file: {name}"
    for bom, _ in _BOMS:
        if head.startswith(bom):
            return None
    if b"\x00" in head:
        return "binary file: contains NUL bytes"
    if head:
        controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
        if controls / len(head) > 0.1:
            return f"binary file: {controls} control bytes in the first {len(head)} bytes"
    return None


def scan_file(path: Path, fmt: str) -> FileScan:
    """Hash `path` and detect its text encoding in one streaming read.

    Raises `ExtractionError` when the file cannot be read.
    """
    digest = hashlib.sha256()
    size = 0
    detector = None if fmt == "pdf" else _EncodingDetector()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(READ_CHUNK_BYTES):
                digest.update(block)
                size += len(block)
                if detector is not None:
                    detector.feed(block)
    except OSError as error:
        raise ExtractionError(f"unreadable: {error.strerror or error}") from error
    if detector is None:
        return FileScan(digest.hexdigest(), size, None)
    encoding, reason = detector.finish()
    return FileScan(digest.hexdigest(), size, encoding, reason)


class _EncodingDetector:
    """Incremental check of the encoding rules in this module's docstring."""

    def __init__(self) -> None:
        self._head = b""
        self._bom_encoding: str | None = None
        self._decided_bom = False
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self._utf8_error: str | None = None
        self._offset = 0
        self._controls = 0
        self._cp1252_undefined = False

    def feed(self, block: bytes) -> None:
        if not self._decided_bom:
            self._head += block[:4]
            if len(self._head) >= 4 or len(block) < 4:
                self._bom_encoding = _bom_encoding(self._head)
                self._decided_bom = True
        if self._bom_encoding is not None:
            return
        self._controls += len(block) - len(block.translate(None, _CONTROL_BYTES))
        if self._utf8_error is None:
            try:
                self._utf8.decode(block)
            except UnicodeDecodeError as error:
                self._utf8_error = f"invalid UTF-8 byte at offset {self._offset + error.start}"
        if not self._cp1252_undefined and self._utf8_error is not None:
            self._cp1252_undefined = any(byte in block for byte in _CP1252_UNDEFINED)
        self._offset += len(block)

    def finish(self) -> tuple[str | None, str | None]:
        if not self._decided_bom:
            self._bom_encoding = _bom_encoding(self._head)
        if self._bom_encoding is not None:
            return self._bom_encoding, None
        if self._utf8_error is None:
            try:
                self._utf8.decode(b"", final=True)
            except UnicodeDecodeError:
                self._utf8_error = "truncated UTF-8 sequence at the end of the file"
        if self._controls > MAX_CONTROL_FRACTION * max(self._offset, 1):
            return None, (
                f"undecodable: {self._controls} control characters in {self._offset} bytes "
                "(binary data or an unsupported encoding)"
            )
        if self._utf8_error is None:
            return "utf-8", None
        if self._cp1252_undefined:
            return None, (
                f"undecodable: not UTF-8 ({self._utf8_error}), not UTF-16 or UTF-32 (no byte-order "
                "mark) and not Windows-1252; convert it to UTF-8"
            )
        return "cp1252", None


def _bom_encoding(head: bytes) -> str | None:
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    return None


def decode_bytes(data: bytes) -> str:
    """Decode a whole file's bytes by the module's encoding rules.

    Raises `ExtractionError` with the reason when no rule applies.
    """
    detector = _EncodingDetector()
    detector.feed(data)
    encoding, reason = detector.finish()
    if encoding is None:
        raise ExtractionError(reason or "undecodable")
    return clean_text(data.decode(encoding, errors="replace"))


def clean_text(text: str) -> str:
    """Replace control characters and stray byte-order marks by spaces, one for one."""
    return _CONTROL_CHARS.sub(" ", text)


def extract(path: Path, fmt: str, scan: FileScan, *, pdf_timeout_s: float = DEFAULT_PDF_TIMEOUT_S) -> ExtractedText:
    """Return the text of `path` read as format `fmt`.

    `scan` must come from `scan_file` on the same file. Raises
    `ExtractionError` with the reason when the file cannot be read, decoded
    or parsed.
    """
    if fmt == "pdf":
        text = extract_pdf(path, timeout_s=pdf_timeout_s)
        return ExtractedText(iter([text]), "plain")
    if scan.encoding is None:
        raise ExtractionError(scan.reason or "undecodable")
    if fmt == "html":
        if scan.size > MAX_PARSED_FILE_BYTES:
            raise ExtractionError(
                f"too large for the HTML parser: {scan.size} bytes exceeds {MAX_PARSED_FILE_BYTES} bytes"
            )
        text, headings = extract_html(_read_text(path, scan.encoding))
        return ExtractedText(iter([text]), "plain", headings)
    style = {"markdown": "markdown", "rst": "rst"}.get(fmt, "plain")
    return ExtractedText(_stream_text(path, scan.encoding), style)


def _read_text(path: Path, encoding: str) -> str:
    try:
        with open(path, encoding=encoding, errors="replace", newline=None) as handle:
            return clean_text(handle.read())
    except OSError as error:
        raise ExtractionError(f"unreadable: {error.strerror or error}") from error


def _stream_text(path: Path, encoding: str) -> Iterator[str]:
    # Universal newlines turn CRLF and CR into "\n", also across chunk edges.
    try:
        with open(path, encoding=encoding, errors="replace", newline=None) as handle:
            while chunk := handle.read(TEXT_CHUNK_CHARS):
                yield clean_text(chunk)
    except OSError as error:
        raise ExtractionError(f"unreadable: {error.strerror or error}") from error


# HTML ----------------------------------------------------------------------

# Elements whose content is never text for a reader, or is the same
# navigation and footer on every page of a site.
_HTML_DROPPED = frozenset({"script", "style", "noscript", "template", "svg", "math", "nav", "head", "footer"})
_HTML_DROPPED_ROLES = frozenset({"navigation", "search", "contentinfo"})
# Sphinx and similar generators put a "¶" permalink after every heading, and
# many themes mark the page footer with a "footer" class instead of a tag.
_HTML_DROPPED_CLASSES = frozenset({"headerlink", "footer"})
# A paragraph (a list item, table cell, ...) whose visible characters are
# at least this fraction link text is navigation: a table of contents, an
# index entry, a "next page" link. It is dropped, unless it is a heading or
# preformatted text.
MAX_LINK_FRACTION = 0.7
_HTML_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
)
_HTML_BLOCKS = frozenset(
    """address article aside blockquote body br caption dd details div dl dt fieldset figcaption
    figure footer form h1 h2 h3 h4 h5 h6 header hr li main ol p pre section summary table tbody
    td tfoot th thead title tr ul""".split()
)
_HTML_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_WHITESPACE = re.compile(r"\s+")


class _TextCollector(HTMLParser):
    """Collect the readable text of an HTML page, paragraph by paragraph."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.length = 0
        self.headings: list[Heading] = []
        self._skip_tag: str | None = None
        self._skip_depth = 0
        self._pre_depth = 0
        self._heading: tuple[int, int] | None = None  # (level, offset)
        self._at_break = True
        self._pending_space = False
        # The paragraph being collected: where it starts, how many visible
        # characters it has and how many of them are link text.
        self._link_depth = 0
        self._paragraph_start = (0, 0)  # (piece count, text length)
        self._paragraph_chars = 0
        self._paragraph_link_chars = 0
        self._paragraph_kept = False  # it has a heading or preformatted text

    # Dropped subtrees: count nested elements of the same name until it closes.
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth += 1
            return
        if tag in _HTML_VOID:
            if tag in ("br", "hr"):
                self._paragraph_break()
            return
        role = next((value for name, value in attrs if name == "role"), None)
        classes = next((value for name, value in attrs if name == "class"), None) or ""
        if (
            tag in _HTML_DROPPED
            or (role is not None and role.lower() in _HTML_DROPPED_ROLES)
            or not _HTML_DROPPED_CLASSES.isdisjoint(classes.split())
        ):
            self._skip_tag, self._skip_depth = tag, 1
            return
        if tag == "pre":
            self._pre_depth += 1
        if tag in _HTML_BLOCKS:
            self._paragraph_break()
        if tag in _HTML_HEADINGS and self._heading is None:
            self._heading = (_HTML_HEADINGS[tag], self.length)
        if tag == "a" and any(name == "href" for name, _ in attrs):
            self._link_depth += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is None and tag in ("br", "hr"):
            self._paragraph_break()

    def handle_endtag(self, tag: str) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if self._skip_depth == 0:
                    self._skip_tag = None
            return
        if tag == "pre" and self._pre_depth:
            self._pre_depth -= 1
        if tag == "a" and self._link_depth:
            self._link_depth -= 1
        if tag in _HTML_HEADINGS and self._heading is not None:
            level, offset = self._heading
            text = self._text_since(offset).strip()
            if text:
                self.headings.append(Heading(offset, level, text))
            self._heading = None
        if tag in _HTML_BLOCKS:
            self._paragraph_break()

    def handle_data(self, data: str) -> None:
        if self._skip_tag is not None or not data:
            return
        if self._pre_depth:
            self._append(data)
            self._at_break = data.endswith("\n")
            self._paragraph_kept = True
            return
        leading = data[:1].isspace()
        trailing = data[-1:].isspace()
        words = _WHITESPACE.sub(" ", data).strip()
        if not words:
            self._pending_space = self._pending_space or not self._at_break
            return
        if (leading or self._pending_space) and not self._at_break:
            self._append(" ")
        self._append(words)
        self._at_break = False
        self._pending_space = trailing
        visible = len(words) - words.count(" ")
        self._paragraph_chars += visible
        if self._link_depth:
            self._paragraph_link_chars += visible
        if self._heading is not None:
            self._paragraph_kept = True

    def _append(self, text: str) -> None:
        self.pieces.append(text)
        self.length += len(text)

    def _paragraph_break(self) -> None:
        if not self._at_break:
            if self._is_navigation():
                # Cut the paragraph; the text before it already ends in a break.
                pieces, length = self._paragraph_start
                del self.pieces[pieces:]
                self.length = length
            else:
                self._append("\n\n")
            self._at_break = True
        self._pending_space = False
        self._paragraph_start = (len(self.pieces), self.length)
        self._paragraph_chars = self._paragraph_link_chars = 0
        self._paragraph_kept = False

    def drop_trailing_navigation(self) -> None:
        """Give the last paragraph, which no block end closed, the navigation check."""
        if not self._at_break and self._is_navigation():
            pieces, length = self._paragraph_start
            del self.pieces[pieces:]
            self.length = length

    def _is_navigation(self) -> bool:
        return (
            not self._paragraph_kept
            and self._heading is None
            and self._paragraph_chars > 0
            and self._paragraph_link_chars >= MAX_LINK_FRACTION * self._paragraph_chars
        )

    def _text_since(self, offset: int) -> str:
        # Walk back over the pieces appended after `offset`; headings are short.
        collected: list[str] = []
        position = self.length
        for piece in reversed(self.pieces):
            if position <= offset:
                break
            collected.append(piece)
            position -= len(piece)
        text = "".join(reversed(collected))
        return text[offset - position :] if position < offset else text


def extract_html(html: str) -> tuple[str, list[Heading]]:
    """Return the readable text of an HTML document and its h1–h6 headings.

    Script, style, navigation, footers and other non-text elements are
    dropped, and so are paragraphs that are mostly link text
    (`MAX_LINK_FRACTION`). Block elements become paragraph breaks and
    whitespace is collapsed outside `<pre>`. Heading offsets index the
    returned text.
    """
    collector = _TextCollector()
    try:
        collector.feed(html)
        collector.close()
    except (AssertionError, ValueError) as error:
        # html.parser raises these on a few malformed constructs in old
        # Python releases; what was collected so far is kept.
        logger.debug("HTML parser stopped early: %s", error)
    collector.drop_trailing_navigation()
    text = "".join(collector.pieces)
    return text, collector.headings


# PDF -----------------------------------------------------------------------


_pdf_worker = PdfWorker()


def extract_pdf(path: Path, *, timeout_s: float = DEFAULT_PDF_TIMEOUT_S) -> str:
    """Return the text of a PDF, parsed in a worker process under a timeout.

    Raises `ExtractionError` for broken, encrypted, oversized or text-less
    PDFs and when parsing takes longer than `timeout_s` seconds.
    """
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ExtractionError(f"unreadable: {error.strerror or error}") from error
    if size > MAX_PARSED_FILE_BYTES:
        raise ExtractionError(f"too large for the PDF parser: {size} bytes exceeds {MAX_PARSED_FILE_BYTES} bytes")
    try:
        text = _pdf_worker.extract(path, timeout_s)
    except PdfError as error:
        raise ExtractionError(str(error)) from error
    if not text.strip():
        raise ExtractionError("PDF has no extractable text (scanned pages need OCR first)")
    return text
