"""``torch.ops.silverrec.ivf_rescore_topk``: C++ and Triton kernels against the plain-torch reference.

Products of a 16-bit float and a float32 are exact in float64 and the sum is rounded once to
float32, so scores match bit for bit (random data would need an exact sum within ~D float64
ulps of a float32 rounding boundary to differ); ids match exactly under the tie rule (equal
scores: lower id first), which small-integer data exercises often.
"""
import os
import sys
from typing import Tuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import silverrec  # noqa: F401  (registers the ops)
from tests.ops.triton_interpreter import run_under_triton_interpreter
from silverrec.ops import ivf_rescore_topk
from silverrec.ops.reference import ivf_rescore_topk_reference

Case = Tuple[Tensor, Tensor, Tensor, Tensor, int]


def random_case(seed: int, B: int, N: int, D: int, K0: int, k: int, integer: bool, bf16: bool) -> Case:
    """Random inputs: padding rows (-1), repeated rows, permuted ids, small integers for ties."""
    g = torch.Generator().manual_seed(seed)
    if integer:
        cache = torch.randint(-2, 3, (N, D), generator=g).float()
        q = torch.randint(-2, 3, (B, D), generator=g).float()
    else:
        cache, q = torch.randn(N, D, generator=g), torch.randn(B, D, generator=g)
    cache = cache.to(torch.bfloat16 if bf16 else torch.float16)
    rows = torch.randint(-1, N, (B, K0), generator=g)
    row_to_id = torch.randperm(N, generator=g) * 3 + 1
    return q, cache, rows, row_to_id, k


def assert_same(got: Tuple[Tensor, ...], want: Tuple[Tensor, ...]) -> None:
    for name, a, b in zip(("scores", "ids"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a, b), f"{name} differ:\n{a}\n{b}"


case_args = dict(
    seed=st.integers(0, 2**31 - 1),
    B=st.integers(1, 5),
    N=st.integers(1, 60),
    D=st.integers(1, 70),
    K0=st.integers(1, 40),
    k=st.integers(1, 45),
    integer=st.booleans(),
    bf16=st.booleans(),
)


@settings(deadline=None, max_examples=150, derandomize=True)
@given(**case_args)
def test_cpu_matches_reference(**kw: object) -> None:
    args = random_case(**kw)  # type: ignore[arg-type]
    assert_same(ivf_rescore_topk(*args), ivf_rescore_topk_reference(*args))


def test_scores_are_inner_products_and_ties_by_id() -> None:
    q, cache, rows, row_to_id, _ = random_case(1, B=3, N=500, D=128, K0=150, k=100, integer=False, bf16=False)
    scores, ids = ivf_rescore_topk(q, cache, rows, row_to_id, 100)
    id_to_row = torch.empty(int(row_to_id.max()) + 1, dtype=torch.int64)
    id_to_row[row_to_id] = torch.arange(500)
    exact = (cache.float()[id_to_row[ids.clamp(min=1)]] * q[:, None, :]).sum(-1)
    ok = ids >= 0
    assert torch.allclose(scores[ok], exact[ok], rtol=1e-5, atol=1e-4)
    assert (scores[:, 1:] <= scores[:, :-1]).all()
    tie_cache = torch.ones(4, 2, dtype=torch.float16)
    s, i = ivf_rescore_topk(torch.ones(1, 2), tie_cache, torch.tensor([[3, 0, 2, 1]]), torch.tensor([9, 4, 6, 2]), 4)
    assert i.tolist() == [[2, 4, 6, 9]] and s.tolist() == [[2.0] * 4]


def test_padding_when_fewer_than_k() -> None:
    args = random_case(2, B=2, N=30, D=8, K0=5, k=12, integer=True, bf16=False)
    scores, ids = ivf_rescore_topk(*args)
    assert_same((scores, ids), ivf_rescore_topk_reference(*args))
    valid = (args[2] >= 0).sum(1)
    for b in range(2):
        assert (ids[b, int(valid[b]):] == -1).all() and torch.isinf(scores[b, int(valid[b]):]).all()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("queries", torch.zeros(1, 4, dtype=torch.float16), "queries must be float32"),
        ("cache", torch.zeros(10, 4), "cache must be float16 or bfloat16"),
        ("rows", torch.tensor([[10]]), "rows entries must be -1 or in"),
        ("rows", torch.tensor([[1.0]]), "rows must be int64"),
        ("row_to_id", torch.arange(9), "row_to_id must be int64"),
        ("row_to_id", torch.full((10,), 2**33), r"row_to_id entries must lie in \[0, 2\*\*32\)"),
        ("k", 0, "k must be >= 1"),
    ],
)
def test_bad_input_raises(field: str, value: object, message: str) -> None:
    args = dict(queries=torch.ones(1, 4), cache=torch.ones(10, 4, dtype=torch.float16), rows=torch.tensor([[0, 3]]),
                row_to_id=torch.arange(10), k=2)
    args[field] = value
    with pytest.raises(RuntimeError, match=message):
        ivf_rescore_topk(**args)


def test_opcheck() -> None:
    for bf16 in (False, True):
        args = random_case(3, B=3, N=40, D=16, K0=12, k=5, integer=True, bf16=bf16)
        torch.library.opcheck(torch.ops.silverrec.ivf_rescore_topk, args)


def test_meta_shapes() -> None:
    args = random_case(4, B=3, N=40, D=16, K0=12, k=5, integer=False, bf16=False)
    meta = [a.to("meta") if isinstance(a, Tensor) else a for a in args]
    s, i = torch.ops.silverrec.ivf_rescore_topk(*meta)
    assert (s.shape, s.dtype, i.shape, i.dtype) == ((3, 5), torch.float32, (3, 5), torch.int64)


class _Rescore(torch.nn.Module):
    def __init__(self, cache: Tensor, row_to_id: Tensor) -> None:
        super().__init__()
        self.register_buffer("cache", cache)
        self.register_buffer("row_to_id", row_to_id)

    def forward(self, q: Tensor, rows: Tensor) -> Tuple[Tensor, Tensor]:
        return ivf_rescore_topk(q, self.cache, rows, self.row_to_id, 6)


def test_export_and_compile() -> None:
    q, cache, rows, row_to_id, _ = random_case(5, B=4, N=50, D=16, K0=10, k=6, integer=False, bf16=False)
    module = _Rescore(cache, row_to_id)
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(module, (q, rows), dynamic_shapes=({0: batch}, {0: batch}))
    for inputs in ((q, rows), (q[:2], rows[:2])):
        assert_same(exported.module()(*inputs), module(*inputs))
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    assert_same(compiled(q, rows), module(q, rows))


def test_triton_kernel_under_interpreter() -> None:
    """Runs the Triton launcher on CPU tensors with TRITON_INTERPRET=1 in a fresh process."""
    run_under_triton_interpreter(__file__, "triton ivf_rescore_topk ok")


def _triton_interpret_main() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("set TRITON_INTERPRET=1 before running this script")
    from silverrec.ops.triton.ivf_rescore_topk import ivf_rescore_topk_cuda

    g = torch.Generator().manual_seed(0)
    for i in range(10):
        B, N, D, K0, k = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in
                          ((1, 4), (1, 40), (1, 70), (1, 30), (1, 35)))
        args = random_case(i, B, N, D, K0, k, integer=i % 2 == 0, bf16=i % 3 == 0)
        assert_same(ivf_rescore_topk_cuda(*args), ivf_rescore_topk_reference(*args))
    print("triton ivf_rescore_topk ok")


if __name__ == "__main__":
    _triton_interpret_main()
