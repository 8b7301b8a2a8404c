"""Tests of the delta-rule fact bank: writes, recall, overwrite, forget, heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hydralm.fact_bank import (
    FactBank,
    cosine_margin,
    delta_rule_write,
    delta_rule_write_loop,
    evaluate_recall,
    top1_accuracy,
)


def random_facts(num_facts: int, key_dim: int, value_dim: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(num_facts, key_dim, generator=generator)
    values = torch.randn(num_facts, value_dim, generator=generator)
    return keys, values


@pytest.mark.parametrize("num_facts", [1, 7, 64, 65, 200])
@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_chunked_write_matches_loop(num_facts, beta):
    keys, values = random_facts(num_facts, 32, 24, seed=num_facts)
    keys = F.normalize(keys.double(), dim=-1)
    values = values.double()
    start = torch.randn(32, 24, dtype=torch.float64)

    expected = delta_rule_write_loop(start, keys, values, beta=beta)
    actual = delta_rule_write(start, keys, values, beta=beta, chunk_size=16)

    assert torch.allclose(actual, expected, atol=1e-10, rtol=1e-10), (actual - expected).abs().max()


def test_chunked_write_matches_loop_with_repeated_keys():
    keys, values = random_facts(40, 16, 8)
    keys = F.normalize(keys.double(), dim=-1)
    keys[20:] = keys[:20]  # every key written twice inside one chunk
    values = values.double()

    expected = delta_rule_write_loop(torch.zeros(16, 8, dtype=torch.float64), keys, values)
    actual = delta_rule_write(torch.zeros(16, 8, dtype=torch.float64), keys, values, chunk_size=64)

    assert torch.allclose(actual, expected, atol=1e-9)


def test_round_trip_recalls_written_values():
    keys, values = random_facts(32, 128, 64)
    bank = FactBank(128, 64)
    bank.memorize(keys, values)

    report = evaluate_recall(bank, keys, values)

    assert report.top1 == 1.0
    assert report.mean_cosine > 0.9
    assert report.min_margin > 0


def test_last_written_fact_is_exact():
    keys, values = random_facts(10, 64, 16)
    bank = FactBank(64, 16)
    bank.memorize(keys, values)

    assert torch.allclose(bank.recall(keys[-1]), values[-1], atol=1e-5)


def test_overwrite_replaces_old_value():
    keys, old_values = random_facts(100, 256, 128, seed=1)
    _, new_values = random_facts(100, 256, 128, seed=2)
    bank = FactBank(256, 128)
    bank.memorize(keys, old_values)
    bank.memorize(keys, new_values)

    margin = cosine_margin(bank.recall(keys), new_values, old_values)

    assert margin.mean() > 0.6
    assert margin.min() > 0.1
    assert top1_accuracy(bank.recall(keys), torch.cat([new_values, old_values]), torch.arange(100)) == 1.0


def test_forget_zeroes_recall_and_keeps_others():
    keys, values = random_facts(50, 256, 64, seed=3)
    bank = FactBank(256, 64)
    bank.memorize(keys, values)
    before = bank.recall(keys[10:]).clone()

    bank.forget(keys[0])
    assert bank.recall(keys[0]).norm() < 1e-4

    # A batch forget is sequential: each later zero write disturbs the
    # earlier forgotten keys a little, by their overlap with the later key.
    bank.forget(keys[1:10])
    forgotten = bank.recall(keys[:10]).norm(dim=-1) / values[:10].norm(dim=-1)
    assert forgotten.max() < 0.4
    assert forgotten.mean() < 0.2
    kept = F.cosine_similarity(bank.recall(keys[10:]), before, dim=-1)
    assert kept.min() > 0.9


def test_writes_attach_no_autograd_state():
    keys, values = random_facts(8, 16, 16)
    keys.requires_grad_(True)
    values.requires_grad_(True)
    bank = FactBank(16, 16, num_heads=2)

    bank.memorize(keys, values)
    bank.forget(keys[:2])
    recalled = bank.recall(keys)

    assert not bank.state.requires_grad
    assert bank.state.grad_fn is None
    assert recalled.grad_fn is None
    assert keys.grad is None


def test_state_bytes_constant_in_number_of_writes():
    bank = FactBank(64, 32, num_heads=2)
    empty_bytes = bank.state_bytes()
    keys, values = random_facts(500, 64, 32)

    bank.memorize(keys[:10], values[:10])
    after_ten = bank.state_bytes()
    bank.memorize(keys, values)

    assert empty_bytes == after_ten == bank.state_bytes() == 2 * 64 * 32 * 4
    assert bank.num_writes == 510


def test_rotated_copies_recall_identically():
    # The delta rule is rotation-equivariant: storing rotated keys and values
    # gives a rotated state, so a head fed a rotated copy of the facts adds
    # no information.
    keys, values = random_facts(120, 64, 48, seed=4)
    rotate_keys, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64))
    rotate_values, _ = torch.linalg.qr(torch.randn(48, 48, dtype=torch.float64))
    plain = FactBank(64, 48, dtype=torch.float64)
    rotated = FactBank(64, 48, dtype=torch.float64)

    plain.memorize(keys.double(), values.double())
    rotated.memorize(keys.double() @ rotate_keys.T, values.double() @ rotate_values.T)

    expected = plain.recall(keys.double()) @ rotate_values.T
    actual = rotated.recall(keys.double() @ rotate_keys.T)
    assert torch.allclose(actual, expected, atol=1e-9)
    assert torch.allclose(rotated.state[0], rotate_keys @ plain.state[0] @ rotate_values.T, atol=1e-9)


def test_routed_heads_reduce_interference():
    keys, values = random_facts(400, 256, 256, seed=5)
    one_head = FactBank(256, 256, num_heads=1)
    four_heads = FactBank(256, 256, num_heads=4)
    one_head.memorize(keys, values)
    four_heads.memorize(keys, values)

    one = evaluate_recall(one_head, keys, values)
    four = evaluate_recall(four_heads, keys, values)

    assert four.mean_cosine > one.mean_cosine + 0.1, (one, four)
    assert four_heads.state_bytes() == 4 * one_head.state_bytes()
    assert set(four_heads.head_index(keys).tolist()) == {0, 1, 2, 3}


def test_reference_gate_thousand_facts_four_heads():
    keys, values = random_facts(1000, 1024, 1024, seed=0)
    _, new_values = random_facts(1000, 1024, 1024, seed=1)
    bank = FactBank(1024, 1024, num_heads=4)

    bank.memorize(keys, values)
    report = evaluate_recall(bank, keys, values)
    bank.memorize(keys, new_values)
    margin = cosine_margin(bank.recall(keys), new_values, values).mean().item()

    assert report.top1 >= 0.99
    assert margin >= 0.5
    assert bank.state_bytes() == 16 * 1024 * 1024


def test_save_load_round_trip(tmp_path):
    keys, values = random_facts(20, 32, 16)
    bank = FactBank(32, 16, num_heads=2, beta=0.9, seed=7)
    bank.memorize(keys, values)
    path = tmp_path / "bank.safetensors"

    bank.save(path)
    loaded = FactBank.load(path)

    assert torch.equal(loaded.state, bank.state)
    assert (loaded.num_heads, loaded.beta, loaded.seed, loaded.num_writes) == (2, 0.9, 7, 20)
    assert torch.equal(loaded.recall(keys), bank.recall(keys))


def test_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(foreign))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")

    with pytest.raises(ValueError, match="not a fact bank"):
        FactBank.load(foreign)
    with pytest.raises(ValueError, match="garbage.safetensors"):
        FactBank.load(garbage)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"key_dim": 0, "value_dim": 4}, "key_dim must be a positive integer"),
        ({"key_dim": 4, "value_dim": 4.5}, "value_dim must be a positive integer"),
        ({"key_dim": 4, "value_dim": 4, "num_heads": 0}, "num_heads"),
        ({"key_dim": 4, "value_dim": 4, "beta": 2.0}, r"beta must be in \(0, 2\)"),
        ({"key_dim": 4, "value_dim": 4, "beta": 0}, "beta"),
        ({"key_dim": 4, "value_dim": 4, "dtype": torch.int32}, "floating dtype"),
    ],
)
def test_constructor_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FactBank(**kwargs)


def test_bad_inputs_raise_value_error():
    bank = FactBank(8, 4)

    with pytest.raises(ValueError, match=r"shape \(3, 7\), expected \(N, 8\)"):
        bank.memorize(torch.randn(3, 7), torch.randn(3, 4))
    with pytest.raises(ValueError, match="3 rows but values has 2"):
        bank.memorize(torch.randn(3, 8), torch.randn(2, 4))
    with pytest.raises(ValueError, match="floating tensor"):
        bank.recall(torch.ones(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN or infinite"):
        bank.memorize(torch.full((1, 8), float("nan")), torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"rows \[1\] have zero norm"):
        bank.memorize(torch.stack([torch.randn(8), torch.zeros(8)]), torch.randn(2, 4))
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        bank.recall([0.0] * 8)
    assert bank.num_writes == 0
    assert torch.count_nonzero(bank.state) == 0


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="same V"):
        top1_accuracy(torch.randn(2, 3), torch.randn(4, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="targets has shape"):
        top1_accuracy(torch.randn(2, 3), torch.randn(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="same \\(N, V\\) shape"):
        cosine_margin(torch.randn(2, 3), torch.randn(2, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="at least 2 facts"):
        evaluate_recall(FactBank(3, 3), torch.randn(1, 3), torch.randn(1, 3))


def test_one_dimensional_key_returns_one_value():
    bank = FactBank(16, 8)
    key, value = torch.randn(16), torch.randn(8)
    bank.memorize(key, value)

    recalled = bank.recall(key)

    assert recalled.shape == (8,)
    assert torch.allclose(recalled, value, atol=1e-5)
