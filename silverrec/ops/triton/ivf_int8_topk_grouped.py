"""Cluster-major Triton scan of ``torch.ops.silverrec.ivf_int8_topk``: the queries of a batch that
probe the same cluster score it together with one int8 ``tl.dot`` (tensor cores).

Math (spec: ``silverrec.ops.reference.ivf_int8_topk_reference``; same keys and tie rule as the
per-query kernel in :mod:`.ivf_int8_topk`):

1. *Groups* (torch ops on the device, fixed shapes, no host sync): the ``B * P`` probe entries
   are sorted by ``(cluster, query)``; ``-1`` entries and a query's repeated clusters are
   dropped; each cluster's run of queries is cut into *tiles* of ``BLOCK_Q = 16`` queries (the
   smallest M of ``tl.dot``). There are at most ``ceil(B * P / 16) + min(C, B * P)`` tiles, so
   the grid has that many programs and those without a tile return at once.
2. *Scan* (``_ivf_int8_topk_grouped_kernel``, one program per tile): for each block of
   ``K_PAD`` rows of the tile's cluster, ``acc [16, K_PAD] = q_codes [16, D] @ codes[rows].T``
   in int32 on the tensor cores (``D`` in chunks of ``BLOCK_D``), then per (query, row)
   ``float(acc) * q_scale * scale`` (the reference's order, so bit-identical floats), the mask
   bit, and the int64 key ``score bits (signed-monotone) << 32 | (2**32 - 1 - row)``. Each
   query keeps a descending-sorted register row of ``K_PAD`` keys; a block is merged (ascending
   sort, elementwise max, descending sort: the top half of a bitonic merge) only when one of its
   keys beats a query's current ``K_PAD``-th key, which after the first blocks is rare.
   The tile writes each query's top ``k`` keys and its count of eligible rows to the query's
   probe slot ``(b, p)`` of a ``[B, P, k]`` buffer.
3. *Merge* (torch ops): ``torch.topk`` over each query's ``P * k`` keys (keys are distinct, so
   the order is the tie rule's), decoded back to scores and rows; ``num_valid`` is the sum of
   the slot counts, capped at ``k``.

Expected behaviour and roofline (H100 SXM: ~3.35 TB/s HBM, ~990 dense int8 TOPS on tensor
cores, ~17 T int32 multiply-adds/s (IMAD) on the CUDA cores; A100: 2.0 TB/s, 624 TOPS). A cluster of
``R`` rows is ``R * D`` code bytes. The per-query kernel reads it once per probing query and does
``R * D`` multiply-adds per query on the CUDA cores (~1 multiply-add per byte: bound by the ~3.35
T bytes/s of HBM, below the CUDA cores' ~17 T/s, and paying the bytes again for every query that
probes the cluster, less what L2 catches); with ``q``
queries per cluster this kernel reads the codes once per tile of 16 queries and does the ``q * R
* D`` multiply-adds on the tensor cores (16 ops per byte: still far below the tensor cores'
ridge point of ~300 ops per byte, so the scan is bound by the code bytes, ``~R * D / 3.35e12 s``
per cluster, plus the key work below). The per-row cost that does not shrink with sharing is the
key work: ~10 int/float ops per (query, row) for scale, mask and key, plus the block sort when a
merge is needed (``O(K_PAD log^2 K_PAD)`` per query-row of keys, taken for the first blocks
and then for ~``k / R`` of them). So at batch 16-256 with ~2-20% of the clusters probed (many
queries per cluster) this kernel should approach the code-bandwidth bound of one pass over the
probed clusters per 16 queries, while the per-query kernel costs ``B`` passes. In numbers, at
D = 64 on an H100: the per-query kernel moves 64 code bytes per (query, row), ~50 G query-rows/s
from HBM (more where L2 holds a shared cluster); this kernel moves 4 bytes per (query, row) with
full tiles, ~0.8 T query-rows/s, and its key work (~1.7 T query-rows/s on the CUDA cores) is of
the same order, so ~0.5-1 T query-rows/s is the ceiling to expect, 10-20x the per-query kernel
when tiles are full. Costs it adds:
~12 small torch ops for the groups and the merge (tens of microseconds of launches), the
``[B, P, k]`` int64 buffer (``8 * B * P * k`` bytes; the launcher takes the per-query kernel when
that would pass ``_MAX_PARTIAL_KEYS``), and 15 idle tensor-core rows per tile of one query. At
batch 1 every tile has one query, nothing is shared and the extra launches dominate, so the
launcher keeps the per-query kernel there (``ivf_int8_topk_cuda``). The speed claims are
unmeasured until ``make gpu-check`` runs on a GPU (it times both kernels at batch 1, 16, 256).

TODO (performance): a tile could also take rows of several small clusters probed by the same
queries; a query probing many clusters could merge in a second kernel instead of ``torch.topk``.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_Q = 16  # queries per tile: tl.dot needs M >= 16
_MAX_PARTIAL_KEYS = 1 << 25  # the [B, P, k] partial buffer: at most 256 MiB of int64 keys
_MIN_KEY = -(2**63)


@triton.jit
def _ivf_int8_topk_grouped_kernel(
    q_ptr, qs_ptr, codes_ptr, scales_ptr, off_ptr, tile_ptr, ent_c_ptr, ent_b_ptr, ent_p_ptr, mask_ptr,
    part_ptr, cnt_ptr,
    D, P, W, k, M,
    HAS_MASK: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, K_PAD: tl.constexpr,
):
    g = tl.program_id(0).to(tl.int64)
    s = tl.load(tile_ptr + g)  # first entry of this tile, M when the program has none
    if s < M:
        i = s + tl.arange(0, BLOCK_Q).to(tl.int64)
        c = tl.load(ent_c_ptr + s)
        ent_c = tl.load(ent_c_ptr + i, mask=i < M, other=-1)
        qlive = ent_c == c
        qb = tl.load(ent_b_ptr + i, mask=qlive, other=0)
        qp = tl.load(ent_p_ptr + i, mask=qlive, other=0)
        qscale = tl.load(qs_ptr + qb, mask=qlive, other=0.0)
        lo = tl.load(off_ptr + c)
        hi = tl.load(off_ptr + c + 1)
        n = tl.arange(0, K_PAD).to(tl.int64)
        min_key = tl.full([BLOCK_Q, K_PAD], -9223372036854775808, tl.int64)
        low_all = tl.full([BLOCK_Q, K_PAD], 4294967295, tl.int64)
        top = min_key
        count = tl.zeros([BLOCK_Q], tl.int64)
        for start in range(lo, hi, K_PAD):
            rows = start + n
            rlive = rows < hi
            acc = tl.zeros([BLOCK_Q, K_PAD], tl.int32)
            for d0 in range(0, D, BLOCK_D):
                d = d0 + tl.arange(0, BLOCK_D)
                dmask = d < D
                qv = tl.load(q_ptr + qb[:, None] * D + d[None, :], mask=qlive[:, None] & dmask[None, :], other=0)
                cv = tl.load(codes_ptr + rows[None, :] * D + d[:, None], mask=dmask[:, None] & rlive[None, :], other=0)
                acc = tl.dot(qv, cv, acc, out_dtype=tl.int32)
            live = qlive[:, None] & rlive[None, :]
            if HAS_MASK:
                word = tl.load(mask_ptr + qb[:, None] * W + (rows[None, :] >> 6), mask=live, other=0)
                live = live & (((word >> (rows[None, :] & 63)) & 1) != 0)
            sc = tl.load(scales_ptr + rows, mask=rlive, other=1.0)
            score = acc.to(tl.float32) * qscale[:, None] * sc[None, :]
            score = tl.where(score == 0.0, 0.0, score)  # -0.0 and +0.0 tie, as in the reference
            bits = score.to(tl.int32, bitcast=True)
            fkey = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # signed-monotone in the float order
            key = (fkey.to(tl.int64) << 32) | (low_all - rows[None, :])
            key = tl.where(live, key, min_key)
            count += tl.sum(live.to(tl.int64), axis=1)
            kth = tl.min(top, axis=1)  # each query's K_PAD-th key (top is sorted descending)
            if tl.sum((key > kth[:, None]).to(tl.int32)) > 0:
                blk = tl.sort(key, dim=1, descending=False)
                top = tl.sort(tl.maximum(top, blk), dim=1, descending=True)
        slot = qb * P + qp
        tl.store(part_ptr + slot[:, None] * k + n[None, :], top, mask=qlive[:, None] & (n < k)[None, :])
        tl.store(cnt_ptr + slot, count, mask=qlive)


def probe_tiles(probe: Tensor, block_q: int = BLOCK_Q) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The scan's tiles: probe entries grouped by cluster, with torch ops on the device (no host sync).

    Args:
        probe (Tensor): int64 ``[B, P]`` cluster ids, ``-1`` = none, repeats allowed.
        block_q (int): queries per tile.

    Returns:
        Tuple[Tensor, Tensor, Tensor, Tensor]: per entry (``[M]``, ``M = B * P``; live entries
        first, sorted by cluster, then query): ``begins`` bool (the entry starts a tile: the
        first of its cluster's run or ``block_q`` entries after a tile start), ``cluster``
        int64 (``-1`` for the dropped ``-1`` and repeated entries, which sort last), ``query``
        int64 ``b`` and ``slot`` int64 (the probe column ``p``).
    """
    B, P = probe.shape
    M = B * P
    flat = probe.reshape(M)
    idx = torch.arange(M, device=probe.device)
    big = torch.iinfo(torch.int64).max
    key = torch.where(flat >= 0, flat * B + idx // P, big)
    order = torch.sort(key, stable=True).indices  # equal (cluster, query): lower p first
    sk = key[order]
    first = torch.ones_like(sk, dtype=torch.bool)
    first[1:] = sk[1:] != sk[:-1]
    live = first & (sk != big)  # a query's repeated cluster counts once
    order2 = torch.sort(torch.where(live, sk, big), stable=True).indices  # live entries first
    ent = order[order2]
    ent_live = live[order2]
    cluster = torch.where(ent_live, flat[ent], -1)
    run_first = torch.ones_like(ent_live)
    run_first[1:] = cluster[1:] != cluster[:-1]
    run_start = torch.cummax(torch.where(run_first, idx, 0), dim=0).values
    begins = ent_live & ((idx - run_start) % block_q == 0)
    return begins, cluster, ent // P, ent % P


def ivf_int8_topk_grouped_cuda(
    q_codes: Tensor,
    q_scales: Tensor,
    codes: Tensor,
    scales: Tensor,
    cluster_offsets: Tensor,
    probe: Tensor,
    mask: Optional[Tensor],
    k: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Launches ``_ivf_int8_topk_grouped_kernel`` (one program per tile of queries sharing a cluster).

    Same contract and checks as :func:`silverrec.ops.triton.ivf_int8_topk.ivf_int8_topk_cuda`
    (which calls this when the batch shares clusters); no host sync.

    Returns:
        Tuple[Tensor, Tensor, Tensor]: ``scores [B, K]`` float32, ``rows [B, K]`` int64,
        ``num_valid [B]`` int64.
    """
    B, D = q_codes.shape
    N, P, C = codes.shape[0], probe.shape[1], cluster_offsets.shape[0] - 1
    W = (N + 63) // 64
    dev = q_codes.device
    M = B * P
    if B == 0 or M == 0:
        return (torch.full((B, k), float("-inf"), device=dev), torch.full((B, k), -1, dtype=torch.int64, device=dev),
                torch.zeros((B,), dtype=torch.int64, device=dev))
    begins, cluster, query, slot = probe_tiles(probe)
    G = triton.cdiv(M, BLOCK_Q) + min(C, M)  # every cluster run adds at most one partial tile
    tile_id = torch.cumsum(begins.to(torch.int64), 0) - 1
    tile_start = torch.full((G + 1,), M, dtype=torch.int64, device=dev)
    tile_start.scatter_(0, torch.where(begins, tile_id, G), torch.arange(M, device=dev))  # slot G: a dump
    part = torch.full((B, P, k), _MIN_KEY, dtype=torch.int64, device=dev)
    cnt = torch.zeros((B, P), dtype=torch.int64, device=dev)
    K_PAD = triton.next_power_of_2(max(k, 16))
    mask_arg = mask.contiguous() if mask is not None else probe  # dummy pointer when unused
    _ivf_int8_topk_grouped_kernel[(G,)](
        q_codes.contiguous(), q_scales.contiguous(), codes.contiguous(), scales.contiguous(),
        cluster_offsets.contiguous(), tile_start, cluster, query, slot, mask_arg, part, cnt,
        D, P, W, k, M,
        HAS_MASK=mask is not None, BLOCK_Q=BLOCK_Q,
        BLOCK_D=min(128, triton.next_power_of_2(max(D, 32))), K_PAD=K_PAD,
        num_warps=8 if K_PAD >= 128 else 4,
    )
    top = torch.topk(part.view(B, P * k), k, dim=1).values  # distinct keys: sorted by the tie rule
    valid = top != _MIN_KEY
    fkey = (top >> 32).to(torch.int32)
    bits = fkey ^ ((fkey >> 31) & 0x7FFFFFFF)
    scores = torch.where(valid, bits.view(torch.float32), float("-inf"))
    rows = torch.where(valid, 4294967295 - (top & 4294967295), -1)
    return scores, rows, cnt.sum(1).clamp(max=k)
