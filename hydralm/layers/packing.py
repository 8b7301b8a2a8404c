"""Weight layout for fast one-token steps: column-major storage and joined projections.

A decode step multiplies one row by every weight matrix of the model, so its
speed is how fast the matrix product streams the weights from memory. With
torch's CPU kernels (torch 2.13, AVX2), a one-row product streams a
column-major weight (stored as its (in, out) transpose) about 1.5x faster
than the (out, in) row-major layout nn.Linear keeps. Products of many rows
run at the same speed with either layout.

Joining the projections that read the same input (q, k and v; gate and up)
into one matrix saves a matrix product call per projection. torch also
runs a one-row product on one thread. `packed_linear` splits it over the
threads, which streams the weights about 1.35x faster again on 2 cores
(measured on this project's 2-core development machine).

Packing keeps every parameter's name, shape and values: a packed linear's
weight becomes a view of the joined matrix, so `state_dict`, in-place
updates and `load_state_dict` still work. An operation that gives the
parameters new storage (`.to(dtype)`, `load_state_dict(assign=True)`)
unpacks the layer: the joined matrix no longer contains the weights, and the
layer goes back to its separate projections.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Compute F.linear(x, weight, bias), splitting a one-row product over the CPU threads.

    torch runs a one-row product against a weight on one thread, which
    cannot stream the weight as fast as the memory allows. For a
    column-major weight on CPU, the rows of its (in, out) transpose are
    split into P contiguous parts, one batched product computes the P
    partial outputs in parallel, and their sum is the result (equal up to
    rounding). Other inputs go to F.linear.
    """
    in_features = weight.shape[1]
    parts = _reduction_parts(in_features)
    if parts < 2 or x.numel() != in_features or x.device.type != "cpu" or not weight.t().is_contiguous():
        return F.linear(x, weight, bias)
    partial = torch.bmm(x.reshape(parts, 1, in_features // parts), weight.t().view(parts, in_features // parts, -1))
    output = partial.sum(dim=0).view(*x.shape[:-1], weight.shape[0])
    return output if bias is None else output + bias


def _reduction_parts(in_features: int) -> int:
    """Return the largest part count <= the torch thread count (at most 8) that divides in_features."""
    parts = min(torch.get_num_threads(), 8)
    while parts > 1 and in_features % parts:
        parts -= 1
    return parts


def make_column_major(module: nn.Linear | nn.Embedding) -> None:
    """Store the module's 2-D weight column-major, keeping its shape and values."""
    weight = module.weight.detach()
    module.weight.data = weight.t().contiguous().t()


class JoinedLinear:
    """Linears reading the same input, computed as one product over a joined column-major weight.

    Attributes:
        linears: the joined modules, in output order.
        weight: (sum of out_features, in_features) joined weight; each
            linear's weight is a view of it.
        bias: joined bias, or None when the linears have none.
    """

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        if not linears:
            raise ValueError("JoinedLinear needs at least one nn.Linear")
        in_features = {linear.in_features for linear in linears}
        if len(in_features) != 1:
            raise ValueError(f"joined linears must share in_features, got {sorted(in_features)}")
        has_bias = {linear.bias is not None for linear in linears}
        if len(has_bias) != 1:
            raise ValueError("joined linears must all have a bias or all have none")
        self.linears = list(linears)
        self.sizes = [linear.out_features for linear in linears]
        weights = [linear.weight.detach() for linear in linears]
        self.weight: torch.Tensor | None = torch.cat(weights, dim=0).t().contiguous().t()  # column-major
        self.bias: torch.Tensor | None = None
        if linears[0].bias is not None:
            self.bias = torch.cat([linear.bias.detach() for linear in linears])
        start = 0
        for linear, size in zip(self.linears, self.sizes):
            linear.weight.data = self.weight[start : start + size]
            if self.bias is not None:
                linear.bias.data = self.bias[start : start + size]
            start += size

    def holds_weights(self) -> bool:
        """Return True while every linear's weight (and bias) is still a view of the joined tensors.

        Once that is no longer so, the joined tensors are dropped, so a stale
        copy of the weights is neither used nor kept in memory.
        """
        if self.weight is None:
            return False
        shared = _shares_storage(self.weight, [linear.weight for linear in self.linears])
        if self.bias is not None:
            shared = shared and _shares_storage(self.bias, [linear.bias for linear in self.linears])
        if not shared:
            self.weight = self.bias = None
        return shared


def _shares_storage(joined: torch.Tensor, parts: Sequence[torch.Tensor]) -> bool:
    storage = joined.untyped_storage().data_ptr()
    return all(part.untyped_storage().data_ptr() == storage for part in parts)


def joined_outputs(
    joined: JoinedLinear | None,
    linears: Sequence[nn.Linear],
    x: torch.Tensor,
    groups: Sequence[int] | None = None,
) -> list[torch.Tensor]:
    """Return the outputs of `linears` on x: one joined product when that is valid, else one product each.

    `groups` merges consecutive outputs along the last dimension: (2, 1)
    returns the first two outputs as one tensor and the third alone. The
    joined weight is a plain tensor, so gradients would not reach the
    parameters through it; with gradients enabled the separate products run.
    """
    groups = groups or [1] * len(linears)
    if sum(groups) != len(linears):
        raise ValueError(f"groups {list(groups)} do not add up to {len(linears)} linears")
    if joined is not None and not torch.is_grad_enabled() and joined.holds_weights():
        sizes, start = [], 0
        for count in groups:
            sizes.append(sum(joined.sizes[start : start + count]))
            start += count
        return list(packed_linear(x, joined.weight, joined.bias).split(sizes, dim=-1))
    outputs, start = [], 0
    for count in groups:
        parts = [linear(x) for linear in linears[start : start + count]]
        outputs.append(parts[0] if count == 1 else torch.cat(parts, dim=-1))
        start += count
    return outputs
