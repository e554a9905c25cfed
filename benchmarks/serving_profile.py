"""Where the served graph's time goes: a per-stage table at batch 1, 16 and 64, with and without a filter.

    python benchmarks/serving_profile.py [--model runs/demo/serving.pt2] [--batches 1 16 64]
    python benchmarks/serving_profile.py --compare OTHER.pt2   # also time another artifact of the same model
    python benchmarks/serving_profile.py --compare OTHER.pt2 --recall 512   # and both artifacts' served recall

The stages are those of ``RetrievalGraph.forward`` (one method or sub-module each), timed on the
eager graph rebuilt from the artifact's checkpoint with the artifact's serving config (the same
modules and ops the export traced): user tower, the ANN stage with its Bloom filter
(``ivf_search_bloom`` through the ``IVFInt8Index`` layer: probe, then filter), fresh rows, merge, exact filter check,
candidate vectors, side features, OverArch MLP, the dot product + softmax + Value Model, top-K.
The ANN stage's own split (a Bloom pass over all rows, which the served op does not make, query
codes, centroid matmul, probe choice, INT8 scan, exact re-score) comes from single-step ops run
on the same inputs (the fused op runs them per query on
one thread, so its split cannot be timed from outside). The last rows time the artifact itself
(AOTInductor when it holds a compiled graph, and its torch.export program), and with
``--compare`` another artifact on the same inputs, in turn, so both see the same machine load.

Queries: test-split users of the artifact's data with their latest training history, that
history excluded, and no filter / the demo filter. Times are medians over the batches, in ms per
batch (a call); every configuration is timed in interleaved rounds. ``--recall N`` also measures
each artifact's served recall@K against the exact value ranking (every item passing the filter,
minus the exclusions, scored by the same OverArch + Value Model; ``benchmarks/serving.py``'s
reference) on N users over the filter mix of ``benchmarks/serving.py``.
"""
import argparse
import os
import time
from collections import defaultdict
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from silverrec.data.dataset import RecDataset
from silverrec.retrieval.probe_policy import probe_plan
from silverrec.retrieval.serving_graph import ServingConfig
from silverrec.serve import Retriever
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.export import build_serving_graph, example_users, latest_history
from silverrec.train.trainer import load_two_tower

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_FILTER = "language:en AND NOT category:music"
ANN_MASK = "  ann: Bloom over all rows + exclusions (not served)"
ANN_STEPS = ("  ann: query codes", "  ann: centroid matmul", "  ann: probe choice", "  ann: INT8 scan",
             "  ann: exact re-score")


class StageTimer:
    """Wall-clock time of the graph's stages (methods and sub-modules), exclusive of nested ones."""

    def __init__(self) -> None:
        self.total: Dict[str, float] = defaultdict(float)
        self._stack: List[List[float]] = []  # [start, time spent in nested stages]

    def wrap_method(self, owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            self._enter()
            try:
                return original(*args, **kwargs)
            finally:
                self._exit(label)
        setattr(owner, name, timed)  # an instance attribute shadows the method

    def wrap_module(self, module: torch.nn.Module, label: str) -> None:
        module.register_forward_pre_hook(lambda *_: self._enter())
        module.register_forward_hook(lambda *_: self._exit(label))

    def _enter(self) -> None:
        self._stack.append([time.perf_counter(), 0.0])

    def _exit(self, label: str) -> None:
        start, nested = self._stack.pop()
        spent = time.perf_counter() - start
        self.total[label] += spent - nested
        if self._stack:
            self._stack[-1][1] += spent


def instrument(graph: torch.nn.Module, timer: StageTimer, captured: Dict[str, tuple]) -> List[str]:
    """Hooks the graph's stages; returns their labels in forward order."""
    labels = []

    def add(label: str) -> str:
        labels.append(label)
        return label
    timer.wrap_module(graph.user_encoder, add("user tower"))
    stage = graph._main_candidates

    def capture(*args):
        captured.update(ann=args)
        return stage(*args)
    graph._main_candidates = capture
    timer.wrap_method(graph, "_main_candidates", add("ANN stage + Bloom filter (ivf_search_bloom)"))
    timer.wrap_method(graph, "_fresh_candidates", add("fresh rows"))
    timer.wrap_method(graph, "_merge", add("merge"))
    timer.wrap_method(graph, "_exact_check", add("exact filter check"))
    timer.wrap_method(graph, "_candidate_vectors", add("candidate vectors"))
    over_arch = graph.scorer.over_arch
    if over_arch is not None and over_arch.side_features is not None:
        timer.wrap_module(over_arch.side_features, add("side features"))
    if over_arch is not None:
        timer.wrap_module(over_arch, add("OverArch MLP"))
    timer.wrap_module(graph.scorer, add("dot product, softmax, Value Model"))
    timer.wrap_method(graph, "_top_k", add("top-K"))
    return labels


def ann_steps(graph: torch.nn.Module, args: tuple) -> Dict[str, float]:
    """The ANN stage's split: the Bloom filter over all rows (plus exclusions and tombstones) and
    the four steps as single ops on the same inputs (seconds each)."""
    queries, opcodes, terms, hashes, exclude, deleted = args
    index, k, n_probe = graph.index, graph.k0, graph.n_probe
    B, T, D = queries.shape
    out, t = {}, time.perf_counter
    tm = t()
    mask = graph._filter_mask(opcodes, terms, hashes, exclude, deleted)
    out[ANN_MASK] = t() - tm
    plan = probe_plan(k, n_probe, index.num_items, index.num_clusters, True)
    q = queries.reshape(B * T, D)
    flat_mask = mask.repeat_interleave(T, dim=0)
    t0 = t()
    q_codes, q_scales = torch.ops.silverrec.quantize_int8_rowwise(q)
    t1 = t()
    cs = index.centroid_scores(q, graph.probe_spread, graph.probe_precision)
    t2 = t()
    probe = torch.ops.silverrec.ivf_select_probes(cs, index.cluster_offsets, flat_mask, plan.n_probe, plan.min_rows,
                                                  plan.max_probe)
    t3 = t()
    _, rows, _ = torch.ops.silverrec.ivf_int8_topk(q_codes, q_scales, index.codes, index.scales, index.cluster_offsets,
                                                   probe, flat_mask, plan.k0)
    t4 = t()
    torch.ops.silverrec.ivf_rescore_topk(q, index.cache, rows, index.row_to_id, k)
    t5 = t()
    for label, a, b in zip(ANN_STEPS, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
        out[label] = b - a
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=os.path.join(REPO, "runs", "demo", "serving.pt2"))
    p.add_argument("--checkpoint", default="", help="default: the one recorded in the artifact")
    p.add_argument("--compare", default="", help="another artifact of the same model and data, timed alike")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--queries", type=int, default=256, help="queries per configuration")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--recall", type=int, default=0, help="users for served recall@K against exact (0: skip)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    retriever = Retriever(args.model)
    meta = retriever.metadata
    ckpt = args.checkpoint or meta.get("checkpoint", "")
    if not ckpt or not os.path.isfile(ckpt):
        raise SystemExit(f"no checkpoint {ckpt!r}: pass --checkpoint (the one {args.model} was exported from)")
    payload = load_checkpoint(ckpt)
    ds: RecDataset = instantiate(OmegaConf.create(payload["data_config"]))
    model = load_two_tower(payload).eval()
    graph, _, _ = build_serving_graph(model, ds, ServingConfig(**meta["serving_config"]))
    graph.eval()
    served = {f"served: {retriever.backend}": retriever}
    if retriever.backend == "aoti":
        served["served: torch.export"] = Retriever(args.model, backend="export")
    if args.compare:
        other = Retriever(args.compare)
        served[f"compare: {os.path.basename(args.compare)} ({other.backend})"] = other
    print(f"model {args.model} ({retriever.backend}), checkpoint {ckpt}: {graph.num_items} items, "
          f"{graph.num_clusters} clusters, n_probe {graph.n_probe}, K0 {graph.k0}, K {graph.k}, "
          f"{graph.num_tasks} tasks, {args.threads} threads, CPU path {torch.ops.silverrec and _cpu_isa()}")

    rng = np.random.default_rng(0)
    test_users = np.unique(ds.interactions.user[ds.split.test])
    users = np.sort(rng.choice(test_users, size=min(args.queries, test_users.size), replace=False))
    reqs = example_users(ds, users, latest_history(ds, users))
    enc = retriever.encoder
    user_ids = enc.users(reqs)
    exclude = enc.exclude([r.get("history", []) for r in reqs], len(reqs))
    fresh = retriever.fresh_index
    timer, captured = StageTimer(), {}
    labels = instrument(graph, timer, captured)

    columns: List[Tuple[int, str]] = [(b, f) for b in args.batches for f in ("none", "demo filter")]
    stage_ms: Dict[Tuple[int, str], Dict[str, float]] = {}
    for batch, filt in columns:
        n = len(reqs) - len(reqs) % batch
        ops, terms, hashes = enc.filters([DEMO_FILTER if filt != "none" else ""] * n, n)
        chunks = [slice(s, s + batch) for s in range(0, n, batch)]

        def inputs(s: slice) -> tuple:
            return user_ids[s], ops[s], terms[s], hashes[s], exclude[s]
        per_call: Dict[str, List[float]] = defaultdict(list)
        runs: Dict[str, Callable[[slice], None]] = {name: (lambda s, r=r: r.search(*inputs(s))) for name, r in served.items()}
        with torch.no_grad():
            for name, fn in runs.items():
                fn(chunks[0])  # warm-up
            graph(*inputs(chunks[0]), *fresh)
            for _ in range(args.rounds):
                for s in chunks:
                    timer.total.clear()
                    t0 = time.perf_counter()
                    graph(*inputs(s), *fresh)
                    per_call["eager graph (sum of the stages)"].append(time.perf_counter() - t0)
                    for label in labels:
                        per_call[label].append(timer.total[label])
                    for label, secs in ann_steps(graph, captured["ann"]).items():
                        per_call[label].append(secs)
                    for name, fn in runs.items():
                        t0 = time.perf_counter()
                        fn(s)
                        per_call[name].append(time.perf_counter() - t0)
        stage_ms[(batch, filt)] = {k: 1000 * float(np.median(v)) for k, v in per_call.items()}
        print(f"batch {batch}, {filt}: done", flush=True)

    rows = labels[:2] + [ANN_MASK] + list(ANN_STEPS) + labels[2:] + ["eager graph (sum of the stages)"] + list(served)
    head = " | ".join(f"b={b} {f}" for b, f in columns)
    print(f"\nms per batch (median of {args.rounds} rounds x the batches of {len(reqs)} queries); 'ann:' rows: the "
          f"ANN stage's steps as single ops on the same inputs")
    print(f"| stage | {head} |")
    print("|---|" + "---:|" * len(columns))
    for label in rows:
        cells = " | ".join(f"{stage_ms[c].get(label, float('nan')):.3f}" for c in columns)
        print(f"| {label} | {cells} |")
    if args.recall:
        served_recall(ds, model, graph, {n: r for n, r in served.items() if "torch.export" not in n}, args.recall)
    if args.compare:
        base, other = list(served)[0], list(served)[-1]
        print("\n" + ", ".join(f"b={b} {f}: {stage_ms[(b, f)][other] / stage_ms[(b, f)][base]:.2f}x"
                               for b, f in columns) + f"  (time of {other} / {base})")


def served_recall(ds: RecDataset, model: torch.nn.Module, graph: torch.nn.Module, served: Dict[str, Retriever],
                  num_users: int) -> None:
    """Prints each artifact's served recall@K against the exact value ranking, per filter."""
    # benchmarks/serving.py (a module beside this script, sys.path[0]; it imports faiss)
    from serving import FILTERS

    from silverrec.train.served_eval import history_slots, recall, reference_top

    from silverrec.train.export import publish_item_embeddings

    rng = np.random.default_rng(1)
    users = np.sort(rng.choice(np.unique(ds.interactions.user[ds.split.test]), size=num_users, replace=False))
    reqs = example_users(ds, users, latest_history(ds, users))
    filters = [FILTERS[i % len(FILTERS)] for i in range(num_users)]
    exclude_ids = [r.get("history", []) for r in reqs]
    row_of = {x: i for i, x in enumerate(ds.schema.item_ids)}
    enc = next(iter(served.values())).encoder
    user_ids = enc.users(reqs)
    ops, terms, hashes = enc.filters(filters, num_users)
    exclude = enc.exclude(exclude_ids, num_users)
    items = publish_item_embeddings(model, ds)
    passing = graph.bloom.matches(filters).numpy()  # exact; the graph's rows are item rows here
    with torch.no_grad():
        u = graph.user_encoder(user_ids)
    hs = history_slots(graph.user_encoder)
    want = []
    for b in range(num_users):
        ok = passing[b].copy()
        ok[[row_of[x] for x in exclude_ids[b]]] = False
        want.append(reference_top(model, u[b], items, ok, user_ids[b, hs], graph.k))
    print(f"\nserved recall@{graph.k} against the exact value ranking, {num_users} users:")
    for name, r in served.items():
        got = []
        for s in range(0, num_users, 64):
            ids, _, _, n = r.search(user_ids[s:s + 64], ops[s:s + 64], terms[s:s + 64], hashes[s:s + 64],
                                    exclude[s:s + 64])
            got += [ids[b, : int(n[b])].numpy() for b in range(ids.shape[0])]
        per = {f or "<none>": recall([g for g, x in zip(got, filters) if x == f], [w for w, x in zip(want, filters) if x == f])
               for f in FILTERS}
        print(f"  {name}: {recall(got, want):.4f} (" + ", ".join(f"{f!r} {v:.4f}" for f, v in per.items()) + ")")


def _cpu_isa() -> str:
    from silverrec.ops import cpu_isa
    return cpu_isa()


if __name__ == "__main__":
    main()
