"""What the IVF scan's time at 10M items is made of, and what the served blank filter costs (issue 18).

    .venv/bin/python benchmarks/scan_costs.py memory [--rows 10000000] [--clusters 12649] [--probes 348] [--reps 12]
    .venv/bin/python benchmarks/scan_costs.py blank [--sizes 1000000 10000000] [--workdir runs/scale] [--reps 8]

``memory`` runs ``ivf_int8_topk`` (batch 16, K 100, no filter) over random INT8 codes laid out as
the 10M scale artifact's clusters (``--rows`` rows in ``--clusters`` equal clusters, each query
probing ``--probes`` random ones, so nothing is reused between queries) three ways, alternating
in one process over the same probe lists:

* ``D=64``: the served layout, 64 bytes per row, in memory from torch's allocator (4 KiB pages);
* ``D=32``: half the bytes per row (what a 4-bit first pass would read), same rows and clusters;
* ``D=64 huge``: the D=64 codes copied onto transparent huge pages
  (:func:`silverrec.retrieval.huge_pages.on_huge_pages`), so the scan takes no TLB misses.

It prints the median time of a batch and each layout's ratio to ``D=64``. A scan bound by the
bytes it moves would take ~0.5x at D=32.

``blank`` loads each scale artifact (``benchmarks/scale.py``'s ``scale_<N>.pt2``) and serves its
unfiltered queries (the blank filter) in batches of 16, alternating two fresh-index inputs: no
tombstone (``ivf_search_bloom`` gives those queries no mask: the unfiltered scan) and one
tombstone (a denied row keeps every query on the Bloom mask, the path all filters take, and the
one blank filters took before 96655cc). Results differ by at most that row. It prints the
medians and the median of the per-round ratios.
"""
import argparse
import json
import os
import sys
import time
from typing import Dict, List

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
BATCH, K = 16, 100


def _median_ms(times: List[float]) -> float:
    return 1000.0 * float(np.median(times))


def memory(rows: int, clusters: int, probes: int, reps: int) -> Dict[str, float]:
    """Median ms of a batch per layout (see the module docstring)."""
    import silverrec  # noqa: F401  (registers the ops)
    from silverrec.retrieval.huge_pages import on_huge_pages

    g = torch.Generator().manual_seed(0)
    offsets = torch.linspace(0, rows, clusters + 1).long()
    codes64 = torch.randint(-127, 128, (rows, 64), dtype=torch.int8, generator=g)
    layouts = {"D=64": codes64, "D=32": torch.randint(-127, 128, (rows, 32), dtype=torch.int8, generator=g),
               "D=64 huge": on_huge_pages(codes64, min_bytes=0)}
    if layouts["D=64 huge"] is codes64:
        del layouts["D=64 huge"]  # no transparent huge pages here
    scales = torch.rand(rows, generator=g) + 0.5
    queries = {name: torch.randint(-127, 128, (BATCH, c.shape[1]), dtype=torch.int8, generator=g)
               for name, c in layouts.items()}
    times: Dict[str, List[float]] = {name: [] for name in layouts}
    for rep in range(reps + 2):
        probe = torch.stack([torch.randperm(clusters, generator=g)[:probes] for _ in range(BATCH)])
        for name, codes in layouts.items():
            t0 = time.perf_counter()
            torch.ops.silverrec.ivf_int8_topk(queries[name], torch.ones(BATCH), codes, scales, offsets, probe, None, K)
            if rep >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - t0)
    out = {name: _median_ms(t) for name, t in times.items()}
    print(f"{rows:,} rows in {clusters:,} clusters, {probes} random probes per query, batch {BATCH}, {reps} rounds")
    print("| layout | ms per batch | vs D=64 |\n|---|---:|---:|")
    for name, ms in out.items():
        print(f"| {name} | {ms:.2f} | {ms / out['D=64']:.2f}x |")
    return out


def blank(sizes: List[int], workdir: str, reps: int) -> None:
    """Per size: blank-filter batches with no tombstone against one tombstone (module docstring)."""
    from silverrec.serve import Retriever

    for n in sizes:
        saved = torch.load(os.path.join(workdir, f"truth_{n}.pt"))
        exprs = saved["exprs"]
        nq = len(exprs) // 3  # scale.py's classes: none, ~10%, ~1%; the first third has the blank filter
        r = Retriever(os.path.join(workdir, f"scale_{n}.pt2"))
        fresh = r.snapshot.fresh
        deleted = fresh.deleted.clone()
        deleted[deleted.numel() // 2] = 1  # one tombstone
        one_dead = fresh._replace(deleted=deleted)
        batches = [(r.encoder.users([{"uid": f"u{i}"} for i in range(s, s + BATCH)]),
                    r.encoder.filters([exprs[i] for i in range(s, s + BATCH)], BATCH), r.encoder.exclude(None, BATCH))
                   for s in range(0, nq - BATCH + 1, BATCH)]

        def serve(fr: object) -> float:
            times = []
            for users, plan, excl in batches:
                t0 = time.perf_counter()
                r.search(users, *plan, excl, fresh=fr)
                times.append(time.perf_counter() - t0)
            return _median_ms(times)

        serve(fresh), serve(one_dead)  # warm-up
        no_mask, mask = [], []
        for _ in range(reps):
            no_mask.append(serve(fresh))
            mask.append(serve(one_dead))
        ratio = float(np.median(np.array(no_mask) / np.array(mask)))
        print(json.dumps({"n": n, "no_tombstone_ms": round(float(np.median(no_mask)), 2),
                          "one_tombstone_ms": round(float(np.median(mask)), 2), "ratio": round(ratio, 3)}), flush=True)
        del r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--rows", type=int, default=10_000_000)
    m.add_argument("--clusters", type=int, default=12_649)
    m.add_argument("--probes", type=int, default=348)
    m.add_argument("--reps", type=int, default=12)
    b = sub.add_parser("blank")
    b.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    b.add_argument("--workdir", default=os.path.join(REPO, "runs", "scale"))
    b.add_argument("--reps", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("SCALE_THREADS", "2")))
    if args.what == "memory":
        memory(args.rows, args.clusters, args.probes, args.reps)
    else:
        blank(args.sizes, args.workdir, args.reps)


if __name__ == "__main__":
    main()
