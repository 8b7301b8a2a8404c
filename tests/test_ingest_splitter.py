"""Passage splitter: boundaries, offsets, headings and streaming."""

from __future__ import annotations

import pytest

from app.ingest.extractors import Heading
from app.ingest.splitter import Passage, split_passages


def check_passages(text: str, passages: list[Passage], max_chars: int) -> None:
    """Assert the invariants every split must keep."""
    previous_end = 0
    for passage in passages:
        assert passage.text == text[passage.start : passage.end], passage
        assert 0 < len(passage.text) <= max_chars, passage
        assert passage.text == passage.text.strip(), passage
        assert passage.start >= previous_end, passage
        previous_end = passage.end
    # Nothing but whitespace is lost between passages.
    covered = "".join(p.text for p in passages)
    assert "".join(covered.split()) == "".join(text.split())


def test_short_paragraphs_are_packed():
    text = "One.\n\nTwo.\n\nThree."
    passages = list(split_passages(text, max_chars=100))
    assert [p.text for p in passages] == ["One.\n\nTwo.\n\nThree."]
    assert (passages[0].start, passages[0].end) == (0, len(text))


def test_paragraph_boundary_preferred():
    first = "a" * 60 + "."
    second = "b" * 60 + "."
    text = f"{first}\n\n{second}"
    passages = list(split_passages(text, max_chars=100))
    assert [p.text for p in passages] == [first, second]
    check_passages(text, passages, 100)


def test_long_paragraph_splits_on_sentences():
    sentences = [f"Sentence number {i} is here." for i in range(40)]
    text = " ".join(sentences)
    passages = list(split_passages(text, max_chars=120))
    check_passages(text, passages, 120)
    assert len(passages) > 1
    for passage in passages[:-1]:
        assert passage.text.endswith("here."), passage.text


def test_word_longer_than_limit_is_cut_hard():
    text = "x" * 1000
    passages = list(split_passages(text, max_chars=64))
    check_passages(text, passages, 64)
    assert [len(p.text) for p in passages] == [64] * 15 + [40]


def test_markdown_headings_become_context():
    text = "# Guide\n\nIntro.\n\n## Install\n\nRun the setup.\n\n### Linux\n\nUse apt.\n\n## Use\n\nType a command."
    passages = list(split_passages(text, style="markdown", max_chars=1000))
    by_text = {p.text: p.heading for p in passages}
    assert by_text["# Guide\n\nIntro."] is None
    assert by_text["## Install\n\nRun the setup."] == "Guide"
    assert by_text["### Linux\n\nUse apt."] == "Guide > Install"
    assert by_text["## Use\n\nType a command."] == "Guide"


def test_markdown_heading_inside_code_fence_is_ignored():
    text = "# Top\n\n```\n# comment in code\n\nmore code\n```\n\nAfter."
    passages = list(split_passages(text, style="markdown", max_chars=1000))
    assert len(passages) == 1
    assert passages[0].heading is None


def test_setext_and_rst_headings():
    markdown = "Title\n=====\n\nBody one.\n\nSub\n---\n\nBody two."
    assert [p.heading for p in split_passages(markdown, style="markdown")] == [None, "Title"]
    rst = "=====\nTitle\n=====\n\nIntro.\n\nPart\n----\n\nBody.\n\nDeeper\n~~~~~~\n\nMore.\n\nPart two\n--------\n\nEnd."
    headings = [p.heading for p in split_passages(rst, style="rst")]
    assert headings == [None, "Title", "Title > Part", "Title"]


def test_heading_context_carries_to_later_passages():
    body = " ".join(["Filler sentence for the section."] * 30)
    text = f"# Section\n\n{body}"
    passages = list(split_passages(text, style="markdown", max_chars=200))
    assert passages[0].heading is None
    assert all(p.heading == "Section" for p in passages[1:])
    assert passages[1].text_with_heading.startswith("Section\n")


def test_extractor_headings_are_used():
    text = "Intro line.\n\nChapter\n\nChapter body."
    headings = [Heading(offset=13, level=1, title="Chapter")]
    passages = list(split_passages(text, headings=headings, max_chars=1000))
    assert [p.heading for p in passages] == [None, None]
    assert passages[1].text == "Chapter\n\nChapter body."


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_streaming_matches_whole_text(chunk_size):
    paragraphs = [("word " * (i % 37 + 1)).strip() + "." for i in range(200)]
    text = "\n\n".join(paragraphs) + "\n\n" + "z" * 700
    whole = list(split_passages(text, max_chars=150))
    chunks = [text[i : i + chunk_size] for i in range(0, len(text), chunk_size)]
    streamed = list(split_passages(iter(chunks), max_chars=150))
    assert streamed == whole
    check_passages(text, streamed, 150)


def test_stream_without_blank_lines_keeps_buffer_bounded():
    chunk = "endless words without a paragraph break " * 100

    def chunks():
        for _ in range(200):
            yield chunk

    count = 0
    last_end = 0
    for passage in split_passages(chunks(), max_chars=500):
        count += 1
        assert len(passage.text) <= 500
        last_end = passage.end
    assert count > 1000
    assert last_end == 200 * len(chunk) - 1


def test_empty_and_whitespace_give_no_passages():
    assert list(split_passages("")) == []
    assert list(split_passages(" \n\n\t \n")) == []


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="max_chars must be at least 16, got 3"):
        list(split_passages("x", max_chars=3))
    with pytest.raises(ValueError, match="style must be"):
        list(split_passages("x", style="latex"))
