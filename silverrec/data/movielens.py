"""MovieLens loader: ml-1m (``::``-separated ``.dat``) and ml-20m / ml-25m (``.csv``) folders.

What becomes what:

* every rating is an interaction (``click`` = 1); ``like`` = rating >= ``min_rating_for_like``.
  MovieLens has no share or watch signal, so the schema declares only ``click`` and ``like``;
* item features: ``item_id`` (the movieId, as a string; numeric order), ``genres``
  (multi-valued, ``|``-separated in the file; ``(no genres listed)`` gives no genre) and
  ``year`` (parsed from a title ending in ``(1995)``, else ``unknown``), both filterable.
  Movies that nobody rated stay in the catalogue;
* user features: ml-1m ``users.dat`` gives ``gender``, ``age`` (the bucket code) and
  ``occupation`` (the code); the zip code is not used. ml-20m/25m have no user table, so the
  user side is the history only (``user_features == ()``). User rows follow the numeric order
  of the external user ids; ml-1m users without ratings keep a row but appear in no split;
* ratings of unknown movies (or, for ml-1m, unknown users) are dropped with one warning giving
  the count (``on_unknown="drop"``, default) or raise (``on_unknown="error"``);
* split: per user, time-ordered (:func:`~silverrec.data.time_fraction_split`); a required split
  that ends up empty raises ``ValueError``.

Example::

    >>> ds = load_movielens("/data/ml-1m")  # doctest: +SKIP
    >>> ds.schema.task_names  # doctest: +SKIP
    ('click', 'like')
"""
import re
from pathlib import Path
from typing import Sequence, Tuple, Union

import numpy as np

from silverrec.data._loading import (check_required_splits, drop_unknown, jagged_from_cells, read_checked,
                                     require_file, sort_interactions, time_fraction_split, vocab_of)
from silverrec.data.dataset import FeatureTable, Interactions, JaggedColumn, RecDataset
from silverrec.schema import Feature, Schema, Task

_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$")
_NO_GENRES = "(no genres listed)"
UNKNOWN_YEAR = "unknown"


def _year_of(title: str) -> str:
    m = _YEAR.search(title.strip())
    return m.group(1) if m else UNKNOWN_YEAR


def _movies(ids: np.ndarray, titles: np.ndarray, genres: np.ndarray,
            path: Path) -> Tuple[Tuple[Feature, ...], FeatureTable, np.ndarray]:
    """Item features and table from the movies file; returns also the sorted movie ids."""
    order = np.argsort(ids, kind="stable")
    ids, titles, genres = ids[order], titles[order], genres[order]
    dup = np.flatnonzero(ids[1:] == ids[:-1])
    if dup.size:
        raise ValueError(f"{path}: movieId {int(ids[dup[0]])} appears more than once")
    cells = ["" if g == _NO_GENRES else g for g in genres.tolist()]
    genre_col, genre_vocab, genre_len = jagged_from_cells(cells, "|")
    years = [_year_of(t) for t in titles.tolist()]
    known = sorted({y for y in years if y != UNKNOWN_YEAR}, key=int)
    year_vocab = tuple(known) + ((UNKNOWN_YEAR,) if UNKNOWN_YEAR in years else ())
    year_index = {y: i for i, y in enumerate(year_vocab)}
    features = (Feature("item_id", tuple(str(i) for i in ids.tolist())),
                Feature("genres", genre_vocab, max_length=genre_len, filterable=True),
                Feature("year", year_vocab, filterable=True))
    table = FeatureTable(ids.size, {
        "item_id": JaggedColumn.from_ids(np.arange(ids.size)),
        "genres": genre_col,
        "year": JaggedColumn.from_ids(np.array([year_index[y] for y in years], dtype=np.int64))})
    return features, table, ids


def load_movielens(path: Union[str, Path], min_rating_for_like: float = 4.0, valid_fraction: float = 0.1,
                   test_fraction: float = 0.1, history_length: int = 50, on_unknown: str = "drop",
                   required_splits: Sequence[str] = ("train", "valid", "test")) -> RecDataset:
    """Loads a MovieLens folder (format detected from its files; see the module docstring).

    Args:
        path (str | Path): folder holding ``ratings.dat``/``movies.dat``/``users.dat`` (ml-1m) or
            ``ratings.csv``/``movies.csv`` (ml-20m, ml-25m).
        min_rating_for_like (float): ratings at or above this are ``like = 1``.
        valid_fraction (float): per-user share of the latest ratings for validation.
        test_fraction (float): per-user share of the latest ratings for test.
        history_length (int): ``Schema.history_length``.
        on_unknown (str): ``"drop"`` (warn with a count) or ``"error"`` for ratings that
            reference movies (or ml-1m users) missing from the catalogue.
        required_splits (Sequence[str]): splits that must not be empty.

    Returns:
        RecDataset: M ratings sorted by (user, timestamp), tasks ``("click", "like")``.

    Raises:
        FileNotFoundError: the folder or a required file is missing (names it).
        ValueError: a malformed row (file, line and row in the message), an empty required split.

    Example::

        >>> ds = load_movielens("/data/ml-20m", min_rating_for_like=4.5)  # doctest: +SKIP
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not found; expected a MovieLens folder (ml-1m, ml-20m or ml-25m)")
    if (root / "ratings.dat").is_file():
        enc = "latin-1"
        movies = read_checked(require_file(root / "movies.dat", "ml-1m movies (MovieID::Title::Genres)"),
                              ["movieId", "title", "genres"], {"movieId": "int"}, header=False,
                              encoding=enc, double_colon=True)
        ratings = read_checked(root / "ratings.dat", ["userId", "movieId", "rating", "timestamp"],
                               {"userId": "int", "movieId": "int", "rating": "float", "timestamp": "int"},
                               header=False, encoding=enc, double_colon=True)
        users = read_checked(require_file(root / "users.dat", "ml-1m users (UserID::Gender::Age::Occupation::Zip-code)"),
                             ["userId", "gender", "age", "occupation", "zip"], {"userId": "int"}, header=False,
                             encoding=enc, double_colon=True)
        source = f"{root / 'ratings.dat'}"
    elif (root / "ratings.csv").is_file():
        movies = read_checked(require_file(root / "movies.csv", "ml-20m/25m movies (movieId,title,genres)"),
                              ["movieId", "title", "genres"], {"movieId": "int"})
        ratings = read_checked(root / "ratings.csv", ["userId", "movieId", "rating", "timestamp"],
                               {"userId": "int", "movieId": "int", "rating": "float", "timestamp": "int"})
        users = None
        source = f"{root / 'ratings.csv'}"
    else:
        raise FileNotFoundError(f"{root / 'ratings.dat'}: not found; expected ratings.dat (ml-1m) or "
                                f"ratings.csv (ml-20m / ml-25m) in {root}")
    item_features, items, movie_ids = _movies(movies["movieId"].to_numpy(), movies["title"].to_numpy(),
                                              movies["genres"].to_numpy(), root)
    r_user, r_movie = ratings["userId"].to_numpy(), ratings["movieId"].to_numpy()
    item = np.searchsorted(movie_ids, r_movie)
    known = (item < movie_ids.size) & (movie_ids[np.minimum(item, movie_ids.size - 1)] == r_movie)
    drop_unknown(known, "unknown movieId(s)", source, on_unknown)
    if users is not None:
        user_features, user_table, user_ids = _ml1m_users(users, root / "users.dat")
        row = np.searchsorted(user_ids, r_user)
        known_user = (row < user_ids.size) & (user_ids[np.minimum(row, user_ids.size - 1)] == r_user)
        drop_unknown(known_user | ~known, "unknown UserID(s)", source, on_unknown)
        known &= known_user
    else:
        user_ids, row = np.unique(r_user, return_inverse=True)
        row = row.reshape(-1)
        user_features, user_table = (), FeatureTable(user_ids.size, {})
    rating = ratings["rating"].to_numpy()[known]
    user, item, ts = row[known].astype(np.int64), item[known].astype(np.int64), ratings["timestamp"].to_numpy()[known]
    order = sort_interactions(user, ts)
    user, item, ts, rating = user[order], item[order], ts[order], rating[order]
    labels = {"click": np.ones(user.size, np.float32), "like": (rating >= min_rating_for_like).astype(np.float32)}
    split = time_fraction_split(user, ts, valid_fraction, test_fraction)
    check_required_splits(split, required_splits, source)
    schema = Schema(user_features=user_features, item_features=item_features,
                    tasks=(Task("click"), Task("like")), history_length=history_length)
    ds = RecDataset(schema, user_table, items, Interactions(user, item, ts, labels), split)
    ds.validate()
    return ds


def _ml1m_users(users: "object", path: Path) -> Tuple[Tuple[Feature, ...], FeatureTable, np.ndarray]:
    ids = users["userId"].to_numpy()  # type: ignore[index]
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    dup = np.flatnonzero(ids[1:] == ids[:-1])
    if dup.size:
        raise ValueError(f"{path}: UserID {int(ids[dup[0]])} appears more than once")
    features, columns = [], {}
    for name in ("gender", "age", "occupation"):
        values = users[name].to_numpy()[order]  # type: ignore[index]
        numeric = name != "gender" and all(v.isdigit() for v in values.tolist())
        vocab, codes = vocab_of(values.astype(np.int64) if numeric else values)
        features.append(Feature(name, vocab))
        columns[name] = JaggedColumn.from_ids(codes)
    return tuple(features), FeatureTable(ids.size, columns), ids
