"""Reserved term slots for fresh values: exact on the main index (TERM empty, NOT full) and on a
fresh index built with them, through the filter ops and the exact check."""
import numpy as np
import pytest
import torch

from silverrec.retrieval import BloomIndex
from silverrec.retrieval.filter_plan import compile_plans
from silverrec.retrieval.fresh_index import FilterLayout, build_fresh_index
from silverrec.retrieval.fresh_terms import FreshTerms
from silverrec.retrieval.packed_mask import unpack_mask


def _main():
    rng = np.random.default_rng(0)
    items = [{"lang": [str(rng.choice(["en", "de"]))], "tag": [f"t{rng.integers(40)}", f"t{rng.integers(40)}"]}
             for _ in range(300)]
    return BloomIndex.build(items, num_hashes=3, bits_multiplier=2.0, fresh_terms=8, fresh_bit_rows=4)


def test_reserved_slots_are_exact_on_main_and_fresh_rows():
    main = _main()
    d, t = main.dictionary, len(main.dictionary)
    assert main.table.posting_offsets.numel() == t + 8 + 1 and main.fresh_terms == 8
    # the 4 reserved positions share one zero row in the main index (the fresh index has all 4)
    assert main.num_bit_rows == main.bits.shape[0] - 1 + 4 and (main.bits[-1] == 0).all()
    fresh = FreshTerms(t, 8, main.num_bit_rows - 4, 4, main.num_hashes)
    fresh.add([("tag", "brand-new"), ("lang", "xx")])
    view = fresh.view()
    layout = FilterLayout(main.term_hashes.numpy(), main.dense_terms, main.num_bit_rows, main.table.width,
                          8, 4)
    # fresh rows: 0 holds the new tag, 1 a published tag, 2 both new values
    new_tag, new_lang, old = view.term_id("tag", "brand-new"), view.term_id("lang", "xx"), d.term_id("tag", "t1")
    sets = [[new_tag], [old], sorted([new_tag, new_lang])]
    offsets = np.cumsum([0] + [len(s) for s in sets])
    fi = build_fresh_index(torch.randn(3, 4), offsets, np.concatenate(sets), np.array([900, 901, 902]),
                           np.zeros(0, dtype=np.int64), layout, main.num_items, fresh_hashes=view.hashes)
    filters = ["tag:brand-new", "NOT tag:brand-new", "tag:t1 AND NOT lang:xx", "lang:xx OR tag:t1", "tag:unknown"]
    plan = compile_plans(filters, d, main.term_hashes.numpy(), main.dense_terms, fresh=view)
    everything = torch.tensor([0, main.num_items])
    main_mask = unpack_mask(main(plan.opcodes, plan.terms, plan.hashes, torch.zeros(5, 1, dtype=torch.int64), everything),
                            main.num_items)
    exact_main = main.matches(filters)  # no main item holds a fresh value
    assert not main_mask[0].any() and main_mask[1].all() and (main_mask[2] >= exact_main[2]).all()
    assert torch.equal(exact_main[2], main.matches(["tag:t1"])[0])
    f_mask = torch.ops.silverrec.bloom_search(fi.bits, plan.opcodes, plan.terms, plan.hashes, fi.posting_offsets,
                                              fi.posting_rows, torch.zeros(5, 1, dtype=torch.int64),
                                              torch.tensor([0, fi.codes.shape[0]]))
    exact_fresh = torch.ops.silverrec.exact_filter(plan.opcodes, plan.terms, fi.row_terms[:3].expand(5, 3, -1))
    want = [[True, False, True], [False, True, False], [False, True, False], [False, True, True], [False, False, False]]
    assert exact_fresh.tolist() == want
    got = unpack_mask(f_mask, 3)
    assert (got >= exact_fresh).all()  # the Bloom stage never drops a match
    assert int(plan.hashes.max()) >= main.bits.shape[0]  # positions past the main bits: mapped to its zero row
    assert got[1].tolist() == want[1]  # NOT of a fresh value is exact there too


def test_full_slots_refuse_and_name_the_setting():
    fresh = FreshTerms(10, 1, 0, 2, 3)
    fresh.add([("tag", "a")])
    fresh.check_room([("tag", "a")])  # a value with a slot needs none
    with pytest.raises(ValueError, match=r"tag:'b'.*serving\.fresh_terms"):
        fresh.check_room([("tag", "a"), ("tag", "b")])
    with pytest.raises(ValueError, match="reserves no slots"):
        FreshTerms(10, 0, 0, 0, 3).check_room([("tag", "b")])
