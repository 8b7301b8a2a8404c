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
those rows and costs O(nnz * value_dim). These small per-item reads and
writes run in numpy on views of the torch tensors. torch ran each of them
on its intra-op thread pool. On a 2-core machine with the other core busy,
a 60-row gather then took 23 ms with two threads against 0.02 ms with one. Key weights are feature weights times
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
        df = self.df.numpy()[index].astype(np.float64)
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
        self.df.numpy()[features[0]] += 1.0
        self.live_keys += 1

    def remove_key(self, features: tuple[np.ndarray, np.ndarray]) -> None:
        """Remove a key that is no longer live from the IDF statistics."""
        df = self.df.numpy()
        index = features[0]
        df[index] = np.maximum(df[index] - 1.0, 0.0)
        self.live_keys -= 1

    def add_keys_and_write(self, features: list[tuple[np.ndarray, np.ndarray]], values: torch.Tensor) -> None:
        """Count a batch of new keys in the IDF statistics, then store `values[i]` under key i.

        This is `add_key` for every item, then `write(key, value, None)` for
        every item, batched. The keys are weighted with the IDF after the
        whole batch was counted. The updates of all items are summed in
        float64 by one sparse product, and the touched rows are rounded to
        float32 once. Writes of new keys are plain additions, so their order
        does not matter beyond float rounding. The engine applies a logged
        document in the same batches live and on replay, so replay still
        rebuilds the state bit for bit.

        Args:
            features: (index, value) of each item, as `features()` returns
                them; none may be empty.
            values: the codes to store, shape (P, value_dim).
        """
        count = len(features)
        if count == 0:
            return
        if values.shape != (count, self.value_dim):
            raise ValueError(f"values has shape {tuple(values.shape)}, expected {(count, self.value_dim)}")
        lengths = np.array([len(index) for index, _ in features], dtype=np.int64)  # (P,)
        if (lengths == 0).any():
            raise ValueError("every item needs at least one key feature")
        index = np.concatenate([index for index, _ in features])  # (nnz,)
        raw = np.concatenate([value for _, value in features])  # (nnz,)

        df_array = self.df.numpy()
        np.add.at(df_array, index, np.float32(1.0))
        self.live_keys += count

        # IDF weights and per-item unit norms, as `key` computes them.
        df = df_array[index].astype(np.float64)
        live = float(self.live_keys.item())
        weight = raw * np.log((live + 1.0) / (df + 0.5))  # (nnz,)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # (P,)
        norms = np.sqrt(np.add.reduceat(weight * weight, starts))  # (P,)
        owner = np.repeat(np.arange(count), lengths)  # (nnz,)
        weight = weight / norms[owner]

        # delta = K^T V over the touched rows only: K is the (rows, P) sparse key matrix.
        rows, inverse = np.unique(index, return_inverse=True)  # (R,), (nnz,)
        keys = torch.sparse_coo_tensor(
            torch.from_numpy(np.stack([inverse, owner])), torch.from_numpy(weight), (len(rows), count),
            check_invariants=False,
        )  # (R, P)
        # In place, so that at most two (R, V) float64 arrays exist at once.
        updated = torch.sparse.mm(keys, values.double()).numpy()  # (R, V)
        matrix = self.matrix.numpy()
        updated += matrix[rows]
        matrix[rows] = updated  # (R, V), rounded to float32
        del updated

    # Reads and writes ---------------------------------------------------------

    def read(self, key: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Return S^T k, shape (value_dim,), float64."""
        index, weight = key[0].numpy(), key[1].numpy()
        rows = self.matrix.numpy()[index].astype(np.float64)  # (n, V)
        return torch.from_numpy((weight[:, None] * rows).sum(axis=0))  # (V,)

    @torch.no_grad()
    def erase(self, key: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Write the zero vector under the unit `key` with the plain delta rule."""
        index, weight = key[0].numpy(), key[1].numpy()
        matrix = self.matrix.numpy()
        rows = matrix[index].astype(np.float64)  # (n, V)
        readout = (weight[:, None] * rows).sum(axis=0)  # (V,)
        matrix[index] = (rows - weight[:, None] * readout[None, :]).astype(np.float32)  # (n, V)

    @torch.no_grad()
    def write(self, key: tuple[torch.Tensor, torch.Tensor], value: torch.Tensor, previous: torch.Tensor | None) -> None:
        """Store `value` (shape (value_dim,)) under the unit `key`, replacing the code `previous`.

        Args:
            previous: the code stored under this key before (shape
                (value_dim,)), or None for a new key.
        """
        index, weight = key[0].numpy(), key[1].numpy()
        matrix = self.matrix.numpy()
        rows = matrix[index].astype(np.float64)  # (n, V)
        error = value.numpy().astype(np.float64)  # (V,)
        if previous is not None and bool(previous.any()):
            previous = previous.numpy().astype(np.float64)  # (V,)
            readout = (weight[:, None] * rows).sum(axis=0)  # (V,)
            error = error - (readout @ previous / (previous @ previous)) * previous
        matrix[index] = (rows + weight[:, None] * error[None, :]).astype(np.float32)  # (n, V)
