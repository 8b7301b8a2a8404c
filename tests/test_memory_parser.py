"""Natural teach statements parsed into subject and value."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from app.memory import Memory, MemoryConfig, engine, migrations, normalize_subject, parse_statement
from app.memory.parser import MAX_STATEMENT_CHARS


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


SMALL = MemoryConfig(fact_key_dim=1 << 11, fact_value_dim=64, passage_key_dim=1 << 10, passage_value_dim=32, semantic=False)


@pytest.mark.parametrize(
    ("subject", "key"),
    [
        ("my locker code", "locker code"),
        ("The locker code", "locker code"),
        ("  our   Locker code. ", "locker code"),
        ("a spare key", "spare key"),
        ("an umbrella stand", "umbrella stand"),
        ("the my locker code", "locker code"),
        ("The, locker code", "locker code"),
        ("locker code of the shed", "locker code of the shed"),
        ("your name", "your name"),
        ("the", "the"),
        ("my the", "the"),
    ],
)
def test_subject_key_drops_leading_determiners(subject, key):
    assert normalize_subject(subject) == key


def test_parsed_subjects_share_one_key():
    statements = ["remember that my locker code is 4312", "the locker code is 4312", "Our locker code = 4312"]
    subjects = [parse_statement(text)[0] for text in statements]
    assert subjects == ["my locker code", "the locker code", "Our locker code"]
    assert {normalize_subject(subject) for subject in subjects} == {"locker code"}


def test_articles_and_possessives_land_on_one_fact(tmp_path):
    with Memory.open(tmp_path / "mem", config=SMALL) as memory:
        memory.teach(*parse_statement("remember that my locker code is 4312"))
        memory.teach(*parse_statement("the locker code is 5555"))

        facts = memory.facts()
        assert [(fact.subject, fact.value) for fact in facts] == [("the locker code", "5555")]
        assert [row.value for row in memory.history("locker code")] == ["4312", "5555"]
        assert memory.history("my locker code") == memory.history("the locker code")
        recall = memory.recall("what is my locker code?")
        assert recall.known
        assert recall.items[0].value == "5555"

        memory.forget("our locker code")
        assert memory.facts() == []
        assert not memory.recall("what is my locker code?").known


def _old_normalize_subject(subject: str) -> str:
    """The subject key before leading determiners were dropped."""
    return " ".join(subject.casefold().split()).strip(" .!?;:,")


@pytest.mark.parametrize("semantic", [False, True])
def test_migration_merges_old_subject_keys(tmp_path, monkeypatch, semantic):
    folder = tmp_path / "mem"
    config = dataclasses.replace(SMALL, semantic=semantic)

    # Write a log the way hydra-chat did before migration 3: two subjects
    # that differ only by their determiner, each with its own live value.
    with monkeypatch.context() as old_code:
        old_code.setattr(engine, "normalize_subject", _old_normalize_subject)
        old_code.setattr(migrations, "MIGRATIONS", [m for m in migrations.MIGRATIONS if m[0] < 3])
        with Memory.open(folder, config=config) as memory:
            memory.teach("my locker code", "1111")
            memory.teach("the boat name", "Tern")
            memory.teach("the locker code", "2222")
            memory.teach("my bike lock", "0042")
            assert len(memory.facts()) == 4

    with Memory.open(folder, config=config) as memory:
        assert 3 in migrations.applied_migrations(memory.db)
        live = {fact.subject: fact.value for fact in memory.facts()}
        assert live == {"the boat name": "Tern", "the locker code": "2222", "my bike lock": "0042"}
        history = memory.history("locker code")
        steps = [(row.op, row.value, row.source) for row in history]
        assert steps == [
            ("teach", "1111", "cli"),
            ("teach", "2222", "cli"),
            ("forget", None, "migration"),
            ("forget", None, "migration"),
            ("teach", "2222", "migration"),
        ]
        assert [row.supersedes for row in history[2:]] == [history[0].write_id, history[1].write_id, None]
        assert [fact.write_id for fact in memory.facts() if fact.value == "2222"] == [history[-1].write_id]
        assert len(memory.history("boat name")) == 1

        # The state still equals a replay of the whole log, forget included.
        replayed = memory.replayed_state_tensors()
        for name, tensor in memory.state_tensors().items():
            assert torch.equal(tensor, replayed[name]), name

        assert memory.recall("What is my locker code?").items[0].value == "2222"
        assert memory.recall("What is the boat name?").items[0].value == "Tern"
        memory.teach("locker code", "3333")
        assert memory.recall("What is our locker code?").items[0].value == "3333"
        memory.forget("bike lock")
        assert sorted(fact.value for fact in memory.facts()) == ["3333", "Tern"]


hostile_text = st.one_of(
    st.text(max_size=3000),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=500),
    st.text(alphabet=st.sampled_from(list("is = : ? the my a remember that \x00\x1b\u202e\ufeff\n\t")), max_size=400),
    st.builds(lambda n, tail: "the " * n + tail, st.integers(0, 2000), st.text(max_size=40)),
    st.builds(lambda n: "remember that " + "x" * n + " is y", st.integers(0, 5000)),
)


@settings(max_examples=300, deadline=None)
@given(hostile_text)
def test_parser_and_key_never_crash(text):
    result = parse_statement(text)
    if result is not None:
        subject, value = result
        assert subject and value
        assert len(subject) + len(value) <= MAX_STATEMENT_CHARS
        key = normalize_subject(subject)
        assert key == normalize_subject(key)
    normalize_subject(text)
