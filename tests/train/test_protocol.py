"""The leave-last-out protocol: its split, exact target ranks, HR@K / NDCG@K / MRR, and the
evaluator's exclusions (every other item of the user), against brute-force references."""
import numpy as np
import pytest
import torch

from silverrec.data.dataset import JaggedColumn
from silverrec.models.value_formula import default_value_formula
from silverrec.train.evaluator import Evaluator
from silverrec.train.ground_truth import exact_ranks
from silverrec.train.metrics import hit_rate_ndcg_mrr
from silverrec.train.protocol import EvalConfig, leave_last_out_split


def test_split_is_last_and_second_to_last(tiny_dataset):
    ds = EvalConfig("leave_last_out").apply(tiny_dataset)
    it = ds.interactions
    for name, from_end in (("test", 0), ("valid", 1)):
        idx = ds.split.get(name)
        assert np.unique(it.user[idx]).size == idx.size  # one per user
        for i in idx[:50]:
            rows = np.flatnonzero(it.user == it.user[i])  # sorted by time within the user
            assert i == rows[-1 - from_end]
    assert ds.split.train.size + ds.split.valid.size + ds.split.test.size == len(it)
    assert EvalConfig().apply(tiny_dataset) is tiny_dataset


def test_valid_trains_adds_the_validation_item_to_training_only(tiny_dataset):
    """``eval.valid_trains``: the trainers' rows gain each user's validation item (the last
    training target of every sequence); evaluation histories and exclusions stay as they were."""
    from silverrec.data.sequence_batches import SequenceBatches
    strict = EvalConfig("leave_last_out").apply(tiny_dataset)
    loose = EvalConfig("leave_last_out", valid_trains=True).apply(tiny_dataset)
    assert strict.split.training is strict.split.train
    assert np.array_equal(loose.split.training, np.sort(np.r_[strict.split.train, strict.split.valid]))
    assert np.array_equal(loose.split.train, strict.split.train) and np.array_equal(loose.split.test, strict.split.test)
    it = loose.interactions
    user = int(it.user[loose.split.valid[0]])
    for ds, last in ((strict, loose.split.train), (loose, loose.split.training)):
        batches = SequenceBatches(ds, batch_size=4)
        rows = last[it.user[last] == user]
        assert batches.items[batches.offsets[user + 1] - 1] == it.item[rows[-1]]
    assert np.array_equal(Evaluator(loose, "valid").users.seen.values, Evaluator(strict, "valid").users.seen.values)
    temporal = EvalConfig(valid_trains=True).apply(tiny_dataset)
    assert temporal is not tiny_dataset and temporal.split.valid_trains and temporal.split.train is tiny_dataset.split.train


def test_eval_config_checks_and_cutoffs():
    assert EvalConfig("leave_last_out").cutoffs([10, 50, 100]) == [10, 50, 200]
    assert EvalConfig("temporal").cutoffs([100, 10]) == [10, 100]
    assert EvalConfig("leave_last_out", ks=[20, 5]).cutoffs([1]) == [5, 20]
    with pytest.raises(ValueError, match="eval.protocol must be one of temporal, leave_last_out, got 'loo'"):
        EvalConfig("loo")
    with pytest.raises(ValueError, match="eval.ks must be positive"):
        EvalConfig(ks=[0])


def test_exact_ranks_match_a_sort():
    g = torch.Generator().manual_seed(0)
    q, items = torch.randn(7, 4, generator=g), torch.randn(30, 4, generator=g).round()  # ties happen
    items[5] = items[6]  # an exact tie: the lower row ranks first
    targets = torch.tensor([6, 5, 0, 29, 3, 3, 12])
    exclude = JaggedColumn.from_lists([[1, 2], [], [5, 6, 7], [0], [], [4, 29], [11]])
    got = exact_ranks(q, items, targets, exclude=exclude, block=3)
    for b in range(7):
        s = (items @ q[b]).tolist()
        order = sorted((r for r in range(30) if r not in exclude.row(b).tolist()), key=lambda r: (-s[r], r))
        assert got[b] == order.index(int(targets[b])) + 1
    with pytest.raises(ValueError, match="target is in its own exclusions"):
        exact_ranks(q[:1], items, torch.tensor([1]), exclude=JaggedColumn.from_lists([[1]]))


def test_hit_rate_ndcg_mrr_by_hand():
    m = hit_rate_ndcg_mrr(torch.tensor([1, 2, 11, 300]), [10, 200])
    assert m["hr@10"] == 0.5 and m["hr@200"] == 0.75
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3)) / 4)
    assert m["ndcg@200"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(12)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 11 + 1 / 300) / 4)
    with pytest.raises(ValueError, match="1-based"):
        hit_rate_ndcg_mrr(torch.tensor([0]), [10])


def test_evaluator_excludes_every_other_item_of_the_user(tiny_dataset):
    ds = EvalConfig("leave_last_out").apply(tiny_dataset)
    ev = Evaluator(ds, "valid", [10, 50, 200], protocol="leave_last_out")
    it = ds.interactions
    for row in range(0, ev.users.users.size, 37):
        u = ev.users.users[row]
        target = ev.users.heldout.row(row)[0]
        others = set(it.item[it.user == u].tolist()) - {target}
        assert set(ev.users.seen.row(row).tolist()) == others  # the test item is excluded too
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(ev.users.users.size, 8, generator=g), torch.randn(ds.items.num_rows, 8, generator=g)
    m = ev.metrics_of(u, v)
    assert set(m) == {"hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200", "mrr"}
    # the same numbers from a plain sort of each user's scores
    ranks = []
    for row in range(ev.users.users.size):
        s = (v @ u[row]).numpy().astype(np.float64)
        s[ev.users.seen.row(row)] = -np.inf
        t = ev.users.heldout.row(row)[0]
        ranks.append(1 + int((s > s[t]).sum() + ((s == s[t]) & (np.arange(s.size) < t)).sum()))
    assert m == pytest.approx(hit_rate_ndcg_mrr(torch.tensor(ranks), [10, 50, 200]))
    pop = ev.popularity_baseline()
    assert set(pop) == set(m) and pop["hr@200"] >= pop["hr@10"]
    with pytest.raises(ValueError, match="one interaction per user"):
        Evaluator(tiny_dataset, "test", [10], protocol="leave_last_out")  # the temporal split


def test_leave_last_out_split_of_short_users_trains_only(tiny_dataset):
    import dataclasses

    from silverrec.data.dataset import Interactions

    it = Interactions(np.array([0, 0, 1, 1, 1]), np.array([1, 2, 3, 4, 5]), np.arange(5), {"click": np.ones(5)})
    split = leave_last_out_split(dataclasses.replace(tiny_dataset, interactions=it))
    assert split.train.tolist() == [0, 1, 2] and split.valid.tolist() == [3] and split.test.tolist() == [4]


def test_default_value_formula():
    assert default_value_formula(("click", "like")) == "like"
    assert default_value_formula(("click", "purchase")) == "click"
    assert default_value_formula(("watch",)) == "watch"
