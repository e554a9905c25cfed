"""Plain-torch references of every ``torch.ops.silverrec`` op: the spec.

Each docstring fixes the contract (shapes, padding with id -1 / score -inf, tie-breaking by
lower id). Never registered as a kernel, never optimised, never deleted: every backend is
tested against these functions on random inputs.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

# --- bloom_search ---

# --- ivf_int8_topk ---
