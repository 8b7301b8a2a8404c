"""The delta rule used directly as a zero-gradient key-value memory.

A fact bank stores facts as key-value associations in one matrix per head,
``S (K, V)``, and reads them back as ``S^T k``. A write is the delta rule
(the Widrow-Hoff rule that Gated DeltaNet layers also apply per token)::

    S <- S + beta * k (v - S^T k)^T        with k L2-normalised

With ``beta = 1`` a write sets the recall of ``k`` to exactly ``v``, so
writing a new value under an old key overwrites it, and writing the zero
vector forgets it. Every write runs under ``torch.no_grad()``: the state never
carries an autograd graph, and its size never depends on how many facts were
written.

Batched writes are vectorised with the UT transform that chunkwise DeltaNet
kernels use: for a chunk of ``C`` keys the sequential recurrence is equivalent
to one unit lower-triangular solve::

    (I + diag(beta) tril(K K^T, -1)) U = diag(beta) (V - K S)
    S <- S + K^T U

which gives the same state as writing the ``C`` facts one at a time (the loop
form ``delta_rule_write_loop`` is kept beside it as the reference).

Heads. The delta rule is rotation-equivariant: writing ``(Q_k k, Q_v v)`` for
orthogonal ``Q_k``, ``Q_v`` gives the state ``Q_k S Q_v^T``, whose recall of
``Q_k q`` is ``Q_v S^T q``. Heads that each see a random rotation of the same
facts therefore recall identically and only multiply the memory. The heads
here instead partition the facts: a fixed random projection routes each key
to one head (the head whose routing vector has the largest dot product with
the key), so each head stores about ``N / H`` facts and interference between
facts drops. On 1000 random Gaussian facts at d = 1024 (float32, seed 0),
one head recalls with mean cosine 0.68 and an overwrite margin of 0.55, four
routed heads with 0.93 and 0.81, at four times the state bytes; the test file
``tests/test_fact_bank.py`` checks this gain. Splitting the key into disjoint
feature slices, one per head, did worse than one head (mean cosine 0.25 to
0.38 in the same setting), so it is not offered.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "FactBank",
    "RecallReport",
    "cosine_margin",
    "delta_rule_write",
    "delta_rule_write_loop",
    "evaluate_recall",
    "top1_accuracy",
]

_FORMAT_VERSION = "1"


# ---------------------------------------------------------------------------
# The delta rule on one state matrix
# ---------------------------------------------------------------------------


def delta_rule_write_loop(
    state: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    """Write facts one at a time with the delta rule (the reference form).

    Args:
        state: ``(K, V)`` memory matrix.
        keys: ``(N, K)`` unit-norm keys.
        values: ``(N, V)`` values.
        beta: write strength.

    Returns:
        The new ``(K, V)`` state; the input is not modified.
    """
    state = state.clone()
    for k, v in zip(keys, values):
        error = v - state.T @ k  # (V,)
        state += beta * torch.outer(k, error)  # (K, V)
    return state


def delta_rule_write(
    state: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    beta: float = 1.0,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Write facts with the delta rule, ``chunk_size`` facts per triangular solve.

    Gives the same state as ``delta_rule_write_loop`` (up to float rounding)
    because the solve is the sequential recurrence written in matrix form.

    Args:
        state: ``(K, V)`` memory matrix.
        keys: ``(N, K)`` unit-norm keys.
        values: ``(N, V)`` values.
        beta: write strength.
        chunk_size: facts per solve; the solve costs ``O(chunk_size^2)`` memory.

    Returns:
        The new ``(K, V)`` state; the input is not modified.
    """
    for start in range(0, keys.shape[0], chunk_size):
        k = keys[start : start + chunk_size]  # (C, K)
        v = values[start : start + chunk_size]  # (C, V)
        C = k.shape[0]

        # Row t of U is beta_t (v_t - S_{t-1}^T k_t), where S_{t-1} already
        # contains rows 0..t-1 of this chunk: that dependence is the strictly
        # lower triangle of K K^T.
        interactions = torch.tril(k @ k.T, diagonal=-1) * beta  # (C, C)
        system = interactions + torch.eye(C, dtype=k.dtype, device=k.device)  # (C, C)
        residual = beta * (v - k @ state)  # (C, V)
        update = torch.linalg.solve_triangular(system, residual, upper=False, unitriangular=True)  # (C, V)

        state = state + k.T @ update  # (K, V)
    return state


# ---------------------------------------------------------------------------
# Retrieval metrics
# ---------------------------------------------------------------------------


def top1_accuracy(recalled: torch.Tensor, codebook: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of recalled vectors whose nearest codebook row (by cosine) is the target.

    Args:
        recalled: ``(N, V)`` vectors read from memory.
        codebook: ``(M, V)`` candidate values.
        targets: ``(N,)`` index of the correct codebook row for each recalled vector.
    """
    if recalled.ndim != 2 or codebook.ndim != 2 or recalled.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"recalled {tuple(recalled.shape)} and codebook {tuple(codebook.shape)} must be "
            "(N, V) and (M, V) with the same V"
        )
    if targets.shape != (recalled.shape[0],):
        raise ValueError(f"targets has shape {tuple(targets.shape)}, expected ({recalled.shape[0]},)")
    if recalled.shape[0] == 0:
        raise ValueError("recalled is empty: top-1 accuracy needs at least one vector")

    similarity = F.normalize(recalled.float(), dim=-1) @ F.normalize(codebook.float(), dim=-1).T  # (N, M)
    hits = similarity.argmax(dim=-1) == targets.to(similarity.device)
    return hits.float().mean().item()


def cosine_margin(recalled: torch.Tensor, new_values: torch.Tensor, old_values: torch.Tensor) -> torch.Tensor:
    """Per-fact ``cos(recalled, new) - cos(recalled, old)``: ``(N,)``.

    After an overwrite a working memory gives a margin near 1; a memory that
    ignored the overwrite gives a margin near -1.
    """
    if not (recalled.shape == new_values.shape == old_values.shape) or recalled.ndim != 2:
        raise ValueError(
            f"recalled {tuple(recalled.shape)}, new_values {tuple(new_values.shape)} and "
            f"old_values {tuple(old_values.shape)} must all be the same (N, V) shape"
        )
    recalled = recalled.float()
    cos_new = F.cosine_similarity(recalled, new_values.float(), dim=-1)  # (N,)
    cos_old = F.cosine_similarity(recalled, old_values.float(), dim=-1)  # (N,)
    return cos_new - cos_old


@dataclass(frozen=True)
class RecallReport:
    """Retrieval quality of a set of stored facts.

    Attributes:
        top1: fraction of facts whose recall is nearest (cosine) to its own value.
        mean_cosine: mean cosine between each recall and its own value.
        min_cosine: the worst such cosine.
        mean_margin: mean of (cosine to own value - largest cosine to any other value).
        min_margin: the worst such margin; positive means every fact is top-1.
        num_facts: number of facts evaluated.
    """

    top1: float
    mean_cosine: float
    min_cosine: float
    mean_margin: float
    min_margin: float
    num_facts: int


def evaluate_recall(bank: FactBank, keys: torch.Tensor, values: torch.Tensor) -> RecallReport:
    """Recall ``keys`` from ``bank`` and score them against ``values`` as the codebook.

    Args:
        bank: the memory to read.
        keys: ``(N, K)`` stored keys.
        values: ``(N, V)`` their expected values; every other row is a distractor.
    """
    if keys.ndim != 2 or values.ndim != 2 or keys.shape[0] != values.shape[0]:
        raise ValueError(
            f"keys {tuple(keys.shape)} and values {tuple(values.shape)} must be (N, K) and (N, V) "
            "with the same N"
        )
    if keys.shape[0] < 2:
        raise ValueError(f"evaluate_recall needs at least 2 facts for a codebook, got {keys.shape[0]}")

    recalled = bank.recall(keys).float()  # (N, V)
    similarity = F.normalize(recalled, dim=-1) @ F.normalize(values.float().to(recalled.device), dim=-1).T  # (N, N)
    own = similarity.diagonal()  # (N,)
    others = similarity.clone()
    others.fill_diagonal_(-math.inf)
    margin = own - others.max(dim=-1).values  # (N,)
    top1 = (similarity.argmax(dim=-1) == torch.arange(len(own), device=own.device)).float().mean()
    return RecallReport(
        top1=top1.item(),
        mean_cosine=own.mean().item(),
        min_cosine=own.min().item(),
        mean_margin=margin.mean().item(),
        min_margin=margin.min().item(),
        num_facts=int(keys.shape[0]),
    )


# ---------------------------------------------------------------------------
# The fact bank
# ---------------------------------------------------------------------------


class FactBank:
    """A constant-size key-value memory written with the delta rule.

    The state is ``(num_heads, key_dim, value_dim)``. Keys are L2-normalised
    before every write and read, so only their direction matters. With
    ``num_heads > 1`` a fixed random projection (drawn from ``seed``) routes
    each key to one head, so equal keys always reach the same head.

    NOTE: routing is a hard choice per query, so a query that is not exactly
    a stored key can reach another head and read noise. With 4 heads at
    d = 1024, a query at cosine 0.99 from its key reaches the key's head 92%
    of the time, at cosine 0.9 only 75%. Use one head for noisy queries.

    Args:
        key_dim: K, the length of every key.
        value_dim: V, the length of every value.
        num_heads: H, the number of state matrices that facts are routed over.
        beta: write strength in (0, 2); 1 makes a write exact for its own key.
        chunk_size: facts per triangular solve in batched writes.
        seed: seed of the routing projection.
        dtype: floating dtype of the state.
        device: device of the state.

    Example::

        bank = FactBank(key_dim=64, value_dim=64)
        bank.memorize(keys, values)        # keys (N, 64), values (N, 64)
        bank.recall(keys)                  # (N, 64), close to values
        bank.forget(keys[:1])              # recall of keys[0] is now ~0
    """

    def __init__(
        self,
        key_dim: int,
        value_dim: int,
        num_heads: int = 1,
        *,
        beta: float = 1.0,
        chunk_size: int = 64,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        for name, value in (("key_dim", key_dim), ("value_dim", value_dim), ("num_heads", num_heads),
                            ("chunk_size", chunk_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(beta, (int, float)) or not 0.0 < beta < 2.0:
            raise ValueError(f"beta must be in (0, 2) for the delta rule to stay stable, got {beta!r}")
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")

        self.key_dim = key_dim
        self.value_dim = value_dim
        self.num_heads = num_heads
        self.beta = float(beta)
        self.chunk_size = chunk_size
        self.seed = seed
        self.num_writes = 0

        self.state = torch.zeros(num_heads, key_dim, value_dim, dtype=dtype, device=device)  # (H, K, V)

        # The routing vectors are drawn on the CPU from their own generator so
        # that the same seed routes the same way on every device.
        generator = torch.Generator().manual_seed(seed)
        router = torch.randn(num_heads, key_dim, generator=generator, dtype=torch.float64)  # (H, K)
        self._router = router.to(dtype=torch.float32, device=self.state.device)

    # -- properties ---------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.state.dtype

    @property
    def device(self) -> torch.device:
        return self.state.device

    def state_bytes(self) -> int:
        """Bytes of the memory state; independent of how many facts were written."""
        return self.state.numel() * self.state.element_size()

    # -- input checks -------------------------------------------------------

    def _check(self, name: str, tensor: torch.Tensor, width: int) -> tuple[torch.Tensor, bool]:
        """Validate ``(N, width)`` or ``(width,)`` input; return it as 2-D and whether it was 1-D."""
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got dtype {tensor.dtype}")
        squeeze = tensor.ndim == 1
        if squeeze:
            tensor = tensor.unsqueeze(0)
        if tensor.ndim != 2 or tensor.shape[1] != width:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected (N, {width}) or ({width},)")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{name} contains NaN or infinite entries")
        return tensor.to(device=self.device, dtype=self.dtype), squeeze

    def _normalize_keys(self, keys: torch.Tensor) -> torch.Tensor:
        # Half-precision norms are taken in float32; float64 keys keep float64.
        norms = keys.to(torch.promote_types(keys.dtype, torch.float32)).norm(dim=-1)  # (N,)
        zero = (norms == 0).nonzero().flatten()
        if len(zero):
            raise ValueError(
                f"keys at rows {zero[:5].tolist()} have zero norm; a key needs a direction to be stored"
            )
        return keys / norms.to(keys.dtype).unsqueeze(-1)  # (N, K)

    # -- routing ------------------------------------------------------------

    def head_index(self, keys: torch.Tensor) -> torch.Tensor:
        """Head that stores each key: ``(N,)`` int64 (all zeros with one head)."""
        keys, _ = self._check("keys", keys, self.key_dim)
        if self.num_heads == 1:
            return torch.zeros(keys.shape[0], dtype=torch.long, device=self.device)
        return (keys.float() @ self._router.T).argmax(dim=-1)  # (N,)

    # -- writes and reads ---------------------------------------------------

    def memorize(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write facts in order, as if one at a time: ``keys (N, K)``, ``values (N, V)``.

        A later fact under the same key overwrites an earlier one.
        """
        keys, _ = self._check("keys", keys, self.key_dim)
        values, _ = self._check("values", values, self.value_dim)
        if keys.shape[0] != values.shape[0]:
            raise ValueError(f"keys has {keys.shape[0]} rows but values has {values.shape[0]}; expected one value per key")
        self._write(keys, values)

    def forget(self, keys: torch.Tensor) -> None:
        """Write the zero vector under each key, so its recall becomes (close to) zero.

        The keys are forgotten in order: the last is read back as exactly zero,
        and each earlier one keeps a small residue from the later zero writes,
        in proportion to its overlap with the later keys.
        """
        keys, _ = self._check("keys", keys, self.key_dim)
        zeros = torch.zeros(keys.shape[0], self.value_dim, dtype=self.dtype, device=self.device)  # (N, V)
        self._write(keys, zeros)

    def recall(self, keys: torch.Tensor) -> torch.Tensor:
        """Read the value stored under each key: ``(N, V)``, or ``(V,)`` for one key."""
        keys, squeeze = self._check("keys", keys, self.key_dim)
        with torch.no_grad():
            unit = self._normalize_keys(keys)  # (N, K)
            heads = self.head_index(unit)  # (N,)
            recalled = torch.empty(unit.shape[0], self.value_dim, dtype=self.dtype, device=self.device)  # (N, V)
            for head in range(self.num_heads):
                rows = (heads == head).nonzero().flatten()
                recalled[rows] = unit[rows] @ self.state[head]  # (n, V)
        return recalled.squeeze(0) if squeeze else recalled

    def _write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        with torch.no_grad():
            unit = self._normalize_keys(keys)  # (N, K)
            heads = self.head_index(unit)  # (N,)
            state = self.state.clone()  # (H, K, V)
            for head in range(self.num_heads):
                # Facts keep their order inside each head; facts in different
                # heads never interact, so heads can be written one by one.
                rows = (heads == head).nonzero().flatten()
                if len(rows) == 0:
                    continue
                state[head] = delta_rule_write(
                    state[head], unit[rows], values[rows], beta=self.beta, chunk_size=self.chunk_size
                )
            if not torch.isfinite(state).all():
                raise ValueError("the write produced a non-finite state; the memory was left unchanged")
            self.state = state
            self.num_writes += keys.shape[0]

    def clear(self) -> None:
        """Forget everything by zeroing the state."""
        self.state = torch.zeros_like(self.state)
        self.num_writes = 0

    # -- persistence --------------------------------------------------------

    def _metadata(self) -> dict[str, str]:
        return {
            "format": "hydralm.fact_bank",
            "version": _FORMAT_VERSION,
            "key_dim": str(self.key_dim),
            "value_dim": str(self.value_dim),
            "num_heads": str(self.num_heads),
            "beta": repr(self.beta),
            "seed": str(self.seed),
            "num_writes": str(self.num_writes),
        }

    def save(self, path: str | Path) -> None:
        """Save the state and its settings to a safetensors file."""
        from safetensors.torch import save_file

        save_file({"state": self.state.contiguous().cpu()}, str(path), metadata=self._metadata())

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str | None = None) -> FactBank:
        """Load a bank written by ``save``; a file of another format raises ``ValueError``."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                state = handle.get_tensor("state") if "state" in handle.keys() else None
        except (OSError, SafetensorError) as error:
            raise ValueError(f"{path} is not a readable safetensors fact bank: {error}") from error
        if metadata.get("format") != "hydralm.fact_bank" or state is None:
            raise ValueError(f"{path} is not a fact bank file (format {metadata.get('format')!r})")
        if metadata.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{path} has fact bank format version {metadata.get('version')!r}, expected {_FORMAT_VERSION}")

        bank = cls(
            int(metadata["key_dim"]),
            int(metadata["value_dim"]),
            int(metadata["num_heads"]),
            beta=float(metadata["beta"]),
            seed=int(metadata["seed"]),
            dtype=state.dtype,
            device=device,
        )
        if tuple(state.shape) != tuple(bank.state.shape):
            raise ValueError(f"{path} contains a state of shape {tuple(state.shape)}, expected {tuple(bank.state.shape)}")
        bank.state = state.to(bank.device)
        bank.num_writes = int(metadata["num_writes"])
        return bank

    def __repr__(self) -> str:
        return (
            f"FactBank(key_dim={self.key_dim}, value_dim={self.value_dim}, num_heads={self.num_heads}, "
            f"beta={self.beta}, state_bytes={self.state_bytes()})"
        )
