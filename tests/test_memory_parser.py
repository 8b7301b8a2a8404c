"""Natural teach statements parsed into subject and value."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.memory import parse_statement


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("remember that my locker code is 4312", ("my locker code", "4312")),
        ("the wifi password at the cabin is now x7", ("the wifi password at the cabin", "x7")),
        ("Remember: the IP of the kestrel server is 10.0.0.7.", ("the IP of the kestrel server", "10.0.0.7")),
        ("Please note that Zofia's favourite colour is slate", ("Zofia's favourite colour", "slate")),
        ("my dentist has changed to Dr Ruiz", ("my dentist", "Dr Ruiz")),
        ("door code = 1234", ("door code", "1234")),
        ("keep in mind that the boat keys are in the red box", ("the boat keys", "in the red box")),
    ],
)
def test_statement_parsed(text, expected):
    assert parse_statement(text) == expected


@pytest.mark.parametrize(
    "text",
    ["What is my locker code?", "is the door open", "hello there", "", "   ", "remember that", "the code is ?"],
)
def test_non_statement_returns_none(text):
    assert parse_statement(text) is None


def test_non_string_is_rejected():
    with pytest.raises(TypeError, match="expects a str"):
        parse_statement(1234)


@given(st.text(max_size=3000))
def test_parser_never_crashes(text):
    result = parse_statement(text)
    if result is not None:
        subject, value = result
        assert subject and value
        assert subject == subject.strip() and value == value.strip()
