"""Causal depthwise 1-D convolution with a streaming tail cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortConvolution(nn.Conv1d):
    """Depthwise causal convolution followed by SiLU.

    The streaming cache is the last `kernel_size - 1` real inputs (B, C, K-1);
    a zero cache is the start of a sequence. With a mask, padded positions
    are skipped: each real token is convolved with the previous real inputs,
    pads never enter the cache, and the output at a pad is zero.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(channels, channels, kernel_size, groups=channels, padding=0, bias=False)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        cache: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Convolve x (B, T, C); mask (B, T) is True at real tokens.

        Returns y (B, T, C) and the new cache (B, C, K-1).
        """
        B, T, C = x.shape
        tail = self.kernel_size[0] - 1
        if cache is None:
            cache = x.new_zeros(B, C, tail)
        cache_dtype = cache.dtype
        cache = cache.to(x.dtype)
        weight = self.weight.to(x.dtype)

        if mask is None:
            padded = torch.cat([cache, x.transpose(1, 2)], dim=-1)  # (B, C, K-1+T)
            if T == 1:
                # One decode step: a dot product is cheaper than a conv1d call.
                y = (padded * weight[:, 0]).sum(-1, keepdim=True)  # (B, C, 1)
            else:
                y = F.conv1d(padded, weight, groups=C)  # (B, C, T)
            new_cache = padded[..., padded.shape[-1] - tail :]  # (B, C, K-1)
            return F.silu(y).transpose(1, 2), new_cache.to(cache_dtype)

        # Move the real tokens of each row to the front (rank order), convolve
        # that compact sequence, then put each output back at its token.
        rank = torch.cumsum(mask.long(), dim=1) - 1  # (B, T) rank among real tokens
        target = torch.where(mask, rank, torch.full_like(rank, T))  # pads go to a spare row T
        compact = x.new_zeros(B, T + 1, C).scatter(1, target[..., None].expand(B, T, C), x)[:, :T]
        padded = torch.cat([cache, compact.transpose(1, 2)], dim=-1)  # (B, C, K-1+T)
        y = F.silu(F.conv1d(padded, weight, groups=C))  # (B, C, T) in rank order
        real_count = mask.sum(dim=1)  # (B,)
        tail_index = real_count[:, None] + torch.arange(tail, device=x.device)  # (B, K-1)
        new_cache = padded.gather(2, tail_index[:, None, :].expand(B, C, tail))  # (B, C, K-1)
        out = y.gather(2, rank.clamp(min=0)[:, None, :].expand(B, C, T))  # (B, C, T)
        out = out * mask[:, None, :].to(out.dtype)
        return out.transpose(1, 2), new_cache.to(cache_dtype)
