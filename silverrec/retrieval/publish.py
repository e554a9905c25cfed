"""Publish: a trained model + its item embeddings + the item attribute table -> the serving graph."""
import dataclasses
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

import torch
from torch import Tensor

from silverrec.models.padded_encoder import item_slots, padded_user_encoder_from_two_tower, user_slots
from silverrec.models.two_tower import TwoTower
from silverrec.retrieval.bloom_index import BloomIndex
from silverrec.retrieval.ivf_index import IVFInt8Index
from silverrec.retrieval.serving_graph import RetrievalGraph, ServingConfig
from silverrec.retrieval.term_dictionary import TermDictionary
from silverrec.schema import HISTORY, Schema, user_key


class TermSets(NamedTuple):
    """Encoded item attributes (CSR, user item order): what ``TermDictionary.from_item_terms``
    returns, for catalogues too large for one Python dict per item (``benchmarks/scale.py``).

    Args:
        dictionary (TermDictionary): the T terms.
        offsets (np.ndarray): int64 ``[N+1]``; item i holds ``term_ids[offsets[i]:offsets[i+1]]``.
        term_ids (np.ndarray): int64 ``[nnz]``, ascending and unique per item.
    """

    dictionary: TermDictionary
    offsets: np.ndarray
    term_ids: np.ndarray


def _bloom_index(item_terms: Union[Sequence[Mapping[str, Sequence[str]]], TermSets], order: Tensor,
                 schema: Schema, config: ServingConfig) -> BloomIndex:
    """The filter index over the rows of ``order`` (row r holds item ``order[r]``)."""
    features = [f.name for f in schema.filterable_features]
    # exact-table rows as wide as the schema allows, so that items added later fit
    width = sum(f.max_length for f in schema.filterable_features)
    # frequent terms: an exact row each and no posting list (their rows answer the exact check)
    kw = dict(num_hashes=config.bloom_hashes, bits_multiplier=config.bloom_bits_multiplier, row_width=width,
              fresh_terms=config.fresh_terms, fresh_bit_rows=config.fresh_bit_rows,
              dense_fraction=config.bloom_dense_fraction, dense_postings=False)
    if not isinstance(item_terms, TermSets):
        return BloomIndex.build(item_terms, item_order=order.tolist(), features=features, **kw)
    if tuple(item_terms.dictionary.features) != tuple(features):
        raise ValueError(f"TermSets features {list(item_terms.dictionary.features)} are not the schema's filterable "
                         f"features {features}")
    perm = order.numpy()
    offsets, ids = item_terms.offsets, item_terms.term_ids
    counts = np.diff(offsets)[perm]  # rows in index order
    new_offsets = np.zeros(perm.size + 1, dtype=np.int64)
    np.cumsum(counts, out=new_offsets[1:])
    # gather each row's slice: start of its source slice + position within the row
    within = np.arange(int(new_offsets[-1]), dtype=np.int64) - np.repeat(new_offsets[:-1], counts)
    new_ids = ids[np.repeat(offsets[:-1][perm], counts) + within]
    return BloomIndex.from_term_sets(item_terms.dictionary, new_offsets, new_ids, item_order=order, **kw)


def publish(
    model: TwoTower,
    schema: Schema,
    item_embeddings: Tensor,
    item_terms: Union[Sequence[Mapping[str, Sequence[str]]], TermSets],
    config: ServingConfig,
    item_ids: Optional[Tensor] = None,
) -> RetrievalGraph:
    """Builds the IVF-INT8 index and the Bloom filter over the same rows and assembles the graph.

    Args:
        model (TwoTower): the trained model (its user side, OverArch and Value Model are copied).
        schema (Schema): the data schema (user feature slots, tasks).
        item_embeddings (Tensor): float32 [N, D] item tower outputs, row = item row.
        item_terms (Sequence[Mapping[str, Sequence[str]]] | TermSets): per item row
            ``{feature: [values]}``, or the same already encoded (:class:`TermSets`).
        config (ServingConfig): K, K0, probes, index and filter settings.
        item_ids (Optional[Tensor]): int64 ``[N]`` item id of each embedding row, distinct ids
            in ``[0, schema.num_items)`` (a compaction: deleted items have no row). None: row =
            item id, all ``schema.num_items`` items.

    Returns:
        RetrievalGraph: in eval mode.
    """
    n_terms = item_terms.offsets.size - 1 if isinstance(item_terms, TermSets) else len(item_terms)
    if n_terms != item_embeddings.shape[0]:
        raise ValueError(f"{n_terms} item attribute rows for {item_embeddings.shape[0]} item embeddings")
    if item_ids is not None and item_ids.shape != (item_embeddings.shape[0],):
        raise ValueError(f"{tuple(item_ids.shape)} item ids for {item_embeddings.shape[0]} item embeddings")
    index = IVFInt8Index.build(item_embeddings, num_clusters=config.num_clusters, quantization=config.quantization)
    bloom = _bloom_index(item_terms, index.row_to_id, schema, config)
    if item_ids is not None:  # rows name item ids, not embedding rows
        index.row_to_id = item_ids.to(torch.int64)[index.row_to_id]
    scorer = model.candidate_scorer()
    if not config.use_over_arch:
        scorer.over_arch = None
    n_probe = config.probes(index.num_clusters)
    graph = RetrievalGraph(padded_user_encoder_from_two_tower(model, schema), scorer, index, bloom, config.k,
                           config.candidates_per_task, min(n_probe, index.num_clusters), schema.num_items,
                           merged_candidates=config.merged_candidates, filtered_coverage=config.filtered_coverage,
                           coverage_exponent=config.coverage_exponent, probe_spread=config.probe_spread,
                           probe_precision=config.probe_precision)
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
        "n_probe": graph.n_probe,  # resolved (serving_config's may be null)
        "num_clusters": graph.num_clusters,
        "dim": int(graph.index.cache.shape[1]),
        "quantization": config.quantization,
        "filter": {
            "bit_rows": bloom.num_bit_rows,  # M + E + Z positions (the main bits store M + E + 1 rows)
            "row_width": int(bloom.table.width),
            "features": list(bloom.dictionary.features),
            "terms": [list(t) for t in bloom.dictionary.terms],
            "term_hashes": bloom.term_hashes.tolist(),
            "dense": [bool(x) for x in bloom.dense_terms],
            "length": config.filter_length,
            # reserved for values first seen after publish: term ids T .. T + fresh_terms - 1 and
            # the last fresh_bit_rows of the bit-row positions (silverrec.retrieval.fresh_terms)
            "fresh_terms": bloom.fresh_terms,
            "fresh_bit_rows": bloom.fresh_bit_rows,
        },
    }
