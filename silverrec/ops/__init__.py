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


def bloom_search(
    bits: torch.Tensor,
    opcodes: torch.Tensor,
    terms: torch.Tensor,
    hashes: torch.Tensor,
    posting_offsets: torch.Tensor,
    posting_rows: torch.Tensor,
    probe: torch.Tensor,
    cluster_offsets: torch.Tensor,
) -> torch.Tensor:
    """Evaluates B filter plans over the bit-sliced Bloom index of the probed clusters.

    Calls ``torch.ops.silverrec.bloom_search`` (C++ on CPU, Triton on CUDA). Plans are postfix
    programs (``silverrec.retrieval.filter_plan``); ``TERM`` tests a term's H signature bits (no
    misses, rare false positives; exact on a frequent term's exact row), ``NOT_TERM`` is exact
    (posting lists), ``NOT_ROWS`` complements rows (an exact row for frequent terms). The spec
    is ``silverrec.ops.reference.bloom_search_reference``.

    Args:
        bits (Tensor): int64 ``[M, W]`` bit-sliced signatures (bit ``r % 64`` of word ``r // 64``
            is row ``r``).
        opcodes (Tensor): int64 ``[B, L]`` programs padded with ``BLOOM_NOP``.
        terms (Tensor): int64 ``[B, L]`` term ids of ``TERM``/``NOT_TERM`` instructions, else -1.
        hashes (Tensor): int64 ``[B, L, H]`` signature bit positions of ``TERM`` instructions.
        posting_offsets (Tensor): int64 ``[T + 1]``; posting_rows (Tensor): int64 ``[nnz]``
            ascending rows of each term.
        probe (Tensor): int64 ``[B, P]`` probed cluster ids (``-1`` = padding). All rows:
            ``probe = [[0]] * B`` with ``cluster_offsets = [0, N]``.
        cluster_offsets (Tensor): int64 ``[C + 1]``; cluster ``c`` is rows ``offsets[c]:offsets[c+1]``.

    Returns:
        Tensor: int64 ``[B, W]`` packed masks; rows outside the probed clusters are 0.

    Example::

        >>> from silverrec.ops.reference import BLOOM_TERM, BLOOM_NOT_TERM, BLOOM_OR
        >>> bits = torch.tensor([[0b0101], [0b0011]])  # M=2 bits, W=1 word, 4 rows
        >>> opcodes = torch.tensor([[BLOOM_TERM, BLOOM_NOT_TERM, BLOOM_OR]])
        >>> terms = torch.tensor([[0, 1, -1]])
        >>> hashes = torch.tensor([[[0, 1], [0, 0], [0, 0]]])  # term 0 sets signature bits 0 and 1
        >>> mask = bloom_search(bits, opcodes, terms, hashes, torch.tensor([0, 1, 4]),
        ...     torch.tensor([0, 0, 1, 2]), torch.tensor([[0]]), torch.tensor([0, 4]))
        >>> mask.tolist()  # term 0: row 0 (both bits set); NOT term 1 (rows 0, 1, 2): row 3
        [[9]]
    """
    return torch.ops.silverrec.bloom_search(
        bits, opcodes, terms, hashes, posting_offsets, posting_rows, probe, cluster_offsets
    )


# --- ivf_int8_topk ---


def ivf_int8_topk(
    q_codes: torch.Tensor,
    q_scales: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    cluster_offsets: torch.Tensor,
    probe: torch.Tensor,
    mask: "torch.Tensor | None",
    k: int,
) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
    """Fused IVF-INT8 scan: probe clusters, skip masked rows, INT8-score, keep a running top-k.

    Calls ``torch.ops.silverrec.ivf_int8_topk`` (C++ on CPU, Triton on CUDA). One pass over the
    probed rows; no ``[B, N]`` score matrix. The spec, including the tie rule (equal scores: lower
    row first) and the exact score formula, is ``silverrec.ops.reference.ivf_int8_topk_reference``.

    Args:
        q_codes (Tensor): int8 ``[B, D]`` query codes in ``[-127, 127]``.
        q_scales (Tensor): float32 ``[B]`` query scales.
        codes (Tensor): int8 ``[N, D]`` item codes in cluster-sorted row order.
        scales (Tensor): float32 ``[N]`` item scales.
        cluster_offsets (Tensor): int64 ``[C + 1]``; cluster ``c`` is rows ``offsets[c]:offsets[c+1]``.
        probe (Tensor): int64 ``[B, P]`` probed cluster ids (``-1`` = padding; repeats count once).
            All rows: ``probe = [[0]] * B`` with ``cluster_offsets = [0, N]``.
        mask (Optional[Tensor]): int64 ``[B, ceil(N / 64)]`` packed filter bits (bit ``n % 64``
            of word ``n // 64`` is row ``n``), or ``None`` for no filter.
        k (int): results per query.

    Returns:
        Tuple[Tensor, Tensor, Tensor]: ``scores`` float32 ``[B, K]`` and ``rows`` int64 ``[B, K]``
        best-first, padded with ``-inf`` / ``-1``, and ``num_valid`` int64 ``[B]``.

    Example::

        >>> q = torch.tensor([[1, 2]], dtype=torch.int8)
        >>> codes = torch.tensor([[1, 0], [0, 1], [2, 2]], dtype=torch.int8)
        >>> scores, rows, n = ivf_int8_topk(q, torch.ones(1), codes, torch.ones(3),
        ...     torch.tensor([0, 2, 3]), torch.tensor([[0, 1]]), None, 2)
        >>> rows.tolist(), scores.tolist(), n.tolist()
        ([[2, 1]], [[6.0, 2.0]], [2])
    """
    return torch.ops.silverrec.ivf_int8_topk(q_codes, q_scales, codes, scales, cluster_offsets, probe, mask, k)
