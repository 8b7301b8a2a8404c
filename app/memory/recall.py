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
    """

    def __init__(self, partition: DeltaRulePartition, texts: list[str], item_ids: list[int]):
        if len(texts) != len(item_ids):
            raise ValueError(f"got {len(texts)} texts but {len(item_ids)} item ids")
        self.partition = partition
        self.item_ids = list(item_ids)
        rows, cols, vals = [], [], []
        for row, text in enumerate(texts):
            key = partition.key(partition.features(text))
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
            indices, values, (len(texts), partition.key_dim)
        ).coalesce().to_sparse_csr()  # (N, K)

    def search(self, question: str, k: int = 5) -> list[tuple[int, float]]:
        """Return the `k` items whose keys have the largest cosine with the question's key."""
        key = self.partition.key(self.partition.features(question))
        if key is None or not self.item_ids:
            return []
        query = torch.zeros(self.partition.key_dim, dtype=torch.float64)  # (K,)
        query[key[0]] = key[1]
        scores = self.keys @ query  # (N,)
        top = torch.topk(scores, min(k, len(self.item_ids)))
        return [(self.item_ids[i], float(s)) for s, i in zip(top.values, top.indices)]
