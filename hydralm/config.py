"""HydraConfig: the typed configuration of a HydraLM model."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

LAYER_TYPES = ("deltanet", "swa")

# Fields that change the shape or meaning of the weights or of the inference
# state. A saved state records a hash of them and is rejected by a model whose
# hash differs. Token ids, the init scale and the kernel chunk size do not
# change what a state means, so they are left out.
_ARCHITECTURE_FIELDS = (
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
    "layer_types",
    "conv_size",
    "tie_word_embeddings",
    "attention_bias",
)


def default_layer_types(num_hidden_layers: int) -> list[str]:
    """Return the default schedule: one "swa" layer after every three "deltanet" layers."""
    pattern = ["deltanet", "deltanet", "deltanet", "swa"]
    return [pattern[i % len(pattern)] for i in range(num_hidden_layers)]


@dataclass
class HydraConfig:
    """Configuration of a HydraLM model, with transformers' field names.

    The defaults describe a small model that runs quickly on a CPU. Gated
    DeltaNet layers use `num_attention_heads` heads of `head_dim` for q, k and
    v; sliding-window attention layers use grouped-query attention with
    `num_key_value_heads` key/value heads.
    """

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
    layer_types: list[str] | None = None
    conv_size: int = 4
    chunk_size: int = 64
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0

    def __post_init__(self) -> None:
        # Derived fields are filled once, then everything is checked.
        if self.head_dim is None and _is_int(self.hidden_size) and _is_int(self.num_attention_heads):
            if self.num_attention_heads > 0 and self.hidden_size % self.num_attention_heads == 0:
                self.head_dim = self.hidden_size // self.num_attention_heads
        if self.layer_types is None and _is_int(self.num_hidden_layers) and self.num_hidden_layers > 0:
            self.layer_types = default_layer_types(self.num_hidden_layers)
        elif isinstance(self.layer_types, tuple):
            self.layer_types = list(self.layer_types)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field, its value and the fix."""
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "conv_size",
            "chunk_size",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        if self.head_dim is None:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}; choose a head count that "
                f"divides hidden_size or set head_dim explicitly"
            )
        if not _is_int(self.head_dim) or self.head_dim < 1:
            raise ValueError(f"head_dim must be a positive integer, got {self.head_dim!r}")
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_key_value_heads={self.num_key_value_heads} must divide "
                f"num_attention_heads={self.num_attention_heads}; pick a divisor such as "
                f"{_divisors(self.num_attention_heads)}"
            )

        if not _is_int(self.sliding_window) or self.sliding_window < 1:
            raise ValueError(
                f"sliding_window must be an integer >= 1, got {self.sliding_window!r}"
            )
        if not _is_int(self.num_sink_tokens) or self.num_sink_tokens < 0:
            raise ValueError(
                f"num_sink_tokens must be an integer >= 0, got {self.num_sink_tokens!r}"
            )
        if not isinstance(self.rms_norm_eps, (int, float)) or not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps must be a positive number, got {self.rms_norm_eps!r}")
        if not isinstance(self.rope_theta, (int, float)) or not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be a positive number, got {self.rope_theta!r}")
        if not isinstance(self.initializer_range, (int, float)) or self.initializer_range < 0:
            raise ValueError(
                f"initializer_range must be a number >= 0, got {self.initializer_range!r}"
            )

        if not isinstance(self.layer_types, list):
            raise ValueError(
                f"layer_types must be a list of {LAYER_TYPES}, got {self.layer_types!r}"
            )
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers="
                f"{self.num_hidden_layers}; give one type per layer"
            )
        for index, layer_type in enumerate(self.layer_types):
            if layer_type not in LAYER_TYPES:
                raise ValueError(
                    f"layer_types[{index}]={layer_type!r} is not a known layer type; "
                    f"use one of {LAYER_TYPES}"
                )

        for name in ("bos_token_id", "pad_token_id"):
            self._check_token_id(name, getattr(self, name))
        eos = self.eos_token_id
        for token_id in eos if isinstance(eos, list) else [eos]:
            self._check_token_id("eos_token_id", token_id)

    def _check_token_id(self, name: str, token_id: Any) -> None:
        if token_id is None:
            return
        if not _is_int(token_id) or not 0 <= token_id < self.vocab_size:
            raise ValueError(
                f"{name}={token_id!r} is outside the vocabulary [0, {self.vocab_size}); "
                f"use an id below vocab_size or None"
            )

    @property
    def num_key_value_groups(self) -> int:
        """Query heads per key/value head in sliding-window attention."""
        return self.num_attention_heads // self.num_key_value_heads

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HydraConfig:
        """Build a config from a dict; unknown keys raise ValueError."""
        if not isinstance(data, dict):
            raise ValueError(f"a HydraConfig is built from a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown HydraConfig field(s) {unknown}; valid fields are {sorted(known)}"
            )
        return cls(**data)

    def to_json(self) -> str:
        """Serialise the config as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HydraConfig:
        """Parse a config from JSON text produced by `to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"invalid HydraConfig JSON: {error}") from error
        return cls.from_dict(data)

    def fingerprint(self) -> str:
        """Return a short hash of the architecture fields, stored with saved states."""
        data = {name: getattr(self, name) for name in _ARCHITECTURE_FIELDS}
        text = json.dumps(data, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def smollm2_135m(cls) -> HydraConfig:
        """Return the SmolLM2-135M architecture with every layer as sliding-window attention."""
        return cls(
            vocab_size=49152,
            hidden_size=576,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            head_dim=64,
            intermediate_size=1536,
            rms_norm_eps=1e-5,
            rope_theta=100000.0,
            sliding_window=2048,
            num_sink_tokens=4,
            layer_types=["swa"] * 30,
            tie_word_embeddings=True,
            attention_bias=False,
            initializer_range=0.041666666666666664,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _divisors(number: int) -> list[int]:
    return [d for d in range(1, number + 1) if number % d == 0]
