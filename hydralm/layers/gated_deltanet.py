"""Gated DeltaNet mixer: a delta-rule fast-weight memory with a decay gate.

Yang, Kautz and Hatamizadeh, "Gated Delta Networks: Improving Mamba2 with
Delta Rule" (arXiv:2412.06464). Per head, the state is a (head_dim, head_dim)
matrix, so the layer's inference state has a fixed size for any stream
length: H * D * D float32 values plus three short-convolution tails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hydralm.config import HydraConfig
from hydralm.layers.norm import RMSNorm
from hydralm.layers.short_conv import ShortConvolution
from hydralm.ops.delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule

# Below this many tokens the token loop is as fast as the chunk form.
RECURRENT_MAX_TOKENS = 8


@dataclass
class DeltaNetLayerState:
    """Inference state of one Gated DeltaNet layer.

    Attributes:
        recurrent: (B, H, D, D) delta-rule matrix, always float32.
        q_conv, k_conv, v_conv: (B, H * D, conv_size - 1) short-convolution tails.
    """

    recurrent: torch.Tensor
    q_conv: torch.Tensor
    k_conv: torch.Tensor
    v_conv: torch.Tensor

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "recurrent": self.recurrent,
            "q_conv": self.q_conv,
            "k_conv": self.k_conv,
            "v_conv": self.v_conv,
        }


class GatedDeltaNet(nn.Module):
    """Gated DeltaNet token mixer.

    q, k, v are projected, passed through short causal convolutions with SiLU,
    and q, k are L2-normalised per head. The decay is computed in log space,
    g = -exp(A_log) * softplus(a_proj(x) + dt_bias), so alpha = exp(g) lies in
    (0, 1]; the write strength is beta = sigmoid(b_proj(x)). The output is
    RMS-normalised per head, gated by SiLU(g_proj(x)) and projected back.
    At padded positions beta = 0 and alpha = 1, so pads never change the state.
    """

    def __init__(self, config: HydraConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.chunk_size = config.chunk_size
        self.conv_size = config.conv_size
        hidden_size = config.hidden_size
        inner = self.num_heads * self.head_dim

        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.q_conv = ShortConvolution(inner, config.conv_size)
        self.k_conv = ShortConvolution(inner, config.conv_size)
        self.v_conv = ShortConvolution(inner, config.conv_size)
        self.a_proj = nn.Linear(hidden_size, self.num_heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(self.num_heads))
        self.dt_bias = nn.Parameter(torch.empty(self.num_heads))
        self.b_proj = nn.Linear(hidden_size, self.num_heads, bias=False)
        self.g_proj = nn.Linear(hidden_size, inner, bias=False)
        self.o_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)
        self.reset_gate_parameters()

    @torch.no_grad()
    def reset_gate_parameters(self) -> None:
        """Initialise A_log and dt_bias as Mamba2 and Gated DeltaNet do.

        A is drawn from U(0, 16) and dt log-uniformly from [1e-3, 1e-1].
        dt_bias is the inverse softplus of dt, so the initial decay rates span
        short and long memories.
        """
        self.A_log.copy_(torch.empty(self.num_heads).uniform_(0, 16).clamp_min(1e-4).log())
        dt_min, dt_max = 1e-3, 1e-1
        dt = torch.exp(
            torch.rand(self.num_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp_min(1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> DeltaNetLayerState:
        inner = self.num_heads * self.head_dim
        tail = self.conv_size - 1
        dtype = dtype or torch.float32
        return DeltaNetLayerState(
            recurrent=torch.zeros(
                batch_size, self.num_heads, self.head_dim, self.head_dim, device=device, dtype=torch.float32
            ),
            q_conv=torch.zeros(batch_size, inner, tail, device=device, dtype=dtype),
            k_conv=torch.zeros(batch_size, inner, tail, device=device, dtype=dtype),
            v_conv=torch.zeros(batch_size, inner, tail, device=device, dtype=dtype),
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        state: DeltaNetLayerState,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DeltaNetLayerState]:
        """Mix hidden_states (B, T, C) given the layer state; mask (B, T) is True at real tokens.

        Returns the output (B, T, C) and the new layer state.
        """
        B, T, _ = hidden_states.shape
        H, D = self.num_heads, self.head_dim

        # Projections and short convolutions; pads enter the conv as zeros.
        q, q_conv = self.q_conv(self.q_proj(hidden_states), state.q_conv, mask)  # (B, T, H*D)
        k, k_conv = self.k_conv(self.k_proj(hidden_states), state.k_conv, mask)
        v, v_conv = self.v_conv(self.v_proj(hidden_states), state.v_conv, mask)
        q = F.normalize(q.view(B, T, H, D).float(), p=2, dim=-1).transpose(1, 2)  # (B, H, T, D)
        k = F.normalize(k.view(B, T, H, D).float(), p=2, dim=-1).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)

        # Gates in log space: g <= 0 so alpha = exp(g) is in (0, 1].
        x32 = hidden_states.float()
        beta = torch.sigmoid(F.linear(x32, self.b_proj.weight.float()))  # (B, T, H)
        g = -self.A_log.float().exp() * F.softplus(
            F.linear(x32, self.a_proj.weight.float()) + self.dt_bias.float()
        )  # (B, T, H)
        if mask is not None:
            real = mask[..., None]  # (B, T, 1)
            beta = torch.where(real, beta, torch.zeros_like(beta))
            g = torch.where(real, g, torch.zeros_like(g))
        beta = beta.transpose(1, 2)  # (B, H, T)
        g = g.transpose(1, 2)  # (B, H, T)

        # The delta rule itself.
        if T <= RECURRENT_MAX_TOKENS:
            o, recurrent = recurrent_gated_delta_rule(q, k, v, beta, g, state.recurrent)
        else:
            o, recurrent = chunk_gated_delta_rule(
                q, k, v, beta, g, state.recurrent, chunk_size=self.chunk_size
            )  # (B, H, T, D)

        # Per-head norm, SiLU output gate, output projection.
        o = o.transpose(1, 2)  # (B, T, H, D)
        gate = self.g_proj(hidden_states).view(B, T, H, D)
        o = self.o_norm(o.to(hidden_states.dtype)) * F.silu(gate)  # (B, T, H, D)
        output = self.o_proj(o.reshape(B, T, H * D))  # (B, T, C)
        new_state = DeltaNetLayerState(recurrent=recurrent, q_conv=q_conv, k_conv=k_conv, v_conv=v_conv)
        return output, new_state
