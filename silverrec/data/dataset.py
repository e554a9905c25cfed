"""In-memory containers every data source produces: feature tables, interactions, a split.

All ids are contiguous ints (rows of the schema's vocabularies). Every feature column is
jagged (``values`` + ``offsets``), single-valued features simply have length 1 per row, so
user and item tables turn into TorchRec ``KeyedJaggedTensor`` batches without special cases.

Shapes: R rows (users U or items N), L total values of a column, M interactions.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from silverrec.schema import Feature, Schema


@dataclass
class JaggedColumn:
    """One feature column of a table.

    Args:
        values (np.ndarray): int64 [L] ids, row r's values are ``values[offsets[r]:offsets[r+1]]``.
        offsets (np.ndarray): int64 [R+1], ``offsets[0] == 0``, non-decreasing.
    """

    values: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        self.values = np.ascontiguousarray(self.values, dtype=np.int64)
        self.offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        if self.offsets.ndim != 1 or self.offsets.size == 0 or self.offsets[0] != 0:
            raise ValueError(f"JaggedColumn.offsets must be 1-D starting at 0, got shape {self.offsets.shape}")
        if self.offsets[-1] != self.values.size:
            raise ValueError(
                f"JaggedColumn.offsets[-1]={int(self.offsets[-1])} != len(values)={self.values.size}"
            )
        if np.any(np.diff(self.offsets) < 0):
            raise ValueError("JaggedColumn.offsets must be non-decreasing")

    @property
    def num_rows(self) -> int:
        return self.offsets.size - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, r: int) -> np.ndarray:
        return self.values[self.offsets[r] : self.offsets[r + 1]]

    @staticmethod
    def from_ids(ids: np.ndarray) -> "JaggedColumn":
        """A single-valued column: one id per row."""
        ids = np.asarray(ids, dtype=np.int64)
        return JaggedColumn(ids.copy(), np.arange(ids.size + 1, dtype=np.int64))

    @staticmethod
    def from_lists(rows: Sequence[Sequence[int]]) -> "JaggedColumn":
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.fromiter((v for r in rows for v in r), dtype=np.int64, count=int(offsets[-1]))
        return JaggedColumn(values, offsets)

    def take(self, rows: np.ndarray) -> "JaggedColumn":
        """The sub-column of the given rows (in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.offsets[rows]
        return gather_ranges(self.values, starts, self.offsets[rows + 1] - starts)


def gather_ranges(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> JaggedColumn:
    """The jagged column whose row r is ``values[starts[r] : starts[r] + lengths[r]]``.

    Args:
        values (np.ndarray): [L] source values.
        starts (np.ndarray): int64 [R] start of each range.
        lengths (np.ndarray): int64 [R] length of each range (>= 0).
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # for each output position: its range's start + its position within the range
    idx = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
    return JaggedColumn(values[idx], offsets)


@dataclass
class FeatureTable:
    """A table of categorical features, one row per user or item.

    Args:
        num_rows (int): R.
        columns (Dict[str, JaggedColumn]): one column per schema feature, each with R rows.
    """

    num_rows: int
    columns: Dict[str, JaggedColumn]

    def __post_init__(self) -> None:
        for name, col in self.columns.items():
            if col.num_rows != self.num_rows:
                raise ValueError(f"FeatureTable column {name!r} has {col.num_rows} rows, expected {self.num_rows}")

    def validate(self, features: Sequence[Feature], side: str) -> None:
        """Checks that every feature has a column with ids inside its vocabulary."""
        for f in features:
            if f.name not in self.columns:
                raise ValueError(f"{side} table has no column for feature {f.name!r}")
            col = self.columns[f.name]
            if col.values.size and (col.values.min() < 0 or col.values.max() >= f.num_embeddings):
                bad = col.values[(col.values < 0) | (col.values >= f.num_embeddings)][0]
                raise ValueError(
                    f"{side} feature {f.name!r}: id {int(bad)} outside its vocabulary [0, {f.num_embeddings})"
                )
            if col.lengths.size and col.lengths.max() > f.max_length:
                raise ValueError(
                    f"{side} feature {f.name!r}: a row has {int(col.lengths.max())} values, max_length is {f.max_length}"
                )


@dataclass
class Interactions:
    """Logged (user, item) interactions, sorted by (user, timestamp).

    Args:
        user (np.ndarray): int64 [M] user rows.
        item (np.ndarray): int64 [M] item rows.
        timestamp (np.ndarray): int64 [M] seconds (any monotone clock).
        labels (Dict[str, np.ndarray]): float32 [M] per task name (``click`` is all ones).
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    labels: Dict[str, np.ndarray]

    def __post_init__(self) -> None:
        self.user = np.ascontiguousarray(self.user, dtype=np.int64)
        self.item = np.ascontiguousarray(self.item, dtype=np.int64)
        self.timestamp = np.ascontiguousarray(self.timestamp, dtype=np.int64)
        self.labels = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.labels.items()}
        m = self.user.size
        for name, arr in (("item", self.item), ("timestamp", self.timestamp), *self.labels.items()):
            if arr.shape != (m,):
                raise ValueError(f"Interactions.{name} has shape {arr.shape}, expected ({m},)")

    def __len__(self) -> int:
        return int(self.user.size)


@dataclass
class Split:
    """Indices into :class:`Interactions` of each split (per user, time-ordered).

    Args:
        train (np.ndarray): int64 indices of training interactions.
        valid (np.ndarray): int64 indices of validation interactions (after each user's train).
        test (np.ndarray): int64 indices of test interactions (after each user's validation).
        valid_trains (bool): the validation interactions also train (:attr:`training`), as in
            generative-recommenders' leave-last-out runs (``ignore_last_n=1``); evaluation
            histories and exclusions still read ``train`` only.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    valid_trains: bool = False

    @property
    def training(self) -> np.ndarray:
        """int64 indices of the interactions the trainers learn from, sorted: ``train``, plus
        ``valid`` when ``valid_trains``."""
        if not self.valid_trains:
            return self.train
        return np.sort(np.concatenate([self.train, self.valid]))

    def get(self, name: str) -> np.ndarray:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"unknown split {name!r}; expected one of train, valid, test")
        return getattr(self, name)


@dataclass
class RecDataset:
    """A complete data set: schema, user and item tables, interactions and their split.

    Args:
        schema (Schema): features, vocabularies and tasks.
        users (FeatureTable): U rows, one column per ``schema.user_features``.
        items (FeatureTable): N rows, one column per ``schema.item_features`` (``item_id`` is
            the identity column).
        interactions (Interactions): M interactions sorted by (user, timestamp).
        split (Split): train/valid/test indices.
        value_formula (Optional[str]): the source's own Value Model formula (the synthetic world's
            ``0.6*like + 0.3*share + 0.1*watch``); None: the rule of
            :func:`~silverrec.models.value_formula.default_value_formula`.
    """

    schema: Schema
    users: FeatureTable
    items: FeatureTable
    interactions: Interactions
    split: Split
    value_formula: Optional[str] = None

    def default_value_formula(self) -> str:
        """The formula a model config without one uses: :attr:`value_formula`, else ``like``
        when there is a like task, else the first task."""
        from silverrec.models.value_formula import default_value_formula

        return self.value_formula or default_value_formula(self.schema.task_names)

    def validate(self) -> None:
        """Raises ``ValueError`` naming the field on any inconsistency."""
        self.users.validate(self.schema.user_features, "user")
        self.items.validate(self.schema.item_features, "item")
        if self.items.num_rows != self.schema.num_items:
            raise ValueError(f"item table has {self.items.num_rows} rows, schema has {self.schema.num_items} item ids")
        it = self.interactions
        if len(it) and (it.user.min() < 0 or it.user.max() >= self.users.num_rows):
            raise ValueError(f"Interactions.user outside [0, {self.users.num_rows})")
        if len(it) and (it.item.min() < 0 or it.item.max() >= self.items.num_rows):
            raise ValueError(f"Interactions.item outside [0, {self.items.num_rows})")
        for t in self.schema.task_names:
            if t not in it.labels:
                raise ValueError(f"Interactions.labels has no column for task {t!r}")
        for name in ("train", "valid", "test"):
            idx = self.split.get(name)
            if idx.size and (idx.min() < 0 or idx.max() >= len(it)):
                raise ValueError(f"Split.{name} has indices outside [0, {len(it)})")

    def item_terms(self) -> List[Dict[str, List[str]]]:
        """Per item, its filterable attributes as ``{feature: [external values]}`` (for the filter index)."""
        feats = self.schema.filterable_features
        out: List[Dict[str, List[str]]] = [{} for _ in range(self.items.num_rows)]
        for f in feats:
            col = self.items.columns[f.name]
            vocab = f.vocab
            for r in range(self.items.num_rows):
                out[r][f.name] = [vocab[v] for v in col.row(r)]
        return out


def time_ordered_split(user: np.ndarray, timestamp: np.ndarray, valid_per_user: int = 1,
                       test_per_user: int = 1, min_train: int = 1) -> Split:
    """Per-user time-ordered split: each user's last ``test_per_user`` interactions go to test,
    the ``valid_per_user`` before them to validation, the rest to train.

    Users with fewer than ``min_train + valid_per_user + test_per_user`` interactions keep them
    all in train (documented handling of short histories).

    Args:
        user (np.ndarray): int64 [M] user rows.
        timestamp (np.ndarray): int64 [M].

    Returns:
        Split: index arrays into the M interactions.
    """
    user = np.asarray(user, dtype=np.int64)
    timestamp = np.asarray(timestamp, dtype=np.int64)
    order = np.lexsort((np.arange(user.size), timestamp, user))  # by user, then time, then position
    u_sorted = user[order]
    # rank from the end within each user: 0 = latest
    starts = np.r_[0, np.flatnonzero(np.diff(u_sorted)) + 1]
    counts = np.diff(np.r_[starts, u_sorted.size])
    pos = np.arange(u_sorted.size) - np.repeat(starts, counts)
    from_end = np.repeat(counts, counts) - 1 - pos
    long_enough = np.repeat(counts, counts) >= (min_train + valid_per_user + test_per_user)
    is_test = long_enough & (from_end < test_per_user)
    is_valid = long_enough & (from_end >= test_per_user) & (from_end < test_per_user + valid_per_user)
    is_train = ~(is_test | is_valid)
    return Split(train=np.sort(order[is_train]), valid=np.sort(order[is_valid]), test=np.sort(order[is_test]))

