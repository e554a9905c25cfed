"""Dynamic micro-batching: concurrent queries -> forwards of the serving graph, no request stalling the others.

Requests are encoded by their callers (so a bad request fails alone, before it is queued) and
put on a bounded queue. One worker thread takes the oldest request, waits at most ``max_wait_ms``
(counted from that request's arrival) for more, concatenates up to ``max_batch`` users into one
call of ``search`` (``Retriever.search``), and hands each request its own rows of the outputs::

    request 1: users [2, S] ─┐                                   ┌─► rows 0..1
    request 2: users [1, S] ─┼─► cat ─► search([5, S], ...) ─► split ─► row 2
    request 3: users [2, S] ─┘                                   └─► rows 3..4

Each request keeps its own filter and exclusions (the graph takes one filter plan and one
exclusion row per user), so requests with different filters, exclusions and k share a forward.

No request holds the others behind it for long:

* **Large requests are split.** A request of more than ``bulk_users`` users is cut into chunks of
  ``bulk_users`` users, queued in a separate *bulk* lane. Every forward takes at most one bulk
  chunk (round robin over the large requests waiting) and fills the rest of its ``max_batch``
  users with small requests, oldest first; so a small request waits for about one forward, not
  for a 1,024-user request to finish, and a large request still advances at every forward. Its
  future resolves once all its chunks are served.
* **Exclusions are not padded to the widest of unrelated requests.** A forward takes one
  exclusion row per user, as wide as its widest list; a request is batched only with requests
  whose widest list is within a factor of :data:`EXCLUDE_RATIO` of its own (any widths up to
  :data:`EXCLUDE_FREE` mix freely), so one user excluding 10,000 ids is served with similar
  requests or alone, not padding 63 others to 10,000 columns. A chunk of a large request is
  trimmed to its own widest list.

    >>> batcher = MicroBatcher(retriever.search, BatchingConfig(max_batch=64))   # doctest: +SKIP
    >>> batcher.start()                                                        # doctest: +SKIP
    >>> [(ids, value, scores, num_valid)] = batcher.submit(query).result()     # doctest: +SKIP
"""
import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Deque, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

log = logging.getLogger(__name__)

# ids [B, K], value [B, K], task_scores [B, K, T], num_valid [B], then anything else `search` returns
# for the whole batch (e.g. the id -> external id map it used), passed to every request as is
Outputs = Tuple[Any, ...]

EXCLUDE_FREE = 256  # exclusion rows up to this wide are batched together whatever their widths
EXCLUDE_RATIO = 4  # wider ones only with requests within this factor of their width


class QueueFull(RuntimeError):
    """The request queue holds ``max_queue`` requests: the caller should retry later (HTTP 503)."""


@dataclass
class BatchingConfig:
    """Micro-batching settings.

    Args:
        max_batch (int): most users in one forward.
        max_wait_ms (float): longest time the oldest queued request waits for others to join it.
        max_queue (int): most requests waiting for the worker; one more is refused (``QueueFull``).
        bulk_users (int): a request with more users is split into chunks of this many, served one
            chunk per forward beside the small requests (0: ``max_batch // 2``, at least 1).
    """

    max_batch: int = 64
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    bulk_users: int = 0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if not 0 <= self.bulk_users <= self.max_batch:
            raise ValueError(f"bulk_users must be in [0, max_batch={self.max_batch}], got {self.bulk_users}")

    @property
    def chunk_users(self) -> int:
        """Users per chunk of a large request (``bulk_users`` or its default)."""
        return self.bulk_users or max(1, self.max_batch // 2)


class EncodedQuery(NamedTuple):
    """One request's graph inputs (``RequestEncoder`` outputs) for its B users."""

    user_ids: Tensor  # int64 [B, S]
    opcodes: Tensor  # int64 [B, L]
    terms: Tensor  # int64 [B, L]
    hashes: Tensor  # int64 [B, L, H]
    exclude: Tensor  # int64 [B, E], -1 padding

    @property
    def batch(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def width(self) -> int:
        """E, the exclusion row width."""
        return int(self.exclude.shape[1])


@dataclass
class BatchStats:
    """What one forward served (for metrics)."""

    users: int
    requests: int
    seconds: float


class _Request:
    """One submitted request: its chunks (one for a small request) and their outputs so far."""

    def __init__(self, chunks: List[EncodedQuery], future: Future, arrived: float) -> None:
        self.chunks = chunks
        self.future = future
        self.arrived = arrived  # time.monotonic()
        self.outputs: List[Optional[Outputs]] = [None] * len(chunks)
        self.next = 0  # the next chunk to serve
        self.left = len(chunks)  # chunks not served yet
        self.started = False
        self.failed = False


class _Chunk(NamedTuple):
    request: _Request
    index: int
    query: EncodedQuery


def split_query(query: EncodedQuery, users: int) -> List[EncodedQuery]:
    """``query`` cut into chunks of at most ``users`` users; each chunk's exclusion rows are
    trimmed to its own widest list (lists are left-aligned, -1 padding on the right)."""
    if query.batch <= users:
        return [query]
    chunks = []
    for start in range(0, query.batch, users):
        part = EncodedQuery(*(t[start : start + users] for t in query))
        width = max(1, int((part.exclude >= 0).sum(dim=1).max()))
        if width < part.width:
            part = part._replace(exclude=part.exclude[:, :width].contiguous())
        chunks.append(part)
    return chunks


def concat_queries(queries: List[EncodedQuery]) -> EncodedQuery:
    """Concatenates requests along the batch; exclusion lists are padded with -1 to the widest."""
    if len(queries) == 1:
        return queries[0]
    width = max(q.width for q in queries)
    exclude = [q.exclude if q.width == width else
               torch.nn.functional.pad(q.exclude, (0, width - q.width), value=-1) for q in queries]
    return EncodedQuery(*(torch.cat([getattr(q, f) for q in queries]) for f in EncodedQuery._fields[:4]),
                        torch.cat(exclude))


def widths_mix(lo: int, hi: int) -> bool:
    """Whether exclusion rows of widths ``lo <= hi`` may share a forward (see the module doc)."""
    return hi <= EXCLUDE_FREE or hi <= EXCLUDE_RATIO * lo


class MicroBatcher:
    """Queues encoded queries and serves them in micro-batches from one worker thread.

    Args:
        search (Callable[..., Outputs]): the graph on encoded inputs (``Retriever.search``); it is
            called only from the worker thread.
        config (BatchingConfig): batch size, wait, queue bounds and the chunk size of large requests.
        on_batch (Optional[Callable[[BatchStats], None]]): called after every forward.
    """

    _LOOKAHEAD = 64  # queued small requests examined for a place in the forward

    def __init__(self, search: Callable[..., Outputs], config: BatchingConfig,
                 on_batch: Optional[Callable[[BatchStats], None]] = None) -> None:
        self.search = search
        self.config = config
        self.on_batch = on_batch
        self._small: Deque[_Request] = collections.deque()  # one chunk each
        self._bulk: Deque[_Request] = collections.deque()  # split requests, served round robin
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the worker, a large request counted until its last chunk is taken
        (not counting the batch it is running)."""
        return len(self._small) + len(self._bulk)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.alive:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="silverrec-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the worker after the batch it is running; queued requests fail with RuntimeError."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._cond:
            pending = list(self._small) + list(self._bulk)
            self._small.clear()
            self._bulk.clear()
        for r in pending:
            if not r.future.done() and (r.started or r.future.set_running_or_notify_cancel()):
                r.future.set_exception(RuntimeError("the server is shutting down"))

    def submit(self, query: EncodedQuery) -> Future:
        """Queues one request. Its future resolves to a list of outputs of ``search``, one per
        chunk in user order (one for a request of at most ``bulk_users`` users): the chunk's rows
        of every tensor, other outputs as they are. Raises ``QueueFull`` when ``max_queue``
        requests are waiting."""
        future: Future = Future()
        chunks = split_query(query, self.config.chunk_users)
        request = _Request(chunks, future, time.monotonic())
        with self._cond:
            if self._stopping or not self.alive:
                raise RuntimeError("the batching worker is not running")
            if self.queue_depth >= self.config.max_queue:
                raise QueueFull(f"the query queue is full ({self.config.max_queue} requests waiting); retry later")
            (self._small if len(chunks) == 1 else self._bulk).append(request)
            self._cond.notify()
        return future

    def _start(self, request: _Request) -> bool:
        """Marks a request running when its first chunk is taken; False if its caller cancelled it."""
        if not request.started:
            if not request.future.set_running_or_notify_cancel():
                return False
            request.started = True
        return True

    def _take_bulk(self) -> Optional[_Chunk]:
        """The next chunk of the large requests, round robin (called with the lock held)."""
        while self._bulk:
            request = self._bulk.popleft()
            if request.failed or not self._start(request):
                continue
            i = request.next
            request.next += 1
            if request.next < len(request.chunks):
                self._bulk.append(request)  # its next chunk after the other large requests' ones
            return _Chunk(request, i, request.chunks[i])
        return None

    def _take_small(self, users: int, lo: int, hi: int) -> Optional[_Chunk]:
        """The oldest queued small request that fits beside ``users`` users with exclusion widths
        in [lo, hi] (lo > hi: an empty batch), or None (called with the lock held)."""
        room = self.config.max_batch - users
        for j, request in enumerate(self._small):
            if j >= self._LOOKAHEAD:
                break
            q = request.chunks[0]
            if q.batch > room or (lo <= hi and not widths_mix(min(lo, q.width), max(hi, q.width))):
                continue
            del self._small[j]
            if not self._start(request):  # cancelled: drop it and look again
                return self._take_small(users, lo, hi)
            return _Chunk(request, 0, q)
        return None

    def _next_batch(self) -> List[_Chunk]:
        """Blocks for work, then takes one bulk chunk (if any) and the small requests that fit,
        waiting for more until max_batch users or the oldest one's deadline."""
        wait = self.config.max_wait_ms / 1000.0
        with self._cond:
            while not self._small and not self._bulk and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return []
            batch: List[_Chunk] = []
            first = self._take_bulk()
            if first is None:
                first = self._take_small(0, 1, 0)
            if first is None:  # everything queued was cancelled
                return []
            batch.append(first)
            users, lo, hi = first.query.batch, first.query.width, first.query.width
            deadline = first.request.arrived + wait
            while users < self.config.max_batch:
                chunk = self._take_small(users, lo, hi)
                if chunk is not None:
                    batch.append(chunk)
                    users += chunk.query.batch
                    lo, hi = min(lo, chunk.query.width), max(hi, chunk.query.width)
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping:
                    break
                self._cond.wait(left)
        return batch

    def _run(self) -> None:
        while not self._stopping:
            batch = self._next_batch()
            if batch:
                self._serve(batch)

    def _serve(self, batch: List[_Chunk]) -> None:
        t0 = time.perf_counter()
        try:
            outputs = self.search(*concat_queries([c.query for c in batch]))
        except Exception as err:  # every request of the batch gets the error
            log.exception("search failed for a batch of %d request(s)", len(batch))
            for c in batch:
                self._fail(c.request, err)
            return
        seconds = time.perf_counter() - t0
        start = 0
        for c in batch:
            b = c.query.batch
            r = c.request
            r.outputs[c.index] = tuple(t[start : start + b] if isinstance(t, Tensor) else t for t in outputs)
            start += b
            r.left -= 1
            if r.left == 0 and not r.failed:
                r.future.set_result(r.outputs)
        if self.on_batch is not None:
            self.on_batch(BatchStats(users=start, requests=len(batch), seconds=seconds))

    def _fail(self, request: _Request, err: Exception) -> None:
        if not request.failed:
            request.failed = True  # its chunks still queued are dropped by _take_bulk
            request.future.set_exception(err)
