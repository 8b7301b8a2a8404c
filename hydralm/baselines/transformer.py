"""A dense causal Transformer of matched size, the baseline HydraLM is measured against.

Llama-style: pre-norm blocks of RMSNorm, full causal grouped-query attention
with RoPE, and SwiGLU, built from the same layer modules as HydraLM. Its
inference state is a KV cache that grows by one key and one value per layer
and token, so memory grows linearly and attention cost quadratically with the
sequence length; HydraLM's state has a fixed size.

The model has HydraLM's call interface, so benchmarks, the MQAR trainer and
the claim checks can swap one for the other::

    model = TransformerLM.matched_to(hydra_config)
    out = model(input_ids, state=None, attention_mask=None, labels=None)
    # out.logits (B, T, V), out.state (KVCache), out.loss (when labels given)
    state = model.init_state(batch_size)
    logits, state = model.step(token_ids, state)      # (B,) -> (B, V)

Parameter names follow Llama's (``model.layers.{i}.self_attn.q_proj.weight``,
``model.layers.{i}.mlp.gate_proj.weight``, ...).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hydralm.config import HydraConfig
from hydralm.layers.mlp import SwiGLU
from hydralm.layers.norm import RMSNorm
from hydralm.layers.rope import RotaryEmbedding, apply_rotary
from hydralm.model import check_attention_mask, check_input_ids

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

__all__ = ["KVCache", "TransformerConfig", "TransformerLM", "TransformerOutput"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class TransformerConfig:
    """Configuration of the dense baseline, with transformers' (Llama) field names."""

    vocab_size: int = 256
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int | None = None
    intermediate_size: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.head_dim is None and _is_int(self.hidden_size) and _is_int(self.num_attention_heads):
            if self.num_attention_heads > 0 and self.hidden_size % self.num_attention_heads == 0:
                self.head_dim = self.hidden_size // self.num_attention_heads
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field, its value and the fix."""
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.head_dim is None:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                f"{self.num_attention_heads}; choose a head count that divides it or set head_dim"
            )
        if not _is_int(self.head_dim) or self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(f"head_dim must be an even integer >= 2 for rotary embeddings, got {self.head_dim!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads={self.num_key_value_heads} must divide "
                f"num_attention_heads={self.num_attention_heads}"
            )
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        """Build a config from a dict; unknown keys raise ValueError."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig field(s) {unknown}; valid fields are {sorted(known)}")
        return cls(**data)

    @classmethod
    def matched_to(cls, config: HydraConfig) -> TransformerConfig:
        """Return the dense config with HydraLM's shape and (nearly) its parameter count.

        Width, depth, heads, vocabulary and embeddings are copied from
        ``config``. Gated DeltaNet layers carry more projections than attention
        layers, so ``intermediate_size`` is then changed until the parameter
        count is within one MLP unit per layer of HydraLM's.
        """
        if not isinstance(config, HydraConfig):
            raise ValueError(f"matched_to needs a HydraConfig, got {type(config).__name__}")
        base = cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            intermediate_size=config.intermediate_size,
            rms_norm_eps=config.rms_norm_eps,
            rope_theta=config.rope_theta,
            tie_word_embeddings=config.tie_word_embeddings,
            attention_bias=config.attention_bias,
            initializer_range=config.initializer_range,
        )
        # The accounting module imports this one, so it is imported here.
        from hydralm.accounting import hydra_parameter_count, transformer_parameter_count

        target = hydra_parameter_count(config)
        current = transformer_parameter_count(base)
        per_column = 3 * base.hidden_size * base.num_hidden_layers  # one more MLP unit in every layer
        columns = round((target - current) / per_column)
        intermediate_size = max(1, base.intermediate_size + columns)
        return dataclasses.replace(base, intermediate_size=intermediate_size)


# ---------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------


@dataclass
class KVCache:
    """The growing inference state of the dense Transformer.

    Attributes:
        keys, values: per layer ``(B, H_kv, L, D)``, keys stored after rotation.
        mask: ``(B, L)`` bool, True at real tokens (False at left padding).
        position: ``(B,)`` int64 real tokens read so far by each sequence.

    Updated functionally: a forward call returns a new cache.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    position: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.position.shape[0]

    @property
    def length(self) -> int:
        """Cached tokens per sequence, padding included."""
        return self.mask.shape[1]

    @property
    def device(self) -> torch.device:
        return self.position.device

    def nbytes(self) -> int:
        """Bytes held by the cache's tensors; grows linearly with ``length``."""
        tensors = [*self.keys, *self.values, self.mask, self.position]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)

    def select(self, indices: torch.Tensor | list[int]) -> KVCache:
        """Return the cache of the sequences at ``indices`` along the batch."""
        index = torch.as_tensor(indices, dtype=torch.long, device=self.device)
        return KVCache(
            keys=[key.index_select(0, index) for key in self.keys],
            values=[value.index_select(0, index) for value in self.values],
            mask=self.mask.index_select(0, index),
            position=self.position.index_select(0, index),
        )


@dataclass
class TransformerOutput:
    """Output of ``TransformerLM.forward``; the same fields as ``HydraOutput``."""

    logits: torch.Tensor
    state: KVCache
    loss: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Full causal grouped-query attention with RoPE and a growing KV cache."""

    def __init__(self, config: TransformerConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden_size, bias = config.hidden_size, config.attention_bias

        self.q_proj = nn.Linear(hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden_size, bias=bias)
        self.rotary = RotaryEmbedding(self.head_dim, config.rope_theta)

    def forward(
        self,
        hidden_states: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
        positions: torch.Tensor,
        attn_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attend hidden_states (B, T, C) to the cache and themselves.

        Args:
            past_keys, past_values: (B, H_kv, L, D) cache of this layer.
            positions: (B, T) absolute position of each token.
            attn_mask: (B, 1, T, L+T) bool, True where a query may attend;
                None means plain causal attention over an empty cache.

        Returns:
            The output (B, T, C) and the layer's new keys and values (B, H_kv, L+T, D).
        """
        B, T, _ = hidden_states.shape
        H, H_kv, D = self.num_heads, self.num_key_value_heads, self.head_dim

        q = self.q_proj(hidden_states).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(hidden_states).view(B, T, H_kv, D).transpose(1, 2)  # (B, H_kv, T, D)
        v = self.v_proj(hidden_states).view(B, T, H_kv, D).transpose(1, 2)  # (B, H_kv, T, D)
        cos, sin = self.rotary(positions, q.dtype)  # (B, T, D)
        q = apply_rotary(q, cos[:, None], sin[:, None])
        k = apply_rotary(k, cos[:, None], sin[:, None])

        keys = torch.cat([past_keys.to(k.dtype), k], dim=2)  # (B, H_kv, L+T, D)
        values = torch.cat([past_values.to(v.dtype), v], dim=2)  # (B, H_kv, L+T, D)
        output = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=attn_mask, is_causal=attn_mask is None, enable_gqa=H != H_kv
        )  # (B, H, T, D)
        output = self.o_proj(output.transpose(1, 2).reshape(B, T, H * D))  # (B, T, C)
        return output, keys, values


class TransformerBlock(nn.Module):
    """x + self_attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, config: TransformerConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = CausalSelfAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, hidden_states, past_keys, past_values, positions, attn_mask):
        # Token mixing.
        attention, keys, values = self.self_attn(
            self.input_layernorm(hidden_states), past_keys, past_values, positions, attn_mask
        )
        hidden_states = hidden_states + attention

        # Channel mixing.
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, keys, values


class TransformerModel(nn.Module):
    """Token embedding, the stack of TransformerBlocks and the final RMSNorm."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(TransformerBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)


# ---------------------------------------------------------------------------
# The language model
# ---------------------------------------------------------------------------


class TransformerLM(nn.Module):
    """Dense causal Transformer LM with the forward, ``init_state`` and ``step`` API of HydraLM.

    Args:
        config: a TransformerConfig, or a HydraConfig to build the size-matched
            baseline (``TransformerConfig.matched_to``).
    """

    def __init__(self, config: TransformerConfig | HydraConfig) -> None:
        super().__init__()
        if isinstance(config, HydraConfig):
            config = TransformerConfig.matched_to(config)
        if not isinstance(config, TransformerConfig):
            raise ValueError(f"TransformerLM needs a TransformerConfig or HydraConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.model = TransformerModel(config)
        self.lm_head = (
            None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        self.apply(self._init_weights)

    @classmethod
    def matched_to(cls, config: HydraConfig) -> TransformerLM:
        """Build the dense baseline whose parameter count matches ``HydraLM(config)``."""
        return cls(TransformerConfig.matched_to(config))

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    @property
    def output_weight(self) -> torch.Tensor:
        """(V, C) weight of the output projection: lm_head's, or the embedding when tied."""
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """Return an empty cache for ``batch_size`` sequences."""
        if not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        weight = self.model.embed_tokens.weight
        device = torch.device(device) if device is not None else weight.device
        dtype = dtype or weight.dtype
        config = self.config
        empty = (batch_size, config.num_key_value_heads, 0, config.head_dim)
        return KVCache(
            keys=[torch.zeros(empty, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)],
            values=[torch.zeros(empty, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)],
            mask=torch.zeros(batch_size, 0, dtype=torch.bool, device=device),
            position=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def _check_state(self, state: KVCache, batch_size: int, device: torch.device) -> None:
        if not isinstance(state, KVCache):
            raise ValueError(f"state must be a KVCache from init_state() or a forward call, got {type(state).__name__}")
        if len(state.keys) != self.config.num_hidden_layers:
            raise ValueError(
                f"state has {len(state.keys)} layers, expected {self.config.num_hidden_layers}; "
                "use a cache made by this model"
            )
        expected = (batch_size, self.config.num_key_value_heads, state.length, self.config.head_dim)
        if tuple(state.keys[0].shape) != expected:
            raise ValueError(f"state keys have shape {tuple(state.keys[0].shape)}, expected {expected}")
        if state.device != device:
            raise ValueError(f"state is on {state.device} but input_ids is on {device}; move one with .to()")

    def forward(
        self,
        input_ids: torch.Tensor,
        state: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> TransformerOutput:
        """Run the model on input_ids (B, T), continuing from ``state``.

        Args:
            input_ids: (B, T) integer token ids in [0, vocab_size).
            state: cache from an earlier call, or None to start fresh.
            attention_mask: (B, T) 1 at real tokens, 0 at padding; padded
                tokens are never attended to and do not advance positions.
            labels: (B, T) targets; position t predicts labels[:, t + 1]; -100 is ignored.
            logits_to_keep: 0 for all logits, k > 0 for the last k only.
        """
        B, T = check_input_ids(input_ids, self.config.vocab_size)
        if not _is_int(logits_to_keep) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an integer >= 0, got {logits_to_keep!r}")
        if labels is not None:
            if logits_to_keep:
                raise ValueError("labels need every logit; pass logits_to_keep=0 with labels")
            if not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape:
                shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
                raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {shape}")
        device = input_ids.device
        if state is None:
            state = self.init_state(B, device=device)
        else:
            self._check_state(state, B, device)
        mask, padded = check_attention_mask(attention_mask, B, T, device)

        # Positions count real tokens only, as in HydraLM, so a left-padded
        # prompt gets the positions of the prompt alone.
        past_length = state.position  # (B,)
        positions = past_length[:, None] + torch.cumsum(mask.long(), dim=1) - 1  # (B, T)
        positions = positions.clamp(min=0)
        key_mask = torch.cat([state.mask, mask], dim=1)  # (B, L+T)

        # Causal mask over [cache, input]. Without a cache or padding, SDPA's
        # own causal path runs and no (T, T) mask is built. One new token
        # with no padding anywhere attends to every cached key.
        L = state.length
        if L == 0 and not padded:
            attn_mask = None
        elif T == 1 and bool(key_mask.all()):
            attn_mask = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device)
        else:
            query_index = torch.arange(L, L + T, device=device)
            key_index = torch.arange(L + T, device=device)
            causal = key_index[None, :] <= query_index[:, None]  # (T, L+T)
            attn_mask = causal[None, None] & key_mask[:, None, None, :]  # (B, 1, T, L+T)
            # A query with no visible key (left padding before the first real
            # token) attends to itself only, so its output stays finite.
            diagonal = key_index[None, :] == query_index[:, None]  # (T, L+T)
            attn_mask = attn_mask | (diagonal[None, None] & ~attn_mask.any(dim=-1, keepdim=True))

        hidden_states = self.model.embed_tokens(input_ids.long())  # (B, T, C)
        new_keys, new_values = [], []
        for layer, past_keys, past_values in zip(self.model.layers, state.keys, state.values):
            hidden_states, keys, values = layer(hidden_states, past_keys, past_values, positions, attn_mask)
            new_keys.append(keys)
            new_values.append(values)
        hidden_states = self.model.norm(hidden_states)

        kept = hidden_states[:, -logits_to_keep:] if logits_to_keep else hidden_states
        logits = F.linear(kept, self.output_weight)  # (B, T, V)
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(device)
            loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)

        new_state = KVCache(keys=new_keys, values=new_values, mask=key_mask, position=past_length + mask.sum(dim=1))
        return TransformerOutput(logits=logits, state=new_state, loss=loss, last_hidden_state=hidden_states)

    def step(
        self, token_ids: torch.Tensor, state: KVCache, reuse_state: bool = False
    ) -> tuple[torch.Tensor, KVCache]:
        """Feed one token per sequence: token_ids (B,) -> (logits (B, V), new cache).

        `reuse_state` is accepted for parity with `HydraLM.step`; the cache
        grows by concatenation, so it never reuses the old one's tensors.
        """
        if not isinstance(token_ids, torch.Tensor) or token_ids.dim() != 1:
            shape = tuple(token_ids.shape) if isinstance(token_ids, torch.Tensor) else type(token_ids).__name__
            raise ValueError(f"step() takes token_ids of shape (B,), got {shape}")
        if state is None:
            raise ValueError("step() needs a state; create one with model.init_state(batch_size)")
        output = self.forward(token_ids[:, None], state=state)
        return output.logits[:, 0], output.state
