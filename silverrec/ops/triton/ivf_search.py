"""CUDA implementation of ``torch.ops.silverrec.ivf_search``: the four Triton kernels in sequence.

Spec: ``silverrec.ops.reference.ivf_search_reference``. On the GPU the kernels are launched back
to back on one stream, so fusing them saves little of what it saves on the CPU (fork/joins and
intermediate tensors); each step is its own kernel (:mod:`.quantize_int8_rowwise`,
:mod:`.ivf_select_probes`, :mod:`.ivf_int8_topk`, :mod:`.ivf_rescore_topk`). No host sync: the
short-list fallback of a capped probe list (``max_probe < C``) is a second scan with fixed shapes,
in which only the queries that need it probe every cluster (the others an empty probe row). An
id-order mask (bool or bitmap) is packed to row order first by the ``pack_id_mask`` kernel.
"""
from typing import Optional, Tuple

from torch import Tensor

from silverrec.ops.reference.ivf import ivf_search_in_steps, row_order_mask
from silverrec.ops.triton.ivf_int8_topk import ivf_int8_topk_cuda
from silverrec.ops.triton.ivf_rescore_topk import ivf_rescore_topk_cuda
from silverrec.ops.triton.ivf_select_probes import ivf_select_probes_cuda
from silverrec.ops.triton.pack_id_mask import pack_id_mask_cuda
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
    coverage_exponent: float = 0.0,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Launcher: ``scores`` float32, ``ids`` and ``rows`` int64, ``[B, K]`` or ``[B, T, K]`` (see the module docstring)."""
    steps = (quantize_int8_rowwise_cuda, ivf_select_probes_cuda, ivf_int8_topk_cuda, ivf_rescore_topk_cuda)
    mask = row_order_mask(mask, row_to_id, pack_id_mask_cuda)
    return ivf_search_in_steps(steps, queries, centroid_scores, codes, scales, cluster_offsets, cache, row_to_id, mask,
                               n_probe, min_rows, max_probe, k0, k, coverage_exponent)
