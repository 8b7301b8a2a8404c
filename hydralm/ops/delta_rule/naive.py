"""Reference gated delta rule: one token at a time, in float32."""

from __future__ import annotations

import torch


def check_delta_rule_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> None:
    """Raise ValueError when the shapes of the delta-rule inputs disagree."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be (B, H, T, K), got {tuple(q.shape)} and {tuple(k.shape)}")
    B, H, T, _ = q.shape
    if v.dim() != 4 or v.shape[:3] != (B, H, T):
        raise ValueError(f"v must be (B, H, T, V) = ({B}, {H}, {T}, V), got {tuple(v.shape)}")
    for name, tensor in (("beta", beta), ("g", g)):
        if tensor.shape != (B, H, T):
            raise ValueError(f"{name} must be (B, H, T) = ({B}, {H}, {T}), got {tuple(tensor.shape)}")
    if initial_state is not None:
        expected = (B, H, q.shape[-1], v.shape[-1])
        if tuple(initial_state.shape) != expected:
            raise ValueError(
                f"initial_state must be (B, H, K, V) = {expected}, got {tuple(initial_state.shape)}"
            )


def recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the gated delta rule as a loop over tokens.

    Args:
        q, k: (B, H, T, K) queries and keys (the caller L2-normalises them).
        v: (B, H, T, V) values.
        beta: (B, H, T) write strength in [0, 1].
        g: (B, H, T) log of the decay alpha, <= 0.
        initial_state: (B, H, K, V) or None for zeros.
        scale: query scale, K ** -0.5 when None.

    Returns:
        o (B, H, T, V) in v's dtype and the final state (B, H, K, V) in float32.
    """
    check_delta_rule_inputs(q, k, v, beta, g, initial_state)
    B, H, T, K = q.shape
    V = v.shape[-1]
    if scale is None:
        scale = K**-0.5
    out_dtype = v.dtype
    q, k, v, beta, g = (x.float() for x in (q, k, v, beta, g))
    q = q * scale

    if initial_state is None:
        state = q.new_zeros(B, H, K, V)
    else:
        state = initial_state.float()
    outputs = []
    for t in range(T):
        state = state * g[:, :, t, None, None].exp()  # (B, H, K, V)
        k_t = k[:, :, t]  # (B, H, K)
        prediction = torch.einsum("bhkv,bhk->bhv", state, k_t)  # (B, H, V)
        delta = beta[:, :, t, None] * (v[:, :, t] - prediction)  # (B, H, V)
        state = state + k_t[..., :, None] * delta[..., None, :]  # (B, H, K, V)
        outputs.append(torch.einsum("bhkv,bhk->bhv", state, q[:, :, t]))
    if outputs:
        o = torch.stack(outputs, dim=2)  # (B, H, T, V)
    else:
        o = v.new_zeros(B, H, 0, V)
    return o.to(out_dtype), state
