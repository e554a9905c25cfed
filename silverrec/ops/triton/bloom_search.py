"""Triton (CUDA) kernel of ``torch.ops.silverrec.bloom_search`` and its launcher.

Math (spec: ``silverrec.ops.reference.bloom_search_reference``): for query b and mask word w,
run the postfix plan ``opcodes[b]`` on a stack of 64-row words; ``TERM`` ANDs the H signature
rows ``bits[hashes[b, l, h], w]`` (``NOT_ROWS`` complements that), ``NOT_TERM`` clears the bits of the term's posting rows
(int32, widened to int64 as they are loaded),
``AND``/``OR`` combine the top two entries; the result is ANDed with the probed-cluster bits.

Layout: a persistent grid ``(B, G)``; program ``(b, g)`` walks the blocks of ``BLOCK_W`` words
``g, g + G, ...`` and keeps its stack in a private scratch slice of global memory
(``[L + 1, BLOCK_W]`` words, L2-resident). A ``NOT_TERM`` binary-searches the posting list for
the block's first row, then turns ``BLOCK_P`` postings at a time into bit clears with a
``[BLOCK_W, BLOCK_P]`` compare-and-sum (the rows of a term are distinct, so the sum of their
bits is their OR). Blocks without a probed row are skipped.

No host sync: values are not validated here (the CPU kernel and the reference do); indices are
clamped so that a malformed plan cannot read or write out of bounds.

TODO: keep shallow stacks in registers; share signature rows between queries of a batch that
test the same term.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from silverrec.ops.reference import (
    BLOOM_AND,
    BLOOM_FALSE,
    BLOOM_NOT_ROWS,
    BLOOM_NOT_TERM,
    BLOOM_OR,
    BLOOM_TERM,
    BLOOM_TRUE,
)


@triton.jit
def _bloom_search_kernel(bits_ptr, opcodes_ptr, terms_ptr, hashes_ptr, post_off_ptr, post_rows_ptr, probe_ptr,
                         co_ptr, out_ptr, stack_ptr, M, W, L, H, P, T, C, NNZ, NUM_BLOCKS, GRID_W,
                         BLOCK_W: tl.constexpr, BLOCK_P: tl.constexpr, SEARCH_STEPS: tl.constexpr,
                         OP_TERM: tl.constexpr, OP_NOT_TERM: tl.constexpr, OP_AND: tl.constexpr,
                         OP_OR: tl.constexpr, OP_FALSE: tl.constexpr, OP_TRUE: tl.constexpr,
                         OP_NOT_ROWS: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    lanes = tl.arange(0, BLOCK_W).to(tl.int64)
    ones = tl.full([BLOCK_W], -1, tl.int64)
    one = tl.full([BLOCK_W], 1, tl.int64)
    stack = stack_ptr + (b * GRID_W + g) * (L + 1) * BLOCK_W
    for blk in range(g, NUM_BLOCKS, GRID_W):
        w = blk * BLOCK_W + lanes
        w_ok = w < W
        row0 = w * 64
        in_range = tl.zeros([BLOCK_W], tl.int64)
        for j in range(P):
            c = tl.load(probe_ptr + b * P + j)
            c_ok = (c >= 0) & (c < C)
            c_safe = tl.minimum(tl.maximum(c, 0), C - 1)
            start = tl.load(co_ptr + c_safe)
            stop = tl.load(co_ptr + c_safe + 1)
            lo = tl.minimum(tl.maximum(start - row0, 0), 64)
            hi = tl.minimum(tl.maximum(stop - row0, 0), 64)
            upto_hi = tl.where(hi >= 64, ones, (one << tl.minimum(hi, 63)) - 1)
            below_lo = (one << tl.minimum(lo, 63)) - 1
            in_range |= tl.where(c_ok & (hi > lo), upto_hi & ~below_lo, 0)
        in_range = tl.where(w_ok, in_range, 0)
        if tl.max(tl.where(in_range != 0, 1, 0), axis=0) > 0:
            sp = 0
            for l in range(L):
                op = tl.load(opcodes_ptr + b * L + l)
                top = stack + tl.minimum(sp, L) * BLOCK_W + lanes
                if (op == OP_TERM) | (op == OP_NOT_ROWS):
                    acc = ones
                    for h in range(H):
                        pos = tl.load(hashes_ptr + (b * L + l) * H + h)
                        pos = tl.minimum(tl.maximum(pos, 0), M - 1)
                        acc &= tl.load(bits_ptr + pos * W + w, mask=w_ok, other=0)
                    tl.store(top, tl.where(op == OP_NOT_ROWS, ~acc, acc))
                    sp += 1
                elif op == OP_NOT_TERM:
                    t = tl.minimum(tl.maximum(tl.load(terms_ptr + b * L + l), 0), tl.maximum(T - 1, 0))
                    first = tl.load(post_off_ptr + t)
                    last = tl.load(post_off_ptr + t + 1)
                    block_row0 = blk * BLOCK_W * 64
                    block_row1 = block_row0 + BLOCK_W * 64
                    lo_s = first  # first posting >= block_row0
                    hi_s = last
                    lo_e = first  # first posting >= block_row1
                    hi_e = last
                    for _ in range(SEARCH_STEPS):
                        mid_s = (lo_s + hi_s) // 2
                        v_s = tl.load(post_rows_ptr + tl.minimum(mid_s, NNZ - 1), mask=lo_s < hi_s, other=0).to(tl.int64)
                        go_s = (lo_s < hi_s) & (v_s < block_row0)
                        stay_s = (lo_s < hi_s) & (v_s >= block_row0)
                        lo_s = tl.where(go_s, mid_s + 1, lo_s)
                        hi_s = tl.where(stay_s, mid_s, hi_s)
                        mid_e = (lo_e + hi_e) // 2
                        v_e = tl.load(post_rows_ptr + tl.minimum(mid_e, NNZ - 1), mask=lo_e < hi_e, other=0).to(tl.int64)
                        go_e = (lo_e < hi_e) & (v_e < block_row1)
                        stay_e = (lo_e < hi_e) & (v_e >= block_row1)
                        lo_e = tl.where(go_e, mid_e + 1, lo_e)
                        hi_e = tl.where(stay_e, mid_e, hi_e)
                    cleared = tl.zeros([BLOCK_W], tl.int64)
                    for k in range(lo_s, lo_e, BLOCK_P):
                        offs = k + tl.arange(0, BLOCK_P).to(tl.int64)
                        ok = offs < lo_e
                        r = tl.load(post_rows_ptr + offs, mask=ok, other=0).to(tl.int64) - block_row0  # int32 rows
                        hit = (lanes[:, None] == (r >> 6)[None, :]) & ok[None, :]
                        bit = tl.full([BLOCK_P], 1, tl.int64) << (r & 63)
                        cleared += tl.sum(tl.where(hit, bit[None, :], 0), axis=1)  # distinct bits: sum == OR
                    tl.store(top, ~cleared)
                    sp += 1
                elif (op == OP_AND) | (op == OP_OR):
                    y_ptr = stack + tl.maximum(sp - 1, 0) * BLOCK_W + lanes
                    x_ptr = stack + tl.maximum(sp - 2, 0) * BLOCK_W + lanes
                    x = tl.load(x_ptr)
                    y = tl.load(y_ptr)
                    tl.store(x_ptr, tl.where(op == OP_AND, x & y, x | y))
                    sp = tl.maximum(sp - 1, 0)
                elif (op == OP_FALSE) | (op == OP_TRUE):
                    tl.store(top, tl.where(op == OP_TRUE, ones, 0))
                    sp += 1
                tl.debug_barrier()
            result = tl.load(stack + lanes)
            tl.store(out_ptr + b * W + w, result & in_range, mask=w_ok)
        else:
            tl.store(out_ptr + b * W + w, in_range, mask=w_ok)


def bloom_search_cuda(bits: Tensor, opcodes: Tensor, terms: Tensor, hashes: Tensor, posting_offsets: Tensor,
                      posting_rows: Tensor, probe: Tensor, cluster_offsets: Tensor, block_w: int = 64,
                      block_p: int = 64, max_programs_per_query: int = 32) -> Tensor:
    """Launches ``_bloom_search_kernel``; same arguments and result as ``bloom_search_reference``.

    Runs on CUDA tensors (or on CPU tensors under ``TRITON_INTERPRET=1``).

    Args:
        block_w (int): mask words per block (power of two).
        block_p (int): postings per compare step of a ``NOT_TERM`` (power of two).
        max_programs_per_query (int): G, programs per query of the persistent grid.

    Returns:
        Tensor: int64 ``[B, W]`` packed masks.
    """
    named = {"bits": bits, "opcodes": opcodes, "terms": terms, "hashes": hashes, "posting_offsets": posting_offsets,
             "posting_rows": posting_rows, "probe": probe, "cluster_offsets": cluster_offsets}
    for name, t in named.items():
        want = torch.int32 if name == "posting_rows" else torch.int64  # int32 rows: 4 bytes per listed holder
        if t.dtype != want:
            raise ValueError(f"bloom_search: {name} must be {str(want).replace('torch.', '')}, got {t.dtype}")
        if t.device != bits.device:
            raise ValueError(f"bloom_search: {name} is on {t.device}, bits on {bits.device}")
    if bits.dim() != 2 or opcodes.dim() != 2 or terms.shape != opcodes.shape:
        raise ValueError(f"bloom_search: need bits [M, W], opcodes and terms [B, L]; got {tuple(bits.shape)}, "
                         f"{tuple(opcodes.shape)}, {tuple(terms.shape)}")
    if hashes.dim() != 3 or hashes.shape[:2] != opcodes.shape:
        raise ValueError(f"bloom_search: hashes must be [B, L, H] with [B, L] = {tuple(opcodes.shape)}, got {tuple(hashes.shape)}")
    if probe.dim() != 2 or probe.shape[0] != opcodes.shape[0]:
        raise ValueError(f"bloom_search: probe must be [B, P] with B = {opcodes.shape[0]}, got {tuple(probe.shape)}")
    if posting_offsets.dim() != 1 or posting_offsets.numel() < 1 or cluster_offsets.dim() != 1 or cluster_offsets.numel() < 2:
        raise ValueError(f"bloom_search: posting_offsets [T+1] and cluster_offsets [C+1] (C >= 1) expected, got "
                         f"{tuple(posting_offsets.shape)} and {tuple(cluster_offsets.shape)}")
    M, W = bits.shape
    B, L = opcodes.shape
    H, P = hashes.shape[2], probe.shape[1]
    out = torch.zeros(B, W, dtype=torch.int64, device=bits.device)
    if B == 0 or W == 0 or M == 0:
        return out
    num_blocks = triton.cdiv(W, block_w)
    grid_w = min(num_blocks, max_programs_per_query)
    stack = torch.empty(B * grid_w * (L + 1) * block_w, dtype=torch.int64, device=bits.device)
    nnz = max(posting_rows.numel(), 1)
    rows = posting_rows if posting_rows.numel() else posting_rows.new_zeros(1)  # int32
    _bloom_search_kernel[(B, grid_w)](
        bits.contiguous(), opcodes.contiguous(), terms.contiguous(), hashes.contiguous(), posting_offsets.contiguous(),
        rows.contiguous(), probe.contiguous(), cluster_offsets.contiguous(), out, stack,
        M, W, L, H, P, posting_offsets.numel() - 1, cluster_offsets.numel() - 1, nnz, num_blocks, grid_w,
        BLOCK_W=block_w, BLOCK_P=block_p, SEARCH_STEPS=max(1, int(nnz).bit_length() + 1),
        OP_TERM=BLOOM_TERM, OP_NOT_TERM=BLOOM_NOT_TERM, OP_AND=BLOOM_AND, OP_OR=BLOOM_OR,
        OP_FALSE=BLOOM_FALSE, OP_TRUE=BLOOM_TRUE, OP_NOT_ROWS=BLOOM_NOT_ROWS,
    )
    return out
