"""End-to-end serving benchmark: the exported graph against a "separate services" pipeline.

    python benchmarks/serving.py [--model runs/demo/serving.pt2] [--queries 512] [--threads 2]

Both answer the same queries (test-split users of the default world with their latest history,
a mix of filters, each user's history excluded, K = 100), with the same torch/FAISS thread count:

* **model**: the exported ``.pt2`` (user tower -> Bloom filter + IVF-INT8 scan per task ->
  merge -> OverArch -> Value Model -> top-K, one graph). ``search`` times ``Retriever.search``
  on pre-encoded tensors; ``search + filter parsing`` adds the parsing of the filter strings
  (the pipeline's inputs: encoded users, filter strings, excluded rows); ``query`` times
  ``Retriever.query`` (external ids and feature values in, ``(item_id, value, {task: score})``
  tuples out). The three serve the file's AOTInductor graph when it holds one; ``search,
  torch.export`` times the same file's plain ``torch.export`` program.
* **pipeline**: standard parts called one after another: the same user tower (eager torch) ->
  FAISS ``IndexHNSWFlat`` (inner product) over the published item embeddings, one search per
  task head -> union -> a Python (NumPy) filter on the item attribute table and the exclusions
  -> a separate scoring call (the same OverArch + Value Model, eager torch) on the survivors
  -> top-K.

Recall@100 of both is measured against the exact reference: every item passing the filter
(minus the exclusions) scored by the same OverArch + Value Model. The pipeline's candidate count
per task (= HNSW efSearch) is tuned upward until its recall is at least the model's, and that
setting is timed. Needs the demo's checkpoint (the artifact records it) and rebuilds the data
set from the checkpoint's ``data_config``, as ``silverrec-export`` does.
"""
import argparse
import glob
import os
import time
from typing import Callable, Dict, List, Sequence, Tuple

import faiss
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from silverrec.data.dataset import RecDataset
from silverrec.models.padded_encoder import padded_user_encoder_from_two_tower
from silverrec.retrieval.bloom_index import BloomIndex
from silverrec.retrieval.attribute_filter import AttributeFilter
from silverrec.serve import Retriever
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.export import example_users, latest_history, publish_item_embeddings
from silverrec.train.served_eval import history_slots, recall, reference_top
from silverrec.train.trainer import load_two_tower

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILTERS = ["", "language:en", "NOT category:music", "language:en AND NOT category:music"]
K = 100  # results per query: the K of the artifact (100 for the demo's)


class Pipeline:
    """User tower -> HNSW per task -> filter + exclusions -> OverArch + Value Model -> top-K."""

    def __init__(self, user_encoder: torch.nn.Module, scorer: torch.nn.Module, items: Tensor,
                 attribute_filter: AttributeFilter, index: "faiss.Index") -> None:
        self.user_encoder, self.scorer, self.items = user_encoder, scorer, items
        self.filter, self.index = attribute_filter, index
        self.candidates = K
        self.history = history_slots(user_encoder)

    @torch.no_grad()
    def __call__(self, user_ids: Tensor, filters: Sequence[str], exclude: Sequence[np.ndarray]) -> List[np.ndarray]:
        u = self.user_encoder(user_ids)  # [B, T, D]
        B, T, D = u.shape
        _, found = self.index.search(u.reshape(B * T, D).numpy(), self.candidates)  # [B*T, C]
        found = found.reshape(B, T * self.candidates)
        survivors = []
        for b in range(B):
            rows = np.unique(found[b][found[b] >= 0])
            keep = self.filter(filters[b], rows) & ~np.isin(rows, exclude[b])
            survivors.append(rows[keep])
        width = max(1, max(len(s) for s in survivors))
        padded = torch.zeros(B, width, dtype=torch.int64)
        valid = torch.zeros(B, width, dtype=torch.bool)
        for b, s in enumerate(survivors):
            padded[b, : len(s)] = torch.from_numpy(s)
            valid[b, : len(s)] = True
        _, value = self.scorer(u, self.items[padded], valid, user_ids[:, self.history], padded)  # the scoring call
        top_value, top = torch.topk(value, min(K, width), dim=1)
        ids = padded.gather(1, top)
        return [ids[b][torch.isfinite(top_value[b])].numpy() for b in range(B)]


def timed(fn: Callable[[slice], List[np.ndarray]], n: int, batch: int) -> Tuple[List[np.ndarray], List[float]]:
    """Runs ``fn`` over ``n`` queries in chunks of ``batch``; returns results and per-call seconds."""
    fn(slice(0, batch))  # warm-up
    out, secs = [], []
    for start in range(0, n - n % batch, batch):
        t0 = time.perf_counter()
        out.extend(fn(slice(start, start + batch)))
        secs.append(time.perf_counter() - t0)
    return out, secs


def _checkpoint(meta: Dict, given: str) -> str:
    if given:
        return given
    if meta.get("checkpoint") and os.path.isfile(meta["checkpoint"]):
        return meta["checkpoint"]
    found = sorted(glob.glob(os.path.join(REPO, "runs", "demo", "checkpoints", "*.pt")))
    if not found:
        raise SystemExit("no checkpoint: pass --checkpoint (the one the model was exported from)")
    return found[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=os.path.join(REPO, "runs", "demo", "serving.pt2"))
    p.add_argument("--checkpoint", default="", help="default: the one recorded in the artifact")
    p.add_argument("--queries", type=int, default=512)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--threads", type=int, default=2, help="torch and FAISS threads, the same for both")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--candidates", type=int, nargs="+", default=[100, 200, 300, 400, 500, 600, 700, 800, 1000, 1200, 1600, 2000, 3000],
                   help="pipeline candidates per task (= efSearch) tried in order until recall >= the model's")
    p.add_argument("--rounds", type=int, default=2, help="timed passes over the queries")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    retriever = Retriever(args.model)
    plain = Retriever(args.model, backend="export") if retriever.backend == "aoti" else None
    ckpt = _checkpoint(retriever.metadata, args.checkpoint)
    payload = load_checkpoint(ckpt)
    model = load_two_tower(payload).eval()
    t0 = time.perf_counter()
    ds: RecDataset = instantiate(OmegaConf.create(payload["data_config"]))
    print(f"model {args.model} (version {retriever.version}, K={retriever.k}, served by {retriever.backend}); checkpoint {ckpt}; "
          f"data rebuilt in {time.perf_counter() - t0:.0f} s: {ds.items.num_rows} items, {ds.users.num_rows} users")
    if retriever.metadata["num_items"] != ds.items.num_rows:
        raise SystemExit(f"the artifact has {retriever.metadata['num_items']} items, the data {ds.items.num_rows}")
    global K
    K = retriever.k
    items = publish_item_embeddings(model, ds)  # [N, D], the embeddings the artifact's index holds

    # the queries: test-split users, their latest training history, a filter each, history excluded
    rng = np.random.default_rng(args.seed)
    test_users = np.unique(ds.interactions.user[ds.split.test])
    users = np.sort(rng.choice(test_users, size=args.queries, replace=False))
    reqs = example_users(ds, users, latest_history(ds, users))
    filters = [FILTERS[i % len(FILTERS)] for i in range(args.queries)]
    exclude_ids = [r.get("history", []) for r in reqs]
    exclude_rows = [np.array([ds.schema.item_ids.index(x) for x in e] if e else [], dtype=np.int64) for e in exclude_ids]
    enc = retriever.encoder
    user_ids = enc.users(reqs)
    opcodes, terms, hashes = enc.filters(filters, args.queries)
    exclude = enc.exclude(exclude_ids, args.queries)

    # the exact reference
    item_terms = ds.item_terms()
    attr = AttributeFilter(item_terms)
    bloom = BloomIndex.build(item_terms, features=[f.name for f in ds.schema.filterable_features])
    passing = bloom.matches(filters).numpy()  # exact, from the attribute table
    rows = np.arange(ds.items.num_rows)
    for f in FILTERS:  # the pipeline's filter agrees with the index's exact evaluation
        i = filters.index(f)
        if not np.array_equal(attr(f, rows), passing[i]):
            raise AssertionError(f"the NumPy filter disagrees with BloomIndex.matches on {f!r}")
    user_encoder = padded_user_encoder_from_two_tower(model, ds.schema).eval()
    with torch.no_grad():
        u_all = user_encoder(user_ids)
    t0 = time.perf_counter()
    reference = []
    for b in range(args.queries):
        ok = passing[b].copy()
        ok[exclude_rows[b]] = False
        reference.append(reference_top(model, u_all[b], items, ok, user_ids[b, history_slots(user_encoder)], K))
    pass_rate = {f: float(passing[filters.index(f)].mean()) for f in FILTERS}
    print(f"exact reference for {args.queries} queries in {time.perf_counter() - t0:.0f} s; filters (pass rate): "
          + ", ".join(f"{f or '<none>'!r} ({r:.0%})" for f, r in pass_rate.items()))

    # the separate-services pipeline
    t0 = time.perf_counter()
    index = faiss.IndexHNSWFlat(items.shape[1], args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = args.ef_construction
    index.add(items.numpy())
    print(f"HNSW (M={args.hnsw_m}, efConstruction={args.ef_construction}) over {index.ntotal} items built in "
          f"{time.perf_counter() - t0:.0f} s; torch/FAISS threads: {args.threads}")
    pipeline = Pipeline(user_encoder, model.candidate_scorer().eval(), items, attr, index)

    def run_pipeline(s: slice) -> List[np.ndarray]:
        return pipeline(user_ids[s], filters[s], exclude_rows[s])

    def run_search(s: slice) -> List[np.ndarray]:
        ids, _, _, num_valid = retriever.search(user_ids[s], opcodes[s], terms[s], hashes[s], exclude[s])
        return [ids[b, : int(num_valid[b])].numpy() for b in range(ids.shape[0])]

    def run_search_parsed(s: slice) -> List[np.ndarray]:  # the pipeline's inputs: filters as strings
        ops, ts, hs = enc.filters(filters[s], s.stop - s.start)
        ids, _, _, num_valid = retriever.search(user_ids[s], ops, ts, hs, exclude[s])
        return [ids[b, : int(num_valid[b])].numpy() for b in range(ids.shape[0])]

    def run_search_export(s: slice) -> List[np.ndarray]:
        ids, _, _, num_valid = plain.search(user_ids[s], opcodes[s], terms[s], hashes[s], exclude[s])
        return [ids[b, : int(num_valid[b])].numpy() for b in range(ids.shape[0])]

    vocab_row = {x: i for i, x in enumerate(ds.schema.item_ids)}

    def run_query(s: slice) -> List[np.ndarray]:
        res = retriever.query(reqs[s], filter=filters[s], exclude=exclude_ids[s], k=K)
        return [np.array([vocab_row[item] for item, _, _ in r], dtype=np.int64) for r in res]

    model_recall = recall(timed(run_search, args.queries, 64)[0], reference)
    print(f"model recall@{K}: {model_recall:.4f}; tuning the pipeline (candidates per task = efSearch):")
    chosen = None
    for c in args.candidates:
        pipeline.candidates = c
        index.hnsw.efSearch = c
        got, secs = timed(run_pipeline, args.queries, 64)
        r = recall(got, reference)
        print(f"  candidates {c:5d}: recall@{K} {r:.4f}, {args.queries / sum(secs):7.0f} queries/s at batch 64")
        if r >= model_recall:
            chosen = c
            break
    if chosen is None:
        chosen = args.candidates[-1]
        print(f"  no setting reached the model's recall; timing the largest ({chosen})")
    pipeline.candidates = index.hnsw.efSearch = chosen

    rows_out = []
    served = "AOTInductor" if retriever.backend == "aoti" else "torch.export"
    fns = {f"model (search, {served})": run_search, f"model (search + filter parsing, {served})": run_search_parsed,
           f"model (query, {served})": run_query, "pipeline": run_pipeline}
    if plain is not None:
        fns["model (search, torch.export)"] = run_search_export
    names = tuple(fns)
    for batch in args.batches:
        # they run chunk by chunk in turn, so that they see the same load on a shared machine
        chunks = [slice(s, s + batch) for s in range(0, args.queries - args.queries % batch, batch)]
        results: Dict[str, List[np.ndarray]] = {n: [] for n in names}
        secs: Dict[str, List[float]] = {n: [] for n in names}
        for n in names:
            fns[n](chunks[0])  # warm-up
        for r in range(args.rounds):
            for s in chunks:
                for n in names:
                    t0 = time.perf_counter()
                    out = fns[n](s)
                    secs[n].append(time.perf_counter() - t0)
                    if r == 0:
                        results[n].extend(out)
        qps = {n: len(secs[n]) * batch / sum(secs[n]) for n in names}
        for n in names:
            label = n + (f" HNSW c={chosen}" if n == "pipeline" else "")
            rows_out.append((label, batch, recall(results[n], reference[: len(results[n])]), qps[n],
                             1000 * float(np.median(secs[n])), qps[n] / qps["pipeline"]))
        print(f"  batch {batch}: done")
    print(f"\n{args.queries} queries x {args.rounds} rounds, K={K}, {args.threads} threads; QPS = queries / total time, "
          f"p50 = median time of one call (a batch)")
    print(f"| pipeline | batch | recall@{K} | QPS | p50 (ms) | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, batch, r, qps, p50, ratio in rows_out:
        print(f"| {name} | {batch} | {r:.4f} | {qps:.0f} | {p50:.2f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
