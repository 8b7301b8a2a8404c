"""SwiGLU feed-forward block with Llama's parameter names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hydralm.layers.packing import JoinedLinear, joined_outputs, packed_linear


class SwiGLU(nn.Module):
    """down_proj(silu(gate_proj(x)) * up_proj(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.joined_gate_up: JoinedLinear | None = None

    def pack(self) -> None:
        """Join the gate and up projections into one column-major product (see `hydralm.layers.packing`)."""
        self.joined_gate_up = JoinedLinear([self.gate_proj, self.up_proj])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate, up = joined_outputs(self.joined_gate_up, [self.gate_proj, self.up_proj], hidden_states)
        return packed_linear(F.silu(gate) * up, self.down_proj.weight, self.down_proj.bias)
