"""Fake (meta) implementations for ``torch.export`` / ``torch.compile``: shape functions only.

Each checks every shape and dtype with ``torch._check`` and allocates with ``new_empty``.
"""
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

FAKE_IMPLS: Dict[str, Dict[str, Callable]] = {}

# --- bloom_search ---


def bloom_search_fake(
    bits: Tensor,
    opcodes: Tensor,
    terms: Tensor,
    hashes: Tensor,
    posting_offsets: Tensor,
    posting_rows: Tensor,
    probe: Tensor,
    cluster_offsets: Tensor,
) -> Tensor:
    """Shape function of ``bloom_search``: int64 ``[B, W]`` packed masks."""
    for name, t in (("bits", bits), ("opcodes", opcodes), ("terms", terms), ("hashes", hashes),
                    ("posting_offsets", posting_offsets), ("probe", probe), ("cluster_offsets", cluster_offsets)):
        torch._check(t.dtype == torch.int64, lambda name=name, t=t: f"bloom_search: {name} must be int64, got {t.dtype}")
    torch._check(posting_rows.dtype == torch.int32,
                 lambda: f"bloom_search: posting_rows must be int32, got {posting_rows.dtype}")
    torch._check(bits.dim() == 2, lambda: f"bloom_search: bits must be [M, W], got {tuple(bits.shape)}")
    torch._check(opcodes.dim() == 2, lambda: f"bloom_search: opcodes must be [B, L], got {tuple(opcodes.shape)}")
    torch._check(terms.shape == opcodes.shape,
                 lambda: f"bloom_search: terms {tuple(terms.shape)} must match opcodes {tuple(opcodes.shape)}")
    torch._check(hashes.dim() == 3 and hashes.shape[:2] == opcodes.shape,
                 lambda: f"bloom_search: hashes must be [B, L, H] with [B, L] = {tuple(opcodes.shape)}, got {tuple(hashes.shape)}")
    torch._check(posting_offsets.dim() == 1 and posting_offsets.shape[0] >= 1,
                 lambda: f"bloom_search: posting_offsets must be [T+1], got {tuple(posting_offsets.shape)}")
    torch._check(posting_rows.dim() == 1, lambda: f"bloom_search: posting_rows must be [nnz], got {tuple(posting_rows.shape)}")
    torch._check(probe.dim() == 2 and probe.shape[0] == opcodes.shape[0],
                 lambda: f"bloom_search: probe must be [B, P] with B = {opcodes.shape[0]}, got {tuple(probe.shape)}")
    torch._check(cluster_offsets.dim() == 1 and cluster_offsets.shape[0] >= 2,
                 lambda: f"bloom_search: cluster_offsets must be [C+1] with C >= 1, got {tuple(cluster_offsets.shape)}")
    return bits.new_empty((opcodes.shape[0], bits.shape[1]))


FAKE_IMPLS["bloom_search"] = {"Meta": bloom_search_fake}

# --- ivf_int8_topk ---


def ivf_int8_topk_fake(
    q_codes: Tensor,
    q_scales: Tensor,
    codes: Tensor,
    scales: Tensor,
    cluster_offsets: Tensor,
    probe: Tensor,
    mask: Optional[Tensor],
    k: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Shapes of ``ivf_int8_topk``: ``scores [B, K]`` float32, ``rows [B, K]`` and ``num_valid [B]`` int64."""
    torch._check(q_codes.dim() == 2, lambda: f"q_codes must be [B, D], got {tuple(q_codes.shape)}")
    torch._check(codes.dim() == 2, lambda: f"codes must be [N, D], got {tuple(codes.shape)}")
    torch._check(q_codes.dtype == torch.int8, lambda: f"q_codes must be int8, got {q_codes.dtype}")
    torch._check(codes.dtype == torch.int8, lambda: f"codes must be int8, got {codes.dtype}")
    B, D = q_codes.shape
    N = codes.shape[0]
    torch._check(codes.shape[1] == D, lambda: f"codes {tuple(codes.shape)} and q_codes {tuple(q_codes.shape)} differ in D")
    torch._check(q_scales.dtype == torch.float32 and q_scales.shape == (B,),
                 lambda: f"q_scales must be float32 [B]={B}, got {q_scales.dtype} {tuple(q_scales.shape)}")
    torch._check(scales.dtype == torch.float32 and scales.shape == (N,),
                 lambda: f"scales must be float32 [N]={N}, got {scales.dtype} {tuple(scales.shape)}")
    torch._check(cluster_offsets.dtype == torch.int64 and cluster_offsets.dim() == 1,
                 lambda: f"cluster_offsets must be int64 [C+1], got {cluster_offsets.dtype} {tuple(cluster_offsets.shape)}")
    torch._check(probe.dtype == torch.int64 and probe.dim() == 2 and probe.shape[0] == B,
                 lambda: f"probe must be int64 [B={B}, P], got {probe.dtype} {tuple(probe.shape)}")
    if mask is not None:
        torch._check(mask.dtype == torch.int64 and mask.shape == (B, (N + 63) // 64),
                     lambda: f"mask must be int64 [B, ceil(N/64)]=[{B}, {(N + 63) // 64}], got {mask.dtype} {tuple(mask.shape)}")
    torch._check(k >= 1, lambda: f"k must be >= 1, got {k}")
    return (
        q_codes.new_empty((B, k), dtype=torch.float32),
        q_codes.new_empty((B, k), dtype=torch.int64),
        q_codes.new_empty((B,), dtype=torch.int64),
    )


FAKE_IMPLS["ivf_int8_topk"] = {"Meta": ivf_int8_topk_fake}

# --- ivf_select_probes ---


def ivf_select_probes_fake(
    centroid_scores: Tensor,
    cluster_offsets: Tensor,
    mask: Optional[Tensor],
    n_probe: int,
    min_rows: int,
    max_probe: int,
    coverage_exponent: float = 0.0,
    min_rows_floor: int = 0,
) -> Tensor:
    """Shape of ``ivf_select_probes``: int64 ``[B, max_probe]``."""
    torch._check(centroid_scores.dtype == torch.float32 and centroid_scores.dim() == 2,
                 lambda: f"centroid_scores must be float32 [B, C], got {centroid_scores.dtype} {tuple(centroid_scores.shape)}")
    B, C = centroid_scores.shape
    torch._check(cluster_offsets.dtype == torch.int64 and cluster_offsets.shape == (C + 1,),
                 lambda: f"cluster_offsets must be int64 [C+1]={C + 1}, got {cluster_offsets.dtype} {tuple(cluster_offsets.shape)}")
    if mask is not None:
        torch._check(mask.dtype == torch.int64 and mask.dim() == 2 and mask.shape[0] == B,
                     lambda: f"mask must be int64 [B={B}, ceil(N/64)], got {mask.dtype} {tuple(mask.shape)}")
    torch._check(n_probe >= 1 and min_rows >= 0 and max_probe >= 1,
                 lambda: f"need n_probe >= 1, min_rows >= 0, max_probe >= 1, got {n_probe}, {min_rows}, {max_probe}")
    return centroid_scores.new_empty((B, max_probe), dtype=torch.int64)


FAKE_IMPLS["ivf_select_probes"] = {"Meta": ivf_select_probes_fake}

# --- ivf_rescore_topk ---


def ivf_rescore_topk_fake(queries: Tensor, cache: Tensor, rows: Tensor, row_to_id: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Shapes of ``ivf_rescore_topk``: ``scores [B, K]`` float32 and ``ids [B, K]`` int64."""
    torch._check(queries.dtype == torch.float32 and queries.dim() == 2,
                 lambda: f"queries must be float32 [B, D], got {queries.dtype} {tuple(queries.shape)}")
    B, D = queries.shape
    torch._check(cache.dtype in (torch.float16, torch.bfloat16) and cache.dim() == 2 and cache.shape[1] == D,
                 lambda: f"cache must be float16/bfloat16 [N, D={D}], got {cache.dtype} {tuple(cache.shape)}")
    torch._check(rows.dtype == torch.int64 and rows.dim() == 2 and rows.shape[0] == B,
                 lambda: f"rows must be int64 [B={B}, K0], got {rows.dtype} {tuple(rows.shape)}")
    torch._check(row_to_id.dtype == torch.int64 and row_to_id.shape == (cache.shape[0],),
                 lambda: f"row_to_id must be int64 [N={cache.shape[0]}], got {row_to_id.dtype} {tuple(row_to_id.shape)}")
    torch._check(k >= 1, lambda: f"k must be >= 1, got {k}")
    return queries.new_empty((B, k)), queries.new_empty((B, k), dtype=torch.int64)


FAKE_IMPLS["ivf_rescore_topk"] = {"Meta": ivf_rescore_topk_fake}

# --- quantize_int8_rowwise ---


def quantize_int8_rowwise_fake(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Shapes of ``quantize_int8_rowwise``: ``codes [N, D]`` int8 and ``scales [N]`` float32."""
    torch._check(x.dtype == torch.float32 and x.dim() == 2,
                 lambda: f"quantize_int8_rowwise: x must be float32 [N, D], got {x.dtype} {tuple(x.shape)}")
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((x.shape[0],))


FAKE_IMPLS["quantize_int8_rowwise"] = {"Meta": quantize_int8_rowwise_fake}

# --- exact_filter ---


def exact_filter_fake(opcodes: Tensor, terms: Tensor, held: Tensor) -> Tensor:
    """Shape of ``exact_filter``: bool ``[B, M]``."""
    torch._check(opcodes.dtype == torch.int64 and opcodes.dim() == 2,
                 lambda: f"exact_filter: opcodes must be int64 [B, L], got {opcodes.dtype} {tuple(opcodes.shape)}")
    torch._check(terms.dtype == torch.int64 and tuple(terms.shape) == tuple(opcodes.shape),
                 lambda: f"exact_filter: terms must be int64 {tuple(opcodes.shape)}, got {terms.dtype} {tuple(terms.shape)}")
    torch._check(held.dtype == torch.int64 and held.dim() == 3 and held.shape[0] == opcodes.shape[0],
                 lambda: f"exact_filter: held must be int64 [B={opcodes.shape[0]}, M, W], got {held.dtype} "
                         f"{tuple(held.shape)}")
    return held.new_empty(held.shape[:2], dtype=torch.bool)


FAKE_IMPLS["exact_filter"] = {"Meta": exact_filter_fake}


def held_terms_fake(bits: Tensor, term_rows: Tensor, posting_offsets: Tensor, posting_rows: Tensor, rows: Tensor,
                    terms: Tensor, num_rows: int) -> Tensor:
    """Shape of ``held_terms``: int64 ``[B, M, L]``."""
    torch._check(posting_rows.dtype == torch.int32,
                 lambda: f"held_terms: posting_rows must be int32, got {posting_rows.dtype}")
    torch._check(rows.dim() == 2 and terms.dim() == 2 and rows.shape[0] == terms.shape[0],
                 lambda: f"held_terms: rows must be [B, M] and terms [B, L], got {tuple(rows.shape)} and "
                         f"{tuple(terms.shape)}")
    return rows.new_empty((rows.shape[0], rows.shape[1], terms.shape[1]))


FAKE_IMPLS["held_terms"] = {"Meta": held_terms_fake}

# --- ivf_search ---


def ivf_search_fake(
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
) -> Tuple[Tensor, Tensor]:
    """Shapes of ``ivf_search``: ``scores`` float32, ``ids`` and ``rows`` int64, each ``[B, K]``
    (or ``[B, T, K]`` for grouped queries ``[B, T, D]``)."""
    torch._check(queries.dtype == torch.float32 and queries.dim() in (2, 3),
                 lambda: f"ivf_search: queries must be float32 [B, D] or [B, T, D], got {queries.dtype} "
                         f"{tuple(queries.shape)}")
    lead, D = tuple(queries.shape[:-1]), queries.shape[-1]
    C = cluster_offsets.shape[0] - 1
    torch._check(tuple(centroid_scores.shape) == lead + (C,),
                 lambda: f"ivf_search: centroid_scores must be {list(lead) + [C]}, got {tuple(centroid_scores.shape)}")
    torch._check(codes.dtype == torch.int8 and codes.dim() == 2 and codes.shape[1] == D,
                 lambda: f"ivf_search: codes must be int8 [N, D={D}], got {codes.dtype} {tuple(codes.shape)}")
    torch._check(cache.dtype in (torch.float16, torch.bfloat16) and tuple(cache.shape) == tuple(codes.shape),
                 lambda: f"ivf_search: cache must be float16/bfloat16 [N, D], got {cache.dtype} {tuple(cache.shape)}")
    torch._check(1 <= k <= k0, lambda: f"ivf_search: need 1 <= k <= k0, got k={k}, k0={k0}")
    if mask is not None:
        torch._check(mask.dim() == 2 and mask.shape[0] == lead[0] and mask.dtype in (torch.int64, torch.bool, torch.uint8),
                     lambda: f"ivf_search: mask must be int64 [B={lead[0]}, W] (packed), bool [B, N] or uint8 "
                             f"[B, ceil(N/8)] (id order), got {mask.dtype} {tuple(mask.shape)}")
    out = lead + (k,)
    return queries.new_empty(out), queries.new_empty(out, dtype=torch.int64), queries.new_empty(out, dtype=torch.int64)


FAKE_IMPLS["ivf_search"] = {"Meta": ivf_search_fake}


def ivf_search_bloom_fake(
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
    """Shapes of ``ivf_search_bloom``: those of ``ivf_search`` (one plan per mask row)."""
    torch._check(opcodes.dim() == 2 and opcodes.shape[0] == queries.shape[0],
                 lambda: f"ivf_search_bloom: opcodes must be [B={queries.shape[0]}, L], got {tuple(opcodes.shape)}")
    torch._check(bits.dim() == 2, lambda: f"ivf_search_bloom: bits must be [M, W], got {tuple(bits.shape)}")
    torch._check(posting_rows.dtype == torch.int32,
                 lambda: f"ivf_search_bloom: posting_rows must be int32, got {posting_rows.dtype}")
    return ivf_search_fake(queries, centroid_scores, codes, scales, cluster_offsets, cache, row_to_id, None, n_probe,
                           min_rows, max_probe, k0, k)


FAKE_IMPLS["ivf_search_bloom"] = {"Meta": ivf_search_bloom_fake}

# --- pack_id_mask ---


def pack_id_mask_fake(mask: Tensor, row_to_id: Tensor) -> Tensor:
    """Shape of ``pack_id_mask``: int64 ``[B, ceil(R / 64)]``."""
    torch._check(mask.dtype in (torch.bool, torch.uint8) and mask.dim() == 2,
                 lambda: f"pack_id_mask: mask must be bool [B, N] or a uint8 bitmap [B, ceil(N/8)], got {mask.dtype} "
                         f"{tuple(mask.shape)}")
    torch._check(row_to_id.dtype == torch.int64 and row_to_id.dim() == 1,
                 lambda: f"pack_id_mask: row_to_id must be int64 [R], got {row_to_id.dtype} {tuple(row_to_id.shape)}")
    return row_to_id.new_empty((mask.shape[0], (row_to_id.shape[0] + 63) // 64))


FAKE_IMPLS["pack_id_mask"] = {"Meta": pack_id_mask_fake}

# --- ivf_probe_scores ---


def ivf_probe_scores_fake(queries: Tensor, packed: Tensor, num_clusters: int, spread_weight: float) -> Tensor:
    """Shape of ``ivf_probe_scores``: float32 ``[B, C]``."""
    torch._check(queries.dtype == torch.float32 and queries.dim() == 2,
                 lambda: f"ivf_probe_scores: queries must be float32 [B, D], got {queries.dtype} {tuple(queries.shape)}")
    torch._check(packed.dtype == torch.bfloat16 and packed.dim() == 4 and tuple(packed.shape[2:]) == (16, 2),
                 lambda: f"ivf_probe_scores: packed must be bfloat16 [ceil(C/16), ceil((D+1)/2), 16, 2], got "
                         f"{packed.dtype} {tuple(packed.shape)}")
    torch._check(packed.shape[1] == (queries.shape[1] + 2) // 2,
                 lambda: f"ivf_probe_scores: packed holds {packed.shape[1]} row pairs, queries have D={queries.shape[1]}")
    return queries.new_empty((queries.shape[0], num_clusters))


FAKE_IMPLS["ivf_probe_scores"] = {"Meta": ivf_probe_scores_fake}
