"""Exact nearest-neighbour search and greedy coreset selection, in chunked torch code.

Memory stays bounded whatever the sizes: distances are computed for blocks of
queries small enough that one block's distance matrix holds at most
``MAX_BLOCK_ELEMENTS`` numbers (except while tracing for ONNX export: the
graph computes all the queries of its batch in one block).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

MAX_BLOCK_ELEMENTS = 2 ** 24  # 64 MB of float32 distances per block
# Banks longer than this are searched a slice at a time (each slice against every query of the block), so that
# the bank streams through the cache once per block rather than once per few queries: 1.4x faster on SPADE's
# 4,096 queries against a 204,800-row bank (2 cores), the same distances.
BANK_SLICE = 4096


def nearest(queries: torch.Tensor, bank: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest Euclidean distances from each query (rows, Q x D) to the bank (B x D), ascending,
    and the bank rows they belong to: two Q x k tensors.

    Squared distances come from |q|^2 + |b|^2 - 2 q.b (one matrix product per block); only the k kept are
    square-rooted."""
    if not 1 <= k <= len(bank):
        raise ValueError(f"k={k} needs 1 <= k <= bank size {len(bank)}")
    # A traced graph (ONNX export) must not fix the number of queries, which grows with its dynamic batch: one block.
    tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
    blocks = [queries] if tracing else queries.split(max(1, MAX_BLOCK_ELEMENTS // len(bank)))
    bank_norms = (bank * bank).sum(1)
    if k == 1 and not tracing and len(bank) > BANK_SLICE:
        return _nearest_by_bank_slices(queries, bank, bank_norms)
    distances, indices = [], []
    for block in blocks:
        squared = torch.addmm(bank_norms[None], block, bank.T, alpha=-2).add_((block * block).sum(1, keepdim=True))
        if k == 1:
            values, where = squared.min(dim=1, keepdim=True)
        else:
            values, where = squared.topk(k, dim=1, largest=False)
        distances.append(values.clamp_min_(0).sqrt_())
        indices.append(where)
    return torch.cat(distances), torch.cat(indices)


def _nearest_by_bank_slices(queries: torch.Tensor, bank: torch.Tensor, bank_norms: torch.Tensor):
    """:func:`nearest` with k = 1 for a long bank: blocks of queries, each against the bank a slice at a time,
    keeping the running minimum (the first row of equal distance wins, as ``min`` does)."""
    block_size = max(1, MAX_BLOCK_ELEMENTS // BANK_SLICE)
    distances, indices = [], []
    for block in queries.split(block_size):
        best = torch.full((len(block),), torch.inf, dtype=block.dtype, device=block.device)
        where = torch.zeros(len(block), dtype=torch.long, device=block.device)
        for start in range(0, len(bank), BANK_SLICE):
            part = bank[start:start + BANK_SLICE]
            values, rows = torch.addmm(bank_norms[start:start + BANK_SLICE][None], block, part.T, alpha=-2).min(dim=1)
            better = values < best
            best = torch.where(better, values, best)
            where = torch.where(better, rows + start, where)
        distances.append(best.add_((block * block).sum(1)).clamp_min_(0).sqrt_()[:, None])
        indices.append(where[:, None])
    return torch.cat(distances), torch.cat(indices)


def greedy_coreset(features: torch.Tensor, count: int, projection_dim: int | None = 128, seed: int = 0,
                   progress: Callable | None = None) -> torch.Tensor:
    """Indices of ``count`` rows chosen by greedy k-center selection (PatchCore's coreset, Sener & Savarese):
    start from a seeded random row, then repeatedly add the row farthest from those chosen.

    Distances are measured after a seeded Gaussian random projection to ``projection_dim`` dimensions
    (Johnson-Lindenstrauss; None or a dimension >= D: no projection), which keeps each step one
    matrix-vector product."""
    n, dim = features.shape
    count = max(1, min(count, n))
    generator = torch.Generator().manual_seed(seed)
    points = features.float()
    if projection_dim and projection_dim < dim:
        projection = torch.randn(dim, projection_dim, generator=generator) / math.sqrt(projection_dim)
        points = points @ projection.to(points.device)
    squared_norms = (points * points).sum(1)
    # Kept transposed (D x N): a row vector times it streams the points in memory order, 3x faster on 2 cores
    # than a matrix-vector product over the N x D rows (779,000 x 128: 21 against 65 ms a step).
    columns = points.T.contiguous()
    del points
    chosen = torch.empty(count, dtype=torch.long)
    chosen[0] = int(torch.randint(n, (1,), generator=generator))

    def squared_distances_to(i: int) -> torch.Tensor:
        """|x|^2 - 2 x.c + |c|^2 for every row x: one vector-matrix product and two adds."""
        return (columns[:, i] @ columns).mul_(-2).add_(squared_norms).add_(squared_norms[i])

    closest = squared_distances_to(int(chosen[0]))
    steps = range(1, count)
    for step in (progress(steps, "coreset") if progress else steps):
        farthest = int(closest.argmax())
        chosen[step] = farthest
        torch.minimum(closest, squared_distances_to(farthest), out=closest)
    return chosen
