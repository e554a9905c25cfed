"""``torch.ops.silverrec.ivf_probe_scores``: the C++ kernel against the plain-torch reference.

The reference fixes the arithmetic (``w |q|`` appended to each query, which is then rounded to
bfloat16; one float32 accumulator per output taking the odd then the even product of each row
pair, as AVX-512 BF16's ``vdpbf16ps``),
so the kernel must match it bit for bit on both CPU paths (``test_cpu_isa_paths`` re-runs this
module with ``SILVERREC_CPU_ISA=avx2``; the default path is ``vdpbf16ps`` on a CPU with AVX-512
BF16).
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import silverrec  # noqa: F401  (registers the ops)
from silverrec.ops import ivf_probe_scores, pack_probe_matrix
from silverrec.ops.reference import ivf_probe_scores_reference


def random_case(seed: int, B: int, D: int, C: int, scale: float = 1.0) -> "tuple[Tensor, Tensor]":
    """Queries [B, D] and a [D + 1, C] matrix whose last row (the spreads) is >= 0."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(D + 1, C, generator=g)
    m[-1] = m[-1].abs()
    return scale * torch.randn(B, D, generator=g), m


@settings(deadline=None, max_examples=120, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 40), D=st.integers(1, 70), C=st.integers(1, 100),
       scale=st.sampled_from([1e-3, 1.0, 300.0]), spread=st.sampled_from([0.0, 0.5, 4.0]))
def test_cpu_matches_reference(seed: int, B: int, D: int, C: int, scale: float, spread: float) -> None:
    q, m = random_case(seed, B, D, C, scale)
    packed = pack_probe_matrix(m)
    assert torch.equal(ivf_probe_scores(q, packed, C, spread), ivf_probe_scores_reference(q, packed, C, spread))


@pytest.mark.parametrize("B, D, C", [(16, 128, 4000), (1, 64, 12649), (64, 128, 1000), (37, 63, 33)])
def test_cpu_matches_reference_large(B: int, D: int, C: int) -> None:
    """The shapes served: every query block (16 / 8 / 4 / 2 / 1), a partial last tile, D + 1 odd and even."""
    q, m = random_case(B * C, B, D, C)
    packed = pack_probe_matrix(m)
    got = ivf_probe_scores(q, packed, C, 3.0)
    assert torch.equal(got, ivf_probe_scores_reference(q, packed, C, 3.0))
    # bfloat16 products: within the rounding of both operands (2**-8 relative each) of the float32 matmul
    augmented = torch.cat([q, 3.0 * q.norm(dim=1, keepdim=True)], dim=1)
    bound = (augmented.abs() @ m.abs()) * 2.0**-7 + 1e-6
    assert bool(((got - augmented @ m).abs() <= bound).all())


def test_pack_layout_by_hand() -> None:
    """Element [t, k2, j, h] is matrix[2 k2 + h, 16 t + j] rounded to bfloat16, zero past the matrix."""
    m = torch.arange(3 * 17, dtype=torch.float32).view(3, 17) + 0.25
    packed = pack_probe_matrix(m)
    assert packed.dtype == torch.bfloat16 and packed.shape == (2, 2, 16, 2) and packed.is_contiguous()
    for t, k2, j, h in [(0, 0, 0, 0), (0, 0, 5, 1), (0, 1, 15, 0), (1, 0, 0, 1), (1, 1, 0, 0)]:
        assert packed[t, k2, j, h] == m[2 * k2 + h, 16 * t + j].to(torch.bfloat16)
    assert bool((packed[0, 1, :, 1] == 0).all()) and bool((packed[1, :, 1:] == 0).all())  # row 3, columns 17..31


def test_semantics_by_hand() -> None:
    m = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0], [1.0, 0.0, 2.0]])  # centroids^T [2, 3], spreads [3]
    packed = pack_probe_matrix(m)
    assert ivf_probe_scores(torch.tensor([[2.0, 4.0]]), packed, 3, 0.0).tolist() == [[4.0, 0.0, 6.0]]
    assert ivf_probe_scores(torch.tensor([[3.0, 4.0]]), packed, 3, 2.0).tolist() == [[15.0, 2.0, 29.0]]  # + 2 |q| s
    # the query is rounded to bfloat16: 1 + 2**-10 becomes 1
    assert ivf_probe_scores(torch.tensor([[1.0 + 2.0**-10, 0.0]]), packed, 3, 0.0).tolist() == [[1.0, 2.0, 3.0]]
    assert ivf_probe_scores(torch.zeros(0, 2), packed, 3, 0.0).shape == (0, 3)


@pytest.mark.parametrize("args, message", [
    ((torch.zeros(2, 4, dtype=torch.float64), pack_probe_matrix(torch.zeros(5, 5)), 5, 0.0), "queries must be float32"),
    ((torch.zeros(2, 4), pack_probe_matrix(torch.zeros(5, 5)).float(), 5, 0.0), "packed must be bfloat16"),
    ((torch.zeros(2, 6), pack_probe_matrix(torch.zeros(5, 5)), 5, 0.0), "packed holds 3 row pairs, queries have D=6"),
    ((torch.zeros(2, 4), pack_probe_matrix(torch.zeros(5, 5)), 17, 0.0), r"num_clusters must be in \[1, 16\]"),
])
def test_bad_input_raises_naming_the_field(args, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        ivf_probe_scores(*args)


def test_opcheck_and_meta_and_export() -> None:
    q, m = random_case(3, 5, 9, 40)
    packed = pack_probe_matrix(m)
    torch.library.opcheck(torch.ops.silverrec.ivf_probe_scores.default, (q, packed, 40, 2.0))
    out = torch.ops.silverrec.ivf_probe_scores(q.to("meta"), packed.to("meta"), 40, 2.0)
    assert out.device.type == "meta" and out.shape == (5, 40) and out.dtype == torch.float32

    class Scores(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("packed", packed)

        def forward(self, x: Tensor) -> Tensor:
            return ivf_probe_scores(x, self.packed, 40, 2.0)

    ep = torch.export.export(Scores(), (q,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    assert any(n.target is torch.ops.silverrec.ivf_probe_scores.default for n in ep.graph.nodes)
    for x in (q, q[:1]):
        assert torch.equal(ep.module()(x), ivf_probe_scores_reference(x, packed, 40, 2.0))
