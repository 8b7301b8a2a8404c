"""Exact nearest-neighbour search over the same keys the state is written with.

This is the reference that the state's recall is measured against: it keeps
every live item's key (so it grows with the number of items, unlike the
state) and ranks items by the cosine of their key with the question's key.
Benchmarks and the diagnostics use it; recall itself never does.
"""

from __future__ import annotations

import torch

from app.memory.partition import DeltaRulePartition


class ExactIndex:
    """Every key of `texts` in one sparse matrix, weighted with the partition's current IDF.

    Args:
        partition: supplies the features and the IDF statistics.
        texts: one text per item (a fact's subject, a passage's text).
        item_ids: the id reported for each text.
        buckets: the semantic buckets of each text, or None for lexical keys only.
    """

    def __init__(
        self, partition: DeltaRulePartition, texts: list[str], item_ids: list[int],
        buckets: list[list[int] | None] | None = None,
    ):
        if len(texts) != len(item_ids):
            raise ValueError(f"got {len(texts)} texts but {len(item_ids)} item ids")
        buckets = buckets or [None] * len(texts)
        self.partition = partition
        self.item_ids = list(item_ids)
        rows, cols, vals = [], [], []
        for row, (text, text_buckets) in enumerate(zip(texts, buckets)):
            key = partition.key(partition.features(text, text_buckets))
            if key is None:
                continue
            index, weight = key
            rows.append(torch.full_like(index, row))
            cols.append(index)
            vals.append(weight)
        if rows:
            indices = torch.stack([torch.cat(rows), torch.cat(cols)])  # (2, nnz)
            values = torch.cat(vals)  # (nnz,)
        else:
            indices = torch.zeros(2, 0, dtype=torch.int64)
            values = torch.zeros(0, dtype=torch.float64)
        self.keys = torch.sparse_coo_tensor(
            indices, values, (len(texts), partition.key_dim), check_invariants=True
        ).coalesce()  # (N, K)

    def search(self, question: str, k: int = 5, buckets: list[int] | None = None) -> list[tuple[int, float]]:
        """Return the `k` items whose keys have the largest cosine with the question's key."""
        key = self.partition.key(self.partition.features(question, buckets))
        if key is None or not self.item_ids:
            return []
        query = torch.zeros(self.partition.key_dim, dtype=torch.float64)  # (K,)
        query[key[0]] = key[1]
        scores = self.keys @ query  # (N,)
        top = torch.topk(scores, min(k, len(self.item_ids)))
        return [(self.item_ids[i], float(s)) for s, i in zip(top.values, top.indices)]
