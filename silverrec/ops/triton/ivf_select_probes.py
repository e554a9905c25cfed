"""Triton kernel of ``torch.ops.silverrec.ivf_select_probes`` and its launcher ``ivf_select_probes_cuda``.

Math (spec: ``silverrec.ops.reference.ivf_select_probes_reference``): the launcher counts each
cluster's passing rows with a few torch ops on the device (a popcount of every mask word, a
prefix sum, and the partial words at the cluster boundaries), then one program per query sorts
the ``C`` clusters by an int64 key that orders like the tie rule (score bits mapped to a
signed-monotone int32 in the high word, ``2**32 - 1 - cluster`` in the low word), takes an
exclusive prefix sum of the passing rows in that order, and writes the taken prefix.

TODO (performance): one program holds all C keys (``BLOCK_C = next_pow2(C)``); for very large C
a two-pass selection (a threshold from a sample, then a sort of the survivors) would need less.
"""
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _ivf_select_probes_kernel(
    scores_ptr, counts_ptr, target_ptr, out_ptr, C, n_probe, max_probe, BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, BLOCK_C).to(tl.int64)
    live = j < C
    s = tl.load(scores_ptr + b * C + j, mask=live, other=0.0)
    s = tl.where(s == 0.0, 0.0, s)  # -0.0 and +0.0 tie
    bits = s.to(tl.int32, bitcast=True)
    fkey = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    low_all = tl.full([BLOCK_C], 4294967295, tl.int64)
    key = (fkey.to(tl.int64) << 32) | (low_all - j)
    key = tl.where(live, key, tl.full([BLOCK_C], -9223372036854775808, tl.int64))
    key = tl.sort(key, descending=True)
    cluster = low_all - (key & low_all)  # padding sorts last, so slots j < C hold real clusters
    cnt = tl.load(counts_ptr + b * C + cluster, mask=live, other=0)
    before = tl.cumsum(cnt, axis=0) - cnt
    target = tl.load(target_ptr + b)  # float64: the passing rows this query covers
    taken = ((j < n_probe) | (before.to(tl.float64) < target)) & live & (j < max_probe)
    tl.store(out_ptr + b * max_probe + j, tl.where(taken, cluster, -1), mask=live & (j < max_probe))


def _popcount_words(x: Tensor) -> Tensor:
    """Set bits of each int64 word (SWAR), int64, same shape."""
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return ((x * 0x0101010101010101) >> 56) & 0xFF


def _passing_counts(cluster_offsets: Tensor, mask: Optional[Tensor], B: int) -> Tensor:
    """int64 [B, C] passing rows per cluster, with torch ops on the device (no host sync)."""
    off = cluster_offsets
    if mask is None:
        return (off[1:] - off[:-1]).expand(B, -1).contiguous()
    W = mask.shape[1]
    if W == 0:
        return off.new_zeros((B, off.shape[0] - 1))
    cum = torch.cat([mask.new_zeros((B, 1)), torch.cumsum(_popcount_words(mask), dim=1)], dim=1)  # [B, W + 1]
    w, bit = off >> 6, off & 63
    below = mask[:, w.clamp(max=W - 1)] & ~(torch.full_like(bit, -1) << bit)  # bits of rows below off[c]
    prefix = cum[:, w] + torch.where(bit == 0, 0, _popcount_words(below))  # [B, C + 1] passing rows in [0, off[c])
    return (prefix[:, 1:] - prefix[:, :-1]).contiguous()


def _coverage_targets(centroid_scores: Tensor, cluster_offsets: Tensor, counts: Tensor, n_probe: int, min_rows: int,
                      max_probe: int, exponent: float, floor: int) -> Tensor:
    """float64 ``[B]``: the passing rows each query covers (``min_rows``, or with ``exponent > 0``
    ``max(floor, min_rows * (p / r) ** exponent)`` over its first ``n_probe`` clusters in the
    kernel's order), with torch ops on the device (no host sync)."""
    B, C = centroid_scores.shape
    if exponent == 0.0:
        return torch.full((B,), float(min_rows), dtype=torch.float64, device=centroid_scores.device)
    bits = (centroid_scores + 0.0).contiguous().view(torch.int32)
    fkey = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(torch.int64)
    key = (fkey << 32) | (4294967295 - torch.arange(C, device=centroid_scores.device))
    first = torch.topk(key, min(n_probe, max_probe, C), dim=1).indices  # [B, n]: the walk's first clusters
    p = counts.gather(1, first).sum(1).double()
    r = (cluster_offsets[1:] - cluster_offsets[:-1])[first].sum(1).double()
    t = min_rows * torch.pow(p / r.clamp(min=1), exponent)
    t = torch.where(r > 0, t, torch.full_like(t, float(min_rows)))
    return t.clamp(min=float(floor))


def ivf_select_probes_cuda(
    centroid_scores: Tensor,
    cluster_offsets: Tensor,
    mask: Optional[Tensor],
    n_probe: int,
    min_rows: int,
    max_probe: int,
    coverage_exponent: float = 0.0,
    min_rows_floor: int = 0,
) -> Tensor:
    """Launches ``_ivf_select_probes_kernel`` (one program per query); same contract as the reference.

    Checks dtypes, shapes and devices without reading tensor values (no host sync); valid
    ``cluster_offsets`` (non-decreasing from 0, ``N = offsets[C]``) are the caller's.

    Args:
        centroid_scores (Tensor): float32 ``[B, C]``.
        cluster_offsets (Tensor): int64 ``[C + 1]``.
        mask (Optional[Tensor]): int64 ``[B, ceil(N / 64)]`` or ``None``.
        n_probe (int): clusters always probed.
        min_rows (int): passing rows to cover.
        max_probe (int): P.
        coverage_exponent (float): ``b`` in ``[0, 1]``: each query's count to cover is
            ``max(min_rows_floor, min_rows * s ** b)``, ``s`` the pass fraction of its first
            ``n_probe`` clusters (computed here with torch ops on the device).
        min_rows_floor (int): see ``coverage_exponent``.

    Returns:
        Tensor: int64 ``[B, P]`` cluster ids, padded with ``-1``.
    """
    B, C = centroid_scores.shape
    if centroid_scores.dtype != torch.float32:
        raise ValueError(f"ivf_select_probes: centroid_scores must be float32 [B, C], got {centroid_scores.dtype}")
    if cluster_offsets.dtype != torch.int64 or tuple(cluster_offsets.shape) != (C + 1,):
        raise ValueError(f"ivf_select_probes: cluster_offsets must be int64 [{C + 1}], got "
                         f"{cluster_offsets.dtype} {tuple(cluster_offsets.shape)}")
    for name, t in (("cluster_offsets", cluster_offsets), ("mask", mask)):
        if t is not None and t.device != centroid_scores.device:
            raise ValueError(f"ivf_select_probes: {name} is on {t.device}, centroid_scores on {centroid_scores.device}")
    if mask is not None and (mask.dtype != torch.int64 or mask.dim() != 2 or mask.shape[0] != B):
        raise ValueError(f"ivf_select_probes: mask must be int64 [B={B}, W], got {mask.dtype} {tuple(mask.shape)}")
    if n_probe < 1 or min_rows < 0 or max_probe < 1:
        raise ValueError(f"ivf_select_probes: need n_probe >= 1, min_rows >= 0, max_probe >= 1, got "
                         f"{n_probe}, {min_rows}, {max_probe}")
    if not 0.0 <= coverage_exponent <= 1.0 or min_rows_floor < 0:
        raise ValueError(f"ivf_select_probes: need 0 <= coverage_exponent <= 1 and min_rows_floor >= 0, got "
                         f"{coverage_exponent}, {min_rows_floor}")
    out = torch.full((B, max_probe), -1, dtype=torch.int64, device=centroid_scores.device)
    if B == 0 or C == 0:
        return out
    counts = _passing_counts(cluster_offsets, None if mask is None else mask.contiguous(), B)
    target = _coverage_targets(centroid_scores, cluster_offsets, counts, n_probe, min_rows, max_probe,
                               coverage_exponent, min_rows_floor)
    _ivf_select_probes_kernel[(B,)](
        centroid_scores.contiguous(), counts, target, out, C, n_probe, max_probe,
        BLOCK_C=triton.next_power_of_2(max(C, 2)),
    )
    return out
