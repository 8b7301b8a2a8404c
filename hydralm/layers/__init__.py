"""Building blocks of HydraLM: norms, MLP, rotary embedding, mixers and the block."""

from hydralm.layers.block import HydraBlock
from hydralm.layers.gated_deltanet import GatedDeltaNet
from hydralm.layers.mlp import SwiGLU
from hydralm.layers.norm import RMSNorm
from hydralm.layers.rope import RotaryEmbedding, apply_rotary, rotate_half
from hydralm.layers.short_conv import ShortConvolution
from hydralm.layers.sliding_window import SlidingWindowAttention

__all__ = [
    "GatedDeltaNet",
    "HydraBlock",
    "RMSNorm",
    "RotaryEmbedding",
    "ShortConvolution",
    "SlidingWindowAttention",
    "SwiGLU",
    "apply_rotary",
    "rotate_half",
]
