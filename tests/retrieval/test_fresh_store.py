"""FreshStore (the fresh index updated in place) against build_fresh_index (rebuilt from scratch):
after every step of random upserts, replacements, deletes and tombstones both give the same
graph inputs up to row order, posting lists stay non-decreasing, and a snapshot taken earlier
answers exactly as it did when it was taken, however many updates (and reallocations) follow."""
import random
from typing import Dict, Tuple

import numpy as np
import pytest
import torch

import silverrec.ops  # noqa: F401  registers torch.ops.silverrec
from silverrec.ops import reference
from silverrec.retrieval.fresh_index import FilterLayout, FreshIndex, build_fresh_index
from silverrec.retrieval.fresh_store import FreshStore

T, S, H, R, D, N = 12, 6, 2, 10, 8, 300


def _layout() -> FilterLayout:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, R - 3, size=(T, H))  # the last 3 rows are reserved for fresh values
    dense = np.zeros(T, dtype=bool)
    dense[:2] = True
    hashes[0] = 0
    hashes[1] = 1
    return FilterLayout(hashes, dense, num_bit_rows=R, row_width=4, fresh_terms=S, fresh_bit_rows=3)


FRESH_HASHES = np.random.default_rng(1).integers(R - 3, R, size=(S, H))


def _canonical(fresh: FreshIndex) -> Dict[str, object]:
    """What the graph can observe: per live item its codes, scale, cache, terms and bit column;
    per term the item ids of the live rows in its posting list; the tombstones."""
    live = np.unpackbits(fresh.live.numpy().view(np.uint8), bitorder="little").astype(bool)
    live = live[: fresh.item_ids.shape[0]]
    bits = np.unpackbits(fresh.bits.numpy().view(np.uint8), axis=1, bitorder="little").astype(bool)
    rows = {}
    for r in np.flatnonzero(live):
        terms = fresh.row_terms[r].numpy()
        rows[int(fresh.item_ids[r])] = (fresh.codes[r].tolist(), round(float(fresh.scales[r]), 6),
                                        fresh.cache[r].tolist(), sorted(terms[terms >= 0].tolist()),
                                        np.flatnonzero(bits[:, r]).tolist())
    off, post = fresh.posting_offsets.numpy(), fresh.posting_rows.numpy()
    postings = {}
    for t in range(off.size - 1):
        lst = post[off[t]: off[t + 1]]
        assert np.all(np.diff(lst) >= 0), (t, lst)  # bloom_search's lower_bound needs this
        assert np.all((lst >= 0) & (lst < live.size))
        held = sorted(int(fresh.item_ids[r]) for r in lst if live[r])
        if held:
            postings[t] = held
    return {"rows": rows, "postings": postings, "deleted": fresh.deleted.tolist()}


def _rebuild(truth: Dict[str, Tuple[torch.Tensor, np.ndarray, int]], deleted: set, layout: FilterLayout) -> FreshIndex:
    keys = list(truth)
    emb = torch.stack([truth[k][0] for k in keys]) if keys else torch.zeros(0, D)
    offsets = np.concatenate([[0], np.cumsum([truth[k][1].size for k in keys])]).astype(np.int64)
    terms = np.concatenate([truth[k][1] for k in keys]).astype(np.int64) if keys else np.zeros(0, dtype=np.int64)
    ids = np.array([truth[k][2] for k in keys], dtype=np.int64)
    return build_fresh_index(emb, offsets, terms, ids, np.array(sorted(deleted), dtype=np.int64), layout, N,
                             fresh_hashes=FRESH_HASHES)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_in_place_updates_equal_a_rebuild(seed):
    layout = _layout()
    store = FreshStore(layout, D, N)
    rng = random.Random(seed)
    truth: Dict[str, Tuple[torch.Tensor, np.ndarray, int]] = {}
    deleted: set = set()
    old = []  # (snapshot, its canonical form when taken)
    for step in range(400):
        key = f"k{rng.randrange(150)}"
        op = rng.random()
        if op < 0.65:
            terms = np.array(sorted(rng.sample(range(T + S), rng.randint(0, 4))), dtype=np.int64)
            emb = torch.randn(D, generator=torch.Generator().manual_seed(step))
            item_id = 1000 + int(key[1:])
            store.put(key, emb, terms, item_id, FRESH_HASHES)
            truth[key] = (emb, terms, item_id)
        elif op < 0.9:
            store.remove(key)
            truth.pop(key, None)
        else:
            row = rng.randrange(N)
            store.hide_main(row)
            deleted.add(row)
        snap = store.snapshot()
        want = _canonical(_rebuild(truth, deleted, layout))
        assert _canonical(snap) == want, step
        if step % 40 == 0:
            old.append((snap, want))
    assert store.reallocations > 1  # rows and posting slack both ran out along the way
    for snap, when_taken in old:
        assert _canonical(snap) == when_taken


def test_filters_on_a_store_snapshot_equal_a_rebuild():
    """bloom_search (the op the graph runs over the fresh rows) gives the same live items on both."""
    layout = _layout()
    store = FreshStore(layout, D, N)
    truth = {}
    rng = random.Random(5)
    for i in range(90):
        key = f"k{rng.randrange(60)}"
        terms = np.array(sorted(rng.sample(range(T + S), rng.randint(1, 4))), dtype=np.int64)
        emb = torch.randn(D)
        store.put(key, emb, terms, 1000 + int(key[1:]), FRESH_HASHES)
        truth[key] = (emb, terms, 1000 + int(key[1:]))
        if rng.random() < 0.2:
            gone = rng.choice(list(truth))
            store.remove(gone)
            truth.pop(gone)
    results = []
    for fresh in (store.snapshot(), _rebuild(truth, set(), layout)):
        f = fresh.item_ids.shape[0]
        got = {}
        for t in range(T + S):
            hashes = torch.from_numpy(np.concatenate([layout.term_hashes, FRESH_HASHES])[t][None, None])
            for code in (reference.BLOOM_TERM, reference.BLOOM_NOT_TERM):
                args = (fresh.bits, torch.tensor([[code]]), torch.tensor([[t]]), hashes, fresh.posting_offsets,
                        fresh.posting_rows, torch.zeros(1, 1, dtype=torch.int64), torch.tensor([0, f]))
                for search in (reference.bloom_search_reference, torch.ops.silverrec.bloom_search):
                    words = (search(*args) & fresh.live).numpy().view(np.uint8)
                    live_rows = np.flatnonzero(np.unpackbits(words, bitorder="little")[:f])
                    got[(t, code, search is reference.bloom_search_reference)] = sorted(
                        int(fresh.item_ids[r]) for r in live_rows)
        results.append(got)
    assert results[0] == results[1]
    assert any(results[0][(t, reference.BLOOM_NOT_TERM, False)] for t in range(T + S))
