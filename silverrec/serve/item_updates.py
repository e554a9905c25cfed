"""Items added, updated and deleted after publish: the state behind the fresh index.

:class:`ItemUpdates` keeps, per changed external item id, its attributes and item-tower
embedding (or that it was deleted), assigns ids to new items (past the published ones, stable
across restarts) and builds the :class:`~silverrec.retrieval.fresh_index.FreshIndex` the serving
graph takes as input. Its JSON form (``to_json`` / ``from_json``) is what ``Retriever`` persists,
so updates survive a restart; embeddings are recomputed from the attributes on load.

Filter values the published dictionary does not know get term slots the export reserves
(:class:`~silverrec.retrieval.fresh_terms.FreshTerms`, owned here): an upsert that would need more
than the export's ``serving.fresh_terms`` is refused before anything changes, so every value a
live item holds stays filterable, exactly (also under ``NOT``). They come back on a restart with
the replayed updates.
"""
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from torch import Tensor

from silverrec.retrieval.fresh_index import FreshIndex, build_fresh_index
from silverrec.retrieval.fresh_store import FreshStore
from silverrec.retrieval.fresh_terms import FreshTermsView, Pair, filterable_pairs
from silverrec.serve.requests import RequestEncoder

Item = Mapping[str, Any]  # {"item_id": external id, "attributes": {feature: [values]}}


class ItemUpdates:
    """The changes since publish, and the fresh index they make.

    Args:
        encoder (RequestEncoder): the export's request encoder (schema, filter dictionary and
            the main index's Bloom layout, item slots).
        row_of_item (np.ndarray): int64 ``[num_items]`` main-index row of each published item id
            (-1: no row, an item deleted at a compaction; upserting it adds it again).
        embed (Callable[[Tensor], Tensor]): item slots ``[B, S_i]`` -> embeddings ``[B, D]`` (the
            exported item tower).
        dim (int): D.
        quantization (str): the main index's INT8 scheme.
    """

    def __init__(self, encoder: RequestEncoder, row_of_item: np.ndarray,
                 embed: Callable[[Tensor], Tensor], dim: int, quantization: str = "per_item") -> None:
        self.encoder = encoder
        self.layout = encoder.filter_layout
        self.row_of_item = row_of_item
        self.embed = embed
        self.dim = dim
        self.quantization = quantization
        self.num_published = int(row_of_item.shape[0])
        self.new_ids: List[str] = []  # external ids of new items; id = num_published + position
        self._new: Set[str] = set()  # the same, for O(1) membership
        self.attributes: Dict[str, Dict[str, List[str]]] = {}
        self.embeddings: Dict[str, Tensor] = {}
        self.deleted: Set[str] = set()
        self.fresh_terms = encoder.new_fresh_terms()  # values first seen after publish -> reserved slots
        self._filterable = set(encoder.dictionary.features)
        self._extra: Dict[str, int] = {}  # external id -> id of new items (append-only, as new_ids)
        self._store = self._new_store()

    def _new_store(self) -> Optional[FreshStore]:
        """The in-place fresh index (per-item quantization; ``global`` rebuilds at every update)."""
        if self.quantization != "per_item":
            return None
        return FreshStore(self.layout, self.dim, int(self.row_of_item.max(initial=-1)) + 1)

    # --- ids ---------------------------------------------------------------------------------
    def extra_ids(self) -> Mapping[str, int]:
        """External id -> id of the items added after publish. The map only grows (ids are never
        reused) and is shared with the snapshots: read it, never change it."""
        return self._extra

    def _add_new_id(self, ext: str) -> None:
        self._extra[ext] = self.num_published + len(self.new_ids)
        self.new_ids.append(ext)
        self._new.add(ext)

    def _published_id(self, external: str) -> Optional[int]:
        f = self.encoder.schema.item_features[0]
        return f.id_of(external) if f.has(external) else None

    # --- changes -----------------------------------------------------------------------------
    def upsert(self, items: Sequence[Item]) -> None:
        """Adds or replaces items (all validated and embedded before any is applied)."""
        self.apply_upsert(self.prepare_upsert(items))

    def prepare_upsert(self, items: Sequence[Item]) -> List[Tuple[Dict[str, Any], Tensor]]:
        """Validates and embeds items without changing anything: ``[(clean item, embedding)]``
        for :meth:`apply_upsert` (once the update is durable). Raises ``ValueError``."""
        clean = []
        for b, item in enumerate(items):
            if not isinstance(item, Mapping) or "item_id" not in item:
                raise ValueError(f"items[{b}] must be an object with an item_id")
            ext = str(item["item_id"])
            if not ext:
                raise ValueError(f"items[{b}].item_id is empty")
            attrs = item.get("attributes") or {}
            if not isinstance(attrs, Mapping):
                raise ValueError(f"items[{b}].attributes must be an object of feature -> values")
            norm = {str(k): [str(v) for v in (vals if isinstance(vals, (list, tuple)) else [vals])] for k, vals in attrs.items()}
            clean.append({"item_id": ext, "attributes": norm})
        if not clean:
            return []
        slots = self.encoder.items(clean)  # raises on unknown features / too many values
        self.fresh_terms.check_room(self._new_values(clean), "items")  # raises if the reserved slots run out
        with torch.no_grad():
            emb = self.embed(slots).float()
        if not torch.isfinite(emb).all():
            raise ValueError("the item tower produced NaN/inf embeddings for the new items")
        return list(zip(clean, emb))

    def apply_upsert(self, prepared: Sequence[Tuple[Dict[str, Any], Tensor]]) -> None:
        """Applies :meth:`prepare_upsert`'s result (the same rules as
        :class:`~silverrec.serve.update_log.UpdateState`, which replays the log)."""
        self.fresh_terms.add(self._new_values([item for item, _ in prepared]))
        hashes = self.fresh_terms.view().hashes
        for item, e in prepared:
            ext = item["item_id"]
            pid = self._published_id(ext)
            if pid is None and ext not in self._new:
                self._add_new_id(ext)
            self.attributes[ext] = item["attributes"]
            self.embeddings[ext] = e.clone()
            self.deleted.discard(ext)
            if self._store is not None:
                if pid is not None and self.row_of_item[pid] >= 0:
                    self._store.hide_main(int(self.row_of_item[pid]))
                self._store.put(ext, e, self._term_ids(ext), pid if pid is not None else self._extra[ext], hashes)

    def _new_values(self, items: Sequence[Mapping[str, Any]]) -> List[Pair]:
        """The filter values of ``items`` that the published dictionary does not know."""
        d = self.encoder.dictionary
        return [p for item in items for p in filterable_pairs(item["attributes"], self._filterable) if d.term_id(*p) < 0]

    def deletable(self, item_ids: Sequence[Any]) -> int:
        """How many of ``item_ids`` :meth:`delete` would delete (changes nothing)."""
        n, seen = 0, set()
        for raw in item_ids:
            ext = str(raw)
            if ext in seen:
                continue
            seen.add(ext)
            if ext in self.attributes or (self.has_row(ext) and ext not in self.deleted):
                n += 1
        return n

    def has_row(self, external: str) -> bool:
        """Whether a published item has a row in the main index."""
        pid = self._published_id(external)
        return pid is not None and self.row_of_item[pid] >= 0

    def delete(self, item_ids: Sequence[Any]) -> int:
        """Deletes items (published or fresh); returns how many existed."""
        n = 0
        for raw in item_ids:
            ext = str(raw)
            was_fresh = self.attributes.pop(ext, None) is not None
            self.embeddings.pop(ext, None)
            pid = self._published_id(ext)
            published = pid is not None and self.row_of_item[pid] >= 0
            if self._store is not None:
                self._store.remove(ext)
                if published:
                    self._store.hide_main(int(self.row_of_item[pid]))
            if published and ext not in self.deleted:
                self.deleted.add(ext)
                n += 1
            elif was_fresh:
                n += 1
        return n

    # --- the graph input ---------------------------------------------------------------------
    def fresh_index(self, fresh_terms: Optional[FreshTermsView] = None) -> FreshIndex:
        """Tombstones for published items that were updated or deleted, fresh rows for the rest.

        ``fresh_terms``: the view of the fresh values the plans run against it will be compiled
        with (default: the current one); it must hold every value of the fresh items."""
        if self._store is not None:  # kept up to date by every change: O(1) here
            return self._store.snapshot()
        view = self.fresh_terms.view() if fresh_terms is None else fresh_terms
        hidden = [self._published_id(x) for x in list(self.attributes) + sorted(self.deleted)]
        rows = [int(self.row_of_item[i]) for i in hidden if i is not None]
        deleted_rows = np.array([r for r in rows if r >= 0], dtype=np.int64)
        names = list(self.attributes)
        extra = self.extra_ids()
        ids = np.array([self._published_id(x) if self._published_id(x) is not None else extra[x] for x in names], dtype=np.int64)
        offsets, term_ids = [0], []
        for x in names:
            term_ids.extend(self._term_ids(x, view).tolist())
            offsets.append(len(term_ids))
        emb = torch.stack([self.embeddings[x] for x in names]) if names else torch.zeros(0, self.dim)
        return build_fresh_index(emb, np.array(offsets, dtype=np.int64), np.array(term_ids, dtype=np.int64), ids,
                                 deleted_rows, self.layout, int(self.row_of_item.max(initial=-1)) + 1, self.quantization,
                                 view.hashes)

    def _term_ids(self, ext: str, view: Optional[FreshTermsView] = None) -> np.ndarray:
        """Sorted unique term ids (dictionary terms, fresh values' slots) of item ``ext``."""
        view = self.fresh_terms.view() if view is None else view
        d, t = self.encoder.dictionary, set()
        for f, v in filterable_pairs(self.attributes[ext], self._filterable):
            tid = d.term_id(f, v)
            tid = view.term_id(f, v) if tid < 0 else tid
            if tid < 0:  # prepare_upsert gave every value a slot: this is a bug, not bad input
                raise RuntimeError(f"item {ext!r}: filter value {f}:{v!r} has no term id")
            t.add(tid)
        return np.array(sorted(t), dtype=np.int64)

    def holders(self) -> Optional[np.ndarray]:
        """int64 ``[T + S]``: live fresh rows holding each term id now (None without the in-place index)."""
        return None if self._store is None else self._store.holders

    # --- persistence -------------------------------------------------------------------------
    def to_json(self) -> Dict[str, Any]:
        return {"new_ids": list(self.new_ids), "upserts": {x: self.attributes[x] for x in self.attributes},
                "deleted": sorted(self.deleted)}

    def load_json(self, state: Mapping[str, Any]) -> None:
        """Replays a saved state (new ids keep their ids; embeddings are recomputed)."""
        self.new_ids, self._new, self._extra = [], set(), {}
        for x in state.get("new_ids", []):
            self._add_new_id(str(x))
        self.attributes, self.embeddings, self.deleted = {}, {}, set()
        self._store = self._new_store()
        ups = state.get("upserts", {})
        self.upsert([{"item_id": x, "attributes": a} for x, a in ups.items()])
        self.deleted = set()
        self.delete(state.get("deleted", []))
