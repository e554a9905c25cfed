"""MovieLens loader: every GroupLens release, its format detected from the folder's files.

=====================================  ============================================================
files                                  release
=====================================  ============================================================
``u.data``, ``u.item``, ``u.user``     ml-100k (tab-separated ratings, ``|``-separated movies with
                                       19 genre flags and users; latin-1 titles)
``ratings.dat``, ``movies.dat``,       ml-1m (``::``-separated, latin-1)
``users.dat``
``ratings.dat``, ``movies.dat``        ml-10m (ml-1m's format without ``users.dat``)
``ratings.csv``, ``movies.csv``        ml-20m, ml-25m, ml-32m, ml-latest, ml-latest-small (CSV
                                       with a header, UTF-8)
=====================================  ============================================================

What becomes what:

* every rating is an interaction (``click`` = 1); ``like`` = rating >= ``min_rating_for_like``.
  MovieLens has no share or watch signal, so the schema declares only ``click`` and ``like``;
* item features: ``item_id`` (the movie id, as a string; numeric order), ``genres``
  (multi-valued; ``(no genres listed)`` and ml-100k's ``unknown`` give no genre) and ``year``
  (parsed from a title ending in ``(1995)``, for ml-100k else from the release date; else
  ``unknown``), both filterable. Movies that nobody rated stay in the catalogue;
* user features: ml-100k ``u.user`` and ml-1m ``users.dat`` give ``gender``, ``age`` (ml-1m: the
  bucket code, ml-100k: the age) and ``occupation``; the zip code is not used. The other
  releases have no user table, so the user side is the history only (``user_features == ()``).
  User rows follow the numeric order of the external user ids; users without ratings keep a
  row but appear in no split;
* ratings of unknown movies (or, with a user table, unknown users) are dropped with one warning
  giving the count (``on_unknown="drop"``, default) or raise (``on_unknown="error"``);
* split: per user, time-ordered (:func:`~silverrec.data.time_fraction_split`); a required split
  that ends up empty raises ``ValueError``.

Example::

    >>> ds = load_movielens("/data/ml-1m")  # doctest: +SKIP
    >>> ds.schema.task_names  # doctest: +SKIP
    ('click', 'like')
"""
import re
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from silverrec.data._loading import (assemble_dataset, drop_unknown, jagged_from_cells, read_checked, require_file,
                                     vocab_of)
from silverrec.data.dataset import FeatureTable, JaggedColumn, RecDataset
from silverrec.schema import Feature, Schema, Task

_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$")
_NO_GENRES = ("(no genres listed)", "unknown")
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
    cells = ["|".join(x for x in g.split("|") if x not in _NO_GENRES) for g in genres.tolist()]
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


_RATING_COLUMNS = ["userId", "movieId", "rating", "timestamp"]
_RATING_TYPES = {"userId": "int", "movieId": "int", "rating": "float", "timestamp": "int"}
# ml-100k's u.item genre flags, in column order (u.genre lists the same names with their index)
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")
_USER_COLUMNS = ["userId", "gender", "age", "occupation"]


class MovieLensFiles(NamedTuple):
    """The tables of one MovieLens release, in common column names.

    Args:
        release (str): ``ml-100k``, ``ml-1m``, ``ml-10m`` or ``csv`` (ml-20m and later).
        movies (pd.DataFrame): ``movieId`` (int), ``title``, ``genres`` (``|``-separated).
        ratings (pd.DataFrame): ``userId``, ``movieId`` (int), ``rating`` (float), ``timestamp`` (int).
        users (Optional[pd.DataFrame]): ``userId`` (int), ``gender``, ``age``, ``occupation``.
        users_path (Optional[Path]): the user file (for error messages).
        ratings_path (Path): the ratings file (for error messages).
    """

    release: str
    movies: pd.DataFrame
    ratings: pd.DataFrame
    users: Optional[pd.DataFrame]
    users_path: Optional[Path]
    ratings_path: Path


def text_encoding(path: Path) -> str:
    """``"utf-8"`` when the file decodes as UTF-8, else ``"latin-1"`` (older releases)."""
    try:
        path.read_bytes().decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        return "latin-1"


def _read_ml100k(root: Path) -> MovieLensFiles:
    genres = ML100K_GENRES
    if (root / "u.genre").is_file():
        listed = read_checked(root / "u.genre", ["name", "index"], {"index": "int"}, sep="|", header=False,
                              encoding="latin-1", quote=False)
        genres = tuple(listed.sort_values("index")["name"].tolist())
    flags = [f"genre_{i}" for i in range(len(genres))]
    item_path = require_file(root / "u.item", "ml-100k movies (movie id|title|release date|video release date|"
                                              f"IMDb URL|{len(genres)} genre flags)")
    items = read_checked(item_path, ["movieId", "title", "release", "video_release", "url", *flags],
                         {"movieId": "int", **{f: "int" for f in flags}}, sep="|", header=False,
                         encoding="latin-1", quote=False)
    names = np.asarray(genres, dtype=object)
    on = items[flags].to_numpy() != 0
    cells = ["|".join(names[row]) for row in on]
    titles = [t if _YEAR.search(t.strip()) or not r[-4:].isdigit() else f"{t} ({r[-4:]})"
              for t, r in zip(items["title"].tolist(), items["release"].tolist())]
    movies = pd.DataFrame({"movieId": items["movieId"].to_numpy(), "title": titles, "genres": cells})
    ratings_path = root / "u.data"
    ratings = read_checked(ratings_path, _RATING_COLUMNS, _RATING_TYPES, sep="\t", header=False, quote=False)
    users_path = require_file(root / "u.user", "ml-100k users (user id|age|gender|occupation|zip code)")
    users = read_checked(users_path, ["userId", "age", "gender", "occupation", "zip"], {"userId": "int"}, sep="|",
                         header=False, encoding="latin-1", quote=False)
    return MovieLensFiles("ml-100k", movies, ratings, users[_USER_COLUMNS], users_path, ratings_path)


def _read_dat(root: Path) -> MovieLensFiles:
    movies_path = require_file(root / "movies.dat", "ml-1m / ml-10m movies (MovieID::Title::Genres)")
    movies = read_checked(movies_path, ["movieId", "title", "genres"], {"movieId": "int"}, header=False,
                          encoding=text_encoding(movies_path), double_colon=True)
    ratings_path = root / "ratings.dat"
    ratings = read_checked(ratings_path, _RATING_COLUMNS, _RATING_TYPES, header=False, encoding="latin-1",
                           double_colon=True)
    users_path = root / "users.dat"
    if not users_path.is_file():  # ml-10m ships no user table
        return MovieLensFiles("ml-10m", movies, ratings, None, None, ratings_path)
    users = read_checked(users_path, ["userId", "gender", "age", "occupation", "zip"], {"userId": "int"},
                         header=False, encoding="latin-1", double_colon=True)
    return MovieLensFiles("ml-1m", movies, ratings, users[_USER_COLUMNS], users_path, ratings_path)


def _read_csv(root: Path) -> MovieLensFiles:
    movies = read_checked(require_file(root / "movies.csv", "ml-20m / ml-25m / ml-32m / ml-latest movies "
                                                            "(movieId,title,genres)"),
                          ["movieId", "title", "genres"], {"movieId": "int"})
    ratings = read_checked(root / "ratings.csv", _RATING_COLUMNS, _RATING_TYPES)
    return MovieLensFiles("csv", movies, ratings, None, None, root / "ratings.csv")


def read_movielens_files(root: Path) -> MovieLensFiles:
    """Detects the release from the folder's files and reads its tables (see the module docstring).

    Raises:
        FileNotFoundError: no release's ratings file is there, or a required companion is missing.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not found; expected a MovieLens folder (ml-100k, ml-1m, ml-10m, "
                                "ml-20m, ml-25m, ml-32m or ml-latest)")
    if (root / "u.data").is_file():
        return _read_ml100k(root)
    if (root / "ratings.dat").is_file():
        return _read_dat(root)
    if (root / "ratings.csv").is_file():
        return _read_csv(root)
    raise FileNotFoundError(f"{root / 'ratings.dat'}: not found; expected u.data (ml-100k), ratings.dat (ml-1m, "
                            f"ml-10m) or ratings.csv (ml-20m, ml-25m, ml-32m, ml-latest) in {root}")


def load_movielens(path: Union[str, Path], min_rating_for_like: float = 4.0, valid_fraction: float = 0.1,
                   test_fraction: float = 0.1, history_length: int = 50, on_unknown: str = "drop",
                   required_splits: Sequence[str] = ("train", "valid", "test")) -> RecDataset:
    """Loads a MovieLens folder (release detected from its files; see the module docstring).

    Args:
        path (str | Path): an ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m or ml-latest(-small)
            folder, as unzipped.
        min_rating_for_like (float): ratings at or above this are ``like = 1``.
        valid_fraction (float): per-user share of the latest ratings for validation.
        test_fraction (float): per-user share of the latest ratings for test.
        history_length (int): ``Schema.history_length``.
        on_unknown (str): ``"drop"`` (warn with a count) or ``"error"`` for ratings that
            reference movies (or users, where the release has a user table) missing from it.
        required_splits (Sequence[str]): splits that must not be empty.

    Returns:
        RecDataset: M ratings sorted by (user, timestamp), tasks ``("click", "like")``.

    Raises:
        FileNotFoundError: the folder or a required file is missing (names it).
        ValueError: a malformed row (file, line, field and row in the message), an empty
            required split.

    Example::

        >>> ds = load_movielens("/data/ml-20m", min_rating_for_like=4.5)  # doctest: +SKIP
    """
    root = Path(path)
    files = read_movielens_files(root)
    movies, ratings, source = files.movies, files.ratings, str(files.ratings_path)
    item_features, items, movie_ids = _movies(movies["movieId"].to_numpy(), movies["title"].to_numpy(),
                                              movies["genres"].to_numpy(), root)
    r_user, r_movie = ratings["userId"].to_numpy(), ratings["movieId"].to_numpy()
    item = np.searchsorted(movie_ids, r_movie)
    known = (item < movie_ids.size) & (movie_ids[np.minimum(item, movie_ids.size - 1)] == r_movie)
    drop_unknown(known, "unknown movieId(s)", source, on_unknown)
    if files.users is not None:
        user_features, user_table, user_ids = _users(files.users, files.users_path)
        row = np.searchsorted(user_ids, r_user)
        known_user = (row < user_ids.size) & (user_ids[np.minimum(row, user_ids.size - 1)] == r_user)
        drop_unknown(known_user | ~known, "unknown UserID(s)", source, on_unknown)
        known &= known_user
    else:
        user_ids, row = np.unique(r_user, return_inverse=True)
        row = row.reshape(-1)
        user_features, user_table = (), FeatureTable(user_ids.size, {})
    rating = ratings["rating"].to_numpy()
    labels = {"click": np.ones(rating.size, np.float32), "like": (rating >= min_rating_for_like).astype(np.float32)}
    schema = Schema(user_features=user_features, item_features=item_features,
                    tasks=(Task("click"), Task("like")), history_length=history_length)
    return assemble_dataset(schema, user_table, items, row.astype(np.int64), item.astype(np.int64),
                            ratings["timestamp"].to_numpy(), labels, known, valid_fraction, test_fraction,
                            required_splits, source)


def _users(users: "object", path: Path) -> Tuple[Tuple[Feature, ...], FeatureTable, np.ndarray]:
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
