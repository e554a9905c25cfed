"""Packed filter masks: 64 rows per int64 word, bit ``n % 64`` (LSB first) of word ``n // 64`` is row ``n``.

The layout ``bloom_search`` produces and ``ivf_int8_topk`` consumes; bits for rows >= N are 0.
"""
import numpy as np
import torch
from torch import Tensor


def pack_mask(mask: Tensor) -> Tensor:
    """Packs a bool ``[B, N]`` mask into int64 ``[B, ceil(N / 64)]`` words.

    Args:
        mask (Tensor): bool ``[B, N]``.

    Returns:
        Tensor: int64 ``[B, W]``, ``W = ceil(N / 64)``.

    Example::

        >>> pack_mask(torch.tensor([[True, False, True]])).tolist()
        [[5]]
    """
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool [B, N], got {mask.dtype} {tuple(mask.shape)}")
    B, N = mask.shape
    W = (N + 63) // 64
    padded = torch.zeros(B, W * 64, dtype=torch.int64, device=mask.device)
    padded[:, :N] = mask.to(torch.int64)
    shifts = torch.arange(64, dtype=torch.int64, device=mask.device)
    # distinct bits never carry, so the sum is the bitwise OR (bit 63 adds -2**63, still exact)
    return (padded.view(B, W, 64) << shifts).sum(dim=2)


def unpack_mask(words: Tensor, num_rows: int) -> Tensor:
    """Inverse of :func:`pack_mask`: int64 ``[B, W]`` -> bool ``[B, num_rows]``.

    Example::

        >>> unpack_mask(torch.tensor([[5]]), 3).tolist()
        [[True, False, True]]
    """
    if num_rows > 64 * words.shape[1]:
        raise ValueError(f"num_rows={num_rows} exceeds the {64 * words.shape[1]} rows of {words.shape[1]} mask words")
    if words.device.type == "cpu" and not torch.compiler.is_compiling():
        # fast host path: little-endian bytes, so byte k of a word holds rows 8k..8k+7
        as_bytes = words.contiguous().numpy().view(np.uint8)
        return torch.from_numpy(np.unpackbits(as_bytes, axis=1, count=num_rows, bitorder="little")).view(torch.bool)
    shifts = torch.arange(64, dtype=torch.int64, device=words.device)
    bits = (words[:, :, None] >> shifts) & 1  # [B, W, 64]
    return bits.reshape(words.shape[0], -1)[:, :num_rows].bool()


def popcount(words: Tensor) -> Tensor:
    """Number of set bits per row of int64 ``[B, W]`` words (SWAR bit counting), int64 ``[B]``.

    Example::

        >>> popcount(torch.tensor([[5, -1]])).tolist()
        [66]
    """
    x = words
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    x = (x * 0x0101010101010101) >> 56  # per-word count <= 64 fits the top byte, sign bit clear
    return (x & 0xFF).sum(dim=-1)
