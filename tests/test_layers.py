"""Layers against plain references: norms, RoPE, short conv, SWA, DeltaNet, names."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hydralm import HydraConfig, HydraLM
from hydralm.layers import GatedDeltaNet, RMSNorm, RotaryEmbedding, ShortConvolution, SlidingWindowAttention
from hydralm.layers.rope import apply_rotary
from hydralm.ops.delta_rule import recurrent_gated_delta_rule


def test_rmsnorm_matches_formula_and_casts_back():
    norm = RMSNorm(6, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(2, 3, 6)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    assert norm(x.bfloat16()).dtype == torch.float32  # float32 weight times bf16 promotes, as in Llama
    assert norm.to(torch.bfloat16)(x.bfloat16()).dtype == torch.bfloat16


def test_rope_frequencies_and_rotation():
    rope = RotaryEmbedding(8, rope_theta=100.0)
    expected = torch.tensor([100.0 ** (-i / 8) for i in (0, 2, 4, 6)])
    torch.testing.assert_close(rope.inv_freq, expected)
    cos, sin = rope(torch.tensor([0, 3]), torch.float32)
    assert cos.shape == (2, 8)
    torch.testing.assert_close(cos[0], torch.ones(8))
    torch.testing.assert_close(cos[1, :4], torch.cos(3 * expected))
    torch.testing.assert_close(cos[1, 4:], torch.cos(3 * expected))
    # A rotation preserves the norm, and scores depend on the distance only.
    q, k = torch.randn(8), torch.randn(8)

    def score(i: int, j: int) -> torch.Tensor:
        cos, sin = rope(torch.tensor([i, j]), torch.float32)
        return apply_rotary(q, cos[0], sin[0]) @ apply_rotary(k, cos[1], sin[1])

    torch.testing.assert_close(score(10, 4), score(106, 100), atol=1e-5, rtol=1e-5)
    cos, sin = rope(torch.tensor(37), torch.float32)
    torch.testing.assert_close(apply_rotary(q, cos, sin).norm(), q.norm())


def test_short_conv_matches_loop_and_streams():
    torch.manual_seed(0)
    conv = ShortConvolution(5, 4)
    x = torch.randn(2, 9, 5)
    y, cache = conv(x)
    padded = F.pad(x, (0, 0, 3, 0))  # (B, 3 + T, C)
    expected = torch.stack(
        [(padded[:, t : t + 4] * conv.weight[:, 0].T).sum(1) for t in range(9)], dim=1
    )
    torch.testing.assert_close(y, F.silu(expected))
    torch.testing.assert_close(cache, x[:, -3:].transpose(1, 2))

    first, cache = conv(x[:, :4])
    outputs = [first]
    for t in range(4, 9):
        step, cache = conv(x[:, t : t + 1], cache)
        outputs.append(step)
    torch.testing.assert_close(torch.cat(outputs, dim=1), y)


def test_short_conv_skips_padding_anywhere():
    torch.manual_seed(1)
    conv = ShortConvolution(3, 3)
    real = torch.randn(1, 5, 3)
    cache = torch.randn(1, 3, 2)
    expected, expected_cache = conv(real, cache)
    # The same real tokens with pads before, between and after them.
    x = torch.randn(1, 9, 3)
    mask = torch.tensor([[False, True, True, False, False, True, True, True, False]])
    x[mask] = real[0]
    y, new_cache = conv(x, cache, mask)
    torch.testing.assert_close(y[mask], expected[0])
    assert torch.equal(y[~mask], torch.zeros_like(y[~mask]))
    torch.testing.assert_close(new_cache, expected_cache)


def reference_swa(layer: SlidingWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Attention written from the definition: each query looks at its key set with the stated distances."""
    B, T, _ = x.shape
    H, H_kv, D = layer.num_heads, layer.num_key_value_heads, layer.head_dim
    S, W = layer.num_sink_tokens, layer.sliding_window
    q = layer.q_proj(x).view(B, T, H, D).double()
    k = layer.k_proj(x).view(B, T, H_kv, D).double()
    v = layer.v_proj(x).view(B, T, H_kv, D).double()
    inv_freq = layer.rotary.inv_freq.double()

    def rotate(vector: torch.Tensor, position: int) -> torch.Tensor:
        angle = torch.cat([position * inv_freq, position * inv_freq])
        return vector * angle.cos() + torch.cat([-vector[..., D // 2 :], vector[..., : D // 2]], -1) * angle.sin()

    out = torch.zeros(B, T, H, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            g = h // (H // H_kv)
            for t in range(T):
                scores, values = [], []
                for i in range(min(S, t + 1)):  # sinks at distance min(t, S+W-1) - i
                    distance = min(t, S + W - 1) - i
                    scores.append(rotate(q[b, t, h], distance) @ k[b, i, g])
                    values.append(v[b, i, g])
                for j in range(max(S, t - W + 1), t + 1):  # window at the true distance
                    scores.append(rotate(q[b, t, h], t - j) @ k[b, j, g])
                    values.append(v[b, j, g])
                weights = torch.softmax(torch.stack(scores) / math.sqrt(D), dim=0)
                out[b, t, h] = weights @ torch.stack(values)
    return layer.o_proj(out.reshape(B, T, H * D).float())


@pytest.mark.parametrize(("window", "sinks", "kv_heads"), [(5, 2, 2), (7, 0, 1), (1, 3, 4), (30, 4, 2)])
def test_sliding_window_matches_definition(window, sinks, kv_heads):
    torch.manual_seed(2)
    config = HydraConfig(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=kv_heads,
        sliding_window=window, num_sink_tokens=sinks, layer_types=["swa"] * 4,
    )
    layer = SlidingWindowAttention(config, 0)
    x = torch.randn(2, 23, 32)
    state = layer.init_state(2)
    positions = torch.arange(23).expand(2, 23)
    mask = torch.ones(2, 23, dtype=torch.bool)
    with torch.no_grad():
        output, _ = layer(x, state, positions, mask, torch.zeros(2, dtype=torch.long))
        expected = reference_swa(layer, x)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-4)


def test_swa_without_window_limit_equals_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    llama_config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500.0,
        tie_word_embeddings=True, attention_bias=False, max_position_embeddings=128,
    )
    llama = transformers.LlamaForCausalLM(llama_config).eval()
    config = HydraConfig(
        vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500.0,
        sliding_window=40, num_sink_tokens=4, layer_types=["swa", "swa"], tie_word_embeddings=True,
    )
    hydra = HydraLM(config).eval()
    weights = {name.replace(".self_attn.", ".mixer."): t for name, t in llama.state_dict().items()}
    weights.pop("lm_head.weight", None)
    missing, unexpected = hydra.load_state_dict(weights, strict=False)
    assert missing == []
    assert unexpected == []

    input_ids = torch.randint(0, 64, (2, 44))  # S + W = 44: every distance is still the true one
    with torch.no_grad():
        expected = llama(input_ids).logits
        actual = hydra(input_ids).logits
    assert (actual - expected).abs().max() < 1e-4


def test_deltanet_gates_in_range_and_layer_matches_reference():
    torch.manual_seed(4)
    config = HydraConfig(hidden_size=32, num_attention_heads=2, layer_types=["deltanet"] * 4, chunk_size=8)
    layer = GatedDeltaNet(config, 0)
    x = torch.randn(2, 30, 32)
    with torch.no_grad():
        output, state = layer(x, layer.init_state(2))

        # The same computation spelled out with the recurrent kernel.
        B, T, H, D = 2, 30, 2, 16
        q, _ = layer.q_conv(layer.q_proj(x))
        k, _ = layer.k_conv(layer.k_proj(x))
        v, _ = layer.v_conv(layer.v_proj(x))
        q = F.normalize(q.view(B, T, H, D), dim=-1).transpose(1, 2)
        k = F.normalize(k.view(B, T, H, D), dim=-1).transpose(1, 2)
        v = v.view(B, T, H, D).transpose(1, 2)
        beta = torch.sigmoid(layer.b_proj(x)).transpose(1, 2)
        g = (-layer.A_log.exp() * F.softplus(layer.a_proj(x) + layer.dt_bias)).transpose(1, 2)
        o, expected_state = recurrent_gated_delta_rule(q, k, v, beta, g)
        o = layer.o_norm(o.transpose(1, 2)) * F.silu(layer.g_proj(x).view(B, T, H, D))
        expected = layer.o_proj(o.reshape(B, T, H * D))

    alpha = g.exp()
    assert bool((alpha > 0).all())
    assert bool((alpha <= 1).all())
    assert bool((beta > 0).all())
    assert bool((beta < 1).all())
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(state.recurrent, expected_state, atol=1e-5, rtol=1e-4)


def test_parameter_names_follow_llama():
    config = HydraConfig(num_hidden_layers=2, layer_types=["deltanet", "swa"], tie_word_embeddings=False)
    names = set(HydraLM(config).state_dict())
    expected = {
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        "model.layers.1.mixer.q_proj.weight",
        "model.layers.1.mixer.k_proj.weight",
        "model.layers.1.mixer.v_proj.weight",
        "model.layers.1.mixer.o_proj.weight",
    }
    for i in (0, 1):
        expected |= {
            f"model.layers.{i}.input_layernorm.weight",
            f"model.layers.{i}.post_attention_layernorm.weight",
            f"model.layers.{i}.mlp.gate_proj.weight",
            f"model.layers.{i}.mlp.up_proj.weight",
            f"model.layers.{i}.mlp.down_proj.weight",
        }
    for part in (
        "q_proj.weight", "k_proj.weight", "v_proj.weight", "q_conv.weight", "k_conv.weight",
        "v_conv.weight", "a_proj.weight", "A_log", "dt_bias", "b_proj.weight", "g_proj.weight",
        "o_norm.weight", "o_proj.weight",
    ):
        expected.add(f"model.layers.0.mixer.{part}")
    assert names == expected
    tied = set(HydraLM(HydraConfig(num_hidden_layers=2, layer_types=["deltanet", "swa"])).state_dict())
    assert "lm_head.weight" not in tied
