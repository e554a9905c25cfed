"""The fresh index kept up to date in place: an update costs O(its own rows), not O(all fresh items).

:func:`~silverrec.retrieval.fresh_index.build_fresh_index` builds the serving graph's fresh-index
inputs from every fresh item; rebuilding them on every update makes one upsert cost grow with the
number of fresh items (100,000 upserts: quadratic). :class:`FreshStore` keeps the same inputs in
buffers with room to grow and changes only what an update touches, while every snapshot it hands
out stays valid for the queries still reading it:

* **Rows are append-only.** An upsert writes its item at the next unused row (past every row any
  snapshot has seen live) and kills the row of its previous version; a delete kills the row. The
  codes, scales, cache, item ids, Bloom bits and exact-check terms are shared by all snapshots
  of one allocation; each snapshot has its own ``live`` words (and tombstones), so rows written
  after it, or killed after it, are invisible or still visible to it exactly as when it was taken
  (the graph ANDs every fresh mask with ``live``).
* **Posting lists have slack.** Term t owns ``posting_rows[offsets[t]:offsets[t+1]]``: its rows
  (ascending: rows only grow) followed by slack entries naming the last row of the allocation,
  which is never live. An update fills a slack entry with its row, which older snapshots see as a
  dead row: their ``NOT`` answers are unchanged. The lists stay non-decreasing, as the ops need.
* **Reallocation is amortised.** When the rows or a term's slack run out, the live rows are
  copied, compacted, into new buffers (twice the live rows; each term's slack as large as its
  list, at least 2); older snapshots keep the old buffers.

``global`` INT8 quantization shares one scale over the fresh rows, which every new row can change:
it has no in-place form, and ``ItemUpdates`` rebuilds the index for it as before.

Example::

    >>> layout = FilterLayout(term_hashes=np.array([[0, 1], [1, 2]]), dense=np.array([False, False]), num_bit_rows=3,
    ...                       row_width=2)
    >>> store = FreshStore(layout, dim=4, num_main_rows=100)
    >>> store.put("a", torch.randn(4), np.array([0, 1]), item_id=7)
    >>> store.put("b", torch.randn(4), np.array([1]), item_id=9)
    >>> store.hide_main(3)
    >>> fresh = store.snapshot()
    >>> fresh.codes.shape, fresh.item_ids[:3].tolist(), fresh.live.tolist(), fresh.deleted.tolist()[0]
    (torch.Size([128, 4]), [7, 9, -1], [3, 0], 8)
    >>> store.remove("a")
    >>> store.snapshot().live.tolist(), fresh.live.tolist()   # the older snapshot is unchanged
    ([2, 0], [3, 0])
"""
from typing import Dict, Optional

import numpy as np
import torch
from torch import Tensor

from silverrec.retrieval.fresh_index import _MIN_ROWS, FilterLayout, FreshIndex
from silverrec.retrieval.quantize import quantize_int8_per_item

_MIN_SLACK = 2  # posting entries each term gets beyond its list at a reallocation


class FreshStore:
    """The fresh index of per-item INT8 codes, updated in place (see the module doc).

    Args:
        layout (FilterLayout): the main index's term -> bit-row mapping.
        dim (int): D.
        num_main_rows (int): N of the main index (the tombstones' width).
    """

    def __init__(self, layout: FilterLayout, dim: int, num_main_rows: int) -> None:
        self.layout = layout
        self.dim = dim
        self._deleted = np.zeros((num_main_rows + 63) // 64, dtype=np.uint64)
        self._fresh_hashes = np.zeros((0, layout.term_hashes.shape[1]), dtype=np.int64)
        self._row_of: Dict[str, int] = {}
        self.holders = np.zeros(layout.num_term_ids, dtype=np.int64)  # live rows holding each term
        self.reallocations = 0
        self._bits = np.zeros((layout.num_bit_rows, 0), dtype=np.uint64)
        self._allocate(_MIN_ROWS, np.zeros(0, dtype=np.int64))

    @property
    def capacity(self) -> int:
        """F, the rows of the current allocation (the last one is never live)."""
        return int(self._item_ids.shape[0])

    def __len__(self) -> int:
        """Live fresh rows."""
        return len(self._row_of)

    # --- updates -------------------------------------------------------------------------------
    def put(self, key: str, embedding: Tensor, term_ids: np.ndarray, item_id: int,
            fresh_hashes: Optional[np.ndarray] = None) -> None:
        """Adds item ``key`` (or replaces its row): float ``[D]`` embedding, its term ids (unique;
        dictionary terms or fresh slots), its item id. ``fresh_hashes``: int64 ``[n, H]`` bit rows
        of the fresh slots assigned so far (``FreshTerms.view().hashes``), needed when it holds one."""
        terms = np.unique(np.asarray(term_ids, dtype=np.int64))
        if terms.size > self.layout.row_width:
            raise ValueError(f"fresh index: item {key!r} has {terms.size} filterable terms, more than the table's "
                             f"width {self.layout.row_width}")
        if fresh_hashes is not None and fresh_hashes.shape[0] > self._fresh_hashes.shape[0]:
            self._fresh_hashes = np.array(fresh_hashes, dtype=np.int64)
        if terms.size and (terms[0] < 0 or terms[-1] >= self.layout.num_terms + self._fresh_hashes.shape[0]):
            raise ValueError(f"fresh index: term ids of {key!r} must lie in [0, {self.layout.num_terms} + "
                             f"{self._fresh_hashes.shape[0]} fresh values), got {terms.tolist()}")
        self.remove(key)
        full = self._used[terms] >= self._offsets[terms + 1] - self._offsets[terms]
        if self._next >= self.capacity - 1 or full.any():
            self._allocate(max(_MIN_ROWS, 64 * -(-(2 * (len(self._row_of) + 1) + 1) // 64)), terms)
        r = self._next
        self._next += 1
        codes, scales = quantize_int8_per_item(embedding.float().reshape(1, -1))
        self._codes[r] = codes[0]
        self._scales[r] = scales[0]
        self._cache[r] = embedding.half()
        self._item_ids[r] = item_id
        self._row_terms[r, : terms.size] = terms
        self._bits[self._bit_rows(terms), r >> 6] |= np.uint64(1) << np.uint64(r & 63)
        self._postings[self._offsets[terms] + self._used[terms]] = r
        self._used[terms] += 1
        self.holders[terms] += 1
        self._live[r] = True  # last: the row is complete before any snapshot can see it
        self._row_of[key] = r

    def remove(self, key: str) -> None:
        """Kills item ``key``'s row, if it has one."""
        r = self._row_of.pop(key, None)
        if r is not None:
            self._live[r] = False
            held = self._row_terms[r]
            self.holders[held[held >= 0]] -= 1

    def hide_main(self, row: int) -> None:
        """Tombstones main-index row ``row`` (an item deleted or updated since publish)."""
        self._deleted[row >> 6] |= np.uint64(1) << np.uint64(row & 63)

    def snapshot(self) -> FreshIndex:
        """The graph inputs as of now; later updates do not change what it answers."""
        live = np.packbits(self._live, bitorder="little").view("<i8").copy()
        return FreshIndex(
            deleted=torch.from_numpy(self._deleted.view(np.int64).copy()),
            codes=self._codes, scales=self._scales, cache=self._cache,
            item_ids=torch.from_numpy(self._item_ids),
            bits=torch.from_numpy(self._bits.view(np.int64)),
            live=torch.from_numpy(live),
            posting_offsets=torch.from_numpy(self._offsets),
            posting_rows=torch.from_numpy(self._postings),
            row_terms=torch.from_numpy(self._row_terms),
        )

    # --- internals -----------------------------------------------------------------------------
    def _bit_rows(self, terms: np.ndarray) -> np.ndarray:
        """The Bloom bit rows a row holding ``terms`` sets: each dictionary term's H signature
        rows (its one exact row for a dense term), each fresh value's H reserved rows."""
        lay = self.layout
        known = terms[terms < lay.num_terms]
        fresh = terms[terms >= lay.num_terms]
        dense = lay.dense[known]
        parts = [lay.term_hashes[known[~dense]].reshape(-1), lay.term_hashes[known[dense], 0]]
        if fresh.size:
            parts.append(self._fresh_hashes[fresh - lay.num_terms].reshape(-1))
        return np.unique(np.concatenate(parts))

    def _allocate(self, capacity: int, extra_terms: np.ndarray) -> None:
        """New buffers of ``capacity`` rows holding the live rows, compacted in row order, and
        posting slack for each term (``extra_terms`` are about to get one more entry)."""
        lay = self.layout
        old = sorted(self._row_of.items(), key=lambda kv: kv[1]) if self._row_of else []
        rows = np.array([r for _, r in old], dtype=np.int64)
        m = rows.size
        d, width, words = self.dim, lay.row_width, capacity // 64
        codes = torch.zeros(capacity, d, dtype=torch.int8)
        scales = torch.ones(capacity)
        cache = torch.zeros(capacity, d, dtype=torch.float16)
        item_ids = np.full(capacity, -1, dtype=np.int64)
        row_terms = np.full((capacity, width), -1, dtype=np.int64)
        if m:
            idx = torch.from_numpy(rows)
            codes[:m], scales[:m], cache[:m] = self._codes[idx], self._scales[idx], self._cache[idx]
            item_ids[:m], row_terms[:m] = self._item_ids[rows], self._row_terms[rows]
        held = row_terms[:m]
        flat_rows = np.repeat(np.arange(m, dtype=np.int64), width)[held.reshape(-1) >= 0]
        flat_terms = held[held >= 0]  # row-major: rows ascending within each term after a stable sort
        t = lay.num_term_ids
        counts = np.bincount(flat_terms, minlength=t)
        need = counts.copy()
        np.add.at(need, extra_terms, 1)
        slots = counts + np.maximum(need, _MIN_SLACK)
        offsets = np.concatenate([[0], np.cumsum(slots)]).astype(np.int64)
        postings = np.full(int(offsets[-1]) + 2, capacity - 1, dtype=np.int32)  # slack: the never-live last row
        order = np.argsort(flat_terms, kind="stable")
        sorted_terms = flat_terms[order]
        rank = np.arange(sorted_terms.size) - np.repeat(np.cumsum(counts) - counts, counts)
        postings[offsets[sorted_terms] + rank] = flat_rows[order]
        # the kept rows' Bloom bits move with them: unpack the old columns, keep the live ones, pack
        kept = np.zeros((lay.num_bit_rows, capacity), dtype=np.uint8)
        if m:
            kept[:, :m] = np.unpackbits(self._bits.view(np.uint8), axis=1, bitorder="little")[:, rows]
        bits = np.packbits(kept, axis=1, bitorder="little").view(np.uint64).reshape(lay.num_bit_rows, words)
        self._codes, self._scales, self._cache = codes, scales, cache
        self._item_ids, self._row_terms, self._bits = item_ids, row_terms, bits
        self._offsets, self._postings, self._used = offsets, postings, counts.astype(np.int64)
        self._live = np.zeros(capacity, dtype=bool)
        self._live[:m] = True
        self._next = m
        self._row_of = {key: i for i, (key, _) in enumerate(old)}
        self.reallocations += 1
