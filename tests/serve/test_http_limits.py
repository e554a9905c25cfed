"""``silverrec-serve`` under hostile or careless requests: the documented limits (413 / 400 naming
the limit, checked before the work they bound), deep and long filters, JSON 404 / 405, unknown
excluded ids ignored and counted, and unknown or differently-cased filter values."""
import socket
import threading
import time

import pytest
import uvicorn
from starlette.testclient import TestClient

from silverrec.serve.http import ServerConfig, ServingApp
from silverrec.serve.limits import ServingLimits

LONG_FILTER = " OR ".join(["language:en"] * 700_000)  # 10 MB, the example


def _client(retriever, **limits) -> TestClient:
    """A fresh app around the shared Retriever, with the given limits (defaults otherwise)."""
    return TestClient(ServingApp(retriever, ServerConfig(limits=ServingLimits(**limits))).app)


@pytest.fixture(scope="module")
def client(retriever):
    with _client(retriever) as c:
        yield c


def _assert_error(res, status: int, *fragments: str) -> str:
    assert res.status_code == status, res.text
    body = res.json()
    assert set(body) == {"error", "status"} and body["status"] == status
    for f in fragments:
        assert f in body["error"], body["error"]
    return body["error"]


@pytest.mark.parametrize("text", ["(" * 1000 + "language:en" + ")" * 1000, "NOT " * 2000 + "language:en"])
def test_deep_filters_get_400_naming_the_depth_limit(retriever, users, text):
    with _client(retriever, max_filter_chars=100_000) as c:  # the 8 KB NOT chain is over the default 2048
        msg = _assert_error(c.post("/query", json={"users": users[:1], "filter": text}), 400,
                            "filter nests deeper than 64 levels")
        assert c.get("/healthz").status_code == 200
    assert len(msg) < 400  # an excerpt of the filter, not all of it


def test_long_filters_are_refused_fast_naming_the_limit(retriever, users):
    """Over the artifact's program length (filter_length = 12 instructions: 6 terms) the filter is
    refused while it is lexed; over max_filter_chars before anything parses it. Either way a
    10 MB filter comes back in well under a second (parsed in full it took ~8 s)."""
    with _client(retriever, max_body_bytes=64 << 20, max_filter_chars=100 << 20) as c:
        t0 = time.perf_counter()
        res = c.post("/query", json={"users": users[:1], "filter": LONG_FILTER})
        took = time.perf_counter() - t0
    msg = _assert_error(res, 400, "filter", "more than 6 terms", "at most 12 instructions")
    assert took < 1.0, took
    assert len(msg) < 500 and f"({len(LONG_FILTER)} characters)" in msg
    with _client(retriever, max_body_bytes=64 << 20) as c:
        t0 = time.perf_counter()
        res = c.post("/query", json={"users": users[:2], "filter": ["", LONG_FILTER]})
        took = time.perf_counter() - t0
    msg = _assert_error(res, 400, '"filter[1]"', "more than max_filter_chars=2048")
    assert took < 1.0, took
    assert len(msg) < 300


def test_a_filter_at_the_program_limit_is_served(client, users):
    six = " OR ".join(["language:en"] * 6)  # 11 instructions of the 12 allowed
    assert client.post("/query", json={"users": users[:1], "filter": six}).status_code == 200
    _assert_error(client.post("/query", json={"users": users[:1], "filter": six + " OR language:en"}), 400,
                  "more than 6 terms")


def test_404_and_405_answer_json(client):
    msg = _assert_error(client.get("/no/such/path"), 404, "/no/such/path", "POST /query")
    assert "GET /healthz" in msg
    res = client.get("/query")
    _assert_error(res, 405, "GET", "/query", "POST")
    assert res.headers["allow"] == "POST"
    _assert_error(client.put("/items/i1"), 405, "PUT", "DELETE")
    _assert_error(client.post("/healthz"), 405, "POST", "/healthz")
    long = client.get("/" + "x" * 10_000)
    assert long.status_code == 404 and len(long.json()["error"]) < 300


def test_oversized_bodies_get_413_before_being_parsed(retriever, users):
    """Declared (Content-Length) or streamed (chunked, no length), a body over max_body_bytes is a
    413; the same body under a larger limit is parsed (a 400: too deep for Python's JSON parser,
    which raises RecursionError, not a 500)."""
    big = b"[" * 5000  # invalid JSON: only a 413 can come back without parsing it

    def chunks():
        for _ in range(5):
            yield b"[" * 1000

    with _client(retriever, max_body_bytes=4096) as c:
        _assert_error(c.post("/query", content=big, headers={"content-type": "application/json"}), 413,
                      "5000 bytes", "max_body_bytes=4096")
        _assert_error(c.post("/query", content=chunks()), 413, "max_body_bytes=4096")
        _assert_error(c.post("/items", content=big), 413, "max_body_bytes=4096")
        _assert_error(c.post("/query", content=b"{}", headers={"content-length": "a lot"}), 400, "Content-Length")
        ok = c.post("/query", json={"users": users[:1], "k": 3})
        assert ok.status_code == 200, ok.text
    with _client(retriever, max_body_bytes=8192) as c:
        _assert_error(c.post("/query", content=big), 400, "nests JSON arrays or objects too deeply")
        _assert_error(c.post("/query", content=chunks()), 400, "too deeply")
        _assert_error(c.post("/query", content=b"[" * 10), 400, "not valid JSON")


def test_request_limits_get_400_naming_the_limit(retriever, users):
    with _client(retriever, max_users=4, max_history=5, max_exclude=3, max_filter_chars=30) as c:
        _assert_error(c.post("/query", json={"users": users[:5]}), 400, '"users" has 5 users', "max_users=4")
        short = [dict(u, history=list(u["history"])[-5:]) for u in users[:4]]
        long_history = dict(users[0], history=list(users[0]["history"])[-6:])
        _assert_error(c.post("/query", json={"users": [short[1], long_history]}), 400, '"users[1].history" has 6 item ids',
                      "max_history=5")
        _assert_error(c.post("/query", json={"users": short[:1], "exclude": [["a", "b", "c", "d"]]}), 400,
                      '"exclude[0]" has 4 item ids', "max_exclude=3")
        _assert_error(c.post("/query", json={"users": short[:1], "filter": "language:en OR " * 3 + "language:de"}),
                      400, '"filter"', "max_filter_chars=30")
        fits = {"users": short, "exclude": [["a", "b", "c"]] * 4, "filter": "language:en"}
        assert c.post("/query", json=fits).status_code == 200


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_body_bytes must be a positive integer"):
        ServingLimits(max_body_bytes=0)
    with pytest.raises(ValueError, match="max_users"):
        ServingLimits(max_users=True)


def test_unknown_excluded_ids_are_ignored_and_counted(client, retriever, users):
    """Unknown ids in `exclude` are not an error: the response counts them per user; known ids are
    still excluded (the answer equals the query without the unknown ids)."""
    reqs = users[:3]
    top = [rows[0]["item_id"] for rows in client.post("/query", json={"users": reqs}).json()["results"]]
    exclude = [["never-published", top[0], "gone-1"], [top[1]], []]
    res = client.post("/query", json={"users": reqs, "exclude": exclude})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["ignored_exclusions"] == [2, 0, 0]
    for b in range(3):
        assert top[b] not in {r["item_id"] for r in body["results"][b]} or b == 2
    want = retriever.query(reqs, exclude=[[top[0]], [top[1]], []])
    assert [[r["item_id"] for r in rows] for rows in body["results"]] == [[x[0] for x in rows] for rows in want]
    assert client.post("/query", json={"users": reqs[:1]}).json()["ignored_exclusions"] == [0]
    # Retriever.query ignores them too (it has no place to report the count)
    assert [x[0] for x in retriever.query(reqs[:1], exclude=[["never-published", top[0]]])[0]] == \
        [x[0] for x in want[0]]
    _assert_error(client.post("/query", json={"users": reqs[:1], "exclude": [[1.5]]}), 400, "exclude[0][0]")


def test_unknown_and_differently_cased_values_match_nothing(client, users):
    """As documented (docs/bloom.md): values are exact strings, so 'EN' is not 'en'; a value no
    item holds matches nothing and its NOT everything. Feature names are exact too, and an
    unknown feature is a 400 naming it."""
    reqs = users[:2]

    def ids(filter_):
        res = client.post("/query", json={"users": reqs, "filter": filter_})
        assert res.status_code == 200, res.text
        return [[r["item_id"] for r in rows] for rows in res.json()["results"]]

    assert ids("language:EN") == [[], []] and ids("language:no-such-language") == [[], []]
    assert ids("NOT language:EN") == ids("")
    assert all(rows for rows in ids("language:en"))
    _assert_error(client.post("/query", json={"users": reqs, "filter": "Language:en"}), 400, "unknown feature 'Language'")
    assert "case-sensitive" in client.get("/schema").json()["filter_syntax"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status_line(sock: socket.socket) -> str:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode()


def test_uvicorn_answers_413_without_reading_the_body(retriever):
    """Over a real socket on loopback: a request declaring a 100 MB body gets its 413 at once,
    without the client sending any of it; a chunked body is cut off at the limit."""
    port = _free_port()
    app = ServingApp(retriever, ServerConfig(limits=ServingLimits(max_body_bytes=1 << 16))).app
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /query HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000000\r\n\r\n")
            t0 = time.perf_counter()
            assert _status_line(sock).startswith("HTTP/1.1 413")
            assert time.perf_counter() - t0 < 5
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /query HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"[" * 8192
            try:
                for _ in range(16):  # 128 KB, twice the limit
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass  # the server may close the connection once it has answered
            assert _status_line(sock).startswith("HTTP/1.1 413")
    finally:
        server.should_exit = True
        thread.join(30)
