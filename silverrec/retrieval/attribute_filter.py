"""Exact filter evaluation over item attributes with NumPy: the ground truth the served filters
are checked against (``silverrec-eval model=...``, ``benchmarks/serving.py``)."""
from typing import Dict, List, Sequence, Tuple

import numpy as np

from silverrec.retrieval.filter_expr import And, MatchAll, Node, Not, Or, Term, parse


class AttributeFilter:
    """Exact filter evaluation with NumPy over per-term item columns (rows in item-row order).

    Args:
        item_terms (Sequence[Dict[str, List[str]]]): per item row, ``{feature: [values]}``
            (``RecDataset.item_terms()``).

    Example::

        >>> f = AttributeFilter([{"lang": ["en"]}, {"lang": ["de"]}])
        >>> f("NOT lang:de", np.arange(2)).tolist()
        [True, False]
    """

    def __init__(self, item_terms: Sequence[Dict[str, List[str]]]) -> None:
        self.num_items = len(item_terms)
        self.columns: Dict[Tuple[str, str], np.ndarray] = {}
        for row, terms in enumerate(item_terms):
            for feature, values in terms.items():
                for v in values:
                    col = self.columns.get((feature, str(v)))
                    if col is None:
                        col = self.columns[(feature, str(v))] = np.zeros(self.num_items, dtype=bool)
                    col[row] = True
        self.features = {f for f, _ in self.columns}
        self._parsed: Dict[str, Node] = {}

    def __call__(self, expression: str, rows: np.ndarray) -> np.ndarray:
        """bool [len(rows)]: which item rows satisfy ``expression``."""
        node = self._parsed.get(expression)
        if node is None:
            node = self._parsed[expression] = parse(expression)
        return self._eval(node, rows)

    def _eval(self, node: Node, rows: np.ndarray) -> np.ndarray:
        if isinstance(node, MatchAll):
            return np.ones(len(rows), dtype=bool)
        if isinstance(node, Term):
            if node.feature not in self.features:
                raise ValueError(f"unknown filter feature {node.feature!r}")
            col = self.columns.get((node.feature, node.value))
            return np.zeros(len(rows), dtype=bool) if col is None else col[rows]
        if isinstance(node, Not):
            return ~self._eval(node.child, rows)
        parts = [self._eval(c, rows) for c in node.children]
        if isinstance(node, And):
            return np.logical_and.reduce(parts) if parts else np.ones(len(rows), dtype=bool)
        if isinstance(node, Or):
            return np.logical_or.reduce(parts) if parts else np.zeros(len(rows), dtype=bool)
        raise TypeError(f"unexpected filter node {node!r}")
