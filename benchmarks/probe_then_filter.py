"""Probe, then filter: the served ANN stage's Bloom work at 1M+ items, against a Bloom pass over all rows.

    .venv/bin/python benchmarks/probe_then_filter.py [--sizes 1000000 3000000] [--dim 64] [--batch 16]

For each N: an ``IVFInt8Index`` over unclustered embeddings (``ann_data.unclustered``: real-
embedding statistics, not blobs) and a ``BloomIndex`` over synthetic attributes with a few frequent
values and long Zipf tails (language, category, creator, year, multi-valued tags), in the index's
row order. Batches of ``--batch`` users with ``--tasks`` task queries each (``[B, T, D]``, as the
serving graph searches), each user excluding ``--exclude`` random items, 1% of the rows tombstoned.

Two ways to the same results, per filter class (no filter, ~50%, ~10%, ~1% pass):
- **full pass** (the serving graph before issue 18's item 3): ``bloom_search`` over all N rows,
  minus exclusions and tombstones as ``[B, W]`` word tensors, then ``ivf_search`` with that mask;
- **probe, then filter** (what the graph serves now): ``ivf_search_bloom``, the plan run over the
  clusters each probe choice walks.
The table gives ms per batch (median over interleaved rounds), their ratio, the Bloom share of
the full pass, and checks that both return the same ids.
"""
import argparse
import os
import sys
import time
from typing import Dict, List, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ann_data import unclustered  # noqa: E402

from silverrec.ops.reference import rows_to_words  # noqa: E402
from silverrec.retrieval.bloom_index import BloomIndex  # noqa: E402
from silverrec.retrieval.ivf_index import IVFInt8Index  # noqa: E402
from silverrec.retrieval.probe_policy import probe_plan  # noqa: E402
from silverrec.retrieval.term_dictionary import TermDictionary  # noqa: E402

FILTERS = {  # class -> expression (pass fractions printed from the exact table)
    "none": "",
    "~50%": "language:l0",
    "~10%": "(category:c1 OR category:c4) AND NOT language:l1",
    "~1%": "language:l3 AND (year:y1 OR year:y2 OR tags:t5)",
}


def zipf_values(rng: np.random.Generator, n: int, num_values: int, s: float = 1.1) -> np.ndarray:
    """n draws from a Zipf(s) law over ``num_values`` values (value 0 most frequent)."""
    p = 1.0 / np.arange(1, num_values + 1) ** s
    return rng.choice(num_values, size=n, p=p / p.sum())


def item_term_sets(n: int, seed: int = 0) -> Tuple[TermDictionary, np.ndarray, np.ndarray]:
    """Five attributes per item as CSR term sets (each item's terms sorted, without repeats), built
    with numpy (no per-item dicts): language (12 values), category (60), creator (N / 20, a long
    tail), year (60), and 1-4 tags (2,000 values), each Zipf-distributed."""
    rng = np.random.default_rng(seed)
    features = ("language", "category", "creator", "year", "tags")
    sizes = {"language": 12, "category": 60, "creator": max(100, n // 20), "year": 60, "tags": 2000}
    prefix = {"language": "l", "category": "c", "creator": "cr", "year": "y", "tags": "t"}
    skew = {"language": 1.5, "category": 1.1, "creator": 0.9, "year": 0.5, "tags": 1.1}
    first = {}
    terms = []
    for f in features:
        first[f] = len(terms)
        terms += [(f, f"{prefix[f]}{v}") for v in range(sizes[f])]
    dictionary = TermDictionary(features, terms)
    tag_counts = rng.integers(1, 5, size=n)
    item = np.concatenate([np.tile(np.arange(n), 4), np.repeat(np.arange(n), tag_counts)])
    term_ids = np.concatenate([first[f] + zipf_values(rng, n, sizes[f], skew[f]) for f in features[:4]] +
                              [first["tags"] + zipf_values(rng, int(tag_counts.sum()), sizes["tags"], skew["tags"])])
    order = np.lexsort((term_ids, item))
    item, term_ids = item[order], term_ids[order]
    keep = np.ones(term_ids.size, dtype=bool)
    keep[1:] = (item[1:] != item[:-1]) | (term_ids[1:] != term_ids[:-1])
    item, term_ids = item[keep], term_ids[keep]
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(item, minlength=n))
    return dictionary, offsets, term_ids


def timed(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run(n: int, args: argparse.Namespace) -> List[Dict]:
    t0 = time.perf_counter()
    x, q_all = unclustered(n, args.dim, args.batch * args.tasks * args.batches, seed=1)
    index = IVFInt8Index.build(x, num_iters=4)
    del x
    dictionary, offsets, term_ids = item_term_sets(n)
    order = index.row_to_id.numpy()  # row r holds item order[r]: reorder the CSR rows
    lengths = np.diff(offsets)[order]
    row_offsets = np.concatenate([[0], np.cumsum(lengths)])
    take = np.repeat(offsets[order] - row_offsets[:-1], lengths) + np.arange(row_offsets[-1])
    bloom = BloomIndex.from_term_sets(dictionary, row_offsets, term_ids[take], item_order=index.row_to_id)
    print(f"N={n:,}: index + Bloom built in {time.perf_counter() - t0:.0f} s ({index.num_clusters} clusters)", flush=True)

    g = torch.Generator().manual_seed(2)
    W = (n + 63) // 64
    dead = torch.rand(64 * W, generator=g) < 0.01
    dead[n:] = False
    deleted = (dead.view(W, 64).long() << torch.arange(64)).sum(1)
    n_probe = index.default_n_probe()
    plan = probe_plan(args.k0, n_probe, n, index.num_clusters, True)
    tensors = (index.codes, index.scales, index.cluster_offsets, index.cache, index.row_to_id)
    post = (bloom.table.posting_offsets, bloom.table.posting_rows)
    all_rows = torch.tensor([0, n])
    rows = []
    exact = bloom.matches([e for e in FILTERS.values() if e]).float().mean(1).tolist()
    fractions = dict(zip([c for c, e in FILTERS.items() if e], exact), none=1.0)
    for cls, expr in FILTERS.items():
        p = bloom.plan([expr] * args.batch)
        batches = []
        for i in range(args.batches):
            qb = q_all[i * args.batch * args.tasks:(i + 1) * args.batch * args.tasks].view(args.batch, args.tasks, -1)
            ex_rows = torch.stack([torch.randperm(n, generator=g)[:args.exclude] for _ in range(args.batch)])
            batches.append((qb, torch.matmul(qb, index.centroids_t), ex_rows))

        def full_pass(qb, cs, ex_rows, bloom_only=False):
            mask = bloom(p.opcodes, p.terms, p.hashes, p.opcodes.new_zeros((args.batch, 1)), all_rows)
            mask = mask & ~rows_to_words(ex_rows, W) & ~deleted  # as RetrievalGraph._filter_mask
            if bloom_only:
                return mask
            return torch.ops.silverrec.ivf_search(qb, cs, *tensors[:2], tensors[2], tensors[3], tensors[4], mask,
                                                  plan.n_probe, plan.min_rows, plan.max_probe, plan.k0, args.k0)

        def probe_then_filter(qb, cs, ex_rows):
            return torch.ops.silverrec.ivf_search_bloom(qb, cs, *tensors[:2], tensors[2], tensors[3], tensors[4],
                                                        bloom.bits, p.opcodes, p.terms, p.hashes, *post, deleted,
                                                        ex_rows, plan.n_probe, plan.min_rows, plan.max_probe, plan.k0,
                                                        args.k0)
        same = all(torch.equal(full_pass(*b)[1], probe_then_filter(*b)[1]) for b in batches[:2])
        t_full, t_bloom, t_new = [], [], []
        for _ in range(args.rounds):
            for b in batches:
                t_full.append(timed(lambda: full_pass(*b), 1))
                t_bloom.append(timed(lambda: full_pass(*b, bloom_only=True), 1))
                t_new.append(timed(lambda: probe_then_filter(*b), 1))
        row = {"N": n, "filter": cls, "pass": fractions[cls], "full_ms": 1e3 * np.median(t_full),
               "bloom_ms": 1e3 * np.median(t_bloom), "new_ms": 1e3 * np.median(t_new), "same": same}
        rows.append(row)
        print(f"  {cls}: full pass {row['full_ms']:.2f} ms (Bloom + masks {row['bloom_ms']:.2f}), probe then "
              f"filter {row['new_ms']:.2f} ms, same ids: {same}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--k0", type=int, default=100, help="candidates per task query (the graph's K0)")
    p.add_argument("--exclude", type=int, default=50, help="excluded items per user")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for n in args.sizes:
        rows += run(n, args)
    print(f"\nbatch {args.batch} users x {args.tasks} task queries, K0 {args.k0}, {args.exclude} exclusions per user, "
          f"1% tombstones, {args.threads} threads, CPU path {torch.ops.silverrec and _isa()}; ms per batch (median)")
    print("| N | filter | pass | full pass: Bloom + masks | full pass: total | probe, then filter | speed-up | same ids |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['N']:,} | {r['filter']} | {r['pass']:.3f} | {r['bloom_ms']:.2f} | {r['full_ms']:.2f} | "
              f"{r['new_ms']:.2f} | {r['full_ms'] / r['new_ms']:.2f}x | {r['same']} |")


def _isa() -> str:
    from silverrec.ops import cpu_isa
    return cpu_isa()


if __name__ == "__main__":
    main()
