"""``torch.ops.silverrec.held_terms``: the exact check's membership lookup against its reference and
against the attribute table it is built from."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import silverrec  # noqa: F401  (registers the ops)
from silverrec.ops import held_terms
from silverrec.ops.reference import held_terms_reference


def random_case(seed: int, n: int, T: int, B: int, M: int, L: int, exact_share: float) -> tuple:
    """Random term sets of n rows; some terms get an exact bit row (and no posting list), as the
    Bloom index's frequent terms; candidates and plan terms include padding and out-of-range ids."""
    rng = np.random.default_rng(seed)
    holds = rng.random((n, T)) < rng.uniform(0.01, 0.6, size=T)  # [n, T]
    exact = rng.random(T) < exact_share
    W = max(1, (n + 63) // 64)
    term_rows = np.full(T, -1, dtype=np.int64)
    term_rows[exact] = np.arange(int(exact.sum())) + 2  # two unrelated rows first
    bits = np.zeros((2 + int(exact.sum()), 64 * W), dtype=bool)
    bits[:2] = rng.random((2, 64 * W)) < 0.5
    for t in np.flatnonzero(exact):
        bits[term_rows[t], :n] = holds[:, t]
    words = torch.from_numpy(np.packbits(bits, axis=1, bitorder="little").view("<i8").copy())
    lists = [np.flatnonzero(holds[:, t]) if not exact[t] else np.zeros(0, dtype=np.int64) for t in range(T)]
    offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(x) for x in lists])]), dtype=torch.int64)
    postings = torch.tensor(np.concatenate(lists + [np.zeros(0)]), dtype=torch.int32)
    rows = torch.from_numpy(rng.integers(-1, n + 2, size=(B, M)))
    terms = torch.from_numpy(rng.integers(-1, T + 2, size=(B, L)))
    want = np.full((B, M, L), -1)
    for b in range(B):
        for m in range(M):
            for j in range(L):
                r, t = int(rows[b, m]), int(terms[b, j])
                if 0 <= r < n and 0 <= t < T and holds[r, t]:
                    want[b, m, j] = t
    return (words, torch.from_numpy(term_rows), offsets, postings, rows, terms, n), torch.from_numpy(want)


@settings(deadline=None, max_examples=60, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 300), T=st.integers(0, 12), B=st.integers(0, 4),
       M=st.integers(0, 20), L=st.integers(0, 6), exact_share=st.sampled_from([0.0, 0.3, 1.0]))
def test_cpu_and_reference_match_the_term_sets(seed, n, T, B, M, L, exact_share) -> None:
    case, want = random_case(seed, n, T, B, M, L, exact_share)
    assert torch.equal(held_terms(*case), want)
    assert torch.equal(held_terms_reference(*case), want)


def test_bad_input_raises() -> None:
    case, _ = random_case(0, 100, 5, 2, 3, 2, 0.5)
    with pytest.raises(ValueError, match="term_rows\\[0\\] = 99"):
        held_terms(case[0], torch.full((5,), 99), *case[2:])
    with pytest.raises(ValueError, match="posting_offsets must be|need term_rows"):
        held_terms(case[0], case[1], case[2][:-1], *case[3:])
    with pytest.raises(ValueError, match="rows must be an int64"):
        held_terms(*case[:4], case[4].int(), *case[5:])
    with pytest.raises(ValueError, match="posting_rows must be an int32"):
        held_terms(*case[:3], case[3].long(), *case[4:])


def test_opcheck() -> None:
    case, _ = random_case(1, 200, 6, 3, 7, 4, 0.5)
    torch.library.opcheck(torch.ops.silverrec.held_terms.default, case)
