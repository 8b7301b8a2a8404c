"""Tests of the MQAR generator, trainer and evaluator."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch

from hydralm.mqar import (
    IGNORE_INDEX,
    PAD_TOKEN_ID,
    MQARConfig,
    evaluate_mqar,
    generate_mqar,
    mqar_accuracy,
    train_mqar,
)

SETTINGS = [
    MQARConfig(vocab_size=64, seq_len=32, num_kv_pairs=2, num_queries=1),
    MQARConfig(vocab_size=8192, seq_len=64, num_kv_pairs=8),
    MQARConfig(vocab_size=20, seq_len=40, num_kv_pairs=9, num_queries=4, power_a=1.0),
]


@pytest.mark.parametrize("config", SETTINGS)
def test_generator_properties(config):
    batch = generate_mqar(config, 300, seed=3)
    B, T, P, Q = 300, config.seq_len, config.num_kv_pairs, config.num_queries
    half = config.vocab_size // 2

    assert batch.input_ids.shape == batch.labels.shape == (B, T)
    assert batch.input_ids.dtype == batch.labels.dtype == torch.long

    # Keys from the lower half (never the pad), values from the upper half.
    assert batch.keys.min() >= 1
    assert batch.keys.max() < half
    assert batch.values.min() >= half
    assert batch.values.max() < config.vocab_size
    assert torch.equal(batch.input_ids[:, 0 : 2 * P : 2], batch.keys)
    assert torch.equal(batch.input_ids[:, 1 : 2 * P : 2], batch.values)

    for row in range(B):
        keys = batch.keys[row].tolist()
        values = batch.values[row].tolist()
        assert len(set(keys)) == P, f"row {row} repeats a key: {keys}"
        assert len(set(values)) == P, f"row {row} repeats a value: {values}"

        # Queries: after all pairs, distinct stored keys, labelled with their values.
        query_region = batch.input_ids[row, 2 * P :]
        query_positions = (query_region != PAD_TOKEN_ID).nonzero().flatten() + 2 * P
        asked = batch.input_ids[row, query_positions].tolist()
        assert len(asked) == Q
        assert len(set(asked)) == Q
        stored = dict(zip(keys, values))
        assert all(key in stored for key in asked)
        assert all((position - 2 * P) % 2 == 0 for position in query_positions.tolist())

        answered = (batch.labels[row] != IGNORE_INDEX).nonzero().flatten()
        assert answered.tolist() == query_positions.tolist()
        assert batch.labels[row, answered].tolist() == [stored[key] for key in asked]


def test_pad_is_never_a_key():
    batch = generate_mqar(MQARConfig(vocab_size=8, seq_len=12, num_kv_pairs=3), 500)

    assert not (batch.keys == PAD_TOKEN_ID).any()
    assert not (batch.labels[batch.input_ids == PAD_TOKEN_ID] != IGNORE_INDEX).any()


def test_same_seed_same_batch():
    config = MQARConfig(vocab_size=128, seq_len=48, num_kv_pairs=6)

    first = generate_mqar(config, 20, seed=5)
    again = generate_mqar(config, 20, seed=5)
    other = generate_mqar(config, 20, seed=6)

    assert torch.equal(first.input_ids, again.input_ids)
    assert torch.equal(first.labels, again.labels)
    assert not torch.equal(first.input_ids, other.input_ids)


def test_small_power_a_puts_queries_near_pairs():
    near = generate_mqar(MQARConfig(vocab_size=64, seq_len=64, num_kv_pairs=2, num_queries=1, power_a=0.01), 2000)
    uniform = generate_mqar(MQARConfig(vocab_size=64, seq_len=64, num_kv_pairs=2, num_queries=1, power_a=1.0), 2000)

    def mean_query_offset(batch):
        return (batch.labels != IGNORE_INDEX).float().argmax(dim=1).float().mean().item()

    assert mean_query_offset(near) < mean_query_offset(uniform) - 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vocab_size": 0}, "vocab_size must be a positive integer"),
        ({"seq_len": 2.5}, "seq_len must be a positive integer"),
        ({"num_kv_pairs": 3, "num_queries": 4}, r"num_queries must be an integer in \[1, num_kv_pairs=3\]"),
        ({"num_queries": 0}, "num_queries"),
        ({"power_a": 0.0}, r"power_a must be in \(0, 1\]"),
        ({"vocab_size": 8, "num_kv_pairs": 4}, "use vocab_size >= 10"),
        ({"seq_len": 8, "num_kv_pairs": 3}, "use seq_len >= 12"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MQARConfig(**kwargs)


def test_bad_arguments_raise_value_error():
    config = MQARConfig()
    model = torch.nn.Linear(1, 1)

    with pytest.raises(ValueError, match="num_examples must be a positive integer"):
        generate_mqar(config, 0)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        train_mqar(model, config, steps=0, batch_size=4)
    with pytest.raises(ValueError, match="lr must be positive"):
        train_mqar(model, config, steps=1, batch_size=4, lr=0.0)
    with pytest.raises(ValueError, match=r"target_accuracy must be a number in \(0, 1\], got 1.5"):
        train_mqar(model, config, steps=1, batch_size=4, target_accuracy=1.5)
    with pytest.raises(ValueError, match="target_accuracy must be a number in \\(0, 1\\], got True"):
        train_mqar(model, config, steps=1, batch_size=4, target_accuracy=True)
    with pytest.raises(ValueError, match="check_every must be a positive integer, got 0"):
        train_mqar(model, config, steps=1, batch_size=4, target_accuracy=0.9, check_every=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        evaluate_mqar(model, config, batch_size=-1)
    with pytest.raises(ValueError, match="disagree on"):
        mqar_accuracy(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def test_accuracy_counts_only_answer_positions():
    labels = torch.full((1, 4), IGNORE_INDEX)
    labels[0, 2] = 3
    logits = torch.zeros(1, 4, 5)
    logits[0, :, 1] = 1.0  # wrong everywhere ...
    logits[0, 2, 3] = 2.0  # ... except at the labelled position

    assert mqar_accuracy(logits, labels) == (1, 1)


def tiny_models():
    from hydralm import HydraConfig, HydraLM
    from hydralm.baselines import TransformerLM

    config = HydraConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, layer_types=["deltanet", "swa"],
                         sliding_window=32, chunk_size=16)
    torch.manual_seed(0)
    return {"hydralm": HydraLM(config), "transformer": TransformerLM.matched_to(config)}


@pytest.mark.parametrize("name", ["hydralm", "transformer"])
def test_training_lowers_loss(name):
    model = tiny_models()[name]
    config = MQARConfig(vocab_size=64, seq_len=16, num_kv_pairs=2, num_queries=1)
    seen = []

    result = train_mqar(model, config, steps=60, batch_size=16, lr=3e-3,
                        progress=lambda step, steps, loss: seen.append(step))
    accuracy = evaluate_mqar(model, config, num_examples=64, batch_size=32)

    first = sum(result.losses[:10]) / 10
    last = sum(result.losses[-10:]) / 10
    assert last < first - 0.3, (first, last)
    assert result.steps == 60
    assert seen == list(range(1, 61))
    assert 0.0 <= accuracy <= 1.0
    assert not model.training


def test_cancel_stops_training():
    model = tiny_models()["transformer"]
    cancel = threading.Event()

    def stop_after_three(step, steps, loss):
        if step == 3:
            cancel.set()

    result = train_mqar(model, MQARConfig(vocab_size=64, seq_len=16), steps=50, batch_size=4,
                        progress=stop_after_three, cancel=cancel)

    assert result.cancelled
    assert result.steps == 3
    assert len(result.losses) == 3


class LookupOracle(torch.nn.Module):
    """Oracle that looks every MQAR query up in the input; one parameter gives AdamW something to step."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size)
        self.offset = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, labels=None):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.config.vocab_size) + self.offset  # (B, T, V)
        for t in range(2, T):
            for j in range(t - 1):
                match = (input_ids[:, j] == input_ids[:, t]) & (input_ids[:, t] != PAD_TOKEN_ID)  # (B,)
                logits[match, t, input_ids[match, j + 1]] = 1.0
        loss = (self.offset**2).sum() if labels is not None else None
        return SimpleNamespace(logits=logits, loss=loss)


def test_training_stops_at_target_accuracy():
    config = MQARConfig(vocab_size=32, seq_len=16, num_kv_pairs=2)

    result = train_mqar(LookupOracle(32), config, steps=50, batch_size=4, target_accuracy=0.99,
                        check_every=3, check_examples=16)

    assert result.reached_target
    assert result.steps == 3
    assert result.validation == [(3, 1.0)]


def test_training_runs_all_steps_below_target():
    model = tiny_models()["transformer"]

    result = train_mqar(model, MQARConfig(vocab_size=64, seq_len=16), steps=6, batch_size=4,
                        target_accuracy=1.0, check_every=2, check_examples=32)

    assert not result.reached_target
    assert result.steps == 6
    assert [step for step, _ in result.validation] == [2, 4, 6]
    assert all(accuracy < 1.0 for _, accuracy in result.validation)
    assert model.training is False


def test_model_vocabulary_too_small_is_rejected():
    model = tiny_models()["transformer"]

    with pytest.raises(ValueError, match="vocab_size=64 is smaller than the task's vocab_size=128"):
        train_mqar(model, MQARConfig(vocab_size=128, seq_len=16), steps=1, batch_size=2)
