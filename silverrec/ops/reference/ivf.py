"""Plain-torch references (the spec) of the IVF-INT8 ops: ``quantize_int8_rowwise``,
``ivf_select_probes``, ``ivf_int8_topk``, ``ivf_rescore_topk`` and ``ivf_search`` (the four in
sequence), and ``ivf_probe_scores``. See :mod:`silverrec.ops.reference`."""
import math
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from silverrec.ops.reference.filter import bloom_search_reference, pack_id_mask_reference, rows_to_words

# --- ivf_int8_topk ---


def ivf_int8_topk_reference(
    q_codes: Tensor,
    q_scales: Tensor,
    codes: Tensor,
    scales: Tensor,
    cluster_offsets: Tensor,
    probe: Tensor,
    mask: Optional[Tensor],
    k: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Spec of ``torch.ops.silverrec.ivf_int8_topk``: probe, filter, INT8 score and top-k.

    Row ``n`` is *eligible* for query ``b`` when it lies in one of the query's probed clusters
    (``cluster_offsets[c] <= n < cluster_offsets[c + 1]`` for some ``c`` in ``probe[b]``; entries
    ``-1`` are padding, repeated clusters count once) and, when ``mask`` is given, its mask bit is
    1 (bit ``n % 64`` of word ``mask[b, n // 64]``, LSB first). Its score is
    ``float(sum_d int32(q_codes[b, d]) * int32(codes[n, d])) * q_scales[b] * scales[n]``, the
    int32 dot product converted to float32 and then multiplied by the two scales in that order
    (so every backend gets bit-identical floats).

    Tie rule: results are sorted by score descending; equal scores put the lower row first.

    Args:
        q_codes (Tensor): int8 ``[B, D]`` query codes.
        q_scales (Tensor): float32 ``[B]`` query scales.
        codes (Tensor): int8 ``[N, D]`` item codes in cluster-sorted row order.
        scales (Tensor): float32 ``[N]`` item scales (a global scale is ``N`` equal values).
        cluster_offsets (Tensor): int64 ``[C + 1]``; cluster ``c`` holds rows
            ``cluster_offsets[c]:cluster_offsets[c + 1]``; non-decreasing, ``0`` .. ``N``.
        probe (Tensor): int64 ``[B, P]`` probed cluster ids per query, ``-1`` = none.
        mask (Optional[Tensor]): int64 ``[B, W]`` packed filter bits, ``W = ceil(N / 64)``;
            ``None`` passes every row.
        k (int): results per query, ``k >= 1``.

    Returns:
        Tuple[Tensor, Tensor, Tensor]: ``scores`` float32 ``[B, K]`` best-first, padded with
        ``-inf``; ``rows`` int64 ``[B, K]`` padded with ``-1``; ``num_valid`` int64 ``[B]``,
        the number of real results per query (``min(K, eligible rows)``).

    Example::

        >>> q = torch.tensor([[1, 2]], dtype=torch.int8)
        >>> codes = torch.tensor([[1, 0], [0, 1], [2, 2]], dtype=torch.int8)
        >>> s, r, n = ivf_int8_topk_reference(q, torch.ones(1), codes, torch.ones(3),
        ...     torch.tensor([0, 2, 3]), torch.tensor([[0]]), None, 3)
        >>> r.tolist(), n.tolist()
        ([[1, 0, -1]], [2])
    """
    B, N = q_codes.shape[0], codes.shape[0]
    rows_n = torch.arange(N, dtype=torch.int64)
    # cluster of every row (rows of empty clusters never occur)
    row_cluster = torch.searchsorted(cluster_offsets.cpu(), rows_n, right=True) - 1
    probed = (probe.cpu()[:, :, None] == row_cluster[None, None, :]).any(dim=1)  # [B, N]
    if mask is not None:
        words = mask.cpu()[:, rows_n // 64]  # [B, N]
        probed &= ((words >> (rows_n % 64)) & 1).bool()
    acc = q_codes.cpu().to(torch.int32) @ codes.cpu().to(torch.int32).T  # [B, N] exact
    scores = acc.to(torch.float32) * q_scales.cpu()[:, None] * scales.cpu()[None, :]
    scores = scores.masked_fill(~probed, float("-inf"))
    # stable descending sort: equal scores keep ascending row order (the tie rule)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    top_scores = torch.gather(scores, 1, order)
    valid = torch.gather(probed, 1, order)
    out_scores = torch.full((B, k), float("-inf"), dtype=torch.float32)
    out_rows = torch.full((B, k), -1, dtype=torch.int64)
    kk = order.shape[1]
    out_scores[:, :kk] = top_scores.masked_fill(~valid, float("-inf"))
    out_rows[:, :kk] = order.masked_fill(~valid, -1)
    num_valid = probed.sum(dim=1).clamp(max=k).to(torch.int64)
    dev = q_codes.device
    return out_scores.to(dev), out_rows.to(dev), num_valid.to(dev)


# --- ivf_select_probes ---


def _rank_order(scores: Tensor, ids: Tensor) -> Tensor:
    """Indices sorting each row by score descending, equal scores (-0.0 == +0.0) by lower id."""
    by_id = torch.argsort(ids, dim=1, stable=True)
    by_score = torch.sort(scores.gather(1, by_id), dim=1, descending=True, stable=True).indices
    return by_id.gather(1, by_score)


def _passing_rows(cluster_offsets: Tensor, mask: Optional[Tensor], B: int) -> Tensor:
    """int64 [B, C]: rows of each cluster whose mask bit is 1 (all rows without a mask)."""
    off = cluster_offsets.cpu()
    sizes = off[1:] - off[:-1]
    if mask is None:
        return sizes.expand(B, -1)
    N = int(off[-1])
    rows_n = torch.arange(N, dtype=torch.int64)
    bits = ((mask.cpu()[:, rows_n // 64] >> (rows_n % 64)) & 1).bool()  # [B, N]
    cluster = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)  # [N]
    out = torch.zeros(B, sizes.numel(), dtype=torch.int64)
    return out.index_add_(1, cluster, bits.long())


def ivf_select_probes_reference(
    centroid_scores: Tensor,
    cluster_offsets: Tensor,
    mask: Optional[Tensor],
    n_probe: int,
    min_rows: int,
    max_probe: int,
    coverage_exponent: float = 0.0,
    min_rows_floor: int = 0,
) -> Tensor:
    """Spec of ``torch.ops.silverrec.ivf_select_probes``: the clusters each query probes.

    Query ``b`` visits the clusters in centroid order (``centroid_scores[b]`` descending; equal
    scores, with -0.0 equal to +0.0, put the lower cluster id first) and takes the ``j``-th one
    while ``j < n_probe`` **or** the clusters taken so far cover fewer than ``min_rows`` passing
    rows, and ``j < max_probe``. A row passes when its ``mask`` bit is 1 (bit ``n % 64`` of word
    ``mask[b, n // 64]``); without a mask every row passes. So the query probes at least
    ``n_probe`` clusters and, with a strict filter, as many more as it takes to cover
    ``min_rows`` rows that pass (every cluster when the whole mask passes fewer), never more
    than ``max_probe``.

    With a ``coverage_exponent`` above 0 each query has its own count to cover: ``max(
    min_rows_floor, min_rows * (p / r) ** coverage_exponent)`` (a Python float: ``math.pow`` of the exact
    quotient, then the product, as the C++ kernel computes it), where ``r`` rows of its first
    ``min(n_probe, max_probe)`` clusters hold ``p`` passing ones (``p / r`` = 1 when ``r`` = 0): a
    filter passing a fraction ``s`` of the rows near the query covers ``min_rows * s ** coverage_exponent``.

    Args:
        centroid_scores (Tensor): float32 ``[B, C]`` query-centroid similarities (finite).
        cluster_offsets (Tensor): int64 ``[C + 1]``, non-decreasing from 0; ``N = offsets[C]``.
        mask (Optional[Tensor]): int64 ``[B, ceil(N / 64)]`` packed filter bits, or ``None``.
        n_probe (int): clusters always probed (``>= 1``; at most ``min(C, max_probe)``).
        min_rows (int): passing rows to cover (``>= 0``).
        max_probe (int): P, the width of the output (``>= 1``).
        coverage_exponent (float): ``b`` in ``[0, 1]`` (0: cover ``min_rows``).
        min_rows_floor (int): with ``b > 0``, the least passing rows to cover (``>= 0``).

    Returns:
        Tensor: int64 ``[B, P]`` cluster ids in centroid order, padded with ``-1``.

    Example::

        >>> scores = torch.tensor([[0.1, 0.9, 0.5, 0.9]])
        >>> offsets = torch.tensor([0, 10, 11, 12, 40])  # cluster sizes 10, 1, 1, 28
        >>> ivf_select_probes_reference(scores, offsets, None, 1, 0, 3).tolist()
        [[1, -1, -1]]
        >>> ivf_select_probes_reference(scores, offsets, None, 1, 25, 3).tolist()  # 1 + 28 rows
        [[1, 3, -1]]
    """
    B, C = centroid_scores.shape
    if n_probe < 1 or min_rows < 0 or max_probe < 1:
        raise ValueError(f"ivf_select_probes: need n_probe >= 1, min_rows >= 0, max_probe >= 1, got {n_probe}, {min_rows}, {max_probe}")
    ids = torch.arange(C, dtype=torch.int64).expand(B, C)
    order = _rank_order(centroid_scores.cpu().float() + 0.0, ids)  # [B, C]
    if not 0.0 <= coverage_exponent <= 1.0 or min_rows_floor < 0:
        raise ValueError(f"ivf_select_probes: need 0 <= coverage_exponent <= 1 and min_rows_floor >= 0, got "
                         f"{coverage_exponent}, {min_rows_floor}")
    passing = _passing_rows(cluster_offsets, mask, B).gather(1, order)
    covered_before = torch.cumsum(passing, dim=1) - passing
    j = torch.arange(C)
    target = torch.full((B,), float(min_rows), dtype=torch.float64)
    if coverage_exponent > 0.0:
        sizes = (cluster_offsets[1:] - cluster_offsets[:-1]).cpu()[order]  # [B, C] in walk order
        first = min(n_probe, max_probe, C)
        for b in range(B):
            p, r = int(passing[b, :first].sum()), int(sizes[b, :first].sum())
            t = min_rows * math.pow(p / r, coverage_exponent) if r > 0 else float(min_rows)
            target[b] = max(float(min_rows_floor), t)
    taken = ((j < n_probe) | (covered_before.double() < target.unsqueeze(1))) & (j < max_probe)
    out = torch.full((B, max_probe), -1, dtype=torch.int64)
    width = min(C, max_probe)
    out[:, :width] = torch.where(taken, order, -1)[:, :width]
    return out.to(centroid_scores.device)


# --- ivf_rescore_topk ---


def ivf_rescore_topk_reference(
    queries: Tensor, cache: Tensor, rows: Tensor, row_to_id: Tensor, k: int
) -> Tuple[Tensor, Tensor]:
    """Spec of ``torch.ops.silverrec.ivf_rescore_topk``: exact re-score of candidates, final top-k.

    Candidate ``rows[b, j] >= 0`` (``-1`` = padding) gets the score
    ``float32(sum_d float64(cache[r, d]) * float64(queries[b, d])) + 0.0``: the products of a
    16-bit float and a float32 are exact in float64, the sum is rounded once to float32 (so a
    backend may sum in any order; it differs only when the exact sum lies within about
    ``D`` float64 ulps of a float32 rounding boundary), and ``+ 0.0`` turns -0.0 into +0.0.
    Its id is ``row_to_id[r]`` (``< 2**32``). Results are sorted by score descending; equal
    scores put the lower id first.

    Args:
        queries (Tensor): float32 ``[B, D]``.
        cache (Tensor): float16 or bfloat16 ``[N, D]`` item embeddings in row order.
        rows (Tensor): int64 ``[B, K0]`` candidate rows, ``-1`` = none.
        row_to_id (Tensor): int64 ``[N]`` external id of each row.
        k (int): K, results per query (``>= 1``).

    Returns:
        Tuple[Tensor, Tensor]: ``scores`` float32 ``[B, K]`` best-first, padded with ``-inf``;
        ``ids`` int64 ``[B, K]`` padded with ``-1``.

    Example::

        >>> cache = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float16)
        >>> s, i = ivf_rescore_topk_reference(torch.tensor([[2.0, 2.0]]), cache,
        ...     torch.tensor([[0, 2, 1, -1]]), torch.tensor([7, 3, 5]), 3)
        >>> s.tolist(), i.tolist()  # rows 0 and 1 tie at 2.0: id 3 (row 1) before id 7 (row 0)
        ([[4.0, 2.0, 2.0]], [[5, 3, 7]])
    """
    B, K0 = rows.shape
    rows_c = rows.cpu()
    valid = rows_c >= 0
    safe = rows_c.clamp(min=0)
    cand = cache.cpu()[safe].double()  # [B, K0, D]
    exact = (cand * queries.cpu().double()[:, None, :]).sum(dim=2).float() + 0.0
    exact = exact.masked_fill(~valid, float("-inf"))
    ids = torch.where(valid, row_to_id.cpu()[safe], -1)
    order = _rank_order(exact, torch.where(valid, ids, 2**40))[:, :k]  # padding sorts last
    out_s = torch.full((B, k), float("-inf"), dtype=torch.float32)
    out_i = torch.full((B, k), -1, dtype=torch.int64)
    out_s[:, : order.shape[1]] = exact.gather(1, order)
    out_i[:, : order.shape[1]] = ids.gather(1, order)
    dev = queries.device
    return out_s.to(dev), out_i.to(dev)


# --- quantize_int8_rowwise ---


def quantize_int8_rowwise_reference(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Spec of ``torch.ops.silverrec.quantize_int8_rowwise``: symmetric INT8 codes of each row.

    Row ``n`` gets the scale ``s = float32(max_d |x[n, d]|) / 127`` (``1`` for an all-zero row)
    and the codes ``clamp(round(x[n, d] / s), -127, 127)``: float32 division, rounding half to
    even (``torch.round``); never -128, which the INT8 scan relies on. NaN or inf values raise.

    Args:
        x (Tensor): float32 ``[N, D]`` (query embeddings at search time).

    Returns:
        Tuple[Tensor, Tensor]: ``codes`` int8 ``[N, D]`` and ``scales`` float32 ``[N]``, with
        ``x ~= codes * scales[:, None]``.

    Example::

        >>> codes, scales = quantize_int8_rowwise_reference(torch.tensor([[0.5, -1.0], [0.0, 0.0]]))
        >>> codes.tolist(), scales.tolist()
        ([[64, -127], [0, 0]], [0.007874015718698502, 1.0])
    """
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise ValueError(f"quantize_int8_rowwise: x contains NaN/inf (first at row {bad[0]}, column {bad[1]})")
    amax = x.abs().amax(dim=1)
    scales = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    codes = torch.round(x / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return codes, scales


# --- ivf_search ---


def ivf_search_reference(
    queries: Tensor,
    centroid_scores: Tensor,
    codes: Tensor,
    scales: Tensor,
    cluster_offsets: Tensor,
    cache: Tensor,
    row_to_id: Tensor,
    mask: Optional[Tensor],
    n_probe: int,
    min_rows: int,
    max_probe: int,
    k0: int,
    k: int,
    coverage_exponent: float = 0.0,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Spec of ``torch.ops.silverrec.ivf_search``: a whole IVF-INT8 search, the four ops in sequence.

    1. ``q_codes, q_scales = quantize_int8_rowwise(queries)``;
    2. ``probe = ivf_select_probes(centroid_scores, cluster_offsets, mask, n_probe, min_rows, max_probe,
       coverage_exponent, k)`` (with ``coverage_exponent`` > 0 a query covers at least K passing rows);
    3. ``rows = ivf_int8_topk(q_codes, q_scales, codes, scales, cluster_offsets, probe, mask, k0)``;
       when ``max_probe < C`` (a capped probe list), a query with fewer than ``k`` eligible rows
       is scanned again over every row (still under its mask), so it returns ``k`` results when
       ``k`` rows pass;
    4. ``ivf_rescore_topk(queries, cache, rows, row_to_id, k)``, and the row of each result.

    Queries may come in groups that share a mask row: ``queries [B, T, D]`` with
    ``centroid_scores [B, T, C]`` and ``mask [B, W]`` is the search of the ``B * T`` queries
    with mask row ``b`` repeated for the ``T`` queries of group ``b`` (e.g. the task heads of
    one user under the user's filter); the outputs are then ``[B, T, K]``.

    Args:
        queries (Tensor): float32 ``[B, D]`` or ``[B, T, D]`` (finite).
        centroid_scores (Tensor): float32 ``[B, C]`` or ``[B, T, C]``, e.g. ``queries @ centroids.T``.
        codes, scales, cluster_offsets: the INT8 index (see :func:`ivf_int8_topk_reference`).
        cache (Tensor): float16 or bfloat16 ``[N, D]`` item embeddings in row order.
        row_to_id (Tensor): int64 ``[N]`` distinct external id of each row (``< 2**32``).
        mask (Optional[Tensor]): the filter, or ``None``: int64 ``[B, ceil(N / 64)]`` packed
            bits in row order, or in the caller's id order (ids in ``[0, N)``): bool ``[B, N]``
            or a uint8 bitmap ``[B, ceil(N / 8)]`` with FAISS ``IDSelectorBitmap``'s layout,
            which is the packed mask ``pack_id_mask(mask, row_to_id)`` (the CPU kernel packs
            only the clusters its probes walk; same results).
        n_probe, min_rows, max_probe: the probe choice (see :func:`ivf_select_probes_reference`).
        k0 (int): K0 >= K, INT8 candidates re-scored.
        k (int): K, results per query.
        coverage_exponent (float): the probe choice's (:func:`ivf_select_probes_reference`), floored at K.

    Returns:
        Tuple[Tensor, Tensor, Tensor]: ``scores`` float32, ``ids`` int64 and ``rows`` int64
        (the index row of each result), each ``[B, K]`` (or ``[B, T, K]``), best-first (equal
        scores: lower id first), padded with ``-inf`` / ``-1`` / ``-1``.

    Example::

        >>> codes = torch.tensor([[1, 0], [0, 1], [1, 1]], dtype=torch.int8)
        >>> cache = codes.to(torch.float16)
        >>> s, i, r = ivf_search_reference(torch.tensor([[1.0, 0.5]]), torch.tensor([[0.0, 1.0]]),
        ...     codes, torch.ones(3), torch.tensor([0, 2, 3]), cache, torch.tensor([10, 11, 12]),
        ...     None, 1, 0, 1, 2, 2)  # probes cluster 1 (row 2) only: fewer than k=2 rows, so all
        >>> s.tolist(), i.tolist(), r.tolist()
        ([[1.5, 1.0]], [[12, 10]], [[2, 0]])
    """
    mask = row_order_mask(mask, row_to_id, pack_id_mask_reference)
    return ivf_search_in_steps(
        (quantize_int8_rowwise_reference, ivf_select_probes_reference, ivf_int8_topk_reference, ivf_rescore_topk_reference),
        queries, centroid_scores, codes, scales, cluster_offsets, cache, row_to_id, mask, n_probe, min_rows, max_probe,
        k0, k, coverage_exponent)


def row_order_mask(mask: Optional[Tensor], row_to_id: Tensor, pack: Callable[[Tensor, Tensor], Tensor]) -> Optional[Tensor]:
    """``ivf_search``'s ``mask`` as packed row-order words: an id-order mask (bool ``[B, N]`` or a
    uint8 bitmap ``[B, ceil(N / 8)]``, N = ``row_to_id``'s length) is checked and packed with
    ``pack`` (``pack_id_mask``'s reference or op); a packed int64 mask or ``None`` is returned as is."""
    if mask is None or mask.dtype == torch.int64:
        return mask
    N = row_to_id.shape[0]
    width = {torch.bool: N, torch.uint8: (N + 7) // 8}.get(mask.dtype)
    if width is None or mask.dim() != 2 or mask.shape[1] != width:
        raise ValueError(f"ivf_search: mask must be int64 [B, ceil(N/64)] (packed, row order), bool [B, N={N}] or "
                         f"uint8 [B, ceil(N/8)={(N + 7) // 8}] (id order), got {mask.dtype} {tuple(mask.shape)}")
    return pack(mask, row_to_id)


def ivf_search_in_steps(steps: Tuple[Callable, ...], queries: Tensor, centroid_scores: Tensor, codes: Tensor,
                        scales: Tensor, cluster_offsets: Tensor, cache: Tensor, row_to_id: Tensor,
                        mask: Optional[Tensor], n_probe: int, min_rows: int, max_probe: int, k0: int,
                        k: int, coverage_exponent: float = 0.0) -> Tuple[Tensor, Tensor, Tensor]:
    """``ivf_search`` as its four steps, given as functions with the ops' signatures: ``steps`` =
    (quantize_int8_rowwise, ivf_select_probes, ivf_int8_topk, ivf_rescore_topk), e.g. the
    references (the spec), the Triton launchers (the CUDA implementation) or the single ops."""
    quantize, select_probes, int8_topk, rescore_topk = steps
    if k < 1 or k0 < k:
        raise ValueError(f"ivf_search: need 1 <= k <= k0, got k={k}, k0={k0}")
    if queries.dim() == 3:  # [B, T, D]: group b's T queries share mask row b
        B, T, D = queries.shape
        flat_mask = None if mask is None else mask.repeat_interleave(T, dim=0)
        out = ivf_search_in_steps(steps, queries.reshape(B * T, D), centroid_scores.reshape(B * T, -1), codes, scales,
                                  cluster_offsets, cache, row_to_id, flat_mask, n_probe, min_rows, max_probe, k0, k,
                                  coverage_exponent)
        return tuple(x.reshape(B, T, k) for x in out)
    q_codes, q_scales = quantize(queries)
    probe = select_probes(centroid_scores, cluster_offsets, mask, n_probe, min_rows, max_probe, coverage_exponent, k)
    _, rows, valid = int8_topk(q_codes, q_scales, codes, scales, cluster_offsets, probe, mask, k0)
    C = cluster_offsets.numel() - 1
    if max_probe < C:
        # a query whose capped probe list held fewer than k eligible rows probes every cluster;
        # the others get an empty probe row (-1s, nothing scanned): fixed shapes, no host sync
        short = (valid < k).unsqueeze(1)  # [B, 1]
        every = torch.arange(C, device=rows.device).expand(rows.shape[0], C)
        _, again, _ = int8_topk(q_codes, q_scales, codes, scales, cluster_offsets,
                                torch.where(short, every, -1), mask, k0)
        rows = torch.where(short, again, rows)
    scores, ids = rescore_topk(queries, cache, rows, row_to_id, k)
    # the row of each result: the candidate whose id it is (ids are distinct)
    cand_ids = torch.where(rows >= 0, row_to_id[rows.clamp(min=0)], -1)  # [B, K0]
    match = (ids.unsqueeze(2) == cand_ids.unsqueeze(1)) & (ids >= 0).unsqueeze(2)  # [B, K, K0]
    out_rows = torch.where(match.any(2), rows.gather(1, match.int().argmax(2)), -1)
    return scores, ids, out_rows


def ivf_search_bloom_reference(
    queries: Tensor,
    centroid_scores: Tensor,
    codes: Tensor,
    scales: Tensor,
    cluster_offsets: Tensor,
    cache: Tensor,
    row_to_id: Tensor,
    bits: Tensor,
    opcodes: Tensor,
    terms: Tensor,
    hashes: Tensor,
    posting_offsets: Tensor,
    posting_rows: Tensor,
    deny: Optional[Tensor],
    exclude_rows: Optional[Tensor],
    n_probe: int,
    min_rows: int,
    max_probe: int,
    k0: int,
    k: int,
    coverage_exponent: float = 0.0,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Spec of ``torch.ops.silverrec.ivf_search_bloom``: ``ivf_search`` under a Bloom filter plan.

    The mask of query row ``b`` is the Bloom evaluation of plan ``b`` over all N rows
    (``bloom_search`` with ``probe = [[0]] * B`` and ``cluster_offsets = [0, N]``), minus the
    rows set in ``deny`` and the rows listed in ``exclude_rows[b]``; then ``ivf_search`` with that
    packed mask. The CPU kernel evaluates the plan only over the clusters each probe choice walks
    (probe, then filter); the results are the same.

    Args:
        queries, centroid_scores, codes, scales, cluster_offsets, cache, row_to_id: as in
            :func:`ivf_search_reference` (``[B, T, D]`` queries share mask row ``b``).
        bits, opcodes, terms, hashes, posting_offsets, posting_rows: as in
            :func:`~silverrec.ops.reference.filter.bloom_search_reference` (``bits`` ``[M, ceil(N/64)]``,
            rows in index order; one plan per mask row ``b``).
        deny (Optional[Tensor]): int64 ``[ceil(N/64)]`` packed rows that never pass (e.g. tombstones).
        exclude_rows (Optional[Tensor]): int64 ``[B, E]`` index rows that never pass for query row
            ``b`` (-1 padding).
        n_probe, min_rows, max_probe, k0, k, coverage_exponent: as in :func:`ivf_search_reference`.

    Returns:
        Tuple[Tensor, Tensor, Tensor]: ``scores``, ``ids``, ``rows`` as :func:`ivf_search_reference`.
    """
    B, N = opcodes.shape[0], codes.shape[0]
    everything = torch.zeros((B, 1), dtype=torch.int64, device=codes.device)
    mask = bloom_search_reference(bits, opcodes, terms, hashes, posting_offsets, posting_rows, everything,
                                  torch.tensor([0, N], device=codes.device))
    if deny is not None:
        mask = mask & ~deny.unsqueeze(0)
    if exclude_rows is not None and exclude_rows.numel() > 0:
        if bool(((exclude_rows < -1) | (exclude_rows >= N)).any()):
            raise ValueError(f"ivf_search_bloom: exclude_rows must be -1 or in [0, N={N})")
        mask = mask & ~rows_to_words(exclude_rows, mask.shape[1])
    return ivf_search_reference(queries, centroid_scores, codes, scales, cluster_offsets, cache, row_to_id, mask,
                                n_probe, min_rows, max_probe, k0, k, coverage_exponent)


# --- ivf_probe_scores ---

def ivf_probe_scores_reference(queries: Tensor, packed: Tensor, num_clusters: int, spread_weight: float) -> Tensor:
    """Spec of ``ivf_probe_scores``: ``[q, w |q|] @ matrix`` (``w = spread_weight``) in bfloat16
    products with float32 accumulation, where ``packed = silverrec.ops.pack_probe_matrix(matrix)``
    for a ``[D + 1, C]`` matrix (element ``[t, k2, j, h]`` is ``matrix[2 * k2 + h, 16 * t + j]``, zero
    past its shape): with ``matrix = [centroids^T; spread]``, the centroid scores ``q . c + w |q|
    spread_c``.

    The arithmetic is fixed, so every backend returns the same bits: ``|q|`` is the square root of
    the sum of squares in float64, rounded to float32, and ``w |q|`` a float32 product; the
    augmented query is rounded to bfloat16 (nearest even); each ``(b, c)`` accumulator starts at +0
    and takes, for ``k2 = 0, 1, ...``, first the product of rows ``2 k2 + 1``, then of rows ``2 k2``
    (the order of AVX-512 BF16's ``vdpbf16ps``), each added in float32 with one rounding. (A
    product of two bfloat16 values is exact in float32.) Subnormal inputs and results are outside
    the contract (``vdpbf16ps`` flushes them to zero).

    Args:
        queries (Tensor): float32 ``[B, D]``.
        packed (Tensor): bfloat16 ``[ceil(C / 16), ceil((D + 1) / 2), 16, 2]``.
        num_clusters (int): C, the matrix's columns.
        spread_weight (float): ``w``, the weight of the matrix's last row.

    Returns:
        Tensor: float32 ``[B, C]``.
    """
    B, D = queries.shape
    Ct, K2, tile = packed.shape[:3]
    matrix = packed.permute(1, 3, 0, 2).reshape(2 * K2, Ct * tile)[:, :num_clusters].float()  # [2 K2, C]
    norm = queries.double().square().sum(dim=1).sqrt().float()  # [B]
    reach = torch.tensor(spread_weight, dtype=torch.float32) * norm
    q = torch.zeros(B, 2 * K2, dtype=torch.float32)
    q[:, :D] = queries.to(torch.bfloat16).float()
    q[:, D] = reach.to(torch.bfloat16).float()
    acc = torch.zeros(B, num_clusters, dtype=torch.float32)
    for k2 in range(K2):
        for r in (2 * k2 + 1, 2 * k2):
            acc = acc + q[:, r, None] * matrix[None, r]
    return acc
