import math

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from silverrec.models.losses import InBatchSoftmaxLoss, item_log_frequency
from silverrec.models.similarity import Similarity
from silverrec.models.two_tower import TwoTowerConfig, build_two_tower, embedding_tables
from silverrec.schema import Feature, Schema


def _schema() -> Schema:
    return Schema(
        user_features=(Feature("country", ("us", "de", "fr")),),
        item_features=(Feature("item_id", tuple(f"i{i}" for i in range(20))), Feature("tags", ("a", "b", "c"), max_length=3)),
    )


def test_history_is_pooled_from_the_item_id_table():
    tables = {t.name: t for t in embedding_tables(_schema(), 8)}
    assert tables["item__item_id"].feature_names == ["item__item_id", "user__history"]
    assert set(tables) == {"user__country", "item__item_id", "item__tags"}


def test_towers_output_unit_vectors_and_history_changes_the_user():
    torch.manual_seed(0)
    schema = _schema()
    model = build_two_tower(schema, TwoTowerConfig(embedding_dim=8, user_layers=[16, 8], item_layers=[16, 8]))
    keys = list(schema.user_keys + schema.item_keys)
    # 2 pairs: user 0 with history [3, 4], user 1 with empty history; items 5 and 6 with tags
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=keys,
        values=torch.tensor([0, 1, 3, 4, 5, 6, 0, 1, 2]),
        lengths=torch.tensor([1, 1, 2, 0, 1, 1, 1, 2]),
    )
    u, v = model(kjt)
    assert u.shape == v.shape == (2, 8)
    torch.testing.assert_close(u.norm(dim=-1), torch.ones(2))
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
        build_two_tower(_schema(), TwoTowerConfig(user_layers=[8], item_layers=[16]))


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
