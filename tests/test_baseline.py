"""Tests of the dense Transformer baseline: parameter matching, cache, padding, API parity."""

from __future__ import annotations

import pytest
import torch

from hydralm import HydraConfig, HydraLM
from hydralm.baselines import KVCache, TransformerConfig, TransformerLM

CONFIGS = {
    "default": HydraConfig(),
    "deltanet_heavy": HydraConfig(
        vocab_size=512, hidden_size=96, num_hidden_layers=6, num_attention_heads=6,
        num_key_value_heads=1, intermediate_size=192, tie_word_embeddings=False,
    ),
    "all_swa": HydraConfig(num_hidden_layers=2, layer_types=["swa", "swa"], attention_bias=True),
}


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return TransformerLM(TransformerConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, intermediate_size=64))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameter_count_matches_hydralm(name):
    config = CONFIGS[name]

    ratio = count_parameters(TransformerLM.matched_to(config)) / count_parameters(HydraLM(config))

    assert 0.99 <= ratio <= 1.01, ratio


def test_all_swa_config_keeps_mlp_width():
    config = CONFIGS["all_swa"]

    assert TransformerConfig.matched_to(config).intermediate_size == config.intermediate_size


def test_same_parameter_names_as_llama():
    names = set(TransformerLM(TransformerConfig(num_hidden_layers=1, tie_word_embeddings=False)).state_dict())

    assert "model.embed_tokens.weight" in names
    assert "model.layers.0.self_attn.q_proj.weight" in names
    assert "model.layers.0.mlp.down_proj.weight" in names
    assert "model.layers.0.post_attention_layernorm.weight" in names
    assert "model.norm.weight" in names
    assert "lm_head.weight" in names


def test_chunks_and_steps_match_one_call(tiny_model):
    ids = torch.randint(0, 64, (2, 30))
    whole = tiny_model(ids).logits

    first = tiny_model(ids[:, :11])
    second = tiny_model(ids[:, 11:20], state=first.state)
    state = second.state
    stepped = []
    for t in range(20, 30):
        logits, state = tiny_model.step(ids[:, t], state)
        stepped.append(logits)
    pieces = torch.cat([first.logits, second.logits, torch.stack(stepped, dim=1)], dim=1)

    assert torch.allclose(pieces, whole, atol=1e-5), (pieces - whole).abs().max()
    assert state.length == 30
    assert state.position.tolist() == [30, 30]


def test_cache_grows_linearly(tiny_model):
    state = tiny_model(torch.randint(0, 64, (1, 10))).state
    bytes_10 = state.nbytes()
    state = tiny_model(torch.randint(0, 64, (1, 10)), state=state).state
    bytes_20 = state.nbytes()
    state = tiny_model(torch.randint(0, 64, (1, 20)), state=state).state
    bytes_40 = state.nbytes()

    assert bytes_20 - bytes_10 == (bytes_40 - bytes_20) / 2
    per_token = 2 * 2 * 2 * 8 * 4 + 1  # K and V, 2 layers, 2 kv heads, head_dim 8, float32; mask byte
    assert bytes_20 - bytes_10 == 10 * per_token


def test_left_padding_equals_each_prompt_alone(tiny_model):
    long_prompt = torch.randint(1, 64, (9,))
    short_prompt = torch.randint(1, 64, (5,))
    batch = torch.zeros(2, 9, dtype=torch.long)
    batch[0] = long_prompt
    batch[1, 4:] = short_prompt
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0

    out = tiny_model(batch, attention_mask=mask)
    alone = tiny_model(short_prompt[None]).logits
    assert torch.allclose(out.logits[1, 4:], alone[0], atol=1e-5)
    assert torch.allclose(out.logits[0], tiny_model(long_prompt[None]).logits[0], atol=1e-5)

    # Decoding after the padded prefill matches decoding the short prompt alone.
    next_ids = torch.tensor([7, 7])
    logits, _ = tiny_model.step(next_ids, out.state)
    alone_logits, _ = tiny_model.step(next_ids[:1], tiny_model(short_prompt[None]).state)
    assert torch.allclose(logits[1], alone_logits[0], atol=1e-5)


def test_same_interface_as_hydralm():
    config = HydraConfig(num_hidden_layers=2, layer_types=["deltanet", "swa"])
    ids = torch.randint(0, config.vocab_size, (2, 12))
    labels = ids.clone()

    for model in (HydraLM(config), TransformerLM.matched_to(config)):
        out = model(ids, labels=labels)
        assert out.logits.shape == (2, 12, config.vocab_size)
        assert out.loss is not None and out.loss.ndim == 0
        logits, state = model.step(ids[:, 0], model.init_state(2))
        assert logits.shape == (2, config.vocab_size)
        assert model(ids, logits_to_keep=1).logits.shape == (2, 1, config.vocab_size)


def test_loss_is_shifted_cross_entropy(tiny_model):
    ids = torch.randint(0, 64, (2, 8))
    labels = ids.clone()
    labels[:, :3] = -100

    out = tiny_model(ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, 64), labels[:, 1:].reshape(-1), ignore_index=-100
    )

    assert torch.allclose(out.loss, expected)


def test_select_keeps_chosen_sequences(tiny_model):
    ids = torch.randint(0, 64, (3, 6))
    state = tiny_model(ids).state

    chosen = state.select([2])

    assert isinstance(chosen, KVCache)
    assert chosen.batch_size == 1
    assert torch.equal(chosen.keys[0], state.keys[0][2:3])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "not divisible by num_attention_heads=4"),
        ({"num_key_value_heads": 3}, "num_key_value_heads=3 must divide"),
        ({"head_dim": 7}, "head_dim must be an even integer"),
        ({"rope_theta": -1.0}, "rope_theta must be a positive number"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**kwargs)


def test_bad_inputs_raise_value_error(tiny_model):
    ids = torch.randint(0, 64, (2, 5))

    with pytest.raises(ValueError, match="token id 64 is outside the vocabulary"):
        tiny_model(torch.full((1, 3), 64))
    with pytest.raises(ValueError, match=r"input_ids must have shape \(B, T\)"):
        tiny_model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have the shape of input_ids"):
        tiny_model(ids, labels=ids[:, :4])
    with pytest.raises(ValueError, match=r"state keys have shape \(2, 2, 5, 8\), expected \(1, 2, 5, 8\)"):
        tiny_model(ids[:1], state=tiny_model(ids).state)
    with pytest.raises(ValueError, match="state must be a KVCache"):
        tiny_model(ids, state="cache")
    with pytest.raises(ValueError, match=r"step\(\) takes token_ids of shape \(B,\)"):
        tiny_model.step(ids, tiny_model.init_state(2))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        tiny_model.init_state(0)
    with pytest.raises(ValueError, match="unknown TransformerConfig field"):
        TransformerConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="matched_to needs a HydraConfig"):
        TransformerConfig.matched_to(TransformerConfig())
