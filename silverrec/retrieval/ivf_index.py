"""``IVFInt8Index``: the IVF-INT8 ANN layer of the serving graph, with a FAISS-like ``search``.

Publish time (:meth:`IVFInt8Index.build`): k-means clusters the items, rows are sorted by cluster
(``cluster_offsets [C+1]``), and each row is stored as INT8 codes + scale (per item by default, or
one global scale as in the SilverTorch paper) beside a float16 cache of the embedding. The index
is an ``nn.Module``: these tensors are its buffers, so it exports inside the serving graph and
moves with ``.to(device)``.

Query time (:meth:`IVFInt8Index.forward`): centroid scores (one matmul; with ``probe_spread``,
plus each cluster's spread; float32, or bfloat16 products with ``probe_precision="bfloat16"``,
:meth:`IVFInt8Index.centroid_scores`), then one op,
``ivf_search``, which for each query quantizes it (``quantize_int8_rowwise``), picks its
clusters (the steps of ``ivf_select_probes``), scans them, skipping masked rows, for the best K0
rows by INT8 score (``ivf_int8_topk``), re-scores those K0 exactly from the float16 cache and
keeps the best K (``ivf_rescore_topk``). On CPU one thread runs all of a query's steps, so the
search makes no ``[B, C]`` probe tensor and no intermediate tensors. :meth:`IVFInt8Index.search`
is the FAISS-style face of the same forward (validation, masks in the caller's id order,
``SearchResult``). The serving graph calls :meth:`IVFInt8Index.forward_bloom`, the same search
with the Bloom filter plan evaluated inside the op over the clusters the probes walk
(``ivf_search_bloom``: probe, then filter), the task queries of each user sharing the user's plan. How many clusters are probed and how many candidates re-scored is
:func:`silverrec.retrieval.probe_policy.probe_plan`, for both.
"""
import math
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

import silverrec.ops  # noqa: F401  (registers torch.ops.silverrec.ivf_search)
from silverrec.ops import pack_probe_matrix
from silverrec.retrieval.huge_pages import on_huge_pages
from silverrec.retrieval.kmeans import default_num_clusters, kmeans
from silverrec.retrieval.probe_policy import probe_plan
from silverrec.retrieval.quantize import _check_embeddings, quantize_int8_global, quantize_int8_per_item
from silverrec.retrieval.search_result import SearchResult

_QUANTIZATIONS = ("per_item", "global")
PROBE_PRECISIONS = ("float32", "bfloat16")
_FP16_MAX = 65504.0


def check_probe_spread(value: float, name: str) -> None:
    """Refuses a ``probe_spread`` that is not a finite number >= 0, naming the setting ``name``."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_probe_precision(value: str, name: str) -> None:
    """Refuses a ``probe_precision`` other than ``"float32"`` / ``"bfloat16"``, naming the setting ``name``."""
    if value not in PROBE_PRECISIONS:
        raise ValueError(f"{name} must be one of {PROBE_PRECISIONS}, got {value!r}")


class IVFInt8Tensors(NamedTuple):
    """The tensors of an IVF-INT8 index (N rows in cluster order, C clusters, D dims).

    Args:
        centroids (Tensor): float32 ``[C, D]`` k-means centroids.
        cluster_offsets (Tensor): int64 ``[C + 1]``; cluster ``c`` is rows ``offsets[c]:offsets[c+1]``.
        codes (Tensor): int8 ``[N, D]`` item codes in cluster-sorted row order.
        scales (Tensor): float32 ``[N]`` item scales (all equal for ``quantization="global"``).
        cache (Tensor): float16 ``[N, D]`` item embeddings in row order, for exact re-scoring.
        row_to_id (Tensor): int64 ``[N]`` distinct ids; row ``n`` holds item ``row_to_id[n]``.
        cluster_spread (Optional[Tensor]): float32 ``[C]``, the root mean square of cluster
            ``c``'s rows around its centroid per dimension (:func:`cluster_spread`); None: zeros.
    """

    centroids: Tensor
    cluster_offsets: Tensor
    codes: Tensor
    scales: Tensor
    cache: Tensor
    row_to_id: Tensor
    cluster_spread: Optional[Tensor] = None


def cluster_spread(rows: Tensor, centroids: Tensor, cluster_offsets: Tensor) -> Tensor:
    """Each cluster's spread around its centroid: ``sqrt(mean_n |x_n - centroid_c|^2 / D)`` over its
    rows, the standard deviation of ``q . x`` over the cluster for a unit query in a random direction.

    Args:
        rows (Tensor): float ``[N, D]`` embeddings in cluster order.
        centroids (Tensor): float ``[C, D]``.
        cluster_offsets (Tensor): int64 ``[C + 1]``.

    Returns:
        Tensor: float32 ``[C]`` (0 for an empty cluster).

    Example::

        >>> rows = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
        >>> cluster_spread(rows, torch.zeros(1, 2), torch.tensor([0, 4])).tolist()  # sqrt((9 + 9 + 1 + 1) / 4 / 2)
        [1.5811388492584229]
    """
    C, D = centroids.shape
    counts = cluster_offsets[1:] - cluster_offsets[:-1]
    cluster = torch.repeat_interleave(torch.arange(C, device=rows.device), counts)  # [N]
    sq = torch.zeros(C, dtype=torch.float64, device=rows.device)
    for start in range(0, rows.shape[0], 1 << 20):  # chunks: no [N, D] temporary
        part = cluster[start:start + (1 << 20)]
        residual = rows[start:start + (1 << 20)].float() - centroids[part].float()
        sq.index_add_(0, part, residual.square().sum(dim=1).double())
    return (sq / (counts.clamp(min=1) * D)).sqrt().float()


class IVFInt8Index(nn.Module):
    """An IVF index over INT8 item codes with exact float16 re-scoring (build with :meth:`build`).

    Args:
        tensors (IVFInt8Tensors): the index's tensors, registered as buffers of the same names.
        quantization (str): ``"per_item"`` or ``"global"`` (how ``codes`` were made).

    Call Args:
        queries (Tensor): float32 ``[B, D]``, or ``[B, T, D]`` (T queries per mask row, e.g. the
            task heads of one user).
        mask (Optional[Tensor]): int64 ``[B, ceil(N / 64)]`` packed filter bits in row order (what
            the serving graph's Bloom stage makes), or an id-order bool ``[B, N]`` / uint8 bitmap
            ``[B, ceil(N / 8)]`` (see :meth:`search`), or None.
        k (int): K, results per query.
        n_probe (int): clusters always probed, in ``[1, C]``.
        k0 (Optional[int]): INT8 candidates re-scored (default
            :func:`~silverrec.retrieval.probe_policy.rescore_candidates`); the rest of the probe
            choice is :func:`~silverrec.retrieval.probe_policy.probe_plan`.

    Returns:
        Tuple[Tensor, Tensor, Tensor]: exact ``scores`` float32, item ``ids`` int64 and index
        ``rows`` int64, each ``[B, K]`` (or ``[B, T, K]``), best-first (equal scores: lower id
        first), padded with ``-inf`` / ``-1`` / ``-1``.

    Example::

        >>> items = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0))
        >>> index = IVFInt8Index.build(items, num_clusters=10)
        >>> scores, ids = index.search(items[:2], k=5, n_probe=10)
        >>> ids[:, 0].tolist(), index.num_clusters
        ([0, 1], 10)
        >>> scores, ids, rows = index(items[:2], None, 5, 10)  # the layer's forward
        >>> torch.equal(index.row_to_id[rows], ids)
        True
    """

    def __init__(self, tensors: IVFInt8Tensors, quantization: str = "per_item") -> None:
        super().__init__()
        if quantization not in _QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {_QUANTIZATIONS}, got {quantization!r}")
        if tensors.cluster_spread is None:  # an index built without spreads
            tensors = tensors._replace(cluster_spread=tensors.centroids.new_zeros(tensors.centroids.shape[0]))
        for name, t in zip(IVFInt8Tensors._fields, tensors):
            self.register_buffer(name, t)
        # [D + 1, C] contiguous (derived, not in the state dict): the centroids transposed, then the
        # spreads as one more row, so that the spread term is one more input column of the same
        # matmul (centroid_scores); its first D rows are centroids_t
        self.register_buffer("probe_t", torch.cat([self.centroids.T, self.cluster_spread[None]]).contiguous(),
                             persistent=False)
        # probe_t rounded to bfloat16 in ivf_probe_scores' tiles (derived; [ceil(C/16), ceil((D+1)/2),
        # 16, 2], 2 bytes per centroid value): the matrix of probe_precision="bfloat16"
        self.register_buffer("probe_bf16", pack_probe_matrix(self.probe_t), persistent=False)
        self.quantization = quantization

    @classmethod
    def build(
        cls,
        embeddings: Tensor,
        num_clusters: Optional[int] = None,
        quantization: str = "per_item",
        num_iters: int = 10,
        max_points_per_cluster: int = 64,
        seed: int = 0,
    ) -> "IVFInt8Index":
        """Clusters, sorts and quantizes the items (the publish-time build).

        Args:
            embeddings (Tensor): float ``[N, D]`` item embeddings (finite, non-empty), CPU or GPU.
            num_clusters (Optional[int]): C; default ``round(4 * sqrt(N))`` (4000 for 1M items).
            quantization (str): ``"per_item"`` (default, one scale per row) or ``"global"``.
            num_iters (int): Lloyd iterations of k-means.
            max_points_per_cluster (int): k-means trains on ``min(N, this * C)`` sampled points.
            seed (int): k-means seed.

        Returns:
            IVFInt8Index: on the device of ``embeddings``.
        """
        _check_embeddings(embeddings, "embeddings")
        if quantization not in _QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {_QUANTIZATIONS}, got {quantization!r}")
        N = embeddings.shape[0]
        C = default_num_clusters(N) if num_clusters is None else num_clusters
        if not 1 <= C <= N:
            raise ValueError(f"num_clusters must be in [1, N={N}], got {num_clusters}")
        amax = float(embeddings.abs().max())
        if amax > _FP16_MAX:
            raise ValueError(f"embeddings exceed the float16 range of the re-score cache (max |x| = {amax})")
        result = kmeans(embeddings, C, num_iters=num_iters, max_points_per_cluster=max_points_per_cluster, seed=seed)
        row_to_id = torch.sort(result.assignments, stable=True).indices
        counts = torch.bincount(result.assignments, minlength=C)
        offsets = torch.zeros(C + 1, dtype=torch.int64, device=embeddings.device)
        offsets[1:] = torch.cumsum(counts, dim=0)
        x = embeddings[row_to_id].float()
        quantize = quantize_int8_per_item if quantization == "per_item" else quantize_int8_global
        codes, scales = quantize(x)
        centroids = result.centroids.float()
        spread = cluster_spread(x, centroids, offsets)
        # the rows a search reads at random, on 2 MiB pages where the kernel allows (huge_pages.py)
        codes, scales, cache, row_to_id = (on_huge_pages(t) for t in (codes, scales, x.half(), row_to_id))
        return cls(IVFInt8Tensors(centroids, offsets, codes, scales, cache, row_to_id, spread), quantization)

    @property
    def centroids_t(self) -> Tensor:
        """float32 ``[D, C]``, the centroids transposed: a contiguous view of ``probe_t``'s first D
        rows (``q @ centroids_t`` runs ~2-4x faster at batch 16 than on a transposed view of
        ``centroids``)."""
        return self.probe_t[:-1]

    @property
    def num_clusters(self) -> int:
        """C, the number of k-means clusters."""
        return self.centroids.shape[0]

    @property
    def num_items(self) -> int:
        """N, the number of indexed items."""
        return self.codes.shape[0]

    def centroid_scores(self, queries: Tensor, probe_spread: float = 0.0, probe_precision: str = "float32") -> Tensor:
        """The scores that rank a query's clusters: ``q . centroid_c + probe_spread * |q| *
        spread_c`` (``spread_c`` from :func:`cluster_spread`), one matmul either way.

        ``probe_precision="bfloat16"`` computes the same scores from bfloat16 products (query and
        centroids rounded to bfloat16, float32 sums: ``ivf_probe_scores``), 2.6x faster than the
        float32 matmul at ``[16, 129] x [129, 4000]`` on an AVX-512 BF16 CPU (57 against 146 us,
        2 threads) and ~1.3x on the AVX2 path at batch 16. Each product moves by about 2**-8 of
        its size, so clusters whose scores nearly tie may swap ranks (recall@100 within 0.0007 of
        float32 ranking in every setting of ``benchmarks/ann.py``'s run): measure recall at the
        chosen ``n_probe`` (``benchmarks/ann.py --probe-precision``). On CUDA the same bfloat16
        products are summed by a float32 matmul (no speed-up there).

        Why the spread: the best items by inner product lie at the edge of the data in the query's
        direction, and a cluster reaches further out the wider it is. Ranking by the centroid
        alone ranks a tight cluster and a wide one with the same centroid score alike; adding a
        multiple of the spread (an upper-quantile estimate of the cluster's best score) probes
        the wide one first. On ``benchmarks/scale.py``'s catalogue (a random rotation of a
        power-law spectrum, no blobs) ``probe_spread`` 4 reached recall@100 0.96 through the op
        over 15% / 16% fewer rows at 1M / 10M items, in 0.91x / 0.90x the time of a batch of 16
        (``benchmarks/probe_spread.py``, benchmarks/RESULTS.md). Per-cluster covariance axes
        ranked better still in a simulation but cost two more matmuls and elementwise passes over
        ``[B, C]`` that ate the gain at 1M; the isotropic spread is one more input column.
        Calibrate ``n_probe`` with it.

        Args:
            queries (Tensor): float32 ``[B, D]`` or ``[B, T, D]``.
            probe_spread (float): the spread's weight, >= 0 (0: centroid scores alone).
            probe_precision (str): ``"float32"`` or ``"bfloat16"`` (products of bfloat16 values).

        Returns:
            Tensor: float32 ``[B, C]`` or ``[B, T, C]``.
        """
        if probe_spread == 0.0 and probe_precision == "float32":
            return torch.matmul(queries, self.centroids_t)  # [B, C] or [B, T, C]
        if probe_precision == "bfloat16" and queries.device.type == "cpu":  # the [q, p |q|] row made in the op
            flat = torch.ops.silverrec.ivf_probe_scores(queries.reshape(-1, queries.shape[-1]), self.probe_bf16,
                                                        self.num_clusters, probe_spread)  # [B (* T), C]
            return flat.reshape(queries.shape[:-1] + (self.num_clusters,))
        reach = probe_spread * torch.linalg.vector_norm(queries, dim=-1, keepdim=True)  # [..., 1]
        augmented = torch.cat([queries, reach], dim=-1)  # [..., D + 1]
        if probe_precision == "float32":
            return torch.matmul(augmented, self.probe_t)
        return torch.matmul(augmented.to(torch.bfloat16).float(), self.probe_t.to(torch.bfloat16).float())  # CUDA

    def default_n_probe(self) -> int:
        """``max(8, 2% of C)`` clusters (at most C): recall >= 0.95 on clustered data."""
        return min(self.num_clusters, max(8, -(-self.num_clusters // 50)))

    def forward(self, queries: Tensor, mask: Optional[Tensor], k: int, n_probe: int,
                k0: Optional[int] = None, filtered_coverage: float = 1.0,
                coverage_exponent: float = 0.0, probe_spread: float = 0.0,
                probe_precision: str = "float32") -> Tuple[Tensor, Tensor, Tensor]:
        plan = probe_plan(k, n_probe, self.num_items, self.num_clusters, mask is not None, k0, filtered_coverage)
        centroid_scores = self.centroid_scores(queries, probe_spread, probe_precision)  # [B, C] or [B, T, C]
        return torch.ops.silverrec.ivf_search(queries, centroid_scores, self.codes, self.scales, self.cluster_offsets,
                                              self.cache, self.row_to_id, mask, plan.n_probe, plan.min_rows,
                                              plan.max_probe, plan.k0, k, coverage_exponent)

    def forward_bloom(self, queries: Tensor, bloom: Tuple[Tensor, Tensor, Tensor], plan: Tuple[Tensor, Tensor, Tensor],
                      deny: Optional[Tensor], exclude_rows: Optional[Tensor], k: int, n_probe: int,
                      k0: Optional[int] = None, filtered_coverage: float = 1.0,
                      coverage_exponent: float = 0.0, probe_spread: float = 0.0,
                      probe_precision: str = "float32") -> Tuple[Tensor, Tensor, Tensor]:
        """The forward under a Bloom filter plan per mask row, evaluated over the clusters each
        probe choice walks (``ivf_search_bloom``: probe, then filter) instead of a mask over all N
        rows: same results as :meth:`forward` with ``bloom_search``'s mask minus ``deny`` and
        ``exclude_rows``, with Bloom work that grows with the rows probed, not with N.

        Args:
            queries (Tensor): float32 ``[B, D]`` or ``[B, T, D]`` (the T queries of a user share its plan).
            bloom (Tuple[Tensor, Tensor, Tensor]): the Bloom index over this index's rows: ``bits``
                ``[M, ceil(N/64)]``, ``posting_offsets`` ``[T+1]``, ``posting_rows`` ``[nnz]``.
            plan (Tuple[Tensor, Tensor, Tensor]): ``opcodes`` ``[B, L]``, ``terms`` ``[B, L]``,
                ``hashes`` ``[B, L, H]`` (a :class:`~silverrec.retrieval.filter_plan.FilterPlan`).
            deny (Optional[Tensor]): int64 ``[ceil(N/64)]`` rows that never pass (tombstones).
            exclude_rows (Optional[Tensor]): int64 ``[B, E]`` rows never returned to user b (-1 padding).
            k, n_probe, k0, filtered_coverage, coverage_exponent, probe_spread, probe_precision: as in :meth:`search`
                (the filtered probe plan).

        Returns:
            Tuple[Tensor, Tensor, Tensor]: ``scores``, ``ids``, ``rows`` ``[B, K]`` or ``[B, T, K]``.
        """
        probes = probe_plan(k, n_probe, self.num_items, self.num_clusters, True, k0, filtered_coverage)
        centroid_scores = self.centroid_scores(queries, probe_spread, probe_precision)  # [B, C] or [B, T, C]
        bits, posting_offsets, posting_rows = bloom
        opcodes, terms, hashes = plan
        return torch.ops.silverrec.ivf_search_bloom(queries, centroid_scores, self.codes, self.scales,
                                                    self.cluster_offsets, self.cache, self.row_to_id, bits, opcodes,
                                                    terms, hashes, posting_offsets, posting_rows, deny, exclude_rows,
                                                    probes.n_probe, probes.min_rows, probes.max_probe, probes.k0, k,
                                                    coverage_exponent)

    def search(self, queries: Tensor, k: int, n_probe: Optional[int] = None, mask: Optional[Tensor] = None,
               k0: Optional[int] = None, check: bool = True, filtered_coverage: float = 1.0,
               coverage_exponent: float = 0.0, probe_spread: float = 0.0,
               probe_precision: str = "float32") -> SearchResult:
        """Top-k items by inner product, probing ``n_probe`` clusters (more under a filter).

        Args:
            queries (Tensor): float ``[B, D]`` query embeddings.
            k (int): K, results per query (``>= 1``).
            n_probe (Optional[int]): clusters probed per unfiltered query, in ``[1, C]``;
                default :meth:`default_n_probe`.
            mask (Optional[Tensor]): filter, in one of three layouts: bool ``[B, N]`` over the item
                ids (the rows of the ``embeddings`` given to ``build``); a uint8 bitmap
                ``[B, ceil(N / 8)]`` in id order with FAISS ``IDSelectorBitmap``'s layout (id ``i``
                passes iff ``(bitmap[b, i >> 3] >> (i & 7)) & 1``); or packed int64
                ``[B, ceil(N / 64)]`` in this index's row order (as ``bloom_search`` produces;
                row ``n`` is item ``row_to_id[n]``). Id-order rows are packed to row order
                inside the search, only over the clusters each query's probes walk, so the
                three layouts cost about the same; rows expanded from one row (stride 0) are
                packed once.
            k0 (Optional[int]): K0 >= K, INT8 candidates re-scored exactly; default
                :func:`~silverrec.retrieval.probe_policy.rescore_candidates`.
            check (bool): refuse NaN/inf queries with a ``ValueError`` naming the first. On the
                CPU the kernel checks as it quantizes; on CUDA it costs one device-to-host read
                (the only host sync of the call), made after the search is queued so it does not
                stall the kernel launches. ``False`` makes a CUDA search sync-free (non-finite
                queries then give undefined results); the serving graph calls :meth:`forward`,
                which never checks.
            filtered_coverage (float): ``w`` in ``(0, 1]``; with a mask, the probe walk covers
                ``w * n_probe * N / C`` passing rows (at least K) instead of ``n_probe * N / C``:
                a smaller ``w`` trades filtered recall for time
                (:mod:`~silverrec.retrieval.probe_policy`). Ignored without a mask.
            coverage_exponent (float): ``b`` in ``[0, 1]``; with a mask, the walk covers ``max(K,
                w * n_probe * N / C * s ** b)`` passing rows, ``s`` the pass fraction of the query's
                first ``n_probe`` clusters: a strict filter walks less than ``1 / s`` times the
                unfiltered walk (:mod:`~silverrec.retrieval.probe_policy`). Ignored without a mask.
            probe_spread (float): >= 0; clusters are ranked by centroid score plus this times
                ``|q|`` times their spread (:meth:`centroid_scores`; 0: centroid scores alone).
            probe_precision (str): ``"float32"`` (default) or ``"bfloat16"``: the centroid scores
                from bfloat16 products, a faster matmul whose near-ties may rank differently
                (:meth:`centroid_scores`).

        Returns:
            SearchResult: ``scores`` float32 ``[B, K]`` and ``ids`` int64 ``[B, K]``, best-first
            (equal scores: lower id first), padded with -inf / -1.
        """
        if queries.dim() != 2 or queries.shape[1] != self.codes.shape[1]:
            raise ValueError(f"queries must be [B, D={self.codes.shape[1]}], got {tuple(queries.shape)}")
        if queries.shape[0] == 0 or not queries.is_floating_point():
            raise ValueError(f"queries must be non-empty floating point, got {queries.dtype} {tuple(queries.shape)}")
        n_probe = self.default_n_probe() if n_probe is None else n_probe
        probe_plan(k, n_probe, self.num_items, self.num_clusters, mask is not None, k0, filtered_coverage)  # checks
        if not 0.0 <= coverage_exponent <= 1.0:
            raise ValueError(f"coverage_exponent must be in [0, 1], got {coverage_exponent}")
        check_probe_spread(probe_spread, "probe_spread")
        check_probe_precision(probe_precision, "probe_precision")
        q = queries.to(self.codes.device).float()
        mask = self._checked_mask(mask, q.shape[0])
        if q.device.type != "cpu":  # the CUDA kernels do not check (no host sync)
            finite = torch.isfinite(q).all() if check else None
            scores, ids, _ = self(q, mask, k, n_probe, k0, filtered_coverage, coverage_exponent, probe_spread,
                                   probe_precision)
            if finite is not None and not bool(finite):  # read after the search is queued
                _check_embeddings(q, "queries")
            return SearchResult(scores, ids)
        try:
            scores, ids, _ = self(q, mask, k, n_probe, k0, filtered_coverage, coverage_exponent, probe_spread,
                                   probe_precision)
        except RuntimeError:
            _check_embeddings(q, "queries")  # NaN/inf: the ValueError naming the first bad value
            raise
        return SearchResult(scores, ids)

    def _checked_mask(self, mask: Optional[Tensor], B: int) -> Optional[Tensor]:
        """Validates ``mask`` (one of :meth:`search`'s three layouts) and returns it on the index's
        device. Id-order masks go to ``ivf_search`` as they are: its CPU kernel packs only the
        clusters a query's probes walk, once per distinct mask row (a row expanded over the batch
        with stride 0, as FAISS takes one selector per search call, is packed once)."""
        if mask is None:
            return None
        N, W = self.num_items, (self.num_items + 63) // 64
        expected = {torch.int64: ((B, W), "packed mask must be int64 [B, ceil(N/64)]"),
                    torch.bool: ((B, N), "bool mask must be [B, N]"),
                    torch.uint8: ((B, (N + 7) // 8), "uint8 bitmap mask must be [B, ceil(N/8)]")}
        if mask.dtype not in expected:
            raise ValueError(f"mask must be bool [B, N], a uint8 id-order bitmap [B, ceil(N/8)] or packed int64 "
                             f"[B, W], got dtype {mask.dtype}")
        shape, what = expected[mask.dtype]
        if tuple(mask.shape) != shape:
            raise ValueError(f"{what} = {list(shape)}, got {tuple(mask.shape)}")
        return mask.to(self.codes.device)
