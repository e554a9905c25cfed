"""SideFeatures against a plain-Python loop, and the OverArch / TwoTower plumbing that reads them."""
import math

import numpy as np
import pytest
import torch

from silverrec.models.over_arch import OverArch, OverArchConfig
from silverrec.models.side_features import GROUPS, SideFeatures, num_side_features
from silverrec.models.two_tower import TwoTowerConfig, build_two_tower

ALL = list(GROUPS)


def _table(n, rng):
    return dict(category=rng.integers(0, 4, n), creator=rng.integers(0, 6, n), language=rng.integers(0, 3, n),
                year=rng.integers(1990, 2026, n).astype(np.float64), counts=rng.integers(0, 9, n))


def _loop(t, groups, history, items, n):
    """The features of one (history list, candidate id), straight from the definitions."""
    lp = np.log1p(t["counts"].astype(np.float64))
    z = lambda c: (math.log1p(c) - lp.mean()) / lp.std()  # noqa: E731
    h = [x for x in history if 0 <= x < n]
    out = []
    for i in items:
        known = 0 <= i < n
        row = []
        for g in groups:
            if g == "category_affinity":
                m = sum(t["category"][x] == t["category"][i] for x in h) if known else 0
                row += [m / max(len(h), 1), float(m == 0)]
            elif g == "creator_seen":
                m = sum(t["creator"][x] == t["creator"][i] for x in h) if known else 0
                row += [math.log1p(m), float(m > 0)]
            elif g == "language_affinity":
                m = sum(t["language"][x] == t["language"][i] for x in h) if known else 0
                row += [m / max(len(h), 1)]
            elif g == "year_gap":
                ys = [t["year"][x] for x in h]
                y_max, y_mean = (max(ys), sum(ys) / len(ys)) if ys else (0.0, 0.0)
                ok = known and bool(ys)
                y = t["year"][i] if ok else 0.0
                row += [(y - y_max) / 10 if ok else 0.0, (y - y_mean) / 10 if ok else 0.0,
                        float(ok and y > y_max), (y_max - y_mean) / 10]
            else:
                row += [z(t["counts"][i]) if known else z(0)]
        out.append(row)
    return out


@pytest.mark.parametrize("groups", [ALL, ["year_gap"], ["popularity", "category_affinity"], ["creator_seen", "language_affinity"]])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_side_features_equal_a_python_loop(groups, seed):
    rng = np.random.default_rng(seed)
    n, b, l, k = 30, 5, 7, 9
    t = _table(n, rng)
    sf = SideFeatures(groups, n)
    sf.set_items(**t)
    history = torch.from_numpy(rng.integers(-1, n + 3, (b, l)))  # -1 padding and unknown ids (>= N)
    history[0] = -1  # an empty history
    items = torch.from_numpy(rng.integers(-1, n + 3, (b, k)))
    got = sf(history, items)
    assert got.shape == (b, k, num_side_features(groups)) and got.dtype == torch.float32
    for r in range(b):
        want = torch.tensor(_loop(t, groups, history[r].tolist(), items[r].tolist(), n), dtype=torch.float32)
        torch.testing.assert_close(got[r], want, rtol=1e-5, atol=1e-5)


def test_side_features_with_no_history_slots():
    sf = SideFeatures(ALL, 4)
    sf.set_items(**_table(4, np.random.default_rng(0)))
    out = sf(torch.zeros(2, 0, dtype=torch.int64), torch.tensor([[0, 1], [2, -1]]))
    assert out.shape == (2, 2, num_side_features(ALL)) and torch.isfinite(out).all()


def test_bad_groups_and_missing_item_features_are_named(tiny_dataset):
    with pytest.raises(ValueError, match="unknown group.*'colour'"):
        OverArchConfig(side_features=["colour"])
    with pytest.raises(ValueError, match="twice"):
        OverArchConfig(side_features=["year_gap", "year_gap"])
    sf = SideFeatures(["year_gap", "creator_seen"], tiny_dataset.items.num_rows)
    with pytest.raises(ValueError, match=r"item feature\(s\) \['creator'\]"):
        sf.set_items_from(tiny_dataset.schema, {"year": tiny_dataset.items.columns["year"].values},
                          np.zeros(tiny_dataset.items.num_rows))


def test_over_arch_reads_side_features():
    cfg = OverArchConfig(hidden=[8, 4], num_tasks=2, side_features=["category_affinity", "year_gap"], num_items=10)
    arch = OverArch(6, cfg)
    arch.side_features.set_items(**_table(10, np.random.default_rng(0)))
    u, v = torch.randn(3, 2, 6), torch.randn(3, 5, 6)
    history, items = torch.randint(-1, 10, (3, 4)), torch.randint(0, 10, (3, 5))
    out = arch(u, v, history, items)
    assert out.shape == (3, 5, 2)
    with pytest.raises(ValueError, match="pass history"):
        arch(u, v)
    # the side features move the logits: a different history gives different scores
    assert not torch.allclose(out, arch(u, v, torch.full_like(history, -1), items))
    mol = OverArch(6, OverArchConfig(kind="mixture_of_logits", hidden=[8], num_tasks=2, side_features=["popularity"], num_items=10))
    assert mol(u, v, history, items).shape == (3, 5, 2)


def test_two_tower_without_side_features_keeps_its_state_dict_keys(tiny_dataset):
    plain = build_two_tower(tiny_dataset.schema, TwoTowerConfig(embedding_dim=8, user_layers=[8], item_layers=[8]))
    side = build_two_tower(tiny_dataset.schema, TwoTowerConfig(embedding_dim=8, user_layers=[8], item_layers=[8],
                                                               over_arch={"side_features": ALL}))
    assert not plain.uses_history and side.uses_history
    extra = sorted(set(side.state_dict()) - set(plain.state_dict()))
    assert extra == ["over_arch.scorer.mlp.side.weight", "over_arch.side_features.attributes",
                     "over_arch.side_features.log_popularity", "over_arch.side_features.year"]
    assert side.over_arch.side_features.num_items == tiny_dataset.schema.num_items
