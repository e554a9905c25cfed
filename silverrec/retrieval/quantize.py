"""Symmetric INT8 quantization of embeddings: per item (default) or one global scale (the paper).

Pure functions, no state. Codes lie in ``[-127, 127]`` (never -128, which the INT8 scan kernels
rely on) and ``x ~= codes * scale``. An all-zero row gets scale 1 and zero codes.
"""
from typing import Tuple

import torch
from torch import Tensor

import silverrec.ops  # noqa: F401  (registers torch.ops.silverrec.quantize_int8_rowwise)

QMAX = 127


def _check_embeddings(x: Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        bad = ~torch.isfinite(x)
        first = bad.nonzero()[0].tolist()
        raise ValueError(f"{name} contains {int(bad.sum())} NaN/inf values (first at row {first[0]}, column {first[1]})")


def quantize_int8_per_item(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Quantizes each row with its own symmetric scale ``max|x_n| / 127``.

    Args:
        x (Tensor): float ``[N, D]`` embeddings (finite).

    Returns:
        Tuple[Tensor, Tensor]: ``codes`` int8 ``[N, D]`` in ``[-127, 127]`` and ``scales``
        float32 ``[N]``, with ``x[n] ~= codes[n] * scales[n]``.

    Example::

        >>> codes, scales = quantize_int8_per_item(torch.tensor([[0.5, -1.0], [2.0, 0.0]]))
        >>> codes.tolist(), scales.tolist()
        ([[64, -127], [127, 0]], [0.007874015718698502, 0.015748031437397003])
    """
    _check_embeddings(x, "x")
    return torch.ops.silverrec.quantize_int8_rowwise(x.float().contiguous())  # the one per-row quantizer


def quantize_int8_global(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Quantizes all rows with one symmetric scale ``max|x| / 127`` (the SilverTorch paper's scheme).

    Args:
        x (Tensor): float ``[N, D]`` embeddings (finite).

    Returns:
        Tuple[Tensor, Tensor]: ``codes`` int8 ``[N, D]`` in ``[-127, 127]`` and ``scales``
        float32 ``[N]`` (``N`` copies of the one scale, the layout the INT8 scan takes).

    Example::

        >>> codes, scales = quantize_int8_global(torch.tensor([[0.5, -1.0], [2.0, 0.0]]))
        >>> codes.tolist(), scales.unique().tolist()
        ([[32, -64], [127, 0]], [0.015748031437397003])
    """
    _check_embeddings(x, "x")
    x = x.float()
    amax = x.abs().amax()
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    codes = torch.round(x / scale).clamp_(-QMAX, QMAX).to(torch.int8)
    return codes, scale.expand(x.shape[0]).contiguous()


def dequantize_int8(codes: Tensor, scales: Tensor) -> Tensor:
    """Float32 ``[N, D]`` approximation ``codes * scales[:, None]`` of quantized rows.

    Args:
        codes (Tensor): int8 ``[N, D]``.
        scales (Tensor): float32 ``[N]``.

    Returns:
        Tensor: float32 ``[N, D]``.

    Example::

        >>> dequantize_int8(torch.tensor([[2, -1]], dtype=torch.int8), torch.tensor([0.5])).tolist()
        [[1.0, -0.5]]
    """
    if codes.dim() != 2 or scales.shape != (codes.shape[0],):
        raise ValueError(f"codes must be [N, D] and scales [N], got {tuple(codes.shape)} and {tuple(scales.shape)}")
    return codes.float() * scales.float()[:, None]
