"""The serving graph: one module from request tensors to the final top-K, exported as one file.

Data flow (B queries, T tasks, K0 candidates per task, M = T * K0, K results)::

    user_ids [B, S] ─► PaddedEncoder ─► u [B, T, D]
    u, filter plan, excluded rows, tombstones ─► IVFInt8Index layer (ivf_search_bloom: the T task
      queries of a user share its plan; the Bloom filter runs over the clusters the probes walk)
      ─► K0 exactly re-scored candidates per task [B, T, K0]
    u ─► fresh index (inputs): bloom_search + the same ivf_search op over its rows ─► [B, T, K0]
      ─► best K0 of both per task by exact score ─► union, best rank first, cut to M ─► [B, M] ─► OverArch
         (an OverArch with side features also reads the history slots of user_ids and the item ids)
      ─► task predictions [B, M, T] ─► exact filter check ─► Value Model ─► top-K by value

Fixed output shapes, no host syncs, no data-dependent Python control flow, so the module passes
``torch.export`` with a dynamic batch. The ANN stage is the index layer's forward, the code path
of ``IVFInt8Index.search`` and of the ANN benchmark, with its probe policy
(:func:`silverrec.retrieval.probe_policy.probe_plan`): a query probes its ``n_probe`` best
clusters, then more in centroid order until the probed clusters cover as many rows passing its
filter as ``n_probe`` clusters hold on average (counted exactly per cluster; at most all
clusters: a filtered exhaustive scan), so a strict filter is not starved. The graph always has a
mask, so it always takes that branch. Items in a query's ``exclude`` list are cleared from its
mask before the scan, so they never take a candidate slot.

Probe, then filter: the Bloom filter runs inside the ANN op, over the words of each cluster the
probe choice walks, when the walk reaches it (the choice counts each walked cluster's passing rows
exactly, so it never needs the others), minus the tombstones and the user's excluded rows. A
filter strict enough that the walks cover a quarter of the index or more gets one pass over all
rows instead. Either way the mask words the search reads are those of a full Bloom pass: no
passing item is missed, and the Bloom work grows with the rows probed, not with N.

Items added, updated or deleted after publish come in as inputs (:mod:`silverrec.retrieval.fresh_index`):
tombstones hide main rows, and the fresh rows are scanned beside the main ones (rows ``N + f``).
"""
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

import silverrec.ops  # noqa: F401  (registers torch.ops.silverrec.*)
from silverrec.models.candidate_scorer import CandidateScorer
from silverrec.models.padded_encoder import PaddedEncoder
from silverrec.ops.reference.filter import rows_to_words
from silverrec.retrieval.bloom_index import BloomIndex
from silverrec.retrieval.candidates import best_by_score, merge_ranked
from silverrec.retrieval.ivf_index import IVFInt8Index, check_probe_precision, check_probe_spread
from silverrec.retrieval.probe_policy import rescore_candidates
from silverrec.schema import HISTORY, user_key


@dataclass
class ServingConfig:
    """Settings of the serving graph (YAML ``serving:`` of ``silverrec-export``).

    Args:
        k (int): K, results per query (fixed in the graph).
        candidates_per_task (int): K0, ANN candidates per task before the merge (the union over
            tasks is what the OverArch and Value Model re-rank). 300: the exact value ranking's
            top-100 items reach the top-100 of some task's dot product only ~87% of the time on the
            demo model, ~97% within its top-200 and ~99% within its top-300
            (``benchmarks/served_recall_grid.py``, benchmarks/RESULTS.md).
        merged_candidates (Optional[int]): M, the width of the merged candidate list the OverArch
            and Value Model score (None: all T x K0 slots). The task lists overlap (demo: ~450
            distinct items in 1200 slots at K0 = 300), so the union, each item at its best rank
            over the tasks, is cut to M; when more distinct items than M come back, the ones every
            task ranks lowest are dropped. The OverArch's cost grows with M, not with T x K0.
        n_probe (Optional[int]): clusters probed per task query without a filter (None:
            :meth:`probes`, ``max(8, min(4% of C, 14.5 C^(1/3)))``; a filtered query widens it,
            see above).
        filtered_coverage (float): ``w`` in ``(0, 1]``: a filtered query's walk covers ``w *
            n_probe * N / C`` passing rows (at least K), about ``w / s`` times the unfiltered
            walk under a filter passing a fraction ``s``. 1 keeps every filter's candidate count;
            a smaller value trades filtered recall for latency on data whose filtered neighbours
            stay near the query (:mod:`~silverrec.retrieval.probe_policy`); calibrate it on
            held-out queries as ``n_probe`` (``benchmarks/scale.py``). The graph searches every
            request under a mask, so it reaches unfiltered requests too (their walk may stop at
            ``n_probe`` clusters holding fewer than ``n_probe * N / C`` rows): calibrate
            ``n_probe`` again at the chosen value.
        coverage_exponent (float): ``b`` in ``[0, 1]`` (0: off): a filtered query's walk covers
            ``max(K, w * n_probe * N / C * s ** b)`` passing rows, ``s`` the pass fraction of its
            first ``n_probe`` clusters, so strict filters walk less than ``1 / s`` times the
            unfiltered walk (unfiltered requests, ``s = 1``, are unchanged). Calibrate it with
            ``w`` on held-out queries (``benchmarks/scale.py``).
        probe_spread (float): >= 0 (0: off): clusters are ranked by centroid score plus this
            times ``|q|`` times their spread
            (:meth:`~silverrec.retrieval.ivf_index.IVFInt8Index.centroid_scores`), so wide
            clusters, which reach further in the query's direction, are probed first: on
            real-embedding-like data, the same recall over fewer rows. Calibrate ``n_probe`` at
            the chosen value (``benchmarks/probe_spread.py``, ``benchmarks/scale.py --probe-spread``).
        probe_precision (str): ``float32`` (default) or ``bfloat16``: the centroid scores that rank
            the clusters come from bfloat16 products with float32 sums (``ivf_probe_scores``),
            2.6x faster than the float32 matmul on an AVX-512 BF16 CPU; near-tied clusters may
            rank differently, so check recall at the chosen ``n_probe`` (``benchmarks/ann.py
            --probe-precision``).
        num_clusters (Optional[int]): IVF clusters (None: ``4 sqrt(N)``).
        quantization (str): ``per_item`` or ``global`` INT8 scales.
        filter_length (int): longest filter program (instructions) a request may carry.
        bloom_hashes (int): Bloom hash positions per term.
        bloom_bits_multiplier (float): Bloom signature bits per term of the fullest item.
        bloom_dense_fraction (float): terms held by at least this fraction of the items get an
            exact bitmap row (N / 8 bytes) instead of Bloom bits and a posting list (4 bytes per
            holder, int32 rows): 1/32 is where the two cost the same; between 1/64 and 1/32 a
            row costs up to twice the list but makes the term's TERM exact and its NOT one row read.
        use_over_arch (bool): re-score with the OverArch (False: dot product only).
        fresh_terms (int): filter values first seen after publish (in item updates) that the
            served index can hold until the next compaction: term ids reserved after the
            dictionary's (:mod:`silverrec.retrieval.fresh_terms`; 8 bytes each in the graph).
        fresh_bit_rows (int): Bloom bit-row positions reserved for those values (rows of the fresh
            index; in the main index they all read one shared all-zero row, N / 8 bytes in all);
            more positions, fewer false positives among fresh items.
    """

    k: int = 100
    candidates_per_task: int = 300
    merged_candidates: Optional[int] = 512
    n_probe: Optional[int] = None
    filtered_coverage: float = 1.0
    coverage_exponent: float = 0.0
    probe_spread: float = 0.0
    probe_precision: str = "float32"
    num_clusters: Optional[int] = None
    quantization: str = "per_item"
    filter_length: int = 12
    bloom_hashes: int = 4
    bloom_bits_multiplier: float = 12.0
    bloom_dense_fraction: float = 1 / 64
    use_over_arch: bool = True
    fresh_terms: int = 16384
    fresh_bit_rows: int = 64

    def __post_init__(self) -> None:
        for name in ("k", "candidates_per_task", "filter_length", "bloom_hashes"):
            if getattr(self, name) < 1:
                raise ValueError(f"serving.{name} must be >= 1, got {getattr(self, name)}")
        if self.fresh_terms < 0 or self.fresh_bit_rows < 0 or (self.fresh_terms > 0 and self.fresh_bit_rows < 1):
            raise ValueError(f"serving.fresh_terms ({self.fresh_terms}) and serving.fresh_bit_rows "
                             f"({self.fresh_bit_rows}) must be >= 0, and fresh_terms > 0 needs fresh_bit_rows >= 1")
        if self.n_probe is not None and self.n_probe < 1:
            raise ValueError(f"serving.n_probe must be >= 1 or null, got {self.n_probe}")
        if not 0.0 < self.filtered_coverage <= 1.0:
            raise ValueError(f"serving.filtered_coverage must be in (0, 1], got {self.filtered_coverage}")
        if not 0.0 <= self.coverage_exponent <= 1.0:
            raise ValueError(f"serving.coverage_exponent must be in [0, 1], got {self.coverage_exponent}")
        check_probe_spread(self.probe_spread, "serving.probe_spread")
        check_probe_precision(self.probe_precision, "serving.probe_precision")
        if self.merged_candidates is not None and self.merged_candidates < self.k:
            raise ValueError(f"serving.merged_candidates must be >= serving.k={self.k} or null, got "
                             f"{self.merged_candidates}")

    def probes(self, num_clusters: int) -> int:
        """``n_probe``, or when it is None ``max(8, min(4% of C, 14.5 C^(1/3)))`` (at most C).

        **4% of C** up to C of about 6,900 clusters (3M items at C = 4 sqrt(N)): twice the
        index's own default (``IVFInt8Index.default_n_probe``), because served-vs-exact
        recall@100 of the OverArch + Value Model ranking needs deeper task lists than dot-product
        recall does (demo, C = 894: 0.963 at 2% of C, 0.979 at 4%, K0 = 300).

        **14.5 C^(1/3) beyond**: a probe count that is a fixed fraction of C makes the scanned
        rows (``n_probe * N / C``) grow linearly with N. What a query needs grows slower:
        ``benchmarks/probe_growth.py`` on ``benchmarks/scale.py``'s real-embedding-like catalogue
        (one anisotropic cloud, no blobs) measured the smallest n_probe reaching unfiltered
        recall@100 0.95 at 200 / 220 / 300 probes for N = 1M / 3M / 10M (C = 4,000 / 6,928 /
        12,649), i.e. 12.6 / 11.5 / 12.9 C^(1/3), and 0.96 at 15.1 / 13.6 / 15.5 C^(1/3). So
        the count grows about as C^(1/3) (N^(1/6)) and the scanned rows as N^(2/3), not N; the
        cap equals 4% of C at C = 6,900 (277 probes, recall 0.96 at 3M) and gives 338 at 10M
        (recall 0.955; 4% of C = 506 scanned 1.5x the rows), 496 at 100M (4%: 1,600). A
        catalogue whose neighbours spread more than this one (it needs more than 14.5 C^(1/3),
        e.g. 5% of C at 1M here, above the 4% rule too) should set ``serving.n_probe`` from a
        measurement (``benchmarks/probe_growth.py``); one clustered as the demo needs about 4x
        fewer probes at the same C and gets 4% of C below the cap.

        Example::

            >>> ServingConfig().probes(894), ServingConfig(n_probe=5).probes(894), ServingConfig().probes(10)
            (36, 5, 8)
            >>> ServingConfig().probes(6928), ServingConfig().probes(12649), ServingConfig().probes(40000)
            (277, 338, 496)
        """
        if self.n_probe is not None:
            return min(self.n_probe, num_clusters)
        n = max(8, min(-(-num_clusters // 25), math.ceil(14.5 * num_clusters ** (1 / 3))))
        return min(n, num_clusters)


class RetrievalGraph(nn.Module):
    """User features + filter + exclusions -> the K best items by value, with task predictions.

    Build it with :func:`silverrec.retrieval.publish.publish`.

    Args:
        user_encoder (PaddedEncoder): the user tower (T heads; a ``SequenceUserEncoder`` for the
            sequence model, same slots).
        scorer (CandidateScorer): similarity, OverArch and Value Model.
        index (IVFInt8Index): the item index (its rows are the graph's rows).
        bloom (BloomIndex): the filter index over the same rows (built with
            ``item_order=index.row_to_id``), with its exact attribute table.
        k (int): K.
        candidates_per_task (int): K0 (T * K0 >= K).
        n_probe (int): clusters probed per task query without a filter.
        merged_candidates (Optional[int]): M, the width of the merged list (K <= M; None or more
            than T * K0: T * K0), see :class:`ServingConfig`.
        num_item_ids (Optional[int]): size of the item id space (default N). A compacted index
            (:mod:`silverrec.serve.compaction`) holds a subset of the ids: deleted items keep
            their ids (a user's history or ``exclude`` may still name them) but no row.
        filtered_coverage (float): see :class:`ServingConfig` (1: the full widening).
        coverage_exponent (float): see :class:`ServingConfig` (0: off).
        probe_spread (float): see :class:`ServingConfig` (0: off).
        probe_precision (str): see :class:`ServingConfig` (``float32`` or ``bfloat16``).

    Call Args:
        user_ids (Tensor): int64 ``[B, S]`` user feature slots (-1 = empty).
        opcodes (Tensor): int64 ``[B, L]``, terms (Tensor): int64 ``[B, L]``, hashes (Tensor):
            int64 ``[B, L, H]``: the filter plans (``BloomIndex.plan``; the blank filter matches all).
        exclude (Tensor): int64 ``[B, E]`` item ids never to return (e.g. already seen), -1 = none.
        deleted, fresh_codes, fresh_scales, fresh_cache, fresh_item_ids, fresh_bits, fresh_live,
        fresh_posting_offsets, fresh_posting_rows, fresh_row_terms (Tensor): the fields of a
            :class:`~silverrec.retrieval.fresh_index.FreshIndex` (tombstones and fresh items).

    Returns:
        Tuple[Tensor, Tensor, Tensor, Tensor]: ``ids`` int64 ``[B, K]`` item rows best first
        (-1 padding), ``value`` float32 ``[B, K]`` (-inf padding), ``task_scores`` float32
        ``[B, K, T]`` and ``num_valid`` int64 ``[B]``. Item ids past the published ones name
        fresh items.
    """

    def __init__(
        self,
        user_encoder: PaddedEncoder,
        scorer: CandidateScorer,
        index: IVFInt8Index,
        bloom: BloomIndex,
        k: int,
        candidates_per_task: int,
        n_probe: int,
        num_item_ids: Optional[int] = None,
        merged_candidates: Optional[int] = None,
        filtered_coverage: float = 1.0,
        coverage_exponent: float = 0.0,
        probe_spread: float = 0.0,
        probe_precision: str = "float32",
    ) -> None:
        super().__init__()
        num_tasks = len(scorer.value_model.task_names)
        if num_tasks * candidates_per_task < k:
            raise ValueError(f"{num_tasks} tasks x candidates_per_task={candidates_per_task} < k={k}: raise candidates_per_task")
        if bloom.num_items != index.num_items:
            raise ValueError(f"the filter index has {bloom.num_items} rows, the ANN index {index.num_items}")
        if not 1 <= n_probe <= index.num_clusters:
            raise ValueError(f"n_probe must be in [1, {index.num_clusters}], got {n_probe}")
        if not 0.0 < filtered_coverage <= 1.0:
            raise ValueError(f"filtered_coverage must be in (0, 1], got {filtered_coverage}")
        if not 0.0 <= coverage_exponent <= 1.0:
            raise ValueError(f"coverage_exponent must be in [0, 1], got {coverage_exponent}")
        check_probe_spread(probe_spread, "probe_spread")
        check_probe_precision(probe_precision, "probe_precision")
        if not 1 <= candidates_per_task <= index.num_items:
            raise ValueError(f"candidates_per_task must be in [1, N={index.num_items}], got {candidates_per_task}")
        self.user_encoder = user_encoder
        self.scorer = scorer
        self.bloom = bloom
        self.index = index
        self.k, self.k0, self.n_probe = k, candidates_per_task, n_probe
        self.filtered_coverage = float(filtered_coverage)
        self.coverage_exponent = float(coverage_exponent)
        self.probe_spread = float(probe_spread)
        self.probe_precision = probe_precision
        slots = num_tasks * candidates_per_task
        self.merged = slots if merged_candidates is None else min(merged_candidates, slots)
        if self.merged < k:
            raise ValueError(f"merged_candidates={merged_candidates} < k={k}: raise merged_candidates")
        self.num_tasks = num_tasks
        self.num_items, self.num_clusters = index.num_items, index.num_clusters
        # the fresh rows' search: one cluster, scanned whole, with the main index's K0 re-scored
        self.fresh_k0 = rescore_candidates(candidates_per_task)
        num_ids = index.num_items if num_item_ids is None else num_item_ids
        if int(index.row_to_id.max()) >= num_ids or index.row_to_id.unique().numel() != index.num_items:
            raise ValueError(f"the index rows must hold distinct item ids in [0, {num_ids}), got ids up to "
                             f"{int(index.row_to_id.max())}")
        # -1: an id with no row (deleted at a compaction); int32 (4 bytes per id) while rows fit
        rank = torch.full((num_ids,), -1, dtype=torch.int32 if index.num_items < 2**31 else torch.int64)
        rank[index.row_to_id] = torch.arange(index.num_items, dtype=rank.dtype)
        self.register_buffer("item_to_row", rank)
        self.register_buffer("all_rows", torch.tensor([0, index.num_items], dtype=torch.int64))
        # the history slots of user_ids (item ids, -1 = empty), read by an OverArch with side features
        starts = dict(zip(user_encoder.keys, [sum(user_encoder.slots[:i]) for i in range(len(user_encoder.slots))]))
        sizes = dict(zip(user_encoder.keys, user_encoder.slots))
        self.history_start = starts.get(user_key(HISTORY), 0)
        self.history_end = self.history_start + sizes.get(user_key(HISTORY), 0)

    def forward(self, user_ids: Tensor, opcodes: Tensor, terms: Tensor, hashes: Tensor, exclude: Tensor,
                deleted: Tensor, fresh_codes: Tensor, fresh_scales: Tensor, fresh_cache: Tensor, fresh_item_ids: Tensor,
                fresh_bits: Tensor, fresh_live: Tensor, fresh_posting_offsets: Tensor, fresh_posting_rows: Tensor,
                fresh_row_terms: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        u = self.user_encoder(user_ids)  # [B, T, D]
        # the ANN stage: K0 exactly re-scored candidates per (user, task), the T task queries of
        # a user sharing its filter plan; then the same search over the fresh rows
        q = u.float()
        main = self._main_candidates(q, opcodes, terms, hashes, exclude, deleted)  # 3 x [B, T, K0]
        fresh = self._fresh_candidates(q, opcodes, terms, hashes, fresh_codes, fresh_scales, fresh_cache,
                                       fresh_item_ids, fresh_bits, fresh_live, fresh_posting_offsets, fresh_posting_rows)
        rows = self._merge(main, fresh)  # [B, M]
        item, valid = self._exact_check(rows, opcodes, terms, exclude, fresh_item_ids, fresh_row_terms)
        v = self._candidate_vectors(rows, fresh_cache)  # [B, M, D]
        history = user_ids[:, self.history_start:self.history_end]  # [B, L]
        task_scores, value = self.scorer(u, v, valid, history, torch.where(rows >= 0, item, -1))
        return self._top_k(item, valid, task_scores, value)

    # The stages of forward, one method each (benchmarks/serving_profile.py times them one by one).

    def _main_candidates(self, q: Tensor, opcodes: Tensor, terms: Tensor, hashes: Tensor, exclude: Tensor,
                         deleted: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The ANN stage over the main index, probe then filter: 3 x [B, T, K0] (scores, ids, rows)."""
        bloom = (self.bloom.bits, self.bloom.table.posting_offsets, self.bloom.table.posting_rows)
        plan = (opcodes, terms, self.bloom.main_hashes(hashes))
        return self.index.forward_bloom(q, bloom, plan, deleted, self._excluded_rows(exclude), self.k0, self.n_probe,
                                        filtered_coverage=self.filtered_coverage,
                                        coverage_exponent=self.coverage_exponent,
                                        probe_spread=self.probe_spread, probe_precision=self.probe_precision)

    def _excluded_rows(self, exclude: Tensor) -> Tensor:
        """Index rows of each query's excluded items: int64 [B, E], -1 for padding and unknown ids."""
        num_ids = self.item_to_row.shape[0]
        rows = self.item_to_row[exclude.clamp(0, num_ids - 1)].long()
        return torch.where((exclude >= 0) & (exclude < num_ids), rows, -1)

    def _filter_mask(self, opcodes: Tensor, terms: Tensor, hashes: Tensor, exclude: Tensor, deleted: Tensor) -> Tensor:
        """The Bloom filter over all N rows, minus excluded and deleted items: packed int64 [B, W]
        (the mask the ANN stage's words equal; the forward never builds it: benchmarks and tests)."""
        zero_probe = opcodes.new_zeros((opcodes.shape[0], 1))
        mask = self.bloom(opcodes, terms, hashes, zero_probe, self.all_rows)
        return mask & ~rows_to_words(self._excluded_rows(exclude), mask.shape[1]) & ~deleted

    def _fresh_candidates(self, q: Tensor, opcodes: Tensor, terms: Tensor, hashes: Tensor, fresh_codes: Tensor,
                          fresh_scales: Tensor, fresh_cache: Tensor, fresh_item_ids: Tensor, fresh_bits: Tensor,
                          fresh_live: Tensor, fresh_posting_offsets: Tensor,
                          fresh_posting_rows: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The fresh rows' filter and search (one cluster, scanned whole): 3 x [B, T, K0]."""
        B, T, _ = q.shape
        f_rows_range = torch.arange(2, device=q.device) * fresh_codes.shape[0]  # [0, F]
        f_mask = torch.ops.silverrec.bloom_search(fresh_bits, opcodes, terms, hashes, fresh_posting_offsets,
                                                   fresh_posting_rows, opcodes.new_zeros((B, 1)), f_rows_range)
        return torch.ops.silverrec.ivf_search(q, q.new_zeros((B, T, 1)), fresh_codes, fresh_scales, f_rows_range,
                                              fresh_cache, fresh_item_ids, f_mask & fresh_live, 1, 0, 1, self.fresh_k0,
                                              self.k0)

    def _merge(self, main: Tuple[Tensor, Tensor, Tensor], fresh: Tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """The best K0 of main and fresh candidates per (user, task) by exact score, then the union
        over tasks, each row at its best rank, cut to M: int64 [B, M] rows (fresh rows are N + f),
        -1 padding."""
        (main_s, main_i, main_r), (fresh_s, fresh_i, fresh_r) = main, fresh
        both_r = torch.cat([main_r, torch.where(fresh_r >= 0, fresh_r + self.num_items, -1)], dim=2)
        best = best_by_score(torch.cat([main_s, fresh_s], dim=2), torch.cat([main_i, fresh_i], dim=2), self.k0)
        return merge_ranked(both_r.gather(2, best), self.merged)

    def _split_rows(self, rows: Tensor, num_fresh: int) -> Tuple[Tensor, Tensor, Tensor]:
        """``is_fresh``, main rows and fresh rows (clamped to valid indices) of merged rows."""
        N = self.num_items
        return rows >= N, rows.clamp(0, N - 1), (rows - N).clamp(0, num_fresh - 1)

    def _exact_check(self, rows: Tensor, opcodes: Tensor, terms: Tensor, exclude: Tensor, fresh_item_ids: Tensor,
                     fresh_row_terms: Tensor) -> Tuple[Tensor, Tensor]:
        """Item ids int64 [B, M] of the candidates, and whether each is valid (bool [B, M]): a row,
        passing its filter exactly (its terms from its index's table, one program run; removes
        the Bloom filter's false positives) and not excluded."""
        is_fresh, main_rows, fresh_rows = self._split_rows(rows, fresh_item_ids.shape[0])
        item = torch.where(is_fresh, fresh_item_ids[fresh_rows], self.index.row_to_id[main_rows])
        main_held = self.bloom.held_terms(main_rows, terms)  # [B, M, L]: exact rows and posting lists
        fresh_held = fresh_row_terms[fresh_rows]  # [B, M, W]
        width = max(main_held.shape[2], fresh_held.shape[2])
        main_held = torch.nn.functional.pad(main_held, (0, width - main_held.shape[2]), value=-1)
        fresh_held = torch.nn.functional.pad(fresh_held, (0, width - fresh_held.shape[2]), value=-1)
        held = torch.where(is_fresh.unsqueeze(-1), fresh_held, main_held)
        passes = torch.ops.silverrec.exact_filter(opcodes, terms, held)
        # excluded main rows were already cleared from the mask; this catches excluded fresh items
        excluded = (item.unsqueeze(2) == exclude.unsqueeze(1)).any(2)
        return item, (rows >= 0) & passes & ~excluded

    def _candidate_vectors(self, rows: Tensor, fresh_cache: Tensor) -> Tensor:
        """The candidates' float16 cache rows as float32 [B, M, D] (index_select: ~7x faster than
        advanced indexing on float16 CPU tensors)."""
        B, D = rows.shape[0], fresh_cache.shape[1]
        is_fresh, main_rows, fresh_rows = self._split_rows(rows, fresh_cache.shape[0])
        v_main = self.index.cache.index_select(0, main_rows.flatten()).view(B, -1, D)
        v_fresh = fresh_cache.index_select(0, fresh_rows.flatten()).view(B, -1, D)
        return torch.where(is_fresh.unsqueeze(-1), v_fresh, v_main).float()

    def _top_k(self, item: Tensor, valid: Tensor, task_scores: Tensor,
               value: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The K best valid candidates by value: the forward's outputs."""
        B, _, T = task_scores.shape
        top_value, top = torch.topk(value, self.k, dim=1)
        ok = valid.gather(1, top)
        ids = torch.where(ok, item.gather(1, top), -1)
        top_scores = task_scores.gather(1, top.unsqueeze(-1).expand(B, self.k, T))
        return ids, top_value, top_scores, ok.sum(1)
