"""HydraConfig: defaults, derived fields, validation messages, JSON round trip."""

from __future__ import annotations

import pytest

from hydralm import HydraConfig
from hydralm.config import default_layer_types


def test_defaults_are_valid_and_derived_once():
    config = HydraConfig()
    assert config.head_dim == config.hidden_size // config.num_attention_heads
    assert config.layer_types == ["deltanet", "deltanet", "deltanet", "swa"]
    assert default_layer_types(10) == ["deltanet"] * 3 + ["swa"] + ["deltanet"] * 3 + ["swa"] + ["deltanet"] * 2


def test_explicit_head_dim_is_kept():
    config = HydraConfig(hidden_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    assert config.head_dim == 16


def test_smollm2_architecture():
    config = HydraConfig.smollm2_135m()
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (49152, 576, 30)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (9, 3, 64)
    assert config.layer_types == ["swa"] * 30
    assert config.tie_word_embeddings
    assert not config.attention_bias
    assert config.num_key_value_groups == 3


def test_json_round_trip():
    config = HydraConfig(
        vocab_size=500, num_hidden_layers=3, layer_types=["swa", "deltanet", "swa"], eos_token_id=[2, 3]
    )
    restored = HydraConfig.from_json(config.to_json())
    assert restored == config
    assert HydraConfig.from_dict(config.to_dict()) == config
    assert restored.fingerprint() == config.fingerprint()


def test_fingerprint_tracks_architecture_only():
    base = HydraConfig()
    assert HydraConfig(eos_token_id=5).fingerprint() == base.fingerprint()
    assert HydraConfig(chunk_size=32).fingerprint() == base.fingerprint()
    assert HydraConfig(sliding_window=128).fingerprint() != base.fingerprint()
    assert HydraConfig(num_sink_tokens=0).fingerprint() != base.fingerprint()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hidden_size": 100, "num_attention_heads": 3}, r"hidden_size=100 is not divisible by num_attention_heads=3"),
        ({"num_attention_heads": 4, "num_key_value_heads": 3}, r"num_key_value_heads=3 must divide num_attention_heads=4"),
        ({"sliding_window": 0}, r"sliding_window must be an integer >= 1, got 0"),
        ({"num_sink_tokens": -1}, r"num_sink_tokens must be an integer >= 0, got -1"),
        ({"layer_types": ["deltanet", "mamba", "swa", "swa"]}, r"layer_types\[1\]='mamba'"),
        ({"layer_types": ["swa", "swa"]}, r"layer_types has 2 entries but num_hidden_layers=4"),
        ({"layer_types": "swa"}, r"layer_types must be a list"),
        ({"vocab_size": 0}, r"vocab_size must be a positive integer, got 0"),
        ({"hidden_size": -8}, r"hidden_size must be a positive integer, got -8"),
        ({"num_hidden_layers": 0}, r"num_hidden_layers must be a positive integer, got 0"),
        ({"intermediate_size": 2.5}, r"intermediate_size must be a positive integer, got 2.5"),
        ({"conv_size": 0}, r"conv_size must be a positive integer, got 0"),
        ({"chunk_size": 0}, r"chunk_size must be a positive integer, got 0"),
        ({"head_dim": 7}, r"head_dim must be even"),
        ({"head_dim": 0}, r"head_dim must be a positive integer, got 0"),
        ({"rms_norm_eps": 0.0}, r"rms_norm_eps must be a positive number, got 0.0"),
        ({"rope_theta": -1.0}, r"rope_theta must be a positive number, got -1.0"),
        ({"initializer_range": -0.1}, r"initializer_range must be a number >= 0"),
        ({"eos_token_id": 256}, r"eos_token_id=256 is outside the vocabulary \[0, 256\)"),
        ({"bos_token_id": -1}, r"bos_token_id=-1 is outside the vocabulary"),
        ({"pad_token_id": True}, r"pad_token_id=True is outside the vocabulary"),
    ],
)
def test_invalid_config_raises(fields, message):
    with pytest.raises(ValueError, match=message):
        HydraConfig(**fields)


def test_validate_catches_later_edits():
    config = HydraConfig()
    config.sliding_window = -3
    with pytest.raises(ValueError, match="sliding_window must be an integer >= 1, got -3"):
        config.validate()


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown HydraConfig field\(s\) \['hiden_size'\]"):
        HydraConfig.from_dict({"hiden_size": 64})


def test_from_json_rejects_invalid_text():
    with pytest.raises(ValueError, match="invalid HydraConfig JSON"):
        HydraConfig.from_json("{not json")
    with pytest.raises(ValueError, match="built from a dict"):
        HydraConfig.from_json("[1, 2]")
