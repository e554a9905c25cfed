"""Item updates as a log, all or nothing (issue 16, part 4): snapshot + write-ahead log, a torn
last record dropped, a failed persist applied nowhere, index_version that survives a restart."""
import errno
import json
import os
import random

import pytest
from starlette.testclient import TestClient

from silverrec.serve import Retriever
from silverrec.serve import update_log
from silverrec.serve.http import ServerConfig, ServingApp
from silverrec.serve.update_log import UpdateLog, UpdateState, encode_record, log_path, read_snapshot

VERSION = "930becfbd45ed218"


def _published(x):
    return x.startswith("i")


def _open(path, **kw):
    return UpdateLog(str(path), VERSION, **kw).open(known=_published, has_row=_published)


def _upsert(seq, item, **attrs):
    return {"seq": seq, "op": "upsert", "items": [{"item_id": item, "attributes": {k: [v] for k, v in attrs.items()}}]}


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# --- the files, without a model -------------------------------------------------------------------

def test_log_round_trip_and_torn_last_record(tmp_path, caplog):
    path = tmp_path / "updates.json"
    log = UpdateLog(str(path), VERSION)
    assert log.open(_published, _published) == ({"new_ids": [], "upserts": {}, "deleted": []}, 0)
    assert read_snapshot(str(path))["seq"] == 0  # the snapshot exists from the first start
    log.append(_upsert(1, "new-1", language="en"))
    log.append({"seq": 2, "op": "delete", "item_ids": ["i000001"]})
    log.append(_upsert(3, "new-2", language="fr"))
    log.close()
    with open(log_path(str(path)), "ab") as fh:  # a crash in the middle of the 4th record's write
        fh.write(encode_record(_upsert(4, "new-3", language="de"))[:-7])
    with caplog.at_level("WARNING"):
        state, seq = _open(path)
    assert seq == 3 and state["new_ids"] == ["new-1", "new-2"] and state["deleted"] == ["i000001"]
    assert any("line 4" in m and "dropping it" in m for m in caplog.messages)
    assert open(log_path(str(path)), "rb").read().count(b"\n") == 3  # cut off the file
    # a record with a bad checksum as the last line is torn too; before the last, it is corruption
    with open(log_path(str(path)), "r+b") as fh:
        data = fh.read()
        fh.seek(data.index(b'"fr"') + 1)
        fh.write(b"X")
    state, seq = _open(path)
    assert seq == 2 and state["new_ids"] == ["new-1"]
    lines = open(log_path(str(path)), "rb").read()
    with open(log_path(str(path)), "wb") as fh:
        fh.write(lines.replace(b'"en"', b'"eX"') + encode_record(_upsert(3, "new-2", language="fr")))
    with pytest.raises(ValueError, match=r"line 1: checksum mismatch; the log is corrupted before its last record"):
        _open(path)


def test_compaction_snapshot_then_empty_log(tmp_path):
    path = tmp_path / "updates.json"
    log = UpdateLog(str(path), VERSION, compact_min_bytes=300)
    state = UpdateState(_published, _published)
    log.open(_published, _published)
    compactions = 0
    for seq in range(1, 41):
        rec = _upsert(seq, f"new-{seq % 7}", language=str(seq)) if seq % 5 else {"seq": seq, "op": "delete",
                                                                                    "item_ids": [f"i{seq}", "new-1"]}
        log.append(rec)
        state.apply(rec)
        if log.needs_compaction():
            log.compact(state.to_json(), seq)
            compactions += 1
            assert os.path.getsize(log_path(str(path))) == 0
    log.close()
    assert compactions >= 3
    assert _open(path) == (state.to_json(), 40)
    # a compaction interrupted after its snapshot: the old log's records are skipped by seq
    log = UpdateLog(str(path), VERSION)
    log.open(_published, _published)
    log.append(_upsert(41, "new-x", language="en"))
    state.apply(_upsert(41, "new-x", language="en"))
    log._write_snapshot({"artifact_version": VERSION, "seq": 41, **state.to_json()})
    log.append(_upsert(42, "new-y", language="en"))
    state.apply(_upsert(42, "new-y", language="en"))
    log.close()
    assert _open(path) == (state.to_json(), 42)


def test_failed_append_leaves_the_log_unchanged(tmp_path, monkeypatch):
    """ENOSPC at the write or at the fsync: append raises and the log keeps only durable records."""
    path = tmp_path / "updates.json"
    log = UpdateLog(str(path), VERSION)
    log.open(_published, _published)
    log.append(_upsert(1, "new-1", language="en"))
    size = os.path.getsize(log_path(str(path)))
    for target in ("pwrite", "fdatasync"):
        with monkeypatch.context() as m:
            m.setattr(update_log.os, target, _enospc)
            with pytest.raises(OSError, match="No space left"):
                log.append(_upsert(2, "new-2", language="en"))
        assert os.path.getsize(log_path(str(path))) == size
    log.append(_upsert(2, "new-3", language="en"))
    log.close()
    state, seq = _open(path)
    assert seq == 2 and state["new_ids"] == ["new-1", "new-3"]


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "must hold a JSON object"),
    ('{"artifact_version": "%s", "deleted": "i000001"}' % VERSION, "'deleted' must be a list of item ids"),
    ('{"artifact_version": "%s", "seq": -1}' % VERSION, '"seq" must be a non-negative integer'),
    ('{"artifact_version": "%s", "upserts": {"a": {"language": [true]}}}' % VERSION, r"upserts\['a'\].language"),
    ('{"artifact_version": "%s", "colour": 1}' % VERSION, r"unknown key\(s\) \['colour'\]"),
    ('{"artifact_version": "0000", "seq": 0}', "holds updates of artifact version 0000"),
    ("{", "is not valid JSON"),
])
def test_bad_snapshot_files_are_named_at_start_up(tmp_path, content, message):
    path = tmp_path / "updates.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        _open(path)


def test_a_log_without_its_snapshot_is_refused(tmp_path):
    path = tmp_path / "updates.json"
    with open(log_path(str(path)), "wb") as fh:
        fh.write(encode_record(_upsert(1, "new-1", language="en")))
    with pytest.raises(ValueError, match="exists without its snapshot"):
        _open(path)


# --- through the Retriever and HTTP ---------------------------------------------------------------

def _ids(r, **kw):
    return {x[0] for x in r.query([{}], k=20, **kw)[0]}


def test_a_failed_persist_applies_nothing(model_path, tiny_dataset, tmp_path, monkeypatch):
    ds = tiny_dataset
    path = str(tmp_path / "updates.json")
    r = Retriever(model_path, updates_path=path)
    lang = ds.schema.item_features[[f.name for f in ds.schema.item_features].index("language")].vocab[0]
    r.upsert_items([{"item_id": "kept-1", "attributes": {"language": [lang]}}])
    assert r.index_version == 1
    victim = next(iter(_ids(r)))
    before = (r.index_version, r.snapshot, _ids(r))
    with monkeypatch.context() as m:
        m.setattr(update_log.os, "fdatasync", _enospc)
        with pytest.raises(OSError, match="No space left"):
            r.upsert_items([{"item_id": "lost-1", "attributes": {"language": [lang]}}])
        with pytest.raises(OSError, match="No space left"):
            r.delete_items([victim])
        assert (r.index_version, r.snapshot, _ids(r)) == before  # served state unchanged
        assert "lost-1" not in r._updates.to_json()["new_ids"] and victim not in r._updates.deleted
    # once space returns, the next update does not carry the failed ones with it
    r.upsert_items([{"item_id": "kept-2", "attributes": {"language": [lang]}}])
    assert r.delete_items(["no-such-item"]) == 0 and r.index_version == 2  # a no-op does not move the version
    assert victim in _ids(r)
    r.close()
    again = Retriever(model_path, updates_path=path)
    assert again.index_version == 2
    assert again._updates.to_json() == r._updates.to_json()
    assert again._updates.new_ids == ["kept-1", "kept-2"] and victim in _ids(again)


def test_http_answers_503_and_serves_nothing_of_a_failed_update(model_path, tmp_path, monkeypatch):
    r = Retriever(model_path, updates_path=str(tmp_path / "updates.json"))
    server = ServingApp(r, ServerConfig())
    with TestClient(server.app) as client:
        victim = next(iter(_ids(r)))
        with monkeypatch.context() as m:
            m.setattr(update_log.os, "pwrite", _enospc)
            res = client.post("/items", json={"item_id": "new-http", "attributes": {}})
            assert res.status_code == 503 and "not applied" in res.json()["error"]
            res = client.delete(f"/items/{victim}")
            assert res.status_code == 503 and "not applied" in res.json()["error"]
        assert client.get("/healthz").json()["index_version"] == 0 and victim in _ids(r)
        assert client.delete("/items/no-such-item").status_code == 404
        assert client.post("/items", json={"item_id": "new-http", "attributes": {}}).json()["index_version"] == 1
        assert client.delete(f"/items/{victim}").json()["index_version"] == 2
    r.close()
    snap = json.load(open(tmp_path / "updates.json"))
    assert snap["seq"] == 0 and os.path.getsize(tmp_path / "updates.json.log") > 0


def test_replay_equals_the_live_state(model_path, tiny_dataset, tmp_path):
    """Random upserts and deletes (with compactions along the way): the state replayed from
    snapshot + log at start-up is the live one, and index_version survives the restart."""
    ids = list(tiny_dataset.schema.item_ids)
    path = str(tmp_path / "updates.json")
    r = Retriever(model_path, updates_path=path)
    r._log.compact_min_bytes = 2000
    rng = random.Random(0)
    for _ in range(120):
        pick = [rng.choice(ids) if rng.random() < 0.5 else f"new-{rng.randrange(30)}" for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.6:
            r.upsert_items([{"item_id": x, "attributes": {}} for x in pick])
        else:
            r.delete_items(pick)
    r.close()
    again = Retriever(model_path, updates_path=path)
    assert again.index_version == r.index_version > 0
    assert again._updates.to_json() == r._updates.to_json()
    assert again.snapshot.external == r.snapshot.external
    assert read_snapshot(path)["seq"] > 0  # compacted at least once
