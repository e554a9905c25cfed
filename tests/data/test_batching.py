import numpy as np
import pytest

from silverrec.data.batching import FeatureBatcher, HistoryIndex, TrainBatches
from silverrec.data.dataset import Interactions, JaggedColumn


def _interactions(seed=0, m=200, users=12, items=30):
    rng = np.random.default_rng(seed)
    return Interactions(
        user=rng.integers(0, users, m),
        item=rng.integers(0, items, m),
        timestamp=rng.integers(0, 1000, m),
        labels={"click": np.ones(m, np.float32)},
    )


def test_history_before_is_the_strictly_earlier_items():
    it = _interactions()
    subset = np.arange(0, 200, 2)
    hist = HistoryIndex(it, subset, 12)
    col = hist.before(subset, max_length=5)
    for r, i in enumerate(subset):
        same = [j for j in subset if it.user[j] == it.user[i]]
        same.sort(key=lambda j: (it.timestamp[j], j))
        earlier = [it.item[j] for j in same[: same.index(i)]][-5:]
        assert col.row(r).tolist() == earlier


def test_history_latest_and_all_items():
    it = _interactions(seed=1)
    idx = np.arange(200)
    hist = HistoryIndex(it, idx, 12)
    users = np.array([3, 0, 11])
    latest, every = hist.latest(users, 4), hist.all_items(users)
    for r, u in enumerate(users):
        seq = sorted((j for j in idx if it.user[j] == u), key=lambda j: (it.timestamp[j], j))
        assert every.row(r).tolist() == [it.item[j] for j in seq]
        assert latest.row(r).tolist() == [it.item[j] for j in seq][-4:]


def test_history_rejects_unindexed_interactions():
    it = _interactions()
    hist = HistoryIndex(it, np.arange(10), 12)
    with pytest.raises(ValueError, match="not part"):
        hist.before(np.array([50]), 3)


def test_kjt_layout_and_empty_sides(tiny_dataset):
    ds = tiny_dataset
    b = FeatureBatcher(ds.schema, ds.users, ds.items)
    kjt = b.kjt(3, item_rows=np.array([0, 5, 7]))
    assert kjt.keys() == list(ds.schema.user_keys + ds.schema.item_keys)
    d = kjt.to_dict()
    for key in ds.schema.user_keys:
        assert d[key].lengths().tolist() == [0, 0, 0]
    assert d["item__item_id"].values().tolist() == [0, 5, 7]
    tags = ds.items.columns["tags"].take(np.array([0, 5, 7]))
    assert d["item__tags"].values().tolist() == tags.values.tolist()
    with pytest.raises(ValueError, match="batch_size"):
        b.kjt(2, item_rows=np.array([0, 5, 7]))


def test_rank_slices_partition_the_global_batch(tiny_dataset):
    full = TrainBatches(tiny_dataset, 64, seed=3)
    parts = [TrainBatches(tiny_dataset, 64, seed=3, rank=r, world_size=2) for r in range(2)]
    g = next(full.epoch(0))
    p0, p1 = (next(p.epoch(0)) for p in parts)
    assert p0.item_rows.tolist() + p1.item_rows.tolist() == g.item_rows.tolist()
    # resuming mid-epoch yields the same batches as running through
    it = full.epoch(1)
    next(it)
    assert next(it).item_rows.tolist() == next(full.epoch(1, start_step=1)).item_rows.tolist()


def test_bad_batch_settings(tiny_dataset):
    with pytest.raises(ValueError, match="divisible"):
        TrainBatches(tiny_dataset, 63, world_size=2)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        TrainBatches(tiny_dataset, 10**7)


def test_jagged_take_and_validation():
    col = JaggedColumn.from_lists([[1, 2], [], [3]])
    assert col.take(np.array([2, 0, 1])).values.tolist() == [3, 1, 2]
    assert col.take(np.array([2, 0, 1])).lengths.tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="offsets"):
        JaggedColumn(np.array([1, 2]), np.array([0, 3]))


def test_validate_names_ids_outside_the_vocabulary(tiny_dataset):
    import copy

    ds = copy.deepcopy(tiny_dataset)
    ds.items.columns["category"].values[3] = 10**6
    with pytest.raises(ValueError, match="item feature 'category': id 1000000 outside its vocabulary"):
        ds.validate()
    ds = copy.deepcopy(tiny_dataset)
    ds.interactions.item[0] = -1
    with pytest.raises(ValueError, match="Interactions.item"):
        ds.validate()
