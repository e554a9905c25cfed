import math

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from silverrec.models.losses import InBatchSoftmaxLoss, item_log_frequency
from silverrec.models.similarity import Similarity
from silverrec.models.two_tower import TwoTowerConfig, build_two_tower, embedding_tables
from silverrec.models.train_task import LossConfig, TwoTowerTrainTask
from silverrec.models.over_arch import OverArchConfig
from silverrec.train.trainer import ivf_candidate_search
from silverrec.schema import Feature, Schema, Task, TaskKind

TASKS = (Task("click"), Task("like"), Task("watch", TaskKind.REGRESSION))


def _schema() -> Schema:
    return Schema(
        user_features=(Feature("country", ("us", "de", "fr")),),
        item_features=(Feature("item_id", tuple(f"i{i}" for i in range(20))), Feature("tags", ("a", "b", "c"), max_length=3)),
        tasks=TASKS,
    )


def _config(**kw) -> TwoTowerConfig:
    base = dict(embedding_dim=8, user_layers=[16, 8], item_layers=[16, 8], value_formula="like + 0.5*watch",
                over_arch=OverArchConfig(hidden=[8]))
    base.update(kw)
    return TwoTowerConfig(**base)


def _kjt(schema, users, history, items):
    """KJT of B pairs: users [B] country ids, history list of lists, items [B] item ids (tags: item % 3)."""
    keys = list(schema.user_keys + schema.item_keys)
    values, lengths = [], []
    for col in (users, history, items, [[i % 3] for i in items]):
        for row in col:
            row = row if isinstance(row, list) else [row]
            values += row
            lengths.append(len(row))
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=torch.tensor(values), lengths=torch.tensor(lengths))


def test_history_is_pooled_from_the_item_id_table():
    tables = {t.name: t for t in embedding_tables(_schema(), 8)}
    assert tables["item__item_id"].feature_names == ["item__item_id", "user__history"]
    assert set(tables) == {"user__country", "item__item_id", "item__tags"}


def test_towers_output_unit_vectors_and_history_changes_the_user():
    torch.manual_seed(0)
    schema = _schema()
    model = build_two_tower(schema, _config())
    keys = list(schema.user_keys + schema.item_keys)
    # 2 pairs: user 0 with history [3, 4], user 1 with empty history; items 5 and 6 with tags
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=keys,
        values=torch.tensor([0, 1, 3, 4, 5, 6, 0, 1, 2]),
        lengths=torch.tensor([1, 1, 2, 0, 1, 1, 1, 2]),
    )
    u, v = model(kjt)
    assert u.shape == (2, 3, 8) and v.shape == (2, 8)  # one user embedding per task
    torch.testing.assert_close(u.norm(dim=-1), torch.ones(2, 3))
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(2))
    kjt2 = KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=torch.tensor([0, 1, 7, 4, 5, 6, 0, 1, 2]), lengths=torch.tensor([1, 1, 2, 0, 1, 1, 1, 2])
    )
    u2, v2 = model(kjt2)
    assert not torch.allclose(u2[0], u[0])  # a different history item moves the user
    torch.testing.assert_close(u2[1], u[1])
    torch.testing.assert_close(v2, v)


def test_mismatched_tower_dims_are_rejected():
    with pytest.raises(ValueError, match="same dimension"):
        build_two_tower(_schema(), _config(user_layers=[8], item_layers=[16]))


def test_value_formula_errors_surface_at_build_time():
    with pytest.raises(ValueError, match="share"):
        build_two_tower(_schema(), _config(value_formula="like + share"))


def test_over_arch_config_round_trips_through_a_dict():
    import dataclasses

    cfg = _config(over_arch=OverArchConfig(kind="mixture_of_logits", hidden=[8]))
    again = TwoTowerConfig(**dataclasses.asdict(cfg))
    assert again == cfg and isinstance(again.over_arch, OverArchConfig)


def test_task_logits_are_dot_plus_over_arch_and_task_scores_are_rate_times_softmax():
    torch.manual_seed(0)
    model = build_two_tower(_schema(), _config())
    model.task_rates.copy_(torch.tensor([1.0, 0.4, 0.3]))
    u = torch.nn.functional.normalize(torch.randn(2, 3, 8), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(2, 5, 8), dim=-1)
    with torch.no_grad():
        dot = model.task_logits(u, v, over_arch=False)
    for b in range(2):
        for k in range(5):
            for t in range(3):
                assert float(dot[b, k, t]) == pytest.approx(float(u[b, t] @ v[b, k] * model.similarity.scale()), rel=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model.task_logits(u, v), dot + model.over_arch(u, v))
    valid = torch.tensor([[True, True, False, True, True], [False] * 5])
    scores = model.task_scores(dot, valid)
    assert torch.all(scores[1] == 0) and torch.all(scores[0, 2] == 0)
    torch.testing.assert_close(scores[0].sum(0), model.task_rates)  # sums to each task's mean label
    ref = torch.softmax(dot[0, [0, 1, 3, 4]], dim=0) * model.task_rates
    torch.testing.assert_close(scores[0, [0, 1, 3, 4]], ref)
    value = model.value(scores, valid)
    torch.testing.assert_close(value[0, [0, 1, 3, 4]], scores[0, [0, 1, 3, 4], 1] + 0.5 * scores[0, [0, 1, 3, 4], 2])
    assert value[0, 2] == float("-inf")


def test_multitask_loss_matches_per_task_weighted_references():
    torch.manual_seed(0)
    schema = _schema()
    model = build_two_tower(schema, _config(over_arch=None))
    item_rows = torch.tensor([3, 5, 3, 9])
    log_q = item_log_frequency(torch.tensor([3, 3, 5, 9, 1]), 20)
    task = TwoTowerTrainTask(model, log_q, LossConfig(task_weights={"like": 2.0}))
    kjt = _kjt(schema, [0, 1, 2, 0], [[1], [2, 3], [], [4]], item_rows.tolist())
    labels = torch.tensor([[1, 1, 0.5], [1, 0, 0.2], [1, 1, 0.9], [1, 0, 0.0]])
    loss, parts = task(kjt, item_rows, labels)
    u, v = model(kjt)
    want = 0.0
    for t, w in enumerate([1.0, 2.0, 1.0]):
        logits = u[:, t] @ v.t() * model.similarity.scale()
        lab = labels[:, t]
        rows = []  # per-row naive cross-entropy (as _naive_loss), then the label-weighted mean
        for i in range(4):
            cols = [j for j in range(4) if j == i or item_rows[j] != item_rows[i]]
            z = torch.tensor([float(logits[i, j]) - float(log_q[item_rows[j]]) for j in cols])
            pos = float(logits[i, i]) - float(log_q[item_rows[i]])
            rows.append(-(pos - float(torch.logsumexp(z, 0))))
        ref = sum(float(lab[i]) * rows[i] for i in range(4)) / float(lab.sum())
        assert float(parts[f"retrieval/{TASKS[t].name}"]) == pytest.approx(ref, rel=1e-4)
        want += w * ref
    assert float(loss) == pytest.approx(want, rel=1e-4)


def test_over_arch_loss_trains_with_sampled_and_hard_negatives():
    torch.manual_seed(0)
    schema = _schema()
    model = build_two_tower(schema, _config())
    log_q = torch.full((20,), -3.0)
    task = TwoTowerTrainTask(model, log_q, LossConfig(sampled_negatives=2, hard_negatives=3),
                             search_builder=ivf_candidate_search)
    item_rows = torch.tensor([3, 5, 7, 9, 11])
    kjt = _kjt(schema, [0, 1, 2, 0, 1], [[1], [2, 3], [], [4], [6]], item_rows.tolist())
    labels = torch.ones(5, 3)
    loss, parts = task(kjt, item_rows, labels)  # no bank yet: sampled negatives only
    assert set(parts) == {f"{kind}/{t.name}" for kind in ("retrieval", "overarch") for t in TASKS}
    logits = task._over_arch_logits(*model(kjt), item_rows, 5)
    assert logits.shape == (5, 3, 3)
    assert task._over_arch_logits(*model(kjt), item_rows, 2).shape == (2, 3, 3)
    with torch.no_grad():
        items = model(_kjt(schema, [0] * 20, [[]] * 20, list(range(20))))[1]
    task.set_negative_bank(items)
    logits = task._over_arch_logits(*model(kjt), item_rows, 5)
    assert logits.shape == (5, 6, 3)
    loss, _ = task(kjt, item_rows, labels)
    loss.backward()
    assert model.over_arch.scorer.mlp.cross.weight.grad.abs().sum() > 0
    assert model.user_tower.out.weight.grad.abs().sum() > 0  # trained jointly with the towers
    with pytest.raises(ValueError, match="unknown task"):
        TwoTowerTrainTask(model, log_q, LossConfig(task_weights={"share": 1.0}))


def _naive_loss(logits, item_rows, log_q):
    b = logits.shape[0]
    total = 0.0
    for i in range(b):
        row = []
        for j in range(b):
            if j != i and item_rows[j] == item_rows[i]:
                continue  # accidental hit: the same item is not a negative
            row.append(float(logits[i, j]) - float(log_q[item_rows[j]]))
        pos = float(logits[i, i]) - float(log_q[item_rows[i]])
        total += -(pos - math.log(sum(math.exp(x) for x in row)))
    return total / b


def test_in_batch_softmax_matches_a_naive_reference():
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        b, n = 7, 5
        logits = torch.randn(b, b, generator=g) * 3
        rows = torch.randint(0, n, (b,), generator=g)
        log_q = torch.log_softmax(torch.randn(n, generator=g), 0)
        got = InBatchSoftmaxLoss(log_q)(logits, rows)
        assert float(got) == pytest.approx(_naive_loss(logits, rows, log_q), rel=1e-5)


def test_log_q_correction_favours_rare_items():
    # equal logits: the corrected softmax puts more mass on the rare item's column
    log_q = torch.log(torch.tensor([0.9, 0.1]))
    loss = InBatchSoftmaxLoss(log_q)
    logits = torch.zeros(2, 2)
    per_row = torch.nn.functional.cross_entropy(logits - log_q.unsqueeze(0), torch.arange(2), reduction="none")
    assert per_row[1] < per_row[0]
    assert float(loss(logits, torch.tensor([0, 1]))) == pytest.approx(float(per_row.mean()))


def test_item_log_frequency():
    lf = item_log_frequency(torch.tensor([0, 0, 1, 1, 1, 1]), 3)
    torch.testing.assert_close(lf.exp(), torch.tensor([2 / 6, 4 / 6, 0.5 / 6]))


def test_similarity_is_one_definition():
    sim = Similarity(temperature=0.1, learn_temperature=False)
    u, v = torch.randn(3, 4), torch.randn(5, 4)
    torch.testing.assert_close(sim.pairwise(u, v), u @ v.t())
    torch.testing.assert_close(sim.paired(u, v[:3]), (u * v[:3]).sum(-1))
    torch.testing.assert_close(sim.logits(u, v), u @ v.t() * 10.0)
    with pytest.raises(ValueError, match="temperature"):
        Similarity(temperature=0.0)
