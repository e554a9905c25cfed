"""Generic loader: an interactions table, an item attribute table and an optional user table,
each in Parquet (``.parquet``/``.pq``) or CSV (``.csv``, or ``.tsv`` tab-separated) by extension.

Tables:

* **interactions**: ``user_id``, ``item_id``, ``timestamp`` (integer seconds, or a Parquet
  timestamp column) and optional label columns; every other column is a task. A label column
  holding only 0/1 is a binary task, one with values in [0, 1] a regression task; anything else
  is an error. Without a ``click`` column every logged interaction is a click (``click = 1``);
  ``click`` is always the first task.
* **items**: ``item_id`` plus attribute columns. Multi-valued attributes are ``|``-separated
  strings (CSV or Parquet) or list columns (Parquet); empty cells mean "no value". Every
  attribute is filterable unless ``filterable`` names a subset. The item order of this table is
  the catalogue order (``item_id`` vocabulary); items without interactions stay in it.
* **users** (optional): ``user_id`` plus feature columns (same cell rules); users without
  interactions keep a row and appear in no split. Without it, users are the distinct
  interaction user ids (sorted) and have no static features.

External ids become vocabularies (strings). Interactions referencing an item (or, with a user
table, a user) that is not in its table are dropped with one warning giving the count
(``on_unknown="drop"``) or raise (``"error"``). Malformed rows raise ``ValueError`` with the
file, the line (CSV) or row (Parquet) and the row; a required split that ends up empty raises.

Example::

    >>> ds = load_tables("interactions.parquet", "items.csv")  # doctest: +SKIP
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from silverrec.data._loading import (assemble_dataset, drop_unknown, jagged_from_cells, read_checked, read_header,
                                     require_file)
from silverrec.data.dataset import FeatureTable, JaggedColumn, RecDataset
from silverrec.schema import ITEM_ID, Feature, Schema, Task, TaskKind

PathLike = Union[str, Path]


def _read(path: Path, what: str, required: Sequence[str], ints: Sequence[str] = (),
          other_numeric: bool = False) -> Tuple[pd.DataFrame, int, str]:
    """Reads a table; returns it, the file line of data row 0 (0 for Parquet) and "line"/"row".

    ``other_numeric``: every column outside ``required`` must be a number in every row.
    """
    require_file(path, what)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path).reset_index(drop=True)
        missing = [c for c in required if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: lacks required column(s) {missing}; has {list(df.columns)}")
        floats = [c for c in df.columns if c not in required] if other_numeric else []
        for col in list(ints) + floats:
            df[col] = _parquet_numeric(df[col], path, col, col in ints)
        for col in required:
            missing_cell = df[col].isna()
            if df[col].dtype == object:
                missing_cell |= df[col].astype(str) == ""
            bad = np.flatnonzero(missing_cell.to_numpy())
            if bad.size:
                raise ValueError(f"{path}: row {int(bad[0])}: column {col!r} is missing in row "
                                 f"{df.iloc[int(bad[0])].to_dict()}")
        return df, 0, "row"
    if suffix not in (".csv", ".tsv"):
        raise ValueError(f"{path}: unsupported extension {suffix!r}; expected .parquet, .pq, .csv or .tsv")
    sep = "\t" if suffix == ".tsv" else ","
    header = read_header(path, sep)
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{path}: header {header} lacks required column(s) {missing}")
    kinds = {c: "int" if c in ints else "float" if other_numeric and c not in required else "str" for c in header}
    df = read_checked(path, header, kinds, sep=sep)
    for col in required:
        if kinds[col] == "str":
            bad = np.flatnonzero(df[col].to_numpy(dtype=object) == "")
            if bad.size:
                raise ValueError(f"{path}:{int(bad[0]) + 2}: column {col!r} is empty in row "
                                 f"{df.iloc[int(bad[0])].to_dict()}")
    return df, 2, "line"


def _parquet_numeric(s: pd.Series, path: Path, col: str, integer: bool) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(s):
        if s.dt.tz is not None:
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        out = pd.Series(s.to_numpy().astype("datetime64[s]").astype(np.int64), index=s.index)
        return out.where(~s.isna(), np.nan) if s.isna().any() else out
    num = pd.to_numeric(s, errors="coerce")
    bad = np.flatnonzero((num.isna() & ~s.isna()).to_numpy())
    if integer and not bad.size:
        bad = np.flatnonzero(((num != np.floor(num)) & ~num.isna()).to_numpy())
    if bad.size:
        raise ValueError(f"{path}: row {int(bad[0])}: column {col!r} must be {'an integer' if integer else 'a number'}, "
                         f"got {s.iloc[int(bad[0])]!r}")
    return num


def _where(path: Path, unit: str, row: int, first: int) -> str:
    """``file:line`` for CSV (``first`` = line of data row 0), ``file: row r`` for Parquet."""
    return f"{path}:{row + first}" if unit == "line" else f"{path}: row {row}"


def _keys(values: np.ndarray) -> np.ndarray:
    """External ids as int64 when the column is integral, else as strings."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    return pd.Series(values, dtype=object).astype(str).to_numpy(dtype=object)


def _comparable(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Both key arrays as int64 if both are, else both as strings (``7`` matches ``"7"``)."""
    if a.dtype.kind == "i" and b.dtype.kind == "i":
        return a, b
    return a.astype(str).astype(object), b.astype(str).astype(object)


def _catalogue(df: pd.DataFrame, id_col: str, path: Path, first: int, unit: str) -> np.ndarray:
    """The id column's keys; a repeated id raises ``ValueError`` naming both places."""
    keys = _keys(df[id_col].to_numpy())
    dup = pd.Index(keys).duplicated()
    if dup.any():
        r = int(np.flatnonzero(dup)[0])
        r0 = int(np.flatnonzero(keys == keys[r])[0])
        raise ValueError(f"{_where(path, unit, r, first)}: {id_col} {str(keys[r])!r} already appeared at "
                         f"{unit} {r0 + first}")
    return keys


def _features(df: pd.DataFrame, id_col: str, path: Path, sep: str,
              filterable: Optional[Sequence[str]]) -> Tuple[List[Feature], Dict[str, JaggedColumn]]:
    names = [c for c in df.columns if c != id_col]
    if filterable is not None:
        unknown = [f for f in filterable if f not in names]
        if unknown:
            raise ValueError(f"filterable names unknown attribute(s) {unknown}; {path} has {names}")
    feats, cols = [], {}
    for name in names:
        try:
            col, vocab, max_len = jagged_from_cells(df[name].tolist(), sep)
        except ValueError as e:
            raise ValueError(f"{path}: column {name!r}: {e}") from None
        feats.append(Feature(name, vocab, max_length=max_len, filterable=filterable is None or name in filterable))
        cols[name] = col
    return feats, cols


def _lookup(catalogue: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Row of each key in the catalogue, -1 where absent."""
    catalogue, keys = _comparable(catalogue, keys)
    return pd.Index(catalogue).get_indexer(keys).astype(np.int64)


def _tasks(df: pd.DataFrame, labels: List[str], path: Path, first: int, unit: str) -> Tuple[Tuple[Task, ...], Dict[str, np.ndarray]]:
    tasks, out = [Task("click")], {}
    if "click" not in labels:
        out["click"] = np.ones(len(df), np.float32)
    for name in sorted(labels, key=lambda n: n != "click"):
        v = df[name].to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~((v >= 0) & (v <= 1)))
        if bad.size:
            raise ValueError(f"{_where(path, unit, int(bad[0]), first)}: label {name!r} must be in [0, 1], got {v[bad[0]]} "
                             f"in row {df.iloc[int(bad[0])].to_dict()}")
        binary = bool(np.isin(v, (0.0, 1.0)).all())
        if name != "click":
            tasks.append(Task(name, TaskKind.BINARY if binary else TaskKind.REGRESSION))
        elif not binary:
            raise ValueError(f"{path}: label 'click' must be 0/1")
        out[name] = v.astype(np.float32)
    return tuple(tasks), out


def load_tables(interactions: PathLike, items: PathLike, users: Optional[PathLike] = None, sep: str = "|",
                filterable: Optional[Sequence[str]] = None, on_unknown: str = "drop", valid_fraction: float = 0.1,
                test_fraction: float = 0.1, history_length: int = 50,
                required_splits: Sequence[str] = ("train", "valid", "test")) -> RecDataset:
    """Loads interaction / item / user tables (see the module docstring for the formats).

    Args:
        interactions (str | Path): ``user_id, item_id, timestamp[, labels...]`` table.
        items (str | Path): ``item_id[, attributes...]`` table.
        users (Optional[str | Path]): ``user_id[, features...]`` table, or ``None``.
        sep (str): separator of multi-valued string cells.
        filterable (Optional[Sequence[str]]): item attributes usable in filters (``None``: all).
        on_unknown (str): ``"drop"`` (warn with a count) or ``"error"`` for interactions that
            reference unknown items (or users, when a user table is given).
        valid_fraction (float): per-user share of the latest interactions for validation.
        test_fraction (float): per-user share of the latest interactions for test.
        history_length (int): ``Schema.history_length``.
        required_splits (Sequence[str]): splits that must not be empty.

    Returns:
        RecDataset: interactions sorted by (user, timestamp) with a time-ordered split.

    Example::

        >>> ds = load_tables("events.csv", "items.parquet", users="users.csv")  # doctest: +SKIP
    """
    if on_unknown not in ("drop", "error"):
        raise ValueError(f"on_unknown must be 'drop' or 'error', got {on_unknown!r}")
    ipath, tpath = Path(interactions), Path(items)
    upath = None if users is None else Path(users)
    items_df, ifirst, iunit = _read(tpath, "an item table with an item_id column", ["item_id"])
    item_ids = _catalogue(items_df, "item_id", tpath, ifirst, iunit)
    item_feats, item_cols = _features(items_df, "item_id", tpath, sep, filterable)
    inter, first, unit = _read(ipath, "an interactions table with user_id, item_id, timestamp columns",
                               ["user_id", "item_id", "timestamp"], ints=["timestamp"], other_numeric=True)
    label_cols = [c for c in inter.columns if c not in ("user_id", "item_id", "timestamp")]
    item = _lookup(item_ids, _keys(inter["item_id"].to_numpy()))
    known = item >= 0
    drop_unknown(known, "unknown item_id(s)", str(ipath), on_unknown)
    raw_users = _keys(inter["user_id"].to_numpy())
    if upath is not None:
        users_df, ufirst, uunit = _read(upath, "a user table with a user_id column", ["user_id"])
        user_ids = _catalogue(users_df, "user_id", upath, ufirst, uunit)
        user_feats, user_cols = _features(users_df, "user_id", upath, sep, filterable=[])
        user = _lookup(user_ids, raw_users)
        drop_unknown((user >= 0) | ~known, "unknown user_id(s)", str(ipath), on_unknown)
        known &= user >= 0
        user_table = FeatureTable(user_ids.size, user_cols)
    else:
        codes, uniq = pd.factorize(raw_users[known])  # hashing: fast for millions of string ids
        order = np.argsort(np.asarray(uniq), kind="stable")  # numeric or string order
        rank = np.empty(order.size, dtype=np.int64)
        rank[order] = np.arange(order.size)
        user_ids = np.asarray(uniq)[order]
        full = np.full(raw_users.size, -1, dtype=np.int64)
        full[known] = rank[codes]
        user, user_feats, user_table = full, [], FeatureTable(user_ids.size, {})
    tasks, labels = _tasks(inter, label_cols, ipath, first, unit)
    ts = inter["timestamp"].to_numpy().astype(np.int64)
    schema = Schema(user_features=tuple(user_feats), history_length=history_length, tasks=tasks,
                    item_features=(Feature(ITEM_ID, tuple(str(v) for v in item_ids.tolist())), *item_feats))
    item_cols[ITEM_ID] = JaggedColumn.from_ids(np.arange(item_ids.size))
    ds = assemble_dataset(schema, user_table, FeatureTable(item_ids.size, item_cols), user, item, ts, labels, known,
                          valid_fraction, test_fraction, required_splits, str(ipath))
    return ds

