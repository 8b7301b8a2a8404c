"""One constant-size delta-rule memory: a key-value matrix and its IDF counts.

The matrix `S` has shape (key_dim, value_dim). Every write is a delta-rule
update under a unit key `k`, S <- S + k (v - v_hat)^T, with one of two
estimates `v_hat` of what `k` reads now:

- `erase` (forget): v = 0 and v_hat = S^T k, the plain delta rule, so
  afterwards S^T k == 0 exactly. Everything the key read is removed, the
  crosstalk of similar items included, so a question about a forgotten
  subject reads almost nothing and is answered "unknown".
- `write` (teach, overwrite, passage): v_hat is S^T k cleaned up against the
  code of the value the key held before (known from the log): its
  projection on that code, or zero for a new key. The old association is
  replaced, but the crosstalk that `k` shares with other items' keys is left
  alone. The plain delta rule would subtract that crosstalk as well, which
  moves every shared feature (a person's name, a template word) over to the
  newest item: on the evaluation facts that drops top-1 recall from 0.96 to
  0.87 (see docs/memory.md).

Keys are sparse (a few hundred of `key_dim` slots), so a write touches only
those rows and costs O(nnz * value_dim). Key weights are feature weights times
an IDF factor, log((N + 1) / (df + 0.5)), where `df` counts, per slot, the
live keys that use it and N the live keys. Both counts live in the state, so
the state stays the same size however many items are written. A query slot
that no live key uses (df == 0) gets weight zero, because its rows hold
nothing but hash collisions.
"""

from __future__ import annotations

import numpy as np
import torch

from app.memory.features import FeatureWeights, hashed_features


class DeltaRulePartition:
    """A key-value matrix written with the delta rule, plus its key statistics.

    Args:
        key_dim: number of hashed key slots (rows of the matrix).
        value_dim: length of the value codes (columns).
        weights: feature weights used to build keys for this partition.
    """

    def __init__(self, key_dim: int, value_dim: int, weights: FeatureWeights):
        if key_dim <= 0 or value_dim <= 0:
            raise ValueError(f"key_dim and value_dim must be positive, got {key_dim} and {value_dim}")
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.weights = weights
        self.matrix = torch.zeros(key_dim, value_dim, dtype=torch.float32)  # (K, V)
        self.df = torch.zeros(key_dim, dtype=torch.float32)  # (K,)
        self.live_keys = torch.zeros(1, dtype=torch.int64)

    # Persistence --------------------------------------------------------------

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """Return the partition's tensors under names starting with `prefix`."""
        return {f"{prefix}.matrix": self.matrix, f"{prefix}.df": self.df, f"{prefix}.live_keys": self.live_keys}

    def load_tensors(self, tensors: dict[str, torch.Tensor], prefix: str) -> None:
        """Copy the tensors saved by `tensors(prefix)` into this partition.

        Raises:
            KeyError: a tensor is missing.
            ValueError: a tensor has another shape than this partition's.
        """
        for name, target in self.tensors(prefix).items():
            source = tensors[name]
            if source.shape != target.shape or source.dtype != target.dtype:
                raise ValueError(
                    f"{name} has shape {tuple(source.shape)} {source.dtype}, "
                    f"expected {tuple(target.shape)} {target.dtype}"
                )
        self.matrix = tensors[f"{prefix}.matrix"].clone()
        self.df = tensors[f"{prefix}.df"].clone()
        self.live_keys = tensors[f"{prefix}.live_keys"].clone()

    def nbytes(self) -> int:
        """Bytes held by the state tensors (independent of the number of items)."""
        return sum(t.numel() * t.element_size() for t in self.tensors("").values())

    # Keys ---------------------------------------------------------------------

    def features(self, text: str, semantic_buckets: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return the raw hashed features (index, signed weight) of `text` and its semantic buckets."""
        return hashed_features(text, self.key_dim, self.weights, semantic_buckets)

    def key(self, features: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Weight `features` by IDF and normalise them into a unit key.

        Returns:
            (index (n,) int64, weight (n,) float64), or None when no slot of
            the text is used by any live key.
        """
        index, value = features
        df = self.df[torch.from_numpy(index)].double().numpy()
        live = float(self.live_keys.item())
        idf = np.where(df > 0, np.log((live + 1.0) / (df + 0.5)), 0.0)
        weight = value * idf
        keep = weight != 0.0
        index, weight = index[keep], weight[keep]
        norm = float(np.sqrt(np.sum(weight * weight)))
        if norm == 0.0:
            return None
        return torch.from_numpy(index), torch.from_numpy(weight / norm)

    def add_key(self, features: tuple[np.ndarray, np.ndarray]) -> None:
        """Count a new live key in the IDF statistics."""
        self.df[torch.from_numpy(features[0])] += 1.0
        self.live_keys += 1

    def remove_key(self, features: tuple[np.ndarray, np.ndarray]) -> None:
        """Remove a key that is no longer live from the IDF statistics."""
        index = torch.from_numpy(features[0])
        self.df[index] = torch.clamp(self.df[index] - 1.0, min=0.0)
        self.live_keys -= 1

    # Reads and writes ---------------------------------------------------------

    def read(self, key: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Return S^T k, shape (value_dim,), float64."""
        index, weight = key
        rows = self.matrix[index].double()  # (n, V)
        return (weight[:, None] * rows).sum(dim=0)  # (V,)

    @torch.no_grad()
    def erase(self, key: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Write the zero vector under the unit `key` with the plain delta rule."""
        index, weight = key
        rows = self.matrix[index].double()  # (n, V)
        readout = (weight[:, None] * rows).sum(dim=0)  # (V,)
        self.matrix[index] = (rows - weight[:, None] * readout[None, :]).float()  # (n, V)

    @torch.no_grad()
    def write(self, key: tuple[torch.Tensor, torch.Tensor], value: torch.Tensor, previous: torch.Tensor | None) -> None:
        """Store `value` (shape (value_dim,)) under the unit `key`, replacing the code `previous`.

        Args:
            previous: the code stored under this key before (shape
                (value_dim,)), or None for a new key.
        """
        index, weight = key
        rows = self.matrix[index].double()  # (n, V)
        error = value.double()  # (V,)
        if previous is not None and bool(previous.any()):
            previous = previous.double()  # (V,)
            readout = (weight[:, None] * rows).sum(dim=0)  # (V,)
            error = error - (readout @ previous / (previous @ previous)) * previous
        self.matrix[index] = (rows + weight[:, None] * error[None, :]).float()  # (n, V)
