"""The synthetic world: sizes, determinism, the structure it promises, the sampler, the cache."""
import itertools
import math
import os
import warnings

import numpy as np
import pytest
import torch

from silverrec.data import cache as cache_mod
from silverrec.data.synthetic import (SyntheticConfig, generate, generate_with_world, sample_without_replacement,
                                      synthetic_dataset)
from silverrec.data.synthetic_world import CLASSIC, NOVELTY, creator_items, recency_preference
from silverrec.schema import TaskKind

# a mid-size world: big enough for the statistics below, ~1 s to generate
MID = SyntheticConfig.preset("small", num_users=1_000, num_items=3_000, num_creators=150, num_tags=400)


@pytest.fixture(scope="module")
def tiny():
    return generate_with_world(SyntheticConfig.preset("tiny"))


@pytest.fixture(scope="module")
def mid():
    return generate_with_world(MID)


def test_tiny_preset_sizes_and_schema(tiny):
    ds, _ = tiny
    ds.validate()
    assert (ds.users.num_rows, ds.items.num_rows) == (300, 600)
    assert 7_000 <= len(ds.interactions) <= 12_000
    s = ds.schema
    assert [f.name for f in s.user_features] == ["country", "language", "age_bucket"]
    assert [f.name for f in s.item_features] == ["item_id", "category", "language", "creator", "tags", "year"]
    assert [f.name for f in s.filterable_features] == ["category", "language", "creator", "tags", "year"]
    assert s.item_feature("tags").max_length == 5 and s.history_length == 50
    assert s.item_ids[:2] == ("i000000", "i000001")
    assert [(t.name, t.kind) for t in s.tasks] == [("click", TaskKind.BINARY), ("like", TaskKind.BINARY),
                                                  ("share", TaskKind.BINARY), ("watch", TaskKind.REGRESSION)]
    assert len(s.user_feature("country").vocab) == 25 and len(s.item_feature("category").vocab) == 30
    lengths = ds.items.columns["tags"].lengths
    assert lengths.min() >= 1 and lengths.max() <= 5
    for r in range(ds.items.num_rows):  # tags of an item are distinct
        row = ds.items.columns["tags"].row(r)
        assert np.unique(row).size == row.size


def test_presets_are_documented_sizes():
    for name, (u, n, ipu) in {"default": (20_000, 50_000, 50.0), "small": (4_000, 10_000, 36.0)}.items():
        c = SyntheticConfig.preset(name)
        assert (c.num_users, c.num_items) == (u, n)
        assert c.num_users * c.interactions_per_user == pytest.approx({"default": 1e6, "small": 1.44e5}[name])
    with pytest.raises(ValueError, match="unknown synthetic preset 'huge'"):
        SyntheticConfig.preset("huge")


def test_deterministic_for_a_seed(tiny):
    ds, _ = tiny
    again = generate(SyntheticConfig.preset("tiny"))
    other = generate(SyntheticConfig.preset("tiny", seed=1))
    for a, b in [(ds.interactions.user, again.interactions.user), (ds.interactions.item, again.interactions.item),
                 (ds.interactions.timestamp, again.interactions.timestamp), (ds.split.test, again.split.test),
                 (ds.items.columns["tags"].values, again.items.columns["tags"].values),
                 (ds.users.columns["country"].values, again.users.columns["country"].values)]:
        np.testing.assert_array_equal(a, b)
    for k in ds.interactions.labels:
        np.testing.assert_array_equal(ds.interactions.labels[k], again.interactions.labels[k])
    assert ds.schema == again.schema
    assert not np.array_equal(ds.interactions.item[:500], other.interactions.item[:500])


def test_sorted_by_user_then_time_and_split_is_time_ordered(mid):
    ds, _ = mid
    it, sp = ds.interactions, ds.split
    key = it.user * (10 ** 11) + (it.timestamp - it.timestamp.min())
    assert np.all(np.diff(key) >= 0)
    assert sp.train.size + sp.valid.size + sp.test.size == len(it)
    assert np.intersect1d(sp.train, sp.valid).size == 0 and np.intersect1d(sp.valid, sp.test).size == 0
    assert sp.test.size == pytest.approx(0.1 * len(it), rel=0.15)
    for u in np.unique(it.user)[:200]:
        rows = np.flatnonzero(it.user == u)
        tr, va, te = (np.intersect1d(rows, s) for s in (sp.train, sp.valid, sp.test))
        assert va.size >= 1 and te.size >= 1  # min_interactions=5 >= 3
        assert it.timestamp[tr].max() <= it.timestamp[va].min() and it.timestamp[va].max() <= it.timestamp[te].min()


def test_world_structure(mid):
    ds, world = mid
    lat, it = world.latents, ds.interactions
    blocked = (lat.category_term <= -1e3).numpy()
    assert not blocked[it.user, lat.item_category[it.item]].any()  # thresholds are hard
    assert blocked.mean() > 0.2  # ... and block a good share of categories
    user_year = 1970 + world.active_start / (365.2425 * 86400) - MID.year_min
    assert np.all(lat.item_year[it.item] <= np.floor(user_year[it.user]))  # no item before its release
    own = (lat.user_language[it.user] == lat.item_language[it.item]).mean()
    catalogue_share = np.bincount(lat.item_language, minlength=10) / MID.num_items
    assert own > 0.5 and own > 2 * catalogue_share[lat.user_language[it.user]].mean(), own  # own language
    home = np.array([0, 0, 2, 0, 1, 4, 3, 6, 1, 5, 7, 9, 8, 0, 1, 0, 1, 2, 8, 4, 3, 4, 1, 0, 0])
    assert (ds.users.columns["language"].values == home[ds.users.columns["country"].values]).mean() > 0.8
    counts = np.sort(np.bincount(it.item, minlength=MID.num_items))[::-1]
    assert counts[: MID.num_items // 10].sum() > 0.35 * counts.sum()  # heavy head (Zipf-like)
    # creators are specialised: most of a creator's items share its most common category
    cr, cat = lat.item_creator, lat.item_category
    top_share = [np.bincount(cat[cr == c]).max() / (cr == c).sum() for c in np.unique(cr) if (cr == c).sum() >= 5]
    assert np.mean(top_share) > 0.6


def test_recency_preference_by_type():
    age = np.array([0.0, 2.0, 25.0])
    assert recency_preference(np.full(3, NOVELTY), age)[0] > recency_preference(np.full(3, NOVELTY), age)[2]
    assert recency_preference(np.full(3, CLASSIC), age)[2] > recency_preference(np.full(3, CLASSIC), age)[0]
    assert np.all(recency_preference(np.zeros(3, dtype=np.int64), age) == 0)


def test_labels_differ_between_tasks(mid):
    ds, _ = mid
    lab = ds.interactions.labels
    assert np.all(lab["click"] == 1)
    like, share, watch = lab["like"].mean(), lab["share"].mean(), lab["watch"]
    assert 0.2 < like < 0.8 and 0.01 < share < like / 2
    assert watch.min() >= 0 and watch.max() <= 1 and 0.05 < watch.std()
    assert abs(np.corrcoef(lab["like"], lab["share"])[0, 1]) < 0.9


def _recall_at_100(ds, scores_of):
    it, sp = ds.interactions, ds.split
    users = np.unique(it.user[sp.test])
    s = scores_of(users).clone()
    tr = sp.train[np.isin(it.user[sp.train], users)]
    s[torch.from_numpy(np.searchsorted(users, it.user[tr])), torch.from_numpy(it.item[tr])] = -float("inf")
    top = s.topk(100, dim=1).indices.numpy()
    rows = np.searchsorted(users, it.user[sp.test])
    return (top[rows] == it.item[sp.test][:, None]).any(1).mean()


def test_oracle_recall_orders_popularity_dot_full(mid):
    """The dot-product part of the logit beats popularity by far; the full logit beats it."""
    ds, world = mid
    pop = torch.from_numpy(np.bincount(ds.interactions.item[ds.split.train], minlength=MID.num_items)).float()
    r_pop = _recall_at_100(ds, lambda u: pop.expand(len(u), -1))
    r_dot = _recall_at_100(ds, lambda u: world.latents.logits(u, full=False))
    r_full = _recall_at_100(ds, lambda u: world.latents.logits(u, full=True))
    assert r_dot > 1.5 * r_pop and r_full > r_dot + 0.1, (r_pop, r_dot, r_full)


def test_vectorised_loyalty_matches_per_user_loop(mid):
    _, world = mid
    lat = world.latents
    ue, ve = lat.extended(True)
    users = np.random.default_rng(0).choice(MID.num_users, 100, replace=False)
    base = ue[torch.from_numpy(users)] @ ve.T
    fast = lat.logits(users, full=True)  # vectorised add_loyalty
    slow = base.clone()
    for j, u in enumerate(users.tolist()):  # plain reference
        for c in lat.loyal_creators[lat.loyal_offsets[u]:lat.loyal_offsets[u + 1]].tolist():
            slow[j, torch.from_numpy(np.flatnonzero(lat.item_creator == c))] += lat.loyalty_bonus
    assert (fast != base).any(1).sum() > 20
    torch.testing.assert_close(fast, slow)
    # with a column permutation and a truncated width (the sampler's release-year order)
    perm = np.random.default_rng(1).permutation(MID.num_items)
    pos = np.empty_like(perm)
    pos[perm] = np.arange(perm.size)
    part = base[:, torch.from_numpy(perm[:1000])].clone()
    lat.add_loyalty(part, users, creator_items(lat.item_creator, MID.num_creators), pos)
    torch.testing.assert_close(part, slow[:, torch.from_numpy(perm[:1000])])


def test_sampler_matches_exact_inclusion_probabilities():
    logits = torch.tensor([2.0, 1.0, 0.0, -0.5, -1e4])  # the last item is impossible
    p = torch.softmax(logits, 0).double().numpy()
    exact = np.zeros(5)  # inclusion probability of each item in a 2-draw successive sample
    for i, j in itertools.permutations(range(4), 2):
        pr = p[i] * p[j] / (1 - p[i])
        exact[i] += pr
        exact[j] += pr
    b = 40_000
    rows, items = sample_without_replacement(logits.repeat(b, 1), torch.full((b,), 2), np.random.default_rng(0))
    assert torch.equal(torch.bincount(rows, minlength=b), torch.full((b,), 2))
    freq = np.bincount(items.numpy(), minlength=5) / b
    assert freq[4] == 0
    np.testing.assert_allclose(freq, exact, atol=0.01)
    first = np.bincount(items[::2].numpy(), minlength=5) / b  # first draw ~ softmax
    np.testing.assert_allclose(first, p, atol=0.01)


def test_sampler_caps_rows_at_possible_items():
    logits = torch.tensor([[0.0, -1e4, 0.0, -1e4], [0.0, 0.0, 0.0, 0.0]])
    rows, items = sample_without_replacement(logits, torch.tensor([3, 3]), np.random.default_rng(1))
    assert rows.tolist().count(0) == 2 and set(items[rows == 0].tolist()) == {0, 2}
    assert sorted(items[rows == 1].tolist()) != [] and len(set(items[rows == 1].tolist())) == 3
    with pytest.raises(ValueError, match="logits must be float32"):
        sample_without_replacement(logits.double(), torch.tensor([1, 1]), np.random.default_rng(0))


def test_config_validation():
    with pytest.raises(ValueError, match="num_users must be >= 1, got 0"):
        SyntheticConfig(num_users=0)
    with pytest.raises(ValueError, match="max_interactions=3 < min_interactions=5"):
        SyntheticConfig(max_interactions=3)
    with pytest.raises(ValueError, match="start_time"):
        SyntheticConfig(start_time=0)
    assert SyntheticConfig().digest() != SyntheticConfig(seed=1).digest()


def test_builder_overrides_and_cache(tmp_path, monkeypatch):
    ds = synthetic_dataset("tiny", seed=2, num_users=120, cache_dir=tmp_path)
    assert ds.users.num_rows == 120
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("synthetic-tiny-") and files[0].endswith(".npz")
    monkeypatch.setattr("silverrec.data.synthetic.generate", lambda *a, **k: pytest.fail("cache miss"))
    again = synthetic_dataset("tiny", seed=2, num_users=120, cache_dir=tmp_path)
    again.validate()
    assert again.schema == ds.schema
    for name in ("user", "item", "timestamp"):
        np.testing.assert_array_equal(getattr(again.interactions, name), getattr(ds.interactions, name))
    np.testing.assert_array_equal(again.interactions.labels["watch"], ds.interactions.labels["watch"])
    np.testing.assert_array_equal(again.items.columns["tags"].offsets, ds.items.columns["tags"].offsets)
    np.testing.assert_array_equal(again.split.valid, ds.split.valid)


def test_cache_rebuilds_unreadable_entry_and_leaves_no_temp_files(tmp_path, tiny):
    ds, _ = tiny
    (tmp_path / "k.npz").write_bytes(b"not a zip")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = cache_mod.cached(tmp_path, "k", lambda: ds)
    assert out is ds and any("rebuilding unreadable cache entry" in str(x.message) for x in w)
    assert sorted(os.listdir(tmp_path)) == ["k.npz"]
    assert len(cache_mod.load_dataset(tmp_path / "k.npz").interactions) == len(ds.interactions)
    with pytest.raises(ValueError, match="plain file name"):
        cache_mod.cached(tmp_path, "../x", lambda: ds)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        cache_mod.load_dataset(tmp_path / "missing.npz")


def test_default_world_logit_scale_is_moderate():
    """Guards the tuning: a user's single best item does not take most of the mass."""
    ds, world = generate_with_world(SyntheticConfig.preset("tiny"))
    ue, ve = world.latents.extended(True)
    p = torch.softmax(ue @ ve.T, 1)
    assert float(p.max(1).values.median()) < 0.5
    assert math.isfinite(float(p.sum()))
