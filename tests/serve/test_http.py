"""``silverrec-serve``: the HTTP service against ``Retriever.query`` on a tiny export."""
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from silverrec.serve import Retriever
from silverrec.serve.batching import BatchingConfig
from silverrec.serve.http import ServerConfig, ServingApp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILTERS = ["", "language:en", "NOT category:music", "category:music OR category:comedy"]


def _client(retriever, **batching):
    """A fresh app (its own batcher and metrics) around a shared, loaded Retriever."""
    server = ServingApp(retriever, ServerConfig(BatchingConfig(**batching)))
    return server, TestClient(server.app)


@pytest.fixture(scope="module")
def client(retriever):
    with _client(retriever)[1] as c:
        yield c


def _as_tuples(results):
    return [[(r["item_id"], r["value"], r["tasks"]) for r in rows] for rows in results]


def _same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert [x[0] for x in g] == [x[0] for x in w]
        # batch composition changes float summation order: equal up to rounding
        np.testing.assert_allclose([x[1] for x in g], [x[1] for x in w], rtol=1e-5, atol=1e-7)
        for (_, _, gt), (_, _, wt) in zip(g, w):
            assert gt.keys() == wt.keys()
            np.testing.assert_allclose(list(gt.values()), [wt[t] for t in gt], rtol=1e-5, atol=1e-7)


def _metrics(client):
    res = client.get("/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(res.text)}


def test_query_equals_retriever_query(client, retriever, users):
    reqs = users[:8]
    exclude = [u["history"][-3:] for u in reqs]
    filters = (FILTERS * 2)[:8]
    res = client.post("/query", json={"users": reqs, "filter": filters, "exclude": exclude, "k": 7})
    one = client.post("/query", json={"users": reqs[:2], "filter": "language:en"})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["version"] == retriever.version
    _same(_as_tuples(body["results"]), retriever.query(reqs, filter=filters, exclude=exclude, k=7))
    assert one.status_code == 200
    _same(_as_tuples(one.json()["results"]), retriever.query(reqs[:2], filter="language:en"))
    assert all(len(rows) == retriever.k for rows in one.json()["results"])


def test_concurrent_queries_share_a_forward(retriever, users):
    """Threads post different users, filters, exclusions and k at once: each gets its own answer
    and at least one forward served more than one request."""
    server, client = _client(retriever, max_batch=64, max_wait_ms=200)
    n = 12
    out = [None] * n
    barrier = threading.Barrier(n)

    def ask(i):
        body = {"users": [users[i]], "filter": FILTERS[i % 4], "exclude": [users[i]["history"][-2:]], "k": 3 + i % 5}
        barrier.wait()
        out[i] = (body, client.post("/query", json=body))

    with client:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        families = _metrics(client)
    for body, res in out:
        assert res.status_code == 200, res.text
        want = retriever.query(body["users"], filter=body["filter"], exclude=body["exclude"], k=body["k"])
        _same(_as_tuples(res.json()["results"]), want)
    samples = {s.name: s.value for s in families["silverrec_batch_requests"].samples if not s.labels.get("le")}
    assert samples["silverrec_batch_requests_sum"] == n
    assert samples["silverrec_batch_requests_count"] < n  # some forward served > 1 request
    sizes = {s.name: s.value for s in families["silverrec_batch_size"].samples if not s.labels.get("le")}
    assert sizes["silverrec_batch_size_sum"] == n


@pytest.mark.parametrize("body, field", [
    ({}, "users"),
    ({"users": "alice"}, "users"),
    ({"users": []}, "users"),
    ({"users": [3]}, "users[0]"),
    ({"users": [{"country": "atlantis"}]}, "country"),
    ({"users": [{"shoe_size": 3}]}, "shoe_size"),
    ({"users": [{"history": ["no-such-item"]}]}, "history"),
    ({"users": [{}], "k": 0}, '"k"'),
    ({"users": [{}], "k": 1000}, '"k"'),
    ({"users": [{}], "k": "5"}, '"k"'),
    ({"users": [{}], "k": True}, '"k"'),
    ({"users": [{}], "filter": 3}, '"filter"'),
    ({"users": [{}], "filter": ["", ""]}, '"filter"'),
    ({"users": [{}], "filter": "language:en AND ("}, "filter"),
    ({"users": [{}], "filter": "shoe_size:3"}, "filter"),
    ({"users": [{}], "exclude": ["i1"]}, '"exclude'),
    ({"users": [{}], "exclude": [[{"id": 1}]]}, "exclude[0][0]"),
    ({"users": [{}], "limit": 3}, "limit"),
    ([{"users": []}], "JSON object"),
])
def test_bad_requests_get_400_naming_the_field(client, body, field):
    res = client.post("/query", json=body)
    assert res.status_code == 400, res.text
    assert field in res.json()["error"]


def test_invalid_json_gets_400(client):
    res = client.post("/query", content=b'{"users": [', headers={"content-type": "application/json"})
    empty = client.post("/query", content=b"")
    assert res.status_code == 400 and "not valid JSON" in res.json()["error"]
    assert empty.status_code == 400 and "empty" in empty.json()["error"]


def test_full_queue_answers_503(retriever, users):
    """max_queue=1 and a worker blocked inside a forward: the 1st request runs, the 2nd waits in
    the queue, the 3rd is refused with 503; both others complete once the worker resumes."""
    server, client = _client(retriever, max_batch=1, max_wait_ms=0, max_queue=1)
    entered, release = threading.Event(), threading.Event()
    search = server.batcher.search

    def blocked(*args):
        entered.set()
        release.wait(30)
        return search(*args)

    server.batcher.search = blocked
    body = {"users": users[:1]}
    results = {}

    def post(name):
        results[name] = client.post("/query", json=body)

    with client:
        first = threading.Thread(target=post, args=("first",))
        first.start()
        assert entered.wait(30)
        second = threading.Thread(target=post, args=("second",))
        second.start()
        deadline = time.monotonic() + 30
        while server.batcher.queue_depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = client.post("/query", json=body)
        release.set()
        first.join(30)
        second.join(30)
        families = _metrics(client)
    assert refused.status_code == 503 and "queue is full" in refused.json()["error"]
    assert refused.headers["retry-after"] == "1"
    assert results["first"].status_code == 200 and results["second"].status_code == 200
    counts = {s.labels["status"]: s.value for s in families["silverrec_http_requests"].samples
              if s.labels.get("endpoint") == "/query" and s.name.endswith("_total")}
    assert counts == {"200": 2, "503": 1}


def test_schema_example_request_is_valid(client, retriever, tiny_dataset):
    schema = client.get("/schema").json()
    res = client.post("/query", json=schema["example_request"])
    assert res.status_code == 200, res.text
    assert len(res.json()["results"]) == len(schema["example_request"]["users"])
    assert schema["tasks"] == retriever.tasks and schema["k"] == retriever.k
    assert schema["value_formula"] == retriever.metadata["value_formula"]
    names = {f["name"]: f for f in schema["user_features"]}
    for f in tiny_dataset.schema.user_features:
        assert names[f.name]["vocab_size"] == f.num_embeddings and names[f.name]["examples"]
    assert "history" in names
    attrs = {a["name"] for a in schema["item_attributes"]}
    assert {f.name for f in tiny_dataset.schema.filterable_features} <= attrs
    assert set(schema["example_item"]["attributes"]) == attrs
    assert schema["example_item"]["item_id"] not in tiny_dataset.schema.item_ids


def test_metrics_and_healthz(retriever, users):
    server, client = _client(retriever)
    with client:
        for _ in range(3):
            assert client.post("/query", json={"users": users[:2]}).status_code == 200
        client.post("/query", json={})
        health = client.get("/healthz")
        families = _metrics(client)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["version"] == server.retriever.version
    for name in ("silverrec_http_requests", "silverrec_http_request_duration_seconds", "silverrec_queries",
                 "silverrec_queries_per_second", "silverrec_batch_size", "silverrec_forward_duration_seconds",
                 "silverrec_queue_depth", "silverrec_index_version", "silverrec_model_info"):
        assert name in families, name
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert value[("silverrec_http_requests_total", (("endpoint", "/query"), ("method", "POST"), ("status", "200")))] == 3
    assert value[("silverrec_http_requests_total", (("endpoint", "/query"), ("method", "POST"), ("status", "400")))] == 1
    assert value[("silverrec_queries_total", ())] == 6
    assert value[("silverrec_queries_per_second", ())] > 0
    assert value[("silverrec_queue_depth", ())] == 0
    assert value[("silverrec_http_request_duration_seconds_count", (("endpoint", "/query"),))] == 4


def test_items_upsert_and_delete(model_path, users):
    server, client = _client(Retriever(model_path))  # its own Retriever: this test changes the index
    with client:
        schema = client.get("/schema").json()
        v0 = client.get("/healthz").json()["index_version"]
        res = client.post("/items", json=schema["example_item"])
        assert res.status_code == 200, res.text
        assert res.json()["upserted"] == 1 and res.json()["index_version"] > v0
        assert client.post("/items", json={"attributes": {}}).status_code == 400
        assert "item_id" in client.post("/items", json={"attributes": {}}).json()["error"]
        top = client.post("/query", json={"users": users[:1]}).json()["results"][0][0]["item_id"]
        gone = client.delete(f"/items/{top}")
        assert gone.status_code == 200 and gone.json()["deleted"] == 1
        after = client.post("/query", json={"users": users[:1]}).json()["results"][0]
        assert top not in {r["item_id"] for r in after}
        assert client.delete(f"/items/{top}").status_code == 404


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_on_loopback(model_path, users):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "silverrec.serve.http", "--model", model_path, "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, body = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/query", data=json.dumps({"users": users[:1], "k": 5}).encode(),
                                             headers={"content-type": "application/json"})
                body = json.loads(urllib.request.urlopen(req, timeout=10).read())
                break
            except OSError:
                time.sleep(0.2)
        assert body is not None and len(body["results"][0]) == 5, "the server did not answer"
    finally:
        proc.terminate()
        log = proc.communicate(timeout=30)[0]
    assert re.search(rf"model {re.escape(model_path)} version \w+ \(\w+ on cpu; sha256 of \d+ entries \([\d.]+ MiB\) "
                     rf"verified in \d+ ms\) K=20 tasks=\S+ on http://127\.0\.0\.1:{port}", log), log
