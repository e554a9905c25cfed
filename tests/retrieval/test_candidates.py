import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from silverrec.retrieval.candidates import merge_candidates, merge_ranked


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(-1, 12), min_size=1, max_size=9), min_size=1, max_size=4).filter(lambda r: len({len(x) for x in r}) == 1))
def test_merge_candidates_is_the_sorted_set_union(rows):
    got = merge_candidates(torch.tensor(rows))
    for r, g in zip(rows, got.tolist()):
        want = sorted({x for x in r if x >= 0})
        assert g == want + [-1] * (len(r) - len(want))


def test_merge_ranked_keeps_each_row_at_its_best_rank() -> None:
    """The union of T ranked lists (each row once, ordered by its best rank over the lists, list
    order breaking ties) equals a plain-Python merge, and the cut keeps its first M rows."""
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        B, T, K = 3, 4, 12
        rows = torch.randint(-1, 25, (B, T, K), generator=g)
        for width in (1, 10, T * K):
            got = merge_ranked(rows, width)
            assert got.shape == (B, width)
            for b in range(B):
                want = []
                for v in rows[b].transpose(0, 1).reshape(-1).tolist():
                    if v >= 0 and v not in want:
                        want.append(v)
                want = (want + [-1] * width)[:width]
                assert got[b].tolist() == want
