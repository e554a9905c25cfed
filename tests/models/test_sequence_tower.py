"""The sequence user tower: causality, padding, train -> serve parity, and its training loss."""
import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from silverrec.data.batching import FeatureBatcher
from silverrec.data.dataset import JaggedColumn
from silverrec.data.sequence_batches import SequenceBatches
from silverrec.models.losses import item_log_frequency
from silverrec.models.over_arch import OverArchConfig
from silverrec.models.padded_encoder import (padded_item_encoder_from_two_tower, padded_user_encoder_from_two_tower,
                                             user_slots)
from silverrec.models.sequence_train_task import SequenceTrainTask
from silverrec.models.sequence_tower import SequenceConfig, SequenceUserTower, right_align
from silverrec.models.sequence_two_tower import SequenceTwoTower
from silverrec.models.train_task import LossConfig
from silverrec.models.two_tower import TwoTowerConfig, build_two_tower


def _model(schema, over_arch=None) -> SequenceTwoTower:
    torch.manual_seed(0)
    cfg = TwoTowerConfig(embedding_dim=16, user_tower="sequence", over_arch=over_arch,
                         sequence=SequenceConfig(num_blocks=2, num_heads=2, dropout=0.0))
    return build_two_tower(schema, cfg).eval()


def test_states_are_causal_and_ignore_left_padding():
    tower = SequenceUserTower(8, max_length=6, num_blocks=2, num_heads=2, dropout=0.0, num_tasks=1).eval()
    x = torch.randn(1, 5, 8)
    valid = torch.tensor([[False, True, True, True, True]])
    h = tower.states(x, valid)
    x2 = x.clone()
    x2[0, 4] = torch.randn(8)  # the latest item changes: earlier states do not
    torch.testing.assert_close(tower.states(x2, valid)[:, :4], h[:, :4])
    # the same history in a wider window (more left padding) gives the same last state
    wide = torch.cat([torch.randn(1, 1, 8), x], dim=1)
    wide_valid = torch.cat([torch.tensor([[False]]), valid], dim=1)
    torch.testing.assert_close(tower(wide, wide_valid), tower(x, valid), rtol=1e-5, atol=1e-6)


def test_right_align_keeps_the_latest_items():
    values = torch.tensor([1, 2, 3, 4, 5, 6])
    out, valid = right_align(values, torch.tensor([2, 0, 4]), 3)
    assert out.tolist() == [[0, 1, 2], [0, 0, 0], [4, 5, 6]]
    assert valid.tolist() == [[False, True, True], [False, False, False], [True, True, True]]


def test_kjt_forward_matches_the_serving_encoders(tiny_dataset):
    ds = tiny_dataset
    model = _model(ds.schema)
    users = np.arange(5)
    history = JaggedColumn.from_lists([[], [3], [1, 2, 3], list(range(60)), [7, 7, 9]])  # 60 > H: latest H kept
    batcher = FeatureBatcher(ds.schema, ds.users, ds.items)
    with torch.no_grad():
        u, _ = model(batcher.kjt(5, user_rows=users, history=history))
        _, v = model(batcher.kjt(4, item_rows=np.array([0, 5, 9, 11])))
    slots = torch.full((5, sum(n for _, n in user_slots(ds.schema))), -1, dtype=torch.int64)
    start = sum(n for _, n in user_slots(ds.schema)[:-1])
    for b in range(5):
        row = history.row(b)[-ds.schema.history_length:]
        slots[b, start:start + row.size] = torch.from_numpy(row)
    encoder = padded_user_encoder_from_two_tower(model, ds.schema)
    item_encoder = padded_item_encoder_from_two_tower(model, ds.schema)
    item_slots = torch.tensor([[0], [5], [9], [11]])
    with torch.no_grad():
        torch.testing.assert_close(encoder(slots), u, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(item_encoder(item_slots), v)
    assert u.shape == (5, len(ds.schema.tasks), 16)


def test_sequence_batches_target_the_next_item(tiny_dataset):
    batches = SequenceBatches(tiny_dataset, batch_size=8, seed=1)
    users = batches.users[:3]
    batch = batches.make_batch(users)
    hist = batch.features["user__history"]
    seq = torch.split(hist.values(), hist.lengths().tolist())
    for b, u in enumerate(users):
        items = batches.items[batches.offsets[u]:batches.offsets[u + 1]]
        n = seq[b].numel()
        assert seq[b].tolist() == items[-n - 1:-1].tolist()
        assert batch.targets[b, -n:].tolist() == items[-n:].tolist()
        assert (batch.targets[b, :-n] == -1).all()
    steps = list(batches.epoch(0))
    assert len(steps) == batches.steps_per_epoch
    assert sum(s.targets.shape[0] for s in steps) == batches.steps_per_epoch * 8


@pytest.mark.parametrize("kind", [None, "mixture_of_logits"])
def test_training_steps_lower_the_loss(tiny_dataset, kind):
    ds = tiny_dataset
    over_arch = None if kind is None else OverArchConfig(kind=kind, hidden=[16], side_features=["popularity"])
    model = _model(ds.schema, over_arch).train()
    log_q = item_log_frequency(torch.from_numpy(ds.interactions.item[ds.split.train]), ds.items.num_rows)
    task = SequenceTrainTask(model, log_q, LossConfig(in_batch_negatives=64, uniform_negatives=32,
                                                      sampled_negatives=8, pool_size=50,
                                                      task_weights={"share": 0.0}))
    opt = torch.optim.Adam(task.parameters(), lr=1e-2)
    batch = SequenceBatches(ds, batch_size=32).make_batch(np.arange(32))
    losses = []
    for step in range(8):
        task.reseed(step)
        loss, parts = task(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert "retrieval/share" not in parts and "retrieval/click" in parts
    assert (kind is not None) == ("overarch/click" in parts)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_bad_settings_are_named(tiny_dataset):
    with pytest.raises(ValueError, match="model.user_tower"):
        TwoTowerConfig(user_tower="lstm")
    with pytest.raises(ValueError, match="model.sequence.dropout"):
        SequenceConfig(dropout=1.5)
    with pytest.raises(ValueError, match="num_heads=3 must divide"):
        build_two_tower(tiny_dataset.schema, TwoTowerConfig(embedding_dim=16, user_tower="sequence",
                                                            sequence={"num_heads": 3}))
    model = _model(tiny_dataset.schema)
    log_q = torch.zeros(tiny_dataset.items.num_rows)
    with pytest.raises(ValueError, match="in_batch_negatives"):
        SequenceTrainTask(model, log_q, LossConfig(in_batch_negatives=0, uniform_negatives=0))
