"""Generic Parquet/CSV tables loader."""
import numpy as np
import pandas as pd
import pytest

from silverrec.data import load_tables
from silverrec.schema import TaskKind

EVENTS = pd.DataFrame({
    "user_id": ["u2", "u1", "u1", "u1", "u2", "u2", "u1", "u2", "u9"],
    "item_id": [30, 10, 20, 30, 10, 20, 40, 40, 10],
    "timestamp": [500, 300, 100, 200, 400, 600, 250, 700, 10],
    "like": [1, 0, 1, 1, 0, 1, 0, 1, 1],
    "watch": [0.5, 1.0, 0.25, 0.0, 1.0, 0.75, 0.5, 1.0, 1.0],
})
ITEMS = pd.DataFrame({
    "item_id": [40, 10, 20, 30, 50],  # catalogue order; 50 never interacted with
    "genre": ["drama", "comedy", "drama", "news", "comedy"],
    "tags": ["a|b", "b", "", "c|a|c", "d"],
})
USERS = pd.DataFrame({"user_id": ["u1", "u2", "u3", "u9"], "country": ["de", "us", "us", "fr"]})


def _write(df, path):
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    return path


@pytest.mark.parametrize("ext", [".csv", ".parquet", ".tsv"])
def test_load_tables(tmp_path, ext):
    ev, it, us = (_write(df, tmp_path / f"{n}{ext}") for df, n in ((EVENTS, "ev"), (ITEMS, "it"), (USERS, "us")))
    ds = load_tables(ev, it, us)
    ds.validate()
    s = ds.schema
    assert s.item_ids == ("40", "10", "20", "30", "50")
    assert [(t.name, t.kind) for t in s.tasks] == [("click", TaskKind.BINARY), ("like", TaskKind.BINARY),
                                                  ("watch", TaskKind.REGRESSION)]
    assert s.item_feature("tags").vocab == ("a", "b", "c", "d") and s.item_feature("tags").max_length == 2
    assert s.item_feature("tags").filterable and s.item_feature("genre").filterable
    tags = ds.items.columns["tags"]
    assert [s.item_feature("tags").vocab[v] for v in tags.row(3)] == ["c", "a"]  # deduplicated, in order
    assert tags.row(2).size == 0  # empty cell -> no value
    assert [f.name for f in s.user_features] == ["country"] and not s.user_feature("country").filterable
    assert ds.users.num_rows == 4  # u3 has no interactions but keeps its row
    inter = ds.interactions
    assert len(inter) == 9 and np.all(inter.labels["click"] == 1)
    # u1 (row 0) in time order: 20 (100), 30 (200), 40 (250), 10 (300)
    assert [s.item_ids[i] for i in inter.item[inter.user == 0]] == ["20", "30", "40", "10"]
    assert inter.labels["watch"][inter.user == 0].tolist() == [0.25, 0.0, 0.5, 1.0]
    assert 2 not in inter.user  # u3
    u9 = np.flatnonzero(inter.user == 3)
    assert np.isin(u9, ds.split.train).all()  # a single interaction stays in train
    assert [s.item_ids[i] for i in inter.item[ds.split.test]] == ["10", "40"]


def test_without_user_table_and_list_columns(tmp_path):
    items = ITEMS.assign(tags=[["a", "b"], ["b"], [], ["c", "a"], None])
    ev = _write(EVENTS[["user_id", "item_id", "timestamp"]], tmp_path / "ev.parquet")
    ds = load_tables(ev, _write(items, tmp_path / "it.parquet"), filterable=["genre"])
    assert ds.schema.user_features == () and ds.users.num_rows == 3  # u1, u2, u9 sorted
    assert ds.schema.task_names == ("click",)
    assert ds.schema.item_feature("tags").vocab == ("a", "b", "c") and not ds.schema.item_feature("tags").filterable
    assert ds.items.columns["tags"].row(4).size == 0


def test_parquet_datetime_timestamps(tmp_path):
    ev = EVENTS.assign(timestamp=pd.to_datetime(EVENTS["timestamp"], unit="s"))
    ds = load_tables(_write(ev, tmp_path / "ev.parquet"), _write(ITEMS, tmp_path / "it.csv"))
    assert ds.interactions.timestamp.dtype == np.int64
    assert sorted(ds.interactions.timestamp.tolist()) == sorted(EVENTS["timestamp"].tolist())


def test_unknown_items_and_users(tmp_path):
    ev = _write(pd.concat([EVENTS, pd.DataFrame({"user_id": ["u1", "zz"], "item_id": [99, 10], "timestamp": [1, 2],
                                                  "like": [0, 0], "watch": [0.0, 0.0]})]), tmp_path / "ev.csv")
    it, us = _write(ITEMS, tmp_path / "it.csv"), _write(USERS, tmp_path / "us.csv")
    with pytest.warns(UserWarning) as rec:
        ds = load_tables(ev, it, us)
    msgs = [str(r.message) for r in rec]
    assert any("dropped 1 interaction(s) referencing unknown item_id" in m for m in msgs)
    assert any("dropped 1 interaction(s) referencing unknown user_id" in m for m in msgs)
    assert len(ds.interactions) == 9
    with pytest.raises(ValueError, match=r"1 interaction\(s\) reference unknown item_id"):
        load_tables(ev, it, us, on_unknown="error")
    with pytest.raises(ValueError, match="on_unknown must be 'drop' or 'error', got 'skip'"):
        load_tables(ev, it, us, on_unknown="skip")


def test_malformed_rows(tmp_path):
    it = _write(ITEMS, tmp_path / "it.csv")
    ev = tmp_path / "ev.csv"
    ev.write_text("user_id,item_id,timestamp\nu1,10,5\nu1,20,soon\n")
    with pytest.raises(ValueError, match=r"ev\.csv:3: column 'timestamp' must be an integer, got 'soon' in row 'u1,20,soon'"):
        load_tables(ev, it)
    ev.write_text("user_id,item_id,timestamp\nu1,10,5\n,20,6\n")
    with pytest.raises(ValueError, match=r"ev\.csv:3: column 'user_id' is empty"):
        load_tables(ev, it)
    ev.write_text("user_id,item_id,timestamp,like\nu1,10,5,1\nu1,20,6,3\n")
    with pytest.raises(ValueError, match=r"ev\.csv:3: label 'like' must be in \[0, 1\], got 3.0"):
        load_tables(ev, it)
    bad_items = tmp_path / "bad.csv"
    bad_items.write_text("item_id,genre\n10,drama\n20\n")
    with pytest.raises(ValueError, match=r"bad\.csv:3: expected 2 fields, got 1: '20'"):
        load_tables(ev, bad_items)
    bad_items.write_text("item_id,genre\n10,drama\n10,news\n")
    with pytest.raises(ValueError, match=r"bad\.csv:3: item_id '10' already appeared at line 2"):
        load_tables(ev, bad_items)
    pq = _write(EVENTS.assign(timestamp=EVENTS["timestamp"].astype(str).where(EVENTS.index != 4, "x")),
                tmp_path / "ev.parquet")
    with pytest.raises(ValueError, match=r"ev\.parquet: row 4: column 'timestamp' must be an integer, got 'x'"):
        load_tables(pq, it)
    (tmp_path / "ev.json").write_text("{}")
    with pytest.raises(ValueError, match=r"unsupported extension '\.json'"):
        load_tables(tmp_path / "ev.json", it)
    with pytest.raises(ValueError, match=r"lacks required column\(s\) \['timestamp'\]"):
        load_tables(_write(EVENTS[["user_id", "item_id"]], tmp_path / "nt.csv"), it)
    with pytest.raises(ValueError, match=r"filterable names unknown attribute\(s\) \['colour'\]"):
        load_tables(_write(EVENTS, tmp_path / "ok.csv"), it, filterable=["colour"])


def test_missing_files_and_empty_split(tmp_path):
    it = _write(ITEMS, tmp_path / "it.csv")
    with pytest.raises(FileNotFoundError, match=r"nope\.csv: not found; expected an interactions table"):
        load_tables(tmp_path / "nope.csv", it)
    ev = _write(EVENTS, tmp_path / "ev.csv")
    with pytest.raises(FileNotFoundError, match=r"items\.parquet: not found; expected an item table"):
        load_tables(ev, tmp_path / "items.parquet")
    with pytest.raises(FileNotFoundError, match=r"u\.csv: not found; expected a user table"):
        load_tables(ev, it, tmp_path / "u.csv")
    short = _write(EVENTS.iloc[:2], tmp_path / "short.csv")
    with pytest.raises(ValueError, match="split 'train' is empty|split 'valid' is empty"):
        load_tables(short, it)
    assert load_tables(short, it, required_splits=()).split.valid.size == 0


def test_unreadable_files_are_named(tmp_path):
    """A zero-byte file, an unterminated quote (in the header's block or far below it, where the
    csv module reports "field larger than field limit") and a directory: each error names the file."""
    ev, it = _write(EVENTS, tmp_path / "ev.csv"), _write(ITEMS, tmp_path / "it.csv")
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.csv: the file is empty; expected a header line"):
        load_tables(ev, tmp_path / "empty.csv")
    with pytest.raises(ValueError, match=r"empty\.csv: the file is empty"):
        load_tables(tmp_path / "empty.csv", it)
    near = tmp_path / "near.csv"
    near.write_text('item_id,genre,tags\n40,"drama,a\n10,comedy,b\n')
    with pytest.raises(ValueError, match=r"near\.csv: .*EOF inside string.*unterminated quote"):
        load_tables(ev, near)
    rows = "".join(f"{i},g,t\n" for i in range(60_000))  # past the header's parse block
    far = tmp_path / "far.csv"
    far.write_text("item_id,genre,tags\n" + rows + '7,"open\n' + "x" * 200_000 + "\n")
    with pytest.raises(ValueError, match=r"far\.csv:60002: cannot parse the row starting on this line: "
                                         r"field larger than field limit .*unterminated quote.*'7,\"open'"):
        load_tables(ev, far)
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(IsADirectoryError, match=r"dir\.csv: is a directory, not a file; expected an item table"):
        load_tables(ev, tmp_path / "dir.csv")
    with pytest.raises(IsADirectoryError, match=r"dir\.csv: is a directory, not a file; expected an interactions"):
        load_tables(tmp_path / "dir.csv", it)


def test_read_checked_names_the_file_without_a_header(tmp_path):
    from silverrec.data._loading import read_checked

    (tmp_path / "ratings.dat").write_bytes(b"")
    with pytest.raises(ValueError, match=r"ratings\.dat: the file is empty \(0 bytes\); expected lines of 2 fields"):
        read_checked(tmp_path / "ratings.dat", ["a", "b"], {"a": "int"}, header=False)
    (tmp_path / "q.csv").write_text('1,2\n3,"4\n' + "y" * 200_000 + "\n")
    with pytest.raises(ValueError, match=r"q\.csv:2: cannot parse the row .*unterminated quote"):
        read_checked(tmp_path / "q.csv", ["a", "b"], {}, header=False)
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match=r"d: is a directory, not a file"):
        read_checked(tmp_path / "d", ["a"], {})
