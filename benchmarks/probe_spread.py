"""Ranking clusters by centroid score plus spread (``serving.probe_spread``): probes and time at
equal recall, against N.

    .venv/bin/python benchmarks/probe_spread.py [--sizes 1000000 10000000] [--spreads 0 2 3 4]

Reads the artifacts and exact top-100 that ``benchmarks/scale.py`` left in ``--workdir``
(``scale_<N>.pt2``, ``truth_<N>.pt``), rebuilds the served ``IVFInt8Index`` from the artifact's
memory-mapped tensors, and recomputes each cluster's spread (``cluster_spread``) from its float16
re-score rows, so every setting runs on the same clusters and codes (an artifact exported
without spreads works too). For each ``probe_spread`` it finds the smallest
``n_probe`` of a fine ladder whose recall@100 through the index layer's op
(``IVFInt8Index.search`` under an all-passing packed mask, as the graph searches unfiltered
requests) reaches ``--target`` on the run's unfiltered queries, and at that ``n_probe`` it
measures the rows the walk scans and the time of a batch of 16, the settings timed in
alternation (``--rounds`` rounds, median), and the recall under one random ~10% filter (exact
truth computed here) at the artifact's filtered settings. Prints one table per N; the time
ratio against ``probe_spread`` 0 is the number to read.
"""
import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
K = 100
# probed fractions of the clusters tried, smallest first
FRACTIONS = [f / 1000 for f in range(5, 40)] + [f / 1000 for f in range(40, 121, 2)]


def _walked_rows(index: Any, q: torch.Tensor, n_probe: int, spread: float) -> float:
    """Mean rows of each query's first ``n_probe`` clusters (what an unfiltered walk scans, at least)."""
    counts = (index.cluster_offsets[1:] - index.cluster_offsets[:-1]).double()
    top = index.centroid_scores(q, spread).topk(n_probe, dim=1).indices
    return float(counts[top].sum(dim=1).mean())


def measure(n: int, workdir: str, spreads: List[float], target: float, rounds: int) -> Dict[str, Any]:
    from ann_data import exact_topk, recall

    from silverrec.retrieval.ivf_index import IVFInt8Index, IVFInt8Tensors, cluster_spread
    from silverrec.retrieval.packed_mask import pack_mask
    from silverrec.serve.artifact import open_artifact

    art = open_artifact(os.path.join(workdir, f"scale_{n}.pt2"))
    state = dict(art.programs["model"].state_dict)
    names = ("centroids", "cluster_offsets", "codes", "scales", "cache", "row_to_id")
    tensors = IVFInt8Tensors(*(state[f"index.{name}"] for name in names))
    t0 = time.perf_counter()
    spread = cluster_spread(tensors.cache, tensors.centroids, tensors.cluster_offsets)
    spread_s = time.perf_counter() - t0
    index = IVFInt8Index(tensors._replace(cluster_spread=spread), art.metadata.get("quantization", "per_item"))
    config = art.metadata.get("serving_config", {})
    coverage, exponent = config.get("filtered_coverage", 1.0), config.get("coverage_exponent", 0.0)
    saved = torch.load(os.path.join(workdir, f"truth_{n}.pt"))
    rows = [i for i, label in enumerate(saved["labels"]) if label == "none"]
    truth = saved["truth"][rows]
    users = [t for name, t in state.items() if name.startswith("user_encoder.") and t.dim() == 2 and t.shape[0] == len(rows)]
    q = torch.nn.functional.normalize(users[0].float(), dim=-1)  # scale.py: user i's table row is query i
    C, N = index.num_clusters, index.num_items
    all_pass = torch.full((q.shape[0], (N + 63) // 64), -1, dtype=torch.int64)
    # one random ~10% filter in id order, its exact truth from the re-score rows (what the graph re-scores with)
    keep = torch.rand(N, generator=torch.Generator().manual_seed(1)) < 0.1
    items = torch.empty_like(tensors.cache)
    items[tensors.row_to_id] = tensors.cache
    truth10 = exact_topk(q, items.float(), keep, K)
    del items
    filt = pack_mask(keep[tensors.row_to_id][None])[0].expand(q.shape[0], -1)
    print(f"== N={n:,} C={C}: cluster spreads computed in {spread_s:.1f} s; filtered settings: coverage "
          f"{coverage}, exponent {exponent}", flush=True)
    out: Dict[str, Any] = {"n": n, "num_clusters": C, "spread_s": spread_s, "settings": []}
    for spread in spreads:
        chosen, r = C, 0.0
        for frac in FRACTIONS:
            n_probe = min(C, max(1, round(frac * C)))
            r = recall(index.search(q, K, n_probe=n_probe, mask=all_pass, probe_spread=spread).ids.numpy(), truth)
            if r >= target:
                chosen = n_probe
                break
        r10 = recall(torch.cat([index.search(q[s:s + 16], K, n_probe=chosen, mask=filt[s:s + 16],
                                             filtered_coverage=coverage, coverage_exponent=exponent,
                                             probe_spread=spread).ids for s in range(0, q.shape[0], 16)]).numpy(),
                     truth10)
        out["settings"].append({"probe_spread": spread, "n_probe": chosen, "recall": r, "recall_10pct": r10,
                                "rows": _walked_rows(index, q, chosen, spread), "times": [], "times_10pct": []})
        print(f"  probe_spread={spread}: n_probe={chosen} recall@{K}={r:.4f} (10% filter {r10:.4f})", flush=True)
    for _ in range(rounds):  # the settings in alternation, so drift on a shared machine hits all alike
        for s in out["settings"]:
            for key, mask, kw in (("times", all_pass, {}),
                                  ("times_10pct", filt, {"filtered_coverage": coverage, "coverage_exponent": exponent})):
                for b in range(0, min(q.shape[0], 128), 16):
                    t0 = time.perf_counter()
                    index.search(q[b:b + 16], K, n_probe=s["n_probe"], mask=mask[b:b + 16],
                                 probe_spread=s["probe_spread"], **kw)
                    s[key].append(time.perf_counter() - t0)
    base = out["settings"][0]
    for s in out["settings"]:
        s["b16_ms"] = 1000 * float(np.median(s.pop("times")))
        s["b16_ms_10pct"] = 1000 * float(np.median(s.pop("times_10pct")))
    print(f"| N = {n:,} | n_probe | rows of the first n_probe clusters | recall@100 | b16 ms (x vs first) "
          f"| ~10% filter: recall, b16 ms (x vs first) |")
    print("|---|---:|---:|---:|---:|---|")
    for s in out["settings"]:
        print(f"| probe_spread {s['probe_spread']} | {s['n_probe']} | {s['rows'] / 1e3:.0f}k | {s['recall']:.4f} | "
              f"{s['b16_ms']:.2f} ({s['b16_ms'] / base['b16_ms']:.2f}x) | {s['recall_10pct']:.4f}, "
              f"{s['b16_ms_10pct']:.2f} ({s['b16_ms_10pct'] / base['b16_ms_10pct']:.2f}x) |", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--workdir", default=os.path.join(REPO, "runs", "scale"))
    p.add_argument("--spreads", type=float, nargs="+", default=[0.0, 2.0, 3.0, 4.0])
    p.add_argument("--target", type=float, default=0.96, help="unfiltered recall@100 each setting's n_probe reaches")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("SCALE_THREADS", "2")))
    results = [measure(n, args.workdir, args.spreads, args.target, args.rounds) for n in args.sizes]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
