"""Encoding requests for the serving graph: external values -> the graph's input tensors.

A request is a batch of users (``{feature: value or [values], "history": [item ids]}``, external
values), one filter expression per user (or one for all), and per user the external ids of
items to exclude. :class:`RequestEncoder` maps them through the schema and the filter
dictionary stored with the exported graph, with clear errors naming the user, field and value.
Excluded ids the index does not know are the one exception: they are ignored and counted
(:meth:`RequestEncoder.exclusions`), since such an item can never be returned anyway.

Items added after training and folded into the index by a compaction (ids past the metadata's
``trained_items``) are known ids -- results, ``exclude`` and histories may name them -- but the
towers have no embedding row for them: they are dropped from a user's history slots (the latest
``history_length`` trained items are kept) and leave an item's id slot empty, as for an item added
live.
"""
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from silverrec.retrieval.filter_plan import compile_plans
from silverrec.retrieval.fresh_index import FilterLayout
from silverrec.retrieval.fresh_terms import FreshTerms, FreshTermsView, Pair
from silverrec.retrieval.term_dictionary import TermDictionary
from silverrec.schema import HISTORY, Schema, item_key, user_key

Filters = Union[None, str, Sequence[Optional[str]]]


class Exclusions(NamedTuple):
    """Encoded ``exclude`` lists: ``ids`` int64 ``[B, E]`` (-1 padding) and, per user, how many of
    the given ids the index did not know (ignored)."""

    ids: Tensor
    ignored: List[int]


class RequestEncoder:
    """Turns external users, filters and exclusions into ``RetrievalGraph`` inputs.

    Args:
        metadata (Dict[str, Any]): the serving metadata stored with the export
            (:func:`silverrec.retrieval.publish.serving_metadata`).
    """

    def __init__(self, metadata: Dict[str, Any]) -> None:
        self.schema = Schema.from_dict(metadata["schema"])
        self.slots: List[Tuple[str, int]] = [(k, int(n)) for k, n in metadata["user_slots"]]
        f = metadata["filter"]
        self.dictionary = TermDictionary(f["features"], [tuple(t) for t in f["terms"]])
        self.term_hashes = np.asarray(f["term_hashes"], dtype=np.int64).reshape(len(self.dictionary), -1)
        self.dense = np.asarray(f["dense"], dtype=bool)
        self.filter_length = int(f["length"])
        # the main index's term -> Bloom bit-row layout, which fresh items must share; an export
        # made before fresh values existed reserves no slots for them
        self.filter_layout = FilterLayout(self.term_hashes, self.dense, int(f["bit_rows"]), int(f["row_width"]),
                                          int(f.get("fresh_terms", 0)), int(f.get("fresh_bit_rows", 0)))
        self._features = {user_key(x.name): x for x in self.schema.user_features}
        self._item_feature = self.schema.item_features[0]
        self.item_slots: List[Tuple[str, int]] = [(k, int(n)) for k, n in metadata["item_slots"]]
        self._item_features = {item_key(x.name): x for x in self.schema.item_features}
        # item ids the towers have embedding rows for (ids past them: added after training)
        self.trained_items = int(metadata.get("trained_items", self.schema.num_items))

    @property
    def num_slots(self) -> int:
        return sum(n for _, n in self.slots)

    def users(self, users: Sequence[Mapping[str, Any]]) -> Tensor:
        """int64 ``[B, S]`` slots of the users (missing features empty; the latest history kept)."""
        if len(users) == 0:
            raise ValueError("no users given")
        known = {x.name for x in self.schema.user_features} | {HISTORY}
        out = np.full((len(users), self.num_slots), -1, dtype=np.int64)
        for b, user in enumerate(users):
            if not isinstance(user, Mapping):
                raise ValueError(f"users[{b}] must be an object of feature -> value(s), got {type(user).__name__}")
            unknown = set(user) - known
            if unknown:
                raise ValueError(f"users[{b}]: unknown feature(s) {sorted(unknown)}; known: {sorted(known)}")
            start = 0
            for key, n in self.slots:
                if key == user_key(HISTORY):
                    ids = self._ids(self._item_feature, user.get(HISTORY), f"users[{b}].{HISTORY}")
                    ids = [i for i in ids if i < self.trained_items][-n:]  # no embedding row for newer items
                else:
                    feature = self._features[key]
                    ids = self._ids(feature, user.get(feature.name), f"users[{b}].{feature.name}")
                    if len(ids) > n:
                        raise ValueError(f"users[{b}].{feature.name} has {len(ids)} values, at most {n} allowed")
                out[b, start : start + len(ids)] = ids
                start += n
        return torch.from_numpy(out)

    def new_fresh_terms(self) -> FreshTerms:
        """An empty :class:`~silverrec.retrieval.fresh_terms.FreshTerms` over this export's reserved
        term slots and bit rows (the item updates own it)."""
        lay = self.filter_layout
        return FreshTerms(lay.num_terms, lay.fresh_terms, lay.num_bit_rows - lay.fresh_bit_rows, lay.fresh_bit_rows,
                          int(self.term_hashes.shape[1]))

    def filters(self, filters: Filters, batch: int, max_chars: Optional[int] = None,
                fresh: Optional[FreshTermsView] = None, unknown: Optional[Set[Pair]] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """Plan tensors (``opcodes, terms [B, L]``, ``hashes [B, L, H]``) of one filter per user,
        one filter for all (a str) or none (None / "").

        A filter over the artifact's program length (``filter.length`` instructions) is refused
        while it is lexed, one over ``max_chars`` characters before (``FilterLimitError``, a
        ``ValueError``, naming the limit).

        ``fresh``: the values first seen after publish, as the snapshot the plan will run against
        knows them (``Snapshot.fresh_terms``); without it such values match nothing. ``unknown``
        receives the ``(feature, value)`` terms that resolved to nothing."""
        if filters is None or isinstance(filters, str):
            filters = [filters or ""] * batch
        if len(filters) != batch:
            raise ValueError(f"{len(filters)} filters for {batch} users: give one per user or one for all")
        plan = compile_plans([f or "" for f in filters], self.dictionary, self.term_hashes, self.dense, self.filter_length,
                             max_chars, fresh, unknown)
        return plan.opcodes, plan.terms, plan.hashes

    def exclude(self, exclude: Optional[Sequence[Optional[Sequence[Any]]]], batch: int,
                extra_ids: Optional[Mapping[str, int]] = None) -> Tensor:
        """int64 ``[B, E]`` item ids of each user's excluded items (-1 padding; E >= 1); ids the
        index does not know are ignored (see :meth:`exclusions` for how many)."""
        return self.exclusions(exclude, batch, extra_ids).ids

    def exclusions(self, exclude: Optional[Sequence[Optional[Sequence[Any]]]], batch: int,
                   extra_ids: Optional[Mapping[str, int]] = None) -> "Exclusions":
        """Each user's excluded items as ids, and how many of the given ids were unknown.

        An id the index does not know (never published, or added and deleted since; a user's
        seen items often include such ids) cannot be returned anyway, so it is ignored and
        counted rather than refused. A value that is not an id at all (not a string or an
        integer) is an error.

        Args:
            exclude: per user, external item ids (or None: nothing excluded).
            batch (int): B, the number of users.
            extra_ids (Optional[Mapping[str, int]]): external id -> id of items added after publish.

        Returns:
            Exclusions: ``ids`` int64 ``[B, E]`` (-1 padding; E >= 1) and ``ignored`` (per user,
            the unknown ids dropped).

        Raises:
            ValueError: not one list per user, or a value that is not a string or an integer.
        """
        lists = [[] for _ in range(batch)] if exclude is None else list(exclude)
        if len(lists) != batch:
            raise ValueError(f"{len(lists)} exclude lists for {batch} users: give one per user")
        feature, rows, ignored = self._item_feature, [], []
        for b, raw in enumerate(lists):
            values = [] if raw is None else (list(raw) if isinstance(raw, (list, tuple)) else [raw])
            row = []
            for j, v in enumerate(values):
                if isinstance(v, bool) or not isinstance(v, (str, int)):
                    raise ValueError(f"exclude[{b}][{j}] must be an item id (a string or an integer), got {type(v).__name__}")
                if extra_ids is not None and str(v) in extra_ids:
                    row.append(extra_ids[str(v)])
                elif feature.has(v):
                    row.append(feature.id_of(v))
            rows.append(row)
            ignored.append(len(values) - len(row))
        out = np.full((batch, max([1] + [len(r) for r in rows])), -1, dtype=np.int64)
        for b, r in enumerate(rows):
            out[b, : len(r)] = r
        return Exclusions(torch.from_numpy(out), ignored)

    def items(self, items: Sequence[Mapping[str, Any]]) -> Tensor:
        """int64 ``[B, S_i]`` item-tower slots of items ``{"item_id": id, "attributes": {feature:
        [values]}}``. An item id the model was not trained with (a new item, or one folded in
        by a compaction) leaves its slot empty, as do attribute values never seen at training
        (the tower has no row for them).

        Raises:
            ValueError: an unknown feature, or more values than a feature's slots (named).
        """
        out = np.full((len(items), sum(n for _, n in self.item_slots)), -1, dtype=np.int64)
        id_key = item_key(self._item_feature.name)
        for b, item in enumerate(items):
            attrs = item.get("attributes") or {}
            if not isinstance(attrs, Mapping):
                raise ValueError(f"items[{b}].attributes must be an object of feature -> values")
            unknown = set(attrs) - {x.name for x in self.schema.item_features[1:]}
            if unknown:
                raise ValueError(f"items[{b}].attributes: unknown feature(s) {sorted(unknown)}; known: "
                                 f"{[x.name for x in self.schema.item_features[1:]]}")
            start = 0
            for key, n in self.item_slots:
                feature = self._item_features[key]
                raw = item.get("item_id") if key == id_key else attrs.get(feature.name)
                values = [] if raw is None else (list(raw) if isinstance(raw, (list, tuple)) else [raw])
                if len(values) > n:
                    raise ValueError(f"items[{b}].attributes.{feature.name} has {len(values)} values, at most {n} allowed")
                ids = [feature.id_of(v) for v in values if feature.has(v)]
                if key == id_key:
                    ids = [i for i in ids if i < self.trained_items]
                out[b, start : start + len(ids)] = ids
                start += n
        return torch.from_numpy(out)

    @staticmethod
    def _ids(feature, raw: Any, where: str, extra: Optional[Mapping[str, int]] = None) -> List[int]:
        if raw is None:
            return []
        values = list(raw) if isinstance(raw, (list, tuple)) else [raw]
        out = []
        for v in values:
            if extra is not None and str(v) in extra:
                out.append(extra[str(v)])
            elif feature.has(v):
                out.append(feature.id_of(v))
            else:
                raise ValueError(f"{where}: {v!r} is not a known {feature.name} value")
        return out
