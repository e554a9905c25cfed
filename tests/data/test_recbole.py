"""RecBole atomic files (NAME.inter / .item / .user, ``field:type`` headers) on tiny fixtures."""
import numpy as np
import pytest

from silverrec.data import load_recbole

INTER = ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
         "u1\tToy Story (1995)\t5\t978300760", "u1\tHeat (1995)\t3\t978300761", "u1\tAmélie (2001)\t4.5\t978300762",
         "u1\tHeat (1995)\t2\t978300700",  # a repeat, earlier in time
         "u2\tToy Story (1995)\t4\t100", "u2\tAmélie (2001)\t1\t300", "u2\tHeat (1995)\t5\t200",
         "u3\tAmélie (2001)\t5\t10", "u3\tToy Story (1995)\t2\t20", "u3\tHeat (1995)\t4\t30"]
ITEM = ["item_id:token\tgenre:token_seq\trelease_year:float\tscores:float_seq\tlabel:token",
        "Toy Story (1995)\tAnimation Children's Comedy\t1995.0\t0.5 1\tAnimation Children's",
        "Heat (1995)\tAction Crime\t1995\t\t",
        "Amélie (2001)\tComedy Romance\t2001\t2.25\tx",
        "Never Rated (1990)\t\t1990\t3\ty"]  # no interaction: stays in the catalogue
USER = ["user_id:token\tage:float\tgender:token", "u1\t25\tF", "u2\t56\tM", "u3\t1\tF", "u4\t18\tM"]


def write(root, name="ml-tiny", inter=INTER, item=ITEM, user=USER, newline="\n"):
    root.mkdir(exist_ok=True)
    for ext, lines in (("inter", inter), ("item", item), ("user", user)):
        if lines is not None:
            (root / f"{name}.{ext}").write_bytes((newline.join(lines) + newline).encode("utf-8"))
    return root


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_all_three_files(tmp_path, newline):
    ds = load_recbole(write(tmp_path / "d", newline=newline))  # name: the folder's only .inter
    s = ds.schema
    assert s.item_ids == ("Toy Story (1995)", "Heat (1995)", "Amélie (2001)", "Never Rated (1990)")  # file order
    assert s.task_names == ("click", "like")
    assert [f.name for f in s.item_features] == ["item_id", "genre", "release_year", "scores", "label"]
    genre = s.item_feature("genre")
    assert genre.max_length == 3 and genre.filterable
    assert [genre.vocab[v] for v in ds.items.columns["genre"].row(0)] == ["Animation", "Children's", "Comedy"]
    assert ds.items.columns["genre"].row(3).size == 0
    year = s.item_feature("release_year")
    assert year.vocab == ("1990", "1995", "2001")  # 1995.0 and 1995 are one value
    assert s.item_feature("scores").vocab == ("0.5", "1", "2.25", "3")
    label = s.item_feature("label")  # a token keeps its spaces
    assert label.vocab[ds.items.columns["label"].row(0)[0]] == "Animation Children's"
    assert [f.name for f in s.user_features] == ["age", "gender"] and ds.users.num_rows == 4
    it = ds.interactions
    assert len(it) == 10 and it.labels["like"].sum() == 6  # 4.5 >= 4
    first = it.user == 0  # u1 in time order: the earlier Heat first
    assert [s.item_ids[i] for i in it.item[first]] == ["Heat (1995)", "Toy Story (1995)", "Heat (1995)", "Amélie (2001)"]
    ds.validate()


def test_only_inter_no_rating_no_timestamp(tmp_path):
    inter = ["user_id:token\titem_id:token", "b\t2", "a\t10", "b\t10", "a\t2", "a\t3"]
    ds = load_recbole(write(tmp_path / "d", name="x", inter=inter, item=None, user=None), name="x",
                      required_splits=["train"])
    assert ds.schema.task_names == ("click",) and ds.schema.user_features == ()
    assert ds.schema.item_ids == ("10", "2", "3") and len(ds.schema.item_features) == 1
    a = ds.interactions.user == 0  # file order is the time order
    assert ds.interactions.item[a].tolist() == [0, 1, 2]


def test_selected_fields_and_no_like(tmp_path):
    ds = load_recbole(write(tmp_path / "d"), name="ml-tiny", item_fields=["genre"], user_fields=[],
                      filterable=["genre"], min_rating_for_like=None)
    assert [f.name for f in ds.schema.item_features] == ["item_id", "genre"] and ds.schema.user_features == ()
    assert ds.schema.task_names == ("click",)
    with pytest.raises(ValueError, match=r"item_fields names unknown field\(s\) \['year'\]; .*declares"):
        load_recbole(write(tmp_path / "e"), item_fields=["year"])


def test_unknown_items_and_users(tmp_path):
    root = write(tmp_path / "d", inter=INTER + ["u9\tHeat (1995)\t4\t5", "u1\tNope\t4\t6"])
    with pytest.warns(UserWarning) as warned:
        ds = load_recbole(root)
    assert len(ds.interactions) == 10
    assert any("dropped 1 interaction(s) referencing unknown item_id" in str(w.message) for w in warned)
    assert any("dropped 1 interaction(s) referencing unknown user_id" in str(w.message) for w in warned)
    with pytest.raises(ValueError, match=r"1 interaction\(s\) reference unknown item_id"):
        load_recbole(root, on_unknown="error")


@pytest.mark.parametrize("ext,lines,match", [
    ("inter", ["user_id\titem_id:token", "a\tb"], r"d\.inter:1: field 1 'user_id' is not name:type"),
    ("inter", ["user_id:token\titem_id:tokens", "a\tb"], r"d\.inter:1: field 'item_id' has unknown type 'tokens'"),
    ("inter", ["user_id:token\tuser_id:token", "a\tb"], r"d\.inter:1: field 'user_id' is declared twice"),
    ("inter", ["user:token\titem_id:token", "a\tb"], r"d\.inter:1: no 'user_id' field"),
    ("inter", ["user_id:token\titem_id:token\trating:float", "a\tb\t4", "a\tc\tgood"],
     r"d\.inter:3: field 'rating' \(float\) must hold numbers, got 'good'"),
    ("inter", ["user_id:token\titem_id:token\trating:float", "a\tb\t4", "a\tc"], r"d\.inter:3: expected 3 fields, got 2"),
    ("inter", ["user_id:token\titem_id:token", "a\tb", "\tc"], r"d\.inter:3: field 'user_id' is empty"),
    ("item", ["item_id:token\tv:float_seq", "b\t1 2", "c\t3 x"], r"d\.item:3: field 'v' \(float_seq\) must hold numbers, got 'x'"),
    ("item", ["item_id:token\tg:token", "b\tx", "b\ty"], r"d\.item:3: field 'item_id': 'b' already appeared at line 2"),
    ("user", ["id:token\tg:token", "a\tx"], r"d\.user:1: no 'user_id' field"),
])
def test_errors_name_file_line_and_field(tmp_path, ext, lines, match):
    root = tmp_path / "d"
    root.mkdir()
    (root / "d.inter").write_text("user_id:token\titem_id:token\na\tb\na\tc\na\td\n")
    (root / f"d.{ext}").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=match):
        load_recbole(root, required_splits=["train"])


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: not found; expected a folder of RecBole atomic files"):
        load_recbole(tmp_path / "nowhere")
    root = write(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match=r"other\.inter: not found; expected RecBole interactions"):
        load_recbole(root, name="other")


def test_fractional_timestamps_keep_their_order(tmp_path):
    inter = ["user_id:token\titem_id:token\ttimestamp:float", "a\tx\t2.5", "a\ty\t1.25", "a\tz\t2.0"]
    ds = load_recbole(write(tmp_path / "d", name="f", inter=inter, item=None, user=None), required_splits=["train"])
    assert [ds.schema.item_ids[i] for i in ds.interactions.item] == ["y", "z", "x"]
    assert np.all(np.diff(ds.interactions.timestamp) > 0)
