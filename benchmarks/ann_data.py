"""Data sets and exact ground truth for ``benchmarks/ann.py``, and the calibration of the
unclustered generator (how many IVF clusters recall@100 >= 0.95 needs).

    .venv/bin/python benchmarks/ann_data.py --n 200000              # calibrate the unclustered set
    .venv/bin/python benchmarks/ann_data.py --n 1000000 --alpha 0.6 # the fraction at 1M

The calibration builds ``IVFInt8Index`` with ``4 sqrt(N)`` clusters (the benchmark's default),
searches unfiltered queries over a sweep of ``n_probe`` and prints recall@100 against exact
float32 search for each; it reports the smallest probed fraction of the clusters reaching 0.95.
"""
import argparse
import math
import time
from typing import List, Optional, Tuple

import numpy as np
import torch

K = 100


def clustered(n: int, d: int, nq: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs: ``sqrt(n)`` centres, points at 0.5 standard deviation around them,
    log-normal norms (sigma 0.25); queries ``[nq, d]`` from the same distribution.

    IVF's easy case: k-means finds the blobs, so a few probed clusters hold a query's top 100.
    """
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(max(1, int(math.sqrt(n))), d, generator=g)

    def draw(m: int) -> torch.Tensor:
        x = centers[torch.randint(0, centers.shape[0], (m,), generator=g)] + 0.5 * torch.randn(m, d, generator=g)
        return x * torch.exp(0.25 * torch.randn(m, 1, generator=g))

    return draw(n), draw(nq)


def unclustered(n: int, d: int, nq: int, seed: int = 0, alpha: float = 0.6,
                norm_sigma: float = 0.1) -> Tuple[torch.Tensor, torch.Tensor]:
    """One anisotropic Gaussian: variance ``(i + 1) ** -alpha`` along direction ``i`` of a random
    rotation, log-normal norms (sigma ``norm_sigma``); queries ``[nq, d]`` from the same
    distribution.

    Real text and behaviour embeddings have no blobs: their spectrum decays smoothly (a few
    strong directions, a long tail), so k-means cuts one continuous cloud into cells and a
    query's top 100 by inner product spread over many neighbouring cells. The power law sets how
    hard that is (``alpha = 0`` is isotropic, where nearly every cluster must be probed; a larger
    ``alpha`` concentrates the data in fewer directions, which IVF handles better). The random
    rotation keeps the spectrum off the coordinate axes, as in learned embeddings, so no per-
    dimension trick (e.g. a scalar quantizer's per-dimension ranges) gets it for free.

    Calibration (``benchmarks/ann_data.py``: D=128, C = 4 sqrt(N) clusters, 6 k-means iterations
    on 20 points per cluster, 256 queries, recall@100 of ``IVFInt8Index.search`` vs exact float32,
    unfiltered; measured 2026-12-05). With the defaults ``alpha=0.6``, ``norm_sigma=0.1``,
    recall@100 >= 0.95 needs 22% of the clusters at N=1M (880 of C=4000: 0.9434 at 20%, 0.9520
    at 22%) and 26% at N=200k (465 of C=1789: 0.9476 at 25%, 0.9519 at 26%). Other exponents
    at N=200k, fraction needed (between the two tried fractions around it): alpha 0.5: 30-40%,
    0.7: 15-20%, 0.8: 10-15%, 1.0: 5-10%, 1.5: at most 2%.
    """
    g = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    std = torch.arange(1, d + 1, dtype=torch.float32).pow(-alpha / 2)
    basis = std[:, None] * rotation.T  # [d, d]: row i is direction i scaled by its std

    def draw(m: int) -> torch.Tensor:
        x = torch.randn(m, d, generator=g) @ basis
        # scale each row to unit expected norm, then a mild log-normal spread of norms
        return x * (torch.exp(norm_sigma * torch.randn(m, 1, generator=g)) / std.norm())

    return draw(n), draw(nq)


def exact_topk(q: torch.Tensor, x: torch.Tensor, mask: Optional[torch.Tensor], k: int = K) -> torch.Tensor:
    """Exact float32 top-k ids ``[B, k]`` under ``mask`` (bool ``[N]`` shared by all queries),
    in blocks of 200k items; -1 where fewer than k items pass."""
    best_s = torch.full((q.shape[0], 0), float("-inf"))
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.int64)
    for start in range(0, x.shape[0], 200_000):
        s = q @ x[start : start + 200_000].T
        if mask is not None:
            s = s.masked_fill(~mask[start : start + 200_000], float("-inf"))
        s, i = torch.topk(s, min(k, s.shape[1]), dim=1)
        best_s, j = torch.topk(torch.cat([best_s, s], 1), min(k, best_s.shape[1] + s.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + start], 1).gather(1, j)
    return best_i.masked_fill(torch.isinf(best_s), -1)


def recall(ids: np.ndarray, truth: torch.Tensor) -> float:
    """Fraction of the true ids (``truth`` ``[B, k]``, -1 ignored) found in ``ids`` ``[B, k]``."""
    hit = total = 0
    for a, t in zip(ids, truth.numpy()):
        t = set(t[t >= 0].tolist())
        hit += len(t & set(a.tolist()))
        total += len(t)
    return hit / max(total, 1)


def calibrate(n: int, d: int, nq: int, alpha: float, norm_sigma: float, fractions: List[float]) -> Optional[float]:
    """Prints recall@100 per probed fraction of the clusters on :func:`unclustered` data and
    returns the smallest fraction reaching 0.95 (None if none does)."""
    from silverrec.retrieval import IVFInt8Index

    x, q = unclustered(n, d, nq, alpha=alpha, norm_sigma=norm_sigma)
    C = max(1, int(round(4 * math.sqrt(n))))
    t = time.perf_counter()
    # the benchmark's k-means settings (6 iterations, 20 sampled points per cluster)
    index = IVFInt8Index.build(x, num_clusters=C, num_iters=6, max_points_per_cluster=20)
    print(f"N={n} D={d} C={C} alpha={alpha} norm_sigma={norm_sigma}: build {time.perf_counter() - t:.1f}s", flush=True)
    truth = exact_topk(q, x, None)
    found = None
    for frac in fractions:
        n_probe = min(C, max(1, int(round(frac * C))))
        ids = torch.cat([index.search(q[s : s + 64], K, n_probe=n_probe).ids for s in range(0, nq, 64)])
        r = recall(ids.numpy(), truth)
        print(f"  n_probe={n_probe:5d} ({n_probe / C:6.1%} of clusters)  recall@100={r:.4f}", flush=True)
        if r >= 0.95 and found is None:
            found = n_probe / C
            break
    print(f"recall@100 >= 0.95 needs {found:.1%} of the clusters" if found is not None
          else "recall@100 >= 0.95 not reached", flush=True)
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--queries", type=int, default=256)
    p.add_argument("--alpha", type=float, nargs="+", default=[0.6], help="spectrum decay exponents to try")
    p.add_argument("--norm-sigma", type=float, default=0.1)
    p.add_argument("--fractions", type=float, nargs="+",
                   default=[0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                   help="probed fractions of the clusters, ascending (the sweep stops at the first >= 0.95)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for alpha in args.alpha:
        calibrate(args.n, args.d, args.queries, alpha, args.norm_sigma, sorted(args.fractions))


if __name__ == "__main__":
    main()
