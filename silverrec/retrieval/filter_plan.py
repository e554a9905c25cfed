"""Filter plans: a batch of filter expressions compiled to padded tensors for ``bloom_search``.

Each expression is parsed (:mod:`filter_expr`), put in negation normal form (``NOT`` only on
terms, by De Morgan) and emitted as a postfix program over the ``BLOOM_*`` opcodes of
:mod:`silverrec.ops.reference`:

* ``feature:value`` -> ``TERM`` (Bloom test: the term's H hash positions; exact for a
  frequent term, whose H positions all name its exact row), or ``FALSE`` if the value was
  never seen in the item table (a term that matches nothing);
* ``NOT feature:value`` -> ``NOT_TERM`` (exact, from the term's posting list), or, for a
  frequent term that has an exact bitmap row in the index, ``NOT_ROWS`` on that row (exact,
  one row read); ``TRUE`` for a value never seen;
* ``A AND B`` / ``A OR B`` -> ``A B AND`` / ``A B OR``; the blank filter -> ``TRUE``.

Because the Bloom test only adds false positives and ``NOT`` is exact, the mask of a plan is a
superset of the exact matches: it never drops an item that satisfies the filter.

Example::

    >>> from silverrec.retrieval.term_dictionary import TermDictionary
    >>> from silverrec.retrieval.filter_plan import compile_plans
    >>> d, _, _ = TermDictionary.from_item_terms([{"lang": ["en"]}, {"lang": ["de"]}])
    >>> plan = compile_plans(["lang:en AND NOT lang:de", "lang:fr"], d, d.hash_positions(2, 16))
    >>> plan.opcodes.tolist(), plan.terms.tolist()
    ([[1, 2, 3], [5, 0, 0]], [[0, 1, -1], [-1, -1, -1]])
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from silverrec.ops.reference import (
    BLOOM_AND,
    BLOOM_FALSE,
    BLOOM_NOP,
    BLOOM_NOT_ROWS,
    BLOOM_NOT_TERM,
    BLOOM_OR,
    BLOOM_TERM,
    BLOOM_TRUE,
)
from silverrec.retrieval.filter_expr import And, FilterError, MatchAll, Node, Not, Or, Term, parse, to_nnf
from silverrec.retrieval.term_dictionary import TermDictionary


class FilterPlan(NamedTuple):
    """Plan tensors of B filters (L = longest program, H = hashes per term).

    Args:
        opcodes (Tensor): int64 ``[B, L]`` postfix programs padded with ``BLOOM_NOP``.
        terms (Tensor): int64 ``[B, L]`` term ids of ``TERM``/``NOT_TERM``/``NOT_ROWS``, else -1.
        hashes (Tensor): int64 ``[B, L, H]`` bit rows of ``TERM``/``NOT_ROWS`` instructions, else 0.
    """

    opcodes: Tensor
    terms: Tensor
    hashes: Tensor


def _emit(node: Node, d: TermDictionary, text: str, dense: Optional[np.ndarray], out: List[Tuple[int, int]]) -> None:
    """Appends the postfix program of an NNF node to ``out`` as ``(opcode, term id)`` pairs."""
    if isinstance(node, MatchAll):
        out.append((BLOOM_TRUE, -1))
    elif isinstance(node, (Term, Not)):
        term = node if isinstance(node, Term) else node.child
        assert isinstance(term, Term)
        try:
            tid = d.term_id(term.feature, term.value)
        except FilterError as err:
            raise FilterError(f"{err} (at column {term.column} in filter {text!r})") from None
        if isinstance(node, Term):
            out.append((BLOOM_TERM, tid) if tid >= 0 else (BLOOM_FALSE, -1))
        elif tid < 0:
            out.append((BLOOM_TRUE, -1))
        else:
            out.append((BLOOM_NOT_ROWS if dense is not None and dense[tid] else BLOOM_NOT_TERM, tid))
    else:
        assert isinstance(node, (And, Or))
        op = BLOOM_AND if isinstance(node, And) else BLOOM_OR
        if not node.children:  # empty AND is TRUE, empty OR is FALSE
            out.append((BLOOM_TRUE if op == BLOOM_AND else BLOOM_FALSE, -1))
        for i, child in enumerate(node.children):
            _emit(child, d, text, dense, out)
            if i > 0:
                out.append((op, -1))


def compile_program(expression: str, dictionary: TermDictionary, dense: Optional[np.ndarray] = None
                    ) -> List[Tuple[int, int]]:
    """Parses one expression and returns its postfix program as ``(opcode, term id)`` pairs.

    ``dense`` (bool ``[T]``) marks the terms with an exact bitmap row (their ``NOT`` becomes
    ``NOT_ROWS``).

    Raises:
        FilterSyntaxError: malformed expression (with column).
        FilterError: a feature the index does not know (named, with column).
    """
    out: List[Tuple[int, int]] = []
    _emit(to_nnf(parse(expression)), dictionary, expression, dense, out)
    return out


def compile_plans(expressions: Sequence[str], dictionary: TermDictionary, term_hashes: np.ndarray,
                  dense: Optional[np.ndarray] = None, length: Optional[int] = None) -> FilterPlan:
    """Compiles a batch of B filter expressions (one per query) into padded plan tensors.

    Args:
        expressions (Sequence[str]): B filters; ``""`` means no filter (every item matches).
        dictionary (TermDictionary): the index's terms.
        term_hashes (np.ndarray): int64 ``[T, H]`` rows of ``bits`` of every term (its Bloom
            positions, or H times its exact row).
        dense (Optional[np.ndarray]): bool ``[T]``, terms with an exact row (None: none).
        length (Optional[int]): pad every program to this L (e.g. the L an exported serving
            module was traced with); None: the longest program of the batch.

    Returns:
        FilterPlan: ``opcodes [B, L]``, ``terms [B, L]``, ``hashes [B, L, H]``.

    Raises:
        FilterError: a program longer than ``length`` (the filter is too long).
    """
    if isinstance(expressions, str):
        raise TypeError("compile_plans takes a sequence of expressions (one per query), not a single str")
    programs = [compile_program(e, dictionary, dense) for e in expressions]
    B, H = len(programs), term_hashes.shape[1]
    longest = max([len(p) for p in programs] + [1])
    if length is not None and longest > length:
        b = max(range(B), key=lambda i: len(programs[i]))
        raise FilterError(f"filter {expressions[b]!r} compiles to {longest} instructions, more than length={length}")
    L = longest if length is None else length
    opcodes = np.full((B, L), BLOOM_NOP, dtype=np.int64)
    terms = np.full((B, L), -1, dtype=np.int64)
    for b, prog in enumerate(programs):
        if prog:
            opcodes[b, : len(prog)], terms[b, : len(prog)] = zip(*prog)
    hashes = np.zeros((B, L, H), dtype=np.int64)
    is_term = (opcodes == BLOOM_TERM) | (opcodes == BLOOM_NOT_ROWS)
    hashes[is_term] = term_hashes[terms[is_term]]
    return FilterPlan(torch.from_numpy(opcodes), torch.from_numpy(terms), torch.from_numpy(hashes))
