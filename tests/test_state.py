"""HydraState: constant size, analytic byte count, safetensors round trip."""

from __future__ import annotations

import pytest
import torch

from hydralm import HydraConfig, HydraLM, HydraState, state_bytes


def tiny_config(**overrides) -> HydraConfig:
    fields = dict(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        sliding_window=32,
        num_sink_tokens=4,
        chunk_size=64,
    )
    fields.update(overrides)
    return HydraConfig(**fields)


@pytest.fixture(scope="module")
def model() -> HydraLM:
    torch.manual_seed(0)
    return HydraLM(tiny_config()).eval()


def stream(model: HydraLM, total: int, chunk: int, seed: int = 0) -> HydraState:
    generator = torch.Generator().manual_seed(seed)
    state = model.init_state(1)
    with torch.no_grad():
        for start in range(0, total, chunk):
            size = min(chunk, total - start)
            ids = torch.randint(0, model.config.vocab_size, (1, size), generator=generator)
            state = model(ids, state=state, logits_to_keep=1).state
    return state


def test_state_bytes_constant_from_1k_to_100k_tokens(model):
    after_1k = stream(model, 1_000, 1_000)
    after_100k = stream(model, 100_000, 4_096)

    assert int(after_1k.position) == 1_000
    assert int(after_100k.position) == 100_000
    assert after_1k.nbytes() == after_100k.nbytes()
    assert after_100k.nbytes() == state_bytes(model.config, batch_size=1, dtype=torch.float32)
    for name, tensor in after_100k.tensors().items():
        assert tensor.shape == after_1k.tensors()[name].shape, name
        assert torch.isfinite(tensor.float()).all(), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_analytic_state_bytes_match_tensors(model, batch_size, dtype):
    state = model.init_state(batch_size, dtype=dtype)
    assert state.nbytes() == state_bytes(model.config, batch_size=batch_size, dtype=dtype)


def test_state_bytes_formula_by_hand():
    config = tiny_config(layer_types=["deltanet", "swa", "deltanet", "swa"])
    B, H, H_kv, D = 2, 2, 1, 8
    deltanet = B * H * D * D * 4 + 3 * B * H * D * (config.conv_size - 1) * 2
    swa = 2 * B * H_kv * config.num_sink_tokens * D * 2 + 2 * B * H_kv * config.sliding_window * D * 2
    expected = 2 * deltanet + 2 * swa + B * 8
    assert state_bytes(config, batch_size=B, dtype=torch.bfloat16) == expected


def test_save_load_is_bit_exact(model, tmp_path):
    state = stream(model, 300, 100)
    path = tmp_path / "state.safetensors"
    state.save(path)
    loaded = HydraState.load(path, model.config)

    assert loaded.config_fingerprint == state.config_fingerprint
    assert loaded.layer_types == state.layer_types
    for name, tensor in state.tensors().items():
        assert loaded.tensors()[name].dtype == tensor.dtype, name
        assert torch.equal(loaded.tensors()[name], tensor), name
    ids = torch.randint(0, model.config.vocab_size, (1, 7))
    with torch.no_grad():
        assert torch.equal(model(ids, state=state).logits, model(ids, state=loaded).logits)


def test_load_rejects_other_config(model, tmp_path):
    path = tmp_path / "state.safetensors"
    model.init_state(1).save(path)
    other = tiny_config(sliding_window=16)
    with pytest.raises(ValueError, match="config fingerprint"):
        HydraState.load(path, other)


def test_load_rejects_missing_and_corrupt_files(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        HydraState.load(tmp_path / "nothing-here.safetensors", model.config)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        HydraState.load(corrupt, model.config)


def test_load_rejects_foreign_safetensors(model, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a HydraLM state"):
        HydraState.load(path, model.config)


def test_from_tensors_rejects_wrong_shape(model):
    tensors = model.init_state(1).tensors()
    tensors["layers.0.recurrent"] = torch.zeros(1, 2, 8, 7)
    with pytest.raises(ValueError, match=r"layers\.0\.recurrent.*expected \(1, 2, 8, 8\)"):
        HydraState.from_tensors(tensors, model.config)
    tensors = model.init_state(1).tensors()
    del tensors["layers.3.window_keys"]
    with pytest.raises(ValueError, match="layers.3.window_keys.*missing"):
        HydraState.from_tensors(tensors, model.config)


def test_select_and_to_keep_layout(model):
    state = model.init_state(3)
    first = state.select([0])
    assert first.batch_size == 1
    assert first.nbytes() == state_bytes(model.config, 1)
    half = state.to(dtype=torch.bfloat16)
    assert half.layers[0].recurrent.dtype == torch.float32
    assert half.layers[3].window_keys.dtype == torch.bfloat16
    assert half.position.dtype == torch.int64


def test_state_keeps_its_dtype_and_size(model):
    state = model.init_state(1, dtype=torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (1, 40))
    with torch.no_grad():
        after = model(ids, state=state).state
    assert after.nbytes() == state.nbytes()
    for name, tensor in after.tensors().items():
        assert tensor.dtype == state.tensors()[name].dtype, name


def test_bfloat16_model_runs_and_streams():
    torch.manual_seed(1)
    model = HydraLM(tiny_config()).to(torch.bfloat16).eval()
    ids = torch.randint(0, 64, (1, 50))
    with torch.no_grad():
        whole = model(ids)
        state = model(ids[:, :20]).state
        rest = model(ids[:, 20:], state=state)
    assert whole.logits.dtype == torch.bfloat16
    assert whole.state.layers[0].recurrent.dtype == torch.float32
    assert whole.state.layers[3].window_keys.dtype == torch.bfloat16
    assert whole.state.nbytes() == state_bytes(model.config, 1, torch.bfloat16)
    assert (rest.logits[:, -1].float() - whole.logits[:, -1].float()).abs().max() < 0.1


def test_load_rejects_other_format_version(model, tmp_path):
    from safetensors.torch import save_file

    state = model.init_state(1)
    path = tmp_path / "future.safetensors"
    metadata = {
        "format": "hydralm-state",
        "version": "99",
        "config_fingerprint": state.config_fingerprint,
        "layer_types": "[]",
    }
    save_file(dict(state.tensors()), str(path), metadata=metadata)
    with pytest.raises(ValueError, match="state format version '99'"):
        HydraState.load(path, model.config)


def test_from_tensors_rejects_extra_tensor_and_bad_position(model):
    tensors = dict(model.init_state(1).tensors())
    tensors["layers.9.recurrent"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected tensors \['layers.9.recurrent'\]"):
        HydraState.from_tensors(tensors, model.config)
    tensors = dict(model.init_state(1).tensors())
    tensors["position"] = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(ValueError, match="'position' must be a 1-D int64 tensor"):
        HydraState.from_tensors(tensors, model.config)
