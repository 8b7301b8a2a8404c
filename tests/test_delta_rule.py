"""The chunkwise gated delta rule against the recurrent reference loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hydralm.ops.delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule

RELATIVE_TOLERANCE = 1e-5


def make_inputs(T: int, gate: str, seed: int = 0, B: int = 2, H: int = 3, K: int = 16, V: int = 8):
    generator = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, H, T, K, generator=generator), dim=-1)
    k = F.normalize(torch.randn(B, H, T, K, generator=generator), dim=-1)
    v = torch.randn(B, H, T, V, generator=generator)
    beta = torch.rand(B, H, T, generator=generator)
    if gate == "random":
        g = -torch.rand(B, H, T, generator=generator)
    elif gate == "near_zero":
        # alpha = exp(-60) ~ 1e-26: the state is wiped at every token.
        g = torch.full((B, H, T), -60.0)
    elif gate == "one":
        g = torch.zeros(B, H, T)
    else:
        raise AssertionError(gate)
    initial_state = torch.randn(B, H, K, V, generator=generator)
    return q, k, v, beta, g, initial_state


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("gate", ["random", "near_zero", "one"])
@pytest.mark.parametrize("T", [1, 15, 63, 64, 65, 300])
def test_chunk_matches_recurrent(T, gate):
    q, k, v, beta, g, initial_state = make_inputs(T, gate)
    o_ref, state_ref = recurrent_gated_delta_rule(q, k, v, beta, g, initial_state)
    o, state = chunk_gated_delta_rule(q, k, v, beta, g, initial_state, chunk_size=64)

    assert torch.isfinite(o).all()
    assert torch.isfinite(state).all()
    assert relative_error(o, o_ref) < RELATIVE_TOLERANCE
    assert relative_error(state, state_ref) < RELATIVE_TOLERANCE


@pytest.mark.parametrize("gate", ["random", "near_zero", "one"])
@pytest.mark.parametrize("T", [15, 65])
def test_chunk_gradients_match_recurrent(T, gate):
    inputs = make_inputs(T, gate, seed=1)
    ref_inputs = [x.clone().requires_grad_() for x in inputs]
    chunk_inputs = [x.clone().requires_grad_() for x in inputs]
    generator = torch.Generator().manual_seed(2)
    o_weight = torch.randn(inputs[2].shape, generator=generator)
    s_weight = torch.randn(inputs[5].shape, generator=generator)

    o_ref, state_ref = recurrent_gated_delta_rule(*ref_inputs)
    ((o_ref * o_weight).sum() + (state_ref * s_weight).sum()).backward()
    o, state = chunk_gated_delta_rule(*chunk_inputs, chunk_size=16)
    ((o * o_weight).sum() + (state * s_weight).sum()).backward()

    names = ["q", "k", "v", "beta", "g", "initial_state"]
    for name, ref, fast in zip(names, ref_inputs, chunk_inputs):
        assert torch.isfinite(fast.grad).all(), name
        assert relative_error(fast.grad, ref.grad) < 1e-4, name


def test_chunk_without_initial_state_starts_from_zero():
    q, k, v, beta, g, _ = make_inputs(40, "random")
    zeros = torch.zeros(q.shape[0], q.shape[1], q.shape[-1], v.shape[-1])
    o_none, state_none = chunk_gated_delta_rule(q, k, v, beta, g, None, chunk_size=16)
    o_zero, state_zero = chunk_gated_delta_rule(q, k, v, beta, g, zeros, chunk_size=16)
    assert torch.equal(o_none, o_zero)
    assert torch.equal(state_none, state_zero)


def test_chunk_splits_thread_the_state():
    q, k, v, beta, g, initial_state = make_inputs(100, "random")
    o_full, state_full = chunk_gated_delta_rule(q, k, v, beta, g, initial_state, chunk_size=32)
    o_a, state_a = chunk_gated_delta_rule(
        q[:, :, :37], k[:, :, :37], v[:, :, :37], beta[:, :, :37], g[:, :, :37], initial_state, chunk_size=32
    )
    o_b, state_b = chunk_gated_delta_rule(
        q[:, :, 37:], k[:, :, 37:], v[:, :, 37:], beta[:, :, 37:], g[:, :, 37:], state_a, chunk_size=32
    )
    assert relative_error(torch.cat([o_a, o_b], dim=2), o_full) < RELATIVE_TOLERANCE
    assert relative_error(state_b, state_full) < RELATIVE_TOLERANCE


def test_zero_beta_and_unit_gate_leave_state_unchanged():
    q, k, v, _, _, initial_state = make_inputs(20, "one")
    beta = torch.zeros(q.shape[:3])
    g = torch.zeros(q.shape[:3])
    for kernel in (recurrent_gated_delta_rule, chunk_gated_delta_rule):
        _, state = kernel(q, k, v, beta, g, initial_state)
        assert torch.equal(state, initial_state), kernel.__name__


def test_single_write_recalls_value():
    # With an empty state, beta = 1 and a unit key, the state becomes k v^T,
    # so reading with q = k returns v (times the query scale).
    K, V = 8, 4
    k = F.normalize(torch.randn(1, 1, 1, K), dim=-1)
    v = torch.randn(1, 1, 1, V)
    _, state = recurrent_gated_delta_rule(k, k, v, torch.ones(1, 1, 1), torch.zeros(1, 1, 1))
    read = torch.einsum("bhkv,bhk->bhv", state, k[:, :, 0])
    torch.testing.assert_close(read, v[:, :, 0])


@pytest.mark.parametrize("kernel", [recurrent_gated_delta_rule, chunk_gated_delta_rule])
def test_mismatched_shapes_raise(kernel):
    q, k, v, beta, g, initial_state = make_inputs(5, "random")
    with pytest.raises(ValueError, match="v must be"):
        kernel(q, k, v[:, :, :4], beta, g)
    with pytest.raises(ValueError, match="beta must be"):
        kernel(q, k, v, beta[:, :, :4], g)
    with pytest.raises(ValueError, match="g must be"):
        kernel(q, k, v, beta, g[:, :1])
    with pytest.raises(ValueError, match="initial_state must be"):
        kernel(q, k, v, beta, g, initial_state[:, :, :3])
    with pytest.raises(ValueError, match="q and k"):
        kernel(q, k[:, :2], v, beta, g)
