"""CUDA implementation of ``torch.ops.silverrec.ivf_search_bloom``: the ``bloom_search`` kernel over
all rows, the denied and excluded rows cleared, then ``ivf_search``'s kernels.

Spec: ``silverrec.ops.reference.ivf_search_bloom_reference``. The CPU kernel evaluates the plan
only over the clusters each probe choice walks; here every row's words are made in one launch
(the GPU reads the bit rows at memory bandwidth, and the probe choice kernel counts passing rows
per cluster over the whole mask). Fixed shapes, no host sync.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from silverrec.ops.triton.bloom_search import bloom_search_cuda
from silverrec.ops.triton.ivf_search import ivf_search_cuda


def excluded_words(exclude_rows: Tensor, num_rows: int) -> Tensor:
    """Packed int64 ``[B, ceil(N/64)]`` bits of each row's excluded rows (``[B, E]``, -1 padding;
    duplicates allowed): a scatter of per-bit ones into a bool row, then a pack (no host sync)."""
    B = exclude_rows.shape[0]
    words = (num_rows + 63) // 64
    hit = torch.zeros((B, 64 * words + 1), dtype=torch.bool, device=exclude_rows.device)
    hit.scatter_(1, torch.where(exclude_rows >= 0, exclude_rows, 64 * words), True)
    bits = hit[:, :64 * words].view(B, words, 64).to(torch.int64)
    weights = torch.ones(64, dtype=torch.int64, device=exclude_rows.device) << torch.arange(64, device=exclude_rows.device)
    return (bits * weights).sum(-1)  # distinct bits: the sum is the OR (bit 63 wraps to the sign bit)


def ivf_search_bloom_cuda(
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
) -> Tuple[Tensor, Tensor, Tensor]:
    """Launcher: ``scores`` float32, ``ids`` and ``rows`` int64, ``[B, K]`` or ``[B, T, K]``."""
    B, N = opcodes.shape[0], codes.shape[0]
    everything = torch.zeros((B, 1), dtype=torch.int64, device=codes.device)
    all_rows = torch.stack([torch.zeros((), dtype=torch.int64, device=codes.device),
                            torch.full((), N, dtype=torch.int64, device=codes.device)])
    mask = bloom_search_cuda(bits, opcodes, terms, hashes, posting_offsets, posting_rows, everything, all_rows)
    if deny is not None:
        mask = mask & ~deny.unsqueeze(0)
    if exclude_rows is not None and exclude_rows.shape[1] > 0:
        mask = mask & ~excluded_words(exclude_rows, N)
    return ivf_search_cuda(queries, centroid_scores, codes, scales, cluster_offsets, cache, row_to_id, mask, n_probe,
                           min_rows, max_probe, k0, k)
