"""Triton kernel of ``torch.ops.silverrec.quantize_int8_rowwise`` and its launcher ``quantize_int8_rowwise_cuda``.

Math (spec: ``silverrec.ops.reference.quantize_int8_rowwise_reference``): one program per row
loads its ``D`` values (``BLOCK_D`` = the next power of two), takes ``s = max |x| / 127`` (1 for
an all-zero row) and stores ``clamp(round(x / s), -127, 127)`` as int8. Rounding half to even
without libdevice: adding and subtracting ``1.5 * 2**23`` rounds a float32 of magnitude below
``2**22`` to the nearest integer, ties to even (``|x / s| <= 127`` here).

TODO (performance): one row per program leaves most lanes idle for small D; several rows per
program would help at large N (queries are few, so it has not mattered).
"""
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _quantize_int8_rowwise_kernel(x_ptr, codes_ptr, scales_ptr, D, BLOCK_D: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    x = tl.load(x_ptr + n * D + d, mask=dm, other=0.0)
    amax = tl.max(tl.abs(x), axis=0)
    s = tl.where(amax > 0.0, amax / 127.0, 1.0)
    y = x / s
    # 12582912.0 = 1.5 * 2**23, written as a literal: the compiler refuses module-level globals
    # inside @triton.jit (the interpreter accepts them, which hid this until the AOT compile check)
    r = (y + 12582912.0) - 12582912.0
    r = tl.minimum(tl.maximum(r, -127.0), 127.0)
    tl.store(codes_ptr + n * D + d, r.to(tl.int8), mask=dm)
    tl.store(scales_ptr + n, s)


def quantize_int8_rowwise_cuda(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Launches ``_quantize_int8_rowwise_kernel`` (one program per row); same contract as the reference.

    NaN/inf values are not checked (that would need a host sync); they give undefined codes.

    Args:
        x (Tensor): float32 ``[N, D]``.

    Returns:
        Tuple[Tensor, Tensor]: ``codes`` int8 ``[N, D]`` and ``scales`` float32 ``[N]``.
    """
    if x.dtype != torch.float32 or x.dim() != 2:
        raise ValueError(f"quantize_int8_rowwise: x must be float32 [N, D], got {x.dtype} {tuple(x.shape)}")
    x = x.contiguous()
    N, D = x.shape
    codes = torch.empty((N, D), dtype=torch.int8, device=x.device)
    scales = torch.empty((N,), dtype=torch.float32, device=x.device)
    if N > 0 and D > 0:
        _quantize_int8_rowwise_kernel[(N,)](x, codes, scales, D, BLOCK_D=triton.next_power_of_2(D))
    elif N > 0:
        scales.fill_(1.0)
    return codes, scales
