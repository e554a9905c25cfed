"""The exact attribute table: which item rows hold which terms, with exact filter evaluation.

One structure, the inverted index (rows in index order): ``posting_offsets`` / ``posting_rows``,
term -> ascending rows holding it (int32 rows: 4 bytes per listed holder, so at most 2^31 - 1
rows). ``bloom_search`` reads it to evaluate ``NOT term`` exactly,
:meth:`matches` evaluates whole filters exactly from it, and :meth:`held` answers "does row r
hold term t" for a candidate list by a fixed-length binary search in t's list (fixed shapes, no
host sync), which :meth:`forward` (the *exact check*) feeds to the ``exact_filter`` op, so it
runs inside the exported serving graph on the final results: served results have zero false
positives. (A second, row -> terms view padded to the widest row cost 8 bytes per slot per item,
72 bytes per item for nine slots; the binary search reads the lists the filter needs anyway.)

Terms whose membership the Bloom index answers exactly from a bitmap row (frequent terms) need
no list: ``indexed`` names the terms that have one; the others' lists are empty, and their
membership comes from the caller (``BloomIndex``). ``term_counts`` keeps every term's exact
count either way.

Example::

    >>> import numpy as np, torch
    >>> from silverrec.retrieval.attribute_table import AttributeTable
    >>> table = AttributeTable(np.array([0, 1, 3]), np.array([0, 0, 1]), num_terms=2)
    >>> table.posting_rows.tolist(), table.posting_offsets.tolist()
    ([0, 1, 1], [0, 2, 3])
"""
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

import silverrec.ops  # noqa: F401  (registers torch.ops.silverrec.exact_filter)

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



class AttributeTable(nn.Module):
    """Exact term sets of N item rows over T terms, as posting lists.

    Args:
        offsets (np.ndarray): int64 ``[N+1]`` CSR offsets; row i holds ``term_ids[offsets[i]:offsets[i+1]]``.
        term_ids (np.ndarray): int64 ``[nnz]`` term ids in ``[0, T)``, ascending and unique per row.
        num_terms (int): T.
        width (Optional[int]): the most terms a row may hold (None: the most terms of a row, at
            least 1); items added later (fresh rows) are padded to it.
        indexed (Optional[np.ndarray]): bool ``[T]``, the terms that get a posting list (None:
            all). The others' membership must come from elsewhere (:meth:`held` reports them as
            not held; :meth:`matches_program` asks ``rows_of``).
    """

    def __init__(self, offsets: np.ndarray, term_ids: np.ndarray, num_terms: int, width: Optional[int] = None,
                 indexed: Optional[np.ndarray] = None) -> None:
        super().__init__()
        offsets = np.asarray(offsets, dtype=np.int64)
        term_ids = np.asarray(term_ids, dtype=np.int64)
        if offsets.ndim != 1 or offsets.size < 2 or offsets[0] != 0 or offsets[-1] != term_ids.size:
            raise ValueError(f"offsets must be [N+1] from 0 to nnz={term_ids.size}, got shape {offsets.shape}")
        if np.any(np.diff(offsets) < 0):
            raise ValueError("offsets must be nondecreasing")
        if term_ids.size and (term_ids.min() < 0 or term_ids.max() >= num_terms):
            raise ValueError(f"term_ids must lie in [0, {num_terms}), got [{term_ids.min()}, {term_ids.max()}]")
        if indexed is not None and np.asarray(indexed).shape != (num_terms,):
            raise ValueError(f"indexed must be bool [T={num_terms}], got shape {np.asarray(indexed).shape}")
        self.num_items = offsets.size - 1
        if self.num_items >= 2**31:
            raise ValueError(f"{self.num_items} items: posting rows are int32, at most 2^31 - 1 rows per index")
        self.num_terms = num_terms
        counts = np.diff(offsets)
        most = int(counts.max(initial=0))
        self.width = max(1, most) if width is None else int(width)
        if most > self.width:
            raise ValueError(f"an item has {most} filterable terms, more than the table's width {self.width}")
        rows = np.repeat(np.arange(self.num_items, dtype=np.int64), counts)
        keys = rows * max(num_terms, 1) + term_ids
        if np.any(np.diff(keys) <= 0):
            raise ValueError("term_ids must be ascending and unique within each row")
        self.indexed = np.ones(num_terms, dtype=bool) if indexed is None else np.asarray(indexed, dtype=bool)
        term_counts = np.bincount(term_ids, minlength=num_terms)
        keep = self.indexed[term_ids]
        order = np.argsort(term_ids[keep], kind="stable")  # by term, then row
        listed = np.where(self.indexed, term_counts, 0)
        posting_offsets = np.concatenate([[0], np.cumsum(listed)]).astype(np.int64)
        self.register_buffer("posting_offsets", torch.from_numpy(posting_offsets))
        # int32 rows (4 bytes per listed holder): the ops take int32 posting rows
        self.register_buffer("posting_rows", torch.from_numpy(rows[keep][order].astype(np.int32)))
        self.register_buffer("term_counts", torch.from_numpy(term_counts.astype(np.int64)))

    def postings(self, term: int) -> np.ndarray:
        """Ascending rows holding ``term``: int32 ``[count]`` (empty for a term without a list)."""
        off = self.posting_offsets
        return self.posting_rows[int(off[term]) : int(off[term + 1])].numpy()

    def matches_program(self, program: List[Tuple[int, int]],
                        rows_of: Optional[Callable[[int], np.ndarray]] = None) -> np.ndarray:
        """Exact evaluation of one postfix program over all rows: bool ``[N]``. ``rows_of(term)``
        gives the bool ``[N]`` membership of a term without a posting list."""
        stack: List[np.ndarray] = []
        for op, term in program:
            if op in (BLOOM_TERM, BLOOM_NOT_TERM, BLOOM_NOT_ROWS):  # NOT_ROWS: NOT of a term (exact row)
                if 0 <= term < self.num_terms and not self.indexed[term]:
                    if rows_of is None:
                        raise ValueError(f"term {term} has no posting list here; pass rows_of")
                    member = np.asarray(rows_of(term), dtype=bool)
                else:
                    member = np.zeros(self.num_items, dtype=bool)
                    member[self.postings(term)] = True
                stack.append(member if op == BLOOM_TERM else ~member)
            elif op in (BLOOM_AND, BLOOM_OR):
                y, x = stack.pop(), stack.pop()
                stack.append(x & y if op == BLOOM_AND else x | y)
            elif op in (BLOOM_TRUE, BLOOM_FALSE):
                stack.append(np.full(self.num_items, op == BLOOM_TRUE))
            elif op != BLOOM_NOP:
                raise ValueError(f"unknown opcode {op} in filter program")
        if len(stack) != 1:
            raise ValueError(f"filter program leaves {len(stack)} values on the stack, expected 1")
        return stack[0]

    def held(self, rows: Tensor, terms: Tensor) -> Tensor:
        """Whether each candidate row holds each of its plan's terms, by binary search in the
        term's posting list (the ``held_terms`` op; terms without a list, ids outside ``[0, T)``
        and rows outside ``[0, N)`` are not held).

        Args:
            rows (Tensor): int64 ``[B, M]`` candidate rows (-1 padding).
            terms (Tensor): int64 ``[B, L]`` the plans' term ids.

        Returns:
            Tensor: bool ``[B, M, L]``.
        """
        no_rows = self.posting_offsets.new_zeros((0, max(1, (self.num_items + 63) // 64)))  # no exact rows here
        no_exact = self.posting_offsets.new_full((self.num_terms,), -1)
        held = torch.ops.silverrec.held_terms(no_rows, no_exact, self.posting_offsets, self.posting_rows, rows, terms,
                                              self.num_items)
        return held >= 0

    def forward(self, opcodes: Tensor, terms: Tensor, rows: Tensor) -> Tensor:
        """Exact check of candidate rows against B plans (fixed shapes, no host sync); every term
        of the plans must have a posting list.

        Args:
            opcodes (Tensor): int64 ``[B, L]`` plan programs (``FilterPlan.opcodes``).
            terms (Tensor): int64 ``[B, L]`` their term ids (``FilterPlan.terms``).
            rows (Tensor): int64 ``[B, K]`` candidate rows; ``-1`` (padding) and rows outside
                ``[0, N)`` never pass.

        Returns:
            Tensor: bool ``[B, K]``, True where the row exactly satisfies its query's filter.

        Example::

            >>> import numpy as np, torch
            >>> from silverrec.ops.reference import BLOOM_TERM, BLOOM_NOT_TERM
            >>> table = AttributeTable(np.array([0, 1, 3]), np.array([0, 0, 1]), num_terms=2)
            >>> table(torch.tensor([[BLOOM_NOT_TERM]]), torch.tensor([[1]]), torch.tensor([[0, 1, -1]]))
            tensor([[ True, False, False]])
        """
        valid = (rows >= 0) & (rows < self.num_items)
        held = torch.where(self.held(rows, terms), terms.unsqueeze(1), -1)  # [B, K, L]
        return torch.ops.silverrec.exact_filter(opcodes, terms, held) & valid


def padded_row_terms(offsets: np.ndarray, term_ids: np.ndarray, width: Optional[int] = None) -> np.ndarray:
    """CSR term sets -> int64 ``[N, width]`` term ids per row, padded with -1.

    Raises:
        ValueError: a row with more than ``width`` terms.
    """
    counts = np.diff(offsets)
    most = int(counts.max(initial=0))
    width = max(1, most) if width is None else width
    if most > width:
        raise ValueError(f"an item has {most} filterable terms, more than the table's width {width}")
    out = np.full((counts.size, width), -1, dtype=np.int64)
    rows = np.repeat(np.arange(counts.size), counts)
    cols = np.arange(term_ids.size) - np.repeat(offsets[:-1], counts)
    out[rows, cols] = term_ids
    return out
