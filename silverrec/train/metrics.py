"""Ranking metrics over retrieved top-K lists and held-out item sets (pure functions)."""
from typing import Dict, Sequence

import numpy as np
import torch

from silverrec.data.dataset import JaggedColumn


def hits_matrix(topk_rows: torch.Tensor, heldout: JaggedColumn) -> torch.Tensor:
    """Which retrieved items are held-out items of their user.

    Args:
        topk_rows (Tensor): int64 [U, K] retrieved item rows per user, best first (-1 = none).
        heldout (JaggedColumn): U rows of held-out item rows.

    Returns:
        Tensor: bool [U, K].
    """
    u, k = topk_rows.shape
    if heldout.num_rows != u:
        raise ValueError(f"hits_matrix: {u} retrieved lists but {heldout.num_rows} held-out rows")
    user_of = torch.from_numpy(np.repeat(np.arange(u), heldout.lengths))
    # a (user, item) pair is encoded as one int64 key; rows are < 2**31
    n = int(max(int(topk_rows.max().item()) if topk_rows.numel() else 0, int(heldout.values.max(initial=0)))) + 1
    held_keys = user_of * n + torch.from_numpy(heldout.values)
    got_keys = torch.arange(u).unsqueeze(1) * n + topk_rows.clamp_min(0)
    return torch.isin(got_keys, held_keys) & (topk_rows >= 0)


def recall_ndcg(topk_rows: torch.Tensor, heldout: JaggedColumn, ks: Sequence[int]) -> Dict[str, float]:
    """Mean recall@K and NDCG@K over users (binary relevance).

    recall@K = |top-K ∩ held-out| / |held-out|; NDCG@K = DCG@K / ideal DCG@K. Users with an
    empty held-out set are skipped.

    Args:
        topk_rows (Tensor): int64 [U, K_max] retrieved rows, best first.
        heldout (JaggedColumn): U rows of held-out item rows.
        ks (Sequence[int]): cut-offs, each <= K_max.

    Returns:
        Dict[str, float]: ``{"recall@K": .., "ndcg@K": ..}`` for every K.

    Example::

        >>> held = JaggedColumn.from_lists([[3], [1, 2]])
        >>> recall_ndcg(torch.tensor([[3, 0], [0, 2]]), held, [1, 2])["recall@2"]
        0.75
    """
    kmax = topk_rows.shape[1]
    if any(k > kmax or k < 1 for k in ks):
        raise ValueError(f"recall_ndcg: cut-offs {list(ks)} must be in [1, {kmax}]")
    hits = hits_matrix(topk_rows, heldout).float()  # [U, K]
    n_held = torch.from_numpy(heldout.lengths).float()
    valid = n_held > 0
    if not bool(valid.any()):
        raise ValueError("recall_ndcg: every held-out set is empty")
    discount = 1.0 / torch.log2(torch.arange(kmax, dtype=torch.float32) + 2.0)  # [K]
    out: Dict[str, float] = {}
    for k in ks:
        recall = hits[:, :k].sum(1) / n_held.clamp_min(1)
        dcg = (hits[:, :k] * discount[:k]).sum(1)
        ideal_len = n_held.clamp(max=k).long()
        ideal = torch.cumsum(discount[:k], 0)[(ideal_len - 1).clamp_min(0)]
        out[f"recall@{k}"] = float(recall[valid].mean())
        out[f"ndcg@{k}"] = float((dcg / ideal)[valid].mean())
    return out


def hit_rate_ndcg_mrr(ranks: torch.Tensor, ks: Sequence[int]) -> Dict[str, float]:
    """Mean HR@K, NDCG@K and MRR over users with one held-out item each (leave-last-out).

    HR@K = 1 if rank <= K; NDCG@K = 1 / log2(rank + 1) if rank <= K, else 0 (one relevant
    item, so the ideal DCG is 1); MRR = 1 / rank over the full ranking (not cut off).

    Args:
        ranks (Tensor): int64 [U] 1-based rank of each user's held-out item.
        ks (Sequence[int]): cut-offs (any K >= 1; K beyond the corpus counts every item).

    Returns:
        Dict[str, float]: ``{"hr@K": .., "ndcg@K": .., "mrr": ..}``.

    Example::

        >>> m = hit_rate_ndcg_mrr(torch.tensor([1, 3]), [1, 10])
        >>> m["hr@1"], m["hr@10"], round(m["ndcg@10"], 4), round(m["mrr"], 4)
        (0.5, 1.0, 0.75, 0.6667)
    """
    if ranks.dim() != 1 or ranks.numel() == 0:
        raise ValueError(f"hit_rate_ndcg_mrr: ranks must be a non-empty [U] tensor, got shape {tuple(ranks.shape)}")
    if int(ranks.min()) < 1:
        raise ValueError("hit_rate_ndcg_mrr: ranks are 1-based")
    if any(k < 1 for k in ks):
        raise ValueError(f"hit_rate_ndcg_mrr: cut-offs {list(ks)} must be >= 1")
    r = ranks.double()
    gain = 1.0 / torch.log2(r + 1.0)
    out: Dict[str, float] = {}
    for k in sorted(ks):
        inside = r <= k
        out[f"hr@{k}"] = float(inside.double().mean())
        out[f"ndcg@{k}"] = float(torch.where(inside, gain, torch.zeros_like(gain)).mean())
    out["mrr"] = float((1.0 / r).mean())
    return out
