"""Merging the candidate lists of several tasks into one de-duplicated list per query."""
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
