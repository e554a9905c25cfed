"""Multi-task evaluation: dot-product retrieval vs OverArch + Value Model (the paper's Table 3).

For a split (valid or test) and a fixed random subset of its users, every user gets the
candidate pool the serving graph would score (U users, T tasks, D dim, N items, P per-task
list length, M pool width, K cut-off)::

    u [U, T, D] ── per task t: exact top-P of u[:, t] over all N items, seen items excluded
                └─ concatenate the T lists [U, T*P] ─► merge_candidates ─► pool [U, M] (-1 padding)

The pool is then ranked in five ways and the top-K compared with the user's held-out items:

* per task t, ``dot``: the dot logit of task t (equal to full-corpus exact retrieval of task t
  for K <= P, since the pool holds task t's top-P);
* per task t, ``overarch``: the logit of task t with the OverArch's correction;
* ``value`` with the dot logits / with the OverArch logits: the Value Model over
  :meth:`~silverrec.models.two_tower.TwoTower.task_scores` of the pool;
* ``click_dot``: the first task's dot logit alone (plain single-task two-tower retrieval).

Metrics (means over users; a held-out item seen twice in the split keeps its max label per task):

* recall@K of task t = |top-K ∩ relevant_t| / |relevant_t|, relevant_t = held-out items with
  label_t >= 0.5, over users with at least one relevant item;
* value-weighted recall@K = sum of the values of the held-out items in the top-K / sum of the
  values of all held-out items, where an item's value is the Value Model over its label vector
  (clamped at >= 0), over users whose total value is > 0.

Held-out items the user had already seen before the split are excluded from the pool (as in
:class:`~silverrec.train.evaluator.Evaluator`) but stay in the denominators.

:meth:`MultiTaskEvaluator.candidate_pool` and :meth:`MultiTaskEvaluator.rankings` are the
extension points: every ranking they return becomes a column of the report
(``benchmarks/multitask_headroom.py`` adds an oracle that reads the synthetic world's latents).
"""
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from silverrec.data.batching import FeatureBatcher
from silverrec.data.dataset import JaggedColumn, RecDataset
from silverrec.models.two_tower import TwoTower
from silverrec.retrieval.candidates import merge_candidates
from silverrec.train.ground_truth import exact_topk
from silverrec.train.distributed import DistContext
from silverrec.train.evaluator import embed_eval_users, embed_items, eval_users
from silverrec.train.tb_logging import TensorBoardLogger

_COLUMNS = ("dot", "overarch")


class MultiTaskEvaluator:
    """Per-task and value-weighted recall@K of a multi-task two-tower model, with and without
    the OverArch + Value Model re-scoring of the merged candidate pool.

    Args:
        dataset (RecDataset): the data.
        split (str): ``valid`` or ``test``.
        ks (Sequence[int]): cut-offs K, each <= the per-task pool length P.
        max_users (int): evaluate a fixed random subset of this many users (0 = all).
        pool_per_task (int): P, the length of each task's exact candidate list (0 = max(ks)).
        seed (int): seed of the user subset.
        chunk (int): users scored at a time; memory grows as chunk x M x T x the OverArch width.

    Example::

        >>> from silverrec.data.synthetic import synthetic_dataset
        >>> from silverrec.models.two_tower import TwoTowerConfig, build_two_tower
        >>> from silverrec.train.distributed import local_context
        >>> ds = synthetic_dataset("tiny", seed=0)
        >>> _ = torch.manual_seed(0)
        >>> model = build_two_tower(ds.schema, TwoTowerConfig(embedding_dim=8, user_layers=[8], item_layers=[8],
        ...                                                   value_formula="0.6*like + 0.3*share + 0.1*watch"))
        >>> m = MultiTaskEvaluator(ds, "test", ks=(5, 20), max_users=50).evaluate(model, local_context())
        >>> sorted(m["tasks"]["like"]), sorted(m["value_recall@20"]), m["num_users"], m["pool_per_task"]
        (['recall@20', 'recall@5'], ['click_dot', 'dot', 'overarch'], 50, 20)
    """

    def __init__(
        self,
        dataset: RecDataset,
        split: str,
        ks: Sequence[int] = (20, 100, 500),
        max_users: int = 2000,
        pool_per_task: int = 0,
        seed: int = 0,
        chunk: int = 256,
    ) -> None:
        self.ks: Tuple[int, ...] = tuple(sorted(set(int(k) for k in ks)))
        if not self.ks or self.ks[0] < 1:
            raise ValueError(f"MultiTaskEvaluator.ks must be non-empty positive cut-offs, got {list(ks)}")
        if pool_per_task < 0:
            raise ValueError(f"MultiTaskEvaluator.pool_per_task must be >= 0 (0 = max(ks)), got {pool_per_task}")
        self.pool_per_task = int(pool_per_task) or self.ks[-1]
        if self.ks[-1] > self.pool_per_task:
            raise ValueError(
                f"MultiTaskEvaluator: cut-off K={self.ks[-1]} exceeds the per-task pool size "
                f"pool_per_task={self.pool_per_task}; every K must be <= P"
            )
        n_items = dataset.items.num_rows
        if self.pool_per_task > n_items:
            raise ValueError(f"MultiTaskEvaluator: pool_per_task={self.pool_per_task} exceeds the corpus size N={n_items}")
        if chunk < 1:
            raise ValueError(f"MultiTaskEvaluator.chunk must be >= 1, got {chunk}")
        self.dataset = dataset
        self.split = split
        self.chunk = int(chunk)
        self.users = eval_users(dataset, split, max_users, seed)  # errors: unknown split, empty split
        self.batcher = FeatureBatcher(dataset.schema, dataset.users, dataset.items)
        self._held_keys, self._held_labels = _heldout_pairs(dataset, split, self.users.users)

    def _embed(self, model: TwoTower, ctx: DistContext) -> Tuple[Tensor, Tensor]:
        """u [U, T, D] of the evaluated users and v [N, D] of the corpus (float32, CPU)."""
        v = embed_items(model, self.batcher, self.dataset.items.num_rows, ctx)
        u = embed_eval_users(model, self.batcher, self.users, ctx)
        return u, v

    @torch.no_grad()
    def evaluate(self, model: TwoTower, ctx: DistContext) -> Dict[str, Any]:
        """Recall@K per task and value-weighted recall@K, dot vs OverArch (computed on every rank:
        the embedding is a collective, the scoring is repeated locally).

        Args:
            model (TwoTower): a plain TwoTower, or DistributedModelParallel's ``.module.two_tower``.
            ctx (DistContext): the process group (``local_context()`` for a single process).

        Returns:
            Dict[str, Any]: ``{"tasks": {task: {"recall@K": {"dot", "overarch"}}},
            "value_recall@K": {"dot", "overarch", "click_dot"}, "num_users", "pool_size_mean",
            "pool_per_task", "has_over_arch"}``; a mean over no user (no relevant item of a task
            among the evaluated users) is ``None``.
        """
        if not isinstance(model, TwoTower):
            raise TypeError(
                f"MultiTaskEvaluator.evaluate expects a TwoTower (DistributedModelParallel: pass "
                f"dmp.module.two_tower), got {type(model).__name__}"
            )
        tasks = list(model.task_names)
        missing = [t for t in tasks if t not in self._held_labels]
        if missing:
            raise ValueError(f"the model's tasks {missing} have no labels in the data (labels: {sorted(self._held_labels)})")
        was_training = model.training
        model.eval()
        try:
            u, v = self._embed(model, ctx)
            return self._metrics(model, tasks, u, v)
        finally:
            model.train(was_training)

    def _metrics(self, model: TwoTower, tasks: List[str], u: Tensor, v: Tensor) -> Dict[str, Any]:
        n_users, n_tasks, n_items = u.shape[0], len(tasks), v.shape[0]
        if u.dim() != 3 or u.shape[1] != n_tasks:
            raise ValueError(f"MultiTaskEvaluator: user embeddings {list(u.shape)}, expected [U, {n_tasks}, D]")
        device = model.task_rates.device
        has_over_arch = model.over_arch is not None
        labels = torch.from_numpy(np.stack([self._held_labels[t] for t in tasks], axis=1))  # [H, T] held-out pairs
        values = model.value_model(labels[None].to(device))[0].clamp_min(0.0).float().cpu()  # [H]
        keys = torch.from_numpy(self._held_keys)  # [H] sorted user_row * N + item
        pair_user = keys // n_items
        relevant = labels >= 0.5  # [H, T]
        n_relevant = torch.zeros(n_users, n_tasks).index_add_(0, pair_user, relevant.float())  # [U, T]
        total_value = torch.zeros(n_users).index_add_(0, pair_user, values)  # [U]

        kmax = self.ks[-1]
        # sums per (column, K), created by the first chunk that ranks with the column
        task_sums: Dict[Tuple[str, int], Tensor] = {}
        value_sums: Dict[Tuple[str, int], float] = {}
        v_dev = v.to(device)
        pool_sizes = 0
        for start in range(0, n_users, self.chunk):
            rows = np.arange(start, min(start + self.chunk, n_users))
            pool, valid = self.candidate_pool(rows, u[rows], v)  # [c, M]
            pool_sizes += int(valid.sum())
            ranked = self.rankings(model, rows, u[rows].to(device), v_dev, pool.to(device), valid.to(device), kmax)
            owner = torch.from_numpy(rows).view(-1, 1, 1)
            for name, top in ranked.items():  # top [c, S, kmax] item rows
                key = owner * n_items + top
                pos = torch.searchsorted(keys, key).clamp_max(max(keys.numel() - 1, 0))
                hit = (top >= 0) & (keys[pos] == key) if keys.numel() else torch.zeros_like(top, dtype=torch.bool)
                col, kind = name
                for k in self.ks:
                    if kind == "task":  # top [c, T, kmax]: task t's own ranking in slice t
                        rel = hit[..., :k] & relevant[pos[..., :k], torch.arange(n_tasks).view(1, -1, 1)]
                        share = rel.sum(-1) / n_relevant[rows].clamp_min(1)  # [c, T]
                        acc = task_sums.setdefault((col, k), torch.zeros(n_tasks, dtype=torch.float64))
                        acc += (share * (n_relevant[rows] > 0)).sum(0).double()
                    else:  # top [c, 1, kmax]
                        got = (values[pos[:, 0, :k]] * hit[:, 0, :k]).sum(-1)  # [c]
                        tot = total_value[rows]
                        value_sums[(col, k)] = value_sums.get((col, k), 0.0) + float(
                            (got / tot.clamp_min(1e-30))[tot > 0].sum())

        task_users = (n_relevant > 0).sum(0)  # [T]
        value_users = int((total_value > 0).sum())
        out: Dict[str, Any] = {"tasks": {}}
        task_cols = list(dict.fromkeys(c for c, _ in task_sums))
        value_cols = list(dict.fromkeys(c for c, _ in value_sums))
        for i, t in enumerate(tasks):
            out["tasks"][t] = {
                f"recall@{k}": {c: _mean(float(task_sums[(c, k)][i]), int(task_users[i])) for c in task_cols}
                for k in self.ks
            }
        for k in self.ks:
            out[f"value_recall@{k}"] = {c: _mean(value_sums[(c, k)], value_users) for c in value_cols}
        out["num_users"] = int(n_users)
        out["pool_size_mean"] = pool_sizes / max(n_users, 1)
        out["pool_per_task"] = self.pool_per_task
        out["has_over_arch"] = has_over_arch
        return out

    def candidate_pool(self, rows: np.ndarray, u: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        """The merged candidate pool of c evaluated users: rows int64 [c, M] (-1 padding) and valid
        [c, M]; M is trimmed to the widest pool of the chunk (at least K).

        Args:
            rows (np.ndarray): int64 [c] positions of the users in ``self.users``.
            u (Tensor): [c, T, D] their embeddings. v (Tensor): [N, D] the corpus.

        An extension point (``benchmarks/multitask_headroom.py`` swaps in an oracle's pool).
        """
        seen = self.users.seen.take(rows)
        lists = [exact_topk(u[:, t], v, self.pool_per_task, exclude=seen)[1] for t in range(u.shape[1])]
        pool = merge_candidates(torch.cat(lists, dim=1))  # [c, T*P], ascending then -1
        valid = pool >= 0
        width = max(int(valid.sum(1).max()), self.ks[-1])
        return pool[:, :width], valid[:, :width]

    def rankings(self, model: TwoTower, rows: np.ndarray, u: Tensor, v: Tensor, pool: Tensor, valid: Tensor,
                 k: int) -> Dict[Tuple[str, str], Tensor]:
        """Top-k item rows of the pool under every ranking, on the CPU: ``(col, "task")`` [c, T, k]
        (slice t: task t's ranking) and ``(col, "value")`` [c, 1, k], -1 where the pool has fewer
        than k valid rows. Each ``col`` becomes a column of the report.

        Args:
            model (TwoTower): the model. rows (np.ndarray): int64 [c] positions in ``self.users``.
            u (Tensor): [c, T, D]. v (Tensor): [N, D]. pool (Tensor): int64 [c, M]. valid (Tensor): bool [c, M].
            k (int): the largest cut-off.

        An extension point (``benchmarks/multitask_headroom.py`` adds oracle rankings).
        """
        cand = v[pool.clamp_min(0)]  # [c, M, D]
        dot = model.task_logits(u, cand, over_arch=False)  # [c, M, T]
        has_over_arch = model.over_arch is not None
        history = padded_rows(self.users.history.take(rows)).to(pool.device) if model.uses_history else None
        logits = {"dot": dot, "overarch": model.task_logits(u, cand, over_arch=True, history=history, items=pool)
                  if has_over_arch else dot}
        out: Dict[Tuple[str, str], Tensor] = {}
        for col, lg in logits.items():
            out[(col, "task")] = top_rows(lg.masked_fill(~valid.unsqueeze(-1), float("-inf")), pool, k)
            value = model.value(model.task_scores(lg, valid), valid)  # [c, M], -inf where invalid
            out[(col, "value")] = top_rows(value.unsqueeze(-1), pool, k)
        out[("click_dot", "value")] = out[("dot", "task")][:, :1]
        return out


def top_rows(scores: Tensor, pool: Tensor, k: int) -> Tensor:
    """scores [c, M, S] of the pool [c, M] -> top-k item rows int64 [c, S, k] on the CPU (-1 where
    the score is -inf: an invalid candidate).

    Example::

        >>> top_rows(torch.tensor([[[0.5], [2.0], [float("-inf")]]]), torch.tensor([[7, 3, -1]]), k=3).tolist()
        [[[3, 7, -1]]]
    """
    c, m, s = scores.shape
    top_s, top_i = torch.topk(scores.transpose(1, 2), k, dim=-1)  # [c, S, k]
    rows = pool.gather(1, top_i.reshape(c, s * k)).view(c, s, k)
    return rows.masked_fill(torch.isneginf(top_s), -1).cpu()


def padded_rows(column: JaggedColumn) -> Tensor:
    """The rows of a jagged column as int64 [R, L] (L = the longest row, at least 1; -1 padding).

    Example::

        >>> padded_rows(JaggedColumn(np.array([4, 5, 6]), np.array([0, 2, 2, 3]))).tolist()
        [[4, 5], [-1, -1], [6, -1]]
    """
    lengths = torch.from_numpy(column.lengths)
    width = max(int(lengths.max()) if lengths.numel() else 0, 1)
    present = torch.arange(width)[None, :] < lengths[:, None]
    out = torch.full((lengths.numel(), width), -1, dtype=torch.int64)
    out[present] = torch.from_numpy(column.values)
    return out


def _heldout_pairs(dataset: RecDataset, split: str, users: np.ndarray) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Distinct held-out (user, item) pairs of the evaluated users, as sorted keys
    ``user_position * N + item`` int64 [H] and the max label per task float32 [H]."""
    it = dataset.interactions
    idx = dataset.split.get(split)
    position = np.full(dataset.users.num_rows, -1, dtype=np.int64)
    position[users] = np.arange(users.size)
    idx = idx[position[it.user[idx]] >= 0]
    pair = position[it.user[idx]] * dataset.items.num_rows + it.item[idx]
    keys, inverse = np.unique(pair, return_inverse=True)
    labels = {}
    for name, col in it.labels.items():
        best = np.full(keys.size, -np.inf, dtype=np.float32)
        np.maximum.at(best, inverse, col[idx])
        labels[name] = best
    return keys, labels


def _mean(total: float, count: int) -> Optional[float]:
    return total / count if count > 0 else None


def log_multitask(logger: Optional[TensorBoardLogger], metrics: Dict[str, Any], step: int, prefix: str) -> None:
    """Writes a :meth:`MultiTaskEvaluator.evaluate` report as TensorBoard scalars, tagged
    ``{prefix}multitask/{task}/recall@K/{dot|overarch}``, ``{prefix}multitask/value_recall@K/
    {dot|overarch|click_dot}`` and ``{prefix}multitask/pool_size_mean``; ``None`` means are
    skipped and a ``None`` logger is a no-op.

    Example::

        >>> log_multitask(None, {"tasks": {}}, step=0, prefix="test/")
    """
    if logger is None:
        return
    flat: Dict[str, float] = {}
    for task, per_k in metrics["tasks"].items():
        for k_name, cols in per_k.items():
            for col, x in cols.items():
                flat[f"multitask/{task}/{k_name}/{col}"] = x
    for name, cols in metrics.items():
        if name.startswith("value_recall@"):
            for col, x in cols.items():
                flat[f"multitask/{name}/{col}"] = x
    flat["multitask/pool_size_mean"] = metrics["pool_size_mean"]
    logger.scalars({k: x for k, x in flat.items() if x is not None}, step, prefix=prefix)


def multitask_table(metrics: Dict[str, Any]) -> List[List[str]]:
    """Rows of a printed table of a :meth:`MultiTaskEvaluator.evaluate` report: a header, one row
    per task, then ``value (weighted)``; per K the dot and OverArch recall, and the relative gain
    ``overarch / dot - 1`` at K=100 (or the largest K when 100 is not evaluated).

    Example::

        >>> m = {"tasks": {"like": {"recall@100": {"dot": 0.2, "overarch": 0.25}}},
        ...      "value_recall@100": {"dot": 0.4, "overarch": 0.42, "click_dot": 0.3}}
        >>> for row in multitask_table(m): print(row)
        ['task', 'recall@100 dot', 'recall@100 overarch', 'gain@100']
        ['like', '0.2000', '0.2500', '+25.0%']
        ['value (weighted)', '0.4000', '0.4200', '+5.0%']
    """
    ks = sorted(int(name.split("@")[1]) for name in metrics if name.startswith("value_recall@"))
    if not ks:
        raise ValueError("multitask_table: the report has no value_recall@K entries")
    gain_k = 100 if 100 in ks else ks[-1]
    header = ["task"] + [f"recall@{k} {c}" for k in ks for c in _COLUMNS] + [f"gain@{gain_k}"]

    def row(name: str, per_k: Dict[str, Dict[str, Optional[float]]]) -> List[str]:
        cells = [_fmt(per_k[f"recall@{k}"][c]) for k in ks for c in _COLUMNS]
        at = per_k[f"recall@{gain_k}"]
        return [name] + cells + [_gain(at["dot"], at["overarch"])]

    rows = [header] + [row(t, per_k) for t, per_k in metrics["tasks"].items()]
    rows.append(row("value (weighted)", {f"recall@{k}": metrics[f"value_recall@{k}"] for k in ks}))
    return rows


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _gain(dot: Optional[float], overarch: Optional[float]) -> str:
    if dot is None or overarch is None or dot == 0 or math.isnan(dot) or math.isnan(overarch):
        return "n/a"
    return f"{100.0 * (overarch / dot - 1.0):+.1f}%"
