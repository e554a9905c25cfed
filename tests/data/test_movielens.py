"""MovieLens loader on small fixtures in the exact ml-1m (.dat) and ml-20m/25m (.csv) formats
(the other releases: test_movielens_releases.py)."""
import numpy as np
import pytest

from silverrec.data import load_movielens
from silverrec.schema import TaskKind

ML1M_MOVIES = [
    "1::Toy Story (1995)::Animation|Children's|Comedy",
    "2::Jumanji (1995)::Adventure|Children's|Fantasy",
    "10::Misérables, Les (1998)::Drama",
    "3::Grumpier Old Men (1995)::Comedy|Romance",
    "20::Money Train (1995)::Action",  # never rated: stays in the catalogue
]
ML1M_USERS = ["1::F::1::10::48067", "2::M::56::16::70072", "3::M::25::15::55117", "4::F::45::7::02460"]
# user, movie, rating, time: user 1 has 5 ratings, user 2 four, user 3 three, user 4 none
ML1M_RATINGS = [(1, 1, 5, 978300760), (1, 2, 3, 978300761), (1, 3, 4, 978300762), (1, 10, 2, 978300763),
                (1, 20, 1, 978300700), (2, 1, 4, 978300100), (2, 10, 5, 978300050), (2, 3, 1, 978300200),
                (2, 2, 2, 978300300), (3, 3, 5, 978301000), (3, 1, 4, 978302000), (3, 2, 3, 978303000)]


def write_ml1m(root, ratings=ML1M_RATINGS, extra_rating_lines=()):
    root.mkdir(exist_ok=True)
    (root / "movies.dat").write_bytes(("\n".join(ML1M_MOVIES) + "\n").encode("latin-1"))
    (root / "users.dat").write_text("\n".join(ML1M_USERS) + "\n")
    lines = [f"{u}::{m}::{r}::{t}" for u, m, r, t in ratings] + list(extra_rating_lines)
    (root / "ratings.dat").write_text("\n".join(lines) + "\n")
    return root


def write_ml20m(root, rating_lines=None):
    root.mkdir(exist_ok=True)
    (root / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "5,Untitled Short,(no genres listed)\n"
        "7,Some Show (2006\u20132007),Drama\n")
    if rating_lines is None:
        rating_lines = ["10,1,4.5,1100", "10,2,3.5,1000", "10,7,4.0,1200", "10,5,2.0,1300",
                        "3,2,5.0,50", "3,1,0.5,60", "3,7,4.0,70"]
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(rating_lines) + "\n")
    return root


def test_ml1m(tmp_path):
    ds = load_movielens(write_ml1m(tmp_path / "ml-1m"))
    ds.validate()
    s = ds.schema
    assert s.item_ids == ("1", "2", "3", "10", "20")  # numeric order, unrated movie 20 kept
    assert s.task_names == ("click", "like") and all(t.kind == TaskKind.BINARY for t in s.tasks)
    assert [f.name for f in s.user_features] == ["gender", "age", "occupation"]
    assert s.user_feature("age").vocab == ("1", "25", "45", "56")
    assert s.user_feature("gender").vocab == ("F", "M")
    genres = s.item_feature("genres")
    assert genres.filterable and genres.max_length == 3 and "Children's" in genres.vocab
    assert s.item_feature("year").vocab == ("1995", "1998") and s.item_feature("year").filterable
    col = ds.items.columns["genres"]
    assert [genres.vocab[v] for v in col.row(0)] == ["Animation", "Children's", "Comedy"]
    assert s.item_feature("year").vocab[ds.items.columns["year"].row(3)[0]] == "1998"  # movie "10"
    it = ds.interactions
    assert len(it) == 12 and ds.users.num_rows == 4
    assert 3 not in it.user  # user 4 (row 3) has no ratings: kept as a row, in no split
    assert np.all(np.diff(it.user) >= 0)
    for u in np.unique(it.user):
        assert np.all(np.diff(it.timestamp[it.user == u]) >= 0)
    # user 1 (row 0): times sorted -> movies 20, 1, 2, 3, 10; likes = rating >= 4
    rows = it.user == 0
    assert [s.item_ids[i] for i in it.item[rows]] == ["20", "1", "2", "3", "10"]
    assert it.labels["like"][rows].tolist() == [0, 1, 0, 1, 0] and np.all(it.labels["click"] == 1)
    sp = ds.split
    assert [s.item_ids[i] for i in it.item[sp.test]] == ["10", "2", "2"]  # each user's latest
    assert [s.item_ids[i] for i in it.item[sp.valid]] == ["3", "3", "1"]
    assert sp.train.size == 6
    assert ds.users.columns["occupation"].num_rows == 4


def test_ml20m_csv(tmp_path):
    ds = load_movielens(write_ml20m(tmp_path / "ml-20m"), min_rating_for_like=4.5)
    ds.validate()
    s = ds.schema
    assert s.user_features == () and ds.users.num_rows == 2 and ds.users.columns == {}
    assert s.item_ids == ("1", "2", "5", "7")
    assert s.item_feature("year").vocab == ("1995", "2006", "unknown")
    g = ds.items.columns["genres"]
    assert g.row(2).size == 0  # "(no genres listed)" -> no genre
    assert s.item_feature("genres").max_length == 5
    it = ds.interactions
    # user "3" is row 0 (numeric order), its ratings in time order: 2, 1, 7
    assert [s.item_ids[i] for i in it.item[it.user == 0]] == ["2", "1", "7"]
    assert it.labels["like"][it.user == 0].tolist() == [1, 0, 0]  # 5.0, 0.5, 4.0 with threshold 4.5
    assert it.timestamp.dtype == np.int64


def test_unknown_movies_dropped_with_count_or_error(tmp_path):
    root = write_ml1m(tmp_path / "m", extra_rating_lines=["1::999::4::978300800", "2::998::4::978300900"])
    with pytest.warns(UserWarning, match=r"dropped 2 interaction\(s\) referencing unknown movieId"):
        ds = load_movielens(root)
    assert len(ds.interactions) == 12
    with pytest.raises(ValueError, match=r"2 interaction\(s\) reference unknown movieId"):
        load_movielens(root, on_unknown="error")
    root2 = write_ml1m(tmp_path / "u", extra_rating_lines=["77::1::4::978300800"])
    with pytest.warns(UserWarning, match=r"dropped 1 interaction\(s\) referencing unknown UserID"):
        assert len(load_movielens(root2).interactions) == 12


@pytest.mark.parametrize("line,match", [
    ("1::2::5", r"ratings\.dat:13: expected 4 fields, got 3: '1::2::5'"),
    ("1::2::five::978300800", r"ratings\.dat:13: column 'rating' must be a number, got 'five'"),
    ("1::2::5::978300800::9", r"ratings\.dat:13: expected 4 fields, got 5"),
])
def test_malformed_ml1m_rows(tmp_path, line, match):
    root = write_ml1m(tmp_path / "m", extra_rating_lines=[line])
    with pytest.raises(ValueError, match=match):
        load_movielens(root)


def test_malformed_csv_rows(tmp_path):
    root = write_ml20m(tmp_path / "a", rating_lines=["10,1,4.5,1100", "10,2,x,1000"])
    with pytest.raises(ValueError, match=r"ratings\.csv:3: column 'rating' must be a number, got 'x' in row '10,2,x,1000'"):
        load_movielens(root)
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n10,1,4.5,1100\n10,2,4.0\n")
    with pytest.raises(ValueError, match=r"ratings\.csv:3: expected 4 fields, got 3: '10,2,4.0'"):
        load_movielens(root)
    (root / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995)\n")
    with pytest.raises(ValueError, match=r"movies\.csv:2: expected 3 fields, got 2"):
        load_movielens(root)
    (root / "movies.csv").write_text("movieId,name,genres\n1,Toy Story (1995),Comedy\n")
    with pytest.raises(ValueError, match=r"lacks required column\(s\) \['title'\]"):
        load_movielens(root)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: not found; expected a MovieLens folder"):
        load_movielens(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"u\.data \(ml-100k\), ratings\.dat \(ml-1m, ml-10m\) or ratings\.csv"):
        load_movielens(tmp_path / "empty")
    root = write_ml1m(tmp_path / "m")
    (root / "movies.dat").unlink()
    with pytest.raises(FileNotFoundError, match=r"movies\.dat: not found; expected ml-1m / ml-10m movies"):
        load_movielens(root)
    root = write_ml20m(tmp_path / "c")
    (root / "movies.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"movies\.csv: not found"):
        load_movielens(root)


def test_empty_split_is_an_error_unless_not_required(tmp_path):
    root = write_ml20m(tmp_path / "s", rating_lines=["10,1,4.5,1100", "10,2,3.5,1000", "3,2,5.0,50"])
    with pytest.raises(ValueError, match="split 'valid' is empty"):
        load_movielens(root)
    ds = load_movielens(root, required_splits=("train",))
    assert ds.split.train.size == 3 and ds.split.test.size == 0


def test_duplicate_movie_id(tmp_path):
    root = write_ml20m(tmp_path / "d")
    (root / "movies.csv").write_text("movieId,title,genres\n1,A (1990),Drama\n1,B (1991),Drama\n")
    with pytest.raises(ValueError, match="movieId 1 appears more than once"):
        load_movielens(root)
