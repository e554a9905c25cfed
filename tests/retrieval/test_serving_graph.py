"""The serving graph against a plain reference built from the training-side modules."""
import dataclasses

import numpy as np
import pytest
import torch

from silverrec.data.batching import FeatureBatcher
from silverrec.models.two_tower import TwoTowerConfig, build_two_tower
from silverrec.retrieval.publish import publish, serving_metadata
from silverrec.retrieval.serving_graph import ServingConfig
from silverrec.serve.requests import RequestEncoder
from silverrec.train.checkpoint import load_checkpoint
from silverrec.models.padded_encoder import padded_item_encoder_from_two_tower
from silverrec.train.export import example_users, item_updates, latest_history, publish_item_embeddings
from silverrec.train.trainer import load_two_tower, set_side_feature_items

FILTERS = ["", "language:en", "NOT language:en AND (category:music OR category:comedy)", "creator:cr00003"]


@pytest.fixture(scope="module")
def served(tiny_run, tiny_dataset):
    model = load_two_tower(load_checkpoint(tiny_run["checkpoint"]))
    items = publish_item_embeddings(model, tiny_dataset)
    users = np.arange(8)
    history = latest_history(tiny_dataset, users)
    return {"model": model, "items": items, "users": users, "history": history,
            "requests": example_users(tiny_dataset, users, history)}


def _graph(served, ds, **kw):
    cfg = ServingConfig(**{"k": 10, "num_clusters": 8, **kw})
    graph = publish(served["model"], ds.schema, served["items"], ds.item_terms(), cfg)
    meta = serving_metadata(graph, ds.schema, cfg)
    graph.updates = item_updates(graph, padded_item_encoder_from_two_tower(served["model"], ds.schema).eval(), meta)
    return graph, RequestEncoder(meta)


def _inputs(encoder, reqs, filters, exclude, graph=None):
    fresh = graph.updates.fresh_index() if graph is not None else _EMPTY[0]
    extra = graph.updates.extra_ids() if graph is not None else None
    return (encoder.users(reqs), *encoder.filters(filters, len(reqs)), encoder.exclude(exclude, len(reqs), extra), *fresh)


_EMPTY = []


@pytest.fixture(autouse=True)
def _empty_fresh(served, tiny_dataset):
    if not _EMPTY:
        graph, _ = _graph(served, tiny_dataset)
        _EMPTY.append(graph.updates.fresh_index())


def test_padded_user_encoder_matches_the_training_tower(served, tiny_dataset):
    graph, enc = _graph(served, tiny_dataset)
    batcher = FeatureBatcher(tiny_dataset.schema, tiny_dataset.users, tiny_dataset.items)
    kjt = batcher.kjt(len(served["users"]), user_rows=served["users"], history=served["history"])
    with torch.no_grad():
        u_train, _ = served["model"](kjt)
        u_serve = graph.user_encoder(enc.users(served["requests"]))
    assert u_serve.shape == u_train.shape and u_serve.shape[1] == len(tiny_dataset.schema.tasks)
    torch.testing.assert_close(u_serve, u_train, rtol=1e-5, atol=1e-6)


def test_exhaustive_graph_equals_the_reference(served, tiny_dataset):
    """All clusters probed and K0 = N: the candidates are exactly the items passing the filter,
    so the graph's top-K must equal OverArch + Value Model scoring of all of them."""
    ds, model = tiny_dataset, served["model"]
    n = ds.items.num_rows
    graph, enc = _graph(served, ds, n_probe=8, candidates_per_task=n, merged_candidates=None)
    reqs = served["requests"][:4]
    exclude = [r["history"][:3] for r in reqs]
    with torch.no_grad():
        ids, value, task_scores, num_valid = graph(*_inputs(enc, reqs, FILTERS, exclude))
        u = graph.user_encoder(enc.users(reqs))
    passing = graph.bloom.matches(FILTERS)  # exact, item order
    cache = served["items"].half().float()
    _check_against_reference(model, u, ids, value, task_scores, num_valid, passing, cache, exclude, ds.schema.item_ids)


def _check_against_reference(model, u, ids, value, task_scores, num_valid, passing, cache, exclude, item_ids,
                             history=None):
    for b in range(u.shape[0]):
        ok = passing[b].clone()
        ok[[item_ids.index(x) for x in exclude[b]]] = False
        rows = ok.nonzero().flatten()
        with torch.no_grad():
            side = {} if history is None else {"history": torch.tensor([history[b]]), "items": rows[None]}
            logits = model.task_logits(u[b : b + 1], cache[rows][None], **side)
            valid = torch.ones(1, rows.numel(), dtype=torch.bool)
            scores = model.task_scores(logits, valid)
            values = model.value(scores, valid)[0]
        order = torch.argsort(values, descending=True, stable=True)[:10]
        m = min(10, rows.numel())
        assert int(num_valid[b]) == m
        assert ids[b, :m].tolist() == rows[order[:m]].tolist(), f"query {b}"
        torch.testing.assert_close(value[b, :m], values[order[:m]], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(task_scores[b, :m], scores[0, order[:m]], rtol=1e-4, atol=1e-7)
        assert bool((ids[b, m:] == -1).all()) and bool(torch.isinf(value[b, m:]).all())


def test_exhaustive_graph_with_side_features_equals_the_reference(served, tiny_dataset, tiny_run):
    """An OverArch with (history x candidate) side features: the graph reads the history slots of
    the request and the candidates' item ids, as the training-side modules do."""
    ds = tiny_dataset
    payload = load_checkpoint(tiny_run["checkpoint"])
    config = TwoTowerConfig(**payload["model_config"])
    config.over_arch = dataclasses.replace(config.over_arch, side_features=["all"])
    model = build_two_tower(ds.schema, config)
    missing, unexpected = model.load_state_dict(served["model"].state_dict(), strict=False)
    assert not unexpected and all(".side" in k for k in missing)
    with torch.no_grad():
        model.task_rates.copy_(served["model"].task_rates)
        model.over_arch.scorer.mlp.side.weight.normal_(std=2.0)  # make the side features matter
    set_side_feature_items(model, ds)
    side_served = {**served, "model": model.eval()}
    n = ds.items.num_rows
    graph, enc = _graph(side_served, ds, n_probe=8, candidates_per_task=n, merged_candidates=None)
    reqs = served["requests"][:4]
    exclude = [r["history"][:3] for r in reqs]
    with torch.no_grad():
        out = graph(*_inputs(enc, reqs, FILTERS, exclude))
        u = graph.user_encoder(enc.users(reqs))
    history = [[ds.schema.item_ids.index(x) for x in r["history"]] for r in reqs]
    cache = served["items"].half().float()
    _check_against_reference(model, u, *out, graph.bloom.matches(FILTERS), cache, exclude, ds.schema.item_ids, history)
    with torch.no_grad():  # and the side features change the ranking
        plain = graph.scorer.over_arch.side_features
        graph.scorer.over_arch.scorer.mlp.side.weight.zero_()
        other = graph(*_inputs(enc, reqs, FILTERS, exclude))
    assert plain is not None and not torch.equal(other[1], out[1])


def test_exhaustive_graph_with_fresh_items_equals_the_reference(served, tiny_dataset):
    """Updated, added and deleted items (the fresh index) are served as if they had been published:
    the reference scores the published catalogue with those changes applied."""
    ds, model = tiny_dataset, served["model"]
    n = ds.items.num_rows
    graph, enc = _graph(served, ds, n_probe=8, candidates_per_task=n, merged_candidates=None)
    terms = ds.item_terms()
    ids = ds.schema.item_ids
    music = {**terms[10], "category": ["music"], "language": ["en"]}
    graph.updates.upsert([{"item_id": ids[10], "attributes": music},  # updated: now music, English
                          {"item_id": "new-a", "attributes": {**terms[20], "language": ["en"]}},
                          {"item_id": "new-b", "attributes": terms[30]}])
    graph.updates.delete([ids[40], ids[41], "new-b"])
    reqs = served["requests"][:4]
    exclude = [r["history"][:3] for r in reqs]
    with torch.no_grad():
        out = graph(*_inputs(enc, reqs, FILTERS, exclude, graph))
        u = graph.user_encoder(enc.users(reqs))
        new_emb = graph.updates.embeddings
    # the reference catalogue: item rows 0..N-1 as published with the changes, then "new-a"
    all_terms = list(terms) + [graph.updates.attributes["new-a"]]
    all_terms[10] = music
    from silverrec.retrieval.bloom_index import BloomIndex

    passing = BloomIndex.build(all_terms, features=[f.name for f in ds.schema.filterable_features]).matches(FILTERS)
    passing[:, [40, 41]] = False
    cache = torch.cat([served["items"].clone(), new_emb["new-a"][None]]).half().float()
    cache[10] = new_emb[ids[10]].half().float()
    _check_against_reference(model, u, *out, passing, cache, exclude, list(ids) + ["new-a"])


def test_approximate_graph_keeps_its_promises(served, tiny_dataset):
    """Default probes and K0: every result passes its filter exactly, none is excluded or
    repeated, values are sorted, and a strict filter still fills K when K items pass."""
    ds = tiny_dataset
    graph, enc = _graph(served, ds, n_probe=1, candidates_per_task=12)
    reqs = served["requests"]
    filters = (FILTERS * 2)[: len(reqs)]
    exclude = [r["history"] for r in reqs]
    with torch.no_grad():
        ids, value, _, num_valid = graph(*_inputs(enc, reqs, filters, exclude))
    passing = graph.bloom.matches(filters)
    for b in range(len(reqs)):
        got = ids[b, : int(num_valid[b])].tolist()
        assert len(set(got)) == len(got)
        assert all(bool(passing[b, i]) for i in got)
        seen = {ds.schema.item_ids.index(x) for x in exclude[b]}
        assert not seen & set(got)
        assert bool((value[b, :-1] >= value[b, 1:]).all())
        n_pass = int(passing[b].sum()) - len(seen & set(passing[b].nonzero().flatten().tolist()))
        assert int(num_valid[b]) == min(10, n_pass), f"query {b} ({filters[b]!r}) passes {n_pass} items"


@pytest.mark.parametrize("coverage, exponent, spread, precision", [
    (1.0, 0.0, 0.0, "float32"), (0.3, 0.0, 0.0, "float32"), (1.0, 0.75, 0.0, "float32"), (1.0, 0.75, 3.0, "float32"),
    (1.0, 0.75, 3.0, "bfloat16")])
def test_ann_stage_is_the_index_search(served, tiny_dataset, coverage, exponent, spread, precision):
    """One retrieval path: the graph's ANN stage (its IVFInt8Index layer under the users' filter
    plans, exclusions and tombstones, the T task queries of each user sharing them, the Bloom
    filter run over the walked clusters only) returns what IVFInt8Index.search returns for the
    same queries under the full Bloom mask minus the exclusions, task by task, with the same
    serving.filtered_coverage, serving.coverage_exponent, serving.probe_spread and serving.probe_precision."""
    graph, enc = _graph(served, tiny_dataset, n_probe=2, candidates_per_task=12, filtered_coverage=coverage,
                        coverage_exponent=exponent, probe_spread=spread, probe_precision=precision)
    assert (graph.filtered_coverage, graph.coverage_exponent, graph.probe_spread, graph.probe_precision) == (
        coverage, exponent, spread, precision)
    reqs = served["requests"]
    filters = (FILTERS * 2)[: len(reqs)]
    seen = {}
    stage = graph._main_candidates

    def spy(*args):
        seen.update(args=args, out=stage(*args))
        return seen["out"]
    graph._main_candidates = spy
    try:
        with torch.no_grad():
            graph(*_inputs(enc, reqs, filters, [r["history"][:2] for r in reqs]))
    finally:
        del graph._main_candidates
    queries, opcodes, terms, hashes, exclude, deleted = seen["args"]
    mask = graph._filter_mask(opcodes, terms, hashes, exclude, deleted)
    assert bool((mask != graph._filter_mask(opcodes, terms, hashes, torch.full_like(exclude, -1), deleted)).any())
    scores, ids, rows = seen["out"]
    assert queries.shape[:2] == ids.shape[:2] == (len(reqs), graph.num_tasks) and (graph.k0, graph.n_probe) == (12, 2)
    for t in range(graph.num_tasks):
        want = graph.index.search(queries[:, t], graph.k0, n_probe=graph.n_probe, mask=mask,
                                  filtered_coverage=coverage, coverage_exponent=exponent, probe_spread=spread,
                                  probe_precision=precision)
        assert torch.equal(want.ids, ids[:, t]) and torch.equal(want.scores, scores[:, t])
    assert torch.equal(graph.index.row_to_id[rows.clamp(min=0)].masked_fill(rows < 0, -1), ids)


def test_a_filter_nothing_passes_returns_no_results(served, tiny_dataset):
    graph, enc = _graph(served, tiny_dataset)
    reqs = served["requests"][:2]
    with torch.no_grad():
        ids, value, task_scores, num_valid = graph(*_inputs(enc, reqs, ["language:xx", "language:en AND language:de"], None))
    assert num_valid.tolist() == [0, 0] and bool((ids == -1).all()) and bool((task_scores == 0).all())


def test_bad_config_is_named(served, tiny_dataset):
    with pytest.raises(ValueError, match="candidates_per_task"):
        _graph(served, tiny_dataset, k=100, candidates_per_task=10)
    with pytest.raises(ValueError, match="serving.k"):
        ServingConfig(k=0)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"serving.filtered_coverage must be in \(0, 1\], got " + str(bad)):
            ServingConfig(filtered_coverage=bad)
    for bad in (-0.5, 1.5):
        with pytest.raises(ValueError, match=r"serving.coverage_exponent must be in \[0, 1\], got " + str(bad)):
            ServingConfig(coverage_exponent=bad)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="serving.probe_spread must be a finite number >= 0, got " + str(bad)):
            ServingConfig(probe_spread=bad)
    with pytest.raises(ValueError, match="serving.probe_precision must be one of .*, got 'fp16'"):
        ServingConfig(probe_precision="fp16")
