"""The micro-batcher's scheduling (issue 16, item 2): large requests split into chunks served
beside small requests, exclusions not padded to the widest of unrelated requests, failures and
cancellations. A fake ``search`` records each forward; no model is needed."""
import threading
import time
from typing import List

import pytest
import torch

from silverrec.serve.batching import (EXCLUDE_FREE, BatchingConfig, EncodedQuery, MicroBatcher, split_query,
                                      widths_mix)


def _query(users: int, width: int = 1, first: int = 0) -> EncodedQuery:
    """``users`` users whose user_ids row holds its global index (to check the order of outputs)."""
    ids = torch.arange(first, first + users, dtype=torch.int64).unsqueeze(1)
    exclude = torch.full((users, width), -1, dtype=torch.int64)
    exclude[:, :width] = 7
    return EncodedQuery(ids, torch.zeros(users, 2, dtype=torch.int64), torch.zeros(users, 2, dtype=torch.int64),
                        torch.zeros(users, 2, 3, dtype=torch.int64), exclude)


class _Recorder:
    """A fake ``search``: returns user_ids as ``ids`` and records (users, exclusion width) per
    forward; ``gate`` (when set) blocks each forward until released."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.forwards: List[tuple] = []
        self.seconds = seconds
        self.gate: threading.Event = None
        self.entered = threading.Event()

    def __call__(self, user_ids, opcodes, terms, hashes, exclude):
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        time.sleep(self.seconds)
        self.forwards.append((int(user_ids.shape[0]), int(exclude.shape[1]), user_ids[:, 0].tolist()))
        b = user_ids.shape[0]
        return user_ids.clone(), torch.zeros(b, 1), torch.zeros(b, 1, 1), torch.ones(b, dtype=torch.int64), "snapshot"


def _batcher(search, **config) -> MicroBatcher:
    b = MicroBatcher(search, BatchingConfig(**config))
    b.start()
    return b


def test_split_query_trims_each_chunks_exclusions():
    q = _query(10, width=5)
    q.exclude[:, 2:] = -1
    q.exclude[7, :] = 3  # only user 7 (chunk 2) excludes 5 ids
    chunks = split_query(q, 4)
    assert [c.batch for c in chunks] == [4, 4, 2]
    assert [c.width for c in chunks] == [2, 5, 2]
    assert torch.equal(torch.cat([c.user_ids for c in chunks]), q.user_ids)
    assert split_query(q, 10) == [q]


def test_large_request_is_split_and_reassembled_in_order():
    search = _Recorder()
    b = _batcher(search, max_batch=8, max_wait_ms=0)
    try:
        out = b.submit(_query(21)).result(30)
    finally:
        b.stop()
    assert [o[0].shape[0] for o in out] == [4, 4, 4, 4, 4, 1]  # chunks of max_batch // 2
    assert torch.cat([o[0] for o in out])[:, 0].tolist() == list(range(21))
    assert all(o[4] == "snapshot" for o in out)
    assert all(users <= 8 for users, _, _ in search.forwards)


def test_small_requests_are_served_between_the_chunks_of_a_large_one():
    """A 64-user request in chunks of 4, then 5 single-user requests queued behind it: each
    forward takes one chunk and fills the rest with small requests, so the small ones are all
    served in the first forwards, long before the large one completes."""
    search = _Recorder(seconds=0.005)
    search.gate = threading.Event()
    b = _batcher(search, max_batch=8, max_wait_ms=0, bulk_users=4)
    try:
        blocker = b.submit(_query(1, first=1000))  # holds the worker while the queue fills
        assert search.entered.wait(30)
        big = b.submit(_query(64))
        small = [b.submit(_query(1, first=100 + i)) for i in range(5)]
        search.gate.set()
        for f in small + [big, blocker]:
            f.result(30)
    finally:
        b.stop()
    forwards = search.forwards[1:]
    assert len(forwards) == 16  # one chunk per forward
    served_small = [i for i, (_, _, ids) in enumerate(forwards) if any(100 <= x < 105 for x in ids)]
    assert served_small == [0, 1]  # 4 + 4 small users beside the first chunk, the 5th in the next
    assert all(users <= 8 for users, _, _ in forwards)


def test_two_large_requests_take_turns():
    search = _Recorder()
    search.gate = threading.Event()
    b = _batcher(search, max_batch=4, max_wait_ms=0, bulk_users=2)
    try:
        blocker = b.submit(_query(1, first=1000))
        assert search.entered.wait(30)
        one, two = b.submit(_query(6, first=0)), b.submit(_query(6, first=100))
        search.gate.set()
        one.result(30), two.result(30), blocker.result(30)
    finally:
        b.stop()
    owners = ["one" if ids[0] < 100 else "two" for _, _, ids in search.forwards[1:]]
    assert owners == ["one", "two"] * 3


def test_wide_exclusions_are_not_padded_onto_narrow_requests():
    search = _Recorder()
    search.gate = threading.Event()
    b = _batcher(search, max_batch=64, max_wait_ms=50)
    try:
        blocker = b.submit(_query(1))
        assert search.entered.wait(30)
        narrow = [b.submit(_query(1, width=3, first=10 + i)) for i in range(4)]
        wide = b.submit(_query(1, width=10_000, first=50))
        wide2 = b.submit(_query(1, width=6_000, first=51))
        search.gate.set()
        for f in narrow + [wide, wide2, blocker]:
            f.result(30)
    finally:
        b.stop()
    for users, width, ids in search.forwards[1:]:
        if width > EXCLUDE_FREE:
            assert set(ids) <= {50, 51}, (width, ids)  # the wide ones only with each other
        else:
            assert not {50, 51} & set(ids)
    assert widths_mix(3, EXCLUDE_FREE) and widths_mix(2500, 10_000) and not widths_mix(3, 10_000)


def test_a_failed_forward_fails_the_large_request_once_and_drops_its_chunks():
    calls = []

    def search(*inputs):
        calls.append(int(inputs[0].shape[0]))
        raise RuntimeError("boom")

    b = _batcher(search, max_batch=4, max_wait_ms=0, bulk_users=2)
    try:
        f = b.submit(_query(10))
        with pytest.raises(RuntimeError, match="boom"):
            f.result(30)
        time.sleep(0.1)
        assert b.queue_depth == 0
    finally:
        b.stop()
    assert calls == [2]  # its other chunks never ran


def test_cancelled_requests_are_skipped():
    search = _Recorder()
    search.gate = threading.Event()
    b = _batcher(search, max_batch=4, max_wait_ms=0, bulk_users=2)
    try:
        blocker = b.submit(_query(1, first=1000))
        assert search.entered.wait(30)
        gone_small, gone_big = b.submit(_query(1, first=5)), b.submit(_query(6, first=10))
        kept = b.submit(_query(1, first=50))
        assert gone_small.cancel() and gone_big.cancel()
        search.gate.set()
        kept.result(30), blocker.result(30)
    finally:
        b.stop()
    served = {x for _, _, ids in search.forwards for x in ids}
    assert served == {1000, 50}


def test_bulk_users_is_validated():
    assert BatchingConfig(max_batch=1).chunk_users == 1
    assert BatchingConfig(max_batch=64).chunk_users == 32
    with pytest.raises(ValueError, match="bulk_users"):
        BatchingConfig(max_batch=8, bulk_users=9)


def test_a_split_request_over_http_equals_retriever_query(retriever, users):
    """16 users served in chunks of 2 (max_batch=4): the answer is the unsplit one's, in order."""
    import numpy as np
    from starlette.testclient import TestClient

    from silverrec.serve.http import ServerConfig, ServingApp

    filters = ["", "language:en", "NOT category:music", "category:music OR category:comedy"] * 4
    exclude = [list(u["history"])[-2:] for u in users[:16]]
    with TestClient(ServingApp(retriever, ServerConfig(BatchingConfig(max_batch=4))).app) as client:
        res = client.post("/query", json={"users": users[:16], "filter": filters, "exclude": exclude, "k": 5})
    assert res.status_code == 200, res.text
    got = res.json()["results"]
    want = retriever.query(users[:16], filter=filters, exclude=exclude, k=5)
    assert [[r["item_id"] for r in rows] for rows in got] == [[x[0] for x in rows] for rows in want]
    np.testing.assert_allclose([r["value"] for rows in got for r in rows], [x[1] for rows in want for x in rows],
                               rtol=1e-5, atol=1e-7)
