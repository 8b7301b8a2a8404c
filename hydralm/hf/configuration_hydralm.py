"""HydraLMConfig: HydraConfig as a transformers ``PreTrainedConfig``."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from hydralm.config import HydraConfig

__all__ = ["HydraLMConfig"]


@strict
class HydraLMConfig(PreTrainedConfig):
    """transformers configuration of a HydraLM model (``model_type = "hydralm"``).

    The fields are HydraConfig's, with one exception: the per-layer mixer
    schedule is stored as ``mixer_types`` because transformers (5.x) checks
    any ``layer_types`` attribute against its own names (``full_attention``,
    ``linear_attention``, ...), which ``"deltanet"`` and ``"swa"`` are not.
    ``layer_types=`` is still accepted as a keyword and stored as
    ``mixer_types``. ``to_hydra_config`` and ``from_hydra_config`` convert
    both ways; HydraConfig's own validation runs on every HydraLMConfig.
    """

    model_type = "hydralm"

    vocab_size: int = 256
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int | None = None
    intermediate_size: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    sliding_window: int = 256
    num_sink_tokens: int = 4
    mixer_types: list[str] | None = None
    conv_size: int = 4
    chunk_size: int = 64
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0
    use_cache: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        layer_types = kwargs.pop("layer_types", None)
        if layer_types is not None:
            if self.mixer_types is not None and list(self.mixer_types) != list(layer_types):
                raise ValueError(
                    f"layer_types={layer_types} and mixer_types={self.mixer_types} disagree; pass only one of them"
                )
            self.mixer_types = list(layer_types)

        # HydraConfig fills head_dim and the default schedule and raises
        # ValueError naming any invalid field.
        hydra_config = HydraConfig(**self._hydra_fields())
        self.head_dim = hydra_config.head_dim
        self.mixer_types = list(hydra_config.layer_types)
        super().__post_init__(**kwargs)

    def _hydra_fields(self) -> dict[str, Any]:
        fields = {name: getattr(self, name) for name in _SHARED_FIELDS}
        fields["layer_types"] = None if self.mixer_types is None else list(self.mixer_types)
        return fields

    def to_hydra_config(self) -> HydraConfig:
        """Return the equivalent HydraConfig."""
        return HydraConfig(**self._hydra_fields())

    @classmethod
    def from_hydra_config(cls, config: HydraConfig, **kwargs: Any) -> HydraLMConfig:
        """Build the transformers config of ``config``; ``kwargs`` set extra PreTrainedConfig fields."""
        if not isinstance(config, HydraConfig):
            raise ValueError(f"from_hydra_config needs a HydraConfig, got {type(config).__name__}")
        fields = {name: getattr(config, name) for name in _SHARED_FIELDS}
        return cls(mixer_types=list(config.layer_types), **fields, **kwargs)


# Every HydraConfig field except layer_types, which is stored as mixer_types.
_SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "rms_norm_eps",
    "rope_theta",
    "sliding_window",
    "num_sink_tokens",
    "conv_size",
    "chunk_size",
    "tie_word_embeddings",
    "attention_bias",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
