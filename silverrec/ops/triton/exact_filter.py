"""CUDA kernel of ``torch.ops.silverrec.exact_filter``: B filter programs run exactly on M candidates.

Spec: ``silverrec.ops.reference.exact_filter_reference``. One program per (query, block of
candidates); the program's L instructions are read once per block (scalars), and each
candidate's stack of booleans is the bits of one int64 register (push: shift left and set bit 0;
AND / OR: combine bits 0 and 1, shift right), as in the C++ kernel. A term instruction scans the
candidate's W term ids. Work is ``B * M * L * W`` comparisons, all in registers: the kernel is
bound by reading ``held`` once per term instruction (it stays in L1/L2 for a block).
Malformed programs are not checked here (no host sync); the C++ kernel refuses them.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from silverrec.ops import reference as R

BLOCK_M = 128


@triton.jit
def _exact_filter_kernel(op_ptr, term_ptr, held_ptr, out_ptr, M, L, W, BLOCK: tl.constexpr, OP_NOP: tl.constexpr,
                         OP_TERM: tl.constexpr, OP_AND: tl.constexpr, OP_OR: tl.constexpr, OP_FALSE: tl.constexpr,
                         OP_TRUE: tl.constexpr):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < M
    row = (b * M + offs).to(tl.int64) * W
    stack = tl.zeros([BLOCK], dtype=tl.int64)
    depth = tl.zeros([BLOCK], dtype=tl.int64)
    for l in range(L):
        o = tl.load(op_ptr + b * L + l)
        t = tl.load(term_ptr + b * L + l)
        has = tl.zeros([BLOCK], dtype=tl.int64)
        for w in range(W):
            h = tl.load(held_ptr + row + w, mask=ok, other=-1)
            has = has | (h == t).to(tl.int64)
        member = has & (t >= 0).to(tl.int64)
        is_const = (o == OP_TRUE) | (o == OP_FALSE)
        is_bin = (o == OP_AND) | (o == OP_OR)
        # a term instruction other than TERM (NOT_TERM, NOT_ROWS) pushes the negation
        bit = tl.where(is_const, (o == OP_TRUE).to(tl.int64), tl.where(o == OP_TERM, member, 1 - member))
        x = (stack >> 1) & 1
        y = stack & 1
        combined = tl.where(o == OP_AND, x & y, x | y)
        pushed = (stack << 1) | bit
        popped = ((stack >> 2) << 1) | combined
        stack = tl.where(o == OP_NOP, stack, tl.where(is_bin, popped, pushed))
        depth = tl.where(o == OP_NOP, depth, tl.where(is_bin, depth - 1, depth + 1))
    bottom = tl.where(depth > 0, (stack >> tl.maximum(depth - 1, 0)) & 1, 0)
    tl.store(out_ptr + b * M + offs, bottom != 0, mask=ok)


def exact_filter_cuda(opcodes: Tensor, terms: Tensor, held: Tensor) -> Tensor:
    """Launcher: bool ``[B, M]`` (see the module docstring)."""
    B, L = opcodes.shape
    expected = {"opcodes": (opcodes, 2), "terms": (terms, 2), "held": (held, 3)}
    for name, (t, dim) in expected.items():
        if t.dtype != torch.int64 or t.dim() != dim or t.device != held.device:
            raise RuntimeError(f"exact_filter: {name} must be int64 with {dim} dims on {held.device}, got "
                               f"{t.dtype} {tuple(t.shape)} on {t.device}")
    if terms.shape != opcodes.shape or held.shape[0] != B:
        raise RuntimeError(f"exact_filter: terms {tuple(terms.shape)} must be {tuple(opcodes.shape)} and held "
                           f"{tuple(held.shape)} [B={B}, M, W]")
    M, W = held.shape[1], held.shape[2]
    out = torch.empty((B, M), dtype=torch.bool, device=held.device)
    if B == 0 or M == 0:
        return out
    grid = (B, triton.cdiv(M, BLOCK_M))
    _exact_filter_kernel[grid](opcodes.contiguous(), terms.contiguous(), held.contiguous(), out, M, L, W,
                               BLOCK=BLOCK_M, OP_NOP=R.BLOOM_NOP, OP_TERM=R.BLOOM_TERM, OP_AND=R.BLOOM_AND,
                               OP_OR=R.BLOOM_OR, OP_FALSE=R.BLOOM_FALSE, OP_TRUE=R.BLOOM_TRUE)
    return out
