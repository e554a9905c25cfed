"""Triton kernel of ``torch.ops.silverrec.ivf_rescore_topk`` and its launcher ``ivf_rescore_topk_cuda``.

Math (spec: ``silverrec.ops.reference.ivf_rescore_topk_reference``): one program per query
gathers its ``K0`` candidate rows from the 16-bit cache in blocks of ``BLOCK_D`` columns and
accumulates their products with the query in float64 (exact products; the sum is rounded once to
float32, ``-0.0`` becomes ``+0.0``). Each (score, id) becomes one int64 key that orders like the
tie rule (score bits mapped to a signed-monotone int32 in the high word, ``2**32 - 1 - id`` in
the low word); one descending sort gives the top K.

TODO (performance): float64 is slow on consumer GPUs; an exact float32 two-sum would avoid it.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor
from typing import Tuple


@triton.jit
def _ivf_rescore_topk_kernel(
    q_ptr, cache_ptr, rows_ptr, ids_ptr, out_s_ptr, out_i_ptr, D, K0, k,
    BLOCK_D: tl.constexpr, K_PAD: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, K_PAD).to(tl.int64)
    rows = tl.load(rows_ptr + b * K0 + j, mask=j < K0, other=-1)
    valid = rows >= 0
    safe = tl.where(valid, rows, 0)
    acc = tl.zeros([K_PAD], tl.float64)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dm = d < D
        qv = tl.load(q_ptr + b * D + d, mask=dm, other=0.0).to(tl.float64)
        x = tl.load(cache_ptr + safe[:, None] * D + d[None, :], mask=valid[:, None] & dm[None, :], other=0.0)
        acc += tl.sum(x.to(tl.float32).to(tl.float64) * qv[None, :], axis=1)
    score = acc.to(tl.float32)
    score = tl.where(score == 0.0, 0.0, score)  # -0.0 -> +0.0
    ids = tl.load(ids_ptr + safe, mask=valid, other=0)
    bits = score.to(tl.int32, bitcast=True)
    fkey = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    low_all = tl.full([K_PAD], 4294967295, tl.int64)
    key = (fkey.to(tl.int64) << 32) | (low_all - ids)
    key = tl.where(valid, key, tl.full([K_PAD], -9223372036854775808, tl.int64))
    key = tl.sort(key, descending=True)
    ok = key != -9223372036854775808
    hi = (key >> 32).to(tl.int32)
    out_s = tl.where(ok, (hi ^ ((hi >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True), float("-inf"))
    out_i = tl.where(ok, low_all - (key & low_all), -1)
    tl.store(out_s_ptr + b * k + j, out_s, mask=j < k)
    tl.store(out_i_ptr + b * k + j, out_i, mask=j < k)


def ivf_rescore_topk_cuda(queries: Tensor, cache: Tensor, rows: Tensor, row_to_id: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Launches ``_ivf_rescore_topk_kernel`` (one program per query); same contract as the reference.

    Checks dtypes, shapes and devices without reading tensor values (no host sync); rows in
    ``[-1, N)`` and ids in ``[0, 2**32)`` are the caller's.

    Args:
        queries (Tensor): float32 ``[B, D]``.
        cache (Tensor): float16 or bfloat16 ``[N, D]``.
        rows (Tensor): int64 ``[B, K0]``, ``-1`` = none.
        row_to_id (Tensor): int64 ``[N]``.
        k (int): K.

    Returns:
        Tuple[Tensor, Tensor]: ``scores [B, K]`` float32 and ``ids [B, K]`` int64.
    """
    B, D = queries.shape
    N = cache.shape[0]
    expected = {"queries": (queries, (torch.float32,), (B, D)), "cache": (cache, (torch.float16, torch.bfloat16), (N, D)),
                "rows": (rows, (torch.int64,), (B, rows.shape[-1])), "row_to_id": (row_to_id, (torch.int64,), (N,))}
    for name, (t, dtypes, shape) in expected.items():
        if t.device != queries.device:
            raise ValueError(f"ivf_rescore_topk: {name} is on {t.device}, queries on {queries.device}")
        if t.dtype not in dtypes or tuple(t.shape) != shape:
            raise ValueError(f"ivf_rescore_topk: {name} must be {dtypes} {shape}, got {t.dtype} {tuple(t.shape)}")
    if k < 1:
        raise ValueError(f"ivf_rescore_topk: k must be >= 1, got {k}")
    K0 = rows.shape[1]
    out_s = torch.empty((B, k), dtype=torch.float32, device=queries.device)
    out_i = torch.empty((B, k), dtype=torch.int64, device=queries.device)
    if B == 0:
        return out_s, out_i
    _ivf_rescore_topk_kernel[(B,)](
        queries.contiguous(), cache.contiguous(), rows.contiguous(), row_to_id.contiguous(), out_s, out_i, D, K0, k,
        BLOCK_D=min(32, triton.next_power_of_2(max(D, 1))), K_PAD=triton.next_power_of_2(max(K0, k, 16)),
    )
    return out_s, out_i
