"""Baselines that HydraLM is measured against."""

from hydralm.baselines.transformer import KVCache, TransformerConfig, TransformerLM, TransformerOutput

__all__ = ["KVCache", "TransformerConfig", "TransformerLM", "TransformerOutput"]
