"""Packed weights: same names, values and outputs, one joined product per projection group."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hydralm.layers.packing import JoinedLinear, joined_outputs, make_column_major, packed_linear
from tests.test_streaming import make_model, run_by_steps, tiny_config

TOLERANCE = 1e-5


def packed_copy(model):
    packed = copy.deepcopy(model)
    packed.pack_weights()
    return packed


def count_calls(module: nn.Module) -> list[int]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    module.register_forward_hook(hook)
    return calls


def test_packing_keeps_parameters():
    model = make_model(tiny_config())
    packed = packed_copy(model)
    before, after = model.state_dict(), packed.state_dict()
    assert list(before) == list(after)
    for name, tensor in before.items():
        assert after[name].shape == tensor.shape, name
        assert torch.equal(after[name], tensor), name
    attention = packed.model.layers[1].mixer
    assert not attention.q_proj.weight.is_contiguous()
    assert attention.q_proj.weight.stride() == (1, attention.joined_qkv.weight.stride(1))
    assert packed.model.embed_tokens.weight.stride() == (1, packed.config.vocab_size)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_packed_model_logits_match(batch_size):
    torch.manual_seed(1)
    model = make_model(tiny_config())
    packed = packed_copy(model)
    input_ids = torch.randint(0, 101, (batch_size, 21))
    with torch.no_grad():
        torch.testing.assert_close(packed(input_ids).logits, model(input_ids).logits, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(run_by_steps(packed, input_ids), run_by_steps(model, input_ids), atol=TOLERANCE, rtol=0)


def test_packed_projections_run_joined():
    packed = packed_copy(make_model(tiny_config()))
    attention, mlp = packed.model.layers[1].mixer, packed.model.layers[1].mlp
    q_calls, gate_calls = count_calls(attention.q_proj), count_calls(mlp.gate_proj)
    input_ids = torch.randint(0, 101, (1, 5))
    with torch.no_grad():
        packed(input_ids)
    assert q_calls[0] == 0
    assert gate_calls[0] == 0

    packed(input_ids)  # gradients enabled: the separate projections run
    assert q_calls[0] == 1
    assert gate_calls[0] == 1


def test_packed_model_training():
    torch.manual_seed(2)
    model = make_model(tiny_config())
    packed = packed_copy(model)
    input_ids = torch.randint(0, 101, (2, 12))
    for net in (model, packed):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
        net(input_ids, labels=input_ids).loss.backward()
        assert net.model.layers[1].mixer.q_proj.weight.grad is not None
        optimizer.step()
    assert packed.model.layers[1].mixer.joined_qkv.holds_weights()
    with torch.no_grad():
        torch.testing.assert_close(packed(input_ids).logits, model(input_ids).logits, atol=TOLERANCE, rtol=0)


def test_packed_load_state_dict():
    packed = packed_copy(make_model(tiny_config(), seed=0))
    other = make_model(tiny_config(), seed=5)
    packed.load_state_dict(other.state_dict())
    assert packed.model.layers[1].mlp.joined_gate_up.holds_weights()
    input_ids = torch.randint(0, 101, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(packed(input_ids).logits, other(input_ids).logits, atol=TOLERANCE, rtol=0)


def test_packed_model_dtype_change_unpacks():
    packed = packed_copy(make_model(tiny_config(), seed=0)).to(torch.float64)
    joined = packed.model.layers[1].mixer.joined_qkv
    # New weights land in the moved parameters only; a stale joined copy
    # would still hold the old ones.
    other = make_model(tiny_config(), seed=5).to(torch.float64)
    packed.load_state_dict(other.state_dict())
    input_ids = torch.randint(0, 101, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(packed(input_ids).logits, other(input_ids).logits, atol=TOLERANCE, rtol=0)
    assert not joined.holds_weights()
    assert joined.weight is None  # the stale float32 copy is released


def test_joined_linear_rejects_mismatch():
    with pytest.raises(ValueError, match="in_features"):
        JoinedLinear([nn.Linear(4, 3), nn.Linear(5, 3)])
    with pytest.raises(ValueError, match="bias"):
        JoinedLinear([nn.Linear(4, 3), nn.Linear(4, 3, bias=False)])


def test_joined_linear_with_biases():
    torch.manual_seed(3)
    linears = [nn.Linear(6, 4), nn.Linear(6, 2), nn.Linear(6, 3)]
    x = torch.randn(2, 6)
    expected = [linear(x).detach() for linear in linears]
    joined = JoinedLinear(linears)
    assert joined.holds_weights()
    with torch.no_grad():
        outputs = joined_outputs(joined, linears, x)
        grouped = joined_outputs(joined, linears, x, groups=(2, 1))
    for output, reference in zip(outputs, expected):
        torch.testing.assert_close(output, reference)
    torch.testing.assert_close(grouped[0], torch.cat(expected[:2], dim=-1))
    torch.testing.assert_close(grouped[1], expected[2])


def test_joined_outputs_groups_unpacked():
    linears = [nn.Linear(6, 4), nn.Linear(6, 2), nn.Linear(6, 3)]
    x = torch.randn(2, 6)
    grouped = joined_outputs(None, linears, x, groups=(1, 2))
    assert [tuple(output.shape) for output in grouped] == [(2, 4), (2, 5)]
    with pytest.raises(ValueError, match="add up"):
        joined_outputs(None, linears, x, groups=(1, 1))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(6,), (1, 6), (1, 1, 6), (4, 6)])
def test_packed_linear_matches_f_linear(threads, shape):
    torch.manual_seed(4)
    torch.set_num_threads(threads)
    linear = nn.Linear(6, 5)
    make_column_major(linear)
    x = torch.randn(shape)
    output = packed_linear(x, linear.weight, linear.bias)
    assert output.shape == shape[:-1] + (5,)
    torch.testing.assert_close(output, F.linear(x, linear.weight, linear.bias), atol=1e-6, rtol=0)


def test_packed_linear_splits_one_row(monkeypatch):
    torch.set_num_threads(2)
    linear = nn.Linear(8, 3, bias=False)
    calls = []

    def recording_bmm(a, b):
        calls.append((a.shape, b.shape))
        return torch.matmul(a, b)

    monkeypatch.setattr(torch, "bmm", recording_bmm)
    packed_linear(torch.randn(1, 8), linear.weight)  # row-major weight: plain product
    assert calls == []
    make_column_major(linear)
    packed_linear(torch.randn(1, 8), linear.weight)
    assert calls == [((2, 1, 4), (2, 4, 3))]
    packed_linear(torch.randn(2, 8), linear.weight)  # two rows: plain product
    assert len(calls) == 1


def test_packed_state_dict_safetensors_roundtrip(tmp_path):
    from safetensors.torch import load_file, save_file

    packed = packed_copy(make_model(tiny_config()))
    path = tmp_path / "weights.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in packed.state_dict().items()}, str(path))
    fresh = make_model(tiny_config(), seed=7)
    fresh.load_state_dict(load_file(str(path)))
    input_ids = torch.randint(0, 101, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids).logits, packed(input_ids).logits, atol=TOLERANCE, rtol=0)
