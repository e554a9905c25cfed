"""Hypothesis strategies for filter tests: random item tables and random filter expressions.

Expressions are generated as an AST with its text, and evaluated by an independent oracle
(:func:`oracle`) straight from the item dictionaries.
"""
from typing import Dict, List, Sequence, Tuple

from hypothesis import strategies as st

FEATURES = ("lang", "category", "tags", "creator")
VALUES = {
    "lang": ("en", "de", "fr"),
    "category": ("music", "pop", "hip hop", "sci-fi/fantasy"),
    "tags": tuple(f"t{i}" for i in range(12)),
    "creator": tuple(str(i) for i in range(100, 110)),
}
Expr = Tuple  # ("term", feature, value) | ("not", e) | ("and", e1, e2) | ("or", e1, e2) | ("in", feature, values)


@st.composite
def item_tables(draw: st.DrawFn, max_items: int = 120) -> List[Dict[str, List[str]]]:
    """Random ``item_terms``: 0-3 values per feature (``creator`` values as ints, like ids)."""
    n = draw(st.integers(1, max_items))
    items = []
    for _ in range(n):
        item: Dict[str, List[object]] = {}
        for f in FEATURES:
            if draw(st.booleans()):
                vals = draw(st.lists(st.sampled_from(VALUES[f]), max_size=3))
                item[f] = [int(v) for v in vals] if f == "creator" else vals
        items.append(item)
    return items


def _value_text(draw: st.DrawFn, value: str) -> str:
    if " " in value or draw(st.booleans()) and draw(st.booleans()):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


@st.composite
def expressions(draw: st.DrawFn, depth: int = 3) -> Tuple[Expr, str]:
    """A random expression (AST, text); values include ones no item holds (``zz``)."""
    kind = draw(st.sampled_from(["term", "term", "in", "not", "and", "or"] if depth > 0 else ["term", "in"]))
    if kind in ("term", "in"):
        feature = draw(st.sampled_from(FEATURES))
        pool = VALUES[feature] + ("zz",)
        name = feature if draw(st.integers(0, 4)) else str(FEATURES.index(feature))  # numeric feature ids too
        if kind == "term":
            value = draw(st.sampled_from(pool))
            return ("term", feature, value), f"{name}:{_value_text(draw, value)}"
        values = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
        keyword = draw(st.sampled_from(["IN", "in"]))
        return ("in", feature, tuple(values)), f"{name} {keyword} (" + ", ".join(_value_text(draw, v) for v in values) + ")"
    if kind == "not":
        e, text = draw(expressions(depth - 1))
        return ("not", e), f"NOT ({text})" if draw(st.booleans()) else f"not ({text})"
    (a, ta), (b, tb) = draw(expressions(depth - 1)), draw(expressions(depth - 1))
    return (kind, a, b), f"({ta}) {kind.upper() if draw(st.booleans()) else kind} ({tb})"


def oracle(expr: Expr, item: Dict[str, Sequence[object]]) -> bool:
    """Exact truth of ``expr`` for one item (values compared as strings)."""
    kind = expr[0]
    if kind == "term":
        return expr[2] in {str(v) for v in item.get(expr[1], [])}
    if kind == "in":
        return any(oracle(("term", expr[1], v), item) for v in expr[2])
    if kind == "not":
        return not oracle(expr[1], item)
    a, b = oracle(expr[1], item), oracle(expr[2], item)
    return a and b if kind == "and" else a or b
