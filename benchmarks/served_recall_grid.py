"""Index loss of the serving graph over a grid of its retrieval settings (issue 14).

    python benchmarks/served_recall_grid.py [--checkpoint runs/demo/checkpoints/step_00002000.pt]
        [--users 256] [--k0 100 200 300] [--n-probe 18 27 36] [--batches 1 16 64]

For every (``candidates_per_task`` K0, ``n_probe``) pair the serving graph is built from the
checkpoint (as ``silverrec-export`` publishes it; one index, built once) and run eagerly on the
held-out test users of ``silverrec-eval model=...`` (history up to the split, every seen item
excluded), with no filter and under the filter suite (~50%, ~10%, ~1% pass rates,
:func:`silverrec.train.served_eval.filter_suite`). Each row gives ``recall_vs_exact@K`` (the served
top-K against the exact top-K of the same towers, OverArch and Value Model over every passing
item) per filter class (mean over the class's filters), the mean distinct candidates the OverArch
scores per query (of T x K0 slots), and the eager graph's median latency per batch size (no
filter) with its ratio to the first row's, measured in the same run with the configurations
interleaved call by call. The eager graph is the module the
artifact exports (parity 1.0 in ``make demo``); its absolute times are not the AOTInductor
graph's, the ratios are what to read.
"""
import argparse
import itertools
import os
import time
from typing import Dict, List, Sequence

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from markdown_table import print_table
from silverrec.retrieval.attribute_filter import AttributeFilter
from silverrec.retrieval.fresh_index import empty_fresh_index
from silverrec.retrieval.serving_graph import RetrievalGraph, ServingConfig
from silverrec.serve.requests import RequestEncoder
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.evaluator import eval_users
from silverrec.train.export import build_serving_graph, example_users, publish_item_embeddings
from silverrec.train.served_eval import exact_top, filter_suite, item_values, recall
from silverrec.train.trainer import load_two_tower

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = (("none", 1.0), ("~50%", 0.5), ("~10%", 0.1), ("~1%", 0.01))


def _class_of(fraction: float) -> str:
    """The suite class (nearest target pass rate in log ratio) of a filter's pass fraction."""
    if fraction >= 0.999:
        return "none"
    return min(CLASSES[1:], key=lambda c: abs(np.log(fraction / c[1])))[0]


@torch.no_grad()
def served(graph: RetrievalGraph, inputs: Sequence[Tensor], fresh: Sequence[Tensor], batch: int = 64) -> List[np.ndarray]:
    """The served rows of every query (best first, padding dropped)."""
    out: List[np.ndarray] = []
    for s in range(0, inputs[0].shape[0], batch):
        ids, _, _, n = graph(*[t[s:s + batch] for t in inputs], *fresh)
        out += [ids[b, : int(n[b])].numpy() for b in range(ids.shape[0])]
    return out


@torch.no_grad()
def candidates_per_query(graph: RetrievalGraph, inputs: Sequence[Tensor], fresh: Sequence[Tensor]) -> float:
    """Mean distinct candidates (the merged task lists) the OverArch scores per query."""
    user_ids, opcodes, terms, hashes, exclude = [t[:64] for t in inputs]
    q = graph.user_encoder(user_ids).float()
    main = graph._main_candidates(q, opcodes, terms, hashes, exclude, fresh[0])
    f = graph._fresh_candidates(q, opcodes, terms, hashes, *fresh[1:9])
    return float((graph._merge(main, f) >= 0).sum(1).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=os.path.join(REPO, "runs", "demo", "checkpoints", "step_00002000.pt"))
    p.add_argument("--users", type=int, default=256)
    p.add_argument("--k0", type=int, nargs="+", default=[100, 200, 300])
    p.add_argument("--n-probe", type=int, nargs="+", default=[18, 27, 36])
    p.add_argument("--merged", type=int, nargs="+", default=[0],
                   help="serving.merged_candidates values (0: all T x K0 slots, no cut)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--calls", type=int, default=12, help="timed calls per batch size")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    payload = load_checkpoint(args.checkpoint)
    ds = instantiate(OmegaConf.create(payload["data_config"]))
    model = load_two_tower(payload).eval()
    base, _, meta = build_serving_graph(model, ds, ServingConfig(k=100))
    enc = RequestEncoder(meta)
    n_items = ds.items.num_rows
    users = eval_users(ds, "test", args.users, seed=0)
    U = int(users.users.size)
    ids = ds.schema.item_ids
    user_ids = enc.users(example_users(ds, users.users, users.history))
    exclude = enc.exclude([[ids[r] for r in users.seen.row(i)] for i in range(U)], U)
    fresh = tuple(empty_fresh_index(enc.filter_layout, int(meta["dim"]), n_items))
    items = publish_item_embeddings(model, ds)
    with torch.no_grad():
        u = base.user_encoder(user_ids)
    history = user_ids[:, base.history_start:base.history_end]
    t0 = time.perf_counter()
    values = [item_values(model, u[b], items, history[b]) for b in range(U)]
    attr = AttributeFilter(ds.item_terms())
    suite = [("", 1.0)] + filter_suite(ds.item_terms())
    want: Dict[str, List[np.ndarray]] = {}
    for expr, _ in suite:
        passing = attr(expr, np.arange(n_items))
        want[expr] = []
        for b in range(U):
            ok = passing.copy()
            ok[users.seen.row(b)] = False
            want[expr].append(exact_top(values[b], ok, base.k))
    print(f"checkpoint {args.checkpoint}: {n_items} items, {base.index.num_clusters} clusters (default n_probe "
          f"{base.n_probe}), {U} test users, exact reference in {time.perf_counter() - t0:.0f} s; filters: "
          + "; ".join(f"{e or 'none'} ({f:.4f})" for e, f in suite))

    header = ["K0", "n_probe", "merged", "candidates"] + [f"{c} recall_vs_exact@{base.k}" for c, _ in CLASSES]
    header += [f"batch {b} ms (ratio)" for b in args.batches]
    plain = (user_ids, *enc.filters("", U), exclude)
    graphs, rows = [], []
    for k0, n_probe, merged in itertools.product(args.k0, args.n_probe, args.merged):
        graph = RetrievalGraph(base.user_encoder, base.scorer, base.index, base.bloom, base.k, k0, n_probe,
                               ds.schema.num_items, merged_candidates=merged or None).eval()
        by_class: Dict[str, List[float]] = {c: [] for c, _ in CLASSES}
        for expr, fraction in suite:
            plans = enc.filters(expr, U)
            got = served(graph, (user_ids, *plans, exclude), fresh)
            by_class[_class_of(fraction)].append(recall(got, want[expr]))
        row = [str(k0), str(n_probe), str(graph.merged), f"{candidates_per_query(graph, plain, fresh):.0f}"]
        row += [f"{np.mean(by_class[c]):.4f}" if by_class[c] else "-" for c, _ in CLASSES]
        graphs.append(graph)
        rows.append(row)
        print(" ".join(row), flush=True)
    # latency: the configurations interleaved call by call, so a busy machine slows them alike
    times = [[[] for _ in args.batches] for _ in graphs]
    with torch.no_grad():
        for graph in graphs:
            graph(*[t[:max(args.batches)] for t in plain], *fresh)  # warm-up
        for c in range(args.calls):
            for g, graph in enumerate(graphs):
                for j, b in enumerate(args.batches):
                    idx = (torch.arange(b) + c * b) % U
                    t0 = time.perf_counter()
                    graph(*[t[idx] for t in plain], *fresh)
                    times[g][j].append(1000 * (time.perf_counter() - t0))
    first = [float(np.median(t)) for t in times[0]]
    for row, per_batch in zip(rows, times):
        row += [f"{np.median(t):.1f} ({np.median(t) / f:.2f}x)" for t, f in zip(per_batch, first)]
    print()
    print_table([header] + rows)


if __name__ == "__main__":
    main()
