"""How many clusters a query must probe for recall@100 >= a target, against N (issue 18, item 3).

    .venv/bin/python benchmarks/probe_growth.py [--sizes 1000000 3000000 10000000] [--workdir runs/scale]

Reads the artifacts and exact top-100 that ``benchmarks/scale.py`` left in ``--workdir``
(``scale_<N>.pt2``, ``truth_<N>.pt``), rebuilds the served ``IVFInt8Index`` from the artifact's
(memory-mapped) tensors and the unfiltered queries from its user table, and for a ladder of
absolute probe counts measures, through the index layer's op (``IVFInt8Index.search`` with an
all-passing mask, as scale.py's calibration does, K0 = K = 100), the unfiltered recall@100 of all
the run's unfiltered queries against exact search and the median time of a batch of 16. It prints
per N the smallest probe count reaching each target (and the rows it scans, ``n_probe * N / C``)
and the recall of the serving default (``ServingConfig.probes``, ``serving.n_probe = null``), then fits ``n_probe ~ N^b`` between the sizes: ``b = 0`` is the square-root growth of the scanned
rows that IVF with ``C = 4 sqrt(N)`` gives when a fixed number of probes suffices.
"""
import argparse
import json
import math
import os
import sys
import time
from typing import Any, Dict, List

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
K = 100
LADDER = (40, 60, 80, 100, 120, 140, 160, 180, 200, 220, 240, 260, 280, 300, 330, 360, 400, 450, 500, 560, 640, 720)


def _index(state: Dict[str, torch.Tensor], quantization: str) -> Any:
    from silverrec.retrieval.ivf_index import IVFInt8Index, IVFInt8Tensors

    names = ("centroids", "cluster_offsets", "codes", "scales", "cache", "row_to_id")
    return IVFInt8Index(IVFInt8Tensors(*(state[f"index.{n}"] for n in names)), quantization)


def measure(n: int, workdir: str, targets: List[float]) -> Dict[str, Any]:
    from ann_data import recall

    from silverrec.retrieval.serving_graph import ServingConfig
    from silverrec.serve.artifact import open_artifact

    art = open_artifact(os.path.join(workdir, f"scale_{n}.pt2"))
    state = dict(art.programs["model"].state_dict)
    index = _index(state, art.metadata.get("quantization", "per_item"))
    saved = torch.load(os.path.join(workdir, f"truth_{n}.pt"))
    rows = [i for i, label in enumerate(saved["labels"]) if label == "none"]
    truth = saved["truth"][rows]
    users = [t for name, t in state.items() if name.startswith("user_encoder.") and t.dim() == 2 and t.shape[0] == len(rows)]
    q = torch.nn.functional.normalize(users[0].float(), dim=-1)  # scale.py: user i's table row is query i
    C = index.num_clusters
    mask = torch.full((q.shape[0], (index.num_items + 63) // 64), -1, dtype=torch.int64)
    rule = ServingConfig().probes(C)  # the serving default (n_probe = null)
    out: Dict[str, Any] = {"n": n, "num_clusters": C, "queries": q.shape[0], "ladder": [], "default_n_probe": rule}
    reached = {t: None for t in targets}
    for n_probe in sorted(p for p in set(LADDER) | {rule} if p <= C):
        ids = index.search(q, K, n_probe=n_probe, mask=mask).ids
        r = recall(ids.numpy(), truth)
        times = []
        for s in range(0, min(q.shape[0], 128), 16):
            t0 = time.perf_counter()
            index.search(q[s:s + 16], K, n_probe=n_probe, mask=mask[s:s + 16])
            times.append(time.perf_counter() - t0)
        ms = 1000 * float(np.median(times))
        out["ladder"].append({"n_probe": n_probe, "recall": r, "b16_ms": ms})
        if n_probe == rule:
            out["default_recall"] = r
        print(f"  N={n:,} C={C}: n_probe={n_probe} ({n_probe / C:.1%}){' (the default)' if n_probe == rule else ''} "
              f"recall@{K}={r:.4f} scan {n_probe * n / C / 1e3:.0f}k rows, b16 {ms:.1f} ms", flush=True)
        for t in targets:
            if reached[t] is None and r >= t:
                reached[t] = n_probe
        if all(v is not None for v in reached.values()) and n_probe >= rule:
            break
    out["needed"] = {str(t): reached[t] for t in targets}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    p.add_argument("--workdir", default=os.path.join(REPO, "runs", "scale"))
    p.add_argument("--targets", type=float, nargs="+", default=[0.95, 0.96])
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("SCALE_THREADS", "2")))
    results = [measure(n, args.workdir, args.targets) for n in args.sizes]
    print("| N | C | " + " | ".join(f"n_probe for {t} (% of C, rows scanned)" for t in args.targets) + " |")
    print("|---|---|" + "---|" * len(args.targets))
    for r in results:
        cells = []
        for t in args.targets:
            p_ = r["needed"][str(t)]
            cells.append("not reached" if p_ is None else
                         f"{p_} ({p_ / r['num_clusters']:.1%}, {p_ * r['n'] / r['num_clusters'] / 1e3:.0f}k)")
        print(f"| {r['n']:,} | {r['num_clusters']:,} | " + " | ".join(cells) +
              f" | default {r['default_n_probe']}: recall {r['default_recall']:.4f} |")
    for t in args.targets:
        pts = [(r["n"], r["needed"][str(t)]) for r in results if r["needed"][str(t)]]
        for (n0, p0), (n1, p1) in zip(pts, pts[1:]):
            b = math.log(p1 / p0) / math.log(n1 / n0)
            print(f"recall {t}: n_probe ~ N^{b:.2f} from {n0:,} to {n1:,}; scanned rows ~ N^{b + 0.5:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
