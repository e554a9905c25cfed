"""``torch.ops.silverrec.quantize_int8_rowwise``: C++ and Triton kernels against the plain-torch reference.

Both kernels do the reference's float32 operations (max |x|, / 127, x / s, round half to even,
clamp), so codes and scales must match bit for bit, including rows of exact ties (x / s = m + 0.5)
and all-zero rows.
"""
import os
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import silverrec  # noqa: F401  (registers the ops)
from tests.ops.triton_interpreter import run_under_triton_interpreter
from silverrec.ops import quantize_int8_rowwise
from silverrec.ops.reference import quantize_int8_rowwise_reference
from silverrec.retrieval.quantize import quantize_int8_per_item


def random_rows(seed: int, N: int, D: int, kind: str) -> Tensor:
    """float32 [N, D]: Gaussian, heavy-tailed, half-integer ties (x / s = m + 0.5), or with zero rows."""
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":  # max |x| = 127 so s = 1 and x / s are the half-integers themselves
        x = torch.randint(-254, 255, (N, D), generator=g).float() / 2
        x[:, 0] = 127.0
        return x
    x = torch.randn(N, D, generator=g)
    if kind == "heavy":
        x = x * torch.exp(3 * torch.randn(N, 1, generator=g))
    if kind == "zeros":
        x[torch.rand(N, generator=g) < 0.5] = 0.0
    return x


def assert_same(got, want) -> None:  # type: ignore[no-untyped-def]
    for name, a, b in zip(("codes", "scales"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a, b), f"{name} differ:\n{a}\n{b}"


@settings(deadline=None, max_examples=150, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), N=st.integers(0, 40), D=st.integers(1, 300),
       kind=st.sampled_from(["gauss", "heavy", "ties", "zeros"]))
def test_cpu_matches_reference(seed: int, N: int, D: int, kind: str) -> None:
    x = random_rows(seed, N, D, kind)
    assert_same(quantize_int8_rowwise(x), quantize_int8_rowwise_reference(x))


def test_matches_the_index_quantizer_and_rounds_half_to_even() -> None:
    x = random_rows(0, 64, 128, "heavy")
    assert_same(quantize_int8_rowwise(x), quantize_int8_per_item(x))
    codes, scales = quantize_int8_rowwise(torch.tensor([[127.0, 0.5, 1.5, -2.5, -0.5], [0.0] * 5]))
    assert codes.tolist() == [[127, 0, 2, -2, 0], [0, 0, 0, 0, 0]] and scales.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_raises_naming_row_and_column(value: float) -> None:
    x = torch.ones(3, 5)
    x[2, 3] = value
    with pytest.raises(RuntimeError, match=r"x contains NaN/inf \(first at row 2, column 3"):
        quantize_int8_rowwise(x)
    with pytest.raises(ValueError, match=r"first at row 2, column 3"):
        quantize_int8_rowwise_reference(x)


def test_bad_dtype_raises() -> None:
    with pytest.raises(RuntimeError, match="x must be float32"):
        quantize_int8_rowwise(torch.ones(2, 3, dtype=torch.float64))


def test_opcheck_and_meta_shapes() -> None:
    torch.library.opcheck(torch.ops.silverrec.quantize_int8_rowwise, (random_rows(1, 5, 16, "gauss"),))
    codes, scales = torch.ops.silverrec.quantize_int8_rowwise(torch.empty(3, 7, device="meta"))
    assert (codes.shape, codes.dtype, scales.shape, scales.dtype) == ((3, 7), torch.int8, (3,), torch.float32)


class _Quantize(torch.nn.Module):
    def forward(self, x: Tensor):  # type: ignore[no-untyped-def]
        return quantize_int8_rowwise(x)


def test_export_with_a_dynamic_batch() -> None:
    x = random_rows(2, 6, 32, "gauss")
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(_Quantize(), (x,), dynamic_shapes=({0: batch},))
    for inputs in (x, x[:2]):
        assert_same(exported.module()(inputs), quantize_int8_rowwise_reference(inputs))


def test_triton_kernel_under_interpreter() -> None:
    """Runs the Triton launcher on CPU tensors with TRITON_INTERPRET=1 in a fresh process."""
    run_under_triton_interpreter(__file__, "triton quantize_int8_rowwise ok")


def _triton_interpret_main() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("set TRITON_INTERPRET=1 before running this script")
    from silverrec.ops.triton.quantize_int8_rowwise import quantize_int8_rowwise_cuda

    for i, (N, D) in enumerate([(1, 1), (3, 7), (5, 128), (2, 300), (0, 4)]):
        for kind in ("gauss", "heavy", "ties", "zeros"):
            x = random_rows(i, N, D, kind)
            assert_same(quantize_int8_rowwise_cuda(x), quantize_int8_rowwise_reference(x))
    print("triton quantize_int8_rowwise ok")


if __name__ == "__main__":
    _triton_interpret_main()
