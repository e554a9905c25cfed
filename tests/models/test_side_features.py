"""SideFeatures derived from the schema against a plain-Python loop, and the OverArch / TwoTower
plumbing that reads them."""
import math

import numpy as np
import pytest
import torch

from silverrec.data.dataset import JaggedColumn
from silverrec.models.over_arch import OverArch, OverArchConfig
from silverrec.models.side_features import (AttributeSpec, SideFeatures, holding_counts, holding_counts_pairwise,
                                            num_side_features, side_feature_specs)
from silverrec.models.two_tower import TwoTowerConfig, build_two_tower
from silverrec.schema import Feature, Schema

SCHEMA = Schema((), (Feature("item_id", tuple(f"i{i}" for i in range(30))),
                     Feature("colour", ("red", "green", "blue", "grey")),
                     Feature("labels", tuple(f"l{i}" for i in range(6)), max_length=3),
                     Feature("year", tuple(str(y) for y in range(1990, 2026)))))


def _columns(n, rng):
    """Item columns of SCHEMA: colour single-valued, labels 0-3 distinct values, year single-valued
    (some items without a year), and interaction counts."""
    labels = [sorted(rng.choice(6, rng.integers(0, 4), replace=False).tolist()) for _ in range(n)]
    years = [[] if rng.random() < 0.2 else [int(rng.integers(0, 36))] for _ in range(n)]
    return {"colour": JaggedColumn.from_ids(rng.integers(0, 4, n)), "labels": JaggedColumn.from_lists(labels),
            "year": JaggedColumn.from_lists(years)}, rng.integers(0, 9, n)


def _loop(cols, counts, specs, history, items, n):
    """The features of one (history list, candidate list), straight from the module docstring."""
    lp = np.log1p(counts.astype(np.float64))
    z = lambda c: (math.log1p(c) - lp.mean()) / lp.std()  # noqa: E731
    h = [x for x in history if 0 <= x < n]
    years = {r: 1990.0 + cols["year"].row(r)[0] for r in range(n) if cols["year"].row(r).size}
    s = np.std(list(years.values()))
    out = []
    for i in items:
        known = 0 <= i < n
        row = []
        for spec in specs:
            if spec.kind == "categorical":
                mine = set(cols[spec.name].row(i).tolist()) if known else set()
                m = sum(bool(mine & set(cols[spec.name].row(x).tolist())) for x in h)
                row += [m / max(len(h), 1), math.log1p(m), float(m > 0)]
            elif spec.kind == "numeric":
                ys = [years[x] for x in h if x in years]
                y_max, y_mean = (max(ys), sum(ys) / len(ys)) if ys else (0.0, 0.0)
                ok = known and i in years and bool(ys)
                y = years[i] if ok else 0.0
                row += [(y - y_max) / s if ok else 0.0, (y - y_mean) / s if ok else 0.0, float(ok and y > y_max),
                        (y_max - y_mean) / s]
            else:
                row += [z(counts[i]) if known else z(0)]
        out.append(row)
    return out


def test_specs_follow_the_schema():
    specs = side_feature_specs(SCHEMA, ["all"])
    assert specs == [AttributeSpec("colour", "categorical", 1, 4), AttributeSpec("labels", "categorical", 3, 6),
                     AttributeSpec("year", "numeric", 1), AttributeSpec("popularity", "popularity", 0)]
    assert num_side_features(specs) == 3 + 3 + 4 + 1
    assert [s.name for s in side_feature_specs(SCHEMA, ["popularity", "year"])] == ["popularity", "year"]


@pytest.mark.parametrize("names", [["all"], ["year"], ["popularity", "colour"], ["labels"]])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("l", [7, 70])
def test_side_features_equal_a_python_loop(names, seed, l):
    rng = np.random.default_rng(seed)
    n, b, k = 30, 5, 9
    cols, counts = _columns(n, rng)
    specs = side_feature_specs(SCHEMA, names)
    sf = SideFeatures(specs, n)
    sf.set_items_from(SCHEMA, cols, counts)
    history = torch.from_numpy(rng.integers(-1, n + 3, (b, l)))  # -1 padding and unknown ids (>= N)
    history[0] = -1  # an empty history
    items = torch.from_numpy(rng.integers(-1, n + 3, (b, k)))
    got = sf(history, items)
    assert got.shape == (b, k, num_side_features(specs)) and got.dtype == torch.float32
    for r in range(b):
        want = torch.tensor(_loop(cols, counts, specs, history[r].tolist(), items[r].tolist(), n), dtype=torch.float32)
        torch.testing.assert_close(got[r], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_holding_counts_equal_the_pairwise_comparison(seed):
    """The bitset counts (the graph's path) against comparing every (history, candidate) value
    pair: repeated values within an item, -1 values, unknown history slots, L across word edges."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(25):
        b, k, w, v = (int(torch.randint(1, hi, (1,), generator=g)) for hi in (4, 40, 5, 12))
        l = int(torch.randint(0, 140, (1,), generator=g))
        a_h, a_c = torch.randint(-1, v, (b, l, w), generator=g), torch.randint(-1, v, (b, k, w), generator=g)
        known = torch.rand(b, l, generator=g) > 0.2
        assert torch.equal(holding_counts(a_h, a_c, known, v), holding_counts_pairwise(a_h, a_c, known))


def test_value_ids_beyond_the_vocabulary_are_refused():
    sf = SideFeatures([AttributeSpec("colour", "categorical", 1, 4)], 3)
    with pytest.raises(ValueError, match="attribute 'colour' has value id 4, its vocabulary 4 values"):
        sf.set_tables({"colour": [[0], [4], [1]]})


def test_side_features_with_no_history_slots():
    sf = SideFeatures(side_feature_specs(SCHEMA, ["all"]), 30)
    sf.set_items_from(SCHEMA, *_columns(30, np.random.default_rng(0)))
    out = sf(torch.zeros(2, 0, dtype=torch.int64), torch.tensor([[0, 1], [2, -1]]))
    assert out.shape == (2, 2, sf.num_features) and torch.isfinite(out).all()


def test_bad_names_are_named():
    with pytest.raises(ValueError, match=r"unknown item attribute\(s\) \['category'\].*'colour', 'labels', 'year'"):
        side_feature_specs(SCHEMA, ["category"])
    with pytest.raises(ValueError, match="twice"):
        OverArchConfig(side_features=["year", "year"])
    with pytest.raises(ValueError, match="stands alone"):
        side_feature_specs(SCHEMA, ["all", "year"])
    sf = SideFeatures(side_feature_specs(SCHEMA, ["year", "colour"]), 30)
    cols, counts = _columns(30, np.random.default_rng(0))
    with pytest.raises(ValueError, match="no item column 'colour'"):
        sf.set_items_from(SCHEMA, {"year": cols["year"]}, counts)


def test_over_arch_reads_side_features():
    specs = side_feature_specs(SCHEMA, ["colour", "year"])
    cfg = OverArchConfig(hidden=[8, 4], num_tasks=2, side_features=["colour", "year"], num_items=30)
    arch = OverArch(6, cfg, specs)
    arch.side_features.set_items_from(SCHEMA, *_columns(30, np.random.default_rng(0)))
    u, v = torch.randn(3, 2, 6), torch.randn(3, 5, 6)
    history, items = torch.randint(-1, 30, (3, 4)), torch.randint(0, 30, (3, 5))
    out = arch(u, v, history, items)
    assert out.shape == (3, 5, 2)
    with pytest.raises(ValueError, match="pass history"):
        arch(u, v)
    # the side features move the logits: a different history gives different scores
    assert not torch.allclose(out, arch(u, v, torch.full_like(history, -1), items))
    mol = OverArch(6, OverArchConfig(kind="mixture_of_logits", hidden=[8], num_tasks=2, side_features=["popularity"],
                                     num_items=30), side_feature_specs(SCHEMA, ["popularity"]))
    assert mol(u, v, history, items).shape == (3, 5, 2)
    with pytest.raises(ValueError, match="side_feature_specs"):
        OverArch(6, cfg)


def test_two_tower_without_side_features_keeps_its_state_dict_keys(tiny_dataset):
    plain = build_two_tower(tiny_dataset.schema, TwoTowerConfig(embedding_dim=8, user_layers=[8], item_layers=[8]))
    side = build_two_tower(tiny_dataset.schema, TwoTowerConfig(embedding_dim=8, user_layers=[8], item_layers=[8],
                                                               over_arch={"side_features": ["all"]}))
    assert not plain.uses_history and side.uses_history
    extra = sorted(set(side.state_dict()) - set(plain.state_dict()))
    attributes = [f.name for f in tiny_dataset.schema.item_features[1:]] + ["popularity"]
    assert side.over_arch.side_features.names == attributes
    assert extra == ["over_arch.scorer.mlp.side.weight"] + sorted(
        f"over_arch.side_features.{kind}_{j}" for j in range(len(attributes)) for kind in ("scale", "table"))
    assert side.over_arch.side_features.num_items == tiny_dataset.schema.num_items
