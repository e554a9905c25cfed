"""How concentrated recommendations are: catalogue coverage and the Gini index of item exposure.

For U top-K lists over a catalogue of N items, an item's *exposure* is the number of lists it
appears in. ``coverage`` is the fraction of the catalogue that appears at least once; ``gini`` is
the Gini index of the N exposure counts (0: every item shown equally often; near 1: a few items
take every slot). Most-popular ranking sits near the top of both scales' bad ends (low coverage,
Gini near 1); a personalised model should spread further.
"""
from typing import Dict

import numpy as np


def exposure_counts(top: np.ndarray, num_items: int) -> np.ndarray:
    """int64 ``[N]``: in how many of the lists ``top`` (int64 ``[U, K]`` item rows, -1 padding)
    each item appears.

    Example::

        >>> exposure_counts(np.array([[0, 2], [2, -1]]), 4).tolist()
        [1, 0, 2, 0]
    """
    rows = top[top >= 0]
    if rows.size and int(rows.max()) >= num_items:
        raise ValueError(f"exposure_counts: item row {int(rows.max())} >= num_items={num_items}")
    return np.bincount(rows.astype(np.int64), minlength=num_items)


def gini(counts: np.ndarray) -> float:
    """The Gini index of non-negative ``counts`` [N] (0 when all are equal or all zero).

    ``G = sum_i (2 i - N - 1) c_(i) / (N sum c)`` over the counts sorted ascending (i = 1..N).

    Example::

        >>> gini(np.array([1, 1, 1, 1])), gini(np.array([0, 0, 0, 4]))
        (0.0, 0.75)
    """
    c = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = c.size, float(c.sum())
    if n == 0 or total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * c).sum() / (n * total))


def exposure_summary(top: np.ndarray, num_items: int) -> Dict[str, float]:
    """``{"coverage": .., "gini": .., "distinct_items": ..}`` of the lists ``top`` [U, K]."""
    counts = exposure_counts(top, num_items)
    return {"coverage": float((counts > 0).mean()), "gini": gini(counts), "distinct_items": int((counts > 0).sum())}
