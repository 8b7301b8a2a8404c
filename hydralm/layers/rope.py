"""Rotary position embedding in the rotate_half convention of transformers' Llama.

Callers pass small local positions (distances inside the attention window),
never absolute stream positions, so the float32 angles stay exact however
long the stream is.
"""

from __future__ import annotations

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Map (x1, x2) to (-x2, x1) over the two halves of the last dimension."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` (..., T, D) by angles given as cos/sin broadcastable to it."""
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """cos/sin tables for integer positions, with Llama's default inverse frequencies."""

    def __init__(self, head_dim: int, rope_theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (cos, sin), each of shape positions.shape + (head_dim,), in `dtype`."""
        freqs = positions[..., None].float() * self.inv_freq.to(positions.device)  # (..., D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (..., D)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def lookup(
        self, positions: torch.Tensor, dtype: torch.dtype, limit: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `forward` for positions known to lie in [0, limit), read from a cached table.

        The table contains the same values `forward` computes; indexing it costs
        two gathers instead of a handful of elementwise passes, which matters
        for one-token decode steps. Positions outside [0, limit) are clamped.
        """
        key = (positions.device, dtype)
        cached = self._tables.get(key)
        if cached is None or cached[0].shape[0] < limit:
            size = max(limit, 2 * cached[0].shape[0] if cached is not None else 0)
            # Built outside inference mode so a table made while decoding can
            # still be used in a later training forward.
            with torch.inference_mode(False), torch.no_grad():
                cached = self.forward(torch.arange(size, device=positions.device), dtype)  # (size, D) each
            self._tables[key] = cached
        index = positions.clamp(0, limit - 1)
        return cached[0][index], cached[1][index]
