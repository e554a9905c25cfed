"""Side-by-side ANN benchmark: silverrec IVFInt8Index vs FAISS, recall@100 against exact float32
search under the same filter vs queries/s, swept over n_probe / nprobe / efSearch.

    .venv/bin/pip install faiss-cpu==1.15.1 matplotlib   # the `bench` extra
    .venv/bin/python benchmarks/ann.py                   # 1M x 128 synthetic (+ demo embeddings if present)
    .venv/bin/python benchmarks/ann.py --n 100000 --batches 16 --no-hnsw   # a quick run
    .venv/bin/python benchmarks/ann.py --skip-synthetic --batches 16       # the demo embeddings only

Data: clustered synthetic embeddings (Gaussian blobs with log-normal norms) and, when
``runs/demo/item_embeddings.pt`` exists ({"items": [N, D], "users": [U, D]}), the demo model's
item embeddings with its user embeddings as queries. Filters: none, and one random filter per
setting passing 10% / 1% of the items, shared by every query (FAISS takes one IDSelectorBitmap
per search call); silverrec gets the same filter as a packed mask in its row order, as
``bloom_search`` produces it. Both libraries use the same thread count, in the same run.
"""
import argparse
import math
import os
import time

# Two OpenMP runtimes (torch's and faiss's libgomp) busy-waiting on 2 shared cores starve each
# other (a 50k-element torch op went from 0.05 ms to 7 ms here with unbounded spinning), while
# purely passive waiting (OMP_WAIT_POLICY=PASSIVE) makes every parallel region wake sleeping
# threads through the kernel (both libraries ran ~1.6x slower at batch 16). A short spin (this
# many iterations, then sleep) keeps a library's threads warm between its own consecutive
# regions and lets them sleep while the other library runs; it applies to both runtimes.
os.environ.setdefault("GOMP_SPINCOUNT", "100000")
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from silverrec.retrieval import IVFInt8Index
from silverrec.retrieval.packed_mask import pack_mask

K = 100


def synthetic(n: int, d: int, nq: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Blobs: 4 * sqrt(n) centres, unit-variance points around them, log-normal norms."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(max(1, int(math.sqrt(n))), d, generator=g)
    def draw(m: int) -> torch.Tensor:
        x = centers[torch.randint(0, centers.shape[0], (m,), generator=g)] + 0.5 * torch.randn(m, d, generator=g)
        return x * torch.exp(0.25 * torch.randn(m, 1, generator=g))
    return draw(n), draw(nq)


def exact_topk(q: torch.Tensor, x: torch.Tensor, mask: Optional[torch.Tensor], k: int = K) -> torch.Tensor:
    """Exact float32 top-k ids under ``mask`` (bool [N] shared by all queries), blockwise."""
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
    hit = total = 0
    for a, t in zip(ids, truth.numpy()):
        t = set(t[t >= 0].tolist())
        hit += len(t & set(a.tolist()))
        total += len(t)
    return hit / max(total, 1)


def timed(search: Callable[[np.ndarray], np.ndarray], q: np.ndarray, batch: int, repeats: int = 3,
          budget_s: float = 1.0) -> Tuple[np.ndarray, float]:
    """Runs search over q in batches (one warm-up batch first); returns (ids [Q, K], QPS).

    The pass over q is repeated up to ``repeats`` times while the passes so far took less than
    ``budget_s``, and the fastest pass counts: on a shared machine one pass can lose 2x to another
    process, which let a slower setting win the summary (best QPS at a recall floor).
    """
    search(q[:batch])
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        out, t0 = [], time.perf_counter()
        for s in range(0, q.shape[0], batch):
            out.append(search(q[s : s + batch]))
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
        if spent >= budget_s:
            break
    return np.concatenate(out), q.shape[0] / best


def run_dataset(name: str, x: torch.Tensor, queries: torch.Tensor, args: argparse.Namespace, rows: List[Dict]) -> None:
    import faiss

    N, D = x.shape
    C = args.clusters or max(1, int(round(4 * math.sqrt(N))))
    print(f"\n== {name}: N={N} D={D} C={C} threads={torch.get_num_threads()} ==", flush=True)
    t = time.perf_counter()
    index = IVFInt8Index.build(x, num_clusters=C, num_iters=args.iters, max_points_per_cluster=args.sample_per_cluster)
    print(f"silverrec build {time.perf_counter() - t:.1f}s", flush=True)
    xn = x.numpy()
    g = torch.Generator().manual_seed(1)
    train = xn[torch.randperm(N, generator=g)[: min(N, args.sample_per_cluster * C)].numpy()]
    t = time.perf_counter()
    quantizer = faiss.IndexFlatIP(D)
    ivf_flat = faiss.IndexIVFFlat(quantizer, D, C, faiss.METRIC_INNER_PRODUCT)
    ivf_flat.cp.niter = args.iters
    ivf_flat.train(train)
    sq8 = faiss.IndexIVFScalarQuantizer(quantizer, D, C, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq8.train(train)  # the coarse quantizer is already trained: this trains the SQ ranges
    ivf_flat.add(xn)
    sq8.add(xn)
    print(f"faiss IVF train+add {time.perf_counter() - t:.1f}s", flush=True)
    flat = faiss.IndexFlatIP(D)
    flat.add(xn)
    hnsw = None
    if not args.no_hnsw:
        t = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(D, 16, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 40
        hnsw.add(xn)
        print(f"faiss HNSW(M=16, efC=40) build {time.perf_counter() - t:.1f}s", flush=True)

    gq = torch.Generator().manual_seed(2)
    for filt in args.filters:
        mask = None if filt >= 1.0 else torch.rand(N, generator=gq) < filt
        truth = exact_topk(queries, x, mask)
        packed = None if mask is None else pack_mask(mask[index.row_to_id][None, :])  # [1, W] row order
        sel = None if mask is None else faiss.IDSelectorBitmap(np.packbits(mask.numpy(), bitorder="little"))
        label = "none" if mask is None else f"{filt:.0%}"
        for batch in args.batches:
            nq = min(queries.shape[0], args.queries_b1 if batch == 1 else args.queries)
            qt, qn = queries[:nq], queries[:nq].numpy()
            tr = truth[:nq]

            def ours(n_probe: int) -> Callable[[np.ndarray], np.ndarray]:
                def f(qb: np.ndarray) -> np.ndarray:
                    qb_t = torch.from_numpy(qb)
                    m = None if packed is None else packed.expand(qb_t.shape[0], -1)
                    return index.search(qb_t, K, n_probe=n_probe, mask=m).ids.numpy()
                return f

            def fa(idx, params) -> Callable[[np.ndarray], np.ndarray]:  # type: ignore[no-untyped-def]
                return lambda qb: idx.search(qb, K, params=params)[1]

            sweeps = [("silverrec IVF-INT8", "n_probe", p, ours(p), lambda qb: None) for p in args.nprobe if p <= C]
            sweeps = [(m, pn, p, f) for m, pn, p, f, _ in sweeps]
            sweeps.append(("faiss FlatIP", "-", 0, fa(flat, faiss.SearchParameters(sel=sel) if sel else None)))
            for p in args.nprobe:
                if p > C:
                    continue
                params = faiss.SearchParametersIVF(nprobe=p, sel=sel) if sel else faiss.SearchParametersIVF(nprobe=p)
                sweeps.append(("faiss IVFFlat", "nprobe", p, fa(ivf_flat, params)))
                sweeps.append(("faiss IVFSQ8", "nprobe", p, fa(sq8, params)))
            if hnsw is not None:
                for ef in args.ef:
                    params = faiss.SearchParametersHNSW(efSearch=ef, sel=sel) if sel else faiss.SearchParametersHNSW(efSearch=ef)
                    sweeps.append(("faiss HNSWFlat", "efSearch", ef, fa(hnsw, params)))
            best_r: Dict[str, float] = {}
            slow: Dict[str, bool] = {}
            timed_again: List[Tuple[Dict, Callable[[np.ndarray], np.ndarray]]] = []
            for method, pname, p, f in sweeps:
                # saturated recall, or one setting already took > 8 s: larger settings only cost time
                if best_r.get(method, 0.0) >= 0.999 or slow.get(method, False):
                    continue
                ids, qps = timed(f, qn, batch, args.repeats)
                slow[method] = nq / qps > 8.0
                r = recall(ids, tr)
                best_r[method] = max(best_r.get(method, 0.0), r)
                rows.append(dict(data=name, filter=label, batch=batch, method=method, param=f"{pname}={p}" if p else "exact",
                                 recall=r, qps=qps))
                if nq / qps < 2.0:
                    timed_again.append((rows[-1], f))
                print(f"{name:9s} filter={label:4s} batch={batch:3d} {method:18s} {rows[-1]['param']:14s} "
                      f"recall@100={r:.4f} QPS={qps:9.1f}", flush=True)
            # Interleaved rounds: every setting (of those taking < 2 s a pass) is timed again in
            # turn, so a slow stretch of the shared machine hits every library alike; the
            # fastest pass of all rounds counts.
            for _ in range(args.rounds - 1):
                for row, f in timed_again:
                    row["qps"] = max(row["qps"], timed(f, qn, batch, repeats=1)[1])
            if args.rounds > 1 and timed_again:
                print(f"{name:9s} filter={label:4s} batch={batch:3d} best of {args.rounds} interleaved rounds: "
                      + ", ".join(f"{r['method'].split()[-1]} {r['param']} {r['qps']:.0f}" for r, _ in timed_again),
                      flush=True)


def summarize(rows: List[Dict], batch: int, floor: float) -> str:
    """Best QPS per (data, filter, method) at recall >= floor, and the silverrec / best-FAISS ratio."""
    lines = [f"| data | filter | method | best QPS at recall@100 >= {floor} (batch {batch}) | setting | recall@100 | max recall@100 |",
             "|---|---|---|---:|---|---:|---:|"]
    keys = sorted({(r["data"], r["filter"]) for r in rows}, key=lambda k: (k[0], ["none", "10%", "1%"].index(k[1])))
    for data, filt in keys:
        sel = [r for r in rows if r["data"] == data and r["filter"] == filt and r["batch"] == batch]
        best: Dict[str, Optional[Dict]] = {}
        for m in dict.fromkeys(r["method"] for r in sel):
            ok = [r for r in sel if r["method"] == m and r["recall"] >= floor]
            best[m] = max(ok, key=lambda r: r["qps"]) if ok else None
            top = max(r["recall"] for r in sel if r["method"] == m)
            b = best[m]
            lines.append(f"| {data} | {filt} | {m} | {b['qps']:.0f} | {b['param']} | {b['recall']:.4f} | {top:.4f} |" if b
                         else f"| {data} | {filt} | {m} | not reached | - | - | {top:.4f} |")
        ours = best.get("silverrec IVF-INT8")
        faiss_best = max((b["qps"] for m, b in best.items() if b and m.startswith("faiss")), default=None)
        if ours and faiss_best:
            lines.append(f"| {data} | {filt} | **silverrec / best FAISS** | **{ours['qps'] / faiss_best:.2f}x** | | | |")
    return "\n".join(lines)


def plot(rows: List[Dict], path: str, batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["data"], r["filter"]) for r in rows}, key=lambda k: (k[0], ["none", "10%", "1%"].index(k[1])))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (data, filt) in zip(axes[0], panels):
        sel = [r for r in rows if r["data"] == data and r["filter"] == filt and r["batch"] == batch]
        for m in dict.fromkeys(r["method"] for r in sel):
            pts = sorted((r["recall"], r["qps"]) for r in sel if r["method"] == m)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if "silverrec" in m else ".--", label=m)
        ax.set_yscale("log")
        ax.set_xlabel("recall@100 vs exact float32")
        ax.set_ylabel("queries / s")
        ax.set_title(f"{data}, filter {filt}, batch {batch}")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--clusters", type=int, default=None, help="IVF lists for both libraries (default 4 sqrt(N))")
    p.add_argument("--iters", type=int, default=6, help="k-means iterations (both libraries)")
    p.add_argument("--sample-per-cluster", type=int, default=20, help="k-means training sample per cluster")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256])
    p.add_argument("--filters", type=float, nargs="+", default=[1.0, 0.1, 0.01])
    p.add_argument("--nprobe", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])
    p.add_argument("--ef", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--queries", type=int, default=512, help="queries per setting (batch 16 / 256)")
    p.add_argument("--queries-b1", type=int, default=64, help="queries per setting at batch 1")
    p.add_argument("--no-hnsw", action="store_true", help="skip HNSW (its 1M build takes minutes)")
    p.add_argument("--plot", default="docs/ann_recall_qps.png")
    p.add_argument("--demo", default="runs/demo/item_embeddings.pt")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per setting (the fastest counts; "
                   "fewer once a setting has taken 1 s)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds: after the sweep, every setting "
                   "is timed again in turn this many times minus one (the fastest pass counts)")
    p.add_argument("--skip-synthetic", action="store_true", help="run the demo embeddings only")
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")

    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rows: List[Dict] = []
    if not args.skip_synthetic:
        x, q = synthetic(args.n, args.d, max(args.queries, args.queries_b1))
        run_dataset("synthetic", x, q, args, rows)
        del x
    if os.path.exists(args.demo):
        emb = torch.load(args.demo)
        run_dataset("demo", emb["items"].float().contiguous(), emb["users"].float()[: args.queries].contiguous(), args, rows)
    else:
        print(f"\n(demo embeddings skipped: {args.demo} does not exist; `make demo` writes it)")
    for batch in args.batches:
        print(f"\n{summarize(rows, batch, 0.95)}")
    print(f"\n{summarize(rows, 16, 0.99)}")
    if args.plot:
        os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
        plot(rows, args.plot, 16)


if __name__ == "__main__":
    main()
