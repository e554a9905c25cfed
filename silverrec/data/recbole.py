"""RecBole atomic files: ``NAME.inter``, optional ``NAME.item`` and ``NAME.user`` in one folder.

The format (https://recbole.io/docs/user_guide/data/atomic_files.html) is tab-separated text,
UTF-8, no quoting, whose first line declares every field as ``name:type``:

=============  =====================================================================
type           cell
=============  =====================================================================
``token``      one categorical value (may contain spaces: ``Animation Children's``)
``token_seq``  values separated by ``seq_separator`` (a space by default)
``float``      a number
``float_seq``  numbers separated by ``seq_separator``
=============  =====================================================================

What becomes what:

* ``.inter``: ``user_id`` and ``item_id`` (token) are required; ``timestamp`` orders each
  user's interactions (integral values are kept as seconds, other values by their rank; without
  it, the file order is the time order). Every interaction is a click; with a ``rating`` field,
  ``like`` = rating >= ``min_rating_for_like`` is a second task (``min_rating_for_like=None``:
  no like task). Other ``.inter`` fields are checked against their type and not used.
* ``.item``: ``item_id`` plus attribute fields; its row order is the catalogue order (items
  without interactions stay in it). Every field becomes a categorical feature: tokens as they
  are, ``token_seq`` multi-valued, ``float`` / ``float_seq`` by their value written as text
  (``1995.0`` -> ``1995``); empty cells have no value. ``item_fields`` selects fields (``None``:
  all); every item attribute is filterable unless ``filterable`` names a subset. Without an
  ``.item`` file the catalogue is the interacted item ids (sorted) with no attributes.
* ``.user``: ``user_id`` plus features, the same rules (``user_fields`` selects). Without it,
  users are the interacting user ids (sorted) with no static features.
* Interactions of items (or, with a ``.user`` file, users) missing from their file are dropped
  with one warning giving the count (``on_unknown="drop"``) or raise (``"error"``). A malformed
  header, a wrong field count, a number that does not parse or a repeated id raises
  ``ValueError`` naming the file, the line and the field.
* split: per user, time-ordered (:func:`~silverrec.data.time_fraction_split`), as for the other
  sources; ``eval.protocol=leave_last_out`` replaces it at training time.

Example::

    >>> ds = load_recbole("/data/ml-1m", name="ml-1m")  # doctest: +SKIP
    >>> ds.schema.task_names  # doctest: +SKIP
    ('click', 'like')
"""
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from silverrec.data._loading import (assemble_dataset, drop_unknown, jagged_from_cells, line_of_row, read_checked,
                                     require_file)
from silverrec.data.dataset import FeatureTable, JaggedColumn, RecDataset
from silverrec.schema import ITEM_ID, Feature, Schema, Task

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
USER_ID = "user_id"
RATING = "rating"
TIMESTAMP = "timestamp"


class AtomicField(NamedTuple):
    """One declared field of an atomic file's header.

    Args:
        name (str): field name (``user_id``).
        type (str): one of :data:`ATOMIC_TYPES`.
        column (str): the header cell (``user_id:token``), the column name in the table.
    """

    name: str
    type: str
    column: str


def read_header(path: Path) -> List[AtomicField]:
    """Parses the ``name:type`` header line of an atomic file.

    Raises:
        ValueError: ``"<path>:1: field N ..."`` for a cell without a type, an unknown type, an
            empty name or a repeated name.
    """
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        first = f.readline().rstrip("\r\n")
    if not first.strip():
        raise ValueError(f"{path}:1: empty header; expected tab-separated name:type fields "
                         f"(types: {', '.join(ATOMIC_TYPES)})")
    fields: List[AtomicField] = []
    for i, cell in enumerate(first.split("\t"), start=1):
        name, colon, kind = cell.rpartition(":")
        if not colon or not name:
            raise ValueError(f"{path}:1: field {i} {cell!r} is not name:type (types: {', '.join(ATOMIC_TYPES)})")
        if kind not in ATOMIC_TYPES:
            raise ValueError(f"{path}:1: field {name!r} has unknown type {kind!r}; expected one of {', '.join(ATOMIC_TYPES)}")
        if any(f.name == name for f in fields):
            raise ValueError(f"{path}:1: field {name!r} is declared twice")
        fields.append(AtomicField(name, kind, cell))
    return fields


def _check_numbers(path: Path, field: AtomicField, cells: pd.Series, sep: str) -> None:
    """Raises at the first cell of a float / float_seq field that holds a non-number (empty is allowed)."""
    values = cells.str.split(sep).explode() if field.type == "float_seq" else cells
    values = values[values != ""]
    bad = pd.to_numeric(values, errors="coerce").isna().to_numpy()
    if bad.any():
        row = int(values.index[np.flatnonzero(bad)[0]])
        line = line_of_row(path, row, header=True)
        raise ValueError(f"{path}:{line}: field {field.name!r} ({field.type}) must hold numbers, got "
                         f"{values.iloc[int(np.flatnonzero(bad)[0])]!r} in {cells.iloc[row]!r}")


def read_atomic(path: Path, seq_separator: str = " ") -> Tuple[List[AtomicField], pd.DataFrame]:
    """Reads an atomic file: its fields and a table of text cells (one column per field name),
    numbers checked.

    Raises:
        ValueError: a malformed header or row, naming the file, the line and the field.
    """
    fields = read_header(path)
    table = read_checked(path, [f.column for f in fields], {}, sep="\t", quote=False)
    table.columns = [f.name for f in fields]
    for f in fields:
        if f.type in ("float", "float_seq"):
            _check_numbers(path, f, table[f.name], seq_separator)
    return fields, table


def _float_text(values: Sequence[str]) -> List[str]:
    """Numbers as vocabulary text: ``1995.0`` -> ``1995``, ``2.50`` -> ``2.5``."""
    out = []
    for v in values:
        x = float(v)
        out.append(str(int(x)) if x.is_integer() and abs(x) < 2 ** 53 else repr(x))
    return out


def _cells(field: AtomicField, column: pd.Series, sep: str) -> List[List[str]]:
    """The values of each row of a field (empty cells: none)."""
    text = column.tolist()
    if field.type == "token":
        return [[v] if v != "" else [] for v in text]
    rows = [[v for v in t.split(sep) if v != ""] for t in text]
    if field.type == "float_seq":
        rows = [_float_text(r) for r in rows]
    elif field.type == "float":
        rows = [_float_text(r) for r in rows]
    return rows


def _table(path: Path, id_field: str, sep: str, select: Optional[Sequence[str]],
           filterable: Optional[Sequence[str]]) -> Tuple[np.ndarray, List[Feature], Dict[str, JaggedColumn]]:
    # ``select`` is item_fields / user_fields, named after the file's side in errors
    """Ids (file order) and the categorical features of an ``.item`` or ``.user`` file."""
    fields, table = read_atomic(path, sep)
    by_name = {f.name: f for f in fields}
    if id_field not in by_name:
        raise ValueError(f"{path}:1: no {id_field!r} field; the header declares {[f.column for f in fields]}")
    ids = table[id_field].to_numpy(dtype=object)
    empty = np.flatnonzero(ids == "")
    if empty.size:
        raise ValueError(f"{path}:{line_of_row(path, int(empty[0]), True)}: field {id_field!r} is empty")
    dup = pd.Index(ids).duplicated()
    if dup.any():
        r = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(ids == ids[r])[0])
        raise ValueError(f"{path}:{line_of_row(path, r, True)}: field {id_field!r}: {ids[r]!r} already appeared at "
                         f"line {line_of_row(path, first, True)}")
    names = [f.name for f in fields if f.name != id_field]
    side = "item_fields" if id_field == ITEM_ID else "user_fields"
    for what, chosen in ((side, select), ("filterable", filterable)):
        unknown = [n for n in (chosen or ()) if n not in names]
        if unknown:
            raise ValueError(f"{what} names unknown field(s) {unknown}; {path} declares {names}")
    features, columns = [], {}
    for name in names if select is None else [n for n in names if n in select]:
        try:
            col, vocab, max_len = jagged_from_cells(_cells(by_name[name], table[name], sep), sep)
        except ValueError as e:
            raise ValueError(f"{path}: field {name!r}: {e}") from None
        features.append(Feature(name, vocab, max_length=max_len, filterable=filterable is None or name in filterable))
        columns[name] = col
    return ids, features, columns


def _timestamps(path: Path, fields: Dict[str, AtomicField], table: pd.DataFrame) -> np.ndarray:
    """int64 [M] clock: the timestamp field (seconds when integral, else its rank), else file order."""
    if TIMESTAMP not in fields:
        return np.arange(len(table), dtype=np.int64)
    if fields[TIMESTAMP].type != "float":
        raise ValueError(f"{path}:1: field {TIMESTAMP!r} must be declared float, got {fields[TIMESTAMP].column!r}")
    cells = table[TIMESTAMP]
    empty = np.flatnonzero((cells == "").to_numpy())
    if empty.size:
        raise ValueError(f"{path}:{line_of_row(path, int(empty[0]), True)}: field {TIMESTAMP!r} is empty")
    t = pd.to_numeric(cells).to_numpy(dtype=np.float64)
    if np.all(t == np.floor(t)) and np.abs(t).max(initial=0) < 2 ** 62:
        return t.astype(np.int64)
    return np.unique(t, return_inverse=True)[1].reshape(-1).astype(np.int64)


def load_recbole(path: Union[str, Path], name: Optional[str] = None, min_rating_for_like: Optional[float] = 4.0,
                 item_fields: Optional[Sequence[str]] = None, user_fields: Optional[Sequence[str]] = None,
                 filterable: Optional[Sequence[str]] = None, seq_separator: str = " ", on_unknown: str = "drop",
                 valid_fraction: float = 0.1, test_fraction: float = 0.1, history_length: int = 50,
                 required_splits: Sequence[str] = ("train", "valid", "test")) -> RecDataset:
    """Loads a RecBole atomic data set (see the module docstring for what becomes what).

    Args:
        path (str | Path): the folder holding ``NAME.inter`` (and optionally ``NAME.item``,
            ``NAME.user``).
        name (Optional[str]): the data set name (``None``: the stem of the folder's only
            ``.inter`` file, else the folder's name).
        min_rating_for_like (Optional[float]): ratings at or above this are ``like = 1``
            (``None``: no like task even when there is a rating field).
        item_fields (Optional[Sequence[str]]): ``.item`` fields to use as attributes (``None``: all).
        user_fields (Optional[Sequence[str]]): ``.user`` fields to use as features (``None``: all).
        filterable (Optional[Sequence[str]]): item attributes usable in filters (``None``: all).
        seq_separator (str): separator of ``token_seq`` / ``float_seq`` cells.
        on_unknown (str): ``"drop"`` (warn with a count) or ``"error"`` for interactions with
            items (users) missing from the ``.item`` (``.user``) file.
        valid_fraction (float): per-user share of the latest interactions for validation.
        test_fraction (float): per-user share of the latest interactions for test.
        history_length (int): ``Schema.history_length``.
        required_splits (Sequence[str]): splits that must not be empty.

    Returns:
        RecDataset: M interactions sorted by (user, time); tasks ``click`` (and ``like``).

    Raises:
        FileNotFoundError: the folder or ``NAME.inter`` is missing (names it).
        ValueError: a malformed file (file, line and field in the message), an empty required split.

    Example::

        >>> ds = load_recbole("/data/amazon-books", min_rating_for_like=5)  # doctest: +SKIP
    """
    if on_unknown not in ("drop", "error"):
        raise ValueError(f"on_unknown must be 'drop' or 'error', got {on_unknown!r}")
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not found; expected a folder of RecBole atomic files (NAME.inter, ...)")
    if name is None:  # the folder's only .inter file, else the folder's name
        inters = sorted(root.glob("*.inter"))
        name = inters[0].stem if len(inters) == 1 else root.name
    inter_path = require_file(root / f"{name}.inter", f"RecBole interactions (tab-separated, header "
                                                      f"{USER_ID}:token item_id:token ...); data.name={name!r}")
    fields_list, inter = read_atomic(inter_path, seq_separator)
    fields = {f.name: f for f in fields_list}
    for required in (USER_ID, ITEM_ID):
        if required not in fields:
            raise ValueError(f"{inter_path}:1: no {required!r} field; the header declares {[f.column for f in fields_list]}")
        empty = np.flatnonzero((inter[required] == "").to_numpy())
        if empty.size:
            raise ValueError(f"{inter_path}:{line_of_row(inter_path, int(empty[0]), True)}: field {required!r} is empty")
    ts = _timestamps(inter_path, fields, inter)
    raw_item, raw_user = inter[ITEM_ID].to_numpy(dtype=object), inter[USER_ID].to_numpy(dtype=object)

    item_path = root / f"{name}.item"
    if item_path.is_file():
        item_ids, item_feats, item_cols = _table(item_path, ITEM_ID, seq_separator, item_fields, filterable)
    else:
        item_ids, item_feats, item_cols = np.asarray(sorted(set(raw_item.tolist())), dtype=object), [], {}
    item = pd.Index(item_ids).get_indexer(raw_item).astype(np.int64)
    known = item >= 0
    drop_unknown(known, f"unknown {ITEM_ID}(s)", str(inter_path), on_unknown)
    user_path = root / f"{name}.user"
    if user_path.is_file():
        user_ids, user_feats, user_cols = _table(user_path, USER_ID, seq_separator, user_fields, filterable=[])
        user = pd.Index(user_ids).get_indexer(raw_user).astype(np.int64)
        drop_unknown((user >= 0) | ~known, f"unknown {USER_ID}(s)", str(inter_path), on_unknown)
        known &= user >= 0
    else:
        user_ids = np.asarray(sorted(set(raw_user[known].tolist())), dtype=object)
        user, user_feats, user_cols = pd.Index(user_ids).get_indexer(raw_user).astype(np.int64), [], {}

    labels: Dict[str, np.ndarray] = {"click": np.ones(len(inter), np.float32)}
    tasks = [Task("click")]
    if RATING in fields and min_rating_for_like is not None:
        if fields[RATING].type != "float":
            raise ValueError(f"{inter_path}:1: field {RATING!r} must be declared float, got {fields[RATING].column!r}")
        rating = pd.to_numeric(inter[RATING].replace("", np.nan)).to_numpy(dtype=np.float64)
        missing = np.flatnonzero(np.isnan(rating) & known)
        if missing.size:
            raise ValueError(f"{inter_path}:{line_of_row(inter_path, int(missing[0]), True)}: field {RATING!r} is empty")
        labels["like"] = (rating >= float(min_rating_for_like)).astype(np.float32)
        tasks.append(Task("like"))
    schema = Schema(user_features=tuple(user_feats), tasks=tuple(tasks), history_length=history_length,
                    item_features=(Feature(ITEM_ID, tuple(str(v) for v in item_ids.tolist())), *item_feats))
    item_cols[ITEM_ID] = JaggedColumn.from_ids(np.arange(item_ids.size))
    return assemble_dataset(schema, FeatureTable(user_ids.size, user_cols), FeatureTable(item_ids.size, item_cols),
                            user, item, ts, labels, known, valid_fraction, test_fraction, required_splits,
                            str(inter_path))
