"""Triton (CUDA) kernels of ``torch.ops.silverrec``: one kernel per file, beside its launcher.

Imported only when Triton is installed. ``CUDA_IMPLS`` is registered for the CUDA dispatch key
when CUDA is available; tests also call the launchers on CPU tensors under
``TRITON_INTERPRET=1``, which is how the GPU code is exercised on machines without a GPU.
Each op's launcher is ``<op>_cuda`` in ``silverrec/ops/triton/<op>.py`` (``ivf_search``'s runs
the four single-step kernels in sequence; ``ivf_search_bloom``'s the ``bloom_search``
kernel over all rows, then ``ivf_search``'s).
"""
import importlib
from typing import Callable, Dict

_OPS = ("bloom_search", "ivf_int8_topk", "ivf_select_probes", "ivf_rescore_topk", "quantize_int8_rowwise",
        "exact_filter", "held_terms", "pack_id_mask", "ivf_search", "ivf_search_bloom")

CUDA_IMPLS: Dict[str, Dict[str, Callable]] = {}
for _op in _OPS:
    try:
        _module = importlib.import_module(f"silverrec.ops.triton.{_op}")
    except ImportError:  # pragma: no cover - Triton missing or too old: no CUDA kernel, the CPU path still works
        continue
    CUDA_IMPLS[_op] = {"CUDA": getattr(_module, f"{_op}_cuda")}
