"""Dynamic micro-batching: concurrent queries -> one forward of the serving graph.

Requests are encoded by their callers (so a bad request fails alone, before it is queued) and
put on a bounded queue. One worker thread takes the oldest request, waits at most ``max_wait_ms``
(counted from that request's arrival) for more, concatenates up to ``max_batch`` users into one
call of ``search`` (``Retriever.search``), and hands each request its own rows of the outputs::

    request 1: users [2, S] ─┐                                   ┌─► rows 0..1
    request 2: users [1, S] ─┼─► cat ─► search([5, S], ...) ─► split ─► row 2
    request 3: users [2, S] ─┘   (exclusions padded to the widest)  └─► rows 3..4

Each request keeps its own filter and exclusions (the graph takes one filter plan and one
exclusion row per user), so requests with different filters, exclusions and k share a forward.

    >>> batcher = MicroBatcher(retriever.search, BatchingConfig(max_batch=64))   # doctest: +SKIP
    >>> batcher.start()                                                        # doctest: +SKIP
    >>> ids, value, scores, num_valid = batcher.submit(query).result()         # doctest: +SKIP
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


class QueueFull(RuntimeError):
    """The request queue holds ``max_queue`` requests: the caller should retry later (HTTP 503)."""


@dataclass
class BatchingConfig:
    """Micro-batching settings.

    Args:
        max_batch (int): most users in one forward (a request with more users runs alone).
        max_wait_ms (float): longest time the oldest queued request waits for others to join it.
        max_queue (int): most requests waiting for the worker; one more is refused (``QueueFull``).
    """

    max_batch: int = 64
    max_wait_ms: float = 2.0
    max_queue: int = 1024

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")


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


class _Pending(NamedTuple):
    query: EncodedQuery
    future: Future
    arrived: float  # time.monotonic()


@dataclass
class BatchStats:
    """What one forward served (for metrics)."""

    users: int
    requests: int
    seconds: float


def concat_queries(queries: List[EncodedQuery]) -> EncodedQuery:
    """Concatenates requests along the batch; exclusion lists are padded with -1 to the widest."""
    width = max(q.exclude.shape[1] for q in queries)
    exclude = [q.exclude if q.exclude.shape[1] == width else
               torch.nn.functional.pad(q.exclude, (0, width - q.exclude.shape[1]), value=-1) for q in queries]
    return EncodedQuery(*(torch.cat([getattr(q, f) for q in queries]) for f in EncodedQuery._fields[:4]),
                        torch.cat(exclude))


class MicroBatcher:
    """Queues encoded queries and serves them in micro-batches from one worker thread.

    Args:
        search (Callable[..., Outputs]): the graph on encoded inputs (``Retriever.search``); it is
            called only from the worker thread.
        config (BatchingConfig): batch size, wait and queue bounds.
        on_batch (Optional[Callable[[BatchStats], None]]): called after every forward.
    """

    def __init__(self, search: Callable[..., Outputs], config: BatchingConfig,
                 on_batch: Optional[Callable[[BatchStats], None]] = None) -> None:
        self.search = search
        self.config = config
        self.on_batch = on_batch
        self._queue: Deque[_Pending] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the worker (not counting the batch it is running)."""
        return len(self._queue)

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
        while self._queue:
            p = self._queue.popleft()
            if p.future.set_running_or_notify_cancel():
                p.future.set_exception(RuntimeError("the server is shutting down"))

    def submit(self, query: EncodedQuery) -> Future:
        """Queues one request; its future resolves to its rows of the outputs of ``search`` (its
        rows of every tensor; other outputs as they are). Raises ``QueueFull`` when ``max_queue`` requests are waiting."""
        future: Future = Future()
        with self._cond:
            if self._stopping or not self.alive:
                raise RuntimeError("the batching worker is not running")
            if len(self._queue) >= self.config.max_queue:
                raise QueueFull(f"the query queue is full ({self.config.max_queue} requests waiting); retry later")
            self._queue.append(_Pending(query, future, time.monotonic()))
            self._cond.notify()
        return future

    def _next_batch(self) -> List[_Pending]:
        """Blocks for the oldest request, then gathers more until max_batch users or its deadline."""
        max_batch, wait = self.config.max_batch, self.config.max_wait_ms / 1000.0
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return []
            batch = [self._queue.popleft()]
            users = batch[0].query.batch
            deadline = batch[0].arrived + wait
            while users < max_batch:
                if self._queue:
                    if users + self._queue[0].query.batch > max_batch:
                        break
                    batch.append(self._queue.popleft())
                    users += batch[-1].query.batch
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping:
                    break
                self._cond.wait(left)
        # drop requests whose caller gave up (cancelled futures)
        return [p for p in batch if p.future.set_running_or_notify_cancel()]

    def _run(self) -> None:
        while not self._stopping:
            batch = self._next_batch()
            if batch:
                self._serve(batch)

    def _serve(self, batch: List[_Pending]) -> None:
        t0 = time.perf_counter()
        try:
            outputs = self.search(*concat_queries([p.query for p in batch]))
        except Exception as err:  # every request of the batch gets the error
            log.exception("search failed for a batch of %d request(s)", len(batch))
            for p in batch:
                p.future.set_exception(err)
            return
        seconds = time.perf_counter() - t0
        start = 0
        for p in batch:
            b = p.query.batch
            p.future.set_result(tuple(t[start : start + b] if isinstance(t, Tensor) else t for t in outputs))
            start += b
        if self.on_batch is not None:
            self.on_batch(BatchStats(users=start, requests=len(batch), seconds=seconds))
