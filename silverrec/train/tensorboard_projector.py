"""The TensorBoard embedding projector at the end of training: a sample of item embeddings with
their attributes, and of user embeddings (first task head) with their features.

Metadata values are the external vocabulary values (``language=en``), several values of a
multi-valued feature joined by ``|``, so the projector can colour and search by any of them.
"""
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from silverrec.data.dataset import RecDataset
from silverrec.schema import Feature
from silverrec.train.tb_logging import TensorBoardLogger

MAX_POINTS = 10_000  # the projector's comfortable limit in a browser


def sample_rows(n: int, limit: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    """int64 ``[min(n, limit)]``: all rows, or a fixed random sample of ``limit`` (ascending).

    Example::

        >>> sample_rows(3).tolist()
        [0, 1, 2]
    """
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def _values(feature: Feature, ids: np.ndarray) -> str:
    return "|".join(str(feature.vocab[i]) for i in ids.tolist()) or "-"


def item_metadata(dataset: RecDataset, rows: np.ndarray) -> List[List[str]]:
    """Per item row: its id, every item feature's values and its training interaction count.

    The header is ``[f.name for f in schema.item_features] + ["train_count"]``."""
    counts = np.bincount(dataset.interactions.item[dataset.split.train], minlength=dataset.items.num_rows)
    feats = dataset.schema.item_features
    return [[_values(f, dataset.items.columns[f.name].row(r)) for f in feats] + [str(int(counts[r]))]
            for r in rows.tolist()]


def user_metadata(dataset: RecDataset, users: np.ndarray) -> List[List[str]]:
    """Per user row: its row and every user feature's values (header ``["user"] + names``)."""
    feats = dataset.schema.user_features
    return [[str(u)] + [_values(f, dataset.users.columns[f.name].row(u)) for f in feats] for u in users.tolist()]


def log_projector(logger: TensorBoardLogger, dataset: RecDataset, items: Tensor, users: Optional[Tensor],
                  user_rows: Optional[np.ndarray], step: int, limit: int = MAX_POINTS) -> None:
    """Writes the ``items`` and ``users`` projector tensors.

    Args:
        items (Tensor): float ``[N, D]`` item embeddings (row = item row).
        users (Optional[Tensor]): float ``[U, D]`` or ``[U, T, D]`` user embeddings (first task
            head used), or None.
        user_rows (Optional[np.ndarray]): int64 ``[U]`` the user rows of ``users``.
    """
    rows = sample_rows(items.shape[0], limit)
    header: Sequence[str] = [f.name for f in dataset.schema.item_features] + ["train_count"]
    logger.embedding("items", items[torch.from_numpy(rows)], item_metadata(dataset, rows), header, step)
    if users is not None and user_rows is not None:
        if users.dim() == 3:
            users = users[:, 0]
        pick = sample_rows(users.shape[0], limit)
        logger.embedding("users", users[torch.from_numpy(pick)], user_metadata(dataset, user_rows[pick]),
                         ["user"] + [f.name for f in dataset.schema.user_features], step)
