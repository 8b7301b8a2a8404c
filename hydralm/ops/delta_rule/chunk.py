"""Chunkwise-parallel gated delta rule (WY representation with the UT transform).

Inside a chunk of C tokens, with gamma_i the cumulative log-decay from the
chunk start and S0 the state entering the chunk, the pseudo-values
u_i = beta_i (v_i - alpha_i S_{i-1}^T k_i) solve the unit lower-triangular
system (I + A) U = beta V - diag(beta exp(gamma)) K S0, where
A_ij = beta_i exp(gamma_i - gamma_j) k_i . k_j for j < i. Then

    o_i  = exp(gamma_i) S0^T q_i + sum_{j<=i} exp(gamma_i - gamma_j) (q_i . k_j) u_j
    S_C  = exp(gamma_C) S0 + sum_j exp(gamma_C - gamma_j) k_j u_j^T

Differences gamma_i - gamma_j are masked to the lower triangle before exp, so
the exponent is never positive: gates near 0 underflow to 0 and gates of
exactly 1 give exp(0) = 1, without inf or NaN. Reference: Yang, Kautz and
Hatamizadeh, "Gated Delta Networks: Improving Mamba2 with Delta Rule"
(arXiv:2412.06464), and the chunk form in flash-linear-attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hydralm.ops.delta_rule.naive import check_delta_rule_inputs


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the gated delta rule chunk by chunk; same contract as the recurrent form.

    Args:
        q, k: (B, H, T, K); v: (B, H, T, V); beta, g: (B, H, T);
        initial_state: (B, H, K, V) or None; scale: K ** -0.5 when None;
        chunk_size: tokens per chunk.

    Returns:
        o (B, H, T, V) in v's dtype and the final state (B, H, K, V) in float32.
    """
    check_delta_rule_inputs(q, k, v, beta, g, initial_state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
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
    if T == 0:
        return v.new_zeros(B, H, 0, V).to(out_dtype), state

    # Pad T to a multiple of the chunk; padded tokens have beta = 0 and
    # g = 0 (alpha = 1), so they leave the state unchanged.
    C = min(chunk_size, T)
    pad = (-T) % C
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        beta, g = (F.pad(x, (0, pad)) for x in (beta, g))
    N = (T + pad) // C

    q = q.view(B, H, N, C, K)
    k = k.view(B, H, N, C, K)
    v = v.view(B, H, N, C, V)
    beta = beta.view(B, H, N, C)
    gamma = g.view(B, H, N, C).cumsum(-1)  # (B, H, N, C)

    # Decay between positions i >= j of a chunk. The upper triangle is set
    # to -inf before exp, so no positive exponent is ever evaluated.
    upper = torch.ones(C, C, dtype=torch.bool, device=q.device).triu(1)
    diff = gamma[..., :, None] - gamma[..., None, :]  # (B, H, N, C, C)
    decay = diff.masked_fill(upper, float("-inf")).exp()  # (B, H, N, C, C)

    # UT transform: T_mat = (I + A)^{-1} with A strictly lower triangular;
    # unitriangular=True ignores the diagonal of `a_mat`.
    k_beta = k * beta[..., None]  # (B, H, N, C, K)
    a_mat = (k_beta @ k.transpose(-1, -2)) * decay  # (B, H, N, C, C)
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    t_mat = torch.linalg.solve_triangular(
        a_mat, eye.expand_as(a_mat), upper=False, unitriangular=True
    )  # (B, H, N, C, C)
    u = t_mat @ (v * beta[..., None])  # (B, H, N, C, V)
    w = t_mat @ (k_beta * gamma.exp()[..., None])  # (B, H, N, C, K)

    # Everything that does not need the entering state, batched over chunks:
    #   o_n     = qk_u_n + q_state_n @ S_n
    #   S_{n+1} = exp(gamma_last_n) S_n + k_u_n - k_w_n @ S_n
    qk = (q @ k.transpose(-1, -2)) * decay  # (B, H, N, C, C)
    qk_u = qk @ u  # (B, H, N, C, V)
    q_state = q * gamma.exp()[..., None] - qk @ w  # (B, H, N, C, K)
    gamma_last = gamma[..., -1]  # (B, H, N)
    k_to_end = (k * (gamma_last[..., None] - gamma).exp()[..., None]).transpose(-1, -2)  # (B, H, N, K, C)
    k_u = k_to_end @ u  # (B, H, N, K, V)
    k_w = k_to_end @ w  # (B, H, N, K, K)
    chunk_decay = gamma_last.exp()[..., None, None]  # (B, H, N, 1, 1)

    # The only sequential part: one (K, K) x (K, V) product per chunk.
    entering = []
    for n in range(N):
        entering.append(state)
        state = chunk_decay[:, :, n] * state + k_u[:, :, n] - k_w[:, :, n] @ state
    states = torch.stack(entering, dim=2)  # (B, H, N, K, V)
    o = (qk_u + q_state @ states).reshape(B, H, N * C, V)[:, :, :T]  # (B, H, T, V)
    return o.to(out_dtype), state
