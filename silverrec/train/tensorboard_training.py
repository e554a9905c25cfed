"""TensorBoard output at the end of training (``silverrec-train``, ``make demo``): recall@K against
K for the exact model and most-popular, dot product vs OverArch + Value Model per task, the
embedding projector (items with attributes, users with features) and the custom-scalars layout.

:func:`recall_curves` runs on every rank (the user and item towers gather across ranks);
:func:`log_training_end` on rank 0 only.
"""
from typing import Any, Dict, NamedTuple, Optional

import numpy as np
import torch
from torch import nn

from silverrec.data.dataset import RecDataset
from silverrec.train.distributed import DistContext
from silverrec.train.evaluator import Evaluator
from silverrec.train.served_eval import CURVE_KS
from silverrec.train.tb_logging import TensorBoardLogger, scalars_layout
from silverrec.train.tensorboard_figures import dot_vs_overarch_figure, recall_curve_figure
from silverrec.train.tensorboard_projector import log_projector


class Curves(NamedTuple):
    """recall@K (``hr@K`` under leave-last-out) against K of one split, and the embeddings behind it.

    Args:
        report (Dict[str, Any]): ``{"split", "num_users", "metric", "k": [..], "exact": [..],
            "most_popular": [..]}`` (for report.json).
        users (torch.Tensor): float [U, T, D] the evaluated users' embeddings.
        user_rows (np.ndarray): int64 [U] their rows.
        items (torch.Tensor): float [N, D] the item embeddings.
    """

    report: Dict[str, Any]
    users: torch.Tensor
    user_rows: np.ndarray
    items: torch.Tensor


def recall_curves(model: nn.Module, dataset: RecDataset, ctx: DistContext, split: str = "test",
                  max_users: int = 2000, protocol: str = "temporal") -> Curves:
    """Exact (first task head) and most-popular recall@K for K in ``CURVE_KS`` (up to N) on
    ``max_users`` users of ``split``; call it on every rank."""
    ks = [k for k in CURVE_KS if k <= dataset.items.num_rows] or [dataset.items.num_rows]
    ev = Evaluator(dataset, split, ks, max_users=max_users, protocol=protocol)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            users, items = ev.embed(model, ctx)
    finally:
        model.train(was_training)
    exact, popular = ev.metrics_of(users, items), ev.popularity_baseline()
    metric = "hr" if protocol == "leave_last_out" else "recall"
    report = {"split": split, "num_users": int(ev.users.users.size), "metric": metric, "k": ks,
              "exact": [exact[f"{metric}@{k}"] for k in ks], "most_popular": [popular[f"{metric}@{k}"] for k in ks]}
    return Curves(report, users, ev.users.users, items)


def log_training_end(logger: TensorBoardLogger, dataset: RecDataset, curves: Curves,
                     multitask: Optional[Dict[str, Any]], step: int) -> None:
    """Figures, projector and layout at the last step (rank 0)."""
    c = curves.report
    logger.figure(f"{c['split']}/recall_at_k", recall_curve_figure(
        {"exact (click head)": (c["k"], c["exact"]), "most popular": (c["k"], c["most_popular"])},
        f"{c['metric']}@K, {c['num_users']} {c['split']} users"), step)
    logger.scalars({f"{c['split']}/curves/{name}/{c['metric']}@{k}": v for name in ("exact", "most_popular")
                    for k, v in zip(c["k"], c[name])}, step)
    if multitask and multitask.get("tasks"):
        cutoffs = sorted(int(key.split("@")[1]) for key in next(iter(multitask["tasks"].values())))
        k = 100 if 100 in cutoffs else cutoffs[-1]
        tasks = {t: m[f"recall@{k}"] for t, m in multitask["tasks"].items() if f"recall@{k}" in m}
        value = multitask.get(f"value_recall@{k}")
        if value:
            tasks["value"] = {"dot": value.get("dot"), "overarch": value.get("overarch")}
        logger.figure(f"{multitask['split']}/dot_vs_overarch", dot_vs_overarch_figure(tasks, k), step)
    log_projector(logger, dataset, curves.items, curves.users, curves.user_rows, step)
    logger.layout(scalars_layout())
    logger.flush()
