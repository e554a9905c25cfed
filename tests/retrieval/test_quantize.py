"""Symmetric INT8 quantization: error bounds, code range, global vs per-item scales, bad input."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from silverrec.retrieval.quantize import dequantize_int8, quantize_int8_global, quantize_int8_per_item


@settings(deadline=None, max_examples=40, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), N=st.integers(1, 50), D=st.integers(1, 40), spread=st.floats(0.0, 6.0))
def test_per_item_error_bound(seed: int, N: int, D: int, spread: float) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g) * torch.exp(spread * torch.rand(N, 1, generator=g))
    codes, scales = quantize_int8_per_item(x)
    assert codes.dtype == torch.int8 and scales.shape == (N,) and scales.dtype == torch.float32
    assert int(codes.min()) >= -127  # the scan kernels rely on codes never being -128
    err = (dequantize_int8(codes, scales) - x).abs()
    assert (err <= scales[:, None] * 0.5 * (1 + 1e-5)).all()  # rounding to nearest
    # the largest entry of every non-zero row maps to +-127
    assert (codes.abs().amax(1) == 127).all()


def test_global_scale_is_one_scale() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 8, generator=g) * torch.linspace(0.01, 10, 30)[:, None]
    codes, scales = quantize_int8_global(x)
    assert torch.equal(scales, scales[:1].expand(30))
    assert torch.isclose(scales[0], x.abs().max() / 127)
    # small rows lose precision under a global scale but not under per-item scales
    rel = lambda c, s: ((dequantize_int8(c, s) - x).norm(dim=1) / x.norm(dim=1))[0]  # noqa: E731
    assert rel(codes, scales) > 10 * rel(*quantize_int8_per_item(x))


def test_zero_rows() -> None:
    codes, scales = quantize_int8_per_item(torch.zeros(2, 3))
    assert codes.abs().sum() == 0 and torch.equal(scales, torch.ones(2))
    codes, scales = quantize_int8_global(torch.zeros(2, 3))
    assert codes.abs().sum() == 0 and torch.equal(scales, torch.ones(2))


@pytest.mark.parametrize("fn", [quantize_int8_per_item, quantize_int8_global])
@pytest.mark.parametrize(
    "x, message",
    [
        (torch.tensor([[1.0, float("nan")]]), "NaN/inf.*row 0, column 1"),
        (torch.tensor([[float("inf"), 1.0]]), "NaN/inf"),
        (torch.zeros(0, 4), "non-empty"),
        (torch.zeros(4), r"2-D \[N, D\]"),
        (torch.zeros(2, 2, dtype=torch.int64), "floating-point"),
    ],
)
def test_bad_input(fn, x: torch.Tensor, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        fn(x)
