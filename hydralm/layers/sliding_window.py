"""Sliding-window attention with grouped-query heads and attention sinks.

A query at absolute position t attends to the sink tokens 0 .. S-1 and to the
window max(S, t-W+1) .. t. A window key keeps its true distance t - j. Sink i
sits at distance min(t, S+W-1) - i, which is the distance it has when the
cache first fills, as in StreamingLLM (Xiao et al., "Efficient Streaming
Language Models with Attention Sinks", arXiv:2309.17453). For t < S + W every
distance is the true one, so the layer computes Llama's attention (with
`attention_bias=False` and Llama's weights).

Keys are cached already rotated, so a decode step rotates one key and one
query instead of the whole window. Window keys are rotated by their position
minus an origin, the largest multiple of W not above the number of tokens
read; when the origin moves (once every W tokens) the cached keys are rotated
back by the difference. Angles therefore stay below 2W + block size however
long the stream is, and float32 keeps them exact at position 10^7 and beyond.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hydralm.config import HydraConfig
from hydralm.layers.packing import JoinedLinear, joined_outputs, packed_linear
from hydralm.layers.rope import RotaryEmbedding

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
    Sink i is stored rotated by angle i; window keys are stored rotated
    relative to the origin `SlidingWindowAttention._key_base(n)` for a sequence
    at position n. The number of filled slots follows from n: min(n, S) sinks
    and clamp(n - S, 0, W) window slots.
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


@dataclass
class Rotation:
    """RoPE rotation by fixed angles, as cos and a sign-folded sin table.

    `apply(x)` equals `apply_rotary(x, cos, sin)`: rotate_half(x) * sin is
    the half-swapped x times sin with its first half negated, so one roll
    replaces the slicing, negation and concatenation.
    """

    cos: torch.Tensor
    signed_sin: torch.Tensor

    @classmethod
    def from_tables(cls, cos: torch.Tensor, sin: torch.Tensor) -> Rotation:
        half = sin.shape[-1] // 2
        return cls(cos, torch.cat((-sin[..., :half], sin[..., half:]), dim=-1))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.cos + x.roll(x.shape[-1] // 2, dims=-1) * self.signed_sin


@dataclass
class BlockPlan:
    """Position-dependent inputs of one block of queries, shared by every layer.

    Attributes:
        window: rotation of queries and new keys relative to the key origin.
        sink_write: (rotation by own position, sink slot per token (B, C))
            when the block holds sink tokens, else None.
        query_sink: rotation of queries for the sink scores.
        used: filled ring slots taking part in the scores. A longer block
            attends to the ring as it was before the block and to the
            block's own keys; a one-token block writes its key first and
            attends to the ring after the write.
        blocked: True where a score is masked out: (B, 1, 1, C, S+used+C)
            for longer blocks, (B, 1, 1, 1, S+used) for one-token blocks.
        any_blocked: whether `blocked` masks anything (a long decode masks nothing).
        ring_index: (B, H_kv, C, D) ring slot each token writes, expanded for
            scatter; slot W drops the write.
        keep: (B, 1, 1, 1) for one-token blocks where some token is not
            written, True at those; None when every token is written and
            for longer blocks.
        rebase: rotation moving the cached keys to the next origin, or None.
        window_bias: (B, 1, 1, C, used+C) additive mask of the ring and block
            scores for the fused path of longer blocks; None for one-token blocks.
    """

    window: Rotation
    sink_write: tuple[Rotation, torch.Tensor] | None
    query_sink: Rotation
    used: int
    blocked: torch.Tensor
    any_blocked: bool
    ring_index: torch.Tensor
    keep: torch.Tensor | None
    rebase: Rotation | None
    window_bias: torch.Tensor | None


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
        self.joined_qkv: JoinedLinear | None = None

    def pack(self) -> None:
        """Join the q, k and v projections into one column-major product (see `hydralm.layers.packing`)."""
        self.joined_qkv = JoinedLinear([self.q_proj, self.k_proj, self.v_proj])

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
        reuse_state: bool = False,
        plans: dict | None = None,
    ) -> tuple[torch.Tensor, SWALayerState]:
        """Attend over hidden_states (B, T, C) block by block, threading the cache.

        Args:
            positions: (B, T) int64 absolute position of each token, counting
                real tokens only.
            mask: (B, T) bool, True at real tokens.
            past_length: (B,) int64 real tokens seen before this call.
            reuse_state: write single-token updates into `state`'s ring
                buffers in place instead of copying them.
            plans: block plans shared by the layers of one model call; a
                layer fills in the ones it computes and reuses the others.

        Returns:
            The output (B, T, C) and the new layer state.
        """
        B, T, _ = hidden_states.shape
        H, H_kv, D = self.num_heads, self.num_key_value_heads, self.head_dim

        # Queries and keys come as one tensor, so one rotation serves both.
        qk, v = joined_outputs(self.joined_qkv, [self.q_proj, self.k_proj, self.v_proj], hidden_states, groups=(2, 1))
        qk = qk.view(B, T, H + H_kv, D).transpose(1, 2)  # (B, H + H_kv, T, D): query heads, then key heads
        v = v.view(B, T, H_kv, D).transpose(1, 2)  # (B, H_kv, T, D)

        if plans is None:
            plans = {}
        real_before = None
        outputs = []
        for start in range(0, T, self.block_size):
            end = min(start + self.block_size, T)
            key = (start, self.sliding_window, self.num_sink_tokens, H_kv, D, qk.dtype)
            plan = plans.get(key)
            if plan is None:
                if real_before is None:
                    real_before = torch.cumsum(mask.long(), dim=1) - mask.long()  # (B, T) real tokens before each
                plan = self._plan(
                    positions[:, start:end], mask[:, start:end], past_length + real_before[:, start], qk.dtype
                )
                plans[key] = plan
            block_output, state = self._attend_block(qk[:, :, start:end], v[:, :, start:end], plan, state, reuse_state)
            outputs.append(block_output)
        attn_output = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]  # (B, H, T, D)
        attn_output = attn_output.transpose(1, 2).reshape(B, T, H * D)
        return packed_linear(attn_output, self.o_proj.weight, self.o_proj.bias), state

    def _key_base(self, length: torch.Tensor) -> torch.Tensor:
        """Angle origin of the cached window keys after `length` real tokens: a multiple of W."""
        W = self.sliding_window
        return torch.div(length, W, rounding_mode="floor") * W

    def _rotation(self, positions: torch.Tensor, dtype: torch.dtype, limit: int) -> Rotation:
        cos, sin = self.rotary.lookup(positions, dtype, limit)  # (B, C, D) each
        return Rotation.from_tables(cos[:, None], sin[:, None])

    def _plan(
        self, positions: torch.Tensor, real: torch.Tensor, past_length: torch.Tensor, dtype: torch.dtype
    ) -> BlockPlan:
        """Work out everything about a block that depends on positions only.

        Every sliding-window layer of a model has the same W and S, so one plan
        serves all of them (see `forward`'s `plans`).
        """
        B, C = positions.shape
        S, W = self.num_sink_tokens, self.sliding_window
        device = positions.device

        # Queries and this block's keys are rotated relative to the cache's
        # angle origin, so the cached keys never need rotating again here.
        # positions - base lies in [0, W + C) for real tokens.
        base = self._key_base(past_length)  # (B,)
        window = self._rotation(positions - base[:, None], dtype, W + C)

        # Sink i is cached rotated by its own position i; the query sits at
        # min(t, S+W-1). Once every sequence is past its sinks (the usual
        # decode step), the sink cache cannot change.
        sink_write = None
        if S > 0 and int(past_length.min()) < S:
            is_sink = real & (positions < S)  # (B, C)
            sink_slot = torch.where(is_sink, positions, torch.full_like(positions, S))  # (B, C)
            sink_write = (self._rotation(positions, dtype, S + 1), sink_slot)
        query_sink = self._rotation(positions, dtype, S + W)  # clamped to S+W-1
        sink_mask = torch.arange(S, device=device)[None, None, :] <= positions[:, :, None]  # (B, C, S)

        # Ring update: only the last W real non-sink positions are written,
        # so no two writes share a slot.
        new_length = past_length + real.sum(dim=1)  # (B,)
        block_valid = real & (positions >= S)  # (B, C)
        write = block_valid & (positions >= new_length[:, None] - W)  # (B, C)
        if C == 1:
            # One token per sequence, written before it attends: the ring
            # then contains the last min(W, n - S) non-sink tokens of a
            # sequence of n tokens, all within the window of the new one. A
            # sequence that does not write writes back its slot's current
            # contents, so each sequence touches one slot.
            filled = (new_length - S).clamp(0, W)  # (B,)
            used = int(filled.max())
            ring_mask = torch.arange(used, device=device)[None, None, :] < filled[:, None, None]  # (B, 1, used)
            blocked = ~torch.cat([sink_mask, ring_mask], dim=-1)[:, None, None]  # (B, 1, 1, 1, S+used)
            ring_slot = torch.remainder(positions - S, W)  # (B, 1)
            keep = ~write[:, None, :, None] if not bool(write.all()) else None  # (B, 1, 1, 1)
        else:
            # The ring contains positions past_length-W .. past_length-1.
            # Until it wraps, only slots 0 .. past_length-S-1 are filled, so
            # the others are left out of the scores.
            used = min(W, max(0, int(past_length.max()) - S))
            slots = torch.arange(used, device=device)
            oldest = past_length - W  # (B,)
            ring_positions = oldest[:, None] + torch.remainder(slots[None, :] - (oldest[:, None] - S), W)  # (B, used)
            ring_distance = positions[:, :, None] - ring_positions[:, None, :]  # (B, C, used)
            ring_mask = (ring_positions >= S)[:, None, :] & (ring_distance < W)  # (B, C, used)
            block_distance = positions[:, :, None] - positions[:, None, :]  # (B, C, C)
            block_mask = block_valid[:, None, :] & (block_distance >= 0) & (block_distance < W)  # (B, C, C)
            blocked = ~torch.cat([sink_mask, ring_mask, block_mask], dim=-1)[:, None, None]  # (B, 1, 1, C, S+used+C)
            ring_slot = torch.where(write, torch.remainder(positions - S, W), torch.full_like(positions, W))
            keep = None

        # Move the cached keys to the next angle origin when it changes. This
        # happens once every W tokens, so a key is re-rotated at most twice
        # during the W tokens it stays cached, and angles stay below 2W + C.
        shift = self._key_base(new_length) - base  # (B,)
        rebase = None
        if bool((shift != 0).any()):
            cos, sin = self.rotary(-shift, dtype)  # (B, D)
            rebase = Rotation.from_tables(cos[:, None, None], sin[:, None, None])
        window_bias = None
        if C > 1:
            window_bias = torch.zeros(blocked[..., S:].shape, dtype=dtype, device=device)
            window_bias.masked_fill_(blocked[..., S:], torch.finfo(dtype).min)
        any_blocked = bool(blocked.any())
        ring_index = ring_slot[:, None, :, None].expand(B, self.num_key_value_heads, C, self.head_dim)
        return BlockPlan(
            window, sink_write, query_sink, used, blocked, any_blocked, ring_index, keep, rebase, window_bias
        )

    def _attend_block(
        self,
        qk: torch.Tensor,
        v: torch.Tensor,
        plan: BlockPlan,
        state: SWALayerState,
        reuse_state: bool = False,
    ) -> tuple[torch.Tensor, SWALayerState]:
        """Attend one block of C queries and update the cache.

        A one-token block writes its key into the ring first and attends to
        [sinks, ring]. A longer block attends to [sinks, ring, block] and
        writes its keys afterwards.
        """
        B, _, C, D = qk.shape
        H, H_kv, G = self.num_heads, self.num_key_value_heads, self.num_key_value_groups
        S, W, used = self.num_sink_tokens, self.sliding_window, plan.used
        dtype = qk.dtype

        q, k = qk[:, :H], qk[:, H:]  # (B, H, C, D), (B, H_kv, C, D)
        qk_window = plan.window.apply(qk)
        q_window, k_window = qk_window[:, :H], qk_window[:, H:]
        q_sink = plan.query_sink.apply(q)  # (B, H, C, D)
        sink_keys = state.sink_keys.to(dtype)
        sink_values = state.sink_values.to(dtype)
        if plan.sink_write is not None:
            rotation, sink_slot = plan.sink_write
            index = sink_slot[:, None, :, None].expand(B, H_kv, C, D)
            zero_slot = k.new_zeros(B, H_kv, 1, D)
            sink_keys = torch.cat([sink_keys, zero_slot], dim=2).scatter(2, index, rotation.apply(k))[:, :, :S]
            sink_values = torch.cat([sink_values, zero_slot], dim=2).scatter(2, index, v)[:, :, :S]

        ring_keys = state.window_keys.to(dtype)
        ring_values = state.window_values.to(dtype)
        # Each key/value head serves G query heads: fold them into the rows of
        # one matmul per head rather than broadcasting (which copies the cache G times).
        q_window = q_window.reshape(B, H_kv, G * C, D)
        q_sink = q_sink.reshape(B, H_kv, G * C, D)
        if plan.window_bias is None:
            # One token: write its key and value into the ring, then attend
            # to the sinks and the ring alone. In place only when the cache
            # already has the compute dtype, so ring_keys is the caller's
            # tensor and not a converted copy.
            in_place = reuse_state and state.window_keys.dtype == dtype
            new_window_keys = self._write_slot(ring_keys, k_window, plan, in_place)
            new_window_values = self._write_slot(ring_values, v, plan, in_place)
            output = self._attend_step(
                q_window, q_sink, sink_keys, sink_values, new_window_keys[:, :, :used], new_window_values[:, :, :used], plan
            )
        else:
            output = self._attend_fused(
                q_window, q_sink, sink_keys, sink_values, ring_keys[:, :, :used], ring_values[:, :, :used], k_window, v, plan
            )
            zero_slot = k.new_zeros(B, H_kv, 1, D)
            new_window_keys = torch.cat([ring_keys, zero_slot], dim=2).scatter(2, plan.ring_index, k_window)[:, :, :W]
            new_window_values = torch.cat([ring_values, zero_slot], dim=2).scatter(2, plan.ring_index, v)[:, :, :W]
        output = output.view(B, H, C, D)
        if plan.rebase is not None:
            new_window_keys = plan.rebase.apply(new_window_keys)

        # The cache keeps the dtype it came in, so the state size never changes.
        new_state = SWALayerState(
            sink_keys=sink_keys.to(state.sink_keys.dtype),
            sink_values=sink_values.to(state.sink_values.dtype),
            window_keys=new_window_keys.to(state.window_keys.dtype),
            window_values=new_window_values.to(state.window_values.dtype),
        )
        return output, new_state

    @staticmethod
    def _write_slot(ring: torch.Tensor, new: torch.Tensor, plan: BlockPlan, in_place: bool) -> torch.Tensor:
        """Write one token per sequence, new (B, H_kv, 1, D), into its ring slot; return the ring."""
        if plan.keep is not None:
            new = torch.where(plan.keep, ring.gather(2, plan.ring_index), new)
        return ring.scatter_(2, plan.ring_index, new) if in_place else ring.scatter(2, plan.ring_index, new)

    def _attend_step(
        self,
        q_window: torch.Tensor,
        q_sink: torch.Tensor,
        sink_keys: torch.Tensor,
        sink_values: torch.Tensor,
        ring_keys: torch.Tensor,
        ring_values: torch.Tensor,
        plan: BlockPlan,
    ) -> torch.Tensor:
        """Attend one token to the sinks and the ring, with explicit scores and a float32 softmax as Llama does.

        Decode steps use this path. The ring already contains the token's own
        key. Queries are (B, H_kv, G, D); returns (B, H_kv, G, D).
        """
        B, H_kv, G, _ = q_window.shape
        S = self.num_sink_tokens
        # Scaling the G queries costs less than scaling the S+used scores.
        # With a power-of-two scale (head_dim 64) the scores are the same.
        scores = (q_window * self.scaling) @ ring_keys.transpose(-1, -2)  # (B, H_kv, G, used)
        if S > 0:
            sink_scores = (q_sink * self.scaling) @ sink_keys.transpose(-1, -2)  # (B, H_kv, G, S)
            scores = torch.cat([sink_scores, scores], dim=-1)  # (B, H_kv, G, S+used)
        scores = scores.float()
        if plan.any_blocked:
            # A finite fill keeps fully masked rows (pad queries before any
            # real token) finite. Their outputs are never used.
            scores = scores.view(B, H_kv, G, 1, -1).masked_fill(plan.blocked, torch.finfo(torch.float32).min)
        probs = torch.softmax(scores, dim=-1).to(q_window.dtype).view(B, H_kv, G, -1)
        output = probs[..., S:] @ ring_values
        if S > 0:
            output = output + probs[..., :S] @ sink_values
        return output

    def _attend_fused(
        self,
        q_window: torch.Tensor,
        q_sink: torch.Tensor,
        sink_keys: torch.Tensor,
        sink_values: torch.Tensor,
        used_keys: torch.Tensor,
        used_values: torch.Tensor,
        k_window: torch.Tensor,
        v: torch.Tensor,
        plan: BlockPlan,
    ) -> torch.Tensor:
        """Compute attention of a longer block with one fused scaled_dot_product_attention call.

        Sink scores need the queries rotated differently from the window
        scores, so they cannot share the kernel's q @ k^T. They enter as
        additive mask values instead: the sink columns get zero keys (score 0)
        plus a mask equal to the sink score, which gives the kernel exactly the
        logits of the explicit path without materialising probabilities.
        Queries are (B, H_kv, G*C, D); returns (B, H_kv, G*C, D).
        """
        B, H_kv, rows, D = q_window.shape
        G, S, used = self.num_key_value_groups, self.num_sink_tokens, plan.used
        C = rows // G
        dtype = q_window.dtype
        bias = torch.empty(B, H_kv, G, C, S + used + C, dtype=dtype, device=q_window.device)
        if S > 0:
            sink_scores = (q_sink @ sink_keys.transpose(-1, -2)).view(B, H_kv, G, C, S) * self.scaling
            bias[..., :S] = sink_scores.masked_fill(plan.blocked[..., :S], torch.finfo(dtype).min)
        bias[..., S:] = plan.window_bias
        keys = torch.cat([sink_keys.new_zeros(B, H_kv, S, D), used_keys, k_window], dim=2)
        values = torch.cat([sink_values, used_values, v], dim=2)
        return nn.functional.scaled_dot_product_attention(
            q_window, keys, values, attn_mask=bias.view(B, H_kv, rows, S + used + C), scale=self.scaling
        )
