"""Fresh values: filter terms first seen after publish, in term slots the export reserves for them.

The term dictionary is built from the item table at publish, and the exported graph's filter
inputs have fixed shapes (the main index's posting offsets ``[T + 1]``, its ``R`` bit rows, the
fresh index inputs of the same shapes). A value first seen in an item update (``POST /items``,
``Retriever.upsert_items``, an updates file replayed at start-up) must still be filterable,
exactly, without re-export. Two designs were possible:

* evaluate the fresh rows' filters on the host, outside the graph -- a second retrieval path
  beside the graph's (DESIGN.md: one path), and per query work over every fresh row; or
* **reserve term slots at export** (this module): the graph evaluates a fresh value with the same
  ops, plans and exact check as a published one.

What the export reserves (``serving.fresh_terms`` = S, ``serving.fresh_bit_rows`` = Z):

* term ids ``T .. T + S - 1`` with **empty posting lists in the main index** (its posting offsets
  are ``[T + S + 1]``): no main row holds a fresh value, so ``NOT_TERM`` on one is exactly TRUE
  over the main rows;
* Z **bit-row positions that are zero in the main index** (the last Z of its R positions): a
  fresh value's H Bloom positions lie in them, so ``TERM`` on one is exactly FALSE over the main
  rows (no false positives there to crowd the fresh items out of the candidates). The main index
  stores one shared zero row for all Z (``BloomIndex.main_hashes`` maps the positions onto it);
  the fresh index stores all R rows.

The fresh index (rebuilt on the host at every update, :mod:`silverrec.retrieval.fresh_index`)
gives the fresh rows holding a fresh value its Bloom bits in the Z rows, a posting list and its id
in their exact-check rows. So, for a fresh value ``v``:

* ``TERM v``: FALSE on the main rows (exact), a Bloom superset on the fresh rows, then the
  exact check by term id removes the false positives: exact;
* ``NOT v``: TRUE on the main rows -- correct, because no main row holds ``v``: a published item
  updated to ``v`` is hidden by a tombstone and its new version is a fresh row -- and exact on
  the fresh rows (their posting lists); the exact check agrees: exact.

**The invariant behind unknown values.** Every value a live item holds is either a dictionary
term or a fresh value (an upsert that would need more than S fresh values is refused, naming
``serving.fresh_terms``; a compaction folds the fresh values into the next dictionary). Hence a
value that is neither is held by no item at all, and compiling it to ``FALSE`` (its ``NOT`` to
``TRUE``) is exact, not a silent pass-through.

**Stable ids.** Within a process slot ids are append-only: a value keeps its id when the last
item holding it is deleted (its posting list is just empty), so a filter compiled against one
snapshot means the same against any later one. The one stale case is a value that was unknown
when a filter was compiled and got a slot before the filter ran (an item holding it was added in
between): a caller that compiles and searches at different times (the HTTP server's micro-batcher)
collects the unknown values of the plan (``compile_plans(unknown=...)``) and recompiles when
:meth:`FreshTermsView.knows_any` says so. A restart assigns the slots afresh from the replayed
updates, in order of first appearance.

Example::

    >>> fresh = FreshTerms(first_id=10, capacity=4, first_row=30, num_rows=2, num_hashes=3)
    >>> fresh.add([("category", "zz123")])
    >>> view = fresh.view()
    >>> view.term_id("category", "zz123"), view.term_id("category", "other"), view.hash_rows(np.array([10])).shape
    (10, -1, (1, 3))
"""
from typing import Dict, Iterable, List, Mapping, Optional, Set, Tuple

import numpy as np

from silverrec.retrieval.term_dictionary import term_hash_positions

Pair = Tuple[str, str]  # (feature name, value)


class FreshTermsView:
    """An immutable view of the fresh values assigned so far (what one snapshot of the index knows).

    Args:
        first_id (int): T, the id of the first slot.
        count (int): slots assigned when the view was taken (ids ``T .. T + count - 1``).
        ids (Mapping[Pair, int]): the (growing) value -> id map; ids past ``count`` are not visible.
        terms (List[Pair]): the (growing) values in id order.
        hashes (np.ndarray): int64 ``[count, H]`` bit rows of the visible values.
        capacity (int): S, the slots the export reserves.
    """

    def __init__(self, first_id: int, count: int, ids: Mapping[Pair, int], terms: List[Pair], hashes: np.ndarray,
                 capacity: int) -> None:
        self.first_id, self.count, self.capacity = first_id, count, capacity
        self._ids, self._terms, self.hashes = ids, terms, hashes

    def __len__(self) -> int:
        return self.count

    @property
    def terms(self) -> List[Pair]:
        """The visible fresh values, in id order."""
        return self._terms[: self.count]

    def term_id(self, feature: str, value: str) -> int:
        """The slot id of ``feature:value`` (a feature *name*), or -1 if it has none in this view."""
        tid = self._ids.get((feature, str(value)), -1)
        return tid if 0 <= tid - self.first_id < self.count else -1

    def knows_any(self, pairs: Iterable[Pair]) -> bool:
        """Whether any of ``pairs`` has a slot in this view (a plan that compiled them as unknown is stale)."""
        return any(self.term_id(f, v) >= 0 for f, v in pairs)

    def hash_rows(self, ids: np.ndarray) -> np.ndarray:
        """int64 ``[n, H]`` bit rows of slot ids ``ids`` (each in ``[T, T + count)``)."""
        return self.hashes[np.asarray(ids, dtype=np.int64) - self.first_id]


class FreshTerms:
    """The fresh values of a served index: slot ids and Bloom rows, assigned append-only.

    Args:
        first_id (int): T, the number of dictionary terms (slot j has id ``T + j``).
        capacity (int): S, slots reserved at export (``serving.fresh_terms``; 0: none).
        first_row (int): the first of the reserved bit rows (``R - Z``).
        num_rows (int): Z, the reserved bit rows (``serving.fresh_bit_rows``).
        num_hashes (int): H, the Bloom positions per term (as the main index's).
    """

    def __init__(self, first_id: int, capacity: int, first_row: int, num_rows: int, num_hashes: int) -> None:
        if capacity < 0 or (capacity > 0 and num_rows < 1):
            raise ValueError(f"fresh terms: {capacity} slots need at least one reserved bit row, got {num_rows}")
        self.first_id, self.capacity = first_id, capacity
        self.first_row, self.num_rows, self.num_hashes = first_row, num_rows, num_hashes
        self._ids: Dict[Pair, int] = {}
        self._terms: List[Pair] = []
        self._hashes = np.zeros((capacity, num_hashes), dtype=np.int64)

    def __len__(self) -> int:
        return len(self._terms)

    def view(self) -> FreshTermsView:
        """What is assigned now (later assignments are invisible to it)."""
        n = len(self._terms)
        return FreshTermsView(self.first_id, n, self._ids, self._terms, self._hashes[:n], self.capacity)

    def missing(self, pairs: Iterable[Pair]) -> List[Pair]:
        """The distinct ``pairs`` without a slot, in order of first appearance."""
        return [p for p in dict.fromkeys(pairs) if p not in self._ids]

    def check_room(self, pairs: Iterable[Pair], where: Optional[str] = None) -> None:
        """Raises ``ValueError`` (naming the value and ``serving.fresh_terms``) if :meth:`add` of
        ``pairs`` would need more slots than are left; changes nothing."""
        new = self.missing(pairs)
        if len(self._terms) + len(new) <= self.capacity:
            return
        f, v = new[max(0, self.capacity - len(self._terms))]
        at = f"{where}: " if where else ""
        if self.capacity == 0:
            raise ValueError(f"{at}{f}:{v!r} is a filter value the published index does not know, and this export "
                             "reserves no slots for values first seen after publish (serving.fresh_terms=0, or "
                             "exported before fresh values existed): re-export it to add items with new values")
        raise ValueError(f"{at}{f}:{v!r} is a filter value first seen after publish, and all "
                         f"{self.capacity} slots the export reserves for such values (serving.fresh_terms) are "
                         "taken: compact the index (silverrec-export base=... updates=...) to fold them into "
                         "the main index, or export with a larger serving.fresh_terms")

    def add(self, pairs: Iterable[Pair]) -> None:
        """Assigns slots to the ``pairs`` that have none (call :meth:`check_room` first)."""
        new = self.missing(pairs)
        if not new:
            return
        self.check_room(new)
        n = len(self._terms)
        # positions within the Z reserved rows: the same hash family as the dictionary's terms
        self._hashes[n : n + len(new)] = self.first_row + term_hash_positions(new, self.num_hashes, self.num_rows)
        for j, pair in enumerate(new):
            self._terms.append(pair)
            self._ids[pair] = self.first_id + n + j  # last: a reader sees an id only once its rows are written


def filterable_pairs(attributes: Mapping[str, Iterable[object]], features: Set[str]) -> List[Pair]:
    """The ``(feature, value)`` filter terms of an item's attributes (values as strings)."""
    return [(f, str(v)) for f, values in attributes.items() if f in features for v in values]
