"""Text extractors: formats, encodings, HTML cleaning and PDF failures."""

from __future__ import annotations

import codecs
import os
import time
from pathlib import Path

import pytest

from app.ingest.extractors import (
    ExtractionError,
    decode_bytes,
    extract,
    extract_html,
    extract_pdf,
    format_for_path,
    scan_file,
    sniff_binary,
)


def make_pdf(text: str) -> bytes:
    """Build a one-page PDF showing `text`, with a correct xref table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
        b"/Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def read_all(path: Path, fmt: str) -> str:
    scan = scan_file(path, fmt)
    return "".join(extract(path, fmt, scan).chunks)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.txt", "text"),
        ("b.MD", "markdown"),
        ("c.rst", "rst"),
        ("d.htm", "html"),
        ("e.pdf", "pdf"),
        ("f.py", "source"),
        ("g.yaml", "source"),
        ("README", "text"),
        ("h.png", None),
        ("i.docx", None),
    ],
)
def test_format_for_path(name, expected):
    assert format_for_path(Path(name)) == expected


@pytest.mark.parametrize(
    ("encoding", "prefix"),
    [
        ("utf-8", b""),
        ("utf-8", codecs.BOM_UTF8),
        ("utf-16-le", codecs.BOM_UTF16_LE),
        ("utf-16-be", codecs.BOM_UTF16_BE),
        ("utf-32-le", codecs.BOM_UTF32_LE),
    ],
)
def test_encodings_with_bom_decode(tmp_path, encoding, prefix):
    text = "Grüße aus Köln — naïve café ☕\nline two\n"
    path = tmp_path / "note.txt"
    path.write_bytes(prefix + text.encode(encoding))
    assert read_all(path, "text") == text


def test_windows_1252_fallback(tmp_path):
    path = tmp_path / "legacy.txt"
    path.write_bytes("Smart “quotes” and café – dash\n".encode("cp1252"))
    scan = scan_file(path, "text")
    assert scan.encoding == "cp1252"
    assert read_all(path, "text") == "Smart “quotes” and café – dash\n"


def test_undecodable_bytes_are_rejected_with_reason(tmp_path):
    path = tmp_path / "bad.txt"
    # 0x81 is undefined in Windows-1252 and invalid as UTF-8.
    path.write_bytes(b"hello \x81\x81 world " * 10)
    scan = scan_file(path, "text")
    assert scan.encoding is None
    assert "undecodable" in scan.reason
    assert "invalid UTF-8 byte at offset 6" in scan.reason
    with pytest.raises(ExtractionError, match="undecodable"):
        extract(path, "text", scan)


def test_control_characters_are_rejected_when_dense():
    with pytest.raises(ExtractionError, match="control characters"):
        decode_bytes(bytes(range(1, 9)) * 50 + b"text")


def test_sparse_control_characters_become_spaces():
    text = decode_bytes(b"a\x01b" + b" plain text" * 30)
    assert text.startswith("a b plain")


def test_crlf_becomes_newline(tmp_path):
    path = tmp_path / "dos.txt"
    path.write_bytes(b"one\r\ntwo\rthree\n")
    assert read_all(path, "text") == "one\ntwo\nthree\n"


def test_sha256_and_size(tmp_path):
    path = tmp_path / "a.md"
    path.write_bytes(b"abc")
    scan = scan_file(path, "markdown")
    assert scan.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert scan.size == 3


@pytest.mark.parametrize(
    ("head", "fragment"),
    [
        (b"\x89PNG\r\n\x1a\nrest", "PNG image"),
        (b"PK\x03\x04zip", "ZIP archive"),
        (b"\x7fELF\x02\x01", "ELF executable"),
        (b"text\x00more", "NUL bytes"),
        (bytes(range(1, 9)) * 20, "control bytes"),
    ],
)
def test_sniff_binary(head, fragment):
    reason = sniff_binary(head)
    assert reason is not None
    assert fragment in reason


def test_sniff_accepts_text_and_utf16():
    assert sniff_binary(b"plain text\n") is None
    assert sniff_binary(codecs.BOM_UTF16_LE + "hi".encode("utf-16-le")) is None


def test_html_drops_script_style_and_navigation():
    html = """<html><head><title>T</title><style>p{}</style></head><body>
    <nav><a href=x>Home</a></nav>
    <div role="navigation"><div>Sidebar</div></div>
    <h1>Main <a class="headerlink" href="#m">¶</a></h1>
    <p>First <b>bold</b>
       paragraph.</p><script>alert("x")</script>
    <p>Fish &amp; chips&nbsp;today</p>
    <pre>  keep
    spacing</pre>
    </body></html>"""
    text, headings = extract_html(html)
    assert "Sidebar" not in text
    assert "Home" not in text
    assert "alert" not in text
    assert "p{}" not in text
    assert "¶" not in text
    assert "First bold paragraph." in text
    assert "Fish & chips today" in text
    assert "  keep\n    spacing" in text
    assert [(h.level, h.title) for h in headings] == [(1, "Main")]
    assert text[headings[0].offset :].startswith("Main")


def test_html_deep_nesting_is_fine():
    depth = 50_000
    html = "<div>" * depth + "deep text" + "</div>" * depth
    text, _ = extract_html(html)
    assert text.strip() == "deep text"


def test_html_unclosed_dropped_element_drops_only_its_subtree():
    text, _ = extract_html("<p>before</p><nav><nav>inner</nav>still nav</nav><p>after</p>")
    assert "before" in text
    assert "after" in text
    assert "nav" not in text


def test_html_drops_link_lists_and_footer():
    html = """<body>
    <h2><a href="#install">Install</a></h2>
    <ul class="toctree"><li><a href="json.html">json — JSON encoder</a>
      <ul><li><a href="json.html#basic">Basic Usage</a></li></ul></li>
    <li><a href="csv.html">csv — CSV File Reading</a></li></ul>
    <p>See <a href="csv.html">csv</a> for reading rows from comma separated files.</p>
    <p>Next: <a href="x.html">the walrus operator</a></p>
    <pre><a href="os.html">os</a>.getcwd()</pre>
    <div class="footer">Copyright 2001 and later</div>
    <footer>Site footer</footer>
    <div>Last <a href="z.html">paragraph link only</a></div></body>"""
    text, headings = extract_html(html)
    assert "JSON encoder" not in text
    assert "Basic Usage" not in text
    assert "CSV File Reading" not in text
    assert "See csv for reading rows from comma separated files." in text
    assert "walrus" not in text
    assert "os.getcwd()" in text
    assert "Copyright" not in text
    assert "Site footer" not in text
    assert "paragraph link only" not in text
    assert [(h.level, h.title) for h in headings] == [(2, "Install")]
    assert text[headings[0].offset :].startswith("Install")


def test_html_link_only_page_keeps_its_headings():
    text, headings = extract_html('<h1>Index</h1><ul><li><a href="a.html">abs()</a></li></ul>')
    assert text.strip() == "Index"
    assert [h.title for h in headings] == ["Index"]


def test_pdf_text_is_extracted(tmp_path):
    path = tmp_path / "doc.pdf"
    path.write_bytes(make_pdf("The cabin key is under the blue pot"))
    assert "cabin key is under the blue pot" in extract_pdf(path)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda pdf: pdf[: len(pdf) // 2], id="truncated"),
        pytest.param(lambda pdf: b"%PDF-1.4\n garbage \x00\xff" * 50, id="garbage"),
        pytest.param(lambda pdf: pdf.replace(b"/Contents 5 0 R", b"/Contents 9 0 R"), id="dangling-ref"),
        pytest.param(lambda pdf: b"%PDF-1.4\n", id="header-only"),
    ],
)
def test_broken_pdf_is_reported_not_raised(tmp_path, damage):
    path = tmp_path / "broken.pdf"
    path.write_bytes(damage(make_pdf("secret text")))
    try:
        text = extract_pdf(path)
    except ExtractionError as error:
        assert str(error)
    else:
        # pypdf repairs some damage; what it recovers must then be text.
        assert isinstance(text, str)
        assert text.strip()


def test_pdf_wrong_xref_offsets(tmp_path):
    pdf = make_pdf("offsets are wrong")
    start = pdf.index(b"xref\n")
    damaged = pdf[:start] + pdf[start:].replace(b"0000000009", b"0000000999")
    path = tmp_path / "xref.pdf"
    path.write_bytes(damaged)
    try:
        text = extract_pdf(path)
    except ExtractionError as error:
        assert "PDF" in str(error)
    else:
        assert "offsets are wrong" in text


def test_pdf_timeout_kills_the_worker(tmp_path):
    # Opening a FIFO with no writer blocks forever: a parser that hangs.
    hanging = tmp_path / "hang.pdf"
    os.mkfifo(hanging)
    started = time.monotonic()
    with pytest.raises(ExtractionError, match="timed out after 1 s"):
        extract_pdf(hanging, timeout_s=1.0)
    assert time.monotonic() - started < 10
    # The next call starts a fresh worker.
    good = tmp_path / "good.pdf"
    good.write_bytes(make_pdf("after the hang"))
    assert "after the hang" in extract_pdf(good)


def test_pdf_without_text_reports_it(tmp_path):
    path = tmp_path / "empty.pdf"
    path.write_bytes(make_pdf(""))
    with pytest.raises(ExtractionError, match="no extractable text"):
        extract_pdf(path)
