"""Custom ops ``torch.ops.silverrec.*`` and their documented Python wrappers.

Importing ``silverrec`` (or this package) defines every schema, registers the fake impls,
loads the C++ CPU kernels (``silverrec._C``) and, where CUDA is present, the Triton kernels.
"""
import importlib.util

import torch

from silverrec.ops import _library
from silverrec.ops.fake import FAKE_IMPLS

_library.define_all()
_library.register(FAKE_IMPLS)

try:
    from silverrec import _C  # noqa: F401  (registers the CPU kernels)
except ImportError as _err:  # pragma: no cover - only when the extension was not built
    raise ImportError(
        "silverrec's C++ kernels (silverrec._C) are not built; run `make build` "
        "(or `pip install --no-build-isolation -e .`) in the repository"
    ) from _err

HAS_TRITON = importlib.util.find_spec("triton") is not None
if HAS_TRITON and torch.cuda.is_available():  # pragma: no cover - GPU machines only
    from silverrec.ops.triton import CUDA_IMPLS

    _library.register(CUDA_IMPLS)

# --- bloom_search ---

# --- ivf_int8_topk ---
