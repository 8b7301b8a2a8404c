"""Recall with the default state (lexical and MiniLM keys) on a slice of the evaluation facts."""

from __future__ import annotations

import json

import pytest
import torch

from app import paths
from app.memory import Memory, MemoryConfig

FACTS_FILE = paths.eval_dir() / "facts_dev.jsonl"
pytestmark = pytest.mark.skipif(not FACTS_FILE.is_file(), reason=f"{FACTS_FILE} not found")


def eval_rows(limit: int) -> list[dict]:
    with open(FACTS_FILE, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return [r for r in rows if r["kind"] == "fact"][:limit]


def test_paraphrased_questions_recall_taught_facts(tmp_path):
    rows = eval_rows(60)
    with Memory.open(tmp_path / "mem") as memory:
        for row in rows:
            memory.teach(row["subject"], row["value"])
        questions = [(q, row["value"]) for row in rows for q in row["questions"]]
        hits = sum(memory.recall(q).items[0].value == value for q, value in questions)
        known = sum(memory.recall(q).known for q, _ in questions)
    assert hits / len(questions) >= 0.95, f"top-1 {hits}/{len(questions)}"
    assert known / len(questions) >= 0.95, f"known {known}/{len(questions)}"


def test_semantic_key_separates_attributes_of_one_person(tmp_path):
    with Memory.open(tmp_path / "mem") as memory:
        memory.teach("phone number of Uma Tanaka", "555-0199")
        memory.teach("allergy of Uma Tanaka", "peanuts")
        memory.teach("favourite colour of Uma Tanaka", "teal")
        # "call" shares no word with "phone number": only the MiniLM buckets link them.
        assert memory.recall("How do I call Uma Tanaka?").items[0].value == "555-0199"
        assert memory.recall("What is Uma Tanaka allergic to?").items[0].value == "peanuts"
        assert memory.recall("What colour does Uma Tanaka like best?").items[0].value == "teal"
        memory.forget("allergy of Uma Tanaka")
        values = [item.value for item in memory.recall("What is Uma Tanaka allergic to?").items]
        assert "peanuts" not in values


def test_replay_with_semantic_keys_is_exact(tmp_path):
    folder = tmp_path / "mem"
    with Memory.open(folder) as memory:
        for row in eval_rows(15):
            memory.teach(row["subject"], row["value"])
        memory.forget(eval_rows(15)[3]["subject"])
        expected = {k: v.clone() for k, v in memory.state_tensors().items()}
        replayed = memory.replayed_state_tensors()
    for name, tensor in replayed.items():
        assert torch.equal(tensor, expected[name]), name


def test_default_state_is_at_most_64_mib(tmp_path):
    with Memory.open(tmp_path / "mem") as memory:
        assert memory.stats().state_bytes <= 64 * 2**20
    assert MemoryConfig().semantic


def test_sketch_cosine_reads_every_sign_bit():
    from app.memory.semantic import LSH_BITS, LSH_TABLES, bucket_bits, sketch_cosine

    buckets = [table * (1 << LSH_BITS) + (37 * table) % (1 << LSH_BITS) for table in range(LSH_TABLES)]
    flipped = [table * (1 << LSH_BITS) + ((1 << LSH_BITS) - 1 - b % (1 << LSH_BITS)) for table, b in enumerate(buckets)]
    one_bit = [buckets[0] ^ 1] + buckets[1:]
    assert bucket_bits(buckets).shape == (LSH_TABLES * LSH_BITS,)
    assert sketch_cosine(buckets, buckets) == pytest.approx(1.0)
    assert sketch_cosine(buckets, flipped) == pytest.approx(-1.0)
    assert 0.99 < sketch_cosine(buckets, one_bit) < 1.0
    with pytest.raises(ValueError, match="expected 64 bucket ids"):
        bucket_bits(buckets[:3])


def test_rerank_orders_but_keeps_state_scores(tmp_path):
    folder = tmp_path / "mem"
    with Memory.open(folder) as memory:
        for row in eval_rows(40):
            memory.teach(row["subject"], row["value"])
        memory.teach("phone number of Uma Tanaka", "555-0199")
        memory.teach("allergy of Uma Tanaka", "peanuts")
        memory.teach("favourite colour of Uma Tanaka", "teal")
        reranked = memory.recall("How do I call Uma Tanaka?", k=5)
    plain_config = MemoryConfig(rerank_weight=0.0)
    with Memory.open(folder, config=plain_config) as memory:
        plain = memory.recall("How do I call Uma Tanaka?", k=5)
    assert reranked.items[0].value == "555-0199"
    plain_scores = {item.item_id: item.score for item in plain.items}
    for item in reranked.items:
        if item.item_id in plain_scores:
            assert item.score == pytest.approx(plain_scores[item.item_id])
    assert reranked.known == plain.known


def test_assistant_shares_the_engine_encoder():
    from app.assistant.selection import SentenceEncoder
    from app.memory.semantic import get_encoder

    assert SentenceEncoder.from_installed() is get_encoder()
