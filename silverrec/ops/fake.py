"""Fake (meta) implementations for ``torch.export`` / ``torch.compile``: shape functions only.

Each checks every shape and dtype with ``torch._check`` and allocates with ``new_empty``.
"""
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

FAKE_IMPLS: Dict[str, Dict[str, Callable]] = {}

# --- bloom_search ---

# --- ivf_int8_topk ---
