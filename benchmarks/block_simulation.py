"""How many rows a query must scan for recall@100, clusters against blocks inside clusters (issue 18).

    .venv/bin/python benchmarks/block_simulation.py [--sizes 1000000 10000000] [--workdir runs/scale]
        [--block-rows 64] [--queries 256]

A simulation, not a search: it reads the served index of ``benchmarks/scale.py``'s artifacts
(``scale_<N>.pt2``: centroids, cluster offsets, spreads and the float16 rows), regenerates the
run's queries (``ann_data.unclustered``, seed 0, normalised as scale.py does) and computes their
exact top-100 over those rows. Then, per query:

* **clusters**: the first ``n_probe`` clusters by centroid score plus 4 x spread (the served
  ranking, ``probe_spread`` 4); rows scanned = their rows; recall = the share of the exact top-100
  inside them (what a scan of every probed row can find at most);
* **blocks**: each cluster cut by a k-means of its rows into ``round(size / block_rows)`` blocks;
  the blocks of the first ``2 x n_probe`` clusters ranked by block mean score plus 4 x the block's
  spread; the best blocks taken until they hold ``budget x`` the rows of the first ``n_probe``
  clusters; recall as above.

It prints rows and recall per setting. Built and served (83d3e03, fb3897b, reverted), the block
scan read its rows ~1.6x slower per row than the cluster scan (64-row pieces instead of whole
clusters) and was slower in all (benchmarks/RESULTS.md).
"""
import argparse
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
SPREAD = 4.0


def blocks_of(rows: torch.Tensor, offsets: torch.Tensor, block_rows: int, seed: int = 0):
    """Per cluster, a 6-iteration k-means into ``round(size / block_rows)`` blocks: the rows' new
    order, block offsets, block means and spreads (RMS distance per dimension)."""
    g = torch.Generator().manual_seed(seed)
    order, sizes, means, spreads, parents = [], [], [], [], []
    for c in range(offsets.numel() - 1):
        lo, hi = int(offsets[c]), int(offsets[c + 1])
        if hi == lo:
            continue
        x = rows[lo:hi]
        k = max(1, min(hi - lo, round((hi - lo) / block_rows)))
        centres = x[torch.randperm(hi - lo, generator=g)[:k]].clone()
        for it in range(7):
            assign = torch.argmax(x @ centres.T - 0.5 * centres.square().sum(1), dim=1)
            if it == 6:
                break
            counts = torch.bincount(assign, minlength=k)
            sums = torch.zeros_like(centres).index_add_(0, assign, x)
            centres[counts > 0] = sums[counts > 0] / counts[counts > 0, None]
        order.append(lo + torch.argsort(assign, stable=True))
        for j in range(k):
            member = x[assign == j]
            if member.shape[0]:
                sizes.append(member.shape[0])
                means.append(member.mean(0))
                spreads.append((member - member.mean(0)).square().mean().sqrt())
                parents.append(c)
    block_offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64)
    block_offsets[1:] = torch.cumsum(torch.tensor(sizes), 0)
    return torch.cat(order), block_offsets, torch.stack(means), torch.stack(spreads), torch.tensor(parents)


def simulate(n: int, workdir: str, block_rows: int, nq: int) -> None:
    from ann_data import unclustered

    from silverrec.serve.artifact import open_artifact

    t0 = time.perf_counter()
    state = open_artifact(os.path.join(workdir, f"scale_{n}.pt2")).programs["model"].state_dict
    centroids, offsets = state["index.centroids"].float(), state["index.cluster_offsets"].long()
    spread, rows = state["index.cluster_spread"].float(), state["index.cache"].float()
    C = centroids.shape[0]
    q = torch.nn.functional.normalize(unclustered(n, rows.shape[1], nq, seed=0, alpha=0.8)[1], dim=-1)
    truth = torch.cat([(q[i:i + 32] @ rows.T).topk(100, dim=1).indices for i in range(0, nq, 32)])  # rows
    order, block_offsets, means, block_spread, parent = blocks_of(rows, offsets, block_rows)
    where = torch.empty_like(order)
    where[order] = torch.arange(n)
    S = block_offsets.numel() - 1
    block_of_truth = torch.searchsorted(block_offsets, where[truth], right=True) - 1  # [nq, 100]
    cluster_of_truth = torch.searchsorted(offsets, truth, right=True) - 1
    sizes, block_sizes = offsets.diff(), block_offsets.diff()
    rank = (q @ centroids.T + SPREAD * spread[None]).argsort(dim=1, descending=True)  # |q| = 1
    print(f"== N={n:,}: C={C}, {S} blocks of {n / S:.0f} rows on average ({time.perf_counter() - t0:.0f} s)", flush=True)
    base = {1_000_000: (160, 200, 240), 10_000_000: (316, 379, 443)}.get(n, tuple(round(f * C) for f in (0.03, 0.04, 0.05)))
    for n_probe in base:
        scanned = hit = 0
        for i in range(nq):
            probed = torch.zeros(C, dtype=torch.bool)
            probed[rank[i, :n_probe]] = True
            scanned += int(sizes[rank[i, :n_probe]].sum())
            hit += int(probed[cluster_of_truth[i]].sum())
        print(f"  clusters: n_probe {n_probe:5d}: rows/query {scanned / nq:9.0f}, recall {hit / nq / 100:.4f}", flush=True)
    n_probe = base[1]
    for budget in (0.4, 0.5, 0.6, 0.7, 0.85, 1.0):
        scanned = hit = 0
        for i in range(nq):
            walked = torch.zeros(C, dtype=torch.bool)
            walked[rank[i, :2 * n_probe]] = True
            cand = torch.nonzero(walked[parent]).flatten()
            best = cand[(q[i] @ means[cand].T + SPREAD * block_spread[cand]).argsort(descending=True)]
            goal = budget * float(sizes[rank[i, :n_probe]].sum())
            take = best[: int((block_sizes[best].cumsum(0) < goal).sum()) + 1]
            chosen = torch.zeros(S, dtype=torch.bool)
            chosen[take] = True
            scanned += int(block_sizes[take].sum())
            hit += int(chosen[block_of_truth[i]].sum())
        print(f"  blocks of {block_rows} rows, the first {2 * n_probe} clusters, {budget:.2f} x the rows of {n_probe}: "
              f"rows/query {scanned / nq:9.0f}, recall {hit / nq / 100:.4f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--workdir", default=os.path.join(REPO, "runs", "scale"))
    p.add_argument("--block-rows", type=int, default=64)
    p.add_argument("--queries", type=int, default=256)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("SCALE_THREADS", "2")))
    for n in args.sizes:
        simulate(n, args.workdir, args.block_rows, args.queries)


if __name__ == "__main__":
    main()
