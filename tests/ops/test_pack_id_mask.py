"""``torch.ops.silverrec.pack_id_mask``: the C++ and Triton kernels against the plain-torch reference.

Masks come in both id-order layouts (bool ``[B, N]`` and FAISS ``IDSelectorBitmap`` uint8
``[B, ceil(N/8)]``), with N and R not multiples of 8 or 64, permutations and arbitrary ids, every
density from all-false to all-true, and strided rows. Outputs are bits, so they must be equal.
The C++ kernel runs both CPU paths (``SILVERREC_CPU_ISA=avx2`` in a subprocess); the Triton
kernel runs under ``TRITON_INTERPRET=1`` here; its ahead-of-time compilation for sm_80 and sm_90
is in ``test_triton_compile.py``.
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
from silverrec.ops import pack_id_mask
from silverrec.ops.reference import pack_id_mask_reference
from tests.ops.triton_interpreter import run_test_module, run_under_triton_interpreter



def to_bitmap(mask: Tensor) -> Tensor:
    """bool ``[B, N]`` -> FAISS IDSelectorBitmap bytes ``[B, ceil(N/8)]`` (id i: bit i & 7 of byte i >> 3)."""
    B, N = mask.shape
    padded = torch.zeros(B, (N + 7) // 8 * 8, dtype=torch.uint8)
    padded[:, :N] = mask.to(torch.uint8)
    return (padded.view(B, -1, 8) << torch.arange(8, dtype=torch.uint8)).sum(2, dtype=torch.uint8)


def random_case(seed: int, B: int, N: int, R: int, density: float, bitmap: bool, permutation: bool) -> Tuple[Tensor, Tensor]:
    """A mask over N ids (bool, or as a bitmap) and R row ids (a permutation of the ids when R == N)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, N, generator=g) < density
    if permutation or N == 0:
        ids = torch.randperm(N, generator=g)[:R] if N else torch.zeros(0, dtype=torch.int64)
    else:
        ids = torch.randint(0, N, (R,), generator=g)
    return (to_bitmap(mask) if bitmap else mask), ids


@settings(deadline=None, max_examples=150, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 20), N=st.integers(0, 300), fewer_rows=st.integers(0, 70),
       density=st.sampled_from([0.0, 0.1, 0.5, 1.0]), bitmap=st.booleans(), permutation=st.booleans())
def test_cpu_matches_reference(seed: int, B: int, N: int, fewer_rows: int, density: float, bitmap: bool,
                               permutation: bool) -> None:
    mask, ids = random_case(seed, B, N, max(N - fewer_rows, 0), density, bitmap, permutation)
    assert torch.equal(pack_id_mask(mask, ids), pack_id_mask_reference(mask, ids))


@pytest.mark.parametrize("bitmap", [False, True])
@pytest.mark.parametrize("B, N", [(1, 70001), (17, 40003), (64, 5000)])
def test_cpu_matches_reference_large(B: int, N: int, bitmap: bool) -> None:
    """Several tasks per step, B = 1, a partial last plane (B % 8 != 0), a partial last word."""
    mask, ids = random_case(B * N, B, N, N, 0.3, bitmap, True)
    assert torch.equal(pack_id_mask(mask, ids), pack_id_mask_reference(mask, ids))


@pytest.mark.parametrize("bitmap", [False, True])
def test_all_false_and_all_true(bitmap: bool) -> None:
    N = 131  # 3 words, the last with 3 rows
    ids = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    for value, want in ((False, [0, 0, 0]), (True, [-1, -1, 7])):
        mask = torch.full((3, N), value)
        out = pack_id_mask(to_bitmap(mask) if bitmap else mask, ids)
        assert out.tolist() == [want] * 3


def test_semantics_by_hand() -> None:
    row_to_id = torch.tensor([4, 0, 9, 2])  # row 0 holds id 4, ...
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, [4, 2]] = True  # rows 0 and 3
    mask[1, [0, 9, 5]] = True  # rows 1 and 2 (id 5 is in no row)
    assert pack_id_mask(mask, row_to_id).tolist() == [[0b1001], [0b0110]]
    assert pack_id_mask(to_bitmap(mask), row_to_id).tolist() == [[0b1001], [0b0110]]


@pytest.mark.parametrize("bitmap", [False, True])
def test_strided_and_expanded_rows(bitmap: bool) -> None:
    mask, ids = random_case(3, 6, 1000, 1000, 0.4, bitmap, True)
    want = pack_id_mask_reference(mask, ids)
    views = {
        "column-major": (mask.T.contiguous().T, want),
        "every other row": (torch.stack([mask, mask], 1).reshape(12, -1)[::2], want),
        "one row expanded": (mask[2:3].expand(5, -1), want[2:3].expand(5, -1)),
    }
    for name, (view, expected) in views.items():
        assert not view.is_contiguous(), name
        assert torch.equal(pack_id_mask(view, ids), expected), name
    wide = torch.zeros(6, 2 * mask.shape[1], dtype=mask.dtype)
    wide[:, ::2] = mask
    assert torch.equal(pack_id_mask(wide[:, ::2], ids), want)  # columns with stride 2
    assert torch.equal(pack_id_mask(mask, torch.stack([ids, ids], 1)[:, 0]), want)  # strided ids


def test_nonzero_bool_bytes_pass() -> None:
    """A bool tensor whose bytes are not 0/1 (a uint8 view): any nonzero byte passes, as in the reference."""
    raw = torch.tensor([[0, 2, 255, 0, 128] * 13], dtype=torch.uint8)
    mask = raw.view(torch.bool)
    ids = torch.arange(65)
    assert torch.equal(pack_id_mask(mask, ids), pack_id_mask_reference(mask, ids))


@pytest.mark.parametrize("fn", [pack_id_mask, pack_id_mask_reference], ids=["cpu", "reference"])
@pytest.mark.parametrize(
    "mask, ids, message",
    [
        (torch.zeros(2, 8, dtype=torch.int64), torch.arange(8), "pack_id_mask: mask must be bool"),
        (torch.zeros(8, dtype=torch.bool), torch.arange(8), r"pack_id_mask: mask must be .*\[B, N\]"),
        (torch.zeros(2, 8, dtype=torch.bool), torch.arange(8, dtype=torch.int32), "pack_id_mask: row_to_id must be int64"),
        (torch.zeros(2, 8, dtype=torch.bool), torch.zeros(2, 4, dtype=torch.int64), "pack_id_mask: row_to_id must be int64 \\[R\\]"),
        (torch.zeros(2, 8, dtype=torch.bool), torch.tensor([0, 1, 2, 8]), r"row_to_id\[3\] = 8 is outside the mask's ids \[0, 8\)"),
        (torch.zeros(2, 2, dtype=torch.uint8), torch.tensor([15, -1]), r"row_to_id\[1\] = -1 is outside the mask's ids \[0, 16\)"),
    ],
)
def test_bad_input_raises_naming_the_field(fn, mask: Tensor, ids: Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fn(mask, ids)


def test_opcheck_and_meta() -> None:
    for bitmap in (False, True):
        case = random_case(5, 3, 200, 190, 0.5, bitmap, True)
        torch.library.opcheck(torch.ops.silverrec.pack_id_mask.default, case)
        out = torch.ops.silverrec.pack_id_mask(*(t.to("meta") for t in case))
        assert out.device.type == "meta" and out.shape == (3, 3) and out.dtype == torch.int64


def test_export_with_dynamic_batch_and_compile() -> None:
    class ToRows(torch.nn.Module):
        def __init__(self, row_to_id: Tensor) -> None:
            super().__init__()
            self.register_buffer("row_to_id", row_to_id)

        def forward(self, mask: Tensor) -> Tensor:
            return pack_id_mask(mask, self.row_to_id)

    for bitmap in (False, True):
        mask, ids = random_case(9, 4, 300, 300, 0.5, bitmap, True)
        batch = torch.export.Dim("batch", min=1, max=1024)
        ep = torch.export.export(ToRows(ids), (mask,), dynamic_shapes=({0: batch},))
        assert any(n.target is torch.ops.silverrec.pack_id_mask.default for n in ep.graph.nodes)
        for m in (mask, mask[:1]):
            assert torch.equal(ep.module()(m), pack_id_mask_reference(m, ids))
        compiled = torch.compile(ToRows(ids), fullgraph=True, backend="aot_eager")
        assert torch.equal(compiled(mask), pack_id_mask_reference(mask, ids))


@pytest.mark.parametrize("isa", ["avx2", None])
def test_both_cpu_paths_match_reference(isa: "str | None") -> None:
    """In a fresh process with SILVERREC_CPU_ISA=avx2 (forced AVX2) and unset (AVX-512 where the CPU has it)."""
    env = {k: v for k, v in os.environ.items() if k != "SILVERREC_CPU_ISA"}
    if isa is not None:
        env["SILVERREC_CPU_ISA"] = isa
    proc = run_test_module(__file__, ["cpu"], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open("/proc/cpuinfo") as f:
        has_avx512 = "avx512_vnni" in f.read()
    expected = isa or ("avx512_vnni" if has_avx512 else "avx2")
    assert f"pack_id_mask ok on {expected}" in proc.stdout, proc.stdout


def test_triton_kernel_under_interpreter() -> None:
    run_under_triton_interpreter(__file__, "triton pack_id_mask ok")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_reference() -> None:  # pragma: no cover - GPU machines only
    for i, (B, N) in enumerate([(1, 1), (16, 120_001), (33, 5000)]):
        for bitmap in (False, True):
            mask, ids = random_case(i, B, N, N, 0.3, bitmap, True)
            assert torch.equal(pack_id_mask(mask.cuda(), ids.cuda()).cpu(), pack_id_mask_reference(mask, ids))


def _cases():
    for i, (B, N, fewer, density) in enumerate([(1, 1, 0, 1.0), (3, 70, 5, 0.5), (9, 130, 0, 0.0), (17, 3001, 7, 0.3),
                                                (2, 64, 0, 1.0), (4, 0, 0, 0.5)]):
        for bitmap in (False, True):
            yield random_case(i, B, N, max(N - fewer, 0), density, bitmap, i % 2 == 0)


def _cpu_main() -> None:
    from silverrec.ops import cpu_isa

    for mask, ids in _cases():
        assert torch.equal(pack_id_mask(mask, ids), pack_id_mask_reference(mask, ids)), (mask.shape, mask.dtype)
    for bitmap in (False, True):
        mask, ids = random_case(1, 16, 100_003, 100_003, 0.1, bitmap, True)
        assert torch.equal(pack_id_mask(mask, ids), pack_id_mask_reference(mask, ids)), bitmap
    print(f"pack_id_mask ok on {cpu_isa()}")


def _interpret_main() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("set TRITON_INTERPRET=1 before running this script")
    from silverrec.ops.triton.pack_id_mask import pack_id_mask_cuda

    for mask, ids in _cases():
        assert torch.equal(pack_id_mask_cuda(mask, ids), pack_id_mask_reference(mask, ids)), (mask.shape, mask.dtype)
    mask, ids = random_case(0, 3, 200, 200, 0.5, False, True)
    assert torch.equal(pack_id_mask_cuda(mask[1:2].expand(3, -1), ids), pack_id_mask_reference(mask[1:2], ids).expand(3, -1))
    assert torch.equal(pack_id_mask_cuda(mask.T.contiguous().T, ids), pack_id_mask_reference(mask, ids))
    print("triton pack_id_mask ok")


if __name__ == "__main__":
    {"cpu": _cpu_main}.get(sys.argv[1] if sys.argv[1:] else "", _interpret_main)()
