"""Compaction: fold the item updates persisted by ``Retriever`` into a new export's main index.

Items added, updated and deleted after publish live in the fresh index
(:mod:`silverrec.serve.item_updates`); ``Retriever(path, updates_path)`` persists them as a JSON
snapshot (``{"artifact_version", "seq", "new_ids", "upserts": {id: attributes}, "deleted": [ids]}``)
and a write-ahead log beside it (:mod:`silverrec.serve.update_log`). A new
export from the same checkpoint and data given ``base=`` (the artifact the updates were made
against) and ``updates=`` (that file) publishes the updated item set as its main index:

- updated items: their new attributes (Bloom, exact table) and the embedding the item tower
  computes from them, with the same slots as :class:`~silverrec.serve.item_updates.ItemUpdates`
  (results before and after compaction agree up to the re-clustering of the IVF index);
- deleted items: no row, never returned; their ids stay known (a history or ``exclude`` may name
  them) and upserting one adds it again;
- new items: rows with ids past the trained ones, in the order the updates assigned them, and
  their external ids appended to the schema's ``item_id`` vocabulary, so results decode to them
  and ``exclude`` accepts them. The towers have no embedding row for them: a user's history
  drops them and their id slot stays empty (:mod:`silverrec.serve.requests`).

Checks (each a ``ValueError`` naming the file, field and value): the file is well formed, its
``artifact_version`` is the base's ``version``, the base was exported from this model (same
schema up to added items, same item-tower weights), and every upsert names known features.
The export records the folded state, cumulative over compactions, as ``metadata["compaction"]``,
so a compacted artifact can be the base of the next compaction.

Example::

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "updates.json")
    >>> with open(path, "w") as fh:
    ...     json.dump({"artifact_version": "930becfbd45ed218", "new_ids": ["brand-new"],
    ...                "upserts": {"brand-new": {"language": "en"}}, "deleted": ["i000017"]}, fh)
    >>> read_updates(path)["upserts"]
    {'brand-new': {'language': ['en']}}

    With the CLI: ``silverrec-export ckpt_path=CKPT base=serving.pt2 updates=updates.json output=new.pt2``.
"""
import dataclasses
import json
import os
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from silverrec.schema import Schema
from silverrec.serve.artifact import load_artifact
from silverrec.serve.requests import RequestEncoder
from silverrec.serve.update_log import log_path, read_log, read_snapshot, read_state

Terms = Dict[str, List[str]]
_KEYS = ("artifact_version", "new_ids", "upserts", "deleted")


class FoldedItems(NamedTuple):
    """The item set of a compacted export (N' indexed items).

    Args:
        schema (Schema): the training schema with the added items appended to ``item_id``.
        item_ids (Tensor): int64 ``[N']`` item id of each indexed item (deleted ids absent).
        embeddings (Tensor): float32 ``[N', D]``.
        terms (List[Terms]): ``[N']`` filterable attributes ``{feature: [values]}``.
        record (Dict[str, Any]): ``metadata["compaction"]``: base version, updates file, what
            this compaction folded (``updated``, ``added``, ``deleted``) and the cumulative
            ``state`` relative to the training data.
    """

    schema: Schema
    item_ids: Tensor
    embeddings: Tensor
    terms: List[Terms]
    record: Dict[str, Any]


def read_updates(path: str, known: Optional[Callable[[str], bool]] = None,
                 has_row: Optional[Callable[[str], bool]] = None) -> Dict[str, Any]:
    """Reads and checks persisted updates (``Retriever(updates_path=...)``): the snapshot and
    the log replayed over it (:mod:`silverrec.serve.update_log`).

    Args:
        path (str): the snapshot file (its log is ``path + ".log"``).
        known, has_row (Optional[Callable[[str], bool]]): whether an id is in the base's item
            vocabulary / has a row in its main index; needed only to replay a non-empty log.

    Returns:
        Dict[str, Any]: ``artifact_version`` (str), ``new_ids`` (List[str]), ``upserts``
        (``{id: {feature: [values]}}``, values as str) and ``deleted`` (List[str]).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"updates file {path!r} does not exist")
    snap = read_snapshot(path)
    records, _ = read_log(log_path(path), snap["seq"], repair=False)
    if records and (known is None or has_row is None):
        raise ValueError(f"updates file {path!r}: its log holds {len(records)} update(s); replaying them needs the "
                         f"base artifact's ids (fold_updates)")
    if records:
        snap, _ = read_state(path, known, has_row)
    return {key: snap[key] for key in _KEYS}


def check_base(base_path: str, metadata: Mapping[str, Any], item_tower: Mapping[str, Tensor], schema: Schema,
               item_encoder: torch.nn.Module) -> None:
    """Raises ``ValueError`` unless the base artifact was exported from this model and data: the
    same schema (its ``item_id`` vocabulary may extend the training one with added items) and the
    same item-tower weights (which embed the updated items)."""
    base = Schema.from_dict(metadata["schema"])
    trained = schema.item_ids
    if base.item_ids[: len(trained)] != trained or dataclasses.replace(
            base, item_features=(schema.item_features[0],) + base.item_features[1:]) != schema:
        raise ValueError(f"base artifact {base_path!r} was exported with another schema than this checkpoint's data "
                         f"({len(base.item_ids)} item ids, {len(trained)} trained); compact with the data it was made from")
    mine = item_encoder.state_dict()
    for name, t in item_tower.items():
        if name not in mine or mine[name].shape != t.shape or not torch.equal(mine[name].float(), t.float()):
            raise ValueError(f"base artifact {base_path!r} was exported from another model: its item tower's {name!r} "
                             f"differs from the checkpoint's; compact with the checkpoint the base was made from")


def _compose(state: Mapping[str, Any], saved: Mapping[str, Any], trained: Sequence[str]) -> Dict[str, Any]:
    """The cumulative state relative to the training data: ``state`` (of earlier compactions),
    then the upserts and deletes of ``saved``."""
    upserts = dict(state["upserts"])
    deleted = set(state["deleted"])
    known = set(trained)
    for item, attrs in saved["upserts"].items():
        upserts[item] = attrs
        deleted.discard(item)
    for item in saved["deleted"]:
        upserts.pop(item, None)
        if item in known:
            deleted.add(item)
    return {"new_ids": list(state["new_ids"]) + list(saved["new_ids"]), "upserts": upserts, "deleted": sorted(deleted)}


def fold_updates(schema: Schema, embeddings: Tensor, item_terms: Sequence[Mapping[str, Sequence[str]]],
                 base_path: str, updates_path: Optional[str], item_encoder: torch.nn.Module) -> FoldedItems:
    """The item set of a compaction: the training items (``embeddings``, ``item_terms``) with the
    base's earlier compactions and the updates file applied.

    Args:
        schema (Schema): the training data's schema (the checkpoint's).
        embeddings (Tensor): float32 ``[N, D]`` published embeddings of the training items.
        item_terms (Sequence[Mapping[str, Sequence[str]]]): their ``[N]`` filterable attributes.
        base_path (str): the artifact the updates were made against.
        updates_path (Optional[str]): the persisted updates; None folds only the base's earlier
            compactions.
        item_encoder (torch.nn.Module): the item tower over padded slots (``[B, S_i]`` -> ``[B, D]``).

    Returns:
        FoldedItems: the schema, rows, embeddings, attributes and the compaction record.
    """
    programs, base = load_artifact(base_path)
    if base.get("kind") != "retrieval_graph":
        raise ValueError(f"base artifact {base_path!r} is a silverrec export of kind {base.get('kind')!r}, not a serving graph")
    check_base(base_path, base, programs["item_tower"].state_dict, schema, item_encoder)
    if updates_path is None:
        saved = {"artifact_version": base["version"], "new_ids": [], "upserts": {}, "deleted": []}
    else:
        id_of_base = {x: i for i, x in enumerate(Schema.from_dict(base["schema"]).item_ids)}
        rows = programs["model"].state_dict["item_to_row"]
        saved = read_updates(updates_path, known=lambda x: x in id_of_base,
                             has_row=lambda x: x in id_of_base and int(rows[id_of_base[x]]) >= 0)
    if saved["artifact_version"] != base["version"]:
        raise ValueError(f"updates file {updates_path!r} holds updates of artifact version {saved['artifact_version']}, "
                         f"the base {base_path!r} is version {base['version']}: give the artifact they were made against")
    base_ids = Schema.from_dict(base["schema"]).item_ids
    _check_ids(saved, base_ids, updates_path)
    earlier = base.get("compaction", {}).get("state", {"new_ids": [], "upserts": {}, "deleted": []})
    trained = schema.item_ids
    state = _compose(earlier, saved, trained)
    n = len(trained)
    all_ids = tuple(trained) + tuple(state["new_ids"])
    id_of = {x: i for i, x in enumerate(all_ids)}
    emb = embeddings.float().clone()
    terms: List[Mapping[str, Sequence[str]]] = list(item_terms)
    new_emb = _embed(RequestEncoder(base), state["upserts"], item_encoder, updates_path)
    filterable = {f.name for f in schema.filterable_features}
    extra = torch.zeros(len(state["new_ids"]), emb.shape[1])
    extra_terms: List[Mapping[str, Sequence[str]]] = [{} for _ in state["new_ids"]]
    for item, e in new_emb.items():
        i = id_of[item]
        row_terms = {f: v for f, v in state["upserts"][item].items() if f in filterable}
        if i < n:
            emb[i], terms[i] = e, row_terms
        else:
            extra[i - n], extra_terms[i - n] = e, row_terms
    deleted = {id_of[x] for x in state["deleted"]}
    live = [i for i in range(n) if i not in deleted] + [n + j for j, x in enumerate(state["new_ids"]) if x in state["upserts"]]
    if not live:
        raise ValueError(f"updates file {updates_path!r} deletes every item: the new index would be empty")
    everything = torch.cat([emb, extra])
    all_terms = terms + extra_terms
    ids = torch.tensor(live, dtype=torch.int64)
    id_feature = dataclasses.replace(schema.item_features[0], vocab=all_ids)
    new_schema = dataclasses.replace(schema, item_features=(id_feature,) + tuple(schema.item_features[1:]))
    base_rows = programs["model"].state_dict["item_to_row"]
    in_base = {x for i, x in enumerate(base_ids) if int(base_rows[i]) >= 0}  # items with a row in the base's index
    record = {
        "base_version": base["version"],
        "updates": None if updates_path is None else os.path.abspath(updates_path),
        "updated": sum(1 for x in saved["upserts"] if x in in_base),
        "added": sum(1 for x in saved["upserts"] if x not in in_base),
        "deleted": len(saved["deleted"]),
        "state": state,
    }
    return FoldedItems(new_schema, ids, everything[ids], [all_terms[i] for i in live], record)


def _check_ids(saved: Mapping[str, Any], base_ids: Sequence[str], path: Optional[str]) -> None:
    """The ids of an updates file must fit its base: new ids past the base's, upserts of known or
    new ids, deletes of the base's items (as ``ItemUpdates`` writes them)."""
    known = set(base_ids)
    new = set(saved["new_ids"])
    clash = sorted(new & known)
    if clash:
        raise ValueError(f"updates file {path!r}: new_ids {clash[:5]} are items the base already has")
    for item in saved["upserts"]:
        if item not in known and item not in new:
            raise ValueError(f"updates file {path!r}: upserts[{item!r}] is neither an item of the base nor in new_ids")
    for item in saved["deleted"]:
        if item not in known:
            raise ValueError(f"updates file {path!r}: deleted item {item!r} is not an item of the base")


def _embed(encoder: RequestEncoder, upserts: Mapping[str, Terms], item_encoder: Callable[[Tensor], Tensor],
           path: Optional[str]) -> Dict[str, Tensor]:
    """Item-tower embeddings of the upserted items, from the same slots as ``ItemUpdates``."""
    if not upserts:
        return {}
    slots = []
    for item, attrs in upserts.items():
        try:
            slots.append(encoder.items([{"item_id": item, "attributes": attrs}]))
        except ValueError as err:
            raise ValueError(f"updates file {path!r}: upserts[{item!r}].{str(err).replace('items[0].', '', 1)}") from err
    with torch.no_grad():
        emb = item_encoder(torch.cat(slots)).float()
    if not torch.isfinite(emb).all():
        raise ValueError(f"updates file {path!r}: the item tower produced NaN/inf embeddings for upserted items")
    return dict(zip(upserts, emb))
