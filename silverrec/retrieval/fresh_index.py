"""The fresh index: items added, updated or deleted after publish, served without re-export.

The serving graph takes it as inputs beside its built-in (main) index: tombstones over the main
rows (deleted or updated items) and a small index of the new versions with the main index's
layout -- INT8 codes + scales, a float16 cache, Bloom bit rows built with the main index's term
-> bit-row mapping (so the same filter plan runs on both), posting lists for exact ``NOT``, and
the per-row term ids of the exact check. The graph scans it with the same fused op (one
cluster) and merges its candidates with the main ones before the OverArch.

Shapes are padded so that an export traced once accepts any fresh size: ``F`` rows, a multiple of
64 (at least 128, two words, so that no size is 1, which torch.export would specialise; rows
past the live ones are dead: live bit 0, item id -1), and at least two posting entries.

Filter values never seen at publish time (*fresh values*) take the term slots the export reserves
(:mod:`silverrec.retrieval.fresh_terms`): ids ``T ..`` with posting lists here (empty in the main
index) and Bloom positions in the reserved bit rows (zero in the main index), so a filter on one
is exact over main and fresh rows alike.

Example::

    >>> import numpy as np
    >>> layout = FilterLayout(term_hashes=np.array([[0, 1], [1, 2]]), dense=np.array([False, False]), num_bit_rows=3,
    ...                       row_width=2)
    >>> fresh = build_fresh_index(torch.randn(2, 4), np.array([0, 1, 2]), np.array([0, 1]), np.array([7, 9]),
    ...                           np.array([3]), layout, num_main_rows=100)
    >>> fresh.codes.shape, fresh.item_ids[:3].tolist(), fresh.live.tolist()
    (torch.Size([128, 4]), [7, 9, -1], [3, 0])
"""
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from silverrec.retrieval.attribute_table import padded_row_terms
from silverrec.retrieval.quantize import quantize_int8_global, quantize_int8_per_item

_MIN_ROWS = 128


@dataclass
class FilterLayout:
    """How the main index maps terms to Bloom bit rows (from the export's metadata).

    Args:
        term_hashes (np.ndarray): int64 ``[T, H]`` bit rows tested for each term.
        dense (np.ndarray): bool ``[T]``, terms with an exact row (their H entries name it).
        num_bit_rows (int): R, rows of the bit matrix (signature rows + exact rows).
        row_width (int): columns of the exact table's per-item term rows.
        fresh_terms (int): S, term ids reserved after the T dictionary terms for fresh values.
        fresh_bit_rows (int): Z, the last bit rows, reserved for their Bloom positions.
    """

    term_hashes: np.ndarray
    dense: np.ndarray
    num_bit_rows: int
    row_width: int
    fresh_terms: int = 0
    fresh_bit_rows: int = 0

    @property
    def num_terms(self) -> int:
        """T, the dictionary terms."""
        return int(self.term_hashes.shape[0])

    @property
    def num_term_ids(self) -> int:
        """T + S: the posting lists of an index (dictionary terms and reserved slots)."""
        return self.num_terms + self.fresh_terms


class FreshIndex(NamedTuple):
    """The fresh index as serving-graph inputs (F fresh rows, a multiple of 64; W main words).

    Args:
        deleted (Tensor): int64 ``[W]`` packed tombstones of the main index's rows.
        codes (Tensor): int8 ``[F, D]``; scales (Tensor): float32 ``[F]``; cache (Tensor): float16 ``[F, D]``.
        item_ids (Tensor): int64 ``[F]`` item id of each row (-1 = dead row).
        bits (Tensor): int64 ``[R, F / 64]`` Bloom bit rows of the fresh rows.
        live (Tensor): int64 ``[F / 64]`` packed live rows.
        posting_offsets (Tensor): int64 ``[T + 1]``; posting_rows (Tensor): int32 ``[P + 2]``.
        row_terms (Tensor): int64 ``[F, width]`` term ids of each row, -1 padding.
    """

    deleted: Tensor
    codes: Tensor
    scales: Tensor
    cache: Tensor
    item_ids: Tensor
    bits: Tensor
    live: Tensor
    posting_offsets: Tensor
    posting_rows: Tensor
    row_terms: Tensor


def _pack_rows(rows: np.ndarray, num_words: int) -> np.ndarray:
    """int64 [num_words] with the bits of ``rows`` set."""
    bits = np.zeros(64 * num_words, dtype=bool)
    bits[rows] = True
    return np.packbits(bits, bitorder="little").view("<i8").copy()


def build_fresh_index(
    embeddings: Tensor,
    offsets: np.ndarray,
    term_ids: np.ndarray,
    item_ids: np.ndarray,
    deleted_rows: np.ndarray,
    layout: FilterLayout,
    num_main_rows: int,
    quantization: str = "per_item",
    fresh_hashes: Optional[np.ndarray] = None,
) -> FreshIndex:
    """Builds the fresh index inputs.

    Args:
        embeddings (Tensor): float32 ``[F0, D]`` item-tower embeddings of the fresh items.
        offsets (np.ndarray): int64 ``[F0 + 1]`` and term_ids (np.ndarray): int64 ``[nnz]``: each
            fresh item's term ids (CSR, ascending and unique per item; dictionary terms ``< T``
            or fresh values' slot ids ``T + j``).
        item_ids (np.ndarray): int64 ``[F0]`` item ids (new items: ids past the published ones).
        deleted_rows (np.ndarray): int64 main-index rows to hide (deleted or updated items).
        layout (FilterLayout): the main index's term -> bit-row mapping.
        num_main_rows (int): N of the main index.
        quantization (str): ``per_item`` or ``global`` (as the main index).
        fresh_hashes (Optional[np.ndarray]): int64 ``[n, H]`` bit rows of slot ids ``T .. T + n - 1``
            (``FreshTermsView.hashes``); None: no fresh values.

    Returns:
        FreshIndex: padded to F = max(128, 64 * ceil(F0 / 64)) rows.
    """
    f0, d = embeddings.shape
    if offsets.shape != (f0 + 1,) or item_ids.shape != (f0,):
        raise ValueError(f"fresh index: {f0} embeddings, {offsets.size - 1} term sets and {item_ids.size} item ids")
    if f0 and not torch.isfinite(embeddings).all():
        raise ValueError("fresh index: the item tower produced NaN/inf embeddings")
    f = max(_MIN_ROWS, 64 * -(-f0 // 64))
    words = f // 64
    x = torch.zeros(f, d)
    x[:f0] = embeddings.float()
    if f0:
        codes, scales = (quantize_int8_per_item if quantization == "per_item" else quantize_int8_global)(x[:f0])
    else:
        codes, scales = torch.zeros(0, d, dtype=torch.int8), torch.zeros(0)
    all_codes = torch.zeros(f, d, dtype=torch.int8)
    all_codes[:f0] = codes
    all_scales = torch.ones(f)
    all_scales[:f0] = scales
    ids = np.full(f, -1, dtype=np.int64)
    ids[:f0] = item_ids
    # Bloom rows: the term's H signature rows, or its one exact row for a dense term; a fresh
    # value's H rows lie among the reserved ones
    rows = np.repeat(np.arange(f0, dtype=np.int64), np.diff(offsets))
    h = layout.term_hashes.shape[1]
    t = layout.num_term_ids
    known = term_ids < layout.num_terms
    num_fresh = 0 if fresh_hashes is None else fresh_hashes.shape[0]
    if term_ids.size and (term_ids.min() < 0 or term_ids.max() >= layout.num_terms + num_fresh):
        raise ValueError(f"fresh index: term ids must lie in [0, {layout.num_terms} + {num_fresh} fresh values), got "
                         f"[{term_ids.min()}, {term_ids.max()}]")
    if num_fresh > layout.fresh_terms:
        raise ValueError(f"fresh index: {num_fresh} fresh values, the layout reserves {layout.fresh_terms}")
    term_rows = np.zeros((term_ids.size, h), dtype=np.int64)
    term_rows[known] = layout.term_hashes[term_ids[known]]
    if num_fresh:
        term_rows[~known] = fresh_hashes[term_ids[~known] - layout.num_terms]
    unpacked = np.zeros((layout.num_bit_rows, f), dtype=bool)
    dense = np.zeros(term_ids.size, dtype=bool)
    dense[known] = layout.dense[term_ids[known]]
    unpacked[term_rows[~dense].reshape(-1), np.repeat(rows[~dense], h)] = True
    unpacked[term_rows[dense, 0], rows[dense]] = True
    bits = np.packbits(unpacked, axis=1, bitorder="little").view("<i8").reshape(layout.num_bit_rows, words)
    order = np.argsort(term_ids, kind="stable")
    posting_offsets = np.concatenate([[0], np.cumsum(np.bincount(term_ids, minlength=t))]).astype(np.int64)
    row_terms = np.full((f, layout.row_width), -1, dtype=np.int64)
    row_terms[:f0] = padded_row_terms(offsets, term_ids, layout.row_width)
    main_words = (num_main_rows + 63) // 64
    return FreshIndex(
        deleted=torch.from_numpy(_pack_rows(np.asarray(deleted_rows, dtype=np.int64), main_words)),
        codes=all_codes,
        scales=all_scales,
        cache=x.half(),
        item_ids=torch.from_numpy(ids),
        bits=torch.from_numpy(np.ascontiguousarray(bits)),
        live=torch.from_numpy(_pack_rows(np.arange(f0), words)),
        posting_offsets=torch.from_numpy(posting_offsets),
        posting_rows=torch.from_numpy(np.concatenate([rows[order], [0, 0]]).astype(np.int32)),
        row_terms=torch.from_numpy(row_terms),
    )


def empty_fresh_index(layout: FilterLayout, dim: int, num_main_rows: int) -> FreshIndex:
    """No fresh items and no tombstones."""
    return build_fresh_index(torch.zeros(0, dim), np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64),
                             np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), layout, num_main_rows)
