"""Llama weights into HydraLM sliding-window attention blocks.

Tiny random Llama models check the mapping exactly and fast. The real
SmolLM2 weights are checked in test_chat_model.py.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hydralm.convert.llama import (
    build_hydra_lm,
    hydra_config_from_llama,
    hydra_from_llama,
    hydra_state_dict_from_llama,
)


def tiny_llama(**overrides) -> LlamaForCausalLM:
    fields = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    fields.update(overrides)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**fields)).eval()


def test_config_copies_llama_fields():
    llama = tiny_llama()
    config = hydra_config_from_llama(llama.config, sliding_window=32, num_sink_tokens=2)
    assert config.layer_types == ["swa", "swa"]
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads) == (64, 4, 2)
    assert config.head_dim == 16
    assert config.rope_theta == 100000.0
    assert config.rms_norm_eps == pytest.approx(1e-5)
    assert config.sliding_window == 32
    assert config.num_sink_tokens == 2
    assert config.tie_word_embeddings is True


@pytest.mark.parametrize("tied, bias", [(True, False), (False, False), (True, True)])
def test_logits_match_llama_inside_window(tied, bias):
    llama = tiny_llama(tie_word_embeddings=tied, attention_bias=bias)
    if bias:
        # Llama initialises biases to zero; random ones make the check meaningful.
        with torch.no_grad():
            for layer in llama.model.layers:
                for projection in ("q_proj", "k_proj", "v_proj", "o_proj"):
                    getattr(layer.self_attn, projection).bias.normal_(std=0.1)
    hydra = hydra_from_llama(llama, sliding_window=64, num_sink_tokens=4)
    input_ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        expected = llama(input_ids).logits
        actual = hydra(input_ids).logits
    assert (expected - actual).abs().max().item() < 1e-5
    names = set(hydra.state_dict())
    assert ("lm_head.weight" in names) is not tied
    assert "model.layers.0.mixer.q_proj.weight" in names


def test_logits_match_llama_chunked_and_stepped():
    llama = tiny_llama()
    hydra = hydra_from_llama(llama, sliding_window=64, num_sink_tokens=4)
    input_ids = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(2))

    with torch.no_grad():
        expected = llama(input_ids).logits[0]  # (T, V)
        output = hydra(input_ids[:, :20])
        state = output.state
        stepped = [output.logits[0]]
        for position in range(20, 30):
            logits, state = hydra.step(input_ids[:, position], state)
            stepped.append(logits)
    actual = torch.cat(stepped, dim=0)
    assert (expected - actual).abs().max().item() < 1e-5


def test_rope_scaling_rejected():
    llama_config = tiny_llama().config
    llama_config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(NotImplementedError, match="linear"):
        hydra_config_from_llama(llama_config)


def test_unsupported_activation_rejected():
    with pytest.raises(NotImplementedError, match="gelu"):
        hydra_config_from_llama({"model_type": "llama", "hidden_act": "gelu"})


def test_unexpected_parameter_rejected():
    llama = tiny_llama()
    config = hydra_config_from_llama(llama.config)
    state_dict = dict(llama.state_dict())
    state_dict["model.layers.0.self_attn.q_norm.weight"] = torch.ones(16)
    with pytest.raises(ValueError, match="q_norm"):
        hydra_state_dict_from_llama(state_dict, config)


def test_missing_parameter_rejected():
    llama = tiny_llama()
    config = hydra_config_from_llama(llama.config)
    state_dict = dict(llama.state_dict())
    del state_dict["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj.weight"):
        hydra_state_dict_from_llama(state_dict, config)


def test_untied_head_with_tied_config_rejected():
    llama = tiny_llama(tie_word_embeddings=False)
    config = hydra_config_from_llama(llama.config)
    config.tie_word_embeddings = True
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        hydra_state_dict_from_llama(llama.state_dict(), config)


def test_wrong_shape_rejected():
    llama = tiny_llama()
    config = hydra_config_from_llama(llama.config)
    state_dict = hydra_state_dict_from_llama(llama.state_dict(), config)
    state_dict["model.norm.weight"] = torch.ones(63)
    with pytest.raises(ValueError, match="model.norm.weight"):
        build_hydra_lm(config, state_dict)


def test_built_model_has_real_buffers():
    hydra = hydra_from_llama(tiny_llama())
    for name, buffer in hydra.named_buffers():
        assert not buffer.is_meta, name
    for name, parameter in hydra.named_parameters():
        assert not parameter.is_meta, name


def test_gguf_progress_replaces_tqdm_and_restores_it():
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from hydralm.convert.llama import _gguf_tensor_progress

    original = gguf_utils.tqdm
    fractions: list[float] = []
    with _gguf_tensor_progress(fractions.append):
        assert gguf_utils.tqdm is not original
        items = list(gguf_utils.tqdm(["a", "b", "c", "d"], desc="ignored"))
    assert items == ["a", "b", "c", "d"]
    assert fractions == [0.25, 0.5, 0.75, 1.0]
    assert gguf_utils.tqdm is original

    with _gguf_tensor_progress(None):
        assert gguf_utils.tqdm is original
