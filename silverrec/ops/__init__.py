"""Custom ops ``torch.ops.silverrec.*`` and their documented Python wrappers.

Importing ``silverrec`` (or this package) defines every schema, registers the fake impls,
loads the C++ CPU kernels (``silverrec._C``) and, where CUDA is present, the Triton kernels.
"""
import importlib.util
from typing import Tuple

import torch

from silverrec.ops import _library
from silverrec.ops.fake import FAKE_IMPLS

_library.define_all()
_library.register(FAKE_IMPLS)

try:
    from silverrec import _C  # noqa: F401  (registers the CPU kernels)
except ImportError as _err:  # pragma: no cover - only when the extension was not built
    if "SILVERREC_CPU_ISA" in str(_err):  # built, but told to take a path it refuses
        raise
    raise ImportError(
        "silverrec's C++ kernels (silverrec._C) are not built; run `make build` "
        "(or `pip install --no-build-isolation -e .`) in the repository"
    ) from _err



def cpu_isa() -> str:
    """The CPU code path of the C++ kernels: ``"avx512_vnni"`` or ``"avx2"``.

    Chosen once per process from the CPU's features (AVX-512 F/BW/VL/VNNI where present, else
    the AVX2 baseline); the environment variable ``SILVERREC_CPU_ISA=avx2`` (or
    ``avx512_vnni``) forces one, e.g. to test both paths on one machine.

    Returns:
        str: the path's name.

    Example::

        >>> cpu_isa() in ("avx2", "avx512_vnni")
        True
    """
    return _C.cpu_isa()


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
        posting_offsets (Tensor): int64 ``[T + 1]``; posting_rows (Tensor): int32 ``[nnz]``
            ascending rows of each term (int32: rows < 2^31, 4 bytes per listed holder).
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
        ...     torch.tensor([0, 0, 1, 2], dtype=torch.int32), torch.tensor([[0]]), torch.tensor([0, 4]))
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


# --- ivf_select_probes ---


def ivf_select_probes(
    centroid_scores: torch.Tensor,
    cluster_offsets: torch.Tensor,
    mask: "torch.Tensor | None",
    n_probe: int,
    min_rows: int,
    max_probe: int,
    coverage_exponent: float = 0.0,
    min_rows_floor: int = 0,
) -> torch.Tensor:
    """Picks each query's probed clusters: centroid order, then coverage of passing rows.

    Calls ``torch.ops.silverrec.ivf_select_probes`` (C++ on CPU, Triton on CUDA). A query takes
    clusters in centroid order (score descending, equal scores by lower cluster id) while fewer
    than ``n_probe`` are taken **or** those taken cover fewer than ``min_rows`` rows whose mask
    bit is 1 (all rows without a mask), at most ``max_probe``; so a strict filter widens the
    probe by exactly as much as its passing rows require, in one pass with no host sync. The
    spec is ``silverrec.ops.reference.ivf_select_probes_reference``.

    Args:
        centroid_scores (Tensor): float32 ``[B, C]`` query-centroid similarities.
        cluster_offsets (Tensor): int64 ``[C + 1]``; cluster ``c`` is rows ``offsets[c]:offsets[c+1]``.
        mask (Optional[Tensor]): int64 ``[B, ceil(N / 64)]`` packed filter bits, or ``None``.
        n_probe (int): clusters always probed (``>= 1``).
        min_rows (int): passing rows the probed clusters must cover (``>= 0``).
        max_probe (int): P, the most clusters per query and the output width.
        coverage_exponent (float): ``b`` in ``[0, 1]``; above 0 the count to cover is
            ``max(min_rows_floor, min_rows * s ** b)``, ``s`` the fraction of the rows of the query's
            first ``n_probe`` clusters that pass (a strict filter near the query walks less).
        min_rows_floor (int): the least passing rows to cover when ``coverage_exponent > 0``.

    Returns:
        Tensor: int64 ``[B, P]`` cluster ids best-first, padded with ``-1`` (the ``probe`` input
        of :func:`ivf_int8_topk`).

    Example::

        >>> scores = torch.tensor([[0.1, 0.9, 0.5, 0.9]])
        >>> offsets = torch.tensor([0, 10, 11, 12, 40])  # cluster sizes 10, 1, 1, 28
        >>> ivf_select_probes(scores, offsets, None, 2, 0, 4).tolist()  # tie 0.9: cluster 1 first
        [[1, 3, -1, -1]]
        >>> ivf_select_probes(scores, offsets, None, 1, 30, 4).tolist()  # 1 + 28 < 30 rows: one more
        [[1, 3, 2, -1]]
    """
    return torch.ops.silverrec.ivf_select_probes(centroid_scores, cluster_offsets, mask, n_probe, min_rows, max_probe,
                                                 coverage_exponent, min_rows_floor)


# --- ivf_rescore_topk ---


def ivf_rescore_topk(
    queries: torch.Tensor, cache: torch.Tensor, rows: torch.Tensor, row_to_id: torch.Tensor, k: int
) -> "tuple[torch.Tensor, torch.Tensor]":
    """Exact re-score of INT8 candidates from the 16-bit item cache, then the final top-k by id.

    Calls ``torch.ops.silverrec.ivf_rescore_topk`` (C++ on CPU, Triton on CUDA): gathers the
    candidate rows, scores them with float64-accumulated inner products rounded once to float32,
    maps rows to ids and keeps the best K (equal scores: lower id first). The spec is
    ``silverrec.ops.reference.ivf_rescore_topk_reference``.

    Args:
        queries (Tensor): float32 ``[B, D]``.
        cache (Tensor): float16 or bfloat16 ``[N, D]`` item embeddings in row order.
        rows (Tensor): int64 ``[B, K0]`` candidate rows (the ``rows`` of :func:`ivf_int8_topk`), ``-1`` = none.
        row_to_id (Tensor): int64 ``[N]`` external id of each row (``< 2**32``).
        k (int): K.

    Returns:
        Tuple[Tensor, Tensor]: ``scores`` float32 ``[B, K]`` and ``ids`` int64 ``[B, K]``,
        best-first, padded with ``-inf`` / ``-1``.

    Example::

        >>> cache = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float16)
        >>> s, i = ivf_rescore_topk(torch.tensor([[2.0, 2.0]]), cache, torch.tensor([[0, 2, 1, -1]]),
        ...     torch.tensor([7, 3, 5]), 3)
        >>> s.tolist(), i.tolist()
        ([[4.0, 2.0, 2.0]], [[5, 3, 7]])
    """
    return torch.ops.silverrec.ivf_rescore_topk(queries, cache, rows, row_to_id, k)


# --- quantize_int8_rowwise ---


def quantize_int8_rowwise(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT8 codes of each row with its own scale: the query side of the INT8 scan.

    Calls ``torch.ops.silverrec.quantize_int8_rowwise`` (C++ on CPU, Triton on CUDA): one op
    instead of about ten small tensor ops per search. The spec is
    ``silverrec.ops.reference.quantize_int8_rowwise_reference``; the C++ kernel raises on NaN/inf
    (naming the first row and column), the CUDA kernel leaves that check to the caller (no sync).

    Args:
        x (Tensor): float32 ``[N, D]``.

    Returns:
        Tuple[Tensor, Tensor]: ``codes`` int8 ``[N, D]`` in ``[-127, 127]`` and ``scales``
        float32 ``[N]`` (``max |x[n]| / 127``, 1 for an all-zero row).

    Example::

        >>> codes, scales = quantize_int8_rowwise(torch.tensor([[0.5, -1.0], [0.0, 0.0]]))
        >>> codes.tolist(), scales.tolist()
        ([[64, -127], [0, 0]], [0.007874015718698502, 1.0])
    """
    return torch.ops.silverrec.quantize_int8_rowwise(x)


# --- held_terms ---


def held_terms(bits: torch.Tensor, term_rows: torch.Tensor, posting_offsets: torch.Tensor,
               posting_rows: torch.Tensor, rows: torch.Tensor, terms: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Which plan terms each candidate row holds (the exact check's input; :func:`exact_filter`'s ``held``).

    Calls ``torch.ops.silverrec.held_terms``: a frequent term's membership is a bit of its exact
    row in ``bits``, a rarer term's a binary search in its posting list. On CPU one C++ kernel
    (``std::binary_search`` per candidate and term); on CUDA the fixed-step torch search of the
    reference (no host sync). Spec: ``silverrec.ops.reference.held_terms_reference``.

    Args:
        bits (Tensor): int64 ``[E, W]`` bit rows; term_rows (Tensor): int64 ``[T]`` exact row or -1.
        posting_offsets (Tensor): int64 ``[T + 1]``; posting_rows (Tensor): int32 ``[nnz]`` ascending per term.
        rows (Tensor): int64 ``[B, M]`` candidate rows (-1 padding).
        terms (Tensor): int64 ``[B, L]`` plan term ids (-1: none).
        num_rows (int): N; rows outside ``[0, N)`` hold nothing.

    Returns:
        Tensor: int64 ``[B, M, L]``: the term id where held, else -1.

    Example::

        >>> bits = torch.tensor([[0b101]])  # term 0's exact row: rows 0 and 2
        >>> held_terms(bits, torch.tensor([0, -1]), torch.tensor([0, 0, 1]), torch.tensor([1], dtype=torch.int32),
        ...            torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1]]), 3).tolist()
        [[[0, -1], [-1, 1], [0, -1]]]
    """
    return torch.ops.silverrec.held_terms(bits, term_rows, posting_offsets, posting_rows, rows, terms, num_rows)


# --- exact_filter ---


def exact_filter(opcodes: torch.Tensor, terms: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
    """Runs B filter programs exactly on M candidates each, from the candidates' term ids.

    Calls ``torch.ops.silverrec.exact_filter`` (C++ on CPU, Triton on CUDA): the serving graph's
    exact check of its final candidates, which removes the Bloom filter's false positives. Each
    candidate's stack is the bits of one 64-bit word, so a program costs a few register
    operations per instruction and candidate. The spec is
    ``silverrec.ops.reference.exact_filter_reference``.

    Args:
        opcodes (Tensor): int64 ``[B, L]`` postfix programs (``BLOOM_*``), padded with ``BLOOM_NOP``
            (``FilterPlan.opcodes``); well-formed (the C++ kernel refuses others).
        terms (Tensor): int64 ``[B, L]`` term ids of the term instructions, else -1.
        held (Tensor): int64 ``[B, M, W]`` term ids of each candidate, -1 padding.

    Returns:
        Tensor: bool ``[B, M]``, True where the candidate satisfies its query's filter.

    Example::

        >>> from silverrec.ops.reference import BLOOM_TERM, BLOOM_NOT_TERM, BLOOM_AND
        >>> ops = torch.tensor([[BLOOM_TERM, BLOOM_NOT_TERM, BLOOM_AND]])
        >>> exact_filter(ops, torch.tensor([[3, 5, -1]]), torch.tensor([[[3, -1], [3, 5], [5, -1]]]))
        tensor([[ True, False, False]])
    """
    return torch.ops.silverrec.exact_filter(opcodes, terms, held)


# --- pack_id_mask ---


def pack_id_mask(mask: torch.Tensor, row_to_id: torch.Tensor) -> torch.Tensor:
    """Converts a filter mask in the caller's id order into the packed row-order mask of the scans.

    Calls ``torch.ops.silverrec.pack_id_mask`` (C++ on CPU, Triton on CUDA): permute and pack
    in one op, instead of a ``[B, N]`` gather and a pack. The spec is
    ``silverrec.ops.reference.pack_id_mask_reference``; the CUDA kernel does not check ids (no
    host sync): out-of-range ids give 0 bits there, while the C++ kernel raises.

    Args:
        mask (Tensor): bool ``[B, N]`` over ids (nonzero passes), or a uint8 bitmap
            ``[B, ceil(N / 8)]`` with FAISS ``IDSelectorBitmap``'s layout: id ``i`` passes iff
            ``(mask[b, i >> 3] >> (i & 7)) & 1``. Rows may be strided (stride 0: one filter
            expanded over the batch).
        row_to_id (Tensor): int64 ``[R]``: row ``r`` of the index holds id ``row_to_id[r]``
            (in ``[0, N)``, or ``[0, 8 * ceil(N / 8))`` for a bitmap).

    Returns:
        Tensor: int64 ``[B, ceil(R / 64)]``: bit ``r % 64`` of word ``r // 64`` is row ``r``
        (the ``mask`` of :func:`ivf_search`); bits of rows ``>= R`` are 0.

    Example::

        >>> row_to_id = torch.tensor([2, 0, 1])  # row 0 holds id 2, row 1 id 0, row 2 id 1
        >>> pack_id_mask(torch.tensor([[True, False, False], [False, True, True]]), row_to_id).tolist()
        [[2], [5]]
        >>> pack_id_mask(torch.tensor([[0b001], [0b110]], dtype=torch.uint8), row_to_id).tolist()
        [[2], [5]]
    """
    return torch.ops.silverrec.pack_id_mask(mask, row_to_id)


# --- ivf_probe_scores ---

_PROBE_TILE = 16  # columns per tile of a packed probe matrix


def pack_probe_matrix(matrix: torch.Tensor) -> torch.Tensor:
    """The layout ``ivf_probe_scores`` reads: a float ``[D', C]`` matrix rounded to bfloat16 and
    packed in tiles of 16 columns.

    Element ``[t, k2, j, h]`` is row ``2 * k2 + h`` of column ``16 * t + j`` (zero where that lies
    past ``[D', C]``): 16 columns' pair of rows ``(2 k2, 2 k2 + 1)`` are 64 contiguous bytes, the
    operand of one AVX-512 BF16 ``vdpbf16ps``.

    Args:
        matrix (Tensor): float ``[D', C]`` (e.g. ``IVFInt8Index.probe_t``: centroids transposed plus
            the spread row).

    Returns:
        Tensor: bfloat16 ``[ceil(C / 16), ceil(D' / 2), 16, 2]``, contiguous.
    """
    Dp, C = matrix.shape
    K2, Ct = (Dp + 1) // 2, -(-C // _PROBE_TILE)
    padded = matrix.new_zeros((2 * K2, _PROBE_TILE * Ct), dtype=torch.bfloat16)
    padded[:Dp, :C] = matrix.to(torch.bfloat16)
    # [2 K2, 16 Ct] -> [K2, 2, Ct, 16] -> [Ct, K2, 16, 2]
    return padded.view(K2, 2, Ct, _PROBE_TILE).permute(2, 0, 3, 1).contiguous()


def ivf_probe_scores(queries: torch.Tensor, packed: torch.Tensor, num_clusters: int,
                     spread_weight: float) -> torch.Tensor:
    """``[q, w |q|] @ matrix`` from bfloat16 products with float32 sums, ``packed =
    pack_probe_matrix(matrix)`` for a ``[D + 1, C]`` matrix: with ``IVFInt8Index.probe_t`` (the
    centroids transposed, then the cluster spreads), the centroid scores of
    ``probe_precision="bfloat16"`` (``q . c + w |q| spread_c``), in one op.

    Calls ``torch.ops.silverrec.ivf_probe_scores`` (C++ on CPU: AVX-512 BF16 ``vdpbf16ps`` where
    the CPU has it, else AVX2 FMAs with the same rounding, bit for bit). The spec, with the fixed
    order of the float32 sums, is ``silverrec.ops.reference.ivf_probe_scores_reference``.

    Args:
        queries (Tensor): float32 ``[B, D]``.
        packed (Tensor): bfloat16 ``[ceil(C / 16), ceil((D + 1) / 2), 16, 2]`` (:func:`pack_probe_matrix`).
        num_clusters (int): C.
        spread_weight (float): ``w``, the weight of the matrix's last row (0: ``q @ matrix[:D]``).

    Returns:
        Tensor: float32 ``[B, C]``.

    Example::

        >>> m = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0], [1.0, 0.0, 2.0]])  # [D+1=3, C=3]
        >>> ivf_probe_scores(torch.tensor([[2.0, 4.0]]), pack_probe_matrix(m), 3, 0.0).tolist()
        [[4.0, 0.0, 6.0]]
        >>> ivf_probe_scores(torch.tensor([[3.0, 4.0]]), pack_probe_matrix(m), 3, 2.0).tolist()  # |q| = 5
        [[15.0, 2.0, 29.0]]
    """
    return torch.ops.silverrec.ivf_probe_scores(queries, packed, num_clusters, spread_weight)


# --- ivf_search ---


def ivf_search(
    queries: torch.Tensor,
    centroid_scores: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    cluster_offsets: torch.Tensor,
    cache: torch.Tensor,
    row_to_id: torch.Tensor,
    mask: "torch.Tensor | None",
    n_probe: int,
    min_rows: int,
    max_probe: int,
    k0: int,
    k: int,
    coverage_exponent: float = 0.0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A whole IVF-INT8 search in one op: query codes, probe choice, scan, exact re-score.

    Calls ``torch.ops.silverrec.ivf_search``. On CPU one C++ kernel runs each query's steps on
    one thread, with no ``[B, C]`` probe rows or other intermediate tensors. On CUDA it runs the four Triton
    kernels in sequence (:func:`quantize_int8_rowwise`, :func:`ivf_select_probes`,
    :func:`ivf_int8_topk`, :func:`ivf_rescore_topk`). The spec is
    ``silverrec.ops.reference.ivf_search_reference``; results equal the four ops in sequence.
    :class:`silverrec.retrieval.ivf_index.IVFInt8Index` is the layer that calls it (its
    ``forward`` in the serving graph, its ``search`` for FAISS-style use).

    Args:
        queries (Tensor): float32 ``[B, D]``, or ``[B, T, D]``: groups of T queries sharing
            their mask row (e.g. a user's task heads), read in place (finite; NaN/inf raise).
        centroid_scores (Tensor): float32 ``[B, C]`` (or ``[B, T, C]``), e.g. ``queries @ centroids.T``.
        codes (Tensor): int8 ``[N, D]`` item codes in cluster-sorted row order.
        scales (Tensor): float32 ``[N]`` item scales.
        cluster_offsets (Tensor): int64 ``[C + 1]``.
        cache (Tensor): float16 or bfloat16 ``[N, D]`` item embeddings in row order.
        row_to_id (Tensor): int64 ``[N]`` distinct external id of each row (``< 2**32``).
        mask (Optional[Tensor]): the filter, or ``None``: int64 ``[B, ceil(N / 64)]`` packed bits
            in row order (what :func:`bloom_search` makes), or in the caller's id order (ids in
            ``[0, N)``): bool ``[B, N]`` or a uint8 bitmap ``[B, ceil(N / 8)]`` with FAISS
            ``IDSelectorBitmap``'s layout. On CPU an id-order row is packed only over the clusters
            the probe choice walks (a few thousand ids, not N); rows may be strided (stride 0:
            one filter expanded over the batch, packed once).
        n_probe (int): clusters always probed.
        min_rows (int): passing rows the probes must cover (more clusters are taken until they do).
        max_probe (int): most clusters probed; below C, a query left with fewer than K eligible
            rows is scanned again over every row.
        k0 (int): K0 >= K, INT8 candidates re-scored.
        k (int): K, results per query.
        coverage_exponent (float): ``b`` in ``[0, 1]``: the probes cover ``max(k, min_rows * s **
            b)`` passing rows, ``s`` the pass fraction of the query's first ``n_probe`` clusters
            (:func:`ivf_select_probes`); 0 (the default): ``min_rows``.

    Returns:
        Tuple[Tensor, Tensor, Tensor]: ``scores`` float32 (exact), ``ids`` int64 and ``rows``
        int64 (index row of each result), ``[B, K]`` (or ``[B, T, K]``), best-first (equal
        scores: lower id first), padded with ``-inf`` / ``-1`` / ``-1``.

    Example::

        >>> codes = torch.tensor([[1, 0], [0, 1], [1, 1]], dtype=torch.int8)
        >>> s, i, r = ivf_search(torch.tensor([[1.0, 0.5]]), torch.tensor([[0.0, 1.0]]), codes,
        ...     torch.ones(3), torch.tensor([0, 2, 3]), codes.to(torch.float16),
        ...     torch.tensor([10, 11, 12]), None, 1, 0, 1, 2, 2)
        >>> s.tolist(), i.tolist(), r.tolist()
        ([[1.5, 1.0]], [[12, 10]], [[2, 0]])
    """
    return torch.ops.silverrec.ivf_search(queries, centroid_scores, codes, scales, cluster_offsets, cache, row_to_id,
                                          mask, n_probe, min_rows, max_probe, k0, k, coverage_exponent)


# --- ivf_search_bloom ---


def ivf_search_bloom(
    queries: torch.Tensor,
    centroid_scores: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    cluster_offsets: torch.Tensor,
    cache: torch.Tensor,
    row_to_id: torch.Tensor,
    bits: torch.Tensor,
    opcodes: torch.Tensor,
    terms: torch.Tensor,
    hashes: torch.Tensor,
    posting_offsets: torch.Tensor,
    posting_rows: torch.Tensor,
    deny: "torch.Tensor | None",
    exclude_rows: "torch.Tensor | None",
    n_probe: int,
    min_rows: int,
    max_probe: int,
    k0: int,
    k: int,
    coverage_exponent: float = 0.0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probe, then filter: :func:`ivf_search` under a Bloom filter plan per mask row.

    Calls ``torch.ops.silverrec.ivf_search_bloom``. The mask of row ``b`` is
    :func:`bloom_search` of plan ``b`` over all rows, minus the rows set in ``deny`` and those
    listed in ``exclude_rows[b]``. On CPU the plan runs only over the clusters each query's probe
    choice walks, as the walk reaches them (the choice counts each walked cluster's passing rows
    exactly, so it never needs the rest): the Bloom work grows with the rows probed, not with N.
    A row whose walk is expected (from the plan run over a sample of words) to cover more than a
    quarter of the index gets one streaming pass over all its words instead. On CUDA:
    ``bloom_search`` over all rows, then ``ivf_search``. Spec:
    ``silverrec.ops.reference.ivf_search_bloom_reference``; results equal it bit for bit.

    Args:
        queries, centroid_scores, codes, scales, cluster_offsets, cache, row_to_id: as in
            :func:`ivf_search` (``[B, T, D]`` queries: the T queries of row ``b`` share its plan).
        bits, opcodes, terms, hashes, posting_offsets, posting_rows: as in :func:`bloom_search`,
            ``bits`` ``[M, ceil(N/64)]`` in index row order, one plan per row ``b``.
        deny (Optional[Tensor]): int64 ``[ceil(N/64)]`` packed rows that never pass (tombstones).
        exclude_rows (Optional[Tensor]): int64 ``[B, E]`` index rows never returned to row ``b``
            (-1 padding).
        n_probe, min_rows, max_probe, k0, k, coverage_exponent: as in :func:`ivf_search`.

    Returns:
        Tuple[Tensor, Tensor, Tensor]: ``scores``, ``ids``, ``rows`` as :func:`ivf_search`.
    """
    return torch.ops.silverrec.ivf_search_bloom(queries, centroid_scores, codes, scales, cluster_offsets, cache,
                                                row_to_id, bits, opcodes, terms, hashes, posting_offsets, posting_rows,
                                                deny, exclude_rows, n_probe, min_rows, max_probe, k0, k,
                                                coverage_exponent)
