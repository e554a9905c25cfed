"""``Retriever``: the client of an exported serving graph (needs only ``silverrec`` installed).

    >>> r = Retriever("runs/demo/serving.pt2")                                        # doctest: +SKIP
    >>> r.query(users=[{"country": "us", "history": ["i000123"]}], filter="language:en", k=5)  # doctest: +SKIP
    [[('i004711', 0.0213, {'click': 0.05, 'like': 0.02, ...}), ...]]
    >>> r.upsert_items([{"item_id": "new-1", "attributes": {"language": ["en"]}}])     # doctest: +SKIP
    >>> r.delete_items(["i004711"])                                                   # doctest: +SKIP

Items added, updated or deleted after publish are served at once, without re-export: they go
into a fresh index (:mod:`silverrec.retrieval.fresh_index`) that the graph searches beside its
main index. Queries are thread-safe with respect to updates: each query reads one immutable
snapshot of the fresh index and its id maps, and an update swaps in a new snapshot, so a query
sees an item either before or after a change, never half-changed.

Filter values first seen in an update (*fresh values*) are filterable at once and exactly, ``NOT``
included: they take term slots the export reserved (:mod:`silverrec.retrieval.fresh_terms`), and
each snapshot carries the view of them that its fresh index was built with, so a filter is
compiled against the same snapshot it runs on. :meth:`Retriever.fresh_values` lists them.

Device: ``Retriever(path, device="cuda")`` serves on a GPU. Requests are encoded on the CPU and
copied over; each snapshot keeps a copy of its fresh index on the device; results come back to
the CPU. An export made on another device is moved (``torch.export.passes.move_to_device_pass``
rewrites its weights and the devices in its graph); its AOTInductor library, compiled for one
device type, is then not used, and a log line says so.
"""
import collections.abc
import logging
import threading
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.export.passes import move_to_device_pass

from silverrec.retrieval.fresh_index import FreshIndex
from silverrec.retrieval.fresh_terms import FreshTermsView
from silverrec.schema import HISTORY, user_key
from silverrec.serve.aoti import aoti_usable, load_aoti
from silverrec.serve.artifact import open_artifact
from silverrec.serve.device import device_name, resolve_device
from silverrec.serve.item_updates import ItemUpdates
from silverrec.serve.prefault import prefault as prefault_pages
from silverrec.serve.update_log import UpdateLog
from silverrec.serve.requests import Filters, RequestEncoder

log = logging.getLogger(__name__)
BACKENDS = ("auto", "aoti", "export")
Result = Tuple[Any, float, Dict[str, float]]  # (external item id, value, {task: prediction})


class ExternalIds(collections.abc.Sequence):
    """id -> external id: the published ids, then the first ``count`` items added after publish.

    Shares the (append-only) list of added ids with the item updates, so taking a snapshot costs
    O(1), not a copy of every id."""

    def __init__(self, published: Sequence[str], added: List[str], count: int) -> None:
        self._published, self._added, self._n = published, added, len(published)
        self._len = self._n + count

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        if not -self._len <= i < self._len:
            raise IndexError(f"item id {i} is outside [0, {self._len})")
        i = i % self._len
        return self._published[i] if i < self._n else self._added[i - self._n]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, collections.abc.Sequence) and len(self) == len(other) and all(
            a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]


class Snapshot(NamedTuple):
    """One consistent view of the item updates: the fresh index and the id maps that go with it."""

    fresh: FreshIndex
    extra_ids: Mapping[str, int]  # external id -> id, items added after publish (append-only, shared)
    external: Sequence[str]  # id -> external id, published then added
    index_version: int
    fresh_terms: FreshTermsView  # the values first seen after publish that ``fresh`` was built with
    fresh_on_device: Optional[FreshIndex] = None  # ``fresh`` on the serving device (None: the same tensors)


# The serving graph's buffers that queries read at random (the IVF index and the Bloom index),
# by state-dict prefix: what Retriever(prefault=True) maps at load. The towers' embedding tables
# are left to be mapped as rows are looked up.
INDEX_BUFFERS = ("index.", "bloom.")


class Retriever:
    """A loaded serving graph (``silverrec-export``) answering queries with external ids.

    Args:
        path (str): the ``.pt2`` file.
        updates_path (Optional[str]): where item updates are persisted: a snapshot (this JSON
            file) and a write-ahead log beside it (``<file>.log``, one fsynced record per update,
            before it is applied), replayed on start (:mod:`silverrec.serve.update_log`); None
            keeps them in memory only.
        backend (str): ``"auto"`` (default): the AOTInductor-compiled graph when the artifact
            holds one that runs here (same torch, same CPU ISA), else the ``torch.export``
            program; ``"aoti"``: the compiled graph or a ``ValueError`` saying why not;
            ``"export"``: the ``torch.export`` program. Both give the same results.
        device (str): where the graph runs: ``"cpu"`` (default) or ``"cuda"`` (``"cuda:1"``); a
            ``ValueError`` naming it where this machine cannot run it. An export made on
            another device is moved to this one (its AOTInductor library is not used then).
        prefault (bool): on the CPU, map every page of the index (the IVF and Bloom buffers of
            the memory-mapped artifact) at load (:mod:`silverrec.serve.prefault`), so the first
            queries do not pay the page faults (default True; False: pages are mapped as queries
            touch them).

    Attributes:
        k (int): results per query the graph returns (``query`` may ask for fewer).
        tasks (List[str]): task names, the order of ``task_scores``' last dimension.
        version (str): the artifact's version stamp.
        index_version (int): increments with every update that changes the index; with
            ``updates_path`` it survives a restart.
        backend (str): ``"aoti"`` or ``"export"``, the one serving.
        device (torch.device): the device the graph runs on.
        integrity (Optional[IntegrityReport]): the checksum verification done at load (entries,
            bytes, seconds); None for an export written before checksums were recorded.
    """

    def __init__(self, path: str, updates_path: Optional[str] = None, backend: str = "auto", device: str = "cpu",
                 prefault: bool = True) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"Retriever backend must be one of {BACKENDS}, got {backend!r}")
        self.device = resolve_device(device, "device")
        loaded = open_artifact(path)  # verifies the checksums of every entry first
        programs, self.metadata, self.integrity = loaded
        if self.metadata.get("kind") != "retrieval_graph":
            raise ValueError(f"{path!r} is a silverrec export of kind {self.metadata.get('kind')!r}, not a serving graph")
        self.encoder = RequestEncoder(self.metadata)
        self.schema = self.encoder.schema
        self.k = int(self.metadata["k"])
        self.tasks: List[str] = list(self.metadata["tasks"])
        self.version = str(self.metadata["version"])
        exported_on = self.metadata.get("device", "cpu")
        if exported_on != device_name(self.device):
            log.info("%s: exported on %s, moving it to %s", path, exported_on, self.device)
        if exported_on != "cpu" or self.device.type != "cpu":  # on CUDA also pins the GPU index (cuda:1 -> cuda:0)
            programs = {name: move_to_device_pass(p, self.device) for name, p in programs.items()}
        self._module, self.backend = self._serving_module(path, programs, backend)
        if prefault and self.device.type == "cpu":
            state = {**programs["model"].state_dict, **dict(programs["model"].constants)}
            advised, seconds = prefault_pages(t for name, t in state.items() if name.startswith(INDEX_BUFFERS))
            log.info("%s: mapped %.2f GiB of index pages in %.2f s", path, advised / 2**30, seconds)
        self._item_tower = programs["item_tower"].module()
        features = {user_key(f.name): f.num_embeddings for f in self.schema.user_features}
        features[user_key(HISTORY)] = self.encoder.trained_items
        self._slot_vocab = torch.tensor([features[key] for key, n in self.encoder.slots for _ in range(n)], dtype=torch.int64)
        self._slot_names = [key for key, n in self.encoder.slots for _ in range(n)]
        row_of_item = programs["model"].state_dict["item_to_row"].cpu().numpy()
        self._updates = ItemUpdates(self.encoder, row_of_item, self._embed_items, int(self.metadata["dim"]),
                                    self.metadata.get("quantization", "per_item"))
        self._lock = threading.Lock()
        self.updates_path = updates_path
        self._log: Optional[UpdateLog] = None
        version = 0
        if updates_path:
            self._log = UpdateLog(updates_path, self.version)
            state, version = self._log.open(known=lambda x: self._updates._published_id(x) is not None,
                                             has_row=self._updates.has_row)
            try:
                self._updates.load_json(state)
            except ValueError as err:
                raise ValueError(f"updates file {updates_path!r} (with its log): {err}") from err
        self._snapshot = self._make_snapshot(version)

    def _serving_module(self, path: str, programs: Dict[str, Any], backend: str) -> Tuple[Callable[..., Any], str]:
        if backend != "export":
            ok, why = aoti_usable(self.metadata.get("aoti"), self.device)
            if ok:
                own = self.metadata["aoti"].get("constants") == "program"  # compiled without its weights
                return load_aoti(path, "model", self.device, programs["model"] if own else None), "aoti"
            if backend == "aoti":
                raise ValueError(f"{path!r}: cannot serve the AOTInductor graph: {why}")
            if "aoti" in self.metadata:
                log.warning("%s: serving the torch.export program, not the AOTInductor graph: %s", path, why)
        return programs["model"].module(), "export"

    # --- queries ------------------------------------------------------------------------------
    @property
    def index_version(self) -> int:
        return self._snapshot.index_version

    @property
    def snapshot(self) -> Snapshot:
        """The current view of the item updates (immutable; an update swaps in a new one): pass its
        ``fresh`` to :meth:`search` and decode ids with its ``external`` for one consistent answer."""
        return self._snapshot

    @property
    def fresh_index(self) -> FreshIndex:
        """The graph's current fresh-index inputs (tombstones and items changed since publish)."""
        return self._snapshot.fresh

    def search(self, user_ids: Tensor, opcodes: Tensor, terms: Tensor, hashes: Tensor, exclude: Tensor,
               fresh: Optional[FreshIndex] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The graph on encoded inputs (checked): ``ids [B, K]``, ``value [B, K]``,
        ``task_scores [B, K, T]``, ``num_valid [B]``, on the CPU (the inputs are copied to the
        serving device). ``fresh`` defaults to the current updates."""
        self._check(user_ids.cpu(), exclude)
        snap = self._snapshot
        if fresh is None or fresh is snap.fresh:
            fresh = snap.fresh if snap.fresh_on_device is None else snap.fresh_on_device
        inputs = [t.to(self.device) for t in (user_ids, opcodes, terms, hashes, exclude, *fresh)]
        with torch.no_grad():
            return tuple(t.cpu() for t in self._module(*inputs))

    def query(
        self,
        users: Sequence[Mapping[str, Any]],
        filter: Filters = None,
        exclude: Optional[Sequence[Optional[Sequence[Any]]]] = None,
        k: Optional[int] = None,
    ) -> List[List[Result]]:
        """Top items for each user, best first.

        Args:
            users: per user ``{feature: value or [values], "history": [item ids]}`` (external values).
            filter: one expression for all users, one per user, or None.
            exclude: per user, external item ids never to return (e.g. already seen); ids the
                index does not know are ignored (``self.encoder.exclusions`` counts them).
            k: results per user (at most the exported K; default K).

        Returns:
            List[List[Tuple[item_id, value, {task: prediction}]]]: per user, at most k results
            (fewer when fewer items pass the filter).
        """
        k = self.k if k is None else int(k)
        if not 1 <= k <= self.k:
            raise ValueError(f"k must be in [1, {self.k}] (the K this graph was exported with), got {k}")
        snap = self._snapshot  # one consistent view for the whole query
        user_ids = self.encoder.users(users)
        b = user_ids.shape[0]
        opcodes, terms, hashes = self.encoder.filters(filter, b, fresh=snap.fresh_terms)
        excl = self.encoder.exclude(exclude, b, snap.extra_ids)
        ids, value, scores, num_valid = self.search(user_ids, opcodes, terms, hashes, excl, snap.fresh)
        out: List[List[Result]] = []
        ids_l, value_l, scores_l, counts = ids.tolist(), value.tolist(), scores.tolist(), num_valid.tolist()
        for i in range(b):
            out.append([
                (snap.external[ids_l[i][j]], value_l[i][j], dict(zip(self.tasks, scores_l[i][j])))
                for j in range(min(k, counts[i]))
            ])
        return out

    def fresh_values(self) -> Dict[str, Any]:
        """The filter values first seen after publish that items of the current snapshot hold:
        ``{"values": {feature: [values]}, "count": n, "capacity": S}`` (S: the slots the export
        reserves, ``serving.fresh_terms``; ``count`` includes values whose items were deleted
        since, which keep their slot until a restart or compaction)."""
        snap = self._snapshot
        view = snap.fresh_terms
        holders = self._updates.holders()  # now (a moment after the snapshot), kept by the in-place index
        if holders is None:
            holders = (snap.fresh.posting_offsets[1:] - snap.fresh.posting_offsets[:-1]).numpy()
        held = holders[view.first_id : view.first_id + len(view)]
        values: Dict[str, List[str]] = {}
        for (feature, value), n in zip(view.terms, held.tolist()):
            if n > 0:
                values.setdefault(feature, []).append(value)
        return {"values": values, "count": len(view), "capacity": view.capacity}

    # --- item updates -------------------------------------------------------------------------
    def upsert_items(self, items: Sequence[Mapping[str, Any]]) -> None:
        """Adds or replaces items ``{"item_id": id, "attributes": {feature: [values]}}``; the next
        query serves them (embedded by the exported item tower). With ``updates_path`` the update
        is durable (logged and fsynced) before it is applied: an ``OSError`` while persisting
        leaves the served state unchanged."""
        with self._lock:
            prepared = self._updates.prepare_upsert(items)  # validates and embeds; changes nothing
            if not prepared:
                return
            seq = self._snapshot.index_version + 1
            self._persist({"seq": seq, "op": "upsert", "items": [item for item, _ in prepared]})
            self._updates.apply_upsert(prepared)
            self._publish(seq)

    def delete_items(self, item_ids: Sequence[Any]) -> int:
        """Deletes items (published or added); returns how many existed. Deleting none changes
        nothing (``index_version`` stays); otherwise durable first, as :meth:`upsert_items`."""
        with self._lock:
            ids = list(dict.fromkeys(str(x) for x in item_ids))
            n = self._updates.deletable(ids)
            if n == 0:
                return 0
            seq = self._snapshot.index_version + 1
            self._persist({"seq": seq, "op": "delete", "item_ids": ids})
            self._updates.delete(ids)
            self._publish(seq)
        return n

    def close(self) -> None:
        """Closes the updates log (the state is durable already)."""
        if self._log is not None:
            self._log.close()

    def _persist(self, record: Dict[str, Any]) -> None:
        if self._log is not None:
            self._log.append(record)  # raises OSError: nothing applied

    def _publish(self, version: int) -> None:
        self._snapshot = self._make_snapshot(version)  # one reference assignment: queries see the old or the new state
        if self._log is not None and self._log.needs_compaction():
            try:
                self._log.compact(self._updates.to_json(), version)
            except OSError as err:  # the update is durable in the log already; compaction is retried later
                log.warning("%s: compacting the updates log failed (%s); it stays as it is", self.updates_path, err)

    def _make_snapshot(self, version: int) -> Snapshot:
        extra = self._updates.extra_ids()
        external = ExternalIds(self.schema.item_ids, self._updates.new_ids, len(self._updates.new_ids))
        view = self._updates.fresh_terms.view()
        fresh = self._updates.fresh_index(view)
        on_device = None if self.device.type == "cpu" else FreshIndex(*(t.to(self.device) for t in fresh))
        return Snapshot(fresh, extra, external, version, view, on_device)

    def _embed_items(self, slots: Tensor) -> Tensor:
        with torch.no_grad():
            return self._item_tower(slots.to(self.device)).cpu()

    def _check(self, user_ids: Tensor, exclude: Tensor) -> None:
        s = self._slot_vocab.numel()
        if user_ids.dim() != 2 or user_ids.shape[1] != s or user_ids.dtype != torch.int64 or user_ids.shape[0] == 0:
            raise ValueError(f"user_ids must be int64 [B >= 1, {s}], got {user_ids.dtype} {tuple(user_ids.shape)}")
        bad = (user_ids < -1) | (user_ids >= self._slot_vocab)
        if bool(bad.any()):
            b, j = (int(x) for x in bad.nonzero()[0])
            raise ValueError(f"user {b}: feature {self._slot_names[j]!r} id {int(user_ids[b, j])} is outside "
                             f"[0, {int(self._slot_vocab[j])})")
        if exclude.dim() != 2 or exclude.shape[0] != user_ids.shape[0] or exclude.dtype != torch.int64 or exclude.shape[1] == 0:
            raise ValueError(f"exclude must be int64 [B, E >= 1] (-1 padding), got {exclude.dtype} {tuple(exclude.shape)}")


