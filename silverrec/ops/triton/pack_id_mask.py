"""CUDA kernel of ``torch.ops.silverrec.pack_id_mask``: an id-order filter mask -> packed row order.

Spec: ``silverrec.ops.reference.pack_id_mask_reference``. One program per (block of BLOCK_W
output words, query): it loads the block's ``64 * BLOCK_W`` row ids once, gathers each row's
byte of the query's mask (bool: the byte of the id; bitmap: byte ``id >> 3``, bit ``id & 7``),
and packs each 64 rows into one int64 word as a sum of distinct bits (no carries; bit 63 adds
-2**63, exact in two's complement). Ids are not checked (no host sync): an id outside the mask
gives a 0 bit. Words sit on grid axis 0 (up to 2**31 - 1 programs), queries on axis 1.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_W = 16  # output words (1024 rows) per program


@triton.jit
def _pack_id_mask_kernel(mask_ptr, ids_ptr, out_ptr, R, W, bound, row_stride, BITMAP: tl.constexpr,
                         BLOCK_W: tl.constexpr):
    w = tl.program_id(0) * BLOCK_W + tl.arange(0, BLOCK_W)  # [BLOCK_W] output words
    b = tl.program_id(1).to(tl.int64)
    j = tl.arange(0, 64)
    r = w[:, None].to(tl.int64) * 64 + j[None, :]  # [BLOCK_W, 64] rows
    ids = tl.load(ids_ptr + r, mask=r < R, other=-1)
    ok = (r < R) & (ids >= 0) & (ids < bound)
    row = mask_ptr + b * row_stride
    if BITMAP:
        byte = tl.load(row + (ids >> 3), mask=ok, other=0).to(tl.int32)
        bit = (byte >> (ids & 7).to(tl.int32)) & 1
    else:
        bit = (tl.load(row + ids, mask=ok, other=0) != 0).to(tl.int32)
    words = tl.sum(bit.to(tl.int64) << j[None, :].to(tl.int64), axis=1)
    tl.store(out_ptr + b * W + w, words, mask=w < W)


def pack_id_mask_cuda(mask: Tensor, row_to_id: Tensor) -> Tensor:
    """Launcher: int64 ``[B, ceil(R / 64)]`` (see the module docstring)."""
    if mask.dtype not in (torch.bool, torch.uint8) or mask.dim() != 2:
        raise ValueError(f"pack_id_mask: mask must be bool [B, N] or a uint8 bitmap [B, ceil(N/8)], got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    if row_to_id.dtype != torch.int64 or row_to_id.dim() != 1 or row_to_id.device != mask.device:
        raise ValueError(f"pack_id_mask: row_to_id must be int64 [R] on {mask.device}, got {row_to_id.dtype} "
                         f"{tuple(row_to_id.shape)} on {row_to_id.device}")
    if mask.stride(1) != 1:
        mask = mask.contiguous()
    bitmap = mask.dtype == torch.uint8
    B, cols = mask.shape
    R = row_to_id.shape[0]
    W = (R + 63) // 64
    out = torch.empty((B, W), dtype=torch.int64, device=mask.device)
    if B == 0 or W == 0:
        return out
    grid = (triton.cdiv(W, BLOCK_W), B)
    _pack_id_mask_kernel[grid](mask.view(torch.uint8), row_to_id.contiguous(), out, R, W, cols * (8 if bitmap else 1),
                               mask.stride(0), BITMAP=bitmap, BLOCK_W=BLOCK_W)
    return out
