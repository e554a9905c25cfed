"""CUDA implementation of ``torch.ops.silverrec.ivf_search``: the four Triton kernels in sequence.

Spec: ``silverrec.ops.reference.ivf_search_reference``. On the GPU the kernels are launched back
to back on one stream, so fusing them saves little of what it saves on the CPU (fork/joins and
intermediate tensors); each step is its own kernel (:mod:`.quantize_int8_rowwise`,
:mod:`.ivf_select_probes`, :mod:`.ivf_int8_topk`, :mod:`.ivf_rescore_topk`). The short-list
fallback of a capped probe list (``max_probe < C``) reads which queries need it on the host: one
sync per call in that case only.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from silverrec.ops.triton.ivf_int8_topk import ivf_int8_topk_cuda
from silverrec.ops.triton.ivf_rescore_topk import ivf_rescore_topk_cuda
from silverrec.ops.triton.ivf_select_probes import ivf_select_probes_cuda
from silverrec.ops.triton.quantize_int8_rowwise import quantize_int8_rowwise_cuda


def ivf_search_cuda(
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
) -> Tuple[Tensor, Tensor]:
    """Launcher: ``scores`` float32 ``[B, K]`` and ``ids`` int64 ``[B, K]`` (see the module docstring)."""
    if k < 1 or k0 < k:
        raise ValueError(f"ivf_search: need 1 <= k <= k0, got k={k}, k0={k0}")
    q_codes, q_scales = quantize_int8_rowwise_cuda(queries)
    probe = ivf_select_probes_cuda(centroid_scores, cluster_offsets, mask, n_probe, min_rows, max_probe)
    _, rows, valid = ivf_int8_topk_cuda(q_codes, q_scales, codes, scales, cluster_offsets, probe, mask, k0)
    if max_probe < cluster_offsets.numel() - 1:
        short = (valid < k).nonzero().flatten()  # host sync
        if short.numel() > 0:
            everything = torch.zeros((short.numel(), 1), dtype=torch.int64, device=rows.device)
            all_rows = torch.tensor([0, codes.shape[0]], dtype=torch.int64, device=rows.device)
            _, again, _ = ivf_int8_topk_cuda(q_codes[short], q_scales[short], codes, scales, all_rows, everything,
                                             None if mask is None else mask[short], k0)
            rows = rows.index_copy(0, short, again)
    return ivf_rescore_topk_cuda(queries, cache, rows, row_to_id, k)
