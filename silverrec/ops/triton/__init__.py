"""Triton (CUDA) kernels of ``torch.ops.silverrec``: one kernel per file, beside its launcher.

Imported only when Triton is installed. ``CUDA_IMPLS`` is registered for the CUDA dispatch key
when CUDA is available; tests also call the launchers on CPU tensors under
``TRITON_INTERPRET=1``, which is how the GPU code is exercised on machines without a GPU.
"""
from typing import Callable, Dict

CUDA_IMPLS: Dict[str, Dict[str, Callable]] = {}

# --- bloom_search ---
try:
    from silverrec.ops.triton.bloom_search import bloom_search_cuda
except ImportError:  # pragma: no cover - triton missing: no CUDA kernel, the CPU path still works
    pass
else:
    CUDA_IMPLS["bloom_search"] = {"CUDA": bloom_search_cuda}

# --- ivf_int8_topk ---
try:
    from silverrec.ops.triton.ivf_int8_topk import ivf_int8_topk_cuda
except ImportError:  # pragma: no cover - Triton missing or too old: no CUDA kernel registered
    pass
else:
    CUDA_IMPLS["ivf_int8_topk"] = {"CUDA": ivf_int8_topk_cuda}

# --- ivf_select_probes ---
try:
    from silverrec.ops.triton.ivf_select_probes import ivf_select_probes_cuda
except ImportError:  # pragma: no cover - Triton missing or too old: no CUDA kernel registered
    pass
else:
    CUDA_IMPLS["ivf_select_probes"] = {"CUDA": ivf_select_probes_cuda}

# --- ivf_rescore_topk ---
try:
    from silverrec.ops.triton.ivf_rescore_topk import ivf_rescore_topk_cuda
except ImportError:  # pragma: no cover - Triton missing or too old: no CUDA kernel registered
    pass
else:
    CUDA_IMPLS["ivf_rescore_topk"] = {"CUDA": ivf_rescore_topk_cuda}

# --- quantize_int8_rowwise ---
try:
    from silverrec.ops.triton.quantize_int8_rowwise import quantize_int8_rowwise_cuda
except ImportError:  # pragma: no cover - Triton missing or too old: no CUDA kernel registered
    pass
else:
    CUDA_IMPLS["quantize_int8_rowwise"] = {"CUDA": quantize_int8_rowwise_cuda}

# --- exact_filter ---
try:
    from silverrec.ops.triton.exact_filter import exact_filter_cuda
except ImportError:  # pragma: no cover - Triton missing or too old: no CUDA kernel registered
    pass
else:
    CUDA_IMPLS["exact_filter"] = {"CUDA": exact_filter_cuda}

# --- pack_id_mask ---
try:
    from silverrec.ops.triton.pack_id_mask import pack_id_mask_cuda
except ImportError:  # pragma: no cover - Triton missing or too old: no CUDA kernel registered
    pass
else:
    CUDA_IMPLS["pack_id_mask"] = {"CUDA": pack_id_mask_cuda}

# --- ivf_search (the four kernels above in sequence) ---
try:
    from silverrec.ops.triton.ivf_search import ivf_search_cuda
except ImportError:  # pragma: no cover - Triton missing or too old: no CUDA kernel registered
    pass
else:
    CUDA_IMPLS["ivf_search"] = {"CUDA": ivf_search_cuda}
