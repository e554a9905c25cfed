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

and the served graph's latency per batch size. Without a filter it also gives recall@K against K
(1 to 500) of the served top-K, the exact model's ranking and most-popular (``curves``), and how
concentrated each one's top-K lists are (``exposure``: catalogue coverage and Gini index,
:mod:`silverrec.train.exposure`); the per-user arrays behind them come back in
:class:`ServedDetails` for TensorBoard's histograms (:mod:`silverrec.train.tensorboard_served`).
"""
import math
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

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
from silverrec.train.exposure import exposure_counts, exposure_summary
from silverrec.train.metrics import hits_matrix, recall_ndcg
from silverrec.train.multitask_eval import _heldout_pairs

WARN_BELOW = 0.95  # served-vs-exact recall@100 under which the report warns
CURVE_KS = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500)  # recall@K against K
# What to raise at export when a filter class's index loss is large (benchmarks/served_recall_grid.py,
# benchmarks/RESULTS.md): a filtered query's probe already widens with the filter, so K0 is the lever there.
ADVICE = {None: "serving.candidates_per_task first, then serving.n_probe",
          "strict": "serving.candidates_per_task (a filtered query's probe already widens ~1/pass-rate)"}


class ServedDetails(NamedTuple):
    """Per-user and per-item arrays behind the ``served`` section (no filter; for histograms).

    Args:
        per_user_recall (Dict[str, np.ndarray]): ``{"served" | "exact" | "most_popular": float [U]}``
            recall@K (the artifact's K) of each user against their held-out items.
        exposure (Dict[str, np.ndarray]): the same keys, int64 [N] lists each item appears in.
        result_popularity (Dict[str, np.ndarray]): the same keys, float [U * K] ``log1p`` of the
            training interaction count of each returned item.
    """

    per_user_recall: Dict[str, np.ndarray]
    exposure: Dict[str, np.ndarray]
    result_popularity: Dict[str, np.ndarray]
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


def popular_top(counts: np.ndarray, seen: JaggedColumn, k: int) -> np.ndarray:
    """int64 ``[U, k]``: each user's ``k`` most frequent items (ties to the lower row) minus the
    items of their row of ``seen``; -1 padding when fewer remain."""
    order = np.argsort(-counts, kind="stable")
    out = np.full((seen.num_rows, k), -1, dtype=np.int64)
    for u in range(seen.num_rows):
        head = order[: k + seen.lengths[u]]
        head = head[~np.isin(head, seen.row(u))][:k]
        out[u, : head.size] = head
    return out


def _per_user_recall(top: np.ndarray, heldout: JaggedColumn, k: int) -> np.ndarray:
    """float [U]: recall@k of each list ``top`` [U, >= k] (0 for an empty held-out set)."""
    hits = hits_matrix(torch.from_numpy(top[:, :k]), heldout).sum(1).numpy()
    return hits / np.maximum(heldout.lengths, 1)


def _padded(lists: Sequence[np.ndarray], k: int) -> np.ndarray:
    out = np.full((len(lists), k), -1, dtype=np.int64)
    for i, r in enumerate(lists):
        out[i, : min(k, r.size)] = r[:k]
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


def filter_class(fraction: float) -> str:
    """The suite class of a pass fraction: ``none`` (1.0) or the nearest of ``~50%``, ``~10%``,
    ``~1%`` in log ratio.

    Example::

        >>> filter_class(1.0), filter_class(0.08), filter_class(0.004)
        ('none', '~10%', '~1%')
    """
    if fraction >= 1.0:
        return "none"
    return min(((abs(math.log(max(fraction, 1e-12) / t)), f"~{t:.0%}") for t in (0.5, 0.1, 0.01)))[1]


def evaluate_served(retriever: Retriever, model: TwoTower, dataset: RecDataset,
                    filters: Optional[Sequence[str]] = None, ks: Sequence[int] = (10, 50, 100),
                    max_users: int = 512, batches: Sequence[int] = (1, 16, 64), seed: int = 0) -> Dict[str, Any]:
    """The ``served`` section of the report (see the module docstring); :func:`evaluate_served_details`
    without the per-user arrays."""
    return evaluate_served_details(retriever, model, dataset, filters, ks, max_users, batches, seed)[0]


def evaluate_served_details(retriever: Retriever, model: TwoTower, dataset: RecDataset,
                            filters: Optional[Sequence[str]] = None, ks: Sequence[int] = (10, 50, 100),
                            max_users: int = 512, batches: Sequence[int] = (1, 16, 64),
                            seed: int = 0) -> Tuple[Dict[str, Any], ServedDetails]:
    """The ``served`` section of the report and the arrays behind its histograms.

    Args:
        retriever (Retriever): the loaded artifact, published from ``model`` on ``dataset``.
        model (TwoTower): the checkpoint the artifact was exported from (the exact reference).
        filters (Optional[Sequence[str]]): filter expressions (None: :func:`filter_suite`);
            no filter is always evaluated too.
        ks (Sequence[int]): cut-offs; those above the artifact's K are dropped and K is added.
        max_users (int): test users evaluated (fixed random subset; 0 = all).

    Returns:
        Tuple[Dict[str, Any], ServedDetails]: ``{"backend", "k", "num_users", "filters": {expr or
        "none": {"pass_fraction", "class", "heldout_users", "recall@K", "ndcg@K", "value_recall@K",
        "recall_vs_exact@K", "tasks": {task: {"recall@K"}}}}, "index_loss": {class: mean
        recall_vs_exact@K}, "curves": {"k": [..], "served" | "exact"
        | "most_popular": [recall@k ..]}, "exposure": {"served" | "exact" | "most_popular":
        {"coverage", "gini", "distinct_items"}}, "latency_ms": {"<batch>": ms}, "warnings": [..]}``
        and the :class:`ServedDetails` (no filter).
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
    counts = np.bincount(dataset.interactions.item[dataset.split.train], minlength=n_items)

    out: Dict[str, Any] = {"backend": retriever.backend, "k": k_art, "num_users": int(users.users.size),
                           "filters": {}, "warnings": []}
    details = ServedDetails({}, {}, {})
    for expr, fraction in [("", 1.0)] + list(suite):
        passing = attr(expr, np.arange(n_items))
        plans = enc.filters(expr, users.users.size)
        top = served_rows(retriever, user_ids, plans, exclude)[:, : max(ks)]
        depth = max(ks) if expr else max(max(ks), min(max(CURVE_KS), n_items))  # no filter: the curves' depth
        want = []
        for b in range(users.users.size):
            ok = passing.copy()
            ok[users.seen.row(b)] = False
            want.append(exact_top(values[b], ok, depth))
        held = _passing_rows(users.heldout, passing)
        row: Dict[str, Any] = {"pass_fraction": float(passing.mean()), "class": filter_class(float(passing.mean())),
                               "heldout_users": int((held.lengths > 0).sum())}
        if row["heldout_users"]:
            row.update(recall_ndcg(top, held, ks))
        else:  # no held-out item passes: the same keys, no value
            row.update({f"{m}@{k}": None for k in ks for m in ("recall", "ndcg")})
        row.update(_labelled(top, keys, {t: labels[t] for t in tasks}, pair_values, passing, n_items, ks))
        for k in ks:
            row[f"recall_vs_exact@{k}"] = recall([t[t >= 0][:k] for t in top.numpy()], [w[:k] for w in want])
        out["filters"][expr or "none"] = row
        if not expr:
            _unfiltered(out, details, top.numpy(), _padded(want, depth), popular_top(counts, users.seen, depth),
                        users.heldout, counts, k_art)
        loss = row[f"recall_vs_exact@{max(ks)}"]
        if loss < WARN_BELOW:
            advice = ADVICE["strict" if row["class"] in ("~10%", "~1%") else None]
            out["warnings"].append(f"served-vs-exact recall@{max(ks)} {loss:.3f} < {WARN_BELOW} under filter "
                                   f"{expr or 'none'!r} ({row['class']} pass): raise {advice} at export")
    out["index_loss"] = index_loss_by_class(out["filters"], k_art)
    out["latency_ms"] = latency_ms(retriever, user_ids, exclude, batches)
    return out, details


def index_loss_by_class(filters: Dict[str, Dict[str, Any]], k: int) -> Dict[str, float]:
    """``{class: mean recall_vs_exact@k over the class's filters}`` (classes in first-seen order:
    ``none``, ``~50%``, ``~10%``, ``~1%``, ...), the index-loss line of :func:`served_table`."""
    by_class: Dict[str, List[float]] = {}
    for row in filters.values():
        by_class.setdefault(row.get("class", "-"), []).append(row[f"recall_vs_exact@{k}"])
    return {c: float(np.mean(v)) for c, v in by_class.items()}


def _unfiltered(out: Dict[str, Any], details: ServedDetails, served: np.ndarray, exact: np.ndarray,
                popular: np.ndarray, heldout: JaggedColumn, counts: np.ndarray, k: int) -> None:
    """Fills ``curves`` and ``exposure`` of ``out`` and ``details`` from the unfiltered top lists
    (``served`` [U, K], ``exact`` and ``popular`` [U, >= K])."""
    n_items = counts.size
    curve_ks = [c for c in CURVE_KS if c <= exact.shape[1]]
    curves: Dict[str, Any] = {"k": curve_ks}
    for name, top in (("served", served), ("exact", exact), ("most_popular", popular)):
        cut = [c for c in curve_ks if c <= top.shape[1]]
        curves[name] = [v for c, v in zip(cut, _recall_at(top, heldout, cut))]
        lists = top[:, :k]
        details.per_user_recall[name] = _per_user_recall(lists, heldout, k)
        details.exposure[name] = exposure_counts(lists, n_items)
        details.result_popularity[name] = np.log1p(counts[lists[lists >= 0]]).astype(np.float64)
    out["curves"] = curves
    out["exposure"] = {name: exposure_summary(top[:, :k], n_items)
                       for name, top in (("served", served), ("exact", exact), ("most_popular", popular))}


def _recall_at(top: np.ndarray, heldout: JaggedColumn, ks: Sequence[int]) -> List[float]:
    """Mean recall@k over users with held-out items, for each k of ``ks`` (each <= top's width)."""
    hits = hits_matrix(torch.from_numpy(top), heldout).numpy()
    n = heldout.lengths
    ok = n > 0
    return [float((hits[:, :k].sum(1)[ok] / n[ok]).mean()) for k in ks]


def served_table(section: Dict[str, Any], classes: Optional[Sequence[str]] = None) -> str:
    """The ``served`` section as a Markdown table (one row per filter; ``users``: those with a
    held-out item that passes), the index loss per filter class, the coverage line and the
    latency line. ``classes`` (e.g. ``["none", "~10%", "~1%"]``) keeps only those filter rows."""
    rows = {e: r for e, r in section["filters"].items() if classes is None or r.get("class") in classes}
    first = next(iter(section["filters"].values()))
    cols = [c for c in first if "@" in c]
    lines = [f"served ({section['backend']}, K={section['k']}, {section['num_users']} test users; recall / ndcg / "
             "value_recall against held-out items that pass the filter, recall_vs_exact against the exact model)",
             "| filter | class | pass | users | " + " | ".join(cols) + " |", "|---|---|---:|---:|" + "---:|" * len(cols)]
    for expr, row in rows.items():
        cells = " | ".join("-" if row.get(c) is None else f"{row[c]:.4f}" for c in cols)
        lines.append(f"| {expr} | {row.get('class', '-')} | {row['pass_fraction']:.4f} | {row['heldout_users']} | {cells} |")
    k = section["k"]
    loss = section.get("index_loss") or index_loss_by_class(section["filters"], k)
    shown = {row.get("class", "-") for row in rows.values()}
    lines.append(f"index loss: served-vs-exact recall@{k} (mean per class) " + ", ".join(
        f"{c} {v:.4f}" for c, v in loss.items() if c in shown) + f" (target >= {WARN_BELOW})")
    if "exposure" in section:
        lines.append(f"coverage of the catalogue by the top-{k} lists (no filter; Gini of item exposure): " + ", ".join(
            f"{name} {e['coverage']:.2%} ({e['distinct_items']} items, Gini {e['gini']:.3f})"
            for name, e in section["exposure"].items()))
    lines.append("latency ms per call: " + ", ".join(f"batch {b}: {ms:.2f}" for b, ms in section["latency_ms"].items()))
    lines += [f"WARNING: {w}" for w in section["warnings"]]
    return "\n".join(lines)
