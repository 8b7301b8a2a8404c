"""HydraState: every layer's constant-size inference state in one object."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from hydralm.config import HydraConfig
from hydralm.layers.gated_deltanet import DeltaNetLayerState
from hydralm.layers.sliding_window import SWALayerState

logger = logging.getLogger(__name__)

STATE_FORMAT = "hydralm-state"
# Version 2 caches sliding-window keys already rotated (version 1 kept them
# unrotated), so a version 1 file cannot be read as version 2.
STATE_FORMAT_VERSION = "2"

LayerState = DeltaNetLayerState | SWALayerState


def _dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def layer_state_shapes(config: HydraConfig, layer_type: str, batch_size: int) -> dict[str, tuple[int, ...]]:
    """Return the tensor shapes of one layer's state for `batch_size` sequences."""
    B, D = batch_size, config.head_dim
    if layer_type == "deltanet":
        H = config.num_attention_heads
        conv = (B, H * D, config.conv_size - 1)
        return {"recurrent": (B, H, D, D), "q_conv": conv, "k_conv": conv, "v_conv": conv}
    sinks = (B, config.num_key_value_heads, config.num_sink_tokens, D)
    window = (B, config.num_key_value_heads, config.sliding_window, D)
    return {"sink_keys": sinks, "sink_values": sinks, "window_keys": window, "window_values": window}


def state_bytes(config: HydraConfig, batch_size: int = 1, dtype: torch.dtype = torch.float32) -> int:
    """Return the exact size in bytes of a HydraState, computed from the config alone.

    DeltaNet matrices are float32 whatever `dtype` is; conv tails and SWA
    caches use `dtype`; the position is one int64 per sequence. The size does
    not depend on how many tokens were streamed.
    """
    element = _dtype_bytes(dtype)
    total = batch_size * 8
    for layer_type in config.layer_types:
        for name, shape in layer_state_shapes(config, layer_type, batch_size).items():
            count = 1
            for size in shape:
                count *= size
            total += count * (4 if name == "recurrent" else element)
    return total


class HydraState:
    """Inference state of a whole HydraLM: per-layer tensors plus the position.

    Attributes:
        layers: one DeltaNetLayerState or SWALayerState per layer.
        position: (B,) int64 real tokens read so far by each sequence.
        config_fingerprint: `HydraConfig.fingerprint()` of the model that made it.

    A model updates a state functionally: it returns a new HydraState and
    never writes into the tensors of the one it was given.
    """

    def __init__(self, layers: list[LayerState], position: torch.Tensor, config_fingerprint: str) -> None:
        self.layers = list(layers)
        self.position = position
        self.config_fingerprint = config_fingerprint

    @property
    def batch_size(self) -> int:
        return self.position.shape[0]

    @property
    def device(self) -> torch.device:
        return self.position.device

    @property
    def layer_types(self) -> list[str]:
        return ["deltanet" if isinstance(layer, DeltaNetLayerState) else "swa" for layer in self.layers]

    def tensors(self) -> dict[str, torch.Tensor]:
        """Return every tensor under a flat name, as stored by `save`."""
        named = {"position": self.position}
        for index, layer in enumerate(self.layers):
            for name, tensor in layer.tensors().items():
                named[f"layers.{index}.{name}"] = tensor
        return named

    def nbytes(self) -> int:
        """Return the bytes held by the state's tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def _map(self, function) -> HydraState:
        layers = []
        for layer in self.layers:
            mapped = {name: function(name, tensor) for name, tensor in layer.tensors().items()}
            layers.append(type(layer)(**mapped))
        return HydraState(layers, function("position", self.position), self.config_fingerprint)

    def clone(self) -> HydraState:
        return self._map(lambda name, t: t.clone())

    def detach(self) -> HydraState:
        return self._map(lambda name, t: t.detach())

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> HydraState:
        """Move the state; `dtype` applies to the caches, never to the float32 matrices or the position."""

        def convert(name: str, tensor: torch.Tensor) -> torch.Tensor:
            if dtype is not None and name not in ("recurrent", "position"):
                tensor = tensor.to(dtype)
            return tensor.to(device) if device is not None else tensor

        return self._map(convert)

    def select(self, indices: torch.Tensor | list[int]) -> HydraState:
        """Return the state of the sequences at `indices` along the batch."""
        index = torch.as_tensor(indices, dtype=torch.long, device=self.device)
        return self._map(lambda name, t: t.index_select(0, index))

    def save(self, path: str | Path) -> None:
        """Write the state to a safetensors file with the config fingerprint in its metadata."""
        path = Path(path)
        tensors = {name: t.detach().contiguous().cpu() for name, t in self.tensors().items()}
        metadata = {
            "format": STATE_FORMAT,
            "version": STATE_FORMAT_VERSION,
            "config_fingerprint": self.config_fingerprint,
            "layer_types": json.dumps(self.layer_types),
        }
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path, config: HydraConfig, device: torch.device | str | None = None) -> HydraState:
        """Read a state written by `save` and check it belongs to `config`.

        Raises:
            FileNotFoundError: `path` does not exist.
            ValueError: the file is not a HydraLM state, or was made by a model
                with another config, or its tensors have the wrong shapes.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"state file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path), device=str(device) if device is not None else "cpu")
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"{path} is not a readable safetensors state file: {error}") from error
        if metadata.get("format") != STATE_FORMAT:
            raise ValueError(f"{path} is not a HydraLM state file (metadata format={metadata.get('format')!r})")
        if metadata.get("version") != STATE_FORMAT_VERSION:
            raise ValueError(
                f"{path} has state format version {metadata.get('version')!r}; "
                f"this version of hydralm reads version {STATE_FORMAT_VERSION}"
            )
        expected = config.fingerprint()
        if metadata.get("config_fingerprint") != expected:
            raise ValueError(
                f"{path} was saved by a model with config fingerprint "
                f"{metadata.get('config_fingerprint')!r}, but this model's is {expected!r}; "
                f"load it with the config it was made with"
            )
        return cls.from_tensors(tensors, config, source=str(path))

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], config: HydraConfig, source: str = "state") -> HydraState:
        """Build a state from flat tensors named as in `tensors()`, checking every shape."""
        position = tensors.get("position")
        if position is None or position.dim() != 1 or position.dtype != torch.int64:
            raise ValueError(f"{source}: 'position' must be a 1-D int64 tensor")
        batch_size = position.shape[0]
        layers: list[LayerState] = []
        for index, layer_type in enumerate(config.layer_types):
            fields = {}
            for name, shape in layer_state_shapes(config, layer_type, batch_size).items():
                key = f"layers.{index}.{name}"
                if key not in tensors:
                    raise ValueError(f"{source}: tensor {key!r} is missing for a {layer_type!r} layer")
                if tuple(tensors[key].shape) != shape:
                    raise ValueError(
                        f"{source}: tensor {key!r} has shape {tuple(tensors[key].shape)}, expected {shape}"
                    )
                fields[name] = tensors[key]
            layers.append(DeltaNetLayerState(**fields) if layer_type == "deltanet" else SWALayerState(**fields))
        expected_keys = 1 + sum(len(layer.tensors()) for layer in layers)
        if len(tensors) != expected_keys:
            extra = sorted(set(tensors) - set(cls(layers, position, "").tensors()))
            raise ValueError(f"{source}: unexpected tensors {extra} for this config")
        return cls(layers, position, config.fingerprint())

    def __repr__(self) -> str:
        return (
            f"HydraState(batch_size={self.batch_size}, layers={len(self.layers)}, "
            f"position={self.position.tolist()}, nbytes={self.nbytes()})"
        )
