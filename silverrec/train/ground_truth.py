"""Exact (brute-force) inner-product top-K: the ranking evaluation scores against held-out items.

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

