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

Values are matched exactly, as strings: a value that differs from a published one only in case
(``language:EN`` against ``en``) is a different value; like any value the item table never held,
it compiles to ``FALSE`` (its ``NOT`` to ``TRUE``), not to an error. An unknown *feature* is an
error.

Values first seen after publish (*fresh values*, :mod:`silverrec.retrieval.fresh_terms`) compile
when a :class:`~silverrec.retrieval.fresh_terms.FreshTermsView` is given: to ``TERM`` (their H
positions in the bit rows the export reserves, zero in the main index) and ``NOT_TERM`` (their
posting list: empty in the main index, exact in the fresh index) on their slot id, so they are
exact like any other value. Every value a live item holds is a dictionary term or a fresh value,
so one that is neither is held by no item, and ``FALSE`` / ``TRUE`` is its exact meaning.

A parsed filter of t terms compiles to exactly ``2 t - 1`` instructions (t terms and t - 1 binary
``AND``/``OR``; ``NOT`` is folded into the terms), so a program limit of ``length`` instructions is
a limit of ``(length + 1) // 2`` terms, which the parser checks while lexing: a filter far over
the limit is refused after reading its first terms, not after parsing all of it.

Example::

    >>> from silverrec.retrieval.term_dictionary import TermDictionary
    >>> from silverrec.retrieval.filter_plan import compile_plans
    >>> d, _, _ = TermDictionary.from_item_terms([{"lang": ["en"]}, {"lang": ["de"]}])
    >>> plan = compile_plans(["lang:en AND NOT lang:de", "lang:fr"], d, d.hash_positions(2, 16))
    >>> plan.opcodes.tolist(), plan.terms.tolist()
    ([[1, 2, 3], [5, 0, 0]], [[0, 1, -1], [-1, -1, -1]])
"""
from typing import Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

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
from silverrec.retrieval.filter_expr import (
    And, FilterError, FilterLimitError, MatchAll, Node, Not, Or, Term, excerpt, parse, to_nnf,
)
from silverrec.retrieval.fresh_terms import FreshTermsView, Pair
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


class _Terms(NamedTuple):
    """How ``_emit`` resolves terms: the dictionary, its exact-row terms, the fresh values, and where
    to record the values that resolve to nothing."""

    dictionary: TermDictionary
    dense: Optional[np.ndarray]
    fresh: Optional[FreshTermsView]
    unknown: Optional[Set[Pair]]

    def term_id(self, term: Term, text: str) -> int:
        d = self.dictionary
        try:
            tid = d.term_id(term.feature, term.value)
        except FilterError as err:
            raise FilterError(f"{err} (at column {term.column} in filter {excerpt(text, term.column)})") from None
        if tid < 0:
            pair = (d.feature_name(term.feature), str(term.value))
            tid = -1 if self.fresh is None else self.fresh.term_id(*pair)
            if tid < 0 and self.unknown is not None:
                self.unknown.add(pair)
        return tid

    def has_row(self, tid: int) -> bool:
        return self.dense is not None and tid < len(self.dense) and bool(self.dense[tid])


def _emit(node: Node, d: _Terms, text: str, out: List[Tuple[int, int]]) -> None:
    """Appends the postfix program of an NNF node to ``out`` as ``(opcode, term id)`` pairs."""
    if isinstance(node, MatchAll):
        out.append((BLOOM_TRUE, -1))
    elif isinstance(node, (Term, Not)):
        term = node if isinstance(node, Term) else node.child
        assert isinstance(term, Term)
        tid = d.term_id(term, text)
        if isinstance(node, Term):
            out.append((BLOOM_TERM, tid) if tid >= 0 else (BLOOM_FALSE, -1))
        elif tid < 0:
            out.append((BLOOM_TRUE, -1))
        else:
            out.append((BLOOM_NOT_ROWS if d.has_row(tid) else BLOOM_NOT_TERM, tid))
    else:
        assert isinstance(node, (And, Or))
        op = BLOOM_AND if isinstance(node, And) else BLOOM_OR
        if not node.children:  # empty AND is TRUE, empty OR is FALSE
            out.append((BLOOM_TRUE if op == BLOOM_AND else BLOOM_FALSE, -1))
        for i, child in enumerate(node.children):
            _emit(child, d, text, out)
            if i > 0:
                out.append((op, -1))


def max_terms_for(length: int) -> int:
    """Most terms a filter may have to compile to at most ``length`` instructions (``2 t - 1 <= length``)."""
    return (length + 1) // 2


def compile_program(expression: str, dictionary: TermDictionary, dense: Optional[np.ndarray] = None,
                    length: Optional[int] = None, max_chars: Optional[int] = None,
                    fresh: Optional[FreshTermsView] = None, unknown: Optional[Set[Pair]] = None) -> List[Tuple[int, int]]:
    """Parses one expression and returns its postfix program as ``(opcode, term id)`` pairs.

    Args:
        expression (str): the filter.
        dictionary (TermDictionary): the index's terms.
        dense (Optional[np.ndarray]): bool ``[T]``, the terms with an exact bitmap row (their
            ``NOT`` becomes ``NOT_ROWS``).
        length (Optional[int]): most instructions; checked while lexing, as a term count
            (:func:`max_terms_for`). None: no limit.
        max_chars (Optional[int]): most characters, checked before lexing. None: no limit.
        fresh (Optional[FreshTermsView]): the values first seen after publish and their slot ids
            (None: none).
        unknown (Optional[Set[Tuple[str, str]]]): if given, receives the ``(feature, value)``
            terms that resolved to nothing (compiled to ``FALSE`` / ``TRUE``).

    Returns:
        List[Tuple[int, int]]: the program, ``2 t - 1`` pairs for a filter of t terms (one
        ``TRUE`` for the blank filter).

    Raises:
        FilterSyntaxError: malformed expression (with column), or nested too deep.
        FilterLimitError: over ``length`` or ``max_chars`` (the limit named).
        FilterError: a feature the index does not know (named, with column).
    """
    max_terms = None if length is None else max_terms_for(length)
    limit = f" for programs of at most {length} instructions (filter_length; t terms compile to 2t - 1 instructions)"
    out: List[Tuple[int, int]] = []
    _emit(to_nnf(parse(expression, max_terms=max_terms, max_chars=max_chars, limit_name=limit)),
          _Terms(dictionary, dense, fresh, unknown), expression, out)
    return out


def compile_plans(expressions: Sequence[str], dictionary: TermDictionary, term_hashes: np.ndarray,
                  dense: Optional[np.ndarray] = None, length: Optional[int] = None,
                  max_chars: Optional[int] = None, fresh: Optional[FreshTermsView] = None,
                  unknown: Optional[Set[Pair]] = None) -> FilterPlan:
    """Compiles a batch of B filter expressions (one per query) into padded plan tensors.

    Args:
        expressions (Sequence[str]): B filters; ``""`` means no filter (every item matches).
        dictionary (TermDictionary): the index's terms.
        term_hashes (np.ndarray): int64 ``[T, H]`` rows of ``bits`` of every term (its Bloom
            positions, or H times its exact row).
        dense (Optional[np.ndarray]): bool ``[T]``, terms with an exact row (None: none).
        length (Optional[int]): pad every program to this L (e.g. the L an exported serving
            module was traced with), and refuse longer ones while lexing; None: the longest
            program of the batch.
        max_chars (Optional[int]): most characters of one filter (None: no limit).
        fresh (Optional[FreshTermsView]): values first seen after publish, with their slot ids
            (``>= T``) and bit rows (None: none).
        unknown (Optional[Set[Tuple[str, str]]]): if given, receives the terms of the batch that
            resolved to nothing (see :meth:`~silverrec.retrieval.fresh_terms.FreshTermsView.knows_any`).

    Returns:
        FilterPlan: ``opcodes [B, L]``, ``terms [B, L]``, ``hashes [B, L, H]``.

    Raises:
        FilterLimitError: a filter over ``length`` instructions or ``max_chars`` characters.
        FilterError: a malformed filter or an unknown feature.
    """
    if isinstance(expressions, str):
        raise TypeError("compile_plans takes a sequence of expressions (one per query), not a single str")
    # a batch often repeats one filter (one for all users): compile each distinct text once
    cache: Dict[str, List[Tuple[int, int]]] = {}
    programs = []
    for e in expressions:
        if e not in cache:
            cache[e] = compile_program(e, dictionary, dense, length, max_chars, fresh, unknown)
        programs.append(cache[e])
    B, H = len(programs), term_hashes.shape[1]
    longest = max([len(p) for p in programs] + [1])
    if length is not None and longest > length:  # unreachable for parsed filters (2t - 1 <= length); kept as a guard
        b = max(range(B), key=lambda i: len(programs[i]))
        raise FilterLimitError(f"filter {excerpt(expressions[b])} compiles to {longest} instructions, "
                               f"more than length={length}")
    L = longest if length is None else length
    opcodes = np.full((B, L), BLOOM_NOP, dtype=np.int64)
    terms = np.full((B, L), -1, dtype=np.int64)
    for b, prog in enumerate(programs):
        if prog:
            opcodes[b, : len(prog)], terms[b, : len(prog)] = zip(*prog)
    hashes = np.zeros((B, L, H), dtype=np.int64)
    is_term = (opcodes == BLOOM_TERM) | (opcodes == BLOOM_NOT_ROWS)
    ids = terms[is_term]
    known = ids < term_hashes.shape[0]
    rows = np.zeros((ids.size, H), dtype=np.int64)
    rows[known] = term_hashes[ids[known]]
    if not known.all():  # fresh values (slot ids >= T): their rows among the reserved ones
        assert fresh is not None
        rows[~known] = fresh.hash_rows(ids[~known])
    hashes[is_term] = rows
    return FilterPlan(torch.from_numpy(opcodes), torch.from_numpy(terms), torch.from_numpy(hashes))
