"""The models the claim checks measure, built the same way for every check.

Claims 1, 3 and 4 use one small HydraLM (a Gated DeltaNet layer and a
sliding-window attention layer) and the dense Transformer matched to it in
shape and parameter count. The cost formulas describe the same pair. Claim 2
trains a fresh pair per MQAR setting, with a window shorter than the
sequence so that recall beyond it must come from the DeltaNet state.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from hydralm.config import HydraConfig

CLAIM_VOCAB_SIZE = 256


def claim_config(vocab_size: int = CLAIM_VOCAB_SIZE) -> HydraConfig:
    """Return the config of the small HydraLM used by the cost and state checks."""
    return HydraConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        sliding_window=64,
        num_sink_tokens=4,
        layer_types=["deltanet", "swa"],
    )


def mqar_config(
    vocab_size: int,
    hidden_size: int = 64,
    num_heads: int = 4,
    intermediate_size: int = 128,
    head_dim: int | None = None,
) -> HydraConfig:
    """Return the config of the HydraLM trained on MQAR with a vocabulary of `vocab_size`.

    Attention layers get half as many key-value heads as query heads (at
    least one); `head_dim` None gives heads of `hidden_size // num_heads`.
    """
    return HydraConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        intermediate_size=intermediate_size,
        head_dim=head_dim,
        sliding_window=8,
        num_sink_tokens=0,
        layer_types=["deltanet", "swa"],
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )


def make_hydra() -> torch.nn.Module:
    """Build the small HydraLM of `claim_config()` with fresh weights."""
    from hydralm.model import HydraLM

    return HydraLM(claim_config())


def make_dense() -> torch.nn.Module:
    """Build the dense Transformer matched to `claim_config()`."""
    from hydralm.baselines.transformer import TransformerLM

    return TransformerLM.matched_to(claim_config())


def make_mqar_hydra(vocab_size: int, **shape: Any) -> torch.nn.Module:
    """Build a fresh HydraLM for MQAR; `shape` takes the keyword arguments of `mqar_config`."""
    from hydralm.model import HydraLM

    return HydraLM(mqar_config(vocab_size, **shape))


def make_mqar_dense(vocab_size: int, **shape: Any) -> torch.nn.Module:
    """Build a fresh dense Transformer matched to the MQAR HydraLM of this `shape` (see `mqar_config`).

    The match is to a HydraLM with the same heads; the harder MQAR setting
    gives the Transformer fewer heads than its HydraLM, and so fewer
    parameters (the check reports both counts).
    """
    from hydralm.baselines.transformer import TransformerLM

    return TransformerLM.matched_to(mqar_config(vocab_size, **shape))


def analytic_forward_flops() -> tuple[Callable[[int], float], Callable[[int], float]]:
    """Return forward-FLOP formulas of N for the claim pair: (HydraLM, dense)."""
    from hydralm.accounting import hydra_forward_flops, transformer_forward_flops
    from hydralm.baselines.transformer import TransformerConfig

    config = claim_config()
    dense = TransformerConfig.matched_to(config)
    return (lambda n: hydra_forward_flops(config, n)), (lambda n: transformer_forward_flops(dense, n))


def analytic_state_bytes(config: HydraConfig) -> Callable[[int], int]:
    """Return the state-size formula of N for `config` (float32 caches)."""
    from hydralm.accounting import hydra_state_bytes

    return lambda n: hydra_state_bytes(config, n)


def analytic_costs() -> dict[str, Callable[[int], float]]:
    """Return FLOP and inference-memory formulas of N for the claim pair."""
    from hydralm.accounting import transformer_state_bytes
    from hydralm.baselines.transformer import TransformerConfig

    hydra_flops, dense_flops = analytic_forward_flops()
    config = claim_config()
    dense = TransformerConfig.matched_to(config)
    return {
        "hydra_flops": hydra_flops,
        "dense_flops": dense_flops,
        "hydra_memory": analytic_state_bytes(config),
        "dense_memory": lambda n: transformer_state_bytes(dense, n),
    }


def describe(config: Any) -> dict[str, Any]:
    """Return the fields of a model config that the reports show."""
    fields = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "sliding_window",
        "num_sink_tokens",
        "layer_types",
    )
    return {name: getattr(config, name) for name in fields if hasattr(config, name)}


def inference_cache_bytes(model: torch.nn.Module, input_ids: torch.Tensor) -> int:
    """Run `model` over `input_ids` and return the bytes of the state it keeps to continue."""
    with torch.inference_mode():
        output = model(input_ids, logits_to_keep=1)
    return int(output.state.nbytes())
