"""``torch.ops.silverrec.exact_filter``: the C++ and Triton kernels against the plain-torch reference.

Programs are random well-formed postfix expressions over AND / OR / TERM / NOT_TERM / NOT_ROWS /
TRUE / FALSE with NOP padding (at the end, as ``compile_plans`` pads, and in between); candidates
hold random term ids with -1 padding, so every opcode meets held and missing terms. The results
are booleans, so they must be equal. The Triton kernel runs under ``TRITON_INTERPRET=1`` here;
its ahead-of-time compilation for sm_80 and sm_90 is in ``test_triton_compile.py``.
"""
import os
import random
import sys
from typing import List, Tuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import silverrec  # noqa: F401  (registers the ops)
from silverrec.ops import exact_filter
from silverrec.ops import reference as R
from silverrec.ops.reference import exact_filter_reference
from tests.ops.triton_interpreter import run_under_triton_interpreter

Case = Tuple[Tensor, Tensor, Tensor]


def random_program(rng: random.Random, num_terms: int, depth: int) -> List[Tuple[int, int]]:
    """A random expression tree as a postfix list of (opcode, term id)."""
    if depth == 0 or rng.random() < 0.3:
        op = rng.choice([R.BLOOM_TERM] * 4 + [R.BLOOM_NOT_TERM, R.BLOOM_NOT_ROWS, R.BLOOM_TRUE, R.BLOOM_FALSE])
        term = rng.randrange(-1, num_terms) if op in (R.BLOOM_TERM, R.BLOOM_NOT_TERM, R.BLOOM_NOT_ROWS) else -1
        return [(op, term)]
    left, right = random_program(rng, num_terms, depth - 1), random_program(rng, num_terms, depth - 1)
    return left + right + [(rng.choice([R.BLOOM_AND, R.BLOOM_OR]), -1)]


def random_case(seed: int, B: int, M: int, W: int, num_terms: int, depth: int, nops: int) -> Case:
    rng = random.Random(seed)
    programs = []
    for _ in range(B):
        prog = random_program(rng, num_terms, depth)
        for _ in range(rng.randrange(nops + 1)):  # NOPs anywhere, and at the end
            prog.insert(rng.randrange(len(prog) + 1), (R.BLOOM_NOP, -1))
        programs.append(prog)
    L = max(len(p) for p in programs) + rng.randrange(3)
    opcodes = torch.full((B, L), R.BLOOM_NOP, dtype=torch.int64)
    terms = torch.full((B, L), -1, dtype=torch.int64)
    for b, prog in enumerate(programs):
        opcodes[b, : len(prog)] = torch.tensor([op for op, _ in prog])
        terms[b, : len(prog)] = torch.tensor([t for _, t in prog])
    g = torch.Generator().manual_seed(seed)
    held = torch.randint(-1, num_terms, (B, M, W), generator=g)
    return opcodes, terms, held


@settings(deadline=None, max_examples=150, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 5), M=st.integers(0, 40), W=st.integers(1, 8),
       num_terms=st.integers(1, 12), depth=st.integers(0, 4), nops=st.integers(0, 3))
def test_cpu_matches_reference(seed: int, B: int, M: int, W: int, num_terms: int, depth: int, nops: int) -> None:
    case = random_case(seed, B, M, W, num_terms, depth, nops)
    assert torch.equal(exact_filter(*case), exact_filter_reference(*case))


def test_serving_sizes_and_strided_inputs() -> None:
    """64 queries x 400 candidates x 24 terms (the parallel path), held given as a gathered view."""
    opcodes, terms, held = random_case(1, B=64, M=400, W=24, num_terms=30, depth=3, nops=2)
    want = exact_filter_reference(opcodes, terms, held)
    assert torch.equal(exact_filter(opcodes, terms, held), want)
    assert torch.equal(exact_filter(opcodes.T.contiguous().T, terms, held.transpose(1, 2).contiguous().transpose(1, 2)),
                       want)


def test_all_nop_program_passes_nothing() -> None:
    opcodes = torch.zeros(2, 3, dtype=torch.int64)
    assert not exact_filter(opcodes, torch.full((2, 3), -1), torch.zeros(2, 5, 2, dtype=torch.int64)).any()


@pytest.mark.parametrize(
    "opcodes, message",
    [
        ([[R.BLOOM_TERM, R.BLOOM_AND]], "program 0 pops an empty stack at instruction 1"),
        ([[9]], r"unknown opcode 9 at \[0, 0\]"),
        ([[R.BLOOM_TRUE] * 64], "holds more than 63 values"),
    ],
)
def test_malformed_programs_raise(opcodes: list, message: str) -> None:
    ops = torch.tensor(opcodes)
    with pytest.raises(RuntimeError, match=message):
        exact_filter(ops, torch.zeros_like(ops), torch.zeros(1, 2, 3, dtype=torch.int64))


@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 1, 1, dtype=torch.int64)),
         "opcodes must be int64"),
        ((torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 4, dtype=torch.int64),
          torch.zeros(2, 1, 1, dtype=torch.int64)), "terms must be int64"),
        ((torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int64),
          torch.zeros(3, 1, 1, dtype=torch.int64)), r"held must be int64 \[B=2, M, W\]"),
    ],
)
def test_bad_input_raises(args: Case, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        exact_filter(*args)


def test_opcheck_meta_and_export() -> None:
    case = random_case(2, B=3, M=20, W=4, num_terms=6, depth=3, nops=1)
    torch.library.opcheck(torch.ops.silverrec.exact_filter, case)
    out = torch.ops.silverrec.exact_filter(*(t.to("meta") for t in case))
    assert out.shape == (3, 20) and out.dtype == torch.bool

    class Check(torch.nn.Module):
        def forward(self, opcodes: Tensor, terms: Tensor, held: Tensor) -> Tensor:
            return exact_filter(opcodes, terms, held)

    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(Check(), case, dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
    assert torch.equal(exported.module()(*case), exact_filter(*case))
    small = tuple(t[:2] for t in case)
    assert torch.equal(exported.module()(*small), exact_filter(*small))


def test_triton_kernel_under_interpreter() -> None:
    run_under_triton_interpreter(__file__, "triton exact_filter ok")


def _interpret_main() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("set TRITON_INTERPRET=1 before running this script")
    from silverrec.ops.triton.exact_filter import exact_filter_cuda

    for i in range(8):
        case = random_case(i, B=1 + i % 3, M=(0, 7, 130)[i % 3], W=1 + i % 4, num_terms=6, depth=i % 4, nops=i % 3)
        assert torch.equal(exact_filter_cuda(*case), exact_filter_reference(*case)), i
    print("triton exact_filter ok")


if __name__ == "__main__":
    _interpret_main()
