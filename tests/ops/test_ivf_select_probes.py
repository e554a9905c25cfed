"""``torch.ops.silverrec.ivf_select_probes``: C++ and Triton kernels against the plain-torch reference.

Selection is exact (comparisons and integer counts), so outputs are compared with ``torch.equal``.
The Triton part runs this file as a script in a subprocess with ``TRITON_INTERPRET=1``.
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
from silverrec.ops import ivf_select_probes
from silverrec.ops.reference import ivf_select_probes_reference

Case = Tuple[Tensor, Tensor, Optional[Tensor], int, int, int]


def random_case(seed: int, B: int, C: int, N: int, n_probe: int, min_rows: int, max_probe: int,
                density: float, with_mask: bool, coarse: bool) -> Case:
    """Random inputs: empty clusters, equal scores (coarse values, -0.0 and +0.0), strided masks."""
    g = torch.Generator().manual_seed(seed)
    if coarse:
        scores = torch.randint(-2, 3, (B, C), generator=g).float() * 0.5
        scores = torch.where((scores == 0) & (torch.rand(B, C, generator=g) < 0.5), -0.0, scores)
    else:
        scores = torch.randn(B, C, generator=g)
    inner = torch.sort(torch.randint(0, N + 1, (C - 1,), generator=g)).values
    offsets = torch.cat([torch.tensor([0]), inner, torch.tensor([N])])
    mask = None
    if with_mask:
        bits = torch.rand(B, ((N + 63) // 64) * 64, generator=g) < density
        bits[:, N:] = False
        mask = (bits.view(B, -1, 64).long() << torch.arange(64)).sum(2)
    return scores, offsets, mask, n_probe, min_rows, max_probe


case_args = dict(
    seed=st.integers(0, 2**31 - 1),
    B=st.integers(1, 5),
    C=st.integers(1, 70),
    N=st.integers(0, 700),
    n_probe=st.integers(1, 8),
    min_rows=st.integers(0, 200),
    max_probe=st.integers(1, 80),
    density=st.sampled_from([0.0, 0.01, 0.1, 0.7, 1.0]),
    with_mask=st.booleans(),
    coarse=st.booleans(),
)


@settings(deadline=None, max_examples=200, derandomize=True)
@given(**case_args)
def test_cpu_matches_reference(**kw: object) -> None:
    args = random_case(**kw)  # type: ignore[arg-type]
    assert torch.equal(ivf_select_probes(*args), ivf_select_probes_reference(*args))


@settings(deadline=None, max_examples=150, derandomize=True)
@given(**case_args, exponent=st.sampled_from([0.25, 0.5, 0.75, 1.0]), floor=st.integers(0, 150))
def test_coverage_exponent_matches_reference(exponent: float, floor: int, **kw: object) -> None:
    """With a coverage exponent each query's count comes from its first n_probe clusters' pass
    fraction (floored): the kernel's walk equals the reference's."""
    args = random_case(**kw)  # type: ignore[arg-type]
    assert torch.equal(ivf_select_probes(*args, exponent, floor), ivf_select_probes_reference(*args, exponent, floor))


def test_coverage_exponent_rule() -> None:
    """1 of the first cluster's 64 rows passes: s = 1/64, the count 64 * s**0.5 = 8 (3 more rows
    are needed: clusters 1 and 2), and the floor raises it."""
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    offsets = torch.tensor([0, 64, 128, 192, 256])
    mask = torch.tensor([[1, 0, 7, -1]])  # passing rows per cluster: 1, 0, 3, 64
    assert ivf_select_probes(scores, offsets, mask, 1, 64, 4).tolist() == [[0, 1, 2, 3]]
    assert ivf_select_probes(scores, offsets, mask, 1, 64, 4, 0.5).tolist() == [[0, 1, 2, 3]]  # 4 < 8
    assert ivf_select_probes(scores, offsets, mask, 1, 64, 4, 0.5, 0).tolist() == [[0, 1, 2, 3]]
    assert ivf_select_probes(scores, offsets, mask, 1, 16, 4, 0.5).tolist() == [[0, 1, 2, -1]]  # 16/8 = 2 <= 4
    assert ivf_select_probes(scores, offsets, mask, 1, 16, 4, 0.5, 5).tolist() == [[0, 1, 2, 3]]  # floor 5 > 4
    assert ivf_select_probes(scores, offsets, mask, 1, 64, 4, 1.0).tolist() == [[0, -1, -1, -1]]  # 64/64 = 1
    with pytest.raises((RuntimeError, ValueError), match="coverage_exponent"):
        ivf_select_probes(scores, offsets, mask, 1, 64, 4, 1.5)


def test_large_c_and_extension_rounds() -> None:
    """C >> 32 with a strict filter: the kernel widens its candidate set several times."""
    for seed, density in ((0, 0.002), (1, 0.05), (2, 1.0)):
        args = random_case(seed, B=6, C=3000, N=60000, n_probe=3, min_rows=150, max_probe=3000,
                           density=density, with_mask=density < 1.0, coarse=seed == 1)
        assert torch.equal(ivf_select_probes(*args), ivf_select_probes_reference(*args))


@pytest.mark.parametrize("C", [130, 300, 894, 2047])
def test_mid_sized_c(C: int) -> None:
    """C between 4 and 64 times the candidate count (blocks of 8 scores, or a selection over all
    C keys): ties, unfiltered probe lists capped as ``search`` caps them, and strict filters."""
    for seed, n_probe in enumerate((1, 8, 31, 32, 33, 64, 100, 200)):
        if n_probe > C:
            continue
        for coarse in (False, True):
            for density, with_mask in ((1.0, False), (0.02, True)):
                max_probe = min(C, n_probe + 32) if not with_mask else C
                args = random_case(seed, B=3, C=C, N=40 * C, n_probe=n_probe, min_rows=150, max_probe=max_probe,
                                   density=density, with_mask=with_mask, coarse=coarse)
                assert torch.equal(ivf_select_probes(*args), ivf_select_probes_reference(*args)), (C, n_probe, coarse)


def test_coverage_rule() -> None:
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    offsets = torch.tensor([0, 64, 128, 192, 256])
    mask = torch.tensor([[1, 0, 7, -1]])  # passing rows per cluster: 1, 0, 3, 64
    assert ivf_select_probes(scores, offsets, mask, 1, 0, 4).tolist() == [[0, -1, -1, -1]]
    assert ivf_select_probes(scores, offsets, mask, 1, 2, 4).tolist() == [[0, 1, 2, -1]]
    assert ivf_select_probes(scores, offsets, mask, 1, 100, 4).tolist() == [[0, 1, 2, 3]]  # all: fewer pass
    assert ivf_select_probes(scores, offsets, mask, 1, 100, 2).tolist() == [[0, 1]]  # capped at max_probe
    assert ivf_select_probes(scores, offsets, None, 2, 100, 6).tolist() == [[0, 1, -1, -1, -1, -1]]


def test_strided_mask_rows() -> None:
    args = list(random_case(5, B=4, C=20, N=500, n_probe=2, min_rows=30, max_probe=20, density=0.1,
                            with_mask=True, coarse=False))
    args[2] = args[2][:1].expand(4, -1)
    want = ivf_select_probes_reference(*args)
    assert torch.equal(ivf_select_probes(*args), want)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("centroid_scores", torch.zeros(1, 3, dtype=torch.float64), "centroid_scores must be float32"),
        ("cluster_offsets", torch.tensor([0, 5, 10]), r"cluster_offsets must be int64 \[C\+1\]"),
        ("cluster_offsets", torch.tensor([0, 5, 3, 10]), "non-decreasing"),
        ("cluster_offsets", torch.tensor([1, 5, 8, 10]), "start at 0"),
        ("mask", torch.zeros(1, 2, dtype=torch.int64), "mask must be"),
        ("n_probe", 0, "n_probe >= 1"),
        ("max_probe", 0, "max_probe >= 1"),
    ],
)
def test_bad_input_raises(field: str, value: object, message: str) -> None:
    args = dict(centroid_scores=torch.zeros(1, 3), cluster_offsets=torch.tensor([0, 5, 8, 10]), mask=None,
                n_probe=1, min_rows=0, max_probe=3)
    args[field] = value
    with pytest.raises(RuntimeError, match=message):
        ivf_select_probes(**args)


def test_opcheck() -> None:
    for with_mask in (False, True):
        args = random_case(3, B=3, C=9, N=200, n_probe=2, min_rows=20, max_probe=6, density=0.2,
                           with_mask=with_mask, coarse=True)
        torch.library.opcheck(torch.ops.silverrec.ivf_select_probes, args)


def test_meta_shapes() -> None:
    args = random_case(4, B=3, C=9, N=200, n_probe=2, min_rows=20, max_probe=6, density=0.2, with_mask=True, coarse=False)
    meta = [a.to("meta") if isinstance(a, Tensor) else a for a in args]
    out = torch.ops.silverrec.ivf_select_probes(*meta)
    assert (out.shape, out.dtype) == ((3, 6), torch.int64)


class _Probe(torch.nn.Module):
    def __init__(self, centroids: Tensor, offsets: Tensor) -> None:
        super().__init__()
        self.register_buffer("centroids_t", centroids.T.contiguous())
        self.register_buffer("offsets", offsets)

    def forward(self, q: Tensor, mask: Tensor) -> Tensor:
        return ivf_select_probes(q @ self.centroids_t, self.offsets, mask, 2, 40, int(self.offsets.shape[0] - 1))


def test_export_and_compile() -> None:
    g = torch.Generator().manual_seed(6)
    _, offsets, mask, *_ = random_case(6, B=4, C=12, N=300, n_probe=2, min_rows=40, max_probe=12, density=0.1,
                                       with_mask=True, coarse=False)
    module = _Probe(torch.randn(12, 8, generator=g), offsets)
    q = torch.randn(4, 8, generator=g)
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(module, (q, mask), dynamic_shapes=({0: batch}, {0: batch}))
    for inputs in ((q, mask), (q[:2], mask[:2])):
        assert torch.equal(exported.module()(*inputs), module(*inputs))
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(q, mask), module(q, mask))


def test_triton_kernel_under_interpreter() -> None:
    """Runs the Triton launcher on CPU tensors with TRITON_INTERPRET=1 in a fresh process."""
    run_under_triton_interpreter(__file__, "triton ivf_select_probes ok")


def _triton_interpret_main() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("set TRITON_INTERPRET=1 before running this script")
    from silverrec.ops.triton.ivf_select_probes import ivf_select_probes_cuda

    g = torch.Generator().manual_seed(0)
    for i in range(12):
        B, C, N, n_probe, min_rows, max_probe = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in
                                                 ((1, 4), (1, 40), (0, 400), (1, 5), (0, 80), (1, 50)))
        args = random_case(i, B, C, N, n_probe, min_rows, max_probe, density=(0.0, 0.05, 0.5, 1.0)[i % 4],
                           with_mask=i % 3 != 0, coarse=i % 2 == 0)
        got, want = ivf_select_probes_cuda(*args), ivf_select_probes_reference(*args)
        assert torch.equal(got, want), (i, got, want)
        exponent, floor = (0.5, 0.75, 1.0)[i % 3], i * 5
        got, want = ivf_select_probes_cuda(*args, exponent, floor), ivf_select_probes_reference(*args, exponent, floor)
        assert torch.equal(got, want), (i, exponent, got, want)
    print("triton ivf_select_probes ok")


if __name__ == "__main__":
    _triton_interpret_main()
