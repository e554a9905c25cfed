"""``torch.ops.silverrec.bloom_search``: C++ and Triton kernels against the plain-torch reference."""
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import silverrec  # noqa: F401  (registers the ops)
from silverrec.ops import bloom_search
from silverrec.ops.reference import (
    BLOOM_AND,
    BLOOM_NOT_ROWS,
    BLOOM_NOT_TERM,
    BLOOM_OR,
    BLOOM_TERM,
    BLOOM_TRUE,
    bloom_search_reference,
)
from tests.ops.bloom_cases import random_case
from tests.ops.triton_interpreter import run_test_module, run_under_triton_interpreter

_HERE = os.path.dirname(os.path.abspath(__file__))


@settings(deadline=None, max_examples=60, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1))
def test_cpu_matches_reference_random(seed: int) -> None:
    args = random_case(seed)
    assert torch.equal(bloom_search(*args), bloom_search_reference(*args))


@pytest.mark.parametrize("seed", range(4))
def test_cpu_matches_reference_large(seed: int) -> None:
    """Several chunks and blocks per query, clusters not aligned to words."""
    args = random_case(1000 + seed, max_rows=40000, max_batch=3)
    assert torch.equal(bloom_search(*args), bloom_search_reference(*args))


def _small_index() -> tuple:
    # 130 rows, M = 3 signature bits; term 0 held by rows {0, 5, 64, 129}; term 1 by every odd row.
    n, W = 130, 3
    bits = torch.zeros(3, W, dtype=torch.int64)
    for r in (0, 5, 64, 129, 7):  # row 7: a Bloom false positive for signature bits 0 and 2
        bits[0, r // 64] |= 1 << (r % 64)
        bits[2, r // 64] |= 1 << (r % 64)
    offsets = torch.tensor([0, 4, 4 + 65])
    rows = torch.cat([torch.tensor([0, 5, 64, 129]), torch.arange(1, n, 2)]).int()  # int32 posting rows
    return bits, offsets, rows, n


def _rows_of(mask: torch.Tensor, n: int) -> list:
    return [r for r in range(n) if (int(mask[r // 64]) >> (r % 64)) & 1]


def test_semantics_by_hand() -> None:
    bits, offsets, rows, n = _small_index()
    opcodes = torch.tensor([[BLOOM_TERM, 0, 0], [BLOOM_TERM, BLOOM_NOT_TERM, BLOOM_AND], [BLOOM_NOT_TERM, BLOOM_TRUE, BLOOM_OR],
                            [BLOOM_NOT_ROWS, 0, 0]])
    terms = torch.tensor([[0, -1, -1], [0, 1, -1], [1, -1, -1], [-1, -1, -1]])
    hashes = torch.tensor([[[0, 2]] * 3] * 4)
    cluster_offsets = torch.tensor([0, 10, n])  # cluster 0 = rows 0..9, cluster 1 = rows 10..129
    probe = torch.tensor([[0, 1], [1, -1], [0, -1], [0, 0]])
    out = bloom_search(bits, opcodes, terms, hashes, offsets, rows, probe, cluster_offsets)
    assert torch.equal(out, bloom_search_reference(bits, opcodes, terms, hashes, offsets, rows, probe, cluster_offsets))
    assert _rows_of(out[0], n) == [0, 5, 7, 64, 129]  # Bloom: includes the false positive 7
    assert _rows_of(out[1], n) == [64]  # rows 10.. only; NOT odd rows is exact (129 is odd)
    assert _rows_of(out[2], n) == list(range(10))  # TRUE over cluster 0 only
    assert _rows_of(out[3], n) == [1, 2, 3, 4, 6, 8, 9]  # NOT_ROWS: complement of rows {0, 5, 7}
    assert out.shape == (4, 3) and int(out[2, 1]) == 0 and int(out[2, 2]) == 0


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a[1].fill_(99), "unknown opcode"),
        (lambda a: a[1].copy_(torch.tensor([[BLOOM_AND]])), "two operands"),
        (lambda a: a[1].copy_(torch.tensor([[BLOOM_NOT_TERM]])), "term"),
        (lambda a: a[3].fill_(7), "hash position"),
        (lambda a: (a[1].fill_(BLOOM_NOT_ROWS), a[3].fill_(-1)), "hash position"),
        (lambda a: a[6].fill_(3), "cluster"),
        (lambda a: a.__setitem__(5, a[5].long()), "posting_rows must be int32"),
    ],
)
def test_invalid_plans_raise_value_error(change, message: str) -> None:
    bits, offsets, rows, n = _small_index()
    args = [bits, torch.tensor([[BLOOM_TERM]]), torch.tensor([[5]]), torch.tensor([[[0, 2]]]), offsets, rows,
            torch.tensor([[0]]), torch.tensor([0, n])]
    change(args)
    for fn in (bloom_search, bloom_search_reference):
        with pytest.raises(ValueError, match=message):
            fn(*args)


def test_two_values_left_on_stack_raise() -> None:
    bits, offsets, rows, n = _small_index()
    args = (bits, torch.tensor([[BLOOM_TRUE, BLOOM_TRUE]]), torch.tensor([[-1, -1]]), torch.zeros(1, 2, 1, dtype=torch.long),
            offsets, rows, torch.tensor([[0]]), torch.tensor([0, n]))
    for fn in (bloom_search, bloom_search_reference):
        with pytest.raises(ValueError, match="stack"):
            fn(*args)


def test_opcheck() -> None:
    for seed in (1, 2, 3):
        torch.library.opcheck(torch.ops.silverrec.bloom_search.default, random_case(seed))


def test_meta_shapes() -> None:
    args = [t.to("meta") for t in random_case(5)]
    out = torch.ops.silverrec.bloom_search(*args)
    assert out.device.type == "meta" and out.shape == (args[1].shape[0], args[0].shape[1]) and out.dtype == torch.int64


class _Filter(torch.nn.Module):
    def __init__(self, bits: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bits", bits)
        self.register_buffer("offsets", offsets)
        self.register_buffer("rows", rows)

    def forward(self, opcodes, terms, hashes, probe, cluster_offsets):
        return torch.ops.silverrec.bloom_search(self.bits, opcodes, terms, hashes, self.offsets, self.rows, probe,
                                                cluster_offsets)


def test_export_with_dynamic_batch() -> None:
    bits, opcodes, terms, hashes, offsets, rows, probe, cluster_offsets = random_case(7, max_batch=3)
    opcodes, terms, hashes, probe = (torch.cat([t, t]) for t in (opcodes, terms, hashes, probe))  # B >= 2
    module = _Filter(bits, offsets, rows)
    batch = torch.export.Dim("batch")
    ep = torch.export.export(module, (opcodes, terms, hashes, probe, cluster_offsets),
                             dynamic_shapes=({0: batch}, {0: batch}, {0: batch}, {0: batch}, None))
    assert any(n.target is torch.ops.silverrec.bloom_search.default for n in ep.graph.nodes)
    one = (opcodes[:1], terms[:1], hashes[:1], probe[:1], cluster_offsets)
    for inputs in ((opcodes, terms, hashes, probe, cluster_offsets), one):
        assert torch.equal(ep.module()(*inputs), bloom_search_reference(bits, inputs[0], inputs[1], inputs[2], offsets,
                                                                         rows, inputs[3], inputs[4]))


def test_compile_fullgraph_equals_eager() -> None:
    args = random_case(11)
    compiled = torch.compile(torch.ops.silverrec.bloom_search, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(*args), bloom_search(*args))


def test_triton_kernel_under_interpreter() -> None:
    """Runs the Triton launcher on CPU tensors with TRITON_INTERPRET=1 in a fresh process."""
    run_under_triton_interpreter(os.path.join(_HERE, "bloom_triton_interpret.py"), "cases match")


@pytest.mark.parametrize("isa", ["avx2", None])
def test_both_cpu_paths_match_reference(isa: "str | None") -> None:
    """The core comparison in a fresh process with SILVERREC_CPU_ISA=avx2 (the AVX2 word loops) and
    unset (AVX-512 where the CPU has it): bit equality with the reference on both paths."""
    env = {k: v for k, v in os.environ.items() if k != "SILVERREC_CPU_ISA"}
    if isa is not None:
        env["SILVERREC_CPU_ISA"] = isa
    proc = run_test_module(__file__, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open("/proc/cpuinfo") as f:
        has_avx512 = "avx512_vnni" in f.read()
    expected = isa or ("avx512_vnni" if has_avx512 else "avx2")
    assert f"bloom_search ok on {expected}" in proc.stdout, proc.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_reference() -> None:  # pragma: no cover - GPU machines only
    for seed in range(20):
        args = random_case(seed, max_rows=5000)
        expected = bloom_search_reference(*args)
        assert torch.equal(bloom_search(*(t.cuda() for t in args)).cpu(), expected)


def _cpu_main() -> None:
    """The core comparison on this process's CPU path (run by test_both_cpu_paths_match_reference)."""
    from silverrec.ops import cpu_isa

    cases = [random_case(seed) for seed in range(40)] + [random_case(1000 + s, max_rows=40000, max_batch=3)
                                                       for s in range(4)]
    for i, args in enumerate(cases):
        assert torch.equal(bloom_search(*args), bloom_search_reference(*args)), i
    print(f"bloom_search ok on {cpu_isa()}")


if __name__ == "__main__":
    _cpu_main()
