"""Pre-norm residual block: mixer (Gated DeltaNet or sliding-window attention) then SwiGLU."""

from __future__ import annotations

import torch
from torch import nn

from hydralm.config import HydraConfig
from hydralm.layers.gated_deltanet import DeltaNetLayerState, GatedDeltaNet
from hydralm.layers.mlp import SwiGLU
from hydralm.layers.norm import RMSNorm
from hydralm.layers.sliding_window import SlidingWindowAttention, SWALayerState

LayerState = DeltaNetLayerState | SWALayerState


class HydraBlock(nn.Module):
    """x + mixer(norm(x)), then h + mlp(norm(h)), with Llama's parameter names."""

    def __init__(self, config: HydraConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.layer_type = config.layer_types[layer_idx]
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if self.layer_type == "deltanet":
            self.mixer: GatedDeltaNet | SlidingWindowAttention = GatedDeltaNet(config, layer_idx)
        else:
            self.mixer = SlidingWindowAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> LayerState:
        return self.mixer.init_state(batch_size, device=device, dtype=dtype)

    def forward(
        self,
        hidden_states: torch.Tensor,
        state: LayerState,
        positions: torch.Tensor,
        mask: torch.Tensor,
        past_length: torch.Tensor,
        padded: bool,
        reuse_state: bool = False,
        plans: dict | None = None,
    ) -> tuple[torch.Tensor, LayerState]:
        """Run the block on hidden_states (B, T, C); return the output and the new layer state."""
        # Token mixing.
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        if isinstance(self.mixer, GatedDeltaNet):
            hidden_states, state = self.mixer(hidden_states, state, mask if padded else None)
        else:
            hidden_states, state = self.mixer(hidden_states, state, positions, mask, past_length, reuse_state, plans)
        hidden_states = residual + hidden_states

        # Channel mixing.
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + hidden_states, state
