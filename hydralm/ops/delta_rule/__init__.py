"""The gated delta rule: a recurrent reference loop and a chunkwise-parallel form.

Both compute, for every head, with S a (K, V) matrix and alpha_t = exp(g_t):

    S_t = alpha_t S_{t-1} + beta_t k_t (v_t - alpha_t S_{t-1}^T k_t)^T
    o_t = S_t^T (scale * q_t)
"""

from hydralm.ops.delta_rule.chunk import chunk_gated_delta_rule
from hydralm.ops.delta_rule.naive import recurrent_gated_delta_rule

__all__ = ["chunk_gated_delta_rule", "recurrent_gated_delta_rule"]
