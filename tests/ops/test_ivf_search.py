"""``torch.ops.silverrec.ivf_search``: the one-op search against its reference (the four ops in sequence).

The C++ kernel runs quantize, probe choice, scan (with the capped-list fallback) and re-score per
query on one thread; every step is exact (int32 dot products, float64 re-score sums rounded once),
so scores are compared bit for bit and ids exactly under the tie rule. The Triton part runs the
CUDA launcher (the four Triton kernels in sequence) on CPU tensors with ``TRITON_INTERPRET=1``.
"""
import os
import sys
from typing import Optional, Tuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import silverrec  # noqa: F401  (registers the ops)
from tests.ops.triton_interpreter import run_under_triton_interpreter
from silverrec.ops import ivf_int8_topk, ivf_rescore_topk, ivf_search, ivf_select_probes, quantize_int8_rowwise
from silverrec.ops.reference import ivf_search_in_steps, ivf_search_reference, ivf_select_probes_reference

Case = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Optional[Tensor], int, int, int, int, int]


def random_case(seed: int, B: int, N: int, D: int, C: int, k: int, extra_k0: int, n_probe: int, min_rows: int,
                max_probe: int, density: Optional[float], integer: bool, bf16: bool = False) -> Case:
    """Random inputs: empty clusters, tied centroid scores, permuted ids, small integers for ties."""
    g = torch.Generator().manual_seed(seed)
    if integer:  # equal scores everywhere: the tie rules of every step
        emb = torch.randint(-2, 3, (N, D), generator=g).float()
        queries = torch.randint(-2, 3, (B, D), generator=g).float()
        centroid_scores = torch.randint(-1, 2, (B, C), generator=g).float()
    else:
        emb, queries, centroid_scores = (torch.randn(*s, generator=g) for s in ((N, D), (B, D), (B, C)))
    codes, scales = quantize_int8_rowwise(emb)
    inner = torch.sort(torch.randint(0, N + 1, (C - 1,), generator=g)).values
    offsets = torch.cat([torch.tensor([0]), inner, torch.tensor([N])])
    cache = emb.to(torch.bfloat16 if bf16 else torch.float16)
    row_to_id = torch.randperm(N, generator=g) * 3 + 1
    mask = None
    if density is not None:
        bits = torch.rand(B, ((N + 63) // 64) * 64, generator=g) < density
        bits[:, N:] = False
        mask = (bits.view(B, -1, 64).long() << torch.arange(64)).sum(2)
    return (queries, centroid_scores, codes, scales, offsets, cache, row_to_id, mask, n_probe, min_rows, max_probe,
            k + extra_k0, k)


def in_sequence(*case: object) -> Tuple[Tensor, Tensor, Tensor]:
    """The same search through the four single-step C++ ops (what IVFInt8Index.search ran before)."""
    return ivf_search_in_steps((quantize_int8_rowwise, ivf_select_probes, ivf_int8_topk, ivf_rescore_topk), *case)


def assert_same(got: Tuple[Tensor, ...], want: Tuple[Tensor, ...]) -> None:
    assert len(got) == len(want) == 3
    for name, a, b in zip(("scores", "ids", "rows"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a, b), f"{name} differ:\n{a}\n{b}"


@st.composite
def cases(draw: st.DrawFn) -> Case:
    C = draw(st.integers(1, 12))
    n_probe = draw(st.integers(1, C))
    return random_case(
        seed=draw(st.integers(0, 2**31 - 1)), B=draw(st.integers(1, 6)), N=draw(st.integers(1, 300)),
        D=draw(st.integers(1, 40)), C=C, k=draw(st.integers(1, 30)), extra_k0=draw(st.integers(0, 20)),
        n_probe=n_probe, min_rows=draw(st.integers(0, 200)), max_probe=draw(st.integers(n_probe, C + 2)),
        density=draw(st.sampled_from([None, 0.0, 0.05, 0.5, 0.9, 0.99, 1.0])), integer=draw(st.booleans()),
        bf16=draw(st.booleans()))


@settings(deadline=None, max_examples=150, derandomize=True)
@given(case=cases())
def test_cpu_matches_reference(case: Case) -> None:
    assert_same(ivf_search(*case), ivf_search_reference(*case))


@settings(deadline=None, max_examples=80, derandomize=True)
@given(case=cases(), exponent=st.sampled_from([0.5, 0.75, 1.0]))
def test_coverage_exponent_matches_reference(case: Case, exponent: float) -> None:
    """A walk sized by each query's pass fraction (floored at K): the fused op equals the spec."""
    assert_same(ivf_search(*case, exponent), ivf_search_reference(*case, exponent))


@pytest.mark.parametrize("density", [None, 0.1, 0.01, 0.995])  # 0.995: mostly whole passing words (tombstones only)
@pytest.mark.parametrize("B, C, n_probe, max_probe", [(16, 120, 2, 6), (16, 120, 1, 120), (64, 10, 6, 10)])
def test_large_cases_match_the_ops_in_sequence(B: int, C: int, n_probe: int, max_probe: int,
                                               density: Optional[float]) -> None:
    """Sizes of a real search (D = 131: the AVX2 loops and a scalar tail; K0 = 150), the capped
    unfiltered list with its fallback, the all-cluster filtered list, and (64 queries on 10
    clusters) the cluster-major scan: equal to the four ops in sequence."""
    case = random_case(7 + B + C, B=B, N=20_000, D=131, C=C, k=100, extra_k0=50, n_probe=n_probe,
                       min_rows=n_probe * 150 if density else 150, max_probe=max_probe, density=density,
                       integer=False)
    assert_same(ivf_search(*case), in_sequence(*case))


def _covered(case: Case) -> Tensor:
    """Eligible rows of each query's probed clusters (the reference's probe choice, floored at K)."""
    q, cs, _, _, offsets, _, _, mask, n_probe, min_rows, max_probe, _, k = case
    probe = ivf_select_probes_reference(cs, offsets, mask, n_probe, min_rows, max_probe, 0.0, k)
    sizes = offsets[1:] - offsets[:-1]
    if mask is not None:
        bits = ((mask.unsqueeze(2) >> torch.arange(64)) & 1).reshape(mask.shape[0], -1)  # [B, 64 W]
        row_cluster = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
        passing = torch.zeros(q.shape[0], sizes.numel(), dtype=torch.long)
        passing.index_add_(1, row_cluster, bits[:, : row_cluster.numel()])
    else:
        passing = sizes.expand(q.shape[0], -1)
    return torch.where(probe >= 0, passing.gather(1, probe.clamp(min=0)), 0).sum(1)


@pytest.mark.parametrize("density, C, min_rows, max_probe", [(0.1, 120, 50, 120), (0.01, 120, 50, 120),
                                                             (None, 2000, 50, 35), (None, 2000, 0, 35), (0.5, 40, 0, 1)])
def test_walks_within_k0_rescore_every_eligible_row(density: Optional[float], C: int, min_rows: int,
                                                    max_probe: int) -> None:
    """A walk covering at most K0 eligible rows (a filtered walk floored at K < K0, or tiny clusters)
    makes every eligible row a candidate, listed without INT8 scores; with a capped list holding
    fewer than K rows, the fallback scan follows. Equal to the spec and to the four ops."""
    case = random_case(21 + C, B=8, N=20_000 if C != 40 else 400, D=40, C=C, k=50 if C != 40 else 30,
                       extra_k0=150 if C != 40 else 10, n_probe=1, min_rows=min_rows, max_probe=max_probe,
                       density=density, integer=False)
    assert bool((_covered(case) <= case[11]).all())  # the listing path, for every query
    got = ivf_search(*case)
    assert_same(got, ivf_search_reference(*case))
    assert_same(got, in_sequence(*case))
    assert bool((got[1] >= 0).all())


def test_capped_probe_list_falls_back_to_every_row() -> None:
    """A query whose capped probe list holds fewer than K eligible rows gets the best of all rows."""
    case = list(random_case(3, B=2, N=400, D=16, C=40, k=30, extra_k0=10, n_probe=1, min_rows=0, max_probe=1,
                            density=0.5, integer=False))
    got = ivf_search(*case)
    assert (got[1] >= 0).all()  # 40 clusters of ~10 rows, half passing: one cluster holds < 30
    case[8:11] = [40, 0, 40]  # every cluster probed: the same top K0 by INT8 score, so the same result
    assert_same(got, ivf_search(*case))
    assert_same(got, ivf_search_reference(*case))


def test_rows_name_the_results() -> None:
    """``rows`` are the index rows of the returned ids, and their exact scores are the scores."""
    case = random_case(9, B=5, N=2000, D=24, C=20, k=15, extra_k0=10, n_probe=3, min_rows=40, max_probe=20,
                       density=0.3, integer=False)
    scores, ids, rows = ivf_search(*case)
    ok = ids >= 0
    assert torch.equal(rows >= 0, ok)
    assert torch.equal(case[6][rows[ok]], ids[ok])
    exact = (case[5][rows.clamp(min=0)].double() * case[0].double()[:, None, :]).sum(2).float()
    assert torch.equal(exact[ok], scores[ok])


@pytest.mark.parametrize("density", [None, 0.2])
@pytest.mark.parametrize("B, T", [(1, 3), (4, 3), (6, 1)])
def test_grouped_queries_share_their_mask_row(B: int, T: int, density: Optional[float]) -> None:
    """[B, T, D] queries under mask [B, W] = the B * T queries with each mask row repeated T times."""
    flat = list(random_case(11 + B, B=B * T, N=3000, D=33, C=30, k=12, extra_k0=8, n_probe=2, min_rows=80,
                            max_probe=30, density=None, integer=False))
    mask = random_case(12, B=B, N=3000, D=1, C=1, k=1, extra_k0=0, n_probe=1, min_rows=0, max_probe=1,
                       density=density, integer=False)[7]
    flat[7] = None if mask is None else mask.repeat_interleave(T, dim=0)
    want = ivf_search(*flat)
    grouped = list(flat)
    grouped[0], grouped[1], grouped[7] = flat[0].view(B, T, -1), flat[1].view(B, T, -1), mask
    got = ivf_search(*grouped)
    assert_same(tuple(x.reshape(B * T, -1) for x in got), want)
    assert_same(got, ivf_search_reference(*grouped))


def test_strided_mask_rows() -> None:
    """One filter expanded over the batch (row stride 0) reads the same bits as a dense copy."""
    case = list(random_case(5, B=1, N=3000, D=32, C=30, k=20, extra_k0=10, n_probe=2, min_rows=60, max_probe=30,
                            density=0.2, integer=False))
    queries = torch.randn(6, 32, generator=torch.Generator().manual_seed(1))
    case[0], case[1] = queries, torch.randn(6, 30, generator=torch.Generator().manual_seed(2))
    expanded = case[7].expand(6, -1)
    case[7] = expanded
    got = ivf_search(*case)
    case[7] = expanded.contiguous()
    assert_same(got, ivf_search(*case))


def id_order(case: Case, layout: str, seed: int = 0) -> Tuple[Case, Case]:
    """The case with ids ``row_to_id`` a permutation of [0, N) and its packed mask given in id
    order (``layout`` bool [B, N] or uint8 bitmap [B, ceil(N/8)]); and the same case with the
    mask packed (what the id-order mask means), for comparison."""
    c = list(case)
    N = c[2].shape[0]
    c[6] = torch.randperm(N, generator=torch.Generator().manual_seed(seed))
    packed = c[7]
    rows = ((packed.unsqueeze(2) >> torch.arange(64)) & 1).flatten(1)[:, :N].bool()  # [B, N] row order
    ids = torch.zeros_like(rows)
    ids[:, c[6]] = rows  # id row_to_id[r] passes iff row r does
    if layout == "bitmap":
        padded = torch.zeros(ids.shape[0], (N + 7) // 8 * 8, dtype=torch.bool)
        padded[:, :N] = ids
        ids = (padded.view(ids.shape[0], -1, 8).to(torch.uint8) << torch.arange(8, dtype=torch.uint8)).sum(
            2, dtype=torch.uint8)
    c[7] = ids
    return tuple(c), tuple(c[:7] + [packed] + c[8:])


@settings(deadline=None, max_examples=80, derandomize=True)
@given(case=cases(), layout=st.sampled_from(["bool", "bitmap"]))
def test_id_order_mask_equals_its_packed_mask(case: Case, layout: str) -> None:
    """An id-order mask (packed by the kernel only over the clusters a query walks, the capped-list
    fallback's included) gives the results of the packed mask it stands for, and the reference's."""
    if case[7] is None:
        return
    by_id, packed = id_order(case, layout)
    got = ivf_search(*by_id)
    assert_same(got, ivf_search(*packed))
    assert_same(got, ivf_search_reference(*by_id))


@pytest.mark.parametrize("layout", ["bool", "bitmap"])
@pytest.mark.parametrize("threads", [1, 2])
def test_id_order_mask_shared_rows_and_threads(layout: str, threads: int) -> None:
    """One id-order row expanded over a large batch (stride 0; packed once, by whichever thread
    reaches a cluster first), grouped queries sharing their row, and the cluster-major scan."""
    base = random_case(21, B=1, N=20_000, D=40, C=40, k=50, extra_k0=25, n_probe=3, min_rows=450, max_probe=40,
                       density=0.1, integer=False)
    by_id, packed = id_order(base, layout, seed=3)
    g = torch.Generator().manual_seed(4)
    queries, scores = torch.randn(64, 40, generator=g), torch.randn(64, 40, generator=g)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for q, cs, rows in ((queries, scores, 64), (queries.view(16, 4, 40), scores.view(16, 4, 40), 16)):
            a, b = list(by_id), list(packed)
            a[0] = b[0] = q
            a[1] = b[1] = cs
            a[7], b[7] = by_id[7].expand(rows, -1), packed[7].expand(rows, -1)
            got = ivf_search(*a)
            assert_same(got, ivf_search(*b))
            a[7] = a[7].contiguous()  # distinct (equal) rows: each packed on its own
            assert_same(ivf_search(*a), got)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("layout", ["bool", "bitmap"])
@pytest.mark.parametrize("n_probe, min_rows", [(1, 20), (30, 3000)])
def test_id_order_mask_distinct_rows(layout: str, n_probe: int, min_rows: int) -> None:
    """A filter per query, with short walks (each row's clusters packed as its probes reach them)
    and long ones (the whole mask packed first, as pack_id_mask does): the packed mask's results."""
    case = random_case(31, B=12, N=20_000, D=24, C=200, k=10, extra_k0=5, n_probe=n_probe, min_rows=min_rows,
                       max_probe=200, density=0.3, integer=False)
    by_id, packed = id_order(case, layout, seed=5)
    assert_same(ivf_search(*by_id), ivf_search(*packed))


def test_id_order_mask_bad_ids_raise() -> None:
    """A row whose id lies outside the id-order mask is named (ids must be in [0, N))."""
    case, _ = id_order(random_case(2, B=2, N=300, D=8, C=3, k=5, extra_k0=2, n_probe=3, min_rows=0, max_probe=3,
                                   density=0.5, integer=False), "bool")
    c = list(case)
    c[6] = c[6].clone()
    c[6][17] = 300
    for rows in (c[7], c[7][:1].expand(2, -1)):  # the whole mask packed first, or cluster by cluster
        c[7] = rows
        with pytest.raises(ValueError, match=r"row_to_id\[17\] = 300 is outside the (id-order )?mask's ids \[0, 300\)"):
            ivf_search(*c)
    with pytest.raises(ValueError, match=r"row_to_id\[17\] = 300 is outside the mask's ids \[0, 300\)"):
        ivf_search_reference(*c)


@pytest.mark.parametrize(
    "field, value, message",
    [
        (0, torch.tensor([[1.0, float("nan")]]), r"queries contains NaN/inf \(first at row 0, column 1"),
        (0, torch.ones(1, 2, dtype=torch.float64), "queries must be float32"),
        (1, torch.ones(1, 3), r"centroid_scores must be float32 \[B, C\] with B=1, C=2"),
        (5, torch.ones(4, 2), "cache must be float16 or bfloat16"),
        (6, torch.arange(3), r"row_to_id must be int64 \[N=4\]"),
        (6, torch.full((4,), 2**33), r"ivf_search: row_to_id entries must lie in \[0, 2\*\*32\)"),
        (7, torch.zeros(1, 2, dtype=torch.int64), r"mask must be int64 \[B, ceil\(N/64\)\]"),
        (7, torch.zeros(1, 3, dtype=torch.bool), r"bool \[B, N\]=\[1, 4\] or uint8 \[B, ceil\(N/8\)\]=\[1, 1\]"),
        (7, torch.zeros(1, 1, dtype=torch.int32), r"\(id order\), got Int"),
        (4, torch.tensor([0, 3, 2]), "cluster_offsets must start at 0 and end at N=4"),
        (8, 0, "need n_probe >= 1"),
        (11, 1, r"need 1 <= k <= k0, got k=2, k0=1"),
    ],
)
def test_bad_input_raises(field: int, value: object, message: str) -> None:
    codes = torch.ones(4, 2, dtype=torch.int8)
    args = [torch.ones(1, 2), torch.ones(1, 2), codes, torch.ones(4), torch.tensor([0, 2, 4]),
            codes.to(torch.float16), torch.arange(4), None, 1, 0, 2, 3, 2]
    args[field] = value
    with pytest.raises(RuntimeError, match=message):
        ivf_search(*args)


def test_opcheck() -> None:
    for density, bf16 in ((None, False), (0.3, True)):
        case = random_case(3, B=3, N=100, D=16, C=5, k=10, extra_k0=5, n_probe=2, min_rows=20, max_probe=3,
                           density=density, integer=True, bf16=bf16)
        torch.library.opcheck(torch.ops.silverrec.ivf_search, case)
    for layout in ("bool", "bitmap"):
        torch.library.opcheck(torch.ops.silverrec.ivf_search, id_order(case, layout)[0])


def test_meta_shapes() -> None:
    case = random_case(4, B=3, N=100, D=16, C=5, k=10, extra_k0=5, n_probe=2, min_rows=20, max_probe=5,
                       density=0.5, integer=False)
    meta = [a.to("meta") if isinstance(a, Tensor) else a for a in case]
    s, i, r = torch.ops.silverrec.ivf_search(*meta)
    assert (s.shape, s.dtype, i.shape, i.dtype, r.shape, r.dtype) == ((3, 10), torch.float32, (3, 10), torch.int64,
                                                                      (3, 10), torch.int64)
    meta[0], meta[1] = meta[0].view(3, 1, 16).expand(3, 2, 16), meta[1].view(3, 1, 5).expand(3, 2, 5)
    s, i, r = torch.ops.silverrec.ivf_search(*meta)
    assert s.shape == i.shape == r.shape == (3, 2, 10)


class _Search(torch.nn.Module):
    def __init__(self, case: Case) -> None:
        super().__init__()
        for name, t in zip(("codes", "scales", "offsets", "cache", "row_to_id"), case[2:7]):
            self.register_buffer(name, t)
        self.params = case[8:]

    def forward(self, queries: Tensor, centroid_scores: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        return ivf_search(queries, centroid_scores, self.codes, self.scales, self.offsets, self.cache, self.row_to_id,
                          mask, *self.params)


def test_export_and_compile() -> None:
    case = random_case(5, B=4, N=120, D=16, C=6, k=7, extra_k0=3, n_probe=2, min_rows=20, max_probe=6,
                       density=0.5, integer=False)
    module = _Search(case)
    inputs = (case[0], case[1], case[7])
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(module, inputs, dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
    for x in (inputs, tuple(t[:2] for t in inputs)):
        assert_same(exported.module()(*x), module(*x))
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    assert_same(compiled(*inputs), module(*inputs))


def test_triton_launcher_under_interpreter() -> None:
    """Runs the CUDA launcher (the four Triton kernels) on CPU tensors with TRITON_INTERPRET=1."""
    run_under_triton_interpreter(__file__, "triton ivf_search ok")


def _triton_interpret_main() -> None:
    """Tiny cases only: the interpreter runs every program in numpy."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("set TRITON_INTERPRET=1 before running this script")
    from silverrec.ops.triton.ivf_search import ivf_search_cuda

    g = torch.Generator().manual_seed(0)
    for i in range(6):
        B, N, D, C, k = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in
                         ((1, 4), (1, 120), (1, 24), (1, 6), (1, 20)))
        n_probe = int(torch.randint(1, C + 1, (1,), generator=g))
        case = random_case(i, B, N, D, C, k, extra_k0=i, n_probe=n_probe, min_rows=(0, 30)[i % 2],
                           max_probe=n_probe + i % 3, density=(None, 0.1, 0.6)[i % 3], integer=i % 2 == 0,
                           bf16=i % 4 == 1)
        assert_same(ivf_search_cuda(*case), ivf_search_reference(*case))
        assert_same(ivf_search_cuda(*case, 0.75), ivf_search_reference(*case, 0.75))
        if case[7] is not None:  # the same filter in id order: packed by the pack_id_mask kernel first
            by_id = id_order(case, ("bool", "bitmap")[i % 2])[0]
            assert_same(ivf_search_cuda(*by_id), ivf_search_reference(*by_id))
    # the grouped tl.dot scan (batch >= 2) on capped probe lists: short queries scan every cluster
    # again in the fixed-shape fallback, the others an empty probe row; with and without a mask
    for i, density in enumerate((None, 0.3)):
        case = random_case(20 + i, B=6, N=150, D=12, C=8, k=25, extra_k0=5, n_probe=1, min_rows=0, max_probe=2,
                           density=density, integer=i == 1)
        assert_same(ivf_search_cuda(*case), ivf_search_reference(*case))
    print("triton ivf_search ok")


if __name__ == "__main__":
    _triton_interpret_main()


def test_composition_makes_no_host_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The four-step composition (the CUDA launcher's code path) never reads a device value on
    the host: nonzero, item, tolist and cpu raise while it runs, the capped-list fallback included."""
    from silverrec.ops import reference as R

    case = random_case(3, B=3, N=400, D=16, C=40, k=30, extra_k0=10, n_probe=1, min_rows=0, max_probe=1,
                       density=None, integer=False)
    want = ivf_search_reference(*case)  # before the patches (the reference itself reads values)

    def refuse(name: str):
        def f(*args, **kwargs):
            raise AssertionError(f"host sync: Tensor.{name}")
        return f
    steps = (quantize_int8_rowwise, ivf_select_probes, ivf_int8_topk, ivf_rescore_topk)  # the C++ ops
    for name in ("nonzero", "item", "tolist", "cpu", "__bool__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse(name))
    got = R.ivf_search_in_steps(steps, *case)
    monkeypatch.undo()
    assert bool((want[1] >= 0).all())  # the fallback ran: n_probe = 1 of 40 clusters holds < 30 rows
    assert_same(got, want)
