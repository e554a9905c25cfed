"""``silverrec-export``: a checkpoint -> one ``.pt2`` serving file (torch.export, dynamic batch).

    silverrec-export ckpt_path=runs/demo/checkpoints/step_00002000.pt serving.k=100 output=serving.pt2

Publishes the trained item tower's embeddings into the IVF-INT8 index and the item attributes
into the Bloom filter, assembles the serving graph (:mod:`silverrec.retrieval.serving_graph`:
user tower heads -> filter + ANN per task -> merge -> fp16 re-score -> OverArch -> Value Model ->
exact filter check -> top-K) and exports it. Load it with ``silverrec.serve.Retriever``.

Compaction: with ``base=A.pt2 updates=updates.json`` (the artifact a ``Retriever`` served and the
item updates it persisted) the new export's main index holds the updated item set instead of
the training data's (:mod:`silverrec.serve.compaction`); serve it without the updates file.

Device: ``device=cuda`` exports the serving graph and the item tower with CUDA tensors (and,
with ``aoti=true``, compiles them with AOTInductor for this machine's GPU); the index is built
on the CPU either way. The metadata records the device (``"device"``); a ``Retriever`` serves
an export on the device it is asked for (:mod:`silverrec.serve.retriever`).
"""
import copy
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from silverrec.data.batching import FeatureBatcher, HistoryIndex
from silverrec.data.dataset import JaggedColumn, RecDataset
from silverrec.models.two_tower import TwoTower
from silverrec.models.padded_encoder import PaddedEncoder, padded_item_encoder_from_two_tower
from silverrec.retrieval.fresh_index import FreshIndex, empty_fresh_index
from silverrec.retrieval.publish import publish, serving_metadata
from silverrec.retrieval.serving_graph import RetrievalGraph, ServingConfig
from silverrec.schema import HISTORY
from silverrec.serve.aoti import compile_aoti
from silverrec.serve.artifact import save_artifact
from silverrec.serve.compaction import fold_updates
from silverrec.serve.device import device_name, resolve_device
from silverrec.serve.item_updates import ItemUpdates
from silverrec.serve.requests import RequestEncoder
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.distributed import local_context
from silverrec.train.evaluator import embed_items
from silverrec.train.trainer import load_two_tower

@torch.no_grad()
def publish_item_embeddings(model: TwoTower, dataset: RecDataset) -> Tensor:
    """The item tower applied to every item of the catalogue: float32 [N, D], row = item row."""
    batcher = FeatureBatcher(dataset.schema, dataset.users, dataset.items)
    emb = embed_items(model.eval(), batcher, dataset.items.num_rows, local_context())
    if not torch.isfinite(emb).all():
        raise ValueError("the item tower produced NaN/inf embeddings; the checkpoint is unusable for publishing")
    return emb


def example_users(dataset: RecDataset, users: np.ndarray, history: JaggedColumn) -> List[Dict[str, Any]]:
    """Users as external values (``{feature: value(s), "history": [item ids]}``), as a client sends them."""
    schema = dataset.schema
    out = []
    for i, u in enumerate(users.tolist()):
        user: Dict[str, Any] = {}
        for f in schema.user_features:
            ids = dataset.users.columns[f.name].row(u).tolist()
            user[f.name] = [f.vocab[j] for j in ids] if f.max_length > 1 else (f.vocab[ids[0]] if ids else None)
        user[HISTORY] = [schema.item_ids[j] for j in history.row(i).tolist()]
        out.append({k: v for k, v in user.items() if v is not None})
    return out


def latest_history(dataset: RecDataset, users: np.ndarray) -> JaggedColumn:
    """Each user's latest ``history_length`` training items."""
    index = HistoryIndex(dataset.interactions, dataset.split.train, dataset.users.num_rows)
    return index.latest(users, dataset.schema.history_length)


def build_serving_graph(model: TwoTower, dataset: RecDataset, config: ServingConfig, base: Optional[str] = None,
                        updates: Optional[str] = None) -> Tuple[RetrievalGraph, PaddedEncoder, Dict[str, Any]]:
    """Publishes the item embeddings and attributes into the serving graph; returns it (eval
    mode), the item tower over padded slots (for items added later) and the client metadata.

    With ``base`` (an artifact exported from this model and data) and ``updates`` (the item
    updates a ``Retriever`` persisted against it), a compaction: the index holds the training
    items with the updates (and the base's earlier compactions) folded in, and the metadata
    records what was folded as ``"compaction"`` (:func:`silverrec.serve.compaction.fold_updates`)."""
    if updates is not None and base is None:
        raise ValueError(f"updates={updates} needs base=PATH: the artifact the updates were made against "
                         "(its version is checked against the file's artifact_version)")
    items = publish_item_embeddings(model, dataset)
    item_encoder = padded_item_encoder_from_two_tower(model, dataset.schema).eval()
    if base is None:
        graph = publish(model, dataset.schema, items, dataset.item_terms(), config)
        return graph, item_encoder, serving_metadata(graph, dataset.schema, config)
    folded = fold_updates(dataset.schema, items, dataset.item_terms(), base, updates, item_encoder)
    graph = publish(model, folded.schema, folded.embeddings, folded.terms, config, folded.item_ids)
    return graph, item_encoder, {**serving_metadata(graph, folded.schema, config), "compaction": folded.record}


def item_updates(graph: RetrievalGraph, item_encoder: PaddedEncoder, metadata: Dict[str, Any]) -> ItemUpdates:
    """An empty :class:`ItemUpdates` over ``graph``'s main index (eager item tower)."""
    encoder = RequestEncoder(metadata)
    return ItemUpdates(encoder, graph.item_to_row.numpy(), item_encoder, int(metadata["dim"]), metadata["quantization"])


def example_inputs(dataset: RecDataset, metadata: Dict[str, Any], num_users: int = 3,
                   filters: Optional[Sequence[str]] = None, fresh: Optional[FreshIndex] = None) -> Tuple[Tensor, ...]:
    """Graph inputs for the first users with their latest training history, a filter each (by
    default: none, a term, a negated term, ...), their two latest items excluded and the fresh
    index ``fresh`` (default: no updates)."""
    encoder = RequestEncoder(metadata)
    users = np.arange(num_users) % dataset.users.num_rows
    reqs = example_users(dataset, users, latest_history(dataset, users))
    if filters is None:
        first = dataset.schema.filterable_features[0]
        cycle = ["", f"{first.name}:{first.vocab[0]}", f"NOT {first.name}:{first.vocab[0]}"]
        filters = [cycle[i % 3] for i in range(num_users)]
    exclude = [r.get(HISTORY, [])[-2:] for r in reqs]
    if fresh is None:
        fresh = empty_fresh_index(encoder.filter_layout, int(metadata["dim"]), int(metadata["num_items"]))
    return (encoder.users(reqs), *encoder.filters(list(filters), num_users), encoder.exclude(exclude, num_users), *fresh)


def _tracing_updates(graph: RetrievalGraph, item_encoder: PaddedEncoder, dataset: RecDataset, metadata: Dict[str, Any]) -> FreshIndex:
    """A fresh index with a few updated, added and deleted items (a non-trivial trace example)."""
    updates = item_updates(graph, item_encoder, metadata)
    terms = dataset.item_terms()
    ids = dataset.schema.item_ids
    updates.upsert([{"item_id": ids[i], "attributes": terms[i]} for i in range(3)] +
                   [{"item_id": "__trace_new_item__", "attributes": terms[3]}])
    updates.delete([ids[4], ids[5]])
    return updates.fresh_index()


def _on_device(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` with its parameters and buffers on ``device`` (a copy: the caller's stays on the CPU)."""
    return module if device.type == "cpu" else copy.deepcopy(module).to(device)


def export_graph(graph: RetrievalGraph, item_encoder: PaddedEncoder, dataset: RecDataset, metadata: Dict[str, Any],
                 path: str, aoti: bool = False, aoti_threads: Optional[int] = None,
                 device: torch.device = torch.device("cpu")) -> Dict[str, Any]:
    """Exports ``graph`` (dynamic batch, exclusion width and fresh-index sizes) and the item tower
    (dynamic batch) into one package written atomically at ``path``, their tensors on ``device``
    (recorded as ``metadata["device"]``); with ``aoti``, the package also holds the serving graph
    compiled by AOTInductor for this machine's CPU, its loops on ``aoti_threads`` OpenMP threads
    (default: the cores available here), or for its GPU when ``device`` is CUDA."""
    fresh = _tracing_updates(graph, item_encoder, dataset, metadata)  # built on the CPU
    slots = RequestEncoder(metadata).items([{"item_id": i, "attributes": t} for i, t in
                                            zip(dataset.schema.item_ids[:3], dataset.item_terms()[:3])])
    inputs = example_inputs(dataset, metadata, fresh=fresh)
    return export_traced(graph, item_encoder, metadata, path, inputs, slots, aoti=aoti, aoti_threads=aoti_threads,
                         device=device)


def export_traced(graph: RetrievalGraph, item_encoder: PaddedEncoder, metadata: Dict[str, Any], path: str,
                  inputs: Tuple[Tensor, ...], slots: Tensor, aoti: bool = False, aoti_threads: Optional[int] = None,
                  device: torch.device = torch.device("cpu")) -> Dict[str, Any]:
    """:func:`export_graph` on given example inputs: ``inputs``, the serving graph's (CPU tensors,
    as :func:`example_inputs` builds them) and ``slots``, the item tower's ``[B, S]`` item slots
    (``benchmarks/scale.py`` calls it without a :class:`RecDataset`)."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    width = torch.export.Dim("exclude", min=1, max=2**20)
    words = torch.export.Dim("fresh_words", min=2, max=2**20)
    rows = 64 * words
    dynamic = {"user_ids": {0: batch}, "opcodes": {0: batch}, "terms": {0: batch}, "hashes": {0: batch},
               "exclude": {0: batch, 1: width}, "deleted": None, "fresh_codes": {0: rows}, "fresh_scales": {0: rows},
               "fresh_cache": {0: rows}, "fresh_item_ids": {0: rows}, "fresh_bits": {1: words}, "fresh_live": {0: words},
               "fresh_posting_offsets": None, "fresh_posting_rows": {0: torch.export.Dim("fresh_postings", min=2)},
               "fresh_row_terms": {0: rows}}
    inputs = tuple(t.to(device) for t in inputs)
    metadata = {**metadata, "device": device_name(device)}
    with torch.no_grad():
        program = torch.export.export(_on_device(graph, device), inputs, dynamic_shapes=dynamic, strict=False)
        tower = torch.export.export(_on_device(item_encoder, device), (slots.to(device),),
                                    dynamic_shapes={"ids": {0: batch}}, strict=False)
    compiled = None
    if aoti:
        print(f"compiling the serving graph with AOTInductor for {device.type} (about a minute; aoti=false skips it) ...",
              flush=True)
        try:
            files, info = compile_aoti(program, aoti_threads, device)
        except Exception as err:
            raise RuntimeError(f"AOTInductor compilation of the serving graph failed ({type(err).__name__}: {err}); "
                               "export with aoti=false for the plain torch.export program only") from err
        compiled = ({"model": files}, info)
    return save_artifact({"model": program, "item_tower": tower}, path, metadata, aoti=compiled)


def export_serving(model: TwoTower, dataset: RecDataset, config: ServingConfig, path: str, extra: Dict[str, Any],
                   aoti: bool = False, base: Optional[str] = None, updates: Optional[str] = None,
                   aoti_threads: Optional[int] = None, device: str = "cpu") -> Dict[str, Any]:
    """Builds the serving graph, exports it with the item tower and writes ``path`` atomically.

    ``base`` and ``updates``: a compaction (see :func:`build_serving_graph`). ``device``: the
    device of the exported tensors (``"cpu"`` or ``"cuda"``), checked before any work.

    Returns:
        Dict[str, Any]: the artifact metadata (schema, filter dictionary, K, tasks, version stamp, ...).
    """
    dev = resolve_device(device, "device")
    graph, item_encoder, meta = build_serving_graph(model, dataset, config, base=base, updates=updates)
    return export_graph(graph, item_encoder, dataset, {**meta, **extra}, path, aoti=aoti, aoti_threads=aoti_threads,
                        device=dev)


def run_export(cfg: DictConfig) -> Dict[str, Any]:
    device = str(cfg.get("device", "cpu"))
    resolve_device(device, "device")  # before the checkpoint and the data are read
    payload = load_checkpoint(cfg.ckpt_path)
    data_cfg = cfg.data if cfg.get("data") is not None else OmegaConf.create(payload["data_config"])
    dataset: RecDataset = instantiate(data_cfg)
    model = load_two_tower(payload)
    serving: ServingConfig = instantiate(cfg.serving)
    meta = export_serving(model, dataset, serving, cfg.output, {"checkpoint": os.path.abspath(cfg.ckpt_path), "step": int(payload["step"])},
                          aoti=bool(cfg.get("aoti", False)), base=cfg.get("base"), updates=cfg.get("updates"),
                          aoti_threads=cfg.get("aoti_threads"), device=device)
    if "compaction" in meta:
        c = meta["compaction"]
        print(f"compaction: folded {c['updated']} updated, {c['added']} added and {c['deleted']} deleted items "
              f"({c['updates'] or 'no updates file'}, made against version {c['base_version']}) into the main index "
              f"({meta['num_items']} items)")
    size_mb = os.path.getsize(cfg.output) / 2**20
    compiled = ""
    if "aoti" in meta:
        a = meta["aoti"]
        compiled = (f", AOTInductor for {a['arch']}" if a.get("device") == "cuda"
                    else f", AOTInductor for {a['isa']} on {a['threads']} threads")
    print(f"exported {cfg.output} ({size_mb:.1f} MiB, k={serving.k}, {meta['device']}, version {meta['version']}{compiled})")
    return {"path": os.path.abspath(cfg.output), "size_mb": size_mb, **meta}


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:  # a device this machine lacks: one line naming the option, not a traceback
        resolve_device(str(cfg.get("device", "cpu")), "device")
    except ValueError as err:
        raise SystemExit(f"silverrec-export: {err}") from None
    run_export(cfg)


if __name__ == "__main__":
    main()
