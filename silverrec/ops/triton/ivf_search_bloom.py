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

from silverrec.ops.reference.filter import rows_to_words
from silverrec.ops.triton.bloom_search import bloom_search_cuda
from silverrec.ops.triton.ivf_search import ivf_search_cuda


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
    coverage_exponent: float = 0.0,
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
        mask = mask & ~rows_to_words(exclude_rows, mask.shape[1])
    return ivf_search_cuda(queries, centroid_scores, codes, scales, cluster_offsets, cache, row_to_id, mask, n_probe,
                           min_rows, max_probe, k0, k, coverage_exponent)
