"""``torch.ops.silverrec.ivf_search_bloom`` (probe, then filter) against its reference: the Bloom plan
over all rows, minus denied and excluded rows, then ``ivf_search``.

The CPU kernel runs the plan only over the clusters each probe choice walks (or over every word
of a row whose walk is expected to be long); either way the results must be the reference's,
bit for bit: the probe choice counts the same passing rows and the scans read the same words.
"""
import os
import random
import sys
from typing import Tuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import silverrec  # noqa: F401  (registers the ops)
from silverrec.ops import bloom_search, ivf_search, ivf_search_bloom
from silverrec.ops.reference import ivf_search_bloom_reference
from silverrec.ops.reference.filter import BLOOM_NOP, BLOOM_TRUE
from tests.ops.bloom_cases import random_plans
from tests.ops.test_ivf_search import assert_same, random_case
from tests.ops.triton_interpreter import run_under_triton_interpreter


def bloom_case(seed: int, B: int, N: int, C: int, k: int, n_probe: int, min_rows: int, max_probe: int, T: int = 0,
               deny: bool = True, exclude: int = 3) -> tuple:
    """An ivf_search case (queries [B, D] or [B, T, D]) with random Bloom plans, tombstones and
    exclusions over its N rows."""
    q, cs, codes, scales, offsets, cache, row_to_id, _, n_probe, min_rows, max_probe, k0, k = random_case(
        seed, B * max(T, 1), N, 8, C, k, 5, n_probe, min_rows, max_probe, None, integer=seed % 2 == 0)
    if T:
        q, cs = q.view(B, T, -1), cs.view(B, T, -1)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    bits, opcodes, terms, hashes, post_off, post_rows = random_plans(rng, gen, N, B)
    W = (N + 63) // 64
    deny_words = None
    if deny:
        dead = torch.rand(64 * W, generator=gen) < 0.1
        deny_words = (dead.view(W, 64).long() << torch.arange(64)).sum(1)
    exclude_rows = None
    if exclude:
        exclude_rows = torch.randint(-1, N, (B, exclude), generator=gen)
    return (q, cs, codes, scales, offsets, cache, row_to_id, bits, opcodes, terms, hashes, post_off, post_rows,
            deny_words, exclude_rows, n_probe, min_rows, max_probe, k0, k)


@st.composite
def cases(draw: st.DrawFn) -> tuple:
    C = draw(st.integers(1, 12))
    n_probe = draw(st.integers(1, C))
    return bloom_case(seed=draw(st.integers(0, 2**31 - 1)), B=draw(st.integers(1, 5)), N=draw(st.integers(1, 300)),
                      C=C, k=draw(st.integers(1, 20)), n_probe=n_probe, min_rows=draw(st.integers(0, 200)),
                      max_probe=draw(st.integers(n_probe, C + 2)), T=draw(st.sampled_from([0, 1, 3])),
                      deny=draw(st.booleans()), exclude=draw(st.sampled_from([0, 1, 4])))


@settings(deadline=None, max_examples=150, derandomize=True)
@given(case=cases())
def test_cpu_matches_reference(case: tuple) -> None:
    assert_same(ivf_search_bloom(*case), ivf_search_bloom_reference(*case))


@pytest.mark.parametrize("min_rows", [0, 50, 2000, 10**6])  # short walks (lazy), long walks (whole rows)
@pytest.mark.parametrize("threads", [1, 2])
def test_large_cases_lazy_and_whole_rows(min_rows: int, threads: int) -> None:
    """Many clusters and queries of a row sharing clusters across threads, both evaluation modes."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        case = bloom_case(seed=7 + min_rows, B=6, N=5000, C=80, k=10, n_probe=3, min_rows=min_rows, max_probe=80, T=3)
        assert_same(ivf_search_bloom(*case), ivf_search_bloom_reference(*case))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("min_rows", [50, 2000, 10**6])
@pytest.mark.parametrize("exponent", [0.5, 0.75])
def test_coverage_exponent_lazy_and_whole_rows(min_rows: int, exponent: float) -> None:
    """A walk sized by each query's pass fraction near it (floored at K), in both evaluation
    modes (the whole-row estimate reads the exponent too): the fused op equals the spec."""
    case = bloom_case(seed=11 + min_rows, B=6, N=5000, C=80, k=10, n_probe=3, min_rows=min_rows, max_probe=80, T=3)
    assert_same(ivf_search_bloom(*case, exponent), ivf_search_bloom_reference(*case, exponent))


def test_equals_ivf_search_with_the_bloom_mask() -> None:
    """The fused op is ivf_search under bloom_search's mask (minus deny and exclusions)."""
    case = bloom_case(seed=3, B=4, N=2000, C=30, k=10, n_probe=2, min_rows=100, max_probe=30, exclude=0)
    (q, cs, codes, scales, offsets, cache, row_to_id, bits, opcodes, terms, hashes, post_off, post_rows, deny, _,
     n_probe, min_rows, max_probe, k0, k) = case
    everything = torch.zeros((4, 1), dtype=torch.int64)
    mask = bloom_search(bits, opcodes, terms, hashes, post_off, post_rows, everything, torch.tensor([0, 2000]))
    want = ivf_search(q, cs, codes, scales, offsets, cache, row_to_id, mask & ~deny, n_probe, min_rows, max_probe,
                      k0, k)
    assert_same(ivf_search_bloom(*case), want)


def _with_blank_plans(case: tuple, blank: Tensor, deny: str) -> tuple:
    """The case with the plans of rows ``blank`` (bool [B]) replaced by the blank filter (one TRUE)
    and its tombstones ``deny``: "none", "zero" (all-zero words) or "some" (the case's own)."""
    opcodes = case[8].clone()
    opcodes[blank] = BLOOM_NOP
    opcodes[blank, 0] = BLOOM_TRUE
    words = {"none": None, "zero": torch.zeros_like(case[13]), "some": case[13]}[deny]
    return _replace(_replace(case, 8, opcodes), 13, words)


@pytest.mark.parametrize("deny", ["none", "zero", "some"])
@pytest.mark.parametrize("shape", ["mixed", "all_blank", "grouped", "shared_clusters"])
def test_blank_filters_match_reference(deny: str, shape: str) -> None:
    """Rows with the blank filter, nothing excluded and no row denied take the unfiltered scan
    (no mask words at all), the others the Bloom mask, in one batch; a denied row or an excluded
    one keeps a blank row on the mask. Both must give the reference's results, bit for bit, in
    the query-major and the cluster-major scan (many queries sharing few clusters)."""
    B, T, C, n_probe = (8, 0, 6, 5) if shape == "shared_clusters" else (6, 3 if shape == "grouped" else 0, 40, 3)
    case = bloom_case(seed=21, B=B, N=3000, C=C, k=10, n_probe=n_probe, min_rows=200, max_probe=C, T=T, exclude=2)
    blank = torch.ones(B, dtype=torch.bool) if shape == "all_blank" else torch.arange(B) % 2 == 0
    excl = case[14].clone()
    excl[blank & (torch.arange(B) % 4 == 0)] = -1  # blank rows with nothing excluded, and some with
    case = _replace(_with_blank_plans(case, blank, deny), 14, excl)
    assert_same(ivf_search_bloom(*case), ivf_search_bloom_reference(*case))
    assert_same(ivf_search_bloom(*_replace(case, 14, None)), ivf_search_bloom_reference(*_replace(case, 14, None)))


def _replace(case: tuple, index: int, value: object) -> tuple:
    return case[:index] + (value,) + case[index + 1:]


@pytest.mark.parametrize("index, value, message", [
    (7, torch.zeros(3, 2, dtype=torch.int64), "bits must be"),
    (8, torch.zeros(5, 2, dtype=torch.int64), "opcodes and terms must be"),
    (13, torch.zeros(3, dtype=torch.int64), "deny must be int64"),
    (14, torch.tensor([[10**6]] * 2), "exclude_rows\\[0\\] holds 1000000"),
    (7, torch.zeros(3, 4, dtype=torch.int32), "bits must be an int64 CPU tensor"),
])
def test_bad_input_raises(index: int, value: object, message: str) -> None:
    case = bloom_case(seed=1, B=2, N=200, C=4, k=5, n_probe=1, min_rows=10, max_probe=4)
    with pytest.raises((ValueError, RuntimeError), match=message):
        ivf_search_bloom(*_replace(case, index, value))


def test_bad_plan_raises() -> None:
    case = bloom_case(seed=1, B=2, N=200, C=4, k=5, n_probe=1, min_rows=10, max_probe=4)
    opcodes = case[8].clone()
    opcodes[0, 0] = 99
    with pytest.raises(ValueError, match="unknown opcode 99"):
        ivf_search_bloom(*_replace(case, 8, opcodes))


def test_opcheck() -> None:
    for case in (bloom_case(seed=5, B=3, N=300, C=6, k=5, n_probe=2, min_rows=40, max_probe=6),
                 bloom_case(seed=6, B=2, N=100, C=3, k=4, n_probe=1, min_rows=0, max_probe=3, T=2, deny=False,
                            exclude=0)):
        torch.library.opcheck(torch.ops.silverrec.ivf_search_bloom.default, case)


class _Search(torch.nn.Module):
    def forward(self, q: Tensor, cs: Tensor, opcodes: Tensor, terms: Tensor, hashes: Tensor,
                exclude: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        c = self.case
        return ivf_search_bloom(q, cs, c[2], c[3], c[4], c[5], c[6], c[7], opcodes, terms, hashes, c[11], c[12], c[13],
                                exclude, c[15], c[16], c[17], c[18], c[19])


def test_export_with_a_dynamic_batch() -> None:
    case = bloom_case(seed=9, B=3, N=400, C=8, k=5, n_probe=2, min_rows=30, max_probe=8, T=2)
    module = _Search()
    module.case = case
    args = (case[0], case[1], case[8], case[9], case[10], case[14])
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(module, args, dynamic_shapes=tuple({0: batch} for _ in args))
    assert_same(program.module()(*args), ivf_search_bloom_reference(*case))


def test_triton_launcher_under_interpreter() -> None:
    """Runs the CUDA launcher (bloom_search's kernel, the exclusion words, ivf_search's kernels)
    on CPU tensors with TRITON_INTERPRET=1."""
    run_under_triton_interpreter(__file__, "triton ivf_search_bloom ok")


def _triton_interpret_main() -> None:
    """Tiny cases only: the interpreter runs every program in numpy."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("set TRITON_INTERPRET=1 before running this script")
    from silverrec.ops.triton.ivf_search_bloom import ivf_search_bloom_cuda

    for i in range(4):
        case = bloom_case(seed=i, B=1 + i % 3, N=(70, 130, 64, 200)[i], C=1 + i, k=5, n_probe=1, min_rows=(0, 20)[i % 2],
                          max_probe=1 + i, T=(0, 2)[i % 2], deny=i % 2 == 0, exclude=(0, 3)[i > 0])
        assert_same(ivf_search_bloom_cuda(*case), ivf_search_bloom_reference(*case))
    print("triton ivf_search_bloom ok")


if __name__ == "__main__":
    _triton_interpret_main()
