"""``silverrec-serve``: an exported serving graph as an HTTP JSON service (Starlette + uvicorn).

    silverrec-serve --model runs/demo/serving.pt2 [--host 127.0.0.1] [--port 8000]
                    [--max-batch 64] [--max-wait-ms 2] [--max-queue 1024]
                    [--max-body-bytes N] [--max-users N] [--max-history N] [--max-exclude N]
                    [--max-filter-chars N] [--bulk-users N] [--workers N]

Endpoints:

* ``POST /query`` ``{"users": [{feature: value(s), "history": [item ids]}], "filter": "..." or
  [one per user], "exclude": [[item ids] per user], "k": 10}`` ->
  ``{"results": [[{"item_id", "value", "tasks": {task: score}}] per user], "version": ...,
  "ignored_exclusions": [n per user]}`` (excluded ids the index does not know are ignored and
  counted, not an error);
* ``GET /schema``: user features (vocabulary sizes, example values), item attributes, tasks, the
  value formula, a valid ``example_request`` and ``example_item``, and ``fresh_values``: the
  filter values first seen in ``POST /items`` (or the updates file) that items hold now,
  filterable at once until a compaction folds them into the main index;
* ``POST /items`` (one ``{"item_id", "attributes": {feature: [values]}}`` or a list of them: add
  or update), ``DELETE /items/{item_id}``;
* ``GET /healthz``; ``GET /metrics`` (Prometheus text format).

The event loop only reads bodies and writes answers: parsing, validation and encoding of a
``/query`` (a bad one gets a 400 naming the field), decoding its results and rendering the JSON
run in a small pool of worker threads (``--workers``), the forward in the batching thread, where
concurrent requests are micro-batched into one forward and a large request is split into chunks
served beside the others (:mod:`silverrec.serve.batching`); a full queue answers 503. So
``/healthz`` answers at once while the largest request the limits allow is parsed or served. Every error, 404 and 405 included, is ``{"error": message, "status": code}``. The
per-request limits (:class:`~silverrec.serve.limits.ServingLimits`) are checked before the work
they bound: a body over ``max_body_bytes`` gets a 413 before it is read in full; too many users,
history or exclusion ids, or too long a filter, a 400 naming the limit. The server binds to
127.0.0.1 unless told otherwise.
"""
import argparse
import asyncio
import collections
import contextlib
import json
import logging
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from torch import Tensor

from silverrec.retrieval.filter_expr import excerpt
from silverrec.retrieval.fresh_terms import Pair
from silverrec.schema import HISTORY
from silverrec.serve.batching import BatchingConfig, BatchStats, EncodedQuery, MicroBatcher, Outputs, QueueFull
from silverrec.serve.device import resolve_device
from silverrec.serve.limits import ServingLimits
from silverrec.serve.retriever import Retriever

log = logging.getLogger("silverrec.serve")

_QUERY_FIELDS = ("users", "filter", "exclude", "k")
_ITEM_FIELDS = ("item_id", "attributes")
_SIMPLE_VALUE = re.compile(r"[A-Za-z0-9_.\-]+\Z")
_MAX_MESSAGE = 1024  # an error message is cut there: it must never echo a large part of a request
_ENDPOINTS = "POST /query, GET /schema, POST /items, DELETE /items/{item_id}, GET /healthz, GET /metrics"


class BadRequest(ValueError):
    """A request the client must fix: answered with 400 and this message."""


class PayloadTooLarge(ValueError):
    """A request body over ``max_body_bytes``: answered with 413 and this message."""


@dataclass
class ServerConfig:
    """Settings of the HTTP service.

    Args:
        batching (BatchingConfig): micro-batching (max batch, max wait, queue bound).
        limits (ServingLimits): per-request limits (body size, users, history, exclusions, filter).
        examples (int): example values listed per feature by ``/schema``.
        workers (int): threads that parse, validate and encode requests and render answers, off
            the event loop.
    """

    batching: BatchingConfig = field(default_factory=BatchingConfig)
    limits: ServingLimits = field(default_factory=ServingLimits)
    examples: int = 5
    workers: int = 4

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"ServerConfig.workers must be >= 1, got {self.workers}")


class ServingMetrics:
    """The service's Prometheus metrics, in a registry of its own (one per app).

    Args:
        max_batch (int): the largest batch (sets the batch-size histogram's buckets).
        window_s (float): the sliding window of the ``queries_per_second`` gauge.
    """

    def __init__(self, max_batch: int, window_s: float = 10.0) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        latency = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024} & set(range(1, 2 * max_batch)) | {max_batch})
        self.requests = Counter("silverrec_http_requests", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("silverrec_http_request_duration_seconds", "HTTP request latency (handler entry to "
                                 "response) by endpoint", ["endpoint"], buckets=latency, registry=r)
        self.queries = Counter("silverrec_queries", "users answered by /query", registry=r)
        self.qps = Gauge("silverrec_queries_per_second", f"users answered per second over the last {window_s:g} s", registry=r)
        self.batch_size = Histogram("silverrec_batch_size", "users per forward of the serving graph", buckets=sizes, registry=r)
        self.batch_requests = Histogram("silverrec_batch_requests", "requests per forward of the serving graph",
                                        buckets=sizes, registry=r)
        self.forward = Histogram("silverrec_forward_duration_seconds", "time of one forward of the serving graph",
                                 buckets=latency, registry=r)
        self.queue_depth = Gauge("silverrec_queue_depth", "queries waiting for the batching worker", registry=r)
        self.index_version = Gauge("silverrec_index_version", "item index version (increments on every update)", registry=r)
        self.model = Gauge("silverrec_model_info", "the served model", ["version", "k", "tasks"], registry=r)
        self._window_s = window_s
        self._recent: Deque[Tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()
        self.qps.set_function(self._rate)

    def bind(self, queue_depth: Callable[[], float], index_version: Callable[[], float], model: Dict[str, str]) -> None:
        """Gauges read at scrape time, and the model's labels."""
        self.queue_depth.set_function(queue_depth)
        self.index_version.set_function(index_version)
        self.model.labels(**model).set(1)

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.users)
        self.batch_requests.observe(stats.requests)
        self.forward.observe(stats.seconds)

    def observe_queries(self, users: int) -> None:
        self.queries.inc(users)
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, users))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - self._window_s:
            self._recent.popleft()

    def _rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            return sum(n for _, n in self._recent) / self._window_s

    def render(self) -> Tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ServingApp:
    """The service: a :class:`Retriever`, its micro-batcher, metrics and the Starlette routes.

    Args:
        retriever (Retriever): the loaded serving graph.
        config (ServerConfig): service settings.

    Example::

        >>> server = ServingApp(Retriever("runs/demo/serving.pt2"), ServerConfig())   # doctest: +SKIP
        >>> uvicorn.run(server.app, host="127.0.0.1", port=8000)                      # doctest: +SKIP
    """

    def __init__(self, retriever: Retriever, config: ServerConfig) -> None:
        self.retriever = retriever
        self.config = config
        self.metrics = ServingMetrics(max_batch=config.batching.max_batch)
        self.batcher = MicroBatcher(self._search, config.batching, on_batch=self.metrics.observe_batch)
        self.metrics.bind(queue_depth=lambda: self.batcher.queue_depth, index_version=lambda: self.retriever.index_version,
                          model={"version": retriever.version, "k": str(retriever.k), "tasks": ",".join(retriever.tasks)})
        self._schema = describe_schema(retriever, config.examples)
        routes = [
            Route("/query", self._wrap("/query", self.query), methods=["POST"]),
            Route("/schema", self._wrap("/schema", self.schema), methods=["GET"]),
            Route("/items", self._wrap("/items", self.upsert), methods=["POST"]),
            Route("/items/{item_id:path}", self._wrap("/items/{item_id}", self.delete), methods=["DELETE"]),
            Route("/healthz", self._wrap("/healthz", self.healthz), methods=["GET"]),
            Route("/metrics", self._wrap("/metrics", self.prometheus), methods=["GET"]),
        ]
        # routing's own 404 and 405 answer in the same JSON shape as every other error
        self.app = Starlette(routes=routes, lifespan=self._lifespan, exception_handlers={HTTPException: self._no_route})
        # no 307 from "/query/" to "/query" (an empty plain answer, its Location built from the
        # Host header): a path that is not an endpoint is a JSON 404 listing the endpoints
        self.app.router.redirect_slashes = False
        self.app.state.server = self
        self._pool: Optional[ThreadPoolExecutor] = None

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette):
        self._pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="silverrec-http")
        self.batcher.start()
        try:
            yield
        finally:
            self.batcher.stop()
            self._pool.shutdown(wait=False)

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker thread (the event loop stays free for other requests)."""
        if self._pool is None:  # an app used without its lifespan (its batcher is not running either)
            self._pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="silverrec-http")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _wrap(self, name: str, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """Maps errors to status codes and records count and latency under the route's name."""

        async def endpoint(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                response = await handler(request)
            except BadRequest as err:
                response = _error(400, str(err))
            except PayloadTooLarge as err:
                response = _error(413, str(err))
            except QueueFull as err:
                response = _error(503, str(err), {"Retry-After": "1"})
            except Exception as err:  # a bug or a failed forward: 500, logged with its traceback
                log.exception("%s %s failed", request.method, name)
                response = _error(500, f"internal error: {type(err).__name__}: {err}")
            self.metrics.observe_request(name, request.method, response.status_code, time.perf_counter() - t0)
            return response

        return endpoint

    async def _no_route(self, request: Request, exc: Exception) -> Response:
        """404 (no such path) and 405 (a path without that method) as JSON errors."""
        assert isinstance(exc, HTTPException)
        path = request.url.path if len(request.url.path) <= 80 else request.url.path[:80] + "..."
        if exc.status_code == 404:
            message = f"no endpoint {request.method} {path}; the endpoints are {_ENDPOINTS}"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"method {request.method} is not allowed on {path}; allowed: {allowed}"
        else:
            message = str(exc.detail)
        self.metrics.observe_request("(no route)", request.method, exc.status_code, 0.0)
        return _error(exc.status_code, message, dict(exc.headers or {}) or None)

    # -- endpoints -------------------------------------------------------------------------

    async def query(self, request: Request) -> Response:
        raw = await _read_body(request, self.config.limits.max_body_bytes)
        users, filters, exclude, k, query, ignored, unknown = await self._off_loop(self._prepare_query, raw)
        while True:
            try:
                future = self.batcher.submit(query)
            except QueueFull:
                raise
            except RuntimeError as err:  # the worker is not running (shutting down)
                return _error(503, str(err))
            outputs = await asyncio.wrap_future(future)  # one per chunk of the request
            # The filter was compiled against the snapshot of its encoding, the forward ran on a
            # later one: if a value the filter named was unknown then and is a fresh value now (an
            # item holding it was added in between), the plan's FALSE / TRUE for it is stale (a NOT
            # would let that item through). Compile again; slots are append-only, so this ends.
            # Likewise an excluded id the encoding did not know (so dropped) may name an item added
            # before the forward ran: encode again, or the forward could return it. The id map only
            # grows, so this ends too.
            stale_filter = bool(unknown) and any(o[4].fresh_terms.knows_any(unknown) for o in outputs)
            if not (stale_filter or (any(ignored) and self._exclusions_known_now(exclude, ignored, outputs))):
                break
            unknown = set()
            query, ignored = await self._off_loop(self._encode, users, filters, exclude, unknown)
        self.metrics.observe_queries(query.batch)
        body = await self._off_loop(self._render, outputs, k, ignored)
        return Response(body, media_type="application/json")

    def _prepare_query(self, raw: bytes) -> Tuple[List[Dict[str, Any]], Any, Optional[List[Any]], int, EncodedQuery,
                                                  List[int], Set[Pair]]:
        """Parse, validate and encode a ``/query`` body (in a worker thread)."""
        users, filters, exclude, k = self._validate_query(_parse_json(raw))
        unknown: Set[Pair] = set()
        query, ignored = self._encode(users, filters, exclude, unknown)
        return users, filters, exclude, k, query, ignored, unknown

    def _exclusions_known_now(self, exclude: Optional[List[Any]], ignored: List[int], outputs: List[Outputs]) -> bool:
        """Whether an excluded id that was ignored at encoding (unknown then) is known to the
        snapshot a forward ran on (an item added in between)."""
        extra_ids = outputs[-1][4].extra_ids  # shared and append-only: the newest view
        now = self.retriever.encoder.exclusions(exclude, len(ignored), extra_ids).ignored
        return now != ignored

    def _render(self, outputs: List[Outputs], k: int, ignored: List[int]) -> bytes:
        """The ``/query`` answer as JSON bytes (in a worker thread). Rendered user by user: one
        ``json.dumps`` of a 1,024-user answer would hold the GIL, and so the event loop, for a
        long stretch at once."""
        users = [_dumps(rows) for chunk in outputs for rows in self._decode(chunk, k)]
        return ('{"results":[' + ",".join(users) + '],"version":' + _dumps(self.retriever.version)
                + ',"ignored_exclusions":' + _dumps(ignored) + "}").encode("utf-8")

    async def schema(self, request: Request) -> Response:
        return JSONResponse({**self._schema, "fresh_values": self.retriever.fresh_values()})

    async def upsert(self, request: Request) -> Response:
        raw = await _read_body(request, self.config.limits.max_body_bytes)
        items = await self._off_loop(lambda: _validate_items(_parse_json(raw, array=True)))
        try:
            await self._off_loop(self.retriever.upsert_items, items)
        except ValueError as err:
            raise BadRequest(str(err)) from err
        except OSError as err:  # persisting failed (e.g. a full disk): nothing was applied
            return _error(503, f"the update was not applied: persisting it failed: {err}", {"Retry-After": "1"})
        return JSONResponse({"upserted": len(items), "index_version": self.retriever.index_version})

    async def delete(self, request: Request) -> Response:
        item_id = request.path_params["item_id"]
        try:
            deleted = await self._off_loop(self.retriever.delete_items, [item_id])
        except OSError as err:
            return _error(503, f"the delete was not applied: persisting it failed: {err}", {"Retry-After": "1"})
        if deleted == 0:
            return _error(404, f"item_id {item_id!r} is not in the index")
        return JSONResponse({"deleted": int(deleted), "index_version": self.retriever.index_version})

    async def healthz(self, request: Request) -> Response:
        ok = self.batcher.alive
        return JSONResponse({"status": "ok" if ok else "batching worker not running", "version": self.retriever.version,
                             "index_version": self.retriever.index_version, "queue_depth": self.batcher.queue_depth},
                            status_code=200 if ok else 503)

    async def prometheus(self, request: Request) -> Response:
        text, content_type = self.metrics.render()
        return Response(text, media_type=content_type)

    # -- request handling ------------------------------------------------------------------

    def _validate_query(self, body: Any) -> Tuple[List[Dict[str, Any]], Any, Optional[List[Any]], int]:
        if not isinstance(body, dict):
            raise BadRequest(f"the request body must be a JSON object with {list(_QUERY_FIELDS)}, got {type(body).__name__}")
        unknown = sorted(set(body) - set(_QUERY_FIELDS))
        if unknown:
            raise BadRequest(f"unknown field(s) {unknown}; a query has {list(_QUERY_FIELDS)}")
        if "users" not in body:
            raise BadRequest('missing field "users": a list of {feature: value(s)} objects, one per user')
        users = body["users"]
        if not isinstance(users, list) or not users:
            raise BadRequest(f'"users" must be a non-empty list of objects, got {_kind(users)}')
        limits = self.config.limits
        if len(users) > limits.max_users:
            raise BadRequest(f'"users" has {len(users)} users, more than max_users={limits.max_users} per request')
        for b, u in enumerate(users):
            if not isinstance(u, dict):
                raise BadRequest(f'"users[{b}]" must be an object of feature -> value(s), got {_kind(u)}')
            history = u.get(HISTORY)
            if isinstance(history, list) and len(history) > limits.max_history:
                raise BadRequest(f'"users[{b}].{HISTORY}" has {len(history)} item ids, more than '
                                 f'max_history={limits.max_history} (the latest are the ones used)')
        filters = body.get("filter")
        if isinstance(filters, list):
            if len(filters) != len(users):
                raise BadRequest(f'"filter" has {len(filters)} expressions for {len(users)} users: give one per user or one string for all')
            for b, f in enumerate(filters):
                if f is not None and not isinstance(f, str):
                    raise BadRequest(f'"filter[{b}]" must be a string or null, got {_kind(f)}')
                _check_filter_length(f, f"filter[{b}]", limits.max_filter_chars)
        elif filters is not None and not isinstance(filters, str):
            raise BadRequest(f'"filter" must be a string, a list of strings (one per user) or null, got {_kind(filters)}')
        else:
            _check_filter_length(filters, "filter", limits.max_filter_chars)
        exclude = body.get("exclude")
        if exclude is not None:
            if not isinstance(exclude, list) or len(exclude) != len(users):
                raise BadRequest(f'"exclude" must be a list of {len(users)} lists of item ids (one per user), got {_kind(exclude)}')
            for b, e in enumerate(exclude):
                if e is not None and not isinstance(e, list):
                    raise BadRequest(f'"exclude[{b}]" must be a list of item ids, got {_kind(e)}')
                if e is not None and len(e) > limits.max_exclude:
                    raise BadRequest(f'"exclude[{b}]" has {len(e)} item ids, more than max_exclude={limits.max_exclude}')
        k = body.get("k")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.retriever.k):
            raise BadRequest(f'"k" must be an integer in [1, {self.retriever.k}], got {k!r}')
        return users, filters, exclude, (self.retriever.k if k is None else k)

    def _search(self, *inputs: Tensor) -> Outputs:
        """One forward over a micro-batch against one snapshot of the item updates; returns the
        graph outputs and that snapshot (its id -> external id map decodes the ids)."""
        snap = self.retriever.snapshot  # one consistent view of the item updates for the whole batch
        return (*self.retriever.search(*inputs, fresh=snap.fresh), snap)

    def _encode(self, users: List[Dict[str, Any]], filters: Any, exclude: Optional[List[Any]],
                unknown: Optional[Set[Pair]] = None) -> Tuple[EncodedQuery, List[int]]:
        """The graph inputs of a validated query, and per user the count of ignored (unknown)
        excluded ids; ``unknown`` receives the filter values that matched no term (see ``query``)."""
        enc, b = self.retriever.encoder, len(users)
        snap = self.retriever.snapshot
        extra_ids = snap.extra_ids  # ids of items added after publish (append-only)
        max_chars = self.config.limits.max_filter_chars
        parts: List[Tensor] = []
        ignored: List[int] = []

        def exclusions() -> Tuple[Tensor]:
            ids, counts = enc.exclusions(exclude, b, extra_ids)
            ignored.extend(counts)
            return (ids,)

        for name, fn in (("users", lambda: (enc.users(users),)), ("filter", lambda: enc.filters(filters, b, max_chars, snap.fresh_terms, unknown)),
                         ("exclude", exclusions)):
            try:
                parts.extend(fn())
            except ValueError as err:
                msg = str(err)
                raise BadRequest(msg if msg.startswith(name) else f'"{name}": {msg}') from err
        return EncodedQuery(*parts), ignored

    def _decode(self, outputs: Outputs, k: int) -> List[List[Dict[str, Any]]]:
        ids, value, scores, num_valid = (t.tolist() for t in outputs[:4])
        vocab, tasks = outputs[4].external, self.retriever.tasks
        return [
            [{"item_id": vocab[ids[b][j]], "value": value[b][j], "tasks": dict(zip(tasks, scores[b][j]))}
             for j in range(min(k, num_valid[b]))]
            for b in range(len(num_valid))
        ]


def describe_schema(retriever: Retriever, examples: int) -> Dict[str, Any]:
    """The ``/schema`` document: features, attributes, tasks, formula and valid examples."""
    schema, meta = retriever.schema, retriever.metadata
    item_ids = schema.item_ids
    user_features = [
        {"name": f.name, "vocab_size": f.num_embeddings, "max_values": f.max_length, "examples": list(f.vocab[:examples])}
        for f in schema.user_features
    ]
    user_features.append({"name": HISTORY, "vocab_size": len(item_ids), "max_values": schema.history_length,
                          "examples": list(item_ids[:examples]), "note": "item ids, oldest first; the latest are kept"})
    attributes = [
        {"name": f.name, "vocab_size": f.num_embeddings, "max_values": f.max_length, "filterable": f.filterable,
         "examples": list(f.vocab[:examples])}
        for f in schema.item_features[1:]
    ]
    user = {f.name: (list(f.vocab[:1]) if f.max_length > 1 else f.vocab[0]) for f in schema.user_features}
    user[HISTORY] = list(item_ids[: min(3, len(item_ids))])
    terms = [tuple(t) for t in meta["filter"]["terms"]]
    example_filter = _term(*terms[0]) if terms else ""
    if len(terms) > 1:
        example_filter = f"{example_filter} OR {_term(*terms[1])}"
    fresh_id = next(f"new-item-{i}" for i in range(len(item_ids) + 1) if f"new-item-{i}" not in set(item_ids))
    return {
        "version": retriever.version,
        "k": retriever.k,
        "num_items": int(meta["num_items"]),
        "user_features": user_features,
        "item_attributes": attributes,
        "tasks": list(retriever.tasks),
        "value_formula": meta.get("value_formula"),
        "filter_syntax": "feature:value terms with AND, OR, NOT and parentheses, e.g. "
                         "\"language:en AND NOT (category:music OR creator:7)\"; quote values with spaces; "
                         "values are exact, case-sensitive strings; values first seen in POST /items are "
                         "filterable at once (fresh_values); a value no item holds matches nothing "
                         "(its NOT matches everything)",
        "example_request": {"users": [user], "filter": example_filter,
                            "exclude": [list(item_ids[3:4])], "k": min(10, retriever.k)},
        "example_item": {"item_id": fresh_id,
                         "attributes": {f.name: list(f.vocab[:1]) for f in schema.item_features[1:]}},
    }


def _term(feature: str, value: str) -> str:
    return f"{feature}:{value}" if _SIMPLE_VALUE.match(value) else f"{feature}:'{value}'"


def _validate_items(body: Any) -> List[Dict[str, Any]]:
    items = body if isinstance(body, list) else [body]
    if not items:
        raise BadRequest("the request body is an empty list: give one item object or a list of them")
    out = []
    for n, item in enumerate(items):
        where = f"items[{n}]" if isinstance(body, list) else "the item"
        if not isinstance(item, dict):
            raise BadRequest(f'{where} must be an object {{"item_id": .., "attributes": {{feature: [values]}}}}, got {_kind(item)}')
        unknown = sorted(set(item) - set(_ITEM_FIELDS))
        if unknown:
            raise BadRequest(f"{where}: unknown field(s) {unknown}; an item has {list(_ITEM_FIELDS)}")
        item_id = item.get("item_id")
        if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or item_id == "":
            raise BadRequest(f'{where}: "item_id" must be a non-empty string or an integer, got {item_id!r}')
        attributes = item.get("attributes", {})
        if not isinstance(attributes, dict):
            raise BadRequest(f'{where}: "attributes" must be an object of feature -> [values], got {_kind(attributes)}')
        clean: Dict[str, List[Any]] = {}
        for name, values in attributes.items():
            values = values if isinstance(values, list) else [values]
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (str, int)):
                    raise BadRequest(f'{where}: "attributes.{name}" values must be strings or integers, got {v!r}')
            clean[name] = values
        out.append({"item_id": str(item_id), "attributes": clean})
    return out


def _check_filter_length(text: Optional[str], where: str, max_chars: int) -> None:
    """A 400 naming ``max_filter_chars`` for a filter over it, before anything parses it."""
    if text is not None and len(text) > max_chars:
        raise BadRequest(f'"{where}" has {len(text)} characters, more than max_filter_chars={max_chars}: '
                         f'{excerpt(text)}')


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with :class:`PayloadTooLarge` as soon as it is known to be over
    ``max_bytes``: from ``Content-Length`` before reading any of it, else (a chunked body) at the
    first chunk past the limit, so an oversized body is never buffered whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(f"the Content-Length header must be a number of bytes, got {declared[:40]!r}")
        if int(declared) > max_bytes:
            raise PayloadTooLarge(f"the request body has {int(declared)} bytes, more than max_body_bytes={max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"the request body is over max_body_bytes={max_bytes} (stopped reading at {size} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(raw: bytes, array: bool = False) -> Any:
    if not raw:
        raise BadRequest("the request body is empty: send a JSON " + ("object or list" if array else "object"))
    try:
        return json.loads(raw)
    except ValueError as err:
        raise BadRequest(f"the request body is not valid JSON: {err}") from err
    except RecursionError as err:  # json recurses per nested array/object: "[" * 5000 is no reason for a 500
        raise BadRequest("the request body nests JSON arrays or objects too deeply to be read") from err


def _dumps(x: Any) -> str:
    """JSON text as Starlette's ``JSONResponse`` writes it."""
    return json.dumps(x, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


def _kind(x: Any) -> str:
    return "null" if x is None else type(x).__name__


def _error(status: int, message: str, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    if len(message) > _MAX_MESSAGE:  # a last guard: messages quote excerpts, but never echo a whole request
        message = f"{message[:_MAX_MESSAGE]}... (message cut at {_MAX_MESSAGE} of {len(message)} characters)"
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def create_app(model: str, config: Optional[ServerConfig] = None) -> Starlette:
    """Loads ``model`` (a ``.pt2`` from ``silverrec-export``) and returns the ASGI app."""
    return ServingApp(Retriever(model), config or ServerConfig()).app


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="silverrec-serve", description="Serve an exported silverrec graph over HTTP (JSON).")
    p.add_argument("--model", required=True, help="the .pt2 file written by silverrec-export")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (default 8000; 0: a free one, named in the log)")
    p.add_argument("--updates", default=None,
                   help="JSON snapshot file where item updates are persisted, with a write-ahead log FILE.log beside it "
                        "(each update fsynced before it is applied and answered), replayed on start (default: in memory "
                        "only); fold them into a new export with silverrec-export base=MODEL updates=FILE")
    p.add_argument("--max-batch", type=int, default=64, help="most users per forward (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="longest wait for a batch to fill (default 2 ms)")
    p.add_argument("--max-queue", type=int, default=1024, help="most queued requests before answering 503 (default 1024)")
    p.add_argument("--bulk-users", type=int, default=0,
                   help="a /query of more users is split into chunks of this many, one per forward beside the other "
                        "requests (default: max-batch / 2)")
    p.add_argument("--workers", type=int, default=4,
                   help="threads that parse, encode and render requests off the event loop (default 4)")
    d = ServingLimits()
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                   help=f"largest request body; more is a 413 (default {d.max_body_bytes})")
    p.add_argument("--max-users", type=int, default=d.max_users, help=f"most users in one /query request (default {d.max_users})")
    p.add_argument("--max-history", type=int, default=d.max_history,
                   help=f"most item ids in one user's history (default {d.max_history})")
    p.add_argument("--max-exclude", type=int, default=d.max_exclude,
                   help=f"most item ids in one user's exclude list (default {d.max_exclude})")
    p.add_argument("--max-filter-chars", type=int, default=d.max_filter_chars,
                   help=f"most characters of one filter expression (default {d.max_filter_chars})")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--backend", choices=("auto", "aoti", "export"), default="auto",
                   help="auto (default): the AOTInductor graph when the file holds one that runs here, else the torch.export program")
    p.add_argument("--device", default="cpu",
                   help="cpu (default) or cuda: where the graph runs (an export from another device is moved there)")
    p.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs throughput)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    import torch
    import uvicorn

    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        limits = ServingLimits(args.max_body_bytes, args.max_users, args.max_history, args.max_exclude, args.max_filter_chars)
    except ValueError as err:  # a bad option: one line naming it, not a traceback
        raise SystemExit(f"silverrec-serve: {err}") from None
    try:
        config = ServerConfig(BatchingConfig(args.max_batch, args.max_wait_ms, args.max_queue, args.bulk_users), limits,
                              workers=args.workers)
        resolve_device(args.device, "--device")
    except ValueError as err:  # e.g. "--device='cuda': CUDA is not available on this machine ..."
        raise SystemExit(f"silverrec-serve: {err}") from None
    server = ServingApp(Retriever(args.model, updates_path=args.updates, backend=args.backend, device=args.device), config)
    r = server.retriever
    checked = r.integrity.describe() if r.integrity is not None else "no checksums recorded, not verified"
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))  # bound here, so that --port 0 can name the port it got
    except OSError as err:
        raise SystemExit(f"silverrec-serve: cannot bind {args.host}:{args.port}: {err}") from None
    args.port = sock.getsockname()[1]
    log.info("silverrec-serve: model %s version %s (%s on %s; %s) K=%d tasks=%s on http://%s:%d (max_batch=%d max_wait_ms=%g "
             "max_queue=%d)", args.model, r.version, r.backend, r.device, checked, r.k, ",".join(r.tasks), args.host, args.port,
             args.max_batch, args.max_wait_ms, args.max_queue)
    uv = uvicorn.Server(uvicorn.Config(server.app, host=args.host, port=args.port, log_level="warning",
                                       access_log=args.access_log))
    uv.run(sockets=[sock])


if __name__ == "__main__":
    main()
