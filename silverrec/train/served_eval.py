"""Evaluation of an exported serving graph (``silverrec-eval model=serving.pt2``).

The artifact is loaded with :class:`~silverrec.serve.Retriever` and answers the held-out users of
the test split (their history up to the split; every item they saw before it excluded), with no
filter and under a filter suite derived from the items' own attributes. For each filter it
reports (U users, K the artifact's results per query):

* ``recall@K`` / ``ndcg@K``: the served top-K against the user's held-out items that pass the
  filter (binary relevance, as :class:`~silverrec.train.evaluator.Evaluator`);
* ``value_recall@K`` and per task ``recall@K``: as :mod:`silverrec.train.multitask_eval` defines
  them (held-out values from the Value Model over the labels; relevant = label >= 0.5);
* ``recall_vs_exact@K`` (the index loss): the served top-K against the same model's exact top-K,
  every item that passes the filter (minus the exclusions) scored eagerly by the towers, OverArch
  and Value Model of the checkpoint the artifact records;

and the served graph's latency per batch size.
"""
import math
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from silverrec.data.dataset import JaggedColumn, RecDataset
from silverrec.models.padded_encoder import padded_user_encoder_from_two_tower
from silverrec.models.two_tower import TwoTower
from silverrec.retrieval.attribute_filter import AttributeFilter
from silverrec.schema import HISTORY, user_key
from silverrec.serve import Retriever
from silverrec.train.evaluator import eval_users
from silverrec.train.export import example_users, publish_item_embeddings
from silverrec.train.metrics import recall_ndcg
from silverrec.train.multitask_eval import _heldout_pairs

WARN_BELOW = 0.95  # served-vs-exact recall@100 under which the report warns
_SIMPLE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def history_slots(user_encoder: torch.nn.Module) -> slice:
    """The history slots of the user encoder's ``user_ids`` (read by an OverArch with side features)."""
    start = 0
    for key, n in zip(user_encoder.keys, user_encoder.slots):
        if key == user_key(HISTORY):
            return slice(start, start + n)
        start += n
    return slice(0, 0)


@torch.no_grad()
def item_values(model: TwoTower, u: Tensor, items: Tensor, history: Tensor) -> Tensor:
    """float32 ``[N]``: the Value Model over the OverArch task scores of every item for one user.

    Args:
        u (Tensor): float ``[T, D]`` the user's task embeddings.
        items (Tensor): float ``[N, D]`` the published item embeddings (row = item row).
        history (Tensor): int64 ``[L]`` the user's history slots (for an OverArch with side features).
    """
    rows = torch.arange(items.shape[0])
    logits = model.task_logits(u[None], items[None], history=history[None], items=rows[None])
    valid = torch.ones(1, rows.numel(), dtype=torch.bool)
    return model.value(model.task_scores(logits, valid), valid)[0].float()


def exact_top(values: Tensor, passing: np.ndarray, k: int) -> np.ndarray:
    """int64 ``[<= k]``: the rows of the k highest ``values`` [N] among ``passing`` (bool [N]),
    best first, ties to the lower row."""
    masked = values.masked_fill(~torch.from_numpy(passing), -math.inf)
    order = torch.argsort(masked, descending=True, stable=True)[: min(k, int(passing.sum()))]
    return order.numpy()


def reference_top(model: TwoTower, u: Tensor, items: Tensor, passing: np.ndarray, history: Tensor,
                  k: int = 100) -> np.ndarray:
    """Exact top-k rows: all passing items scored by the OverArch + Value Model (``history``: the
    query's history slots, for an OverArch with side features)."""
    return exact_top(item_values(model, u, items, history), passing, k)


def recall(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> float:
    """Mean over queries of ``|got ∩ want| / |want|`` (an empty ``want`` counts 0)."""
    return float(np.mean([len(set(g.tolist()) & set(w.tolist())) / max(1, len(w)) for g, w in zip(got, want)]))


def filter_suite(item_terms: Sequence[Dict[str, List[str]]], targets: Sequence[float] = (0.5, 0.1, 0.01),
                 per_target: int = 2, max_terms: int = 40) -> List[Tuple[str, float]]:
    """Filters over the items' own attributes whose pass fractions are near ``targets``.

    Candidates combine AND / OR / NOT over up to ``max_terms`` real ``feature:value`` terms (the
    most frequent half of them, the rest spread over the term frequencies); for each target the ``per_target`` candidates closest to it (in
    log ratio) are chosen.

    Returns:
        List[Tuple[str, float]]: ``(expression, exact pass fraction)``, targets in order.
    """
    attr = AttributeFilter(item_terms)
    n = attr.num_items
    terms = sorted((k for k in attr.columns if set(k[1]) <= _SIMPLE and 0 < attr.columns[k].sum() < n),
                   key=lambda k: (-int(attr.columns[k].sum()), k))
    if len(terms) > max_terms:  # the most frequent half, and the rest spread over the frequencies
        head = max_terms // 2
        rest = terms[head:]
        terms = terms[:head] + [rest[i] for i in np.linspace(0, len(rest) - 1, max_terms - head).round().astype(int)]
    cols = {f"{f}:{v}": attr.columns[(f, v)] for f, v in terms}
    cand: Dict[str, float] = {}
    names = list(cols)
    for a in names:
        cand[f"NOT {a}"] = float((~cols[a]).mean())
        for b in names:
            if a < b:
                cand[f"{a} AND {b}"] = float((cols[a] & cols[b]).mean())
                cand[f"{a} OR {b}"] = float((cols[a] | cols[b]).mean())
            if a != b:
                cand[f"{a} AND NOT {b}"] = float((cols[a] & ~cols[b]).mean())
    out: List[Tuple[str, float]] = []
    for t in targets:
        ranked = sorted((abs(math.log(f / t)), e) for e, f in cand.items() if f > 0)
        out += [(e, cand[e]) for _, e in ranked[:per_target] if e not in dict(out)]
    return out


def served_rows(retriever: Retriever, user_ids: Tensor, plans: Tuple[Tensor, Tensor, Tensor], exclude: Tensor,
                batch: int = 64) -> Tensor:
    """int64 ``[U, K]`` the served item rows (-1 padding) of U encoded queries."""
    out = []
    for s in range(0, user_ids.shape[0], batch):
        ids, _, _, n = retriever.search(user_ids[s:s + batch], plans[0][s:s + batch], plans[1][s:s + batch],
                                        plans[2][s:s + batch], exclude[s:s + batch])
        ids = ids.clone()
        ids[torch.arange(ids.shape[1])[None] >= n[:, None]] = -1
        out.append(ids)
    return torch.cat(out)


def latency_ms(retriever: Retriever, user_ids: Tensor, exclude: Tensor, batches: Sequence[int] = (1, 16, 64),
               calls: int = 16) -> Dict[str, float]:
    """Median milliseconds of one ``search`` call (no filter) per batch size."""
    out = {}
    for b in batches:
        idx = torch.arange(b) % user_ids.shape[0]
        plans = retriever.encoder.filters("", b)
        retriever.search(user_ids[idx], *plans, exclude[idx])  # warm-up
        secs = []
        for c in range(calls):
            idx = (torch.arange(b) + c * b) % user_ids.shape[0]
            t0 = time.perf_counter()
            retriever.search(user_ids[idx], *plans, exclude[idx])
            secs.append(time.perf_counter() - t0)
        out[str(b)] = 1000 * float(np.median(secs))
    return out


def _passing_rows(column: JaggedColumn, passing: np.ndarray) -> JaggedColumn:
    """Each row of ``column`` (item rows) without the items that fail the filter ``passing`` [N]."""
    keep = passing[column.values]
    row_of = np.repeat(np.arange(column.num_rows), column.lengths)
    offsets = np.zeros(column.num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_of[keep], minlength=column.num_rows), out=offsets[1:])
    return JaggedColumn(column.values[keep], offsets)


def _labelled(top: Tensor, keys: np.ndarray, labels: Dict[str, np.ndarray], values: np.ndarray,
              passing: np.ndarray, n_items: int, ks: Sequence[int]) -> Dict[str, Any]:
    """value_recall@K and per-task recall@K of ``top`` [U, K] against the held-out pairs that pass."""
    keep = passing[keys % n_items]
    keys, values = keys[keep], values[keep]
    labels = {t: l[keep] for t, l in labels.items()}
    owner = keys // n_items
    u = top.shape[0]
    got = (torch.arange(u)[:, None] * n_items + top.clamp_min(0)).numpy()
    pos = np.clip(np.searchsorted(keys, got), 0, max(keys.size - 1, 0))
    hit = (top.numpy() >= 0) & (keys[pos] == got) if keys.size else np.zeros(got.shape, bool)
    out: Dict[str, Any] = {"tasks": {t: {} for t in labels}}
    total = np.bincount(owner, weights=values, minlength=u)
    for k in ks:
        v = (values[pos[:, :k]] * hit[:, :k]).sum(1) if keys.size else np.zeros(u)
        out[f"value_recall@{k}"] = float((v / np.maximum(total, 1e-30))[total > 0].mean()) if (total > 0).any() else None
        for t, lab in labels.items():
            rel = lab >= 0.5
            n_rel = np.bincount(owner, weights=rel, minlength=u)
            r = (rel[pos[:, :k]] * hit[:, :k]).sum(1) if keys.size else np.zeros(u)
            out["tasks"][t][f"recall@{k}"] = float((r / np.maximum(n_rel, 1))[n_rel > 0].mean()) if (n_rel > 0).any() else None
    return out


def evaluate_served(retriever: Retriever, model: TwoTower, dataset: RecDataset,
                    filters: Optional[Sequence[str]] = None, ks: Sequence[int] = (10, 50, 100),
                    max_users: int = 512, batches: Sequence[int] = (1, 16, 64), seed: int = 0) -> Dict[str, Any]:
    """The ``served`` section of the report (see the module docstring).

    Args:
        retriever (Retriever): the loaded artifact, published from ``model`` on ``dataset``.
        model (TwoTower): the checkpoint the artifact was exported from (the exact reference).
        filters (Optional[Sequence[str]]): filter expressions (None: :func:`filter_suite`);
            no filter is always evaluated too.
        ks (Sequence[int]): cut-offs; those above the artifact's K are dropped and K is added.
        max_users (int): test users evaluated (fixed random subset; 0 = all).

    Returns:
        Dict[str, Any]: ``{"backend", "k", "num_users", "filters": {expr or "none": {"pass_fraction", "heldout_users",
        "recall@K", "ndcg@K", "value_recall@K", "recall_vs_exact@K", "tasks": {task: {"recall@K"}}}},
        "latency_ms": {"<batch>": ms}, "warnings": [..]}``.
    """
    n_items = dataset.items.num_rows
    if int(retriever.metadata["num_items"]) != n_items:
        raise ValueError(f"the artifact has {retriever.metadata['num_items']} items, the data set {n_items}")
    k_art = retriever.k
    ks = sorted({k for k in ks if k < k_art} | {k_art})  # up to the artifact's K, K included
    model = model.eval()
    item_terms = dataset.item_terms()
    attr = AttributeFilter(item_terms)
    suite = filter_suite(item_terms) if filters is None else [(f, float(attr(f, np.arange(n_items)).mean())) for f in filters]
    users = eval_users(dataset, "test", max_users, seed=seed)
    reqs = example_users(dataset, users.users, users.history)
    ids = dataset.schema.item_ids
    enc = retriever.encoder
    user_ids = enc.users(reqs)
    exclude = enc.exclude([[ids[r] for r in users.seen.row(i)] for i in range(users.users.size)], users.users.size)
    encoder = padded_user_encoder_from_two_tower(model, dataset.schema).eval()
    items = publish_item_embeddings(model, dataset)
    with torch.no_grad():
        u = encoder(user_ids)  # [U, T, D]
    hs = history_slots(encoder)
    values = [item_values(model, u[b], items, user_ids[b, hs]) for b in range(users.users.size)]  # U x [N]
    keys, labels = _heldout_pairs(dataset, "test", users.users)
    tasks = list(retriever.tasks)
    pair_values = model.value_model(torch.from_numpy(np.stack([labels[t] for t in tasks], 1))[None])[0]
    pair_values = pair_values.clamp_min(0).detach().float().numpy()

    out: Dict[str, Any] = {"backend": retriever.backend, "k": k_art, "num_users": int(users.users.size),
                           "filters": {}, "warnings": []}
    for expr, fraction in [("", 1.0)] + list(suite):
        passing = attr(expr, np.arange(n_items))
        plans = enc.filters(expr, users.users.size)
        top = served_rows(retriever, user_ids, plans, exclude)[:, : max(ks)]
        want = []
        for b in range(users.users.size):
            ok = passing.copy()
            ok[users.seen.row(b)] = False
            want.append(exact_top(values[b], ok, max(ks)))
        held = _passing_rows(users.heldout, passing)
        row: Dict[str, Any] = {"pass_fraction": float(passing.mean()), "heldout_users": int((held.lengths > 0).sum())}
        if row["heldout_users"]:
            row.update(recall_ndcg(top, held, ks))
        else:  # no held-out item passes: the same keys, no value
            row.update({f"{m}@{k}": None for k in ks for m in ("recall", "ndcg")})
        row.update(_labelled(top, keys, {t: labels[t] for t in tasks}, pair_values, passing, n_items, ks))
        for k in ks:
            row[f"recall_vs_exact@{k}"] = recall([t[t >= 0][:k] for t in top.numpy()], [w[:k] for w in want])
        out["filters"][expr or "none"] = row
        loss = row[f"recall_vs_exact@{max(ks)}"]
        if loss < WARN_BELOW:
            out["warnings"].append(f"served-vs-exact recall@{max(ks)} {loss:.3f} < {WARN_BELOW} under filter "
                                   f"{expr or 'none'!r}: raise candidates_per_task (and n_probe) at export")
    out["latency_ms"] = latency_ms(retriever, user_ids, exclude, batches)
    return out


def served_table(section: Dict[str, Any]) -> str:
    """The ``served`` section as a Markdown table (one row per filter; ``users``: those
    with a held-out item that passes) and a latency line."""
    first = next(iter(section["filters"].values()))
    cols = [c for c in first if "@" in c]
    lines = [f"served ({section['backend']}, K={section['k']}, {section['num_users']} test users; recall / ndcg / "
             "value_recall against held-out items that pass the filter, recall_vs_exact against the exact model)",
             "| filter | pass | users | " + " | ".join(cols) + " |", "|---|---:|---:|" + "---:|" * len(cols)]
    for expr, row in section["filters"].items():
        cells = " | ".join("-" if row.get(c) is None else f"{row[c]:.4f}" for c in cols)
        lines.append(f"| {expr} | {row['pass_fraction']:.4f} | {row['heldout_users']} | {cells} |")
    lines.append("latency ms per call: " + ", ".join(f"batch {b}: {ms:.2f}" for b, ms in section["latency_ms"].items()))
    lines += [f"WARNING: {w}" for w in section["warnings"]]
    return "\n".join(lines)
