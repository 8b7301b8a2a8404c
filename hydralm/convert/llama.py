"""Llama-architecture weights into HydraLM sliding-window attention blocks.

Every Llama decoder layer becomes a HydraLM block whose mixer is
`SlidingWindowAttention` with the same grouped-query heads, RoPE base and
RMSNorm epsilon. Inside the window (fewer than `num_sink_tokens +
sliding_window` tokens) such a block computes the same function as full
causal attention, so the imported model reproduces the original's logits up
to float32 rounding. Beyond the window, `num_sink_tokens` attention sinks
(the first tokens, never evicted) plus the last `sliding_window` tokens keep
the state a fixed size.

Two sources are supported: a transformers `LlamaForCausalLM` (or its state
dict and config), and a GGUF file read through transformers. GGUF stores the
q and k projections with each head's rows interleaved for llama.cpp's RoPE
layout; transformers' GGUF loader (`LlamaTensorProcessor` in
`transformers/modeling_gguf_pytorch_utils.py`, checked with transformers 5.25)
already undoes that permutation, so the weights that reach this module are in
Hugging Face order and are copied as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from hydralm.config import HydraConfig

logger = logging.getLogger(__name__)

# Llama parameter names map to HydraLM's by renaming the attention block
# (`self_attn` -> `mixer`). Norms, MLP and embeddings keep their names.
_LAYER_PATTERN = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_ATTENTION_PREFIX = "self_attn."
_LAYER_SUFFIXES = (
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)
_ATTENTION_SUFFIXES = ("q_proj", "k_proj", "v_proj", "o_proj")
_GLOBAL_NAMES = ("model.embed_tokens.weight", "model.norm.weight")


def _config_value(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _rope_theta(llama_config: Any) -> float:
    """Read the RoPE base and reject RoPE scaling, which HydraLM does not implement."""
    # transformers 5 keeps RoPE settings in `rope_parameters`; 4.x used
    # `rope_theta` plus an optional `rope_scaling` dict.
    parameters = _config_value(llama_config, "rope_parameters")
    scaling = _config_value(llama_config, "rope_scaling")
    if isinstance(parameters, Mapping):
        rope_type = parameters.get("rope_type", "default")
        theta = parameters.get("rope_theta", _config_value(llama_config, "rope_theta"))
    else:
        rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
        theta = _config_value(llama_config, "rope_theta")
    if rope_type != "default":
        raise NotImplementedError(
            f"RoPE type {rope_type!r} is not supported; HydraLM implements the default "
            f"(unscaled) rotary embedding only"
        )
    if theta is None:
        raise ValueError("the Llama config has no rope_theta; cannot set the RoPE base")
    return float(theta)


def hydra_config_from_llama(
    llama_config: Any,
    *,
    sliding_window: int = 2048,
    num_sink_tokens: int = 4,
) -> HydraConfig:
    """Build the HydraConfig of a Llama model with every layer as sliding-window attention.

    Args:
        llama_config: a transformers `LlamaConfig` or a dict with its fields.
        sliding_window: tokens each query sees besides the sinks.
        num_sink_tokens: initial tokens every query keeps attending to.

    Raises:
        ValueError: a field is missing or invalid.
        NotImplementedError: the model uses a feature HydraLM lacks (RoPE
            scaling, an activation other than SiLU, MLP biases).
    """
    model_type = _config_value(llama_config, "model_type", "llama")
    if model_type != "llama":
        raise ValueError(f"expected a Llama config (model_type 'llama'), got {model_type!r}")
    hidden_act = _config_value(llama_config, "hidden_act", "silu")
    if hidden_act != "silu":
        raise NotImplementedError(
            f"hidden_act={hidden_act!r} is not supported; HydraLM's MLP is SwiGLU (silu)"
        )
    if _config_value(llama_config, "mlp_bias", False):
        raise NotImplementedError("mlp_bias=True is not supported; HydraLM's MLP has no biases")

    num_hidden_layers = _config_value(llama_config, "num_hidden_layers")
    num_attention_heads = _config_value(llama_config, "num_attention_heads")
    hidden_size = _config_value(llama_config, "hidden_size")
    num_key_value_heads = _config_value(llama_config, "num_key_value_heads") or num_attention_heads
    head_dim = _config_value(llama_config, "head_dim")
    if head_dim is None and hidden_size and num_attention_heads:
        head_dim = hidden_size // num_attention_heads

    eos = _config_value(llama_config, "eos_token_id")
    return HydraConfig(
        vocab_size=_config_value(llama_config, "vocab_size"),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        intermediate_size=_config_value(llama_config, "intermediate_size"),
        rms_norm_eps=float(_config_value(llama_config, "rms_norm_eps", 1e-6)),
        rope_theta=_rope_theta(llama_config),
        sliding_window=sliding_window,
        num_sink_tokens=num_sink_tokens,
        layer_types=["swa"] * num_hidden_layers if isinstance(num_hidden_layers, int) else None,
        tie_word_embeddings=bool(_config_value(llama_config, "tie_word_embeddings", False)),
        attention_bias=bool(_config_value(llama_config, "attention_bias", False)),
        initializer_range=float(_config_value(llama_config, "initializer_range", 0.02)),
        bos_token_id=_config_value(llama_config, "bos_token_id"),
        eos_token_id=list(eos) if isinstance(eos, (list, tuple)) else eos,
        pad_token_id=_config_value(llama_config, "pad_token_id"),
    )


def _hydra_name(llama_name: str, config: HydraConfig) -> str | None:
    """Return the HydraLM name of a Llama parameter, or None for one HydraLM does not keep."""
    if llama_name in _GLOBAL_NAMES:
        return llama_name
    if llama_name == "lm_head.weight":
        return None if config.tie_word_embeddings else llama_name
    match = _LAYER_PATTERN.match(llama_name)
    if match is None:
        raise ValueError(f"unexpected Llama parameter {llama_name!r}")
    index, suffix = int(match.group(1)), match.group(2)
    if index >= config.num_hidden_layers:
        raise ValueError(
            f"parameter {llama_name!r} names layer {index} but the config has "
            f"num_hidden_layers={config.num_hidden_layers}"
        )
    if suffix.endswith("rotary_emb.inv_freq"):
        # A buffer recomputed from rope_theta; old checkpoints saved it.
        return None
    if suffix in _LAYER_SUFFIXES:
        return llama_name
    if suffix.startswith(_ATTENTION_PREFIX):
        projection, _, kind = suffix[len(_ATTENTION_PREFIX) :].partition(".")
        if projection in _ATTENTION_SUFFIXES and (
            kind == "weight" or (kind == "bias" and config.attention_bias)
        ):
            return f"model.layers.{index}.mixer.{projection}.{kind}"
    raise ValueError(f"unexpected Llama parameter {llama_name!r}")


def hydra_state_dict_from_llama(
    state_dict: Mapping[str, torch.Tensor],
    config: HydraConfig,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Rename a Llama state dict to HydraLM's parameter names.

    Args:
        state_dict: `LlamaForCausalLM.state_dict()` (Hugging Face names and
            q/k row order).
        config: the HydraConfig built by `hydra_config_from_llama`.
        dtype: cast every tensor to this dtype; None keeps each one's dtype.

    Returns:
        A new dict; tensors are shared with `state_dict` unless cast.

    Raises:
        ValueError: an unexpected or missing parameter, or an `lm_head`
            that differs from the embeddings while the config ties them.
    """
    converted: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        target = _hydra_name(name, config)
        if target is None:
            if name == "lm_head.weight" and not torch.equal(
                tensor, state_dict["model.embed_tokens.weight"]
            ):
                raise ValueError(
                    "lm_head.weight differs from model.embed_tokens.weight but the config "
                    "has tie_word_embeddings=True; set tie_word_embeddings=False to keep both"
                )
            continue
        converted[target] = tensor if dtype is None else tensor.to(dtype)

    expected = set(_GLOBAL_NAMES)
    if not config.tie_word_embeddings:
        expected.add("lm_head.weight")
    for index in range(config.num_hidden_layers):
        expected.update(f"model.layers.{index}.{suffix}" for suffix in _LAYER_SUFFIXES)
        kinds = ("weight", "bias") if config.attention_bias else ("weight",)
        expected.update(
            f"model.layers.{index}.mixer.{projection}.{kind}"
            for projection in _ATTENTION_SUFFIXES
            for kind in kinds
        )
    missing = sorted(expected - set(converted))
    if missing:
        listed = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(f"the Llama state dict lacks {len(missing)} parameter(s): {listed}")
    return converted


def hydra_from_llama(
    llama_model: Any,
    *,
    sliding_window: int = 2048,
    num_sink_tokens: int = 4,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Build a HydraLM with all-"swa" layers from a transformers `LlamaForCausalLM`.

    Returns:
        A `HydraLM` in eval mode on the CPU, in `dtype`.
    """
    config = hydra_config_from_llama(
        llama_model.config, sliding_window=sliding_window, num_sink_tokens=num_sink_tokens
    )
    state_dict = hydra_state_dict_from_llama(llama_model.state_dict(), config, dtype=dtype)
    return build_hydra_lm(config, state_dict)


def build_hydra_lm(config: HydraConfig, state_dict: Mapping[str, torch.Tensor]) -> Any:
    """Create a `HydraLM` for `config` holding exactly the tensors of `state_dict`.

    The model is created on the meta device, so no time goes into random
    initialisation of weights that are replaced at once, then the tensors are
    assigned. Buffers that are computed rather than loaded (RoPE inverse
    frequencies) are taken from a small CPU twin with the same layer count,
    head_dim and rope_theta.

    Raises:
        ValueError: a parameter is missing, unexpected or of the wrong shape.
    """
    from hydralm.model import HydraLM

    with torch.device("meta"):
        model = HydraLM(config)
    try:
        model.load_state_dict(dict(state_dict), strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(f"the weights do not fit a HydraLM of this config: {error}") from error
    _materialise_buffers(model, config)
    return model.eval()


def _materialise_buffers(model: torch.nn.Module, config: HydraConfig) -> None:
    """Replace meta-device buffers (computed, not loaded) with real ones."""
    meta_buffers = [name for name, buffer in model.named_buffers() if buffer.is_meta]
    if not meta_buffers:
        return
    from hydralm.model import HydraLM

    # The twin keeps every field a buffer can depend on (layer schedule,
    # head_dim, rope_theta) and shrinks the weight matrices to almost nothing.
    twin_config = dataclasses.replace(
        config,
        vocab_size=8,
        hidden_size=config.head_dim,
        num_attention_heads=1,
        num_key_value_heads=1,
        intermediate_size=1,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    reference = dict(HydraLM(twin_config).named_buffers())
    for name in meta_buffers:
        module_name, _, buffer_name = name.rpartition(".")
        module = model.get_submodule(module_name)
        buffer = getattr(module, buffer_name)
        if name not in reference or reference[name].shape != buffer.shape:
            raise NotImplementedError(
                f"buffer {name!r} of shape {tuple(buffer.shape)} cannot be rebuilt from a "
                f"small twin model; build_hydra_lm needs to learn how to compute it"
            )
        persistent = buffer_name not in module._non_persistent_buffers_set
        module.register_buffer(buffer_name, reference[name].clone(), persistent=persistent)


def load_gguf_llama(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[float], None] | None = None,
) -> tuple[Any, Any]:
    """Load a Llama GGUF through transformers: the dequantised model and its tokenizer.

    Args:
        path: the `.gguf` file.
        dtype: dtype of the dequantised weights.
        progress: called with the fraction of GGUF tensors dequantised so
            far; when given, transformers' own progress bar is not drawn.

    Returns:
        (LlamaForCausalLM in eval mode, tokenizer).

    Raises:
        FileNotFoundError: `path` does not exist.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    logger.info("loading %s through transformers (dequantising the weights)", path)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    with _gguf_tensor_progress(progress):
        model = LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    return model.eval(), tokenizer


@contextlib.contextmanager
def _gguf_tensor_progress(progress: Callable[[float], None] | None) -> Iterator[None]:
    """Route transformers' per-tensor GGUF progress to `progress` instead of a tqdm bar.

    transformers wraps its loop over GGUF tensors in the `tqdm` name of
    `transformers.modeling_gguf_pytorch_utils`; that name is swapped for the
    duration of the load. Without `progress`, or where that module has no
    such name, nothing is changed.
    """
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    if progress is None or gguf_utils is None or not hasattr(gguf_utils, "tqdm"):
        yield
        return

    def report(iterable, *args, **kwargs):
        total = len(iterable) if hasattr(iterable, "__len__") else 0
        for index, item in enumerate(iterable, start=1):
            yield item
            if total:
                progress(index / total)

    original = gguf_utils.tqdm
    gguf_utils.tqdm = report
    try:
        yield
    finally:
        gguf_utils.tqdm = original
