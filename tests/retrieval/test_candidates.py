import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from silverrec.retrieval.candidates import merge_candidates


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(-1, 12), min_size=1, max_size=9), min_size=1, max_size=4).filter(lambda r: len({len(x) for x in r}) == 1))
def test_merge_candidates_is_the_sorted_set_union(rows):
    got = merge_candidates(torch.tensor(rows))
    for r, g in zip(rows, got.tolist()):
        want = sorted({x for x in r if x >= 0})
        assert g == want + [-1] * (len(r) - len(want))
