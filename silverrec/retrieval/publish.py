"""Publish: a trained model + its item embeddings + the item attribute table -> the serving graph."""
import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from torch import Tensor

from silverrec.models.padded_encoder import item_slots, padded_user_encoder_from_two_tower, user_slots
from silverrec.models.two_tower import TwoTower
from silverrec.retrieval.bloom_index import BloomIndex
from silverrec.retrieval.ivf_index import IVFInt8Index
from silverrec.retrieval.serving_graph import RetrievalGraph, ServingConfig
from silverrec.schema import HISTORY, Schema, user_key


def publish(
    model: TwoTower,
    schema: Schema,
    item_embeddings: Tensor,
    item_terms: Sequence[Mapping[str, Sequence[str]]],
    config: ServingConfig,
    item_ids: Optional[Tensor] = None,
) -> RetrievalGraph:
    """Builds the IVF-INT8 index and the Bloom filter over the same rows and assembles the graph.

    Args:
        model (TwoTower): the trained model (its user side, OverArch and Value Model are copied).
        schema (Schema): the data schema (user feature slots, tasks).
        item_embeddings (Tensor): float32 [N, D] item tower outputs, row = item row.
        item_terms (Sequence[Mapping[str, Sequence[str]]]): per item row ``{feature: [values]}``.
        config (ServingConfig): K, K0, probes, index and filter settings.
        item_ids (Optional[Tensor]): int64 ``[N]`` item id of each embedding row, distinct ids
            in ``[0, schema.num_items)`` (a compaction: deleted items have no row). None: row =
            item id, all ``schema.num_items`` items.

    Returns:
        RetrievalGraph: in eval mode.
    """
    if len(item_terms) != item_embeddings.shape[0]:
        raise ValueError(f"{len(item_terms)} item attribute rows for {item_embeddings.shape[0]} item embeddings")
    if item_ids is not None and item_ids.shape != (item_embeddings.shape[0],):
        raise ValueError(f"{tuple(item_ids.shape)} item ids for {item_embeddings.shape[0]} item embeddings")
    index = IVFInt8Index.build(item_embeddings, num_clusters=config.num_clusters, quantization=config.quantization)
    features = [f.name for f in schema.filterable_features]
    # exact-table rows as wide as the schema allows, so that items added later fit
    width = sum(f.max_length for f in schema.filterable_features)
    bloom = BloomIndex.build(item_terms, num_hashes=config.bloom_hashes, bits_multiplier=config.bloom_bits_multiplier,
                             item_order=index.row_to_id.tolist(), features=features, row_width=width,
                             fresh_terms=config.fresh_terms, fresh_bit_rows=config.fresh_bit_rows)
    if item_ids is not None:  # rows name item ids, not embedding rows
        index.row_to_id = item_ids.to(torch.int64)[index.row_to_id]
    scorer = model.candidate_scorer()
    if not config.use_over_arch:
        scorer.over_arch = None
    n_probe = config.n_probe or index.default_n_probe()
    graph = RetrievalGraph(padded_user_encoder_from_two_tower(model, schema), scorer, index, bloom, config.k,
                           config.candidates_per_task, min(n_probe, index.num_clusters), schema.num_items)
    return graph.eval()


def serving_metadata(graph: RetrievalGraph, schema: Schema, config: ServingConfig) -> Dict[str, Any]:
    """What a client needs besides the graph: schema, slots, the filter dictionary and its bit
    layout (for fresh items), K, tasks.

    ``trained_items`` is the number of item ids the model has embedding rows for (its history and
    item-id table); a compacted export's schema names more (items added after training), which
    the request encoder leaves out of the towers' slots."""
    bloom = graph.bloom
    encoder = graph.user_encoder
    history_table = encoder.tables[encoder.table_of[encoder.keys.index(user_key(HISTORY))]]
    return {
        "kind": "retrieval_graph",
        "schema": schema.to_dict(),
        "k": graph.k,
        "num_items": graph.num_items,
        "trained_items": int(history_table.shape[0]),
        "user_slots": [[key, n] for key, n in user_slots(schema)],
        "item_slots": [[key, n] for key, n in item_slots(schema)],
        "tasks": list(graph.scorer.value_model.task_names),
        "value_formula": graph.scorer.value_model.formula,
        "has_over_arch": graph.scorer.over_arch is not None,
        "serving_config": dataclasses.asdict(config),
        "dim": int(graph.index.cache.shape[1]),
        "quantization": config.quantization,
        "filter": {
            "bit_rows": int(bloom.bits.shape[0]),
            "row_width": int(bloom.table.row_terms.shape[1]),
            "features": list(bloom.dictionary.features),
            "terms": [list(t) for t in bloom.dictionary.terms],
            "term_hashes": bloom.term_hashes.tolist(),
            "dense": [bool(x) for x in bloom.dense_terms],
            "length": config.filter_length,
            # reserved for values first seen after publish: term ids T .. T + fresh_terms - 1 and
            # the last fresh_bit_rows of the bit rows (silverrec.retrieval.fresh_terms)
            "fresh_terms": bloom.fresh_terms,
            "fresh_bit_rows": bloom.fresh_bit_rows,
        },
    }
