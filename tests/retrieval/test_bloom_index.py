"""``BloomIndex``: no misses, exact NOT, exact matches and candidate check, row order, FP rate, export."""
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.retrieval.bloom_strategies import FEATURES, expressions, item_tables, oracle
from silverrec.ops.reference import BLOOM_NOT_ROWS
from silverrec.retrieval import BloomIndex, FilterError, unpack_mask
from silverrec.retrieval.attribute_table import AttributeTable


@settings(deadline=None, max_examples=40, derandomize=True)
@given(items=item_tables(), exprs=st.lists(expressions(), min_size=1, max_size=4),
       num_hashes=st.integers(1, 4), bits_multiplier=st.sampled_from([0.5, 2.0, 8.0]),
       dense_fraction=st.sampled_from([0.0, 0.15, 2.0]))
def test_search_never_misses_and_exact_paths_are_exact(items, exprs, num_hashes, bits_multiplier, dense_fraction) -> None:
    index = BloomIndex.build(items, num_hashes=num_hashes, bits_multiplier=bits_multiplier, features=FEATURES,
                             dense_fraction=dense_fraction)
    texts = [t for _, t in exprs]
    truth = torch.tensor([[oracle(ast, item) for item in items] for ast, _ in exprs])
    assert torch.equal(index.matches(texts), truth)
    found = index.search(texts)
    assert found.shape == truth.shape and found.dtype == torch.bool
    assert not bool((truth & ~found).any()), "the Bloom mask dropped a true match"
    rows = torch.arange(len(items)).expand(len(texts), -1)
    assert torch.equal(index.check(texts, rows), truth)
    # the exact check removes every false positive of the mask
    assert torch.equal(index.check(texts, torch.where(found, rows, -1)), truth)


@pytest.mark.parametrize("dense_fraction", [1 / 16, 2.0])
def test_not_is_exact_even_with_a_saturated_filter(dense_fraction: float) -> None:
    rng = random.Random(0)
    items = [{"tags": [f"t{rng.randrange(30)}" for _ in range(8)]} for _ in range(500)]
    index = BloomIndex.build(items, num_hashes=2, bits_multiplier=0.25, dense_fraction=dense_fraction)
    exprs = ["NOT tags:t3", "NOT tags:t3 AND NOT tags:t4", "NOT (tags:t1 OR tags:t2)", "NOT tags:nope"]
    assert torch.equal(index.search(exprs), index.matches(exprs))
    if dense_fraction > 1:  # no exact rows; M = 2: every Bloom test passes
        assert index.num_bits == 2 and not index.dense_terms.any()
        assert bool(index.search(["tags:t3"]).all())  # positive terms are only an upper bound
    else:  # each tag is held by ~25% of the items: all get exact rows, the index is exact
        assert index.dense_terms.all() and index.bits.shape[0] == index.num_bits + 30
        assert torch.equal(index.search(["tags:t3", "tags:t3 OR tags:t9"]), index.matches(["tags:t3", "tags:t3 OR tags:t9"]))


def test_frequent_terms_get_exact_rows() -> None:
    rng = random.Random(3)
    items = [{"lang": ["en" if i % 10 else "de"], "tags": [f"t{rng.randrange(400)}" for _ in range(4)]}
             for i in range(2000)]
    index = BloomIndex.build(items, num_hashes=3, bits_multiplier=4.0)  # lang:de holds 10% >= 1/16
    d = index.dictionary
    assert index.dense_terms[d.term_id("lang", "en")] and index.dense_terms[d.term_id("lang", "de")]
    assert index.dense_terms.sum() == 2 and index.num_bits == 16 and index.bits.shape[0] == 18
    plan = index.plan(["NOT lang:en", "lang:de AND NOT tags:t1"])
    # exact rows follow the 16 signature rows in term id order: lang:de (item 0) is row 16, lang:en row 17
    assert d.term_id("lang", "de") < d.term_id("lang", "en")
    assert plan.opcodes[0, 0] == BLOOM_NOT_ROWS and plan.hashes[0, 0].tolist() == [17, 17, 17]
    exact = ["lang:en", "NOT lang:de", "lang:de AND NOT tags:t1", "NOT lang:en OR NOT tags:t2"]
    assert torch.equal(index.search(exact), index.matches(exact))
    assert index.memory_bytes()["exact_rows"] == 2 * 32 * 8


def test_item_order_permutes_rows_but_not_answers() -> None:
    rng = random.Random(1)
    items = [{"lang": [rng.choice(["en", "de"])], "tags": [f"t{rng.randrange(9)}" for _ in range(3)]} for _ in range(200)]
    order = list(range(200))
    rng.shuffle(order)
    plain = BloomIndex.build(items, num_hashes=3, bits_multiplier=2.0)
    permuted = BloomIndex.build(items, num_hashes=3, bits_multiplier=2.0, item_order=order)
    exprs = ["lang:en AND NOT tags:t1", "tags IN (t2, t3)", ""]
    assert torch.equal(plain.search(exprs), permuted.search(exprs))
    assert torch.equal(plain.matches(exprs), permuted.matches(exprs))
    packed = permuted.search_packed(exprs)  # row order: row r is item order[r]
    assert torch.equal(unpack_mask(packed, 200), plain.search(exprs)[:, order])
    with pytest.raises(ValueError, match="permutation"):
        BloomIndex.build(items, item_order=[0] * 200)


def test_search_over_probed_clusters() -> None:
    items = [{"lang": ["en" if i % 3 else "de"]} for i in range(300)]
    index = BloomIndex.build(items, num_hashes=2, bits_multiplier=16.0)
    cluster_offsets = torch.tensor([0, 70, 70, 200, 300])
    probe = torch.tensor([[0, 3], [1, -1], [2, 2]])
    mask = unpack_mask(index.search_packed(["NOT lang:de"] * 3, probe, cluster_offsets), 300)
    exact = index.matches(["NOT lang:de"])[0]
    in_range = torch.zeros(3, 300, dtype=torch.bool)
    in_range[0, :70] = in_range[0, 200:] = True
    in_range[2, 70:200] = True
    assert torch.equal(mask, exact & in_range)
    with pytest.raises(ValueError, match="probe given without cluster_offsets"):
        index.search_packed(["lang:en"], probe=probe[:1])


def test_false_positive_rate_near_theory() -> None:
    rng = np.random.default_rng(0)
    vocab = np.array([f"v{i}" for i in range(5000)])
    items = [{"tags": list(vocab[np.unique(rng.integers(0, 5000, size=k))])} for k in rng.integers(3, 11, size=20000)]
    index = BloomIndex.build(items, num_hashes=4, bits_multiplier=12.0)
    queries = [f"tags:{v}" for v in rng.choice(vocab, size=64, replace=False)]
    found, truth = index.search(queries), index.matches(queries)
    negatives = (~truth).sum().item()
    fp_rate = (found & ~truth).sum().item() / negatives
    theory = index.expected_false_positive_rate()
    assert 0 < theory < 0.01
    assert theory / 2 <= fp_rate <= 2 * theory, (fp_rate, theory)
    assert index.num_bits == 120 and index.num_hashes == 4 and not index.dense_terms.any()
    assert index.memory_bytes()["bloom"] == 120 * ((20000 + 63) // 64) * 8


def test_unknown_feature_and_values() -> None:
    index = BloomIndex.build([{"lang": ["en"]}, {"lang": ["de"], "creator": [7]}])
    with pytest.raises(FilterError, match="unknown feature 'genre'"):
        index.search(["genre:rock"])
    with pytest.raises(FilterError, match="unknown feature 'genre'"):
        index.matches(["genre:rock"])
    assert index.search(["lang:fr", "NOT lang:fr", "creator:7", "creator:'7'"]).tolist() == [
        [False, False], [True, True], [False, True], [False, True]]


class _Check(torch.nn.Module):
    def __init__(self, table: AttributeTable) -> None:
        super().__init__()
        self.table = table

    def forward(self, opcodes: torch.Tensor, terms: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.table(opcodes, terms, rows)


def test_exact_check_exports_with_dynamic_batch() -> None:
    rng = random.Random(2)
    items = [{"lang": [rng.choice(["en", "de", "fr"])], "tags": [f"t{rng.randrange(5)}"]} for _ in range(50)]
    index = BloomIndex.build(items)
    exprs = ["lang:en AND NOT tags:t1", "tags:t2 OR lang:fr", "NOT lang:de", "lang:xx"]
    plan = index.plan(exprs)
    rows = torch.tensor([[rng.randrange(-1, 60) for _ in range(7)] for _ in exprs])  # -1 and >= N never pass
    batch = torch.export.Dim("batch")
    ep = torch.export.export(_Check(index.table), (plan.opcodes, plan.terms, rows),
                             dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
    truth = index.matches(exprs)
    valid = (rows >= 0) & (rows < 50)
    expected = torch.gather(truth, 1, rows.clamp(0, 49)) & valid
    assert torch.equal(ep.module()(plan.opcodes, plan.terms, rows), expected)
    assert torch.equal(ep.module()(plan.opcodes[:2], plan.terms[:2], rows[:2]), expected[:2])


def test_build_errors() -> None:
    with pytest.raises(ValueError, match="num_hashes"):
        BloomIndex.build([{"a": ["b"]}], num_hashes=0)
    with pytest.raises(ValueError, match="bits_multiplier"):
        BloomIndex.build([{"a": ["b"]}], bits_multiplier=0)
    with pytest.raises(ValueError, match="dense_fraction"):
        BloomIndex.build([{"a": ["b"]}], dense_fraction=-1)
    with pytest.raises(ValueError, match="empty"):
        BloomIndex.build([])
    index = BloomIndex.build([{}, {}], features=["a"])  # no terms at all: only TRUE/FALSE plans
    assert index.search(["", "NOT a:b", "a:b"]).tolist() == [[True, True], [True, True], [False, False]]
    with pytest.raises(FilterError, match=r"unknown feature 'c' in filter; the index knows \['a'\]"):
        index.search(["c:d"])


def test_built_from_a_data_set() -> None:
    """``RecDataset.item_terms()`` feeds the index; filters name the schema's features."""
    from silverrec.data.synthetic import synthetic_dataset

    ds = synthetic_dataset("tiny", seed=1)
    features = [f.name for f in ds.schema.filterable_features]
    items = ds.item_terms()
    index = BloomIndex.build(items, features=features)
    lang, cat = items[0]["language"][0], items[0]["category"][0]
    exprs = [f"language:{lang} AND NOT category:{cat}", f'tags:"{items[0]["tags"][0]}" OR 4:2022', "year IN (2020, 2021)"]
    truth = torch.tensor([[lang in it["language"] and cat not in it["category"] for it in items],
                          [items[0]["tags"][0] in it["tags"] or "2022" in it["year"] for it in items],
                          [bool({"2020", "2021"} & set(it["year"])) for it in items]])
    assert torch.equal(index.matches(exprs), truth)
    assert not bool((truth & ~index.search(exprs)).any())


def test_index_module_exports_with_dynamic_batch() -> None:
    rng = random.Random(4)
    items = [{"lang": [rng.choice(["en", "de"])], "tags": [f"t{rng.randrange(40)}" for _ in range(3)]} for _ in range(300)]
    index = BloomIndex.build(items, num_hashes=3, bits_multiplier=4.0)
    plan = index.plan(["lang:en AND NOT tags:t1", "tags:t2 OR NOT lang:de", "tags IN (t3, t4)"])
    probe = torch.tensor([[0, 1], [1, -1], [2, 0]])
    cluster_offsets = torch.tensor([0, 100, 250, 300])
    batch = torch.export.Dim("batch")
    inputs = (plan.opcodes, plan.terms, plan.hashes, probe, cluster_offsets)
    ep = torch.export.export(index, inputs, dynamic_shapes=({0: batch}, {0: batch}, {0: batch}, {0: batch}, None))
    assert torch.equal(ep.module()(*inputs), index(*inputs))
    assert torch.equal(ep.module()(*(t[:2] for t in inputs[:4]), cluster_offsets), index(*inputs)[:2])


def test_mask_feeds_the_ivf_scan_and_check_removes_false_positives() -> None:
    """The packed-mask contract with ``ivf_int8_topk``: results lie in probed clusters and in the mask."""
    from silverrec.ops import ivf_int8_topk

    rng = random.Random(5)
    n = 500
    items = [{"lang": [rng.choice(["en", "de", "fr"])], "tags": [f"t{rng.randrange(50)}" for _ in range(3)]} for _ in range(n)]
    index = BloomIndex.build(items, num_hashes=3, bits_multiplier=1.0, dense_fraction=2.0)  # narrow: many FPs
    exprs = ["lang:de AND NOT tags:t1", "tags:t2 OR tags:t3"]
    plan = index.plan(exprs)
    cluster_offsets, probe = torch.tensor([0, 120, 300, 500]), torch.tensor([[0, 2], [1, -1]])
    mask = index(plan.opcodes, plan.terms, plan.hashes, probe, cluster_offsets)
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(-127, 128, (n, 8), dtype=torch.int8, generator=gen)
    queries = torch.randint(-127, 128, (2, 8), dtype=torch.int8, generator=gen)
    _, rows, _ = ivf_int8_topk(queries, torch.ones(2), codes, torch.ones(n), cluster_offsets, probe, mask, 50)
    in_mask = unpack_mask(mask, n)
    truth = index.matches(exprs)
    passed = index.check(plan, rows)
    for b in range(2):
        got = [r for r in rows[b].tolist() if r >= 0]
        assert got and all(in_mask[b, r] for r in got)
        assert passed[b].tolist() == [r >= 0 and bool(truth[b, r]) for r in rows[b].tolist()]
    assert bool((~passed & (rows >= 0)).any())  # the mask had false positives; the check removed them
