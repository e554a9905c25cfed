"""Helpers shared by the data loaders: fraction split, vocabularies, jagged string columns,
checked CSV reading with file/line error messages.

Private to ``silverrec.data``; the public entry points are :func:`time_fraction_split` (also
exported from ``silverrec.data``) and the loaders that use the rest.
"""
import csv
import re
import warnings
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd

from silverrec.data.dataset import FeatureTable, Interactions, JaggedColumn, RecDataset, Split
from silverrec.schema import Schema

SPLIT_NAMES = ("train", "valid", "test")


def time_fraction_split(user: np.ndarray, timestamp: np.ndarray, valid_fraction: float = 0.1,
                        test_fraction: float = 0.1, min_train: int = 1) -> Split:
    """Per-user time-ordered split by fractions of each user's history.

    Each user's last ``max(1, round(test_fraction * n))`` interactions go to test, the
    ``max(1, round(valid_fraction * n))`` before them to validation and the rest to train.
    A fraction of 0 gives that split no rows. Users whose train part would hold fewer than
    ``min_train`` interactions keep everything in train (like
    :func:`~silverrec.data.dataset.time_ordered_split`); users with no interactions appear in
    no split. Ties in time keep the input order.

    Args:
        user (np.ndarray): int64 [M] user rows.
        timestamp (np.ndarray): int64 [M] times.
        valid_fraction (float): share of each user's interactions for validation, in [0, 1).
        test_fraction (float): share of each user's interactions for test, in [0, 1).
        min_train (int): smallest train part a user must keep to contribute valid/test rows.

    Returns:
        Split: sorted int64 index arrays into the M interactions.

    Example::

        >>> import numpy as np
        >>> s = time_fraction_split(np.zeros(10, dtype=np.int64), np.arange(10))
        >>> s.train.tolist(), s.valid.tolist(), s.test.tolist()
        ([0, 1, 2, 3, 4, 5, 6, 7], [8], [9])
    """
    for name, frac in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {frac}")
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError(f"valid_fraction + test_fraction must be < 1, got {valid_fraction} + {test_fraction}")
    if min_train < 0:
        raise ValueError(f"min_train must be >= 0, got {min_train}")
    user = np.asarray(user, dtype=np.int64)
    timestamp = np.asarray(timestamp, dtype=np.int64)
    if user.shape != timestamp.shape or user.ndim != 1:
        raise ValueError(f"user and timestamp must be 1-D of equal length, got {user.shape} and {timestamp.shape}")
    if user.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Split(train=empty, valid=empty.copy(), test=empty.copy())
    order = np.lexsort((np.arange(user.size), timestamp, user))
    u_sorted = user[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u_sorted)) + 1]
    counts = np.diff(np.r_[starts, u_sorted.size])

    def _part(frac: float) -> np.ndarray:
        if frac == 0.0:
            return np.zeros_like(counts)
        return np.maximum(1, np.floor(frac * counts + 0.5).astype(np.int64))

    n_test, n_valid = _part(test_fraction), _part(valid_fraction)
    ok = counts - n_test - n_valid >= max(min_train, 1)
    n_test, n_valid = np.where(ok, n_test, 0), np.where(ok, n_valid, 0)
    from_end = np.repeat(counts, counts) - 1 - (np.arange(u_sorted.size) - np.repeat(starts, counts))
    t_rep, v_rep = np.repeat(n_test, counts), np.repeat(n_valid, counts)
    is_test = from_end < t_rep
    is_valid = ~is_test & (from_end < t_rep + v_rep)
    is_train = ~(is_test | is_valid)
    return Split(train=np.sort(order[is_train]), valid=np.sort(order[is_valid]), test=np.sort(order[is_test]))


def check_required_splits(split: Split, required: Sequence[str], source: str) -> None:
    """Raises ``ValueError`` when a split listed in ``required`` has no rows."""
    for name in required:
        if name not in SPLIT_NAMES:
            raise ValueError(f"required_splits: unknown split {name!r}; expected a subset of {SPLIT_NAMES}")
        if split.get(name).size == 0:
            raise ValueError(
                f"{source}: split {name!r} is empty (no user has enough interactions for train + valid + test); "
                "use a larger data set, smaller valid/test fractions, or drop it from required_splits"
            )


def sort_interactions(user: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Permutation sorting interactions by (user, timestamp), ties in input order."""
    return np.lexsort((np.arange(user.size), timestamp, user))


def assemble_dataset(schema: Schema, users: FeatureTable, items: FeatureTable, user: np.ndarray, item: np.ndarray,
                     timestamp: np.ndarray, labels: Dict[str, np.ndarray], known: np.ndarray, valid_fraction: float,
                     test_fraction: float, required_splits: Sequence[str], source: str) -> RecDataset:
    """The shared tail of the file loaders: keeps the interactions whose user and item are known
    (``known``, bool ``[M]``, over ``user``/``item``/``timestamp``/``labels`` ``[M]``), sorts them
    by (user, timestamp), splits them by time fraction, checks ``required_splits`` (errors name
    ``source``) and returns the validated ``RecDataset``."""
    user, item, timestamp = user[known], item[known], timestamp[known]
    order = sort_interactions(user, timestamp)
    user, item, timestamp = user[order], item[order], timestamp[order]
    labels = {name: values[known][order] for name, values in labels.items()}
    split = time_fraction_split(user, timestamp, valid_fraction, test_fraction)
    check_required_splits(split, required_splits, source)
    ds = RecDataset(schema, users, items, Interactions(user, item, timestamp, labels), split)
    ds.validate()
    return ds


def vocab_of(values: np.ndarray) -> Tuple[Tuple[str, ...], np.ndarray]:
    """Sorted vocabulary of external values (as strings) and the int64 id of each value.

    Integer arrays sort numerically ("2" before "10"), anything else by its string form.
    """
    values = np.asarray(values)
    if values.dtype.kind not in "iu":
        values = np.asarray([str(v) for v in values.tolist()], dtype=object)
    uniq, inverse = np.unique(values, return_inverse=True)
    return tuple(str(v) for v in uniq.tolist()), inverse.astype(np.int64).reshape(-1)


def split_multi(value: object, sep: str) -> List[str]:
    """The values of one multi-valued cell: a list/array cell, or a ``sep``-separated string."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value if v is not None and str(v) != ""]
    if isinstance(value, float) and np.isnan(value):
        return []
    text = str(value)
    if text == "":
        return []
    return [v for v in text.split(sep) if v != ""]


def jagged_from_cells(cells: Sequence[object], sep: str) -> Tuple[JaggedColumn, Tuple[str, ...], int]:
    """Encodes a column of (possibly multi-valued, possibly missing) cells.

    Returns:
        (JaggedColumn, vocab, max_length): duplicates within a cell are dropped (first kept);
        missing cells become empty rows; ``max_length`` is at least 1.
    """
    rows = [list(dict.fromkeys(split_multi(c, sep))) for c in cells]
    flat = [v for r in rows for v in r]
    if not flat:
        raise ValueError("column has no values at all")
    vocab, ids = vocab_of(np.asarray(flat, dtype=object))
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return JaggedColumn(ids, offsets), vocab, max(1, int(lengths.max()))


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else ``IsADirectoryError`` (a directory) or ``FileNotFoundError``
    naming it and what it should hold."""
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a file; expected {what}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; expected {what}")
    return path


def read_header(path: Path, sep: str = ",", encoding: str = "utf-8", quote: bool = True) -> List[str]:
    """The column names on the first line of a delimited text file; errors name the file."""
    try:
        return list(pd.read_csv(path, sep=sep, nrows=0, encoding=encoding, quoting=0 if quote else 3).columns)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty; expected a header line naming the columns") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the header line: {_reason(err)}") from None


def _reason(err: Exception) -> str:
    """A parser error in words, with the likely cause of the opaque ones."""
    text = str(err)
    if "EOF inside string" in text or "field larger than field limit" in text:
        text += ' (an unterminated quote: a field opens with " and never closes, so the rest of the file is one field)'
    return text


def read_checked(path: Path, columns: Sequence[str], dtypes: Dict[str, str], *, sep: str = ",",
                 header: bool = True, encoding: str = "utf-8", double_colon: bool = False,
                 quote: bool = True) -> pd.DataFrame:
    """Reads a delimited text file with a typed fast path and precise errors on bad rows.

    Args:
        path (Path): the file.
        columns (Sequence[str]): expected column names (checked against the header, or used as
            names for files without one).
        dtypes (Dict[str, str]): ``"int"``, ``"float"`` or ``"str"`` per column; numeric columns
            must parse in every row.
        sep (str): field separator.
        header (bool): the first line names the columns.
        encoding (str): text encoding.
        double_colon (bool): MovieLens ``::`` separator (rewritten to tabs for the C parser).
        quote (bool): ``"`` quotes fields (CSV); ``False`` reads quotes as text (MovieLens
            ``.dat`` and ml-100k files, RecBole atomic files).

    Returns:
        pd.DataFrame: one row per data line, index = 0-based data row.

    Raises:
        ValueError: ``"<path>:<line>: ..."`` with the offending row for wrong field counts,
            unparseable numbers or missing values; ``"<path>: ..."`` for an empty file, an
            unterminated quote or text that is not ``encoding``.
        IsADirectoryError: ``path`` is a directory.
    """
    require_file(path, "a delimited text file")
    if path.stat().st_size == 0:  # with header=False pandas would read it as a table of no rows
        raise ValueError(f"{path}: the file is empty (0 bytes)" + ("; expected a header line naming the columns" if header
                                                                    else f"; expected lines of {len(columns)} fields"))
    try:
        return _read_checked(path, columns, dtypes, sep, header, encoding, double_colon, quote)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty" + ("; expected a header line naming the columns" if header
                                                           else f"; expected lines of {len(columns)} fields")) from None
    except (pd.errors.ParserError, csv.Error, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot parse: {_reason(err)}") from None


def _read_checked(path: Path, columns: Sequence[str], dtypes: Dict[str, str], sep: str, header: bool,
                  encoding: str, double_colon: bool, quote: bool) -> pd.DataFrame:
    if double_colon:
        import io

        data = path.read_bytes().replace(b"::", b"\t")
        opener = lambda: io.BytesIO(data)  # noqa: E731
        sep = "\t"
    else:
        opener = lambda: path  # noqa: E731
    quote = quote and not double_colon
    file_columns = read_header(path, sep, encoding, quote) if header and not double_colon else list(columns)
    if dtypes.get(file_columns[-1], "str") == "str":  # a short row would silently end in ""
        _check_field_counts(path, len(file_columns), sep, header, encoding, double_colon, quote)
    kw = dict(sep=sep, header=0 if header else None, names=None if header else list(columns),
              keep_default_na=False, na_filter=False, encoding=encoding, quoting=0 if quote else 3,
              skip_blank_lines=True, engine="c")
    typed = {c: {"int": np.int64, "float": np.float64}.get(dtypes.get(c, "str"), object) for c in columns}
    try:  # fast path: the C parser with numeric dtypes; any problem -> slow path that finds the row
        df = pd.read_csv(opener(), dtype=typed, **kw)
        if all(c in df.columns for c in columns) and (header or len(df.columns) == len(columns)) \
                and not df[list(columns)].isna().to_numpy().any():
            return df[list(columns)].copy()
    except (ValueError, TypeError, OverflowError):  # pandas' ParserError is a ValueError
        pass
    # slow path (only for bad files): field counts first, then per-column values
    _check_field_counts(path, len(file_columns), sep, header, encoding, double_colon, quote)
    try:
        df = pd.read_csv(opener(), dtype=str, **kw)
    except pd.errors.ParserError as e:
        m = re.search(r"line (\d+), saw (\d+)", str(e))
        if m is None:
            raise ValueError(f"{path}: cannot parse: {e}") from None
        line = int(m.group(1))
        raise ValueError(f"{path}:{line}: expected {len(file_columns)} fields, got {m.group(2)}: "
                         f"{_raw_line(path, line, encoding)!r}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not {encoding} text ({e})") from None
    if header:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: header {list(df.columns)} lacks required column(s) {missing}")
    elif len(df.columns) != len(columns):
        raise ValueError(f"{path}: expected {len(columns)} fields per line, got {len(df.columns)}")
    out = {}
    for col in columns:
        kind = dtypes.get(col, "str")
        s = df[col]
        if kind == "str":
            out[col] = s.to_numpy(dtype=object)
            continue
        num = pd.to_numeric(s, errors="coerce")
        bad = num.isna().to_numpy()
        if kind == "int" and not bad.any():
            bad = (num != np.floor(num)).to_numpy()
        if bad.any():
            line = line_of_row(path, int(np.flatnonzero(bad)[0]), header, encoding)
            raise ValueError(f"{path}:{line}: column {col!r} must be {'an integer' if kind == 'int' else 'a number'}, "
                             f"got {s.iloc[int(np.flatnonzero(bad)[0])]!r} in row {_raw_line(path, line, encoding)!r}")
        out[col] = num.to_numpy(dtype=np.int64 if kind == "int" else np.float64)
    return pd.DataFrame(out)


def _check_field_counts(path: Path, n: int, sep: str, header: bool, encoding: str, double_colon: bool,
                        quote: bool = True) -> None:
    """Raises ``ValueError`` at the first non-blank line that does not hold ``n`` fields."""
    if double_colon:
        with open(path, encoding=encoding, errors="replace") as f:
            for line, text in enumerate(f, start=1):
                text = text.rstrip("\r\n")
                if text.strip() and text.count("::") != n - 1:
                    raise ValueError(f"{path}:{line}: expected {n} fields, got {text.count('::') + 1}: {text!r}")
        return
    with open(path, newline="", encoding=encoding, errors="replace") as f:
        reader = csv.reader(f, delimiter=sep, quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE)
        rows = iter(reader)
        while True:
            start = reader.line_num + 1  # the line this row starts on
            try:
                row = next(rows)
            except StopIteration:
                break
            except csv.Error as err:  # "field larger than field limit": an unterminated quote
                raise ValueError(f"{path}:{start}: cannot parse the row starting on this line: {_reason(err)}: "
                                 f"{_raw_line(path, start, encoding)[:200]!r}") from None
            if (header and reader.line_num == 1) or not row or not any(row):
                continue
            if len(row) != n:
                line = reader.line_num
                raise ValueError(f"{path}:{line}: expected {n} fields, got {len(row)}: {_raw_line(path, line, encoding)!r}")


def line_of_row(path: Path, row: int, header: bool, encoding: str = "utf-8") -> int:
    """The 1-based file line of 0-based data row ``row`` (blank lines are not rows)."""
    seen = -1 if header else 0
    with open(path, encoding=encoding, errors="replace") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            if seen == row:
                return line
            seen += 1
    return line


def _raw_line(path: Path, line: int, encoding: str) -> str:
    with open(path, encoding=encoding, errors="replace") as f:
        for i, text in enumerate(f, start=1):
            if i == line:
                return text.rstrip("\r\n")
    return ""


def drop_unknown(known: np.ndarray, what: str, source: str, on_unknown: str) -> None:
    """Applies the unknown-reference policy: ``"drop"`` warns with a count, ``"error"`` raises."""
    n_bad = int((~known).sum())
    if n_bad == 0:
        return
    if on_unknown == "error":
        raise ValueError(f"{source}: {n_bad} interaction(s) reference {what} not in the catalogue")
    if on_unknown != "drop":
        raise ValueError(f"on_unknown must be 'drop' or 'error', got {on_unknown!r}")
    warnings.warn(f"{source}: dropped {n_bad} interaction(s) referencing {what} not in the catalogue",
                  stacklevel=3)

