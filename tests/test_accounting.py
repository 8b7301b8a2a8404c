"""Tests of the analytic FLOP, state-byte and parameter formulas against real models."""

from __future__ import annotations

import pytest
import torch

from hydralm import HydraConfig, HydraLM
from hydralm.accounting import (
    compare_costs,
    deltanet_layer_flops,
    hydra_decode_flops,
    hydra_forward_flops,
    hydra_parameter_count,
    hydra_state_bytes,
    loglog_slope,
    swa_layer_flops,
    transformer_decode_flops,
    transformer_forward_flops,
    transformer_parameter_count,
    transformer_state_bytes,
)
from hydralm.baselines import TransformerConfig, TransformerLM
from hydralm.state import state_bytes as core_state_bytes

SMALL = HydraConfig(
    vocab_size=128, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=64, sliding_window=16, num_sink_tokens=2, chunk_size=16,
)
UNTIED_BIASED = HydraConfig(
    vocab_size=96, hidden_size=48, num_hidden_layers=3, num_attention_heads=3, num_key_value_heads=1,
    intermediate_size=80, layer_types=["swa", "deltanet", "swa"], attention_bias=True,
    tie_word_embeddings=False, conv_size=3,
)
LENGTHS = [2**k for k in range(10, 23)]  # 13 lengths, 2^10 .. 2^22


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize("config", [SMALL, UNTIED_BIASED], ids=["small", "untied_biased"])
def test_parameter_counts_match_models(config):
    baseline = TransformerConfig.matched_to(config)

    assert hydra_parameter_count(config) == count_parameters(HydraLM(config))
    assert transformer_parameter_count(baseline) == count_parameters(TransformerLM(baseline))


@pytest.mark.parametrize("config", [SMALL, UNTIED_BIASED], ids=["small", "untied_biased"])
def test_hydra_state_bytes_match_real_state(config):
    torch.manual_seed(0)
    model = HydraLM(config)
    state = model.init_state(2)
    expected = hydra_state_bytes(config, 0, batch_size=2)
    assert state.nbytes() == expected

    for length in (5, 40, 300):
        state = model(torch.randint(0, config.vocab_size, (2, length)), state=state).state
        assert state.nbytes() == expected, f"after {int(state.position[0])} tokens"
    assert hydra_state_bytes(config, 10**9, batch_size=2) == expected
    assert core_state_bytes(config, batch_size=2) == expected


def test_hydra_state_bytes_with_half_precision_caches():
    model = HydraLM(SMALL)

    state = model.init_state(3, dtype=torch.bfloat16)

    assert state.nbytes() == hydra_state_bytes(SMALL, batch_size=3, dtype=torch.bfloat16)
    assert hydra_state_bytes(SMALL, dtype=torch.bfloat16) < hydra_state_bytes(SMALL)


def test_transformer_state_bytes_match_real_cache():
    torch.manual_seed(0)
    model = TransformerLM.matched_to(SMALL)
    state = model.init_state(2)

    for length in (7, 33, 100):
        state = model(torch.randint(0, SMALL.vocab_size, (2, length)), state=state).state
        assert state.nbytes() == transformer_state_bytes(model.config, state.length, batch_size=2)
    assert transformer_state_bytes(model.config, 140) == 140 * transformer_state_bytes(model.config, 1) - 139 * 8


def test_swa_attention_term_counts_visible_keys():
    for length in (1, 10, 18, 19, 50):
        expected = sum(min(t + 1, SMALL.num_sink_tokens + SMALL.sliding_window) for t in range(length))
        per_key = 4 * SMALL.num_attention_heads * SMALL.head_dim

        assert swa_layer_flops(SMALL, length)["attention"] == per_key * expected


def test_deltanet_cost_is_linear_past_one_chunk():
    one = sum(deltanet_layer_flops(SMALL, 1024).values())
    two = sum(deltanet_layer_flops(SMALL, 2048).values())

    assert two == 2 * one


def test_decode_cost_flat_for_hydra_linear_for_dense():
    baseline = TransformerConfig.matched_to(SMALL)
    span = SMALL.num_sink_tokens + SMALL.sliding_window

    assert hydra_decode_flops(SMALL, span) == hydra_decode_flops(SMALL, 10**7)
    assert hydra_decode_flops(SMALL, 0) < hydra_decode_flops(SMALL, span)
    growth = transformer_decode_flops(baseline, 2000) - transformer_decode_flops(baseline, 1000)
    assert growth == 1000 * 4 * baseline.num_attention_heads * baseline.head_dim * baseline.num_hidden_layers
    # The first decoded token costs what a one-token forward pass costs.
    assert transformer_decode_flops(baseline, 0) == transformer_forward_flops(baseline, 1)


def test_forward_flop_slopes():
    config = HydraConfig()
    baseline = TransformerConfig.matched_to(config)

    hydra_slope = loglog_slope(LENGTHS, [hydra_forward_flops(config, n) for n in LENGTHS])
    dense_slope = loglog_slope(LENGTHS, [transformer_forward_flops(baseline, n) for n in LENGTHS])

    assert 0.95 <= hydra_slope <= 1.05, hydra_slope
    assert dense_slope > 1.5, dense_slope


def test_long_context_savings():
    config = HydraConfig()

    at_16k = compare_costs(config, 16_384)
    at_128k = compare_costs(config, 131_072)
    at_1m = compare_costs(config, 1_048_576)

    assert at_128k.flop_savings >= 0.9
    assert at_128k.memory_savings >= 0.9
    assert at_1m.flop_savings > at_16k.flop_savings
    assert at_1m.memory_savings > at_16k.memory_savings
    assert at_1m.hydra_state_bytes == at_16k.hydra_state_bytes
    assert at_1m.to_dict()["seq_len"] == 1_048_576


def test_short_context_dense_is_cheaper_in_state():
    # Below the SWA window the dense cache is smaller than HydraLM's fixed
    # buffers; the formulas must show that, not hide it.
    config = HydraConfig()

    assert compare_costs(config, 16).memory_savings < 0


def test_loglog_slope_of_exact_powers():
    assert loglog_slope([1, 2, 4, 8], [3, 6, 12, 24]) == pytest.approx(1.0)
    assert loglog_slope([1, 2, 4, 8], [1, 4, 16, 64]) == pytest.approx(2.0)


def test_bad_arguments_raise_value_error():
    baseline = TransformerConfig.matched_to(SMALL)

    with pytest.raises(ValueError, match="seq_len must be a positive integer, got 0"):
        hydra_forward_flops(SMALL, 0)
    with pytest.raises(ValueError, match="expected a HydraConfig, got TransformerConfig"):
        hydra_forward_flops(baseline, 10)
    with pytest.raises(ValueError, match="expected a TransformerConfig, got HydraConfig"):
        transformer_forward_flops(SMALL, 10)
    with pytest.raises(ValueError, match=r"seq_len must be an integer >= 0, got -1"):
        transformer_state_bytes(baseline, -1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        hydra_state_bytes(SMALL, batch_size=0)
    with pytest.raises(ValueError, match="dtype must be a torch.dtype"):
        hydra_state_bytes(SMALL, dtype="float32")
    with pytest.raises(ValueError, match="context_len must be an integer >= 0, got -3"):
        hydra_decode_flops(SMALL, -3)
    with pytest.raises(ValueError, match="context_len must be an integer >= 0"):
        transformer_decode_flops(baseline, 1.5)
    with pytest.raises(ValueError, match="at least 2 points"):
        loglog_slope([1], [1])
    with pytest.raises(ValueError, match="positive lengths and costs"):
        loglog_slope([1, 2], [0, 1])
    with pytest.raises(ValueError, match="two distinct lengths"):
        loglog_slope([4, 4], [1, 2])
