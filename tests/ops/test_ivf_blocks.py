"""``ivf_search`` and ``ivf_search_bloom`` over an index with blocks (the second level) against
their reference: each query scans the best ``block_fraction`` of its probed clusters' blocks.

Random block layouts (random cuts of every cluster, empty clusters, random block codes, scales
and spreads), tied block scores (small integers), filters of every strictness, grouped queries
and both mask layouts; the results must equal the reference's bit for bit.
"""
import math
from typing import Optional, Tuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import silverrec  # noqa: F401  (registers the ops)
from silverrec.ops import ivf_search, ivf_search_bloom
from silverrec.ops.reference import (Blocks, ivf_search_bloom_reference, ivf_search_reference,
                                     ivf_select_blocks_reference, quantize_int8_rowwise_reference)
from tests.ops.test_ivf_search import assert_same, random_case
from tests.ops.test_ivf_search_bloom import bloom_case

BlockArgs = Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor], float]


def random_blocks(offsets: Tensor, D: int, queries: Tensor, seed: int, fraction: float, spread: bool,
                  integer: bool) -> BlockArgs:
    """Blocks for the clusters ``offsets``: each cluster cut at random rows (empty clusters have
    none), random int8 codes (small integers with ``integer``: tied block scores), scales and
    (with ``spread``) spreads and a reach per query."""
    g = torch.Generator().manual_seed(seed)
    starts = []
    for c in range(offsets.numel() - 1):
        lo, hi = int(offsets[c]), int(offsets[c + 1])
        if hi > lo:
            cuts = torch.randperm(hi - lo - 1, generator=g)[: int(torch.randint(0, 4, (1,), generator=g))] + lo + 1
            starts += [lo, *sorted(cuts.tolist())]
    S = len(starts)
    block_offsets = torch.tensor(starts + [int(offsets[-1])], dtype=torch.int64)
    cluster_blocks = torch.searchsorted(block_offsets[:-1].contiguous(), offsets, right=False)
    lo = -2 if integer else -127
    codes = torch.randint(lo, -lo + 1, (S, D), generator=g, dtype=torch.int64).to(torch.int8)
    scales = torch.ones(S) if integer else torch.rand(S, generator=g) + 0.01
    block_spread = reach = None
    if spread:
        block_spread = torch.rand(S, generator=g)
        reach = torch.rand(queries.shape[:-1], generator=g) * 4
    return block_offsets, cluster_blocks, codes, scales, block_spread, reach, fraction


@st.composite
def cases(draw: st.DrawFn) -> tuple:
    C = draw(st.integers(1, 12))
    n_probe = draw(st.integers(1, C))
    seed = draw(st.integers(0, 2**31 - 1))
    integer = seed % 2 == 0
    case = random_case(seed, B=draw(st.integers(1, 6)), N=draw(st.integers(1, 300)), D=8, C=C, k=draw(st.integers(1, 20)),
                       extra_k0=draw(st.sampled_from([0, 5, 40])), n_probe=n_probe, min_rows=draw(st.integers(0, 200)),
                       max_probe=draw(st.integers(n_probe, C + 2)),
                       density=draw(st.sampled_from([None, 0.02, 0.3, 0.9])), integer=integer)
    blocks = random_blocks(case[4], 8, case[0], seed, draw(st.sampled_from([0.01, 0.2, 0.5, 0.99, 1.0])),
                           draw(st.booleans()), integer)
    return case + (draw(st.sampled_from([0.0, 0.5])),) + blocks


@settings(deadline=None, max_examples=200, derandomize=True)
@given(case=cases())
def test_cpu_matches_reference(case: tuple) -> None:
    assert_same(ivf_search(*case), ivf_search_reference(*case))


@pytest.mark.parametrize("fraction", [0.05, 0.3])
@pytest.mark.parametrize("density", [None, 0.01, 0.5])
@pytest.mark.parametrize("threads", [1, 2])
def test_large_cases(fraction: float, density: Optional[float], threads: int) -> None:
    """Many clusters of many blocks, both thread counts, with and without filters."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        case = random_case(11, B=8, N=6000, D=16, C=40, k=10, extra_k0=20, n_probe=6, min_rows=400, max_probe=40,
                           density=density, integer=False)
        blocks = random_blocks(case[4], 16, case[0], 5, fraction, True, False)
        assert_same(ivf_search(*case, 0.6, *blocks), ivf_search_reference(*case, 0.6, *blocks))
    finally:
        torch.set_num_threads(before)


def test_id_order_masks_and_grouped_queries() -> None:
    """Id-order masks (packed per walked cluster) and [B, T, D] queries sharing mask rows."""
    B, T, N = 3, 2, 2000
    case = list(random_case(3, B=B * T, N=N, D=8, C=30, k=5, extra_k0=10, n_probe=4, min_rows=100, max_probe=30,
                            density=None, integer=False))
    case[0], case[1] = case[0].view(B, T, -1), case[1].view(B, T, -1)
    blocks = random_blocks(case[4], 8, case[0], 9, 0.25, True, False)
    g = torch.Generator().manual_seed(0)
    case[6] = torch.randperm(N, generator=g)  # ids in [0, N): an id-order mask covers them
    for mask in (torch.rand(B, N, generator=g) < 0.2, torch.randint(0, 256, (B, (N + 7) // 8), generator=g).to(torch.uint8)):
        case[7] = mask
        assert_same(ivf_search(*case, 0.5, *blocks), ivf_search_reference(*case, 0.5, *blocks))


@settings(deadline=None, max_examples=80, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), fraction=st.sampled_from([0.1, 0.5]), exponent=st.sampled_from([0.0, 0.75]),
       T=st.sampled_from([0, 2]))
def test_bloom_matches_reference(seed: int, fraction: float, exponent: float, T: int) -> None:
    case = list(bloom_case(seed, B=3, N=400, C=10, k=5, n_probe=2, min_rows=60, max_probe=10, T=T))
    case.append(exponent)
    blocks = random_blocks(case[4], 8, case[0], seed, fraction, seed % 3 > 0, seed % 2 == 0)
    assert_same(ivf_search_bloom(*case, *blocks), ivf_search_bloom_reference(*case, *blocks))


def test_fraction_one_and_no_blocks_are_the_plain_search() -> None:
    case = random_case(4, B=5, N=3000, D=8, C=20, k=10, extra_k0=10, n_probe=3, min_rows=0, max_probe=20,
                       density=0.3, integer=False)
    plain = ivf_search(*case)
    blocks = random_blocks(case[4], 8, case[0], 1, 1.0, True, False)
    assert_same(ivf_search(*case, 0.0, *blocks), plain)
    assert_same(ivf_search(*case, 0.0, *(None,) * 6, 0.3), plain)  # no blocks: the fraction does nothing


def test_a_small_fraction_scans_fewer_rows_and_the_best_blocks() -> None:
    """Blocks whose codes are their rows' mean: the best blocks hold the best rows, so a small
    fraction keeps the top result while the chosen blocks hold a fraction of the rows."""
    g = torch.Generator().manual_seed(0)
    N, D, S = 4000, 16, 100  # one cluster of 100 blocks of 40 rows, each around its own centre
    centres = torch.randn(S, D, generator=g) * 3
    rows = (centres.repeat_interleave(40, 0) + 0.1 * torch.randn(N, D, generator=g))
    codes = rows.clamp(-127, 127).round().to(torch.int8)
    q = torch.randn(4, D, generator=g)
    offsets = torch.tensor([0, N])
    block_offsets = torch.arange(0, N + 1, 40)
    block_codes = centres.clamp(-127, 127).round().to(torch.int8)
    blocks = Blocks(block_offsets, torch.tensor([0, S]), block_codes, torch.ones(S), None, None, 0.05)
    q_codes, q_scales = quantize_int8_rowwise_reference(q)  # as the op quantizes its queries
    chosen = ivf_select_blocks_reference(q_codes, q_scales, torch.zeros(4, 1, dtype=torch.int64), None,
                                         torch.full((4,), 20.0, dtype=torch.float64), blocks)
    assert chosen.shape == (4, math.ceil(0.05 * S))
    args = (q, torch.zeros(4, 1), codes, torch.ones(N), offsets, rows.half(), torch.arange(N), None, 1, 0, 1, 20, 5)
    pruned = ivf_search(*args, 0.0, *blocks)
    full = ivf_search(*args)
    assert torch.equal(pruned[1][:, 0], full[1][:, 0])
    for b in range(4):  # every result lies in a chosen block
        assert set((pruned[2][b] // 40).tolist()) <= set(chosen[b].tolist())


def test_a_walk_short_of_its_target_keeps_every_block() -> None:
    """A strict filter's walk that runs out of clusters before its target scans all it walked:
    the same results as without blocks."""
    case = random_case(8, B=4, N=3000, D=8, C=12, k=10, extra_k0=10, n_probe=2, min_rows=10**6, max_probe=12,
                       density=0.01, integer=False)
    blocks = random_blocks(case[4], 8, case[0], 2, 0.05, False, False)
    assert_same(ivf_search(*case, 0.0, *blocks), ivf_search(*case))


@pytest.mark.parametrize("change, message", [
    (lambda b: (b[0], None, *b[2:]), "come together"),
    (lambda b: (b[0], b[1], b[2], b[3], b[4], b[5], 0.0), "block_fraction"),
    (lambda b: (b[0] + 1, *b[1:]), "block_offsets must start at 0"),
    (lambda b: (b[0], torch.flip(b[1], [0]), *b[2:]), "cluster_blocks"),
    (lambda b: (b[0], b[1], b[2][:, :4].contiguous(), *b[3:]), "block_codes must be int8"),
    (lambda b: (*b[:5], torch.ones(7), b[6]), "block_reach"),
])
def test_bad_input_of_blocks_raises(change: object, message: str) -> None:
    case = random_case(1, B=2, N=500, D=8, C=5, k=5, extra_k0=5, n_probe=2, min_rows=0, max_probe=5, density=None,
                       integer=False)
    blocks = random_blocks(case[4], 8, case[0], 1, 0.5, True, False)
    with pytest.raises(ValueError, match=message):
        ivf_search(*case, 0.0, *change(blocks))  # type: ignore[operator]
