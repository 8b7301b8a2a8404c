"""Random ±1 value codes of memory items, derived from the item's id.

The state stores a code under each key; recall reads a vector back and
decodes it by clean-up: a dot product with the codes of the live items
(known from SQLite), scaled so that an exact key reads 1.0. Codes are
regenerated from the id with a splitmix64 hash, so they cost no storage and
are the same in every process.
"""

from __future__ import annotations

import numpy as np
import torch

FACT_SALT = 0x5EED_F0C7
PASSAGE_SALT = 0x5EED_9A55


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def item_codes(ids: np.ndarray | list[int], value_dim: int, salt: int) -> torch.Tensor:
    """Return the ±1 codes of `ids`, shape (N, value_dim), float32."""
    ids = np.asarray(ids, dtype=np.uint64).reshape(-1, 1)  # (N, 1)
    columns = np.arange(value_dim, dtype=np.uint64).reshape(1, -1)  # (1, Dv)
    with np.errstate(over="ignore"):
        x = (ids * np.uint64(value_dim) + columns) ^ np.uint64(salt)  # (N, Dv)
    bits = _splitmix64(x) >> np.uint64(63)
    return torch.from_numpy(bits.astype(np.float32) * 2.0 - 1.0)  # (N, Dv)
