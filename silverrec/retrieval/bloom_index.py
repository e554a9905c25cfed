"""``BloomIndex``: the attribute filter of the serving graph (bit-sliced Bloom index + exact table).

Every item row gets an M-bit Bloom signature: each of its terms sets H bit positions. The
signatures are stored *bit-sliced*: ``bits[p, w]`` holds bit ``p`` of rows ``64 w .. 64 w + 63``
(bit ``r % 64`` is row ``r``), so a contiguous row range (an IVF cluster) is a contiguous word
range of every bit row, and a term test reads only its H rows. ``M = ceil(max terms per item *
bits_multiplier)``.

Frequent terms (held by at least ``dense_fraction`` of the items, e.g. ``lang:en``) get an
exact bitmap row after the M signature rows instead of signature bits: their tests are exact
and read one row, and ``NOT`` of them reads that row instead of a long posting list. Rarer
terms keep the Bloom bits; their ``NOT`` is evaluated exactly from their posting lists. A
frequent term needs no posting list (``dense_postings=False``, as ``publish`` builds it): its
exact row answers its membership for the filter and for the exact check alike, for 1 bit per
item where a list costs 8 bytes per holder (break-even at 1/64 of the items holding it).

The exact check of candidates (:meth:`held_terms`, :meth:`check`) reads the exact rows for
frequent terms and binary-searches the posting lists for the others; no per-item term table is
stored.

Rows are in index order: ``publish`` passes the IVF cluster order as
``item_order`` and the user-facing methods (:meth:`search`, :meth:`matches`) answer in the
user's item order.

For a served index, ``fresh_terms`` term ids past the dictionary's (with empty posting lists) and
``fresh_bit_rows`` = Z bit-row positions after the exact rows are reserved for filter values first
seen after publish (:mod:`silverrec.retrieval.fresh_terms`): no row of this index holds such a
value, so its ``TERM`` is exactly empty here and its ``NOT_TERM`` exactly full. The Z positions
are rows of the fresh index's bits (``num_bit_rows`` = M + E + Z rows); here they all read one
shared all-zero row, the last of ``bits`` (:meth:`main_hashes` maps a plan's positions onto it),
so reserving them costs N / 8 bytes however large Z is, not Z N / 8.

A filter value never seen in the item table is a term that matches nothing (``NOT`` of it
matches everything); an unknown feature raises :class:`~silverrec.retrieval.filter_expr.FilterError`.

Example::

    >>> from silverrec.retrieval import BloomIndex
    >>> index = BloomIndex.build([{"lang": ["en"], "tags": ["rock"]}, {"lang": ["de"]}, {"lang": ["en"]}])
    >>> index.search(["lang:en AND NOT tags:rock", "lang IN (de, fr)"]).tolist()
    [[False, False, True], [False, True, False]]
"""
import math
from typing import Dict, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from silverrec.ops import bloom_search
from silverrec.retrieval.attribute_table import AttributeTable
from silverrec.retrieval.filter_plan import FilterPlan, compile_plans, compile_program
from silverrec.retrieval.packed_mask import unpack_mask
from silverrec.retrieval.term_dictionary import ItemTerms, TermDictionary

Filters = Union[Sequence[str], FilterPlan]


class BloomBits(NamedTuple):
    """The bit rows of a :class:`BloomIndex` (E = number of frequent terms with an exact row).

    Args:
        bits (Tensor): int64 ``[M + E (+ 1), W]``: M bit-sliced signature rows, then E exact
            rows, then (when Z > 0) the one all-zero row the Z reserved positions read here.
        term_hashes (Tensor): int64 ``[T, H]`` rows of ``bits`` tested for each term (its H
            signature positions, or H times its exact row).
        num_bits (int): M, the signature width.
        dense (np.ndarray): bool ``[T]``, the terms with an exact row.
        fresh_rows (int): Z, the bit-row positions M + E .. M + E + Z - 1 where fresh values get
            their Bloom positions in a fresh index (all reading the last, zero row of ``bits`` here).
    """

    bits: Tensor
    term_hashes: Tensor
    num_bits: int
    dense: np.ndarray
    fresh_rows: int = 0


class BloomIndex(nn.Module):
    """Bit-sliced Bloom signatures (+ exact rows of frequent terms) of N items and their exact table.

    Use :meth:`build`; the constructor takes built parts.

    Args:
        dictionary (TermDictionary): term ids of the T ``(feature, value)`` terms.
        signatures (BloomBits): the bit rows (index order) and each term's rows.
        table (AttributeTable): exact term sets of the rows (index order).
        item_order (Optional[Tensor]): int64 ``[N]``: row r holds user item ``item_order[r]``
            (None: identity).
    """

    def __init__(self, dictionary: TermDictionary, signatures: BloomBits, table: AttributeTable,
                 item_order: Optional[Tensor] = None) -> None:
        super().__init__()
        bits, term_hashes = signatures.bits, signatures.term_hashes
        if bits.dim() != 2 or 64 * bits.shape[1] < table.num_items:
            raise ValueError(f"bits must be [M, W] with 64 * W >= N={table.num_items}, got {tuple(bits.shape)}")
        if term_hashes.shape[0] != len(dictionary) or signatures.dense.shape != (len(dictionary),):
            raise ValueError(f"term_hashes {tuple(term_hashes.shape)} and dense {signatures.dense.shape} must have "
                             f"one row per term of the dictionary ({len(dictionary)})")
        self.dictionary = dictionary
        self.table = table
        self.num_items = table.num_items
        self.num_bits = signatures.num_bits
        self.dense_terms = signatures.dense
        self.fresh_bit_rows = signatures.fresh_rows  # Z reserved positions, one shared zero row here
        # M + E + Z: the bit-row positions a plan may name (the fresh index's rows)
        self.num_bit_rows = bits.shape[0] - (1 if self.fresh_bit_rows else 0) + self.fresh_bit_rows
        self.fresh_terms = table.num_terms - len(dictionary)  # S reserved term ids T .. T + S - 1
        if self.fresh_terms < 0:
            raise ValueError(f"the attribute table has {table.num_terms} terms, fewer than the dictionary's {len(dictionary)}")
        self.register_buffer("bits", bits)
        self.register_buffer("term_hashes", term_hashes)
        # the exact bit row of each frequent term, -1 for the others (fresh term ids included)
        term_rows = torch.full((table.num_terms,), -1, dtype=torch.int64)
        dense_ids = torch.from_numpy(np.flatnonzero(signatures.dense))
        term_rows[dense_ids] = term_hashes[dense_ids, 0]
        self.register_buffer("term_rows", term_rows)
        self._term_hashes_np = term_hashes.numpy()
        rank = None
        if item_order is not None:
            rank = torch.empty_like(item_order)
            rank[item_order] = torch.arange(item_order.numel())
        self.item_order = item_order
        self._item_rank = rank  # user item -> row
        self.register_buffer("_all_items", torch.tensor([0, self.num_items], dtype=torch.int64), persistent=False)

    @property
    def num_hashes(self) -> int:
        """H, the bit positions per term."""
        return self.term_hashes.shape[1]

    @classmethod
    def build(cls, item_terms: ItemTerms, num_hashes: int = 4, bits_multiplier: float = 12.0,
              item_order: Optional[Sequence[int]] = None, features: Optional[Sequence[str]] = None,
              dense_fraction: float = 1 / 16, row_width: Optional[int] = None, fresh_terms: int = 0,
              fresh_bit_rows: int = 0, dense_postings: bool = True) -> "BloomIndex":
        """Builds the index from the item attribute table (publish time).

        Args:
            item_terms (Sequence[Mapping[str, Sequence]]): per item (user order) ``{feature: [values]}``;
                values compare as strings. ``RecDataset.item_terms()`` produces this list.
            num_hashes (int): H, bit positions per term.
            bits_multiplier (float): signature bits per term of the item with most (Bloom) terms:
                ``M = ceil(max terms per item * bits_multiplier)``.
            item_order (Optional[Sequence[int]]): row order (e.g. IVF cluster order): row r is
                item ``item_order[r]``; a permutation of ``0..N-1``. None keeps the user order.
            features (Optional[Sequence[str]]): filterable feature names in order (a filter may
                name feature ``features[i]`` as ``i``); None: order of first appearance.
            dense_fraction (float): terms held by at least this fraction of the items get an
                exact row instead of signature bits (``W`` words each); > 1 disables.
            row_width (Optional[int]): width of the exact table's per-item term rows (None: the
                most terms of an item; the serving graph uses the schema's upper bound, so that
                items added later fit).
            fresh_terms (int): S, term ids reserved after the dictionary's for values first seen
                after publish (empty posting lists here).
            fresh_bit_rows (int): Z, bit-row positions reserved for their Bloom positions (one shared
                all-zero row here, Z rows in the fresh index).
            dense_postings (bool): keep posting lists for the frequent terms too (False: their
                exact rows answer for them; ``publish`` drops them).

        Returns:
            BloomIndex: the index (N rows, M = ``num_bits``, H = ``num_hashes``).
        """
        order = None
        if item_order is not None:
            order = torch.as_tensor(np.asarray(item_order, dtype=np.int64))
            if order.dim() != 1 or not torch.equal(order.sort().values, torch.arange(len(item_terms))):
                raise ValueError(f"item_order must be a permutation of 0..{len(item_terms) - 1}")
            item_terms = [item_terms[i] for i in order.tolist()]
        dictionary, offsets, term_ids = TermDictionary.from_item_terms(item_terms, features)
        return cls.from_term_sets(dictionary, offsets, term_ids, num_hashes, bits_multiplier, order, dense_fraction, row_width,
                                  fresh_terms, fresh_bit_rows, dense_postings)

    @classmethod
    def from_term_sets(cls, dictionary: TermDictionary, offsets: np.ndarray, term_ids: np.ndarray, num_hashes: int = 4,
                       bits_multiplier: float = 12.0, item_order: Optional[Tensor] = None,
                       dense_fraction: float = 1 / 16, row_width: Optional[int] = None, fresh_terms: int = 0,
                       fresh_bit_rows: int = 0, dense_postings: bool = True) -> "BloomIndex":
        """Builds the index from encoded term sets whose rows are already in index order.

        Args:
            dictionary (TermDictionary): the T terms.
            offsets (np.ndarray): int64 ``[N+1]`` and term_ids (np.ndarray): int64 ``[nnz]``: CSR
                term sets of the rows (as returned by ``TermDictionary.from_item_terms``).
            num_hashes (int), bits_multiplier (float), dense_fraction (float), row_width (Optional[int]),
            fresh_terms (int), fresh_bit_rows (int), dense_postings (bool): as in :meth:`build`.
            item_order (Optional[Tensor]): int64 ``[N]`` user item of each row (None: identity).

        Returns:
            BloomIndex: the index.
        """
        if num_hashes < 1:
            raise ValueError(f"num_hashes must be >= 1, got {num_hashes}")
        if not bits_multiplier > 0:
            raise ValueError(f"bits_multiplier must be > 0, got {bits_multiplier}")
        if not dense_fraction >= 0:
            raise ValueError(f"dense_fraction must be >= 0, got {dense_fraction}")
        if fresh_terms < 0 or fresh_bit_rows < 0 or (fresh_terms > 0 and fresh_bit_rows < 1):
            raise ValueError(f"fresh_terms={fresh_terms} and fresh_bit_rows={fresh_bit_rows} must be >= 0, and "
                             "reserved terms need at least one reserved bit row")
        n = offsets.size - 1
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
        dense = np.bincount(term_ids, minlength=len(dictionary)) >= dense_fraction * n  # [T]
        in_bloom = ~dense[term_ids]  # [nnz]
        bloom_counts = np.bincount(rows[in_bloom], minlength=n)
        num_bits = max(1, math.ceil(int(bloom_counts.max(initial=0)) * bits_multiplier))
        term_hashes = dictionary.hash_positions(num_hashes, num_bits)  # [T, H]
        term_hashes[dense] = (num_bits + np.arange(int(dense.sum())))[:, None]  # exact rows after the M
        words = (n + 63) // 64
        # [M + E (+ 1), 64 W]: the Z reserved positions share one zero row (main_hashes)
        unpacked = np.zeros((num_bits + int(dense.sum()) + min(fresh_bit_rows, 1), 64 * words), dtype=bool)
        unpacked[term_hashes[term_ids[in_bloom]].reshape(-1), np.repeat(rows[in_bloom], num_hashes)] = True
        unpacked[term_hashes[term_ids[~in_bloom], 0], rows[~in_bloom]] = True
        bits = np.packbits(unpacked, axis=1, bitorder="little").view("<i8")  # [M + E, W]
        signatures = BloomBits(torch.from_numpy(np.ascontiguousarray(bits)), torch.from_numpy(term_hashes), num_bits,
                               dense, fresh_bit_rows)
        indexed = None if dense_postings else np.concatenate([~dense, np.ones(fresh_terms, dtype=bool)])
        table = AttributeTable(offsets, term_ids, len(dictionary) + fresh_terms, row_width, indexed)
        return cls(dictionary, signatures, table, item_order)

    def plan(self, expressions: Sequence[str], length: Optional[int] = None) -> FilterPlan:
        """Parses B filter expressions into plan tensors (``opcodes/terms [B, L]``, ``hashes [B, L, H]``).

        ``length`` pads every program to a fixed L (as an exported module expects); None pads
        to the longest program of the batch.
        """
        return compile_plans(expressions, self.dictionary, self._term_hashes_np, self.dense_terms, length)

    def main_hashes(self, hashes: Tensor) -> Tensor:
        """A plan's bit-row positions as rows of this index's ``bits``: the Z reserved positions of
        fresh values (M + E and up) all read the one shared zero row, so their ``TERM`` is exactly
        empty here; a fresh index reads the same plan unmapped (its bits have all M + E + Z rows).

        Args:
            hashes (Tensor): int64 ``[B, L, H]`` positions in ``[0, num_bit_rows)``.

        Returns:
            Tensor: int64 ``[B, L, H]`` positions in ``[0, bits.shape[0])`` (``hashes`` itself
            when no position is reserved).
        """
        if not self.fresh_bit_rows:
            return hashes
        return hashes.clamp(max=self.bits.shape[0] - 1)

    def forward(self, opcodes: Tensor, terms: Tensor, hashes: Tensor, probe: Tensor, cluster_offsets: Tensor) -> Tensor:
        """Packed Bloom masks of B plans over the probed clusters (graph-friendly; calls the op).

        Args:
            opcodes (Tensor): int64 ``[B, L]``; terms (Tensor): int64 ``[B, L]``;
            hashes (Tensor): int64 ``[B, L, H]`` (a :class:`FilterPlan`; reserved positions read
                the shared zero row, :meth:`main_hashes`).
            probe (Tensor): int64 ``[B, P]`` cluster ids (-1 padding).
            cluster_offsets (Tensor): int64 ``[C+1]`` row ranges of the clusters.

        Returns:
            Tensor: int64 ``[B, W]`` packed masks over rows (index order).
        """
        return bloom_search(self.bits, opcodes, terms, self.main_hashes(hashes), self.table.posting_offsets,
                            self.table.posting_rows, probe, cluster_offsets)

    def _as_plan(self, filters: Filters) -> FilterPlan:
        return filters if isinstance(filters, FilterPlan) else self.plan(filters)

    def search_packed(self, filters: Filters, probe: Optional[Tensor] = None,
                      cluster_offsets: Optional[Tensor] = None) -> Tensor:
        """Packed masks over rows (index order): int64 ``[B, W]``; all rows when ``probe`` is None."""
        plan = self._as_plan(filters)
        if probe is None:
            if cluster_offsets is not None:
                raise ValueError("cluster_offsets given without probe")
            probe = plan.opcodes.new_zeros((plan.opcodes.shape[0], 1))  # int64, on the plan's device
            cluster_offsets = self._all_items
        elif cluster_offsets is None:
            raise ValueError("probe given without cluster_offsets")
        return self(plan.opcodes, plan.terms, plan.hashes, probe, cluster_offsets)

    def _to_user_order(self, row_mask: Tensor) -> Tensor:
        return row_mask if self._item_rank is None else row_mask[:, self._item_rank]

    def search(self, filters: Filters) -> Tensor:
        """Bloom evaluation over all items: bool ``[B, N]`` in user item order.

        Never misses an item that satisfies its filter; may include false positives (items
        whose signature happens to hold a term's bits). ``NOT`` terms and frequent terms are exact.

        Args:
            filters (Sequence[str] | FilterPlan): B expressions (or their plan).

        Returns:
            Tensor: bool ``[B, N]``.
        """
        return self._to_user_order(unpack_mask(self.search_packed(filters), self.num_items))

    def matches(self, expressions: Sequence[str]) -> Tensor:
        """Exact evaluation from the attribute table: bool ``[B, N]`` in user item order.

        Example::

            >>> index = BloomIndex.build([{"lang": ["en"]}, {"lang": ["de"]}])
            >>> index.matches(["NOT lang:en", "lang:xx"]).tolist()
            [[False, True], [False, False]]
        """
        if isinstance(expressions, str):
            raise TypeError("matches takes a sequence of expressions (one per query), not a single str")
        rows = np.stack([self.table.matches_program(compile_program(e, self.dictionary), self._exact_row)
                         for e in expressions]) \
            if len(expressions) else np.zeros((0, self.num_items), dtype=bool)
        return self._to_user_order(torch.from_numpy(rows))

    def check(self, filters: Filters, rows: Tensor) -> Tensor:
        """Exact check of candidate rows (index order) against B filters: bool ``[B, K]``.

        Args:
            filters (Sequence[str] | FilterPlan): B expressions (or their plan).
            rows (Tensor): int64 ``[B, K]`` candidate rows, -1 for padding (never passes).

        Returns:
            Tensor: bool ``[B, K]``: True iff the row exactly satisfies its filter.
        """
        plan = self._as_plan(filters)
        held = self.held_terms(rows, plan.terms)
        return torch.ops.silverrec.exact_filter(plan.opcodes, plan.terms, held) & (rows >= 0) & (rows < self.num_items)

    def held_terms(self, rows: Tensor, terms: Tensor) -> Tensor:
        """The exact check's input: each candidate row's membership in each of its plan's terms,
        as the term id where held and -1 where not (the ``held_terms`` op: fixed shapes, no host
        sync). Frequent terms read their exact bit row, the others binary-search their posting list.

        Args:
            rows (Tensor): int64 ``[B, M]`` candidate rows (index order; -1 padding).
            terms (Tensor): int64 ``[B, L]`` the plans' term ids.

        Returns:
            Tensor: int64 ``[B, M, L]`` (``exact_filter``'s ``held``).
        """
        return torch.ops.silverrec.held_terms(self.bits, self.term_rows, self.table.posting_offsets,
                                              self.table.posting_rows, rows, terms, self.num_items)

    def _exact_row(self, term: int) -> np.ndarray:
        """bool ``[N]`` (row order) of a frequent term, from its exact bit row."""
        return unpack_mask(self.bits[int(self.term_rows[term])].unsqueeze(0), self.num_items)[0].numpy()

    def expected_false_positive_rate(self) -> float:
        """Theoretical false-positive rate of a one-term query for a (non-frequent) term on a
        random item not holding it.

        The mean over rows of ``(1 - exp(-H n_r / M))^H`` with ``n_r`` the row's number of
        terms in the Bloom signature (frequent terms have exact rows and no false positives).
        """
        t = self.table
        n_dict = len(self.dictionary)
        of_term = np.repeat(np.arange(t.num_terms), np.diff(t.posting_offsets.numpy()))  # term of each posting
        in_bloom = (of_term < n_dict) & ~self.dense_terms[np.minimum(of_term, max(n_dict - 1, 0))]
        counts = np.bincount(t.posting_rows.numpy()[in_bloom], minlength=self.num_items)
        return float(np.mean((1.0 - np.exp(-self.num_hashes * counts / self.num_bits)) ** self.num_hashes))

    def memory_bytes(self) -> Dict[str, int]:
        """Bytes of the Bloom signatures, the exact rows, the reserved rows and the posting lists
        (with the per-term counts and exact-row map)."""
        t = self.table
        words = self.bits.shape[1]
        return {
            "bloom": self.num_bits * words * 8,
            "exact_rows": (self.bits.shape[0] - self.num_bits - min(self.fresh_bit_rows, 1)) * words * 8,
            "fresh_rows": min(self.fresh_bit_rows, 1) * words * 8,
            "postings": sum(x.numel() * x.element_size() for x in (t.posting_rows, t.posting_offsets, t.term_counts,
                                                                    self.term_rows)),
        }
