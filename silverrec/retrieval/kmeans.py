"""k-means in plain torch (CPU or GPU) for the publish-time IVF build.

Lloyd iterations on squared L2 distance, seeded with k-means++ (D^2 sampling). As in FAISS, the
centroids are trained on a random sample of at most ``max_points_per_cluster * C`` points and
every point is then assigned; k-means++ itself runs on a smaller sample of ``4 * C`` points
(it is sequential in C, so seeding on the training sample would cost C full passes). Empty and
nearly empty clusters are re-seeded as FAISS re-seeds empty ones, by splitting large clusters
(see ``_split_large_clusters``).

On the CPU, large problems (``N * C * D >= 2**33``) with fewer than 2048 clusters score points
against every centroid with bfloat16 matrix products (about 3.5x the float32 throughput
where the CPU has bfloat16 instructions; 8 bits of mantissa): a point whose two nearest
centroids are within about 0.5% may go to the second one, which moves an IVF cluster boundary
by that much and costs the index little, while publish-time k-means at 10M items
takes minutes instead of most of an hour (``benchmarks/scale.py``). Smaller problems, the
two-level assignment below (small products per group) and all GPU problems stay in float32.

With many clusters (``C >= 2048`` on a large CPU problem) a point is compared with the centroids
of its 8 nearest *groups* only: the centroids are themselves clustered into ``sqrt(C)`` groups,
a point scores the group centres, then the centroids of its best 8 groups (about ``8 sqrt(C)``
of them instead of C, e.g. 900 of 12,649 at 10M items). A point whose nearest centroid lies in
another group gets a near one instead; an IVF cluster is then a slightly less tight cell. How
many groups matters on clustered data: on ``benchmarks/ann.py``'s clustered 1M x 128 set (C =
4,000) unfiltered recall@100 at n_probe 1 is 0.9834 with every point on its nearest centroid,
0.9807 with 8 groups, 0.971 with 5 or 6 and 0.9448 with 3 (the setting until 2026-12-06, chosen
on ``benchmarks/scale.py``'s unclustered items, where 3 groups cost 0.004 at 6% of the clusters
probed); the whole index build took 23.4 / 13.6 / 12.0 / 8.8 s. The groups keep the final
assignment of 10M points and the Lloyd iterations on the 800k-point sample within minutes on two
cores. k-means++ seeding takes thousands of sequential steps of small operations and runs on one
thread (14x faster than on two of a loaded machine, measured).
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from silverrec.retrieval.quantize import _check_embeddings

# Clusters holding fewer than 1/_MIN_FILL of the mean training points per cluster are re-seeded.
_MIN_FILL = 8
_CHUNK_ELEMS = 1 << 24  # rows per distance chunk = this / C (a 64 MiB float32 block)
_BF16_MIN_WORK = 1 << 33  # N * C * D from which CPU distance products run in bfloat16
_TWO_LEVEL_MIN_CLUSTERS = 2048  # C from which large CPU problems assign through groups of centroids
_GROUP_PROBES = 8  # groups whose centroids a point is compared with (module docstring: why 8)


@dataclass
class KMeansResult:
    """Output of :func:`kmeans`.

    Args:
        centroids (Tensor): float32 ``[C, D]``.
        assignments (Tensor): int64 ``[N]`` nearest centroid of every input point.
    """

    centroids: Tensor
    assignments: Tensor


def default_num_clusters(num_items: int) -> int:
    """About ``4 * sqrt(N)`` clusters, at least 1 and at most N (e.g. 4000 for 1M items).

    Example::

        >>> default_num_clusters(1_000_000), default_num_clusters(1000), default_num_clusters(3)
        (4000, 126, 3)
    """
    return max(1, min(num_items, int(round(4 * math.sqrt(num_items)))))


def assign_clusters(x: Tensor, centroids: Tensor) -> Tensor:
    """Nearest centroid (squared L2, ties to the lower id) of every row, in memory-bounded chunks.

    Args:
        x (Tensor): float ``[N, D]``.
        centroids (Tensor): float ``[C, D]``.

    Returns:
        Tensor: int64 ``[N]``.

    Example::

        >>> assign_clusters(torch.tensor([[0.0], [0.9], [3.0]]), torch.tensor([[0.0], [1.0]])).tolist()
        [0, 1, 1]
    """
    return _nearest(x, centroids)[0]


def _large_cpu(x: Tensor, centroids: Tensor) -> bool:
    return x.device.type == "cpu" and x.shape[0] * centroids.shape[0] * centroids.shape[1] >= _BF16_MIN_WORK


def _nearest(x: Tensor, centroids: Tensor) -> "tuple[Tensor, Tensor]":
    """(assignment int64 [N], squared distance float32 [N]) by argmax of x.c - |c|^2 / 2
    (bfloat16 products and two-level assignment for large CPU problems: the module docstring)."""
    if _large_cpu(x, centroids) and centroids.shape[0] >= _TWO_LEVEL_MIN_CLUSTERS:
        return _nearest_two_level(x, centroids)
    return _nearest_flat(x, centroids)


def _nearest_two_level(x: Tensor, centroids: Tensor, probes: int = _GROUP_PROBES) -> "tuple[Tensor, Tensor]":
    """:func:`_nearest` through ``sqrt(C)`` groups of centroids: each point against the centroids
    of its ``probes`` nearest groups (approximate; see the module docstring)."""
    c = centroids.float()
    C, N = c.shape[0], x.shape[0]
    G = max(2, int(round(math.sqrt(C))))
    grouping = kmeans(c, G, num_iters=4, max_points_per_cluster=C, seed=0)  # flat: G is small
    member = grouping.assignments  # [C] group of each centroid
    gc = grouping.centroids
    g_half = 0.5 * (gc * gc).sum(dim=1)
    p = min(probes, G)
    chunk = max(1, _CHUNK_ELEMS // G)
    top = torch.cat([(x[s : s + chunk].float() @ gc.T - g_half).topk(p, dim=1).indices
                     for s in range(0, N, chunk)])  # [N, p]
    # (point, group) pairs sorted by group: each group's points are one slice
    order = torch.argsort(top.reshape(-1), stable=True)
    pair_point = order // p
    bounds = torch.cumsum(torch.bincount(top.reshape(-1), minlength=G), 0).tolist()
    cent_order = torch.argsort(member, stable=True)
    cent_bounds = torch.cumsum(torch.bincount(member, minlength=G), 0).tolist()
    half_norm = 0.5 * (c * c).sum(dim=1)
    best = torch.full((N,), float("-inf"))
    idx = torch.zeros(N, dtype=torch.int64)
    start, c_start = 0, 0
    for j in range(G):
        pts = pair_point[start : bounds[j]]
        cents = cent_order[c_start : cent_bounds[j]]
        start, c_start = bounds[j], cent_bounds[j]
        if pts.numel() == 0 or cents.numel() == 0:
            continue
        # float32: a group's products are small, and bfloat16 conversions cost more than they save
        # (profiled: 11 of 85 s at 300k points x 2191 clusters)
        scores = x[pts].float() @ c[cents].T
        sb, si = scores.sub_(half_norm[cents]).max(dim=1)
        better = sb > best[pts]
        best[pts] = torch.where(better, sb, best[pts])
        idx[pts] = torch.where(better, cents[si], idx[pts])
    sq = torch.cat([x[s : s + chunk].float().pow(2).sum(dim=1) for s in range(0, N, chunk)])  # no [N, D] temporary
    return idx, (sq - 2 * best).clamp_(min=0)


def _nearest_flat(x: Tensor, centroids: Tensor) -> "tuple[Tensor, Tensor]":
    """:func:`_nearest` against every centroid."""
    c = centroids.float()
    half_norm = 0.5 * (c * c).sum(dim=1)  # [C]
    low = _large_cpu(x, c)
    c_t = c.T.to(torch.bfloat16) if low else c.T
    chunk = max(1, _CHUNK_ELEMS // c.shape[0])
    ids, dists = [], []
    for start in range(0, x.shape[0], chunk):
        xb = x[start : start + chunk].float()
        scores = (xb.to(torch.bfloat16) @ c_t).float() if low else xb @ c_t  # [n, C]
        best, idx = scores.sub_(half_norm).max(dim=1)  # [n]
        ids.append(idx)
        dists.append(((xb * xb).sum(dim=1) - 2 * best).clamp_(min=0))
    return torch.cat(ids), torch.cat(dists)


def kmeans_plus_plus(x: Tensor, num_clusters: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: each next centroid is a point drawn with probability ~ D(x)^2.

    Args:
        x (Tensor): float ``[S, D]`` points, ``S >= num_clusters``.
        num_clusters (int): C.
        generator (torch.Generator): random source (on ``x``'s device).

    Returns:
        Tensor: float32 ``[C, D]`` seeds (rows of ``x``).

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> kmeans_plus_plus(torch.tensor([[0.0], [0.1], [10.0]]), 2, g).shape
        torch.Size([2, 1])
    """
    x = x.float()
    S = x.shape[0]
    sq = (x * x).sum(dim=1)  # [S]
    # draw all uniforms up front; each step inverts the cumulative D^2 (no host sync per step)
    u = torch.rand(num_clusters, generator=generator, device=x.device, dtype=torch.float64)
    chosen = torch.empty(num_clusters, dtype=torch.int64, device=x.device)
    chosen[0] = torch.clamp((u[0] * S).long(), max=S - 1)
    d2 = (sq - 2 * (x @ x[chosen[0]]) + sq[chosen[0]]).clamp_(min=0)
    for i in range(1, num_clusters):
        cdf = torch.cumsum(d2.double(), dim=0)
        # all-zero D^2 (every point on a seed) gives cdf == 0 and picks the last point: any will do
        nxt = torch.searchsorted(cdf, (u[i] * cdf[-1]).reshape(1), right=True).clamp_(max=S - 1)[0]
        chosen[i] = nxt
        d2 = torch.minimum(d2, (sq - 2 * (x @ x[nxt]) + sq[nxt]).clamp_(min=0))
    return x[chosen].clone()


def _split_large_clusters(centroids: Tensor, counts: Tensor, empty: Tensor, generator: torch.Generator) -> Tensor:
    """Re-seeds the ``empty`` clusters as FAISS re-seeds empty ones: each takes a copy of a large cluster's centroid.

    A donor is drawn with probability ~ ``count - 1``; its centroid and the copy move apart by a
    relative ``1/1024`` in an alternating sign pattern, so the next assignment splits the donor's
    points between them. (Re-seeding with the worst-fitting points instead leaves clusters of
    one or two outliers, which a probe then reads for almost nothing.)

    Args:
        centroids (Tensor): float32 ``[C, D]``; counts (Tensor): int64 ``[C]`` training points
            per cluster; empty (Tensor): int64 ``[E]`` ids of the empty clusters.
        generator (torch.Generator): random source.

    Returns:
        Tensor: float32 ``[C, D]``, the new centroids.
    """
    weights = (counts - 1).clamp(min=0).double()
    if float(weights.sum()) == 0.0:  # every cluster holds <= 1 point: nothing worth splitting
        return centroids
    many = int((weights > 0).sum()) < empty.numel()
    donors = torch.multinomial(weights, empty.numel(), replacement=many, generator=generator)
    sign = 1.0 - 2.0 * (torch.arange(centroids.shape[1], device=centroids.device) % 2).float()  # +1, -1, ...
    out = centroids.clone()
    out[empty] = centroids[donors] * (1.0 + sign / 1024)
    out[donors] = centroids[donors] * (1.0 - sign / 1024)
    return out


def kmeans(
    x: Tensor,
    num_clusters: int,
    num_iters: int = 10,
    max_points_per_cluster: int = 64,
    seed: int = 0,
) -> KMeansResult:
    """Clusters the rows of ``x`` (k-means++ seeding, then Lloyd iterations on a sample).

    Args:
        x (Tensor): float ``[N, D]`` points, finite, on CPU or GPU.
        num_clusters (int): C, ``1 <= C <= N``.
        num_iters (int): Lloyd iterations on the training sample.
        max_points_per_cluster (int): training sample size is ``min(N, this * C)``.
        seed (int): random seed (results are deterministic for a given seed and device).

    Returns:
        KMeansResult: ``centroids [C, D]`` and ``assignments [N]`` of all points.

    Example::

        >>> x = torch.cat([torch.zeros(5, 2), torch.full((5, 2), 9.0)])
        >>> r = kmeans(x, 2)
        >>> r.assignments[:5].unique().numel(), bool(r.assignments[0] != r.assignments[9])
        (1, True)
    """
    _check_embeddings(x, "x")
    N = x.shape[0]
    if not 1 <= num_clusters <= N:
        raise ValueError(f"num_clusters must be in [1, N={N}], got {num_clusters}")
    if num_iters < 0:
        raise ValueError(f"num_iters must be >= 0, got {num_iters}")
    if max_points_per_cluster < 1:
        raise ValueError(f"max_points_per_cluster must be >= 1, got {max_points_per_cluster}")
    g = torch.Generator(device=x.device).manual_seed(seed)
    C = num_clusters
    n_train = min(N, max_points_per_cluster * C)
    train = x[torch.randperm(N, generator=g, device=x.device)[:n_train]].float()  # random order
    threads = torch.get_num_threads()
    if x.device.type == "cpu":  # thousands of sequential small steps: one thread (module docstring)
        torch.set_num_threads(1)
    try:
        centroids = kmeans_plus_plus(train[: min(n_train, 4 * C)], C, g)
    finally:
        torch.set_num_threads(threads)
    for _ in range(num_iters):
        assign, d2 = _nearest(train, centroids)
        counts = torch.bincount(assign, minlength=C)
        sums = torch.zeros_like(centroids).index_add_(0, assign, train)
        nonempty = counts > 0
        centroids = torch.where(nonempty[:, None], sums / counts.clamp(min=1)[:, None].float(), centroids)
        # empty and nearly empty clusters (k-means++ likes outliers as seeds, and a seed alone in
        # the tail of the data keeps its one point) are re-seeded by splitting large ones
        small = (counts < max(1.0, n_train / C / _MIN_FILL)).nonzero().flatten()
        if small.numel() > 0:
            centroids = _split_large_clusters(centroids, counts, small, g)
    return KMeansResult(centroids=centroids, assignments=assign_clusters(x, centroids))
