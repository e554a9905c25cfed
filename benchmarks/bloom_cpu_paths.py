"""``bloom_search`` on its two CPU paths: AVX2 words against AVX-512 words, same machine, same run.

Run:  .venv/bin/python benchmarks/bloom_cpu_paths.py             (~1 minute)
      .venv/bin/python benchmarks/bloom_cpu_paths.py --rounds 8 --items 1000000

The path is fixed per process (``SILVERREC_CPU_ISA``), so the driver alternates child processes,
``avx2`` then the CPU's default (``avx512_vnni`` where present), ``--rounds`` times; each child
times every case (median of ``--reps`` calls, one thread) and the table shows, per case, the
median over the rounds of each path and their ratio. The machine is shared: interleaving and
medians keep the load out of the ratio as far as they can, not entirely.

Cases: random bit-sliced signatures (M = 256 bit rows, ~30% ones) over ``--items`` rows, all rows
probed, batch 1 and 16, plans ``TERM`` (3 hash rows), ``TERM AND TERM`` and
``(TERM OR TERM) AND NOT_ROWS``.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

import torch

from silverrec.ops.reference import BLOOM_AND, BLOOM_NOT_ROWS, BLOOM_OR, BLOOM_TERM

PLANS = {
    "term": [BLOOM_TERM],
    "A and B": [BLOOM_TERM, BLOOM_TERM, BLOOM_AND],
    "(A or B) and not C": [BLOOM_TERM, BLOOM_TERM, BLOOM_OR, BLOOM_NOT_ROWS, BLOOM_AND],
}


def _child(items: int, reps: int) -> Dict[str, float]:
    """Median milliseconds per (plan, batch) on this process's path."""
    import silverrec  # noqa: F401  (registers the ops)

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    M, W, H = 256, (items + 63) // 64, 3
    bits = torch.randint(-(2**63), 2**63 - 1, (M, W), generator=g, dtype=torch.int64)
    bits &= torch.randint(-(2**63), 2**63 - 1, (M, W), generator=g, dtype=torch.int64)  # ~25-30% ones
    out = {}
    for name, ops in PLANS.items():
        for B in (1, 16):
            opcodes = torch.tensor([ops] * B)
            terms = torch.full_like(opcodes, -1)
            hashes = torch.randint(0, M, (B, len(ops), H), generator=g)
            args = (bits, opcodes, terms, hashes, torch.zeros(1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                    torch.zeros(B, 1, dtype=torch.int64), torch.tensor([0, items]))
            torch.ops.silverrec.bloom_search(*args)
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                torch.ops.silverrec.bloom_search(*args)
                times.append(1e3 * (time.perf_counter() - start))
            out[f"{name}, B={B}"] = statistics.median(times)
    out["path"] = silverrec.ops.cpu_isa()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.items, args.reps)))
        return
    runs: Dict[str, List[Dict[str, float]]] = {}
    for _ in range(args.rounds):
        for forced in ("avx2", None):
            env = {k: v for k, v in os.environ.items() if k != "SILVERREC_CPU_ISA"}
            if forced:
                env["SILVERREC_CPU_ISA"] = forced
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--items", str(args.items), "--reps",
                   str(args.reps)]
            res = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
            runs.setdefault(res.pop("path"), []).append(res)
    paths = sorted(runs)
    print(f"{args.items} rows, 1 thread, median of {args.rounds} interleaved rounds x {args.reps} calls; paths {paths}")
    print("| case | " + " | ".join(f"{p} ms" for p in paths) + " | avx2 / other |")
    print("|---|" + "---|" * (len(paths) + 1))
    for case in runs[paths[0]][0]:
        med = {p: statistics.median(r[case] for r in runs[p]) for p in paths}
        ratio = med["avx2"] / med[paths[-1]] if len(paths) > 1 else 1.0
        print(f"| {case} | " + " | ".join(f"{med[p]:.3f}" for p in paths) + f" | {ratio:.2f} |")


if __name__ == "__main__":
    main()
