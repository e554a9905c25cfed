"""The result type of every ``search``: FAISS-style (scores, ids), best-first, padded with -inf / -1."""
from typing import NamedTuple

from torch import Tensor


class SearchResult(NamedTuple):
    """Top-K results; unpacks as ``scores, ids = index.search(...)``.

    Args:
        scores (Tensor): float32 ``[B, K]`` similarities, best-first, ``-inf`` where fewer than K.
        ids (Tensor): int64 ``[B, K]`` item ids, ``-1`` where fewer than K.
    """

    scores: Tensor
    ids: Tensor
