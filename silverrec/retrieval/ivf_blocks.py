"""The IVF index's second level: each cluster cut into blocks of about ``block_rows`` rows.

A probed cluster of a large index holds hundreds of rows (``N / C = sqrt(N) / 4``: 790 at 10M
items), and on real-embedding-like data a query's best rows sit in a few parts of it. The build
runs a small k-means inside every cluster (``round(size / block_rows)`` centres), orders the
cluster's rows by block, and keeps each block's mean and spread; ``ivf_search`` then scores the
blocks of a query's probed clusters and scans the best ``block_fraction`` of them
(:func:`silverrec.ops.reference.ivf_select_blocks_reference`). Measured on the 10M scale
catalogue (benchmarks/RESULTS.md): the same recall@100 over about half the scanned rows.

Cost per item: an int8 code, a float32 scale and spread per block and an int64 offset, about
``(D + 16) / block_rows`` bytes (1.25 B at D = 64, 64 rows per block).
"""
from typing import NamedTuple

import torch
from torch import Tensor


class ClusterBlocks(NamedTuple):
    """The blocks of an index's clusters (S blocks in all).

    Args:
        order (Tensor): int64 ``[N]``, the rows in their new order (a permutation within each
            cluster: new row ``n`` is old row ``order[n]``).
        block_offsets (Tensor): int64 ``[S + 1]``; block ``j`` is new rows ``block_offsets[j]:block_offsets[j + 1]``.
        cluster_blocks (Tensor): int64 ``[C + 1]``; cluster ``c`` holds blocks ``cluster_blocks[c]:cluster_blocks[c + 1]``.
        means (Tensor): float32 ``[S, D]``, each block's mean.
        spread (Tensor): float32 ``[S]``, each block's root mean square distance from its mean per
            dimension (as :func:`~silverrec.retrieval.ivf_index.cluster_spread`).
    """

    order: Tensor
    block_offsets: Tensor
    cluster_blocks: Tensor
    means: Tensor
    spread: Tensor


def cluster_blocks(rows: Tensor, cluster_offsets: Tensor, block_rows: int, num_iters: int = 6,
                   seed: int = 0) -> ClusterBlocks:
    """Cuts each cluster into ``max(1, round(size / block_rows))`` blocks by k-means.

    Args:
        rows (Tensor): float ``[N, D]`` the index's rows in cluster order.
        cluster_offsets (Tensor): int64 ``[C + 1]``.
        block_rows (int): rows per block on average, ``>= 1``.
        num_iters (int): Lloyd iterations per cluster (seeded with distinct random rows of it).
        seed (int): random seed (deterministic for a given seed and device).

    Returns:
        ClusterBlocks: on the device of ``rows``; no block is empty.

    Example::

        >>> rows = torch.cat([torch.zeros(4, 2), torch.full((4, 2), 5.0)])
        >>> b = cluster_blocks(rows, torch.tensor([0, 8]), block_rows=4)
        >>> b.cluster_blocks.tolist(), b.block_offsets.tolist(), sorted(b.means[:, 0].tolist())
        ([0, 2], [0, 4, 8], [0.0, 5.0])
    """
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    dev = rows.device
    g = torch.Generator(device=dev).manual_seed(seed)
    off = cluster_offsets.tolist()
    order, sizes, means, spread, per_cluster = [], [], [], [], []
    for c in range(len(off) - 1):
        lo, hi = off[c], off[c + 1]
        m = hi - lo
        k = max(1, min(m, round(m / block_rows)))
        if m == 0:
            per_cluster.append(0)
            continue
        x = rows[lo:hi].float()
        centres = x[torch.randperm(m, generator=g, device=dev)[:k]]
        assign = torch.zeros(m, dtype=torch.int64, device=dev)
        for it in range(num_iters + 1):
            if k > 1:  # nearest centre: argmin |x - c|^2 = argmax (x . c - |c|^2 / 2)
                assign = torch.argmax(x @ centres.T - 0.5 * centres.square().sum(dim=1), dim=1)
            if it == num_iters:
                break
            counts = torch.bincount(assign, minlength=k)
            sums = torch.zeros_like(centres).index_add_(0, assign, x)
            kept = counts > 0  # an emptied centre keeps its place (dropped below if still empty)
            centres[kept] = sums[kept] / counts[kept, None]
        counts = torch.bincount(assign, minlength=k)
        within = torch.argsort(assign, stable=True)
        order.append(lo + within)
        used = counts > 0
        sums = torch.zeros(k, x.shape[1], device=dev).index_add_(0, assign, x)
        mean = sums[used] / counts[used, None]
        sq = torch.zeros(k, device=dev, dtype=torch.float64).index_add_(
            0, assign, (x - (sums / counts.clamp(min=1)[:, None])[assign]).square().sum(dim=1).double())[used]
        sizes.append(counts[used])
        means.append(mean)
        spread.append((sq / (counts[used] * x.shape[1])).sqrt().float())
        per_cluster.append(int(used.sum()))
    D = rows.shape[1]
    sizes_t = torch.cat(sizes) if sizes else torch.zeros(0, dtype=torch.int64, device=dev)
    block_offsets = torch.zeros(sizes_t.numel() + 1, dtype=torch.int64, device=dev)
    block_offsets[1:] = torch.cumsum(sizes_t, dim=0)
    cb = torch.zeros(len(per_cluster) + 1, dtype=torch.int64, device=dev)
    cb[1:] = torch.cumsum(torch.tensor(per_cluster, dtype=torch.int64, device=dev), dim=0)
    return ClusterBlocks(
        torch.cat(order) if order else torch.zeros(0, dtype=torch.int64, device=dev), block_offsets, cb,
        torch.cat(means) if means else torch.zeros(0, D, device=dev),
        torch.cat(spread) if spread else torch.zeros(0, device=dev))
