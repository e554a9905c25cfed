"""Triton kernel of ``torch.ops.silverrec.ivf_int8_topk`` and its launcher ``ivf_int8_topk_cuda``.

Math (spec: ``silverrec.ops.reference.ivf_int8_topk_reference``): one program per query scans
the rows of its probed clusters (a repeated cluster is skipped) in blocks of ``K_PAD`` rows:
exact int32 dot products with the query codes, ``float(acc) * q_scale * scale``, masked rows
dropped. Each (score, row) becomes one int64 key that orders like the tie rule (score bits in
the high word, mapped to a signed-monotone int32; ``2**32 - 1 - row`` in the low word, so equal
scores rank the lower row higher). The running top-k is a descending-sorted register array of
``K_PAD`` keys: a block sorted ascending is merged by an elementwise max (the top half of a
bitonic merge) and re-sorted. No ``[B, N]`` buffer is written.

When several queries of a batch probe the same cluster, the launcher runs the cluster-major
scan of :mod:`.ivf_int8_topk_grouped` instead (one ``tl.dot`` per block of rows for up to 16
queries, on the tensor cores; its docstring has the roofline); this per-query kernel is kept for
batch 1, where nothing is shared and it needs no grouping or merge (see :func:`scan_kernel`).

TODO (performance): at batch 1 one program scans every probed cluster; splitting a query's
probes over several programs with a final merge would use more of the GPU.
"""
import triton
import triton.language as tl
import torch
from torch import Tensor
from typing import Optional, Tuple

from silverrec.ops.triton.ivf_int8_topk_grouped import _MAX_PARTIAL_KEYS, ivf_int8_topk_grouped_cuda

GROUPED_MIN_BATCH = 2  # below this the per-query kernel: at batch 1 no cluster is shared
SCAN_KERNELS = ("auto", "per_query", "grouped")
_MIN_KEY = -(2**63)  # below every real key: marks an empty slot


@triton.jit
def _ivf_int8_topk_kernel(
    q_ptr, qs_ptr, codes_ptr, scales_ptr, off_ptr, probe_ptr, mask_ptr,
    out_s_ptr, out_r_ptr, out_v_ptr,
    D, P, W, k,
    HAS_MASK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr, K_PAD: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    qv = tl.load(q_ptr + b * D + d, mask=dmask, other=0).to(tl.int32)
    qscale = tl.load(qs_ptr + b)
    pidx = tl.arange(0, BLOCK_P)
    prow = tl.load(probe_ptr + b * P + pidx, mask=pidx < P, other=-1)
    n = tl.arange(0, K_PAD).to(tl.int64)
    min_key = tl.full([K_PAD], -9223372036854775808, tl.int64)
    low_all = tl.full([K_PAD], 4294967295, tl.int64)
    top = min_key
    count = tl.zeros([K_PAD], tl.int64)
    for p in range(0, P):
        c = tl.load(probe_ptr + b * P + p)
        dup = tl.sum(((prow == c) & (pidx < p)).to(tl.int32), axis=0) > 0
        use = (c >= 0) & (dup == 0)
        cc = tl.where(use, c, 0)
        lo = tl.load(off_ptr + cc)
        hi = tl.where(use, tl.load(off_ptr + cc + 1), lo)
        for start in range(lo, hi, K_PAD):
            rows = start + n
            live = rows < hi
            if HAS_MASK:
                word = tl.load(mask_ptr + b * W + (rows >> 6), mask=live, other=0)
                live = live & (((word >> (rows & 63)) & 1) != 0)
            cv = tl.load(codes_ptr + rows[:, None] * D + d[None, :], mask=live[:, None] & dmask[None, :], other=0)
            acc = tl.sum(cv.to(tl.int32) * qv[None, :], axis=1)
            sc = tl.load(scales_ptr + rows, mask=live, other=1.0)
            score = acc.to(tl.float32) * qscale * sc
            score = tl.where(score == 0.0, 0.0, score)  # -0.0 and +0.0 tie, as in the reference
            bits = score.to(tl.int32, bitcast=True)
            fkey = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # signed-monotone in the float order
            key = (fkey.to(tl.int64) << 32) | (low_all - rows)
            key = tl.where(live, key, min_key)
            count += live.to(tl.int64)
            blk = tl.sort(key, descending=False)
            top = tl.sort(tl.maximum(top, blk), descending=True)
    valid = top != min_key
    fkey = (top >> 32).to(tl.int32)
    bits = fkey ^ ((fkey >> 31) & 0x7FFFFFFF)
    out_score = tl.where(valid, bits.to(tl.float32, bitcast=True), float("-inf"))
    out_row = tl.where(valid, low_all - (top & low_all), -1)
    keep = n < k
    tl.store(out_s_ptr + b * k + n, out_score, mask=keep)
    tl.store(out_r_ptr + b * k + n, out_row, mask=keep)
    tl.store(out_v_ptr + b, tl.minimum(tl.sum(count, axis=0), k))


def ivf_int8_topk_cuda(
    q_codes: Tensor,
    q_scales: Tensor,
    codes: Tensor,
    scales: Tensor,
    cluster_offsets: Tensor,
    probe: Tensor,
    mask: Optional[Tensor],
    k: int,
    *,
    kernel: str = "auto",
) -> Tuple[Tensor, Tensor, Tensor]:
    """Launches the scan: ``_ivf_int8_topk_kernel`` (one program per query) or the cluster-major
    ``tl.dot`` scan of :mod:`.ivf_int8_topk_grouped`, as :func:`scan_kernel` picks; same
    contract as the reference (both give identical results).

    Checks dtypes, shapes and devices without reading tensor values (no host sync); the value
    preconditions (probe entries in ``[-1, C)``, valid ``cluster_offsets``) are the caller's.

    Args:
        q_codes (Tensor): int8 ``[B, D]``.
        q_scales (Tensor): float32 ``[B]``.
        codes (Tensor): int8 ``[N, D]``, cluster-sorted rows.
        scales (Tensor): float32 ``[N]``.
        cluster_offsets (Tensor): int64 ``[C + 1]``.
        probe (Tensor): int64 ``[B, P]``.
        mask (Optional[Tensor]): int64 ``[B, ceil(N / 64)]`` or ``None``.
        k (int): K.
        kernel (str): ``"auto"`` (the op's choice), ``"per_query"`` or ``"grouped"`` (for
            benchmarks and tests; the registered op always takes ``"auto"``).

    Returns:
        Tuple[Tensor, Tensor, Tensor]: ``scores [B, K]`` float32, ``rows [B, K]`` int64,
        ``num_valid [B]`` int64.
    """
    B, D = q_codes.shape
    N = codes.shape[0]
    W = (N + 63) // 64
    tensors = {"q_codes": q_codes, "q_scales": q_scales, "codes": codes, "scales": scales,
               "cluster_offsets": cluster_offsets, "probe": probe}
    if mask is not None:
        tensors["mask"] = mask
    for name, t in tensors.items():
        if t.device != q_codes.device:
            raise ValueError(f"ivf_int8_topk: {name} is on {t.device}, q_codes on {q_codes.device}")
    expected = {"q_codes": (torch.int8, (B, D)), "q_scales": (torch.float32, (B,)), "codes": (torch.int8, (N, D)),
                "scales": (torch.float32, (N,)), "probe": (torch.int64, (B, probe.shape[-1])),
                "mask": (torch.int64, (B, W)), "cluster_offsets": (torch.int64, (cluster_offsets.shape[0],))}
    for name, t in tensors.items():
        dtype, shape = expected[name]
        if t.dtype != dtype or tuple(t.shape) != shape:
            raise ValueError(f"ivf_int8_topk: {name} must be {dtype} {shape}, got {t.dtype} {tuple(t.shape)}")
    if k < 1:
        raise ValueError(f"ivf_int8_topk: k must be >= 1, got {k}")
    if kernel not in SCAN_KERNELS:
        raise ValueError(f"ivf_int8_topk: kernel must be one of {SCAN_KERNELS}, got {kernel!r}")
    P = probe.shape[1]
    if (scan_kernel(B, P, k) if kernel == "auto" else kernel) == "grouped":
        return ivf_int8_topk_grouped_cuda(q_codes, q_scales, codes, scales, cluster_offsets, probe, mask, k)
    out_s = torch.empty((B, k), dtype=torch.float32, device=q_codes.device)
    out_r = torch.empty((B, k), dtype=torch.int64, device=q_codes.device)
    out_v = torch.empty((B,), dtype=torch.int64, device=q_codes.device)
    if B == 0:
        return out_s, out_r, out_v
    mask_arg = mask.contiguous() if mask is not None else probe  # dummy pointer when unused
    _ivf_int8_topk_kernel[(B,)](
        q_codes.contiguous(), q_scales.contiguous(), codes.contiguous(), scales.contiguous(),
        cluster_offsets.contiguous(), probe.contiguous(), mask_arg, out_s, out_r, out_v,
        D, P, W, k,
        HAS_MASK=mask is not None,
        BLOCK_D=triton.next_power_of_2(max(D, 16)),
        BLOCK_P=triton.next_power_of_2(max(P, 2)),
        K_PAD=triton.next_power_of_2(max(k, 16)),
    )
    return out_s, out_r, out_v


def scan_kernel(B: int, P: int, k: int) -> str:
    """The scan ``ivf_int8_topk_cuda`` runs for a batch of ``B`` queries probing ``P`` clusters each.

    ``"grouped"`` (the ``tl.dot`` scan) from batch ``GROUPED_MIN_BATCH`` on, when its ``[B, P, k]``
    partial buffer stays under ``_MAX_PARTIAL_KEYS`` keys (256 MiB; e.g. not for the all-cluster
    fallback scan of a large batch over thousands of clusters); else ``"per_query"``. Decided
    from shapes only, so it costs no host sync and a traced graph takes one path per shape.

    Args:
        B (int): queries.
        P (int): probe columns.
        k (int): K.

    Returns:
        str: ``"grouped"`` or ``"per_query"``.
    """
    return "grouped" if B >= GROUPED_MIN_BATCH and P > 0 and B * P * k <= _MAX_PARTIAL_KEYS else "per_query"
