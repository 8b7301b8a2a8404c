"""Analytic forward FLOPs, inference-state bytes and parameter counts of both models.

Conventions:

- A multiply-add is 2 FLOPs; only matrix products are counted. Norms,
  activations, gates, softmax, RoPE and residual adds are left out: they are
  O(N * hidden_size) per layer and do not change how cost grows with N.
- ``N`` is the number of tokens of one sequence read in one forward call
  (a prefill); ``B`` multiplies everything.
- Notation: ``D`` hidden_size, ``I`` intermediate_size, ``Vocab`` vocab_size,
  ``H`` attention heads, ``H_kv`` key/value heads, ``Dh`` head_dim,
  ``Hd = H * Dh``, ``W`` sliding_window, ``S`` num_sink_tokens,
  ``C = min(chunk_size, N)``.

Per-layer forward FLOPs for N tokens:

- SwiGLU MLP (every layer): ``6 N D I`` (gate, up and down projections).
- Gated DeltaNet: projections ``2 N D (4 Hd + 2 H) + 2 N Hd D`` for q, k,
  v, the output gate g_proj, the decay a_proj, the write strength b_proj
  and o_proj. Short convolutions cost ``6 N Hd conv_size``. The chunkwise
  delta rule costs ``C^2 (6 Dh + 4 Dh) + C^3 + 6 C Dh^2`` per head and chunk
  of C tokens. These terms are the C x C products K K^T, Q K^T, T W and T U,
  about C^3 for the triangular inverse, and the state products W S, Q S and
  K^T U. There
  are ``ceil(N / C)`` chunks, so for N >= chunk_size the cost is linear in N.
- Sliding-window attention: projections ``2 N D (Hd + 2 H_kv Dh) + 2 N Hd D``;
  attention ``4 H Dh * sum_t min(t + 1, S + W)``: the query at position t
  attends to ``min(t + 1, S + W)`` keys, each costing a score and a weighted sum
  of ``2 Dh`` FLOPs. This is ``N (S + W)`` keys once N > S + W.
- Dense causal attention (the baseline): the same projections as SWA and
  ``4 H Dh * N (N + 1) / 2``, the N^2 term.
- Language-model head: ``2 N D Vocab`` (logits at every position).

NOTE: these count the useful products. The blockwise SWA kernel also scores
masked keys of its current block (up to 256 more keys per query), and the
chunk kernel pads N up to a multiple of C; both are constant factors.

Inference-state bytes (``elem`` is the cache dtype's size):

- HydraLM, per Gated DeltaNet layer: ``4 B H Dh^2`` (the float32 matrix)
  plus ``3 B Hd (conv_size - 1) elem`` (short-convolution tails); per SWA
  layer ``2 B H_kv (S + W) Dh elem`` (sink and ring-buffer keys and values);
  plus 8 bytes per sequence for the position. Independent of N.
- Dense Transformer (``KVCache``): ``2 L B H_kv Dh N elem`` for keys and
  values, ``B N`` bytes of padding mask and 8 bytes per sequence for the
  position. Linear in N.

Both byte formulas are tested against the ``nbytes()`` of real state objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hydralm.baselines.transformer import TransformerConfig
from hydralm.config import HydraConfig

__all__ = [
    "CostComparison",
    "compare_costs",
    "dense_attention_flops",
    "deltanet_layer_flops",
    "hydra_decode_flops",
    "hydra_forward_flops",
    "hydra_parameter_count",
    "hydra_state_bytes",
    "loglog_slope",
    "mlp_flops",
    "swa_layer_flops",
    "transformer_decode_flops",
    "transformer_forward_flops",
    "transformer_parameter_count",
    "transformer_state_bytes",
]


def _check_positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_config(config: object, expected: type) -> None:
    if not isinstance(config, expected):
        raise ValueError(f"expected a {expected.__name__}, got {type(config).__name__}")


def _element_size(dtype: torch.dtype) -> int:
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype, got {dtype!r}")
    return torch.empty((), dtype=dtype).element_size()


# ---------------------------------------------------------------------------
# Forward FLOPs
# ---------------------------------------------------------------------------


def mlp_flops(hidden_size: int, intermediate_size: int, seq_len: int) -> int:
    """SwiGLU MLP: gate, up and down projections, ``6 N D I``."""
    return 6 * seq_len * hidden_size * intermediate_size


def deltanet_layer_flops(config: HydraConfig, seq_len: int) -> dict[str, int]:
    """FLOPs of one Gated DeltaNet mixer on ``seq_len`` tokens, by component."""
    N, D, H, Dh = seq_len, config.hidden_size, config.num_attention_heads, config.head_dim
    Hd = H * Dh
    C = min(config.chunk_size, N)
    num_chunks = math.ceil(N / C)
    per_chunk = C * C * (6 * Dh + 4 * Dh) + C**3 + 6 * C * Dh * Dh
    return {
        "projections": 2 * N * D * (4 * Hd + 2 * H) + 2 * N * Hd * D,
        "short_conv": 6 * N * Hd * config.conv_size,
        "delta_rule": H * num_chunks * per_chunk,
    }


def swa_layer_flops(config: HydraConfig, seq_len: int) -> dict[str, int]:
    """FLOPs of one sliding-window attention mixer on ``seq_len`` tokens, by component."""
    N, D, H, H_kv, Dh = (
        seq_len, config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim,
    )
    span = config.num_sink_tokens + config.sliding_window
    # sum over t = 0 .. N-1 of min(t + 1, span), in closed form.
    if N <= span:
        attended = N * (N + 1) // 2
    else:
        attended = span * (span + 1) // 2 + (N - span) * span
    return {
        "projections": 2 * N * D * (H * Dh + 2 * H_kv * Dh) + 2 * N * H * Dh * D,
        "attention": 4 * H * Dh * attended,
    }


def dense_attention_flops(config: TransformerConfig, seq_len: int) -> dict[str, int]:
    """FLOPs of one full causal attention mixer on ``seq_len`` tokens, by component."""
    N, D, H, H_kv, Dh = (
        seq_len, config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim,
    )
    return {
        "projections": 2 * N * D * (H * Dh + 2 * H_kv * Dh) + 2 * N * H * Dh * D,
        "attention": 4 * H * Dh * (N * (N + 1) // 2),
    }


def hydra_forward_flops(config: HydraConfig, seq_len: int) -> int:
    """Forward FLOPs of ``HydraLM(config)`` on one sequence of ``seq_len`` tokens; linear in N."""
    _check_config(config, HydraConfig)
    N = _check_positive("seq_len", seq_len)
    total = 2 * N * config.hidden_size * config.vocab_size
    for layer_type in config.layer_types:
        mixer = deltanet_layer_flops(config, N) if layer_type == "deltanet" else swa_layer_flops(config, N)
        total += sum(mixer.values()) + mlp_flops(config.hidden_size, config.intermediate_size, N)
    return total


def transformer_forward_flops(config: TransformerConfig, seq_len: int) -> int:
    """Forward FLOPs of ``TransformerLM(config)`` on one sequence of ``seq_len`` tokens; quadratic in N."""
    _check_config(config, TransformerConfig)
    N = _check_positive("seq_len", seq_len)
    per_layer = sum(dense_attention_flops(config, N).values()) + mlp_flops(
        config.hidden_size, config.intermediate_size, N
    )
    return 2 * N * config.hidden_size * config.vocab_size + config.num_hidden_layers * per_layer


def hydra_decode_flops(config: HydraConfig, context_len: int) -> int:
    """FLOPs of one ``HydraLM.step`` after ``context_len`` tokens; constant once the SWA window is full.

    Per Gated DeltaNet layer the recurrent step costs ``6 H Dh^2``: the
    read-out ``S^T k``, the rank-one update and the output ``S^T q``. Per SWA
    layer the new token attends to ``min(context_len + 1, S + W)`` keys.
    """
    _check_config(config, HydraConfig)
    if isinstance(context_len, bool) or not isinstance(context_len, int) or context_len < 0:
        raise ValueError(f"context_len must be an integer >= 0, got {context_len!r}")
    D, H, H_kv, Dh = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
    Hd = H * Dh
    visible = min(context_len + 1, config.num_sink_tokens + config.sliding_window)
    total = 2 * D * config.vocab_size
    for layer_type in config.layer_types:
        total += mlp_flops(D, config.intermediate_size, 1)
        if layer_type == "deltanet":
            total += 2 * D * (4 * Hd + 2 * H) + 2 * Hd * D + 6 * Hd * config.conv_size + 6 * H * Dh * Dh
        else:
            total += 2 * D * (Hd + 2 * H_kv * Dh) + 2 * Hd * D + 4 * H * Dh * visible
    return total


def transformer_decode_flops(config: TransformerConfig, context_len: int) -> int:
    """FLOPs of one ``TransformerLM.step`` after ``context_len`` tokens; linear in the context."""
    _check_config(config, TransformerConfig)
    if isinstance(context_len, bool) or not isinstance(context_len, int) or context_len < 0:
        raise ValueError(f"context_len must be an integer >= 0, got {context_len!r}")
    D, H, H_kv, Dh = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
    per_layer = (
        2 * D * (H * Dh + 2 * H_kv * Dh) + 2 * H * Dh * D
        + 4 * H * Dh * (context_len + 1)
        + mlp_flops(D, config.intermediate_size, 1)
    )
    return 2 * D * config.vocab_size + config.num_hidden_layers * per_layer


# ---------------------------------------------------------------------------
# Inference-state bytes
# ---------------------------------------------------------------------------


def hydra_state_bytes(
    config: HydraConfig, seq_len: int = 0, batch_size: int = 1, dtype: torch.dtype = torch.float32
) -> int:
    """Bytes of HydraLM's inference state after ``seq_len`` tokens; the same for every N.

    ``dtype`` is the cache dtype of conv tails and SWA buffers; the DeltaNet
    matrices are float32 whatever it is.
    """
    _check_config(config, HydraConfig)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 0:
        raise ValueError(f"seq_len must be an integer >= 0, got {seq_len!r}")
    B = _check_positive("batch_size", batch_size)
    elem = _element_size(dtype)
    H, H_kv, Dh = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    total = 8 * B  # int64 position per sequence
    for layer_type in config.layer_types:
        if layer_type == "deltanet":
            total += 4 * B * H * Dh * Dh + 3 * B * H * Dh * (config.conv_size - 1) * elem
        else:
            total += 2 * B * H_kv * (config.num_sink_tokens + config.sliding_window) * Dh * elem
    return total


def transformer_state_bytes(
    config: TransformerConfig, seq_len: int, batch_size: int = 1, dtype: torch.dtype = torch.float32
) -> int:
    """Bytes of the dense Transformer's ``KVCache`` after ``seq_len`` tokens; linear in N."""
    _check_config(config, TransformerConfig)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 0:
        raise ValueError(f"seq_len must be an integer >= 0, got {seq_len!r}")
    B = _check_positive("batch_size", batch_size)
    elem = _element_size(dtype)
    kv = 2 * config.num_hidden_layers * B * config.num_key_value_heads * config.head_dim * seq_len * elem
    return kv + B * seq_len + 8 * B


# ---------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------


def _embedding_parameters(vocab_size: int, hidden_size: int, tied: bool) -> int:
    return vocab_size * hidden_size * (1 if tied else 2) + hidden_size  # + final norm


def hydra_parameter_count(config: HydraConfig) -> int:
    """Parameters of ``HydraLM(config)``, from the layer shapes."""
    _check_config(config, HydraConfig)
    D, I, H, H_kv, Dh = (
        config.hidden_size, config.intermediate_size, config.num_attention_heads,
        config.num_key_value_heads, config.head_dim,
    )
    Hd = H * Dh
    bias = config.attention_bias
    total = _embedding_parameters(config.vocab_size, D, config.tie_word_embeddings)
    for layer_type in config.layer_types:
        total += 2 * D + 3 * D * I  # two norms and the MLP
        if layer_type == "deltanet":
            # q, k, v, g projections; three depthwise convs; a and b projections;
            # A_log, dt_bias; output norm; o_proj.
            total += 4 * D * Hd + 3 * Hd * config.conv_size + 2 * D * H + 2 * H + Dh + Hd * D
        else:
            total += D * Hd + 2 * D * H_kv * Dh + Hd * D
            if bias:
                total += Hd + 2 * H_kv * Dh + D
    return total


def transformer_parameter_count(config: TransformerConfig) -> int:
    """Parameters of ``TransformerLM(config)``, from the layer shapes."""
    _check_config(config, TransformerConfig)
    D, I, H, H_kv, Dh = (
        config.hidden_size, config.intermediate_size, config.num_attention_heads,
        config.num_key_value_heads, config.head_dim,
    )
    per_layer = 2 * D + 3 * D * I + D * H * Dh + 2 * D * H_kv * Dh + H * Dh * D
    if config.attention_bias:
        per_layer += H * Dh + 2 * H_kv * Dh + D
    return _embedding_parameters(config.vocab_size, D, config.tie_word_embeddings) + config.num_hidden_layers * per_layer


# ---------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CostComparison:
    """Forward FLOPs and inference-state bytes of HydraLM and its dense baseline at one N.

    Savings are ``1 - hydra / transformer``: 0.9 means HydraLM needs 10% of
    the dense model's FLOPs (or bytes).
    """

    seq_len: int
    hydra_flops: int
    transformer_flops: int
    hydra_state_bytes: int
    transformer_state_bytes: int

    @property
    def flop_savings(self) -> float:
        return 1.0 - self.hydra_flops / self.transformer_flops

    @property
    def memory_savings(self) -> float:
        return 1.0 - self.hydra_state_bytes / self.transformer_state_bytes

    def to_dict(self) -> dict[str, float | int]:
        return {
            "seq_len": self.seq_len,
            "hydra_flops": self.hydra_flops,
            "transformer_flops": self.transformer_flops,
            "flop_savings": self.flop_savings,
            "hydra_state_bytes": self.hydra_state_bytes,
            "transformer_state_bytes": self.transformer_state_bytes,
            "memory_savings": self.memory_savings,
        }


def compare_costs(
    config: HydraConfig,
    seq_len: int,
    baseline: TransformerConfig | None = None,
    batch_size: int = 1,
    dtype: torch.dtype = torch.float32,
) -> CostComparison:
    """Compare HydraLM with ``baseline`` (default: the size-matched dense model) at ``seq_len`` tokens."""
    baseline = TransformerConfig.matched_to(config) if baseline is None else baseline
    return CostComparison(
        seq_len=seq_len,
        hydra_flops=batch_size * hydra_forward_flops(config, seq_len),
        transformer_flops=batch_size * transformer_forward_flops(baseline, seq_len),
        hydra_state_bytes=hydra_state_bytes(config, seq_len, batch_size, dtype),
        transformer_state_bytes=transformer_state_bytes(baseline, seq_len, batch_size, dtype),
    )


def loglog_slope(seq_lens: list[int] | tuple[int, ...], costs: list[float] | tuple[float, ...]) -> float:
    """Least-squares slope of log(cost) against log(N): 1 for linear cost, 2 for quadratic."""
    if len(seq_lens) != len(costs) or len(seq_lens) < 2:
        raise ValueError(
            f"loglog_slope needs at least 2 points and one cost per length, got {len(seq_lens)} lengths "
            f"and {len(costs)} costs"
        )
    if min(seq_lens) <= 0 or min(costs) <= 0:
        raise ValueError("loglog_slope needs positive lengths and costs")
    xs = [math.log(n) for n in seq_lens]
    ys = [math.log(c) for c in costs]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        raise ValueError(f"loglog_slope needs at least two distinct lengths, got {sorted(set(seq_lens))}")
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread
