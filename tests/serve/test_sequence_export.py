"""The sequence user tower end to end on the tiny world: silverrec-train (leave-last-out) -> export ->
Retriever and HTTP, with the exported graph scoring as the eager one built from the training modules."""
import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

from silverrec.data.batching import FeatureBatcher
from silverrec.models.sequence_two_tower import SequenceTwoTower
from silverrec.retrieval.publish import publish
from silverrec.retrieval.serving_graph import ServingConfig
from silverrec.serve import Retriever
from silverrec.serve.batching import BatchingConfig
from silverrec.serve.http import ServerConfig, ServingApp
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.export import example_users, export_serving, latest_history, publish_item_embeddings
from silverrec.train.trainer import load_two_tower
from tests.conftest import compose_config

CONFIG = ServingConfig(k=10, candidates_per_task=20, num_clusters=8)


@pytest.fixture(scope="module")
def sequence_export(tiny_dataset, tmp_path_factory):
    from silverrec.train.train import run_training

    out = str(tmp_path_factory.mktemp("sequence_run"))
    cfg = compose_config("train", ["debug=cpu_tiny", f"paths.output_dir={out}", "model.user_tower=sequence",
                                   "model.sequence.num_heads=2", "trainer.batch_size=32", "trainer.max_steps=6",
                                   "trainer.eval_every=3", "trainer.checkpoint_every=3", "eval.protocol=leave_last_out",
                                   "loss.in_batch_negatives=64", "loss.uniform_negatives=32"])
    report = run_training(cfg)
    payload = load_checkpoint(report["train"]["checkpoint"])
    model = load_two_tower(payload)
    path = str(tmp_path_factory.mktemp("sequence_export") / "serving.pt2")
    export_serving(model, tiny_dataset, CONFIG, path, {"step": payload["step"]})
    return {"report": report, "model": model, "path": path, "step": payload["step"]}


def _requests(ds, n):
    users = np.arange(n) % ds.users.num_rows
    return example_users(ds, users, latest_history(ds, users))


def test_training_reports_leave_last_out_metrics(sequence_export):
    report = sequence_export["report"]
    assert isinstance(sequence_export["model"], SequenceTwoTower)
    assert sequence_export["step"] == 6 and len(report["train"]["validation_history"]) == 1
    for key in ("hr@10", "ndcg@10", "mrr", "popularity_hr@10"):
        assert 0.0 <= report["test"][key] <= 1.0


def test_exported_graph_scores_as_the_eager_graph(sequence_export, tiny_dataset):
    ds, model = tiny_dataset, sequence_export["model"]
    r = Retriever(sequence_export["path"])
    reqs = _requests(ds, 9)
    filters = ["", "language:en", "NOT category:music"] * 3
    args = (r.encoder.users(reqs), *r.encoder.filters(filters, 9), r.encoder.exclude([u["history"][-2:] for u in reqs], 9))
    graph = publish(model, ds.schema, publish_item_embeddings(model, ds), ds.item_terms(), CONFIG)
    with torch.no_grad():
        want = graph(*args, *r.fresh_index)
        # the graph's user encoder is the training model's user tower over the same history
        users = np.arange(9) % ds.users.num_rows
        kjt = FeatureBatcher(ds.schema, ds.users, ds.items).kjt(9, user_rows=users, history=latest_history(ds, users))
        torch.testing.assert_close(graph.user_encoder(args[0]), model(kjt)[0], rtol=1e-5, atol=1e-6)
    ids, value, scores, num_valid = r.search(*args)
    assert torch.equal(num_valid, want[3]) and (num_valid > 0).all()
    assert (ids == want[0]).float().mean() > 0.99
    torch.testing.assert_close(value, want[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scores, want[2], rtol=1e-5, atol=1e-7)


def test_http_query_equals_retriever_query(sequence_export, tiny_dataset):
    r = Retriever(sequence_export["path"])
    reqs = _requests(tiny_dataset, 4)
    want = r.query(reqs, filter="language:en", k=5)
    with TestClient(ServingApp(r, ServerConfig(BatchingConfig())).app) as client:
        res = client.post("/query", json={"users": reqs, "filter": "language:en", "k": 5})
    assert res.status_code == 200, res.text
    got = [[row["item_id"] for row in rows] for rows in res.json()["results"]]
    assert got == [[item for item, _, _ in rows] for rows in want]
    assert all(len(rows) == 5 for rows in want)
