"""How every cost of the served graph grows with the number of items N (issue 18).

    .venv/bin/python benchmarks/scale.py [--sizes 1000000 3000000 10000000] [--dim 64] [--json PATH]

For each N, in three fresh processes (so that each phase's memory is its own):

1. **build**: a catalogue of N items with realistic attributes (five features: ``lang`` with a few
   frequent values, ``category``, ``creator`` with a long Zipf tail of N / 40 values, ``year``,
   and multi-valued ``tags``, 1-5 of 5,000 Zipf-distributed values) and embeddings with
   real-embedding statistics (``ann_data.unclustered``: one anisotropic cloud, no blobs), a
   two-tower model around them (the user tower maps a user's id to one of the query vectors,
   drawn from the same distribution; no OverArch, so served recall is the index's), then
   ``publish`` (k-means, quantization and Bloom filter timed apart; clusters ranked with
   ``serving.probe_spread`` = ``--probe-spread``, default 4), the unfiltered ``n_probe``
   calibrated to the smallest probed fraction of the clusters (steps of 0.25% up to 6%, then
   coarser) whose recall@100 through the index layer's op reaches ``--recall-target`` on
   ``CALIBRATION_QUERIES`` held-out queries (drawn with the served ones, never served or
   evaluated, so the served recall is measured on queries the calibration did not see), then
   ``serving.coverage_exponent`` calibrated on the same held-out queries under the ~10% and ~1%
   filter expressions to the largest value of ``EXPONENT_LADDER`` keeping both classes' recall at
   the target (``silverrec/retrieval/probe_policy.py``: a filtered walk covers ``n_probe * N / C *
   s ** b`` passing rows, ``s`` the filter's pass fraction near the query; unfiltered walks do
   not change), then ``serving.filtered_coverage`` at that exponent to the smallest value of
   ``COVERAGE_LADDER`` keeping them there (a filtered walk covers that fraction of it), and
   ``n_probe`` calibrated again at that coverage (the graph searches unfiltered requests under an
   all-passing mask, so the coverage applies to them too),
   the exact top-100 of every query under every filter class, and the export (``export_traced``: torch.export of the serving graph and the item
   tower, one ``.pt2``). Peak RSS is read from ``VmHWM``, reset after publish.
2. **serve**: a fresh process loads the artifact (``Retriever``; large tensors memory-mapped),
   times ``Retriever.search`` on pre-encoded inputs at batch 1 and 16 without a filter and with
   filters passing ~10% and ~1% of the items (four expressions each, a different one per
   query), measures served recall@100 against the exact top-100 under each, and reports its RSS
   (anonymous and file-backed) and PSS.
3. **second process**: while (2) still holds the artifact, another process loads and serves it
   and reports the same, to show the index pages are shared (its RSS is mostly file-backed
   pages the first process already brought in; PSS splits them).

One table per N is printed; ``--json PATH`` writes the numbers (per N: ``publish_s``,
``export_s``, ``artifact_bytes``, ``load_s``, ``peak_rss_export_bytes``, ``rss_serve_bytes``,
``latency_ms`` by batch and filter, ``served_recall_at_100`` by filter, and the rest) and
``--plot PNG`` draws latency and memory against N. Latencies on a shared machine are noisy;
compare ratios between N measured in one run.
"""
import argparse
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
K = 100
FILTER_CLASSES = ("none", "10%", "1%")
FILTERED_CLASSES = FILTER_CLASSES[1:]  # the classes with a filter, which the filtered walk is calibrated on
# Unfiltered queries the n_probe calibration uses, drawn after the served ones and never served.
CALIBRATION_QUERIES = 128
# serving.filtered_coverage values the filtered calibration tries, largest first (1: the full widening).
COVERAGE_LADDER = (1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.125)
# serving.coverage_exponent values the filtered calibration tries first, smallest first (0: off).
EXPONENT_LADDER = (0.0, 0.25, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)
# Probed fractions of the clusters the calibration tries, in order: steps of 0.25% from 1% to 6%
# (between 4% and 5% a 1% step could overshoot the probes needed by up to a fifth)
CALIBRATION_FRACTIONS = (*(i / 400 for i in range(4, 25)), 0.07, 0.08, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5,
                         0.7, 1.0)
TAGS_PER_ITEM = 5


# --- memory --------------------------------------------------------------------------------------
def proc_memory() -> Dict[str, int]:
    """This process's ``VmRSS``, ``VmHWM`` (peak), ``RssAnon``, ``RssFile`` and PSS, in bytes."""
    out: Dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) * 1024
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    out["Pss"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def trace(stage: str) -> None:
    """With ``SCALE_TRACE=1``: this process's RSS after ``stage`` (where the build's memory goes)."""
    if os.environ.get("SCALE_TRACE"):
        m = proc_memory()
        print(f"  [rss] {stage}: {m['VmRSS'] / 2**30:.2f} GiB (peak {m['VmHWM'] / 2**30:.2f})", flush=True)


def release_heap() -> None:
    """Returns freed heap pages to the OS (glibc ``malloc_trim``): after publish the process keeps
    gigabytes of freed temporaries resident otherwise (glibc raises its mmap threshold after
    large frees, so later large-ish blocks come from the heap and stay)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> bool:
    """Resets ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --- the catalogue -------------------------------------------------------------------------------
def _zipf(rng: np.random.Generator, n: int, size: Any, s: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return rng.choice(n, size=size, p=p / p.sum())


def catalogue(n: int, seed: int = 0) -> Tuple[List[Tuple[str, Tuple[str, ...], int]], np.ndarray, np.ndarray]:
    """Item attributes: ``[(feature, vocab, max_length)]`` and CSR term sets (user order) whose
    term ids number the features' values one feature after another."""
    rng = np.random.default_rng(seed)
    n_creators = max(100, n // 40)
    features = [("lang", tuple(f"l{i:02d}" for i in range(20)), 1),
                ("category", tuple(f"c{i:02d}" for i in range(60)), 1),
                ("creator", tuple(f"cr{i:07d}" for i in range(n_creators)), 1),
                ("year", tuple(str(1985 + i) for i in range(40)), 1),
                ("tags", tuple(f"t{i:04d}" for i in range(5000)), TAGS_PER_ITEM)]
    year_p = np.linspace(0.2, 1.0, 40)
    single = [_zipf(rng, 20, n, 1.5), _zipf(rng, 60, n, 1.0), _zipf(rng, n_creators, n, 1.05),
              rng.choice(40, size=n, p=year_p / year_p.sum())]
    base = np.cumsum([0] + [len(v) for _, v, _ in features])
    tags = _zipf(rng, 5000, (n, TAGS_PER_ITEM), 0.9)
    count = rng.integers(1, TAGS_PER_ITEM + 1, size=n)
    tags[np.arange(TAGS_PER_ITEM)[None, :] >= count[:, None]] = 1 << 40
    tags.sort(axis=1)
    keep = (tags < (1 << 40)) & np.concatenate([np.ones((n, 1), bool), tags[:, 1:] != tags[:, :-1]], axis=1)
    cols = [(single[j] + base[j])[:, None] for j in range(4)] + [tags + base[4]]
    mat = np.concatenate(cols, axis=1)  # [n, 4 + 5], ascending per row
    valid = np.concatenate([np.ones((n, 4), bool), keep], axis=1)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(valid.sum(1), out=offsets[1:])
    return features, offsets, mat[valid].astype(np.int64)


def choose_filters(features: List[Tuple[str, Tuple[str, ...], int]], offsets: np.ndarray,
                   term_ids: np.ndarray) -> Dict[str, List[str]]:
    """Four single-term and two-term expressions per filter class, with pass rates near 10% and 1%."""
    n = offsets.size - 1
    terms = [(name, v) for name, vocab, _ in features for v in vocab]
    freq = np.bincount(term_ids, minlength=len(terms)) / n
    out: Dict[str, List[str]] = {"none": [""] * 4}
    for label, target in (("10%", 0.10), ("1%", 0.01)):
        near = np.argsort(np.abs(np.log(np.maximum(freq, 1e-9) / target)))[:3]
        exprs = [f"{terms[t][0]}:{terms[t][1]}" for t in near]
        # one mixed expression: a frequent term AND a term of about target / its frequency
        common = int(np.argmax(freq))
        other = int(np.argmin(np.abs(np.log(np.maximum(freq, 1e-9) / (target / freq[common])))
                              + 1e9 * (np.arange(freq.size) == common)))
        exprs.append(f"{terms[common][0]}:{terms[common][1]} AND {terms[other][0]}:{terms[other][1]}")
        out[label] = exprs
    return out


# --- phase 1: build, publish, export -------------------------------------------------------------
def _timed(owner: Any, name: str, times: Dict[str, float], label: str) -> None:
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            times[label] = times.get(label, 0.0) + time.perf_counter() - t
    setattr(owner, name, wrapper)


def _exact_truth(q: torch.Tensor, x: torch.Tensor, masks: Dict[str, np.ndarray], labels: List[str]) -> torch.Tensor:
    """Exact top-K item ids ``[Q, K]`` of query i under the mask of ``labels[i]`` (-1 padding)."""
    from ann_data import exact_topk

    out = torch.full((q.shape[0], K), -1, dtype=torch.int64)
    for label in set(labels):
        rows = torch.tensor([i for i, lab in enumerate(labels) if lab == label])
        m = None if label == "" else torch.from_numpy(masks[label])
        out[rows] = exact_topk(q[rows], x, m, K)
    return out


def _calibrate_n_probe(index: Any, q: torch.Tensor, truth: torch.Tensor, target: float, coverage: float = 1.0,
                       start: int = 1, spread: float = 0.0) -> Tuple[int, float]:
    """The smallest n_probe >= ``start`` (probed fractions ``CALIBRATION_FRACTIONS`` of the clusters)
    whose unfiltered recall@K of queries ``q`` against ``truth`` through the graph's op (an
    all-passing packed mask, as the graph searches; ``serving.filtered_coverage`` = ``coverage``)
    reaches ``target`` (clusters ranked with ``serving.probe_spread`` = ``spread``)."""
    from ann_data import recall

    C, W = index.num_clusters, (index.num_items + 63) // 64
    mask = torch.full((q.shape[0], W), -1, dtype=torch.int64)
    tried = set()
    for frac in CALIBRATION_FRACTIONS:
        n_probe = min(C, max(1, round(frac * C)))
        if n_probe in tried or n_probe < start:
            continue
        tried.add(n_probe)
        ids = index.search(q, K, n_probe=n_probe, mask=mask, filtered_coverage=coverage, probe_spread=spread).ids
        r = recall(ids.numpy(), truth)
        print(f"  calibration: n_probe={n_probe} ({n_probe / C:.1%} of C={C}) filtered_coverage={coverage} "
              f"recall@{K}={r:.4f}", flush=True)
        if r >= target:
            return n_probe, r
    return C, r


def _filtered_recall(index: Any, n_probe: int, q: torch.Tensor, truth: torch.Tensor, rows: List[torch.Tensor],
                     coverage: float, exponent: float, spread: float = 0.0) -> Dict[str, float]:
    """Recall@K of each filtered class (``FILTERED_CLASSES``) at ``n_probe`` and the filtered walk's
    settings: queries ``q`` [Q, D] (each class's queries in one block, in that order), ``truth``
    their exact top-K under their filters, ``rows[i]`` query i's filter as a packed row-order mask [W]."""
    from ann_data import recall

    per_class = q.shape[0] // len(FILTERED_CLASSES)
    ids = torch.cat([index.search(q[s : s + 16], K, n_probe=n_probe, mask=torch.stack(rows[s : s + 16]),
                                  filtered_coverage=coverage, coverage_exponent=exponent, probe_spread=spread).ids
                     for s in range(0, q.shape[0], 16)])
    got = {label: recall(ids[c * per_class : (c + 1) * per_class].numpy(), truth[c * per_class : (c + 1) * per_class])
           for c, label in enumerate(FILTERED_CLASSES)}
    print(f"  filtered calibration: filtered_coverage={coverage} coverage_exponent={exponent} recall@{K} "
          + " / ".join(f"{label} {r:.4f}" for label, r in got.items()), flush=True)
    return got


def _calibrate_filtered(index: Any, n_probe: int, q: torch.Tensor, truth: torch.Tensor, rows: List[torch.Tensor],
                        target: float, spread: float = 0.0) -> Tuple[float, float, Dict[str, float]]:
    """``serving.coverage_exponent``: the largest of ``EXPONENT_LADDER`` (at coverage 1) whose
    recall@K at ``n_probe`` reaches ``target`` in both filtered classes (:func:`_filtered_recall`'s
    inputs); then ``serving.filtered_coverage`` at that exponent: the smallest of
    ``COVERAGE_LADDER`` that still does. Returns both and the recall of each class there."""
    coverage, exponent = COVERAGE_LADDER[0], EXPONENT_LADDER[0]
    chosen_recall = _filtered_recall(index, n_probe, q, truth, rows, coverage, exponent, spread)  # the full widening
    if min(chosen_recall.values()) < target:  # even it falls short: report what it gets
        return coverage, exponent, chosen_recall
    for b in EXPONENT_LADDER[1:]:
        got = _filtered_recall(index, n_probe, q, truth, rows, coverage, b, spread)
        if min(got.values()) < target:
            break
        exponent, chosen_recall = b, got
    for w in COVERAGE_LADDER[1:]:
        got = _filtered_recall(index, n_probe, q, truth, rows, w, exponent, spread)
        if min(got.values()) < target:
            break
        coverage, chosen_recall = w, got
    return coverage, exponent, chosen_recall


def _component_bytes(graph: Any, item_encoder: Any) -> Dict[str, int]:
    """Bytes of every tensor the artifact stores, grouped by what it is."""
    groups = {"index.codes": "int8 codes", "index.cache": "re-score cache (fp16)", "index.scales": "scales",
              "index.row_to_id": "row -> item id", "item_to_row": "item id -> row", "bloom.bits": "Bloom bit rows",
              "bloom.table.posting_rows": "posting lists", "bloom.table.posting_offsets": "posting offsets",
              "bloom.table.row_terms": "exact-check rows", "index.centroids": "centroids",
              "index.probe_t": "centroids", "index.cluster_offsets": "cluster offsets",
              "bloom.term_hashes": "term hashes"}
    out: Dict[str, int] = {}
    seen = set()
    for prefix, module in (("", graph), ("item_tower.", item_encoder)):
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            key = (t.untyped_storage().data_ptr(), prefix)
            if key in seen:
                continue
            seen.add(key)
            nbytes = t.untyped_storage().nbytes()
            if prefix:
                label = "item tower tables" if name.startswith("tables.") else "item tower MLP"
            elif name.startswith("user_encoder.tables."):
                label = "user tower tables (history = item ids)"
            else:
                label = groups.get(name, "other (MLPs, small buffers)")
            out[label] = out.get(label, 0) + nbytes
    return out


def build(n: int, dim: int, workdir: str, queries: int, target: float, seed: int, aoti: bool,
          spread: float = 0.0) -> None:
    from ann_data import unclustered

    import silverrec.retrieval.ivf_index as ivf_module
    from silverrec.models.padded_encoder import padded_item_encoder_from_two_tower
    from silverrec.models.two_tower import TwoTowerConfig, build_two_tower
    from silverrec.retrieval.bloom_index import BloomIndex
    from silverrec.retrieval.packed_mask import pack_mask
    from silverrec.retrieval.publish import TermSets, publish, serving_metadata
    from silverrec.retrieval.serving_graph import ServingConfig
    from silverrec.retrieval.term_dictionary import TermDictionary
    from silverrec.schema import Feature, Schema, Task
    from silverrec.serve.requests import RequestEncoder
    from silverrec.train.export import export_traced, item_updates

    result: Dict[str, Any] = {"n": n, "dim": dim}
    t0 = time.perf_counter()
    x, q = unclustered(n, dim, queries + CALIBRATION_QUERIES, seed=seed, alpha=0.8)
    q, q_calibration = q[:queries], q[queries:]
    features, offsets, term_ids = catalogue(n, seed)
    filters = choose_filters(features, offsets, term_ids)
    result["generate_s"] = time.perf_counter() - t0
    trace("generated")
    schema = Schema(user_features=(Feature("uid", tuple(f"u{i}" for i in range(queries))),),
                    item_features=(Feature("item_id", tuple(f"i{i:08d}" for i in range(n))),
                                   *(Feature(name, vocab, m, filterable=True) for name, vocab, m in features)),
                    tasks=(Task("click"),), history_length=2)
    model = build_two_tower(schema, TwoTowerConfig(embedding_dim=dim, user_layers=[dim], item_layers=[dim],
                                                   over_arch=None, learn_temperature=False))
    with torch.no_grad():  # the user tower maps user i to query vector i (history slots empty)
        model.ebc.embedding_bags["user__uid"].weight.copy_(q)
        model.user_tower.out.weight.zero_()
        model.user_tower.out.weight[:, :dim] = torch.eye(dim)
        model.user_tower.out.bias.zero_()
    terms = TermSets(TermDictionary([f for f, _, _ in features], [(f, v) for f, vocab, _ in features for v in vocab]),
                     offsets, term_ids)
    times: Dict[str, float] = {}
    _timed(ivf_module, "kmeans", times, "kmeans_s")
    _timed(ivf_module, "quantize_int8_per_item", times, "quantize_s")
    _timed(BloomIndex, "from_term_sets", times, "bloom_s")
    config = ServingConfig(k=K, candidates_per_task=K, use_over_arch=False, probe_spread=spread)
    t0 = time.perf_counter()
    graph = publish(model, schema, x, terms, config)
    result["publish_s"] = time.perf_counter() - t0
    result.update({k: v for k, v in times.items()})
    result["num_clusters"] = graph.num_clusters
    trace("published")
    item_encoder = padded_item_encoder_from_two_tower(model, schema).eval()
    del model, terms
    trace("item encoder")
    result["peak_rss_publish_bytes"] = proc_memory()["VmHWM"]

    # exact truth (the graph re-scores with the fp16 cache: the same vectors here), per query its filter
    labels = [label for label in FILTER_CLASSES for _ in range(queries)]
    exprs = [filters[label][i % 4] for label in FILTER_CLASSES for i in range(queries)]
    passing = {e: graph.bloom.table.matches_program(_program(graph, e), graph.bloom._exact_row)[graph.item_to_row.numpy()]
               for e in set(exprs) if e}
    result["pass_fraction"] = {label: float(np.mean([passing[e].mean() for e in filters[label] if e] or [1.0]))
                               for label in FILTER_CLASSES}
    xh = x.half().float()
    del x
    qn = torch.nn.functional.normalize(q, dim=-1)
    t0 = time.perf_counter()
    truth = _exact_truth(qn.repeat(len(FILTER_CLASSES), 1), xh, passing, exprs)
    result["truth_s"] = time.perf_counter() - t0
    qc = torch.nn.functional.normalize(q_calibration, dim=-1)
    truth_calibration = _exact_truth(qc, xh, passing, [""] * qc.shape[0])
    # the held-out queries again under the filtered classes' expressions, for the filtered walk's settings
    qc_filtered = qc.repeat(len(FILTERED_CLASSES), 1)
    exprs_calibration = [filters[label][i % 4] for label in FILTERED_CLASSES for i in range(qc.shape[0])]
    truth_filtered = _exact_truth(qc_filtered, xh, passing, exprs_calibration)
    del xh
    n_probe, r = _calibrate_n_probe(graph.index, qc, truth_calibration, target, spread=spread)
    row_order = graph.index.row_to_id  # packed row-order masks, one per expression
    packed = {e: pack_mask(torch.from_numpy(passing[e])[row_order][None])[0] for e in set(exprs_calibration)}
    coverage, exponent, coverage_recall = _calibrate_filtered(graph.index, n_probe, qc_filtered, truth_filtered,
                                                              [packed[e] for e in exprs_calibration], target, spread)
    # The graph searches unfiltered requests under an all-passing mask, so the setting applies
    # to them too: with w < 1 their walk may stop at n_probe clusters holding fewer than
    # n_probe * N / C rows. n_probe is calibrated again at w (it can only grow, and a larger
    # n_probe only widens the filtered walks the coverage was calibrated on).
    result.update(n_probe_at_full_coverage=n_probe)
    if coverage < 1.0:
        n_probe, r = _calibrate_n_probe(graph.index, qc, truth_calibration, target, coverage, start=n_probe,
                                        spread=spread)
    graph.n_probe, graph.filtered_coverage, graph.coverage_exponent = n_probe, coverage, exponent
    result.update(n_probe=n_probe, calibration_recall=r, filtered_coverage=coverage, coverage_exponent=exponent,
                  probe_spread=spread,
                  filtered_calibration_recall=coverage_recall)
    del packed
    torch.save({"truth": truth, "exprs": exprs, "labels": labels, "filters": filters}, os.path.join(workdir, f"truth_{n}.pt"))
    del truth, passing, q, qn, q_calibration, qc, qc_filtered, truth_calibration, truth_filtered

    trace("truth and calibration")
    result["component_bytes"] = _component_bytes(graph, item_encoder)
    meta = serving_metadata(graph, schema, config)
    meta["serving_config"]["n_probe"] = n_probe
    meta["serving_config"]["filtered_coverage"] = coverage
    meta["serving_config"]["coverage_exponent"] = exponent
    enc = RequestEncoder(meta)
    updates = item_updates(graph, item_encoder, meta)  # a non-trivial fresh index to trace with
    attrs = [{name: [vocab[int(t) - base] for t in term_ids[offsets[i]:offsets[i + 1]]
                     if base <= t < base + len(vocab)] for (name, vocab, _), base in
              zip(features, np.cumsum([0] + [len(v) for _, v, _ in features]))} for i in range(6)]
    updates.upsert([{"item_id": schema.item_ids[i], "attributes": attrs[i]} for i in range(3)] +
                   [{"item_id": "__trace_new_item__", "attributes": attrs[3]}])
    updates.delete([schema.item_ids[4], schema.item_ids[5]])
    inputs = (enc.users([{"uid": f"u{i}"} for i in range(3)]), *enc.filters(["", filters["10%"][0], filters["1%"][3]], 3),
              enc.exclude([[schema.item_ids[7], schema.item_ids[8]], None, None], 3), *updates.fresh_index())
    slots = enc.items([{"item_id": schema.item_ids[i], "attributes": attrs[i]} for i in range(3)])
    path = os.path.join(workdir, f"scale_{n}.pt2")
    trace("inputs")
    # Only the graph, the item tower and the metadata go on: the encoder's and the schema's id
    # dicts (a Python str and dict entry per item, ~0.3 KB per item) and the term sets would
    # otherwise stay resident through the export's peak.
    del enc, updates, attrs, schema, offsets, term_ids, features
    gc.collect()
    release_heap()
    trace("malloc_trim")
    reset = reset_peak()
    t0 = time.perf_counter()
    export_traced(graph, item_encoder, meta, path, inputs, slots, aoti=aoti)
    result["export_s"] = time.perf_counter() - t0
    trace("exported")
    result["peak_rss_export_bytes"] = proc_memory()["VmHWM"] if reset else None
    result["peak_rss_build_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["artifact_bytes"] = os.path.getsize(path)
    result["artifact"] = path
    print("RESULT " + json.dumps(result), flush=True)


def _program(graph: Any, expression: str) -> Any:
    from silverrec.retrieval.filter_plan import compile_program

    return compile_program(expression, graph.bloom.dictionary)


# --- phase 2: load and serve in a fresh process ---------------------------------------------------
def serve(n: int, workdir: str, hold: bool, quick: bool) -> None:
    from ann_data import recall

    from silverrec.serve import Retriever

    path = os.path.join(workdir, f"scale_{n}.pt2")
    saved = torch.load(os.path.join(workdir, f"truth_{n}.pt"))
    before = proc_memory()
    t0 = time.perf_counter()
    r = Retriever(path)
    result: Dict[str, Any] = {"load_s": time.perf_counter() - t0, "backend": r.backend}
    result["rss_loaded"] = proc_memory()
    result["rss_before_load"] = before
    exprs, labels, truth = saved["exprs"], saved["labels"], saved["truth"]
    nq = len(exprs) // len(FILTER_CLASSES)
    latency: Dict[str, Dict[str, float]] = {"1": {}, "16": {}}
    recall_at: Dict[str, float] = {}
    for c, label in enumerate(FILTER_CLASSES):
        rows = list(range(c * nq, (c + 1) * nq))
        for batch in (16, 1):
            count = (nq if batch == 16 else min(nq, 32)) if not quick else 16
            times, found = [], []
            for s in range(0, count, batch):
                idx = rows[s : s + batch]
                users = r.encoder.users([{"uid": f"u{i - c * nq}"} for i in idx])
                plan = r.encoder.filters([exprs[i] for i in idx], len(idx))
                excl = r.encoder.exclude(None, len(idx))
                if s == 0:
                    r.search(users, *plan, excl)  # warm-up
                t = time.perf_counter()
                ids = r.search(users, *plan, excl)[0]
                times.append(time.perf_counter() - t)
                found.append(ids)
            latency[str(batch)][label] = 1000 * float(np.median(times))
            if batch == 16:
                served = torch.cat(found).numpy()
                recall_at[label] = recall(served, truth[rows[: served.shape[0]]])
        print(f"  served {label}: b16 {latency['16'][label]:.1f} ms, b1 {latency['1'][label]:.1f} ms, "
              f"recall@{K} {recall_at[label]:.4f}", flush=True)
    result.update(latency_ms=latency, served_recall_at_100=recall_at, rss_served=proc_memory())
    print("RESULT " + json.dumps(result), flush=True)
    if hold:  # keep the artifact mapped until the parent has measured a second process
        sys.stdin.readline()


def _run(args: List[str], stdin: Optional[int] = None) -> "subprocess.Popen[str]":
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], stdout=subprocess.PIPE,
                            stdin=stdin, text=True, cwd=REPO)


def _result(proc: "subprocess.Popen[str]", wait: bool = True) -> Dict[str, Any]:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
        print(line, end="", flush=True)
    proc.wait()
    raise RuntimeError(f"{proc.args} failed with exit status {proc.returncode}")


def measure(n: int, dim: int, workdir: str, queries: int, target: float, seed: int, aoti: bool,
            spread: float = 0.0) -> Dict[str, Any]:
    print(f"== N={n:,} D={dim}: build, publish, export", flush=True)
    build_p = _run(["_build", str(n), str(dim), workdir, str(queries), str(target), str(seed), str(int(aoti)),
                    str(spread)])
    out = _result(build_p)
    build_p.wait()
    print(f"== N={n:,}: load and serve in a fresh process", flush=True)
    first = _run(["_serve", str(n), workdir, "1", "0"], stdin=subprocess.PIPE)
    out.update(_result(first))
    print(f"== N={n:,}: a second process on the same artifact", flush=True)
    second = _run(["_serve", str(n), workdir, "0", "1"])
    s = _result(second)
    second.wait()
    assert first.stdin is not None
    first.stdin.write("\n")
    first.stdin.close()
    first.wait()
    out["second_process"] = {"load_s": s["load_s"], "rss_loaded": s["rss_loaded"], "rss_served": s["rss_served"]}
    out["rss_serve_bytes"] = out["rss_served"]["VmRSS"]
    return out


# --- report ---------------------------------------------------------------------------------------
def _gib(b: Optional[float]) -> str:
    return "n/a" if b is None else f"{b / 2**30:.2f} GiB"


def table(r: Dict[str, Any]) -> str:
    n = r["n"]
    rows = [("items N / dim / clusters C / n_probe", f"{n:,} / {r['dim']} / {r['num_clusters']} / {r['n_probe']} "
             f"({r['n_probe'] / r['num_clusters']:.1%}, unfiltered calibration recall {r['calibration_recall']:.3f})"),
            ("serving.probe_spread / coverage_exponent / filtered_coverage (calibration recall)",
             f"{r.get('probe_spread', 0.0)} / {r.get('coverage_exponent', 0.0)} / {r.get('filtered_coverage', 1.0)} ("
             + " / ".join(f"{label} {v:.3f}" for label, v in r.get('filtered_calibration_recall', {}).items())
             + f"; n_probe at coverage 1: {r.get('n_probe_at_full_coverage', r['n_probe'])})"),
            ("publish (k-means / quantization / Bloom)", f"{r['publish_s']:.1f} s ({r.get('kmeans_s', 0):.1f} / "
             f"{r.get('quantize_s', 0):.1f} / {r.get('bloom_s', 0):.1f} s)"),
            ("export", f"{r['export_s']:.1f} s"),
            ("artifact", f"{_gib(r['artifact_bytes'])} ({r['artifact_bytes'] / n:.0f} B/item)"),
            ("load (fresh process)", f"{r['load_s']:.2f} s"),
            ("peak RSS publish / export", f"{_gib(r['peak_rss_publish_bytes'])} / {_gib(r['peak_rss_export_bytes'])}"),
            ("serving RSS (anon + file) / PSS", f"{_gib(r['rss_served']['VmRSS'])} ({_gib(r['rss_served']['RssAnon'])} + "
             f"{_gib(r['rss_served']['RssFile'])}) / {_gib(r['rss_served'].get('Pss'))}"),
            ("2nd process RSS (anon + file) / PSS", f"{_gib(r['second_process']['rss_served']['VmRSS'])} "
             f"({_gib(r['second_process']['rss_served']['RssAnon'])} + {_gib(r['second_process']['rss_served']['RssFile'])})"
             f" / {_gib(r['second_process']['rss_served'].get('Pss'))}")]
    for label in FILTER_CLASSES:
        pf = r["pass_fraction"][label]
        rows.append((f"filter {label} (passes {pf:.1%}): b1 / b16 ms, recall@100",
                     f"{r['latency_ms']['1'][label]:.1f} / {r['latency_ms']['16'][label]:.1f} ms, "
                     f"{r['served_recall_at_100'][label]:.3f}"))
    rows.append(("bytes per item by component", ""))
    for label, b in sorted(r["component_bytes"].items(), key=lambda kv: -kv[1]):
        rows.append((f"  {label}", f"{b / n:.1f} B/item ({_gib(b)})"))
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"| {a:<{w}} | {b} |" for a, b in rows)


def plot(results: List[Dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for label in FILTER_CLASSES:
        a.plot(ns, [r["latency_ms"]["16"][label] for r in results], "o-", label=f"batch 16, filter {label}")
        a.plot(ns, [r["latency_ms"]["1"][label] for r in results], "s--", label=f"batch 1, filter {label}")
    a.set(xscale="log", yscale="log", xlabel="items N", ylabel="latency per call (ms)", title="served latency")
    a.legend(fontsize=7)
    for key, label in (("artifact_bytes", "artifact size"), ("peak_rss_export_bytes", "peak RSS, export"),
                       ("rss_serve_bytes", "serving RSS")):
        b.plot(ns, [r[key] / 2**30 for r in results], "o-", label=label)
    b.plot(ns, [r["rss_served"]["RssAnon"] / 2**30 for r in results], "o:", label="serving RSS, anonymous")
    b.set(xscale="log", yscale="log", xlabel="items N", ylabel="GiB", title="memory")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def projected_peak(results: List[Dict[str, Any]], n: int) -> Optional[float]:
    """The export's peak RSS at ``n`` items, linear through the two largest sizes measured (None
    with fewer than two)."""
    done = sorted((r["n"], r["peak_rss_export_bytes"]) for r in results if r.get("peak_rss_export_bytes"))
    if len(done) < 2:
        return None
    (n0, p0), (n1, p1) = done[-2:]
    return p1 + (p1 - p0) / (n1 - n0) * (n - n1)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_build":
        n, dim, workdir, queries, target, seed, aoti, spread = sys.argv[2:10]
        torch.set_num_threads(int(os.environ.get("SCALE_THREADS", "2")))
        return build(int(n), int(dim), workdir, int(queries), float(target), int(seed), bool(int(aoti)), float(spread))
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        torch.set_num_threads(int(os.environ.get("SCALE_THREADS", "2")))
        return serve(int(sys.argv[2]), sys.argv[3], bool(int(sys.argv[4])), bool(int(sys.argv[5])))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=256, help="queries per filter class")
    # 0.965 on the 128 held-out queries: with 0.25% probe steps, a calibration at exactly 0.960 served
    # 0.950 on other queries (the 1M ~1% class); the margin keeps served recall >= 0.95
    p.add_argument("--recall-target", type=float, default=0.965,
                   help="recall@100 the n_probe and filtered calibrations aim at on the held-out queries")
    p.add_argument("--workdir", default=os.path.join(REPO, "runs", "scale"))
    p.add_argument("--json", help="write the results here")
    p.add_argument("--plot", help="PNG of latency and memory against N")
    p.add_argument("--aoti", action="store_true", help="also compile the serving graph with AOTInductor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-spread", type=float, default=4.0,
                   help="serving.probe_spread of the graphs (clusters ranked by centroid score + this x |q| x spread; "
                        "n_probe and the filtered settings are calibrated at it; 0: centroid scores alone)")
    p.add_argument("--max-peak-gib", type=float, default=None,
                   help="skip an N whose export peak RSS, projected linearly through the two previous N, exceeds this")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    results: List[Dict[str, Any]] = []
    skipped: List[Dict[str, Any]] = []
    for n in args.sizes:
        projected = projected_peak(results, n)
        if projected is not None:
            print(f"== N={n:,}: export peak RSS projected from the previous sizes: {projected / 2**30:.2f} GiB", flush=True)
        if args.max_peak_gib is not None and projected is not None and projected > args.max_peak_gib * 2**30:
            print(f"== N={n:,}: skipped (projected peak over --max-peak-gib {args.max_peak_gib})", flush=True)
            skipped.append({"n": n, "projected_peak_rss_export_bytes": projected})
            continue
        r = measure(n, args.dim, args.workdir, args.queries, args.recall_target, args.seed, args.aoti,
                    args.probe_spread)
        if projected is not None:
            r["projected_peak_rss_export_bytes"] = projected
        results.append(r)
        print(table(r), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"results": results, "skipped": skipped,
                           "torch_threads": int(os.environ.get("SCALE_THREADS", "2"))}, f, indent=1)
    if args.plot and results:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
