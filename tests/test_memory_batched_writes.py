"""Batched passage writes: the same state as one write at a time, streamed, replayed exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.ingest.extractors import ExtractionError
from app.memory import Memory, MemoryConfig
from app.memory.codes import PASSAGE_SALT, item_codes
from app.memory.engine import PASSAGE_BATCH
from app.memory.features import PASSAGE_WEIGHTS
from app.memory.partition import DeltaRulePartition

SMALL = MemoryConfig(
    fact_key_dim=1 << 12, fact_value_dim=64, passage_key_dim=1 << 14, passage_value_dim=128, semantic=False
)
WORDS = "harbour engine mooring fee ledger invoice anchor sail rope tide chart compass beacon keel mast".split()


class Passage:
    def __init__(self, text: str, start: int):
        self.text = text
        self.start = start
        self.end = start + len(text)


def passage_texts(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=12)) + f" item{i}" for i in range(count)]


def test_batched_write_matches_one_at_a_time():
    texts = passage_texts(40)
    one_by_one = DeltaRulePartition(1 << 12, 64, PASSAGE_WEIGHTS)
    batched = DeltaRulePartition(1 << 12, 64, PASSAGE_WEIGHTS)
    features = [one_by_one.features(text) for text in texts]
    codes = item_codes(list(range(1, 41)), 64, PASSAGE_SALT)

    # The batch weights every key with the IDF after counting the whole batch.
    for feature in features:
        one_by_one.add_key(feature)
    for feature, code in zip(features, codes):
        one_by_one.write(one_by_one.key(feature), code, None)
    batched.add_keys_and_write(features, codes)

    assert torch.equal(batched.df, one_by_one.df)
    assert int(batched.live_keys) == int(one_by_one.live_keys) == 40
    assert torch.allclose(batched.matrix, one_by_one.matrix, atol=1e-6)


def test_batched_write_rejects_bad_shapes():
    partition = DeltaRulePartition(1 << 10, 16, PASSAGE_WEIGHTS)
    features = [partition.features("anchor chart")]
    with pytest.raises(ValueError, match="values has shape"):
        partition.add_keys_and_write(features, torch.ones(2, 16))
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0))
    with pytest.raises(ValueError, match="at least one key feature"):
        partition.add_keys_and_write([empty], torch.ones(1, 16))


def test_document_larger_than_a_batch_replays_exactly(tmp_path):
    count = 2 * PASSAGE_BATCH + 17
    texts = passage_texts(count)
    with Memory.open(tmp_path / "mem", config=SMALL) as memory:
        passages = (Passage(text, 100 * i) for i, text in enumerate(texts))
        assert memory.add_document("log/book.txt", "a" * 64, 1, 1.0, passages) == count
        assert memory.stats().passages == count
        # A new version replaces every passage of the old one.
        assert memory.add_document("log/book.txt", "b" * 64, 1, 2.0, [Passage(texts[5], 0)]) == 1
        assert memory.stats().passages == 1
        recall = memory.recall(texts[5])
        assert recall.items[0].origin == "log/book.txt:0"
        expected = {name: tensor.clone() for name, tensor in memory.state_tensors().items()}
        replayed = memory.replayed_state_tensors()
    for name, tensor in replayed.items():
        assert torch.equal(tensor, expected[name]), name


def test_failed_stream_writes_nothing(tmp_path):
    texts = passage_texts(PASSAGE_BATCH + 10)

    def broken_stream():
        for i, text in enumerate(texts):
            yield Passage(text, 100 * i)
        raise ExtractionError("unreadable: input/output error")

    with Memory.open(tmp_path / "mem", config=SMALL) as memory:
        before = {name: tensor.clone() for name, tensor in memory.state_tensors().items()}
        with pytest.raises(ExtractionError, match="input/output error"):
            memory.add_document("log/broken.txt", "c" * 64, 1, 1.0, broken_stream())
        stats = memory.stats()
        assert (stats.passages, stats.writes, stats.documents) == (0, 0, 0)
        for name, tensor in memory.state_tensors().items():
            assert torch.equal(tensor, before[name]), name
