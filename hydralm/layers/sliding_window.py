"""Sliding-window attention with grouped-query heads and attention sinks.

A query at absolute position t attends to the sink tokens 0 .. S-1 and to the
window max(S, t-W+1) .. t. Keys are cached before rotation and rotated at
attention time with small local positions. A window key keeps its true
distance t - j. Sink i sits at distance min(t, S+W-1) - i, which is the
distance it has when the cache first fills, as in StreamingLLM (Xiao et al.,
"Efficient Streaming Language Models with Attention Sinks", arXiv:2309.17453).
For t < S + W every distance is the true one, so the layer computes Llama's
attention (with `attention_bias=False` and Llama's weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hydralm.config import HydraConfig
from hydralm.layers.rope import RotaryEmbedding, apply_rotary

# Queries per attention block of a long input. Each block attends to
# S + W + block keys, so long prefills cost O(T * (W + block)), never O(T^2).
BLOCK_SIZE = 512


@dataclass
class SWALayerState:
    """Inference state of one sliding-window attention layer.

    Attributes:
        sink_keys, sink_values: (B, H_kv, S, D) the first S tokens, never evicted.
        window_keys, window_values: (B, H_kv, W, D) ring buffer of the last W
            non-sink tokens; position j >= S lives in slot (j - S) % W.
    Keys are stored before rotation. The number of filled slots follows from
    the sequence position n: min(n, S) sinks and clamp(n - S, 0, W) window slots.
    """

    sink_keys: torch.Tensor
    sink_values: torch.Tensor
    window_keys: torch.Tensor
    window_values: torch.Tensor

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "sink_keys": self.sink_keys,
            "sink_values": self.sink_values,
            "window_keys": self.window_keys,
            "window_values": self.window_values,
        }


class SlidingWindowAttention(nn.Module):
    """Grouped-query sliding-window attention with sinks and a constant-size cache."""

    def __init__(self, config: HydraConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = config.num_key_value_groups
        self.head_dim = config.head_dim
        self.sliding_window = config.sliding_window
        self.num_sink_tokens = config.num_sink_tokens
        self.scaling = self.head_dim**-0.5
        self.block_size = BLOCK_SIZE
        hidden_size = config.hidden_size
        bias = config.attention_bias

        self.q_proj = nn.Linear(hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden_size, bias=bias)
        self.rotary = RotaryEmbedding(self.head_dim, config.rope_theta)

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> SWALayerState:
        dtype = dtype or torch.float32
        sinks = (batch_size, self.num_key_value_heads, self.num_sink_tokens, self.head_dim)
        window = (batch_size, self.num_key_value_heads, self.sliding_window, self.head_dim)
        return SWALayerState(
            sink_keys=torch.zeros(sinks, device=device, dtype=dtype),
            sink_values=torch.zeros(sinks, device=device, dtype=dtype),
            window_keys=torch.zeros(window, device=device, dtype=dtype),
            window_values=torch.zeros(window, device=device, dtype=dtype),
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        state: SWALayerState,
        positions: torch.Tensor,
        mask: torch.Tensor,
        past_length: torch.Tensor,
    ) -> tuple[torch.Tensor, SWALayerState]:
        """Attend over hidden_states (B, T, C) block by block, threading the cache.

        Args:
            positions: (B, T) int64 absolute position of each token, counting
                real tokens only.
            mask: (B, T) bool, True at real tokens.
            past_length: (B,) int64 real tokens seen before this call.

        Returns:
            The output (B, T, C) and the new layer state.
        """
        B, T, _ = hidden_states.shape
        H, H_kv, D = self.num_heads, self.num_key_value_heads, self.head_dim

        q = self.q_proj(hidden_states).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(hidden_states).view(B, T, H_kv, D).transpose(1, 2)  # (B, H_kv, T, D)
        v = self.v_proj(hidden_states).view(B, T, H_kv, D).transpose(1, 2)  # (B, H_kv, T, D)

        real_before = torch.cumsum(mask.long(), dim=1) - mask.long()  # (B, T) real tokens before each
        outputs = []
        for start in range(0, T, self.block_size):
            end = min(start + self.block_size, T)
            block_output, state = self._attend_block(
                q[:, :, start:end],
                k[:, :, start:end],
                v[:, :, start:end],
                positions[:, start:end],
                mask[:, start:end],
                past_length + real_before[:, start],
                state,
            )
            outputs.append(block_output)
        attn_output = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]  # (B, H, T, D)
        attn_output = attn_output.transpose(1, 2).reshape(B, T, H * D)
        return self.o_proj(attn_output), state

    def _attend_block(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        real: torch.Tensor,
        past_length: torch.Tensor,
        state: SWALayerState,
    ) -> tuple[torch.Tensor, SWALayerState]:
        """Attend one block of C queries to [sinks, ring buffer, block] and update the cache."""
        B, H, C, D = q.shape
        H_kv, G = self.num_key_value_heads, self.num_key_value_groups
        S, W = self.num_sink_tokens, self.sliding_window
        device, dtype = q.device, q.dtype
        zero_slot = k.new_zeros(B, H_kv, 1, D)

        # Sink tokens of this block go to the sink cache first; other tokens
        # are scattered into a spare slot S that is dropped.
        sink_keys = state.sink_keys.to(dtype)
        sink_values = state.sink_values.to(dtype)
        if S > 0:
            is_sink = real & (positions < S)  # (B, C)
            sink_slot = torch.where(is_sink, positions, torch.full_like(positions, S))
            index = sink_slot[:, None, :, None].expand(B, H_kv, C, D)
            sink_keys = torch.cat([sink_keys, zero_slot], dim=2).scatter(2, index, k)[:, :, :S]
            sink_values = torch.cat([sink_values, zero_slot], dim=2).scatter(2, index, v)[:, :, :S]

        # Window keys: the ring buffer (positions past_length-W .. past_length-1)
        # followed by this block.
        slots = torch.arange(W, device=device)
        oldest = past_length - W  # (B,)
        ring_positions = oldest[:, None] + torch.remainder(
            slots[None, :] - (oldest[:, None] - S), W
        )  # (B, W)
        key_positions = torch.cat([ring_positions, positions], dim=1)  # (B, W+C)
        key_valid = torch.cat([ring_positions >= S, real & (positions >= S)], dim=1)  # (B, W+C)
        distance = positions[:, :, None] - key_positions[:, None, :]  # (B, C, W+C)
        window_mask = key_valid[:, None, :] & (distance >= 0) & (distance < W)  # (B, C, W+C)
        window_keys = torch.cat([state.window_keys.to(dtype), k], dim=2)  # (B, H_kv, W+C, D)
        window_values = torch.cat([state.window_values.to(dtype), v], dim=2)

        # Rotate with local positions measured from `oldest`: distances are
        # exact and the angles stay below W + C.
        cos, sin = self.rotary(key_positions - oldest[:, None], dtype)  # (B, W+C, D)
        window_keys_rot = apply_rotary(window_keys, cos[:, None], sin[:, None])
        cos, sin = self.rotary(positions - oldest[:, None], dtype)  # (B, C, D)
        q_window = apply_rotary(q, cos[:, None], sin[:, None])  # (B, H, C, D)

        # Sinks: the query sits at min(t, S+W-1) and sink i at i.
        sink_index = torch.arange(S, device=device)
        cos, sin = self.rotary(positions.clamp(max=S + W - 1), dtype)  # (B, C, D)
        q_sink = apply_rotary(q, cos[:, None], sin[:, None])  # (B, H, C, D)
        cos, sin = self.rotary(sink_index, dtype)  # (S, D)
        sink_keys_rot = apply_rotary(sink_keys, cos, sin)  # (B, H_kv, S, D)
        sink_mask = sink_index[None, None, :] <= positions[:, :, None]  # (B, C, S)

        # Scores per key/value group, softmax in float32 as Llama does.
        q_window = q_window.view(B, H_kv, G, C, D)
        q_sink = q_sink.view(B, H_kv, G, C, D)
        sink_scores = q_sink @ sink_keys_rot[:, :, None].transpose(-1, -2)  # (B, H_kv, G, C, S)
        window_scores = q_window @ window_keys_rot[:, :, None].transpose(-1, -2)  # (B, H_kv, G, C, W+C)
        scores = torch.cat([sink_scores, window_scores], dim=-1) * self.scaling
        allowed = torch.cat([sink_mask, window_mask], dim=-1)[:, None, None]  # (B, 1, 1, C, S+W+C)
        # A finite fill keeps fully masked rows (pad queries before any real
        # token) finite; their outputs are never used.
        scores = scores.float().masked_fill(~allowed, torch.finfo(torch.float32).min)
        probs = torch.softmax(scores, dim=-1).to(dtype)
        values = torch.cat([sink_values, window_values], dim=2)  # (B, H_kv, S+W+C, D)
        output = (probs @ values[:, :, None]).view(B, H, C, D)  # (B, H, C, D)

        # Ring update: only the last W real non-sink positions are written,
        # so no two writes share a slot.
        new_length = past_length + real.sum(dim=1)  # (B,)
        write = real & (positions >= S) & (positions >= new_length[:, None] - W)  # (B, C)
        ring_slot = torch.where(write, torch.remainder(positions - S, W), torch.full_like(positions, W))
        index = ring_slot[:, None, :, None].expand(B, H_kv, C, D)
        new_window_keys = torch.cat([state.window_keys.to(dtype), zero_slot], dim=2).scatter(2, index, k)
        new_window_values = torch.cat([state.window_values.to(dtype), zero_slot], dim=2).scatter(2, index, v)
        # The cache keeps the dtype it came in, so the state size never changes.
        new_state = SWALayerState(
            sink_keys=sink_keys.to(state.sink_keys.dtype),
            sink_values=sink_values.to(state.sink_values.dtype),
            window_keys=new_window_keys[:, :, :W].to(state.window_keys.dtype),
            window_values=new_window_values[:, :, :W].to(state.window_values.dtype),
        )
        return output, new_state
