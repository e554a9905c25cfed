"""Prints a list of rows as a Markdown table (shared by the benchmark scripts).

The benchmarks are scripts, run from the repository root as the Makefile does
(``.venv/bin/python benchmarks/multitask_headroom.py``). Python puts the running script's own
folder first on ``sys.path``, so a script here imports this module as ``from markdown_table
import print_table``, wherever it is started from, without importing another script.
"""
from typing import List, Sequence


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Prints ``rows`` as a Markdown table: the first row is the header, the first column is
    left-aligned and the others right-aligned (numbers).

    Args:
        rows (Sequence[Sequence[str]]): the header row, then the data rows, all of one length.

    Example::

        >>> print_table([["method", "recall"], ["dot", "0.5505"]])
        | method | recall |
        |--------|--------|
        | dot    | 0.5505 |
    """
    if not rows or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError(f"print_table needs rows of one length, got lengths {[len(r) for r in rows]}")
    widths: List[int] = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |")
        if j == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
