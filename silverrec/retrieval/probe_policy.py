"""How much of an IVF index a query scans: one policy for ``IVFInt8Index.search``, the serving
graph and the ANN benchmark (they all call :func:`probe_plan`).

A query probes its ``n_probe`` best clusters (by centroid score), then more clusters in centroid
order until the probed clusters cover ``min_rows`` rows that pass its filter (counted exactly,
a popcount of the packed mask per cluster), at most ``max_probe`` clusters. Its best ``k0`` rows
by INT8 score are re-scored exactly from the float16 cache and the best ``k`` kept; when the
probed clusters hold at most ``k0`` eligible rows, all of them are re-scored and the INT8 scan is
skipped (the same candidates: the op lists them).

Why these numbers:

- ``k0 = k + max(16, k // 2)``: INT8 scores differ from exact ones by a small relative error, so
  the INT8 order of the top rows is right except among near-ties. Re-scoring half again as many
  rows as are returned (at least 16 more) leaves room for those swaps; the re-score costs one
  random float16 row read per candidate, so K0 is kept a small multiple of K.
- **Without a filter**: ``min_rows = k0`` (probes of a few tiny clusters still yield K0
  candidates) and ``max_probe = n_probe + 32`` (a query never walks far down its centroid
  list; the rare one whose capped list still holds fewer than ``k`` rows scans every row).
- **With a filter**: ``min_rows = max(k, ceil(n_probe * N / C))``: the probed clusters must
  cover as many *passing* rows as ``n_probe`` average clusters hold rows, so a filtered query
  scores about as many candidates as an unfiltered one; a filter passing a fraction ``s`` of the
  items widens the probe about ``1 / s`` times. ``max_probe = C``: a filter too strict for that
  scans every cluster (the filtered exhaustive scan), so ``k`` results come back whenever ``k``
  items pass. The serving graph always has a mask (exclusions, deletions), so it always takes
  this branch. The widening is what keeps filtered recall: the best ``k`` passing items are
  about the best ``k / s`` items overall, which lie in more clusters than the best ``k``. On
  the demo model's 50,000 item embeddings (512 test users, k = 100, recall@100 against exact
  filtered search) this rule reached 0.957 / 0.992 with a random 10% filter at ``n_probe`` 8 / 18
  and 0.966 with ``language:de`` (6.7% of the items) at 18, where stopping once K0 passing rows
  were covered (FAISS's behaviour with an ``IDSelector``: the same ``nprobe`` clusters) reached
  0.789 / 0.791 and 0.670. The price is paid on data whose neighbours spread over many clusters.
  The floor is ``k`` (``k`` results need ``k`` passing rows), not ``k0``: a short walk (small
  ``w * n_probe * N / C``, below) stops once it covers ``k`` passing rows, and when those are at
  most ``k0`` every one is re-scored, without the INT8 scan. On ``benchmarks/ann.py``'s clustered
  set (1M x 128, C = 4,000, a random 10% filter, ``n_probe`` 1, ``w`` = 0.25, batch 16) that walk
  reached recall@100 0.955 in 189 us of ``ivf_search`` against 219 us for the walk floored at
  ``k0`` = 100 with its INT8 scan, whose recall was 0.955 too (benchmarks/RESULTS.md); the
  default ``k0`` = 150 as the floor would walk to 150 passing rows, 1.5x as far.
- **``filtered_coverage``** (``w`` in ``(0, 1]``, default 1) scales that count: ``min_rows =
  max(k, ceil(w * n_probe * N / C))``, a walk of about ``w / s`` times the unfiltered one. The
  best ``k / s`` items lie in fewer than ``1 / s`` times the clusters of the best ``k`` when a
  query's neighbourhood widens slower than linearly, and at a high ``n_probe`` the full widening
  overshoots: on ``benchmarks/scale.py``'s real-embedding-like catalogue (1M x 64, C = 4,000,
  ``n_probe`` 240, a random 10% filter, 256 queries) ``w`` = 1 / 0.5 / 0.3 / 0.2 / 0.1 gave
  recall@100 0.9993 / 0.9958 / 0.9882 / 0.9743 / 0.9273 in 6.80 / 5.49 / 4.56 / 3.48 / 2.38 ms
  per batch of 16 (benchmarks/RESULTS.md). How far it can fall depends on the data (the demo's
  figures above are at ``w`` = 1), so it is a setting to calibrate on held-out queries, as
  ``benchmarks/scale.py`` does, like ``n_probe``; unfiltered searches ignore it.
- **``coverage_exponent``** (``b`` in ``[0, 1]``, default 0) sizes the walk by the filter's pass
  fraction near the query: the op measures ``s``, the fraction of the rows of the query's first
  ``n_probe`` clusters that pass, and covers ``max(k, min_rows * s ** b)`` passing rows, a walk
  of about ``w * s ** (b - 1)`` times the unfiltered one. One ``w`` for every filter over-covers
  strict ones: a ~1% filter's best ``k`` are about the best ``100 k`` items overall, which lie in
  far fewer than 10x the clusters of the best ``10 k``. On ``benchmarks/scale.py``'s catalogue
  (random filters, recall of the walked clusters against exact filtered search, 64 queries),
  ``w = 1, b = 0.75`` walked as many rows as ``w = 0.18`` under a ~10% filter (1M: 107k against
  108k rows, recall 0.973 / 0.974; 10M: 623k / 631k, 0.964 / 0.965) and 5.2x / 5.7x fewer under a
  ~1% filter (1M: 190k rows against all 1M, 0.970 against 1.000; 10M: 1.1M against 6.3M, 0.971
  against 1.000; benchmarks/RESULTS.md). Unfiltered walks (``s = 1``) do not change.
"""
import math
from typing import NamedTuple, Optional

# Unfiltered, a query may probe this many clusters beyond n_probe to reach K0 rows.
EXTRA_PROBES = 32


class ProbePlan(NamedTuple):
    """The integer arguments of ``ivf_search`` (see :func:`probe_plan`)."""

    n_probe: int
    min_rows: int
    max_probe: int
    k0: int


def rescore_candidates(k: int) -> int:
    """K0, the INT8 candidates re-scored for ``k`` results: ``k + max(16, k // 2)``.

    Example::

        >>> rescore_candidates(100), rescore_candidates(10)
        (150, 26)
    """
    return k + max(16, k // 2)


def probe_plan(k: int, n_probe: int, num_items: int, num_clusters: int, filtered: bool,
               k0: Optional[int] = None, filtered_coverage: float = 1.0) -> ProbePlan:
    """The probe choice and candidate count of a search (module docstring: the reasons).

    Args:
        k (int): K, results per query (``>= 1``).
        n_probe (int): clusters always probed, in ``[1, C]``.
        num_items (int): N, rows of the index.
        num_clusters (int): C, clusters of the index.
        filtered (bool): whether the search has a mask.
        k0 (Optional[int]): K0 >= K re-scored candidates; default :func:`rescore_candidates`.
        filtered_coverage (float): ``w`` in ``(0, 1]``: a filtered query covers ``w * n_probe *
            N / C`` passing rows (at least K); see the module docstring.

    Returns:
        ProbePlan: ``n_probe``, ``min_rows``, ``max_probe``, ``k0`` (the op's ``coverage_exponent``,
        a setting of the index's caller, is passed beside them).

    Example::

        >>> probe_plan(100, 8, 1_000_000, 4000, filtered=False)
        ProbePlan(n_probe=8, min_rows=150, max_probe=40, k0=150)
        >>> probe_plan(100, 8, 1_000_000, 4000, filtered=True)
        ProbePlan(n_probe=8, min_rows=2000, max_probe=4000, k0=150)
        >>> probe_plan(100, 8, 1_000_000, 4000, filtered=True, filtered_coverage=0.25)
        ProbePlan(n_probe=8, min_rows=500, max_probe=4000, k0=150)
        >>> probe_plan(100, 1, 1_000_000, 4000, filtered=True, filtered_coverage=0.25)  # floored at K
        ProbePlan(n_probe=1, min_rows=100, max_probe=4000, k0=150)
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 1 <= n_probe <= num_clusters:
        raise ValueError(f"n_probe must be in [1, num_clusters={num_clusters}], got {n_probe}")
    k0 = rescore_candidates(k) if k0 is None else k0
    if k0 < k:
        raise ValueError(f"k0 must be >= k={k}, got k0={k0}")
    if not 0.0 < filtered_coverage <= 1.0:
        raise ValueError(f"filtered_coverage must be in (0, 1], got {filtered_coverage}")
    if not filtered:
        return ProbePlan(n_probe, k0, min(num_clusters, n_probe + EXTRA_PROBES), k0)
    covered = math.ceil(filtered_coverage * n_probe * num_items / num_clusters)
    return ProbePlan(n_probe, max(k, covered), num_clusters, k0)
