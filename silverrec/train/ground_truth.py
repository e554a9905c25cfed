"""Exact (brute-force) inner-product top-K and target ranks: what evaluation scores against held-out items.

The evaluators (:mod:`silverrec.train.evaluator`, :mod:`silverrec.train.multitask_eval`) rank the
whole corpus with it, and it is the ground truth that approximate search is measured against.
"""
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from silverrec.data.dataset import JaggedColumn
from silverrec.models.similarity import Similarity


def exact_topk(
    queries: Tensor,
    items: Tensor,
    k: int,
    exclude: Optional[JaggedColumn] = None,
    item_bias: Optional[Tensor] = None,
    block: int = 1024,
) -> Tuple[Tensor, Tensor]:
    """Blocked exact top-K by inner product, optionally excluding items per query.

    Args:
        queries (Tensor): float [B, D].
        items (Tensor): float [N, D].
        k (int): K (<= N).
        exclude (Optional[JaggedColumn]): B rows of item rows to leave out (e.g. already seen).
        item_bias (Optional[Tensor]): float [N] added to every score (e.g. popularity).
        block (int): queries per block.

    Returns:
        Tuple[Tensor, Tensor]: scores float32 [B, K] best first (-inf padding) and rows int64
        [B, K] (-1 padding where fewer than K items remain).

    Example::

        >>> s, r = exact_topk(torch.eye(2), torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]]), k=2)
        >>> r.tolist()
        [[0, 2], [1, 2]]
    """
    n = items.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"exact_topk: k={k} must be in [1, N={n}]")
    if exclude is not None and exclude.num_rows != queries.shape[0]:
        raise ValueError(f"exact_topk: exclude has {exclude.num_rows} rows, queries {queries.shape[0]}")
    scores_out, rows_out = [], []
    for start in range(0, queries.shape[0], block):
        q = queries[start : start + block]
        s = Similarity.pairwise(q.float(), items.float())  # [b, N]
        if item_bias is not None:
            s = s + item_bias.float()
        if exclude is not None:
            part = exclude.take(np.arange(start, start + q.shape[0]))
            rows = torch.from_numpy(np.repeat(np.arange(q.shape[0]), part.lengths))
            s[rows, torch.from_numpy(part.values)] = float("-inf")
        top_s, top_r = torch.topk(s, k, dim=1)
        top_r = torch.where(torch.isinf(top_s) & (top_s < 0), torch.full_like(top_r, -1), top_r)
        scores_out.append(top_s)
        rows_out.append(top_r)
    return torch.cat(scores_out), torch.cat(rows_out)



def exact_ranks(
    queries: Tensor,
    items: Tensor,
    targets: Tensor,
    exclude: Optional[JaggedColumn] = None,
    item_bias: Optional[Tensor] = None,
    block: int = 1024,
) -> Tensor:
    """The 1-based rank of each query's target item in the exact inner-product ranking of the
    whole corpus, optionally with items left out per query.

    rank = 1 + #items scoring higher + #items scoring the same with a lower row (ties go to the
    lower row, as in every silverrec top-K). Excluded items never count; the target itself must
    not be excluded.

    Args:
        queries (Tensor): float [B, D].
        items (Tensor): float [N, D].
        targets (Tensor): int64 [B] item row of each query's target.
        exclude (Optional[JaggedColumn]): B rows of item rows to leave out (e.g. the user's other items).
        item_bias (Optional[Tensor]): float [N] added to every score (e.g. popularity).
        block (int): queries per block.

    Returns:
        Tensor: int64 [B] ranks in [1, N].

    Example::

        >>> items = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]])
        >>> exact_ranks(torch.eye(2), items, torch.tensor([2, 0])).tolist()
        [2, 3]
        >>> exact_ranks(torch.eye(2), items, torch.tensor([2, 0]), exclude=JaggedColumn.from_lists([[0], [1]])).tolist()
        [1, 2]
    """
    n = items.shape[0]
    targets = torch.as_tensor(targets, dtype=torch.int64)
    if targets.shape != (queries.shape[0],):
        raise ValueError(f"exact_ranks: targets has shape {tuple(targets.shape)}, expected ({queries.shape[0]},)")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n):
        raise ValueError(f"exact_ranks: target rows must be in [0, N={n})")
    if exclude is not None and exclude.num_rows != queries.shape[0]:
        raise ValueError(f"exact_ranks: exclude has {exclude.num_rows} rows, queries {queries.shape[0]}")
    cols = torch.arange(n)
    out = []
    for start in range(0, queries.shape[0], block):
        q = queries[start : start + block]
        t = targets[start : start + q.shape[0]]
        s = Similarity.pairwise(q.float(), items.float())  # [b, N]
        if item_bias is not None:
            s = s + item_bias.float()
        rows = torch.arange(q.shape[0])
        if exclude is not None:
            part = exclude.take(np.arange(start, start + q.shape[0]))
            ex_rows = torch.from_numpy(np.repeat(np.arange(q.shape[0]), part.lengths))
            ex_items = torch.from_numpy(part.values)
            if bool((ex_items == t[ex_rows]).any()):
                raise ValueError("exact_ranks: a query's target is in its own exclusions")
            s[ex_rows, ex_items] = float("-inf")
        target_score = s[rows, t].unsqueeze(1)  # [b, 1]
        ahead = (s > target_score) | ((s == target_score) & (cols < t.unsqueeze(1)))
        if exclude is not None:
            ahead[ex_rows, ex_items] = False
        out.append(ahead.sum(1) + 1)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)
