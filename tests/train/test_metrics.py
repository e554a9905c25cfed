import math

import numpy as np
import pytest
import torch

from silverrec.data.dataset import JaggedColumn
from silverrec.train.ground_truth import exact_topk
from silverrec.train.metrics import recall_ndcg


def _naive(topk, held, k):
    recalls, ndcgs = [], []
    for row, h in zip(topk, held):
        if not h:
            continue
        hits = [1.0 if r in h else 0.0 for r in row[:k]]
        recalls.append(sum(hits) / len(h))
        dcg = sum(x / math.log2(i + 2) for i, x in enumerate(hits))
        idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(h))))
        ndcgs.append(dcg / idcg)
    return np.mean(recalls), np.mean(ndcgs)


def test_recall_ndcg_match_a_naive_computation():
    rng = np.random.default_rng(0)
    for _ in range(10):
        u, n, kmax = 20, 40, 10
        topk = np.stack([rng.permutation(n)[:kmax] for _ in range(u)])
        held = [sorted(set(rng.integers(0, n, rng.integers(0, 5)).tolist())) for _ in range(u)]
        held[0] = [int(topk[0, 0])]
        got = recall_ndcg(torch.from_numpy(topk), JaggedColumn.from_lists(held), [1, 5, 10])
        for k in (1, 5, 10):
            r, g = _naive(topk.tolist(), held, k)
            assert got[f"recall@{k}"] == pytest.approx(r)
            assert got[f"ndcg@{k}"] == pytest.approx(g)


def test_recall_rejects_bad_cutoffs_and_empty_sets():
    with pytest.raises(ValueError, match="cut-offs"):
        recall_ndcg(torch.zeros(1, 3, dtype=torch.long), JaggedColumn.from_lists([[1]]), [4])
    with pytest.raises(ValueError, match="empty"):
        recall_ndcg(torch.zeros(1, 3, dtype=torch.long), JaggedColumn.from_lists([[]]), [1])


def test_exact_topk_excludes_and_pads():
    q = torch.randn(5, 8)
    items = torch.randn(12, 8)
    exclude = JaggedColumn.from_lists([[0, 1], [], [3], list(range(10)), []])
    scores, rows = exact_topk(q, items, 4, exclude=exclude, block=2)
    full = q @ items.t()
    for b in range(5):
        ex = set(exclude.row(b).tolist())
        keep = [i for i in range(12) if i not in ex]
        order = sorted(keep, key=lambda i: -float(full[b, i]))
        want = (order + [-1] * 4)[:4]
        assert rows[b].tolist() == want
    assert torch.isinf(scores[3, 2:]).all() and (rows[3, 2:] == -1).all()
