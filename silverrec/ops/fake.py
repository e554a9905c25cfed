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
                    ("posting_offsets", posting_offsets), ("posting_rows", posting_rows),
                    ("probe", probe), ("cluster_offsets", cluster_offsets)):
        torch._check(t.dtype == torch.int64, lambda name=name, t=t: f"bloom_search: {name} must be int64, got {t.dtype}")
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
