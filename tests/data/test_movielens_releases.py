"""Every MovieLens release's folder layout, on tiny files written in its exact format: ml-100k
(tab- and ``|``-separated, latin-1 titles, genre flags), ml-10m (``.dat`` without users.dat) and the
CSV releases (ml-20m, ml-25m, ml-32m, ml-latest, ml-latest-small share one layout)."""
import pytest

from silverrec.data import load_movielens
from tests.data.test_movielens import write_ml1m

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def _flags(*names):
    return "|".join("1" if g in names else "0" for g in GENRES)


def write_ml100k(root, extra_data=(), genre_file=True):
    """u.data (tab), u.item (|, latin-1, 19 flags), u.user (|), u.genre (|)."""
    root.mkdir(exist_ok=True)
    toy = _flags("Animation", "Children's", "Comedy")
    items = [f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|{toy}",
             f"2|GoldenEye (1995)|01-Jan-1995||http://x|{_flags('Action', 'Thriller')}",
             f"3|Misérables, Les|01-Jan-1998||http://x|{_flags('Drama')}",  # year only in the release date
             f"4|Quote \"Unquoted\" Film (1996)|||http://x|{_flags('unknown')}"]  # an unknown genre: none
    (root / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    (root / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|32067\n")
    if genre_file:
        (root / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")
    data = ["1\t1\t5\t874965758", "1\t2\t3\t876893171", "1\t3\t4\t878542960", "1\t4\t3\t876893119",
            "2\t1\t4\t888550871", "2\t3\t2\t888551000", "2\t2\t5\t888552000",
            "3\t4\t1\t878542000", "3\t1\t5\t878543000", "3\t2\t4\t878544000", *extra_data]
    (root / "u.data").write_text("\n".join(data) + "\n")
    return root


def test_ml100k(tmp_path):
    ds = load_movielens(write_ml100k(tmp_path / "ml-100k"))
    s = ds.schema
    assert s.item_ids == ("1", "2", "3", "4") and s.task_names == ("click", "like")
    assert [f.name for f in s.user_features] == ["gender", "age", "occupation"]
    assert s.user_feature("age").vocab == ("23", "24", "53") and s.user_feature("occupation").vocab == ("other", "technician", "writer")
    genres, year = s.item_feature("genres"), s.item_feature("year")
    assert genres.filterable and year.filterable
    assert [genres.vocab[v] for v in ds.items.columns["genres"].row(0)] == ["Animation", "Children's", "Comedy"]
    assert ds.items.columns["genres"].row(3).size == 0  # 'unknown' is no genre
    assert [year.vocab[ds.items.columns["year"].row(r)[0]] for r in range(4)] == ["1995", "1995", "1998", "1996"]
    assert len(ds.interactions) == 10 and ds.interactions.labels["like"].sum() == 6
    ds.validate()


def test_ml100k_without_genre_file_and_bad_rows(tmp_path):
    ds = load_movielens(write_ml100k(tmp_path / "a", genre_file=False))
    assert "Animation" in ds.schema.item_feature("genres").vocab
    root = write_ml100k(tmp_path / "b", extra_data=["3\t2\tfive\t878545000"])
    with pytest.raises(ValueError, match=r"u\.data:11: column 'rating' must be a number, got 'five'"):
        load_movielens(root)
    root = write_ml100k(tmp_path / "c")
    (root / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||http://x|0|1\n")
    with pytest.raises(ValueError, match=r"u\.item:1: expected 24 fields, got 7"):
        load_movielens(root)
    (root / "u.item").unlink()
    with pytest.raises(FileNotFoundError, match=r"u\.item: not found; expected ml-100k movies"):
        load_movielens(root)


def test_ml10m_is_ml1m_without_users(tmp_path):
    root = write_ml1m(tmp_path / "ml-10M100K", extra_rating_lines=["3::10::4.5::978304000"])
    (root / "users.dat").unlink()
    (root / "movies.dat").write_text("1::Toy Story (1995)::Adventure|Animation\n2::Jumanji (1995)::Adventure\n"
                                     "3::Amélie (2001)::Comedy|Romance\n10::Heat (1995)::(no genres listed)\n"
                                     "20::Money Train (1995)::Action\n", encoding="utf-8")
    ds = load_movielens(root)
    assert ds.schema.user_features == () and ds.users.num_rows == 3  # the rating users, no table
    assert ds.interactions.labels["like"].sum() == 7  # 4.5 >= 4 counts
    assert ds.schema.item_feature("genres").vocab == ("Action", "Adventure", "Animation", "Comedy", "Romance")
    assert ds.items.columns["genres"].row(3).size == 0


@pytest.mark.parametrize("release", ["ml-20m", "ml-25m", "ml-32m", "ml-latest", "ml-latest-small"])
def test_csv_releases(tmp_path, release):
    root = tmp_path / release
    root.mkdir()
    (root / "movies.csv").write_text('movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
                                     '2,"Amélie (Fabuleux destin d\'Amélie Poulain, Le) (2001)",Comedy|Romance\n'
                                     "3,Untitled,(no genres listed)\n", encoding="utf-8")
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,4.5,964981247\n"
                                      "1,3,0.5,964982224\n2,3,3.0,1445714835\n2,1,5.0,1445714900\n2,2,2.5,1445715000\n")
    (root / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n")  # ignored
    (root / "tags.csv").write_text("userId,movieId,tag,timestamp\n2,1,pixar,1445714994\n")  # ignored
    ds = load_movielens(root)
    assert ds.schema.item_ids == ("1", "2", "3") and ds.schema.user_features == ()
    year = ds.schema.item_feature("year")
    assert [year.vocab[ds.items.columns["year"].row(r)[0]] for r in range(3)] == ["1995", "2001", "unknown"]
    assert len(ds.interactions) == 6
