"""Candidate lists: the best K of scored lists under the tie rule, and merging the lists of
several tasks into one de-duplicated list per query."""
import torch
from torch import Tensor

_DROPPED = 2**62  # sorts after every item row


def merge_candidates(rows: Tensor) -> Tensor:
    """Union of each query's candidate rows with duplicates removed, at a fixed width.

    Sort-based, with fixed shapes and no host syncs (usable inside the exported serving graph).

    Args:
        rows (Tensor): int64 [B, M] candidate item rows (e.g. T task lists of K0 concatenated),
            -1 = no candidate.

    Returns:
        Tensor: int64 [B, M], each distinct row once, ascending, then -1 padding at the end.

    Example::

        >>> merge_candidates(torch.tensor([[5, 3, -1, 3, 5, 7]])).tolist()
        [[3, 5, 7, -1, -1, -1]]
    """
    if rows.dim() != 2:
        raise ValueError(f"merge_candidates expects rows [B, M], got {list(rows.shape)}")
    s = rows.sort(dim=1).values
    # equal to its left neighbour (roll, not slicing, keeps M symbolic under torch.export)
    first = torch.arange(s.shape[1], device=s.device) == 0
    repeat = (s == s.roll(1, dims=1)) & ~first
    keep = (s >= 0) & ~repeat
    out = s.masked_fill(~keep, _DROPPED).sort(dim=1).values
    return out.masked_fill(out == _DROPPED, -1)


def merge_ranked(rows: Tensor, width: int) -> Tensor:
    """Union of T ranked candidate lists, each row once at its best rank, cut to a fixed width.

    The lists are read rank by rank (rank 0 of every list, then rank 1, ...; list order breaks
    ties), a row appearing again later is dropped, and the first ``width`` distinct rows are kept:
    when the lists hold more distinct rows than ``width``, those dropped are the ones every list
    ranks lowest. Sort-based, fixed shapes, no host syncs.

    Args:
        rows (Tensor): int64 [B, T, K] T candidate lists, best first, -1 = no candidate (T * K < 2**20).
        width (int): M, the width of the merged list (<= T * K).

    Returns:
        Tensor: int64 [B, M], distinct rows in order of best rank, then -1 padding.

    Example::

        >>> merge_ranked(torch.tensor([[[5, 3, 9], [3, 7, -1]]]), 4).tolist()
        [[5, 3, 7, 9]]
        >>> merge_ranked(torch.tensor([[[5, 3, 9], [3, 7, -1]]]), 2).tolist()
        [[5, 3]]
    """
    if rows.dim() != 3:
        raise ValueError(f"merge_ranked expects rows [B, T, K], got {list(rows.shape)}")
    B = rows.shape[0]
    by_rank = rows.transpose(1, 2).reshape(B, -1)  # [B, K * T]: rank 0 of every list first
    pos = torch.arange(by_rank.shape[1], device=rows.device)
    key = torch.where(by_rank >= 0, by_rank, _DROPPED >> 20) << 20 | pos  # by row, then by position
    s = key.sort(dim=1).values
    row, first_pos = s >> 20, s & ((1 << 20) - 1)
    first = pos == 0
    repeat = (row == row.roll(1, dims=1)) & ~first  # a later position of the same row
    keep = (row < (_DROPPED >> 20)) & ~repeat
    order = torch.where(keep, first_pos, _DROPPED).sort(dim=1).values[:, :width]  # best ranks first
    return torch.where(order < _DROPPED, by_rank.gather(1, order.clamp(max=by_rank.shape[1] - 1)), -1)


def best_by_score(scores: Tensor, ids: Tensor, k: int) -> Tensor:
    """Positions of the ``k`` best candidates along the last dimension, under the tie rule of
    every search here: higher score first, equal scores (-0.0 == +0.0) by lower id, padding
    (id -1) last.

    One ``topk`` over an int64 key: the float's bits mapped to a signed-monotone int32 in the
    high word, ``2**32 - 1 - id`` in the low word (ids < 2**32).

    Args:
        scores (Tensor): float32 ``[..., M]`` (not NaN).
        ids (Tensor): int64 ``[..., M]`` candidate ids, -1 = padding.
        k (int): K <= M.

    Returns:
        Tensor: int64 ``[..., K]`` positions into the last dimension, best first.

    Example::

        >>> best_by_score(torch.tensor([[1.0, 2.0, 2.0, float("-inf")]]), torch.tensor([[4, 9, 7, -1]]), 3).tolist()
        [[2, 1, 0]]
    """
    s = scores + 0.0  # -0.0 -> +0.0, so both zeros tie
    bits = s.view(torch.int32)
    fkey = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    low = 0xFFFFFFFF - torch.where(ids >= 0, ids, 0xFFFFFFFF)
    return torch.topk((fkey.to(torch.int64) << 32) | low, k, dim=-1).indices
