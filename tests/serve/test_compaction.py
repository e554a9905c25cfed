"""Compaction: the item updates a Retriever persisted, folded into a new export's main index."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from silverrec.retrieval.serving_graph import ServingConfig
from silverrec.serve import Retriever, load_artifact
from silverrec.serve.update_log import read_state
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.export import example_users, export_serving, latest_history
from silverrec.train.trainer import load_two_tower

from tests.serve.test_export import REPO
from tests.serve.test_item_updates import _rare_combination

# every cluster probed: the answers of a re-clustered index are comparable row for row
CONFIG = ServingConfig(k=20, candidates_per_task=30, num_clusters=12, n_probe=12)
FILTERS = ["", "language:en", "NOT category:music", "category:music OR category:comedy"]


@pytest.fixture(scope="module")
def model(tiny_run):
    return load_two_tower(load_checkpoint(tiny_run["checkpoint"]))


@pytest.fixture(scope="module")
def compacted(model, tiny_dataset, tmp_path_factory):
    """Artifact A with live updates persisted (an updated, two added, a deleted added and two
    deleted published items), their answers, and artifact B compacted from them."""
    ds = tiny_dataset
    tmp = tmp_path_factory.mktemp("compaction")
    a, b, updates = str(tmp / "a.pt2"), str(tmp / "b.pt2"), str(tmp / "updates.json")
    export_serving(model, ds, CONFIG, a, {})
    r = Retriever(a, updates_path=updates)
    ids, terms = ds.schema.item_ids, ds.item_terms()
    creator, year = _rare_combination(ds)
    rare = {"creator": [creator], "year": [year], "language": ["en"]}
    top = [x[0] for x in r.query([{}], k=2)[0]]
    changed = next(x for x in ids[10:] if x not in top)
    r.upsert_items([{"item_id": changed, "attributes": {**terms[ids.index(changed)], **rare}},
                    {"item_id": "fresh-1", "attributes": rare},
                    {"item_id": "fresh-2", "attributes": {**terms[5], "language": ["xx-new"]}},
                    {"item_id": "fresh-3", "attributes": terms[6]}])
    r.delete_items([top[0], ids[1], "fresh-3"])
    users = example_users(ds, np.arange(6), latest_history(ds, np.arange(6)))
    want = {f: r.query(users, filter=f) for f in FILTERS + [f"creator:{creator} AND year:{year}"]}
    meta = export_serving(model, ds, CONFIG, b, {}, base=a, updates=updates)
    return {"a": a, "b": b, "updates": updates, "meta": meta, "want": want, "users": users, "changed": changed,
            "deleted": [top[0], ids[1]], "rare": f"creator:{creator} AND year:{year}", "retriever": r}


def _assert_same_ranking(got, want):
    """Equal values in order, equal ids except between near-tied values."""
    assert len(got) == len(want)
    g_ids, g_val = [x[0] for x in got], np.array([x[1] for x in got])
    w_ids, w_val = [x[0] for x in want], np.array([x[1] for x in want])
    np.testing.assert_allclose(g_val, w_val, rtol=1e-5, atol=1e-7)
    gaps = np.abs(np.diff(w_val)) if len(w_val) > 1 else np.zeros(0)
    tied = np.zeros(len(w_val), dtype=bool)
    tied[:-1] |= gaps < 1e-6
    tied[1:] |= gaps < 1e-6
    assert [x for x, t in zip(g_ids, tied) if not t] == [x for x, t in zip(w_ids, tied) if not t]
    assert set(g_ids) == set(w_ids) or tied.any()


def test_compacted_export_answers_like_the_updated_one(compacted, tiny_dataset):
    """Retriever(B) without updates answers as Retriever(A) with them: same top-k, deleted
    items never returned, added items retrievable and filterable, updated ones under their new
    attributes."""
    c, ds = compacted, tiny_dataset
    assert {k: c["meta"]["compaction"][k] for k in ("updated", "added", "deleted")} == {"updated": 1, "added": 2, "deleted": 2}
    b = Retriever(c["b"])
    n = ds.schema.num_items
    assert b.schema.item_ids[:n] == ds.schema.item_ids
    assert b.schema.item_ids[n:] == ("fresh-1", "fresh-2", "fresh-3")  # ids as the updates assigned them
    assert c["meta"]["num_items"] == n - 2 + 2 and c["meta"]["trained_items"] == n
    for f, want in c["want"].items():
        got = b.query(c["users"], filter=f)
        for g, w in zip(got, want):
            _assert_same_ranking(g, w)
    # filtered by the new attributes: the updated item and the added one, nothing else
    assert {x[0] for x in b.query([{}], filter=c["rare"])[0]} == {c["changed"], "fresh-1"}
    # an attribute value first seen in an update is in the new dictionary
    assert [x[0] for x in b.query([{}], filter="language:xx-new")[0]] == ["fresh-2"]
    # deleted items: never returned, still accepted in histories and exclusions
    seen = {x[0] for f in FILTERS for rows in b.query(c["users"] + [{}], filter=f) for x in rows}
    assert not seen & set(c["deleted"] + ["fresh-3"])
    assert b.query([{"history": c["deleted"]}], exclude=[c["deleted"] + ["fresh-3"]], k=3)[0]
    # added items are known ids: excluded on request, decoded in results
    assert [x[0] for x in b.query([{}], filter=c["rare"], exclude=[["fresh-1"]])[0]] == [c["changed"]]


def test_added_items_in_a_history_are_dropped(compacted):
    """The user tower has no embedding row for items added after training: a history naming
    them encodes (and answers) as the history without them."""
    b = Retriever(compacted["b"])
    history = list(compacted["users"][0]["history"])
    with_new = history[:2] + ["fresh-1"] + history[2:] + ["fresh-2"]
    assert torch.equal(b.encoder.users([{"history": with_new}]), b.encoder.users([{"history": history}]))
    assert b.query([{"history": with_new}], k=5) == b.query([{"history": history}], k=5)


def test_live_updates_on_a_compacted_export(compacted, tmp_path):
    """Re-upserting a compacted-in item embeds it as before; a deleted item can be added again;
    new ids continue past the compacted vocabulary; A's updates file is refused, naming the way out."""
    c = compacted
    b = Retriever(c["b"], updates_path=str(tmp_path / "b_updates.json"))
    before = b.query([{}], filter=c["rare"])[0]
    b.upsert_items([{"item_id": "fresh-1", "attributes": c["retriever"]._updates.attributes["fresh-1"]}])
    _assert_same_ranking(b.query([{}], filter=c["rare"])[0], before)
    rare = c["retriever"]._updates.attributes["fresh-1"]
    b.upsert_items([{"item_id": "fresh-9", "attributes": rare}, {"item_id": c["deleted"][0], "attributes": rare}])
    assert b.snapshot.extra_ids == {"fresh-9": len(b.schema.item_ids)}
    assert {x[0] for x in b.query([{}], filter=c["rare"])[0]} == {c["changed"], "fresh-1", "fresh-9", c["deleted"][0]}
    assert b.delete_items(["fresh-3", c["deleted"][1]]) == 0  # known ids, but not in the index
    assert b.delete_items(["fresh-1"]) == 1
    assert {x[0] for x in b.query([{}], filter=c["rare"])[0]} == {c["changed"], "fresh-9", c["deleted"][0]}
    with pytest.raises(ValueError, match="base="):
        Retriever(c["b"], updates_path=c["updates"])


def test_bad_updates_files_are_named(compacted, model, tiny_run, tiny_dataset, tmp_path):
    c, ds = compacted, tiny_dataset
    known = set(ds.schema.item_ids)  # the base is the first export: every published item has a row
    saved, _ = read_state(c["updates"], known=known.__contains__, has_row=known.__contains__)  # snapshot + log

    def export(updates, m=model, base=c["a"]):
        path = tmp_path / "u.json"
        path.write_text(updates if isinstance(updates, str) else json.dumps(updates))
        export_serving(m, ds, CONFIG, str(tmp_path / "x.pt2"), {}, base=base, updates=str(path))

    with pytest.raises(ValueError, match="not valid JSON"):
        export('{"artifact_version": ')
    with pytest.raises(ValueError, match="unknown key.*'upsert'"):
        export({**saved, "upsert": {}})
    with pytest.raises(ValueError, match='"upserts" must be an object'):
        export({**saved, "upserts": ["x"]})
    with pytest.raises(ValueError, match=r"upserts\['fresh-1'\].*shoe_size"):
        export({**saved, "upserts": {**saved["upserts"], "fresh-1": {"shoe_size": ["9"]}}})
    with pytest.raises(ValueError, match=r"upserts\['nobody'\].*new_ids"):
        export({**saved, "upserts": {"nobody": {"language": ["en"]}}})
    with pytest.raises(ValueError, match="deleted item 'nobody'"):
        export({**saved, "deleted": ["nobody"]})
    with pytest.raises(ValueError, match="artifact version 0123.*give the artifact"):
        export({**saved, "artifact_version": "0123"})
    with pytest.raises(ValueError, match="artifact version"):  # B's own updates are not A's
        export(saved, base=c["b"])
    other = load_two_tower(load_checkpoint(tiny_run["checkpoint"]))
    with torch.no_grad():
        next(other.item_tower.parameters()).add_(0.5)
    with pytest.raises(ValueError, match="another model"):
        export(saved, m=other)
    with pytest.raises(ValueError, match="needs base="):
        export_serving(model, ds, CONFIG, str(tmp_path / "x.pt2"), {}, updates=c["updates"])
    assert not (tmp_path / "x.pt2").exists()


def test_cli_compacts_a_compacted_export(compacted, tiny_run, tiny_dataset, tmp_path):
    """``silverrec-export base=B updates=...`` on an already compacted B keeps A's changes and
    folds B's; it prints what it folded."""
    c, ds = compacted, tiny_dataset
    updates = str(tmp_path / "b_updates.json")
    b = Retriever(c["b"], updates_path=updates)
    b.upsert_items([{"item_id": "fresh-4", "attributes": {"language": ["xx-new"]}}])
    b.delete_items(["fresh-2"])
    out = tmp_path / "c.pt2"
    res = subprocess.run(
        [sys.executable, "-m", "silverrec.train.export", f"ckpt_path={tiny_run['checkpoint']}", "serving.k=20",
         "serving.candidates_per_task=30", "serving.num_clusters=12", "serving.n_probe=12", "aoti=false",
         f"base={c['b']}", f"updates={updates}", f"output={out}", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "folded 0 updated, 1 added and 1 deleted items" in res.stdout
    r = Retriever(str(out))
    assert r.schema.item_ids[ds.schema.num_items:] == ("fresh-1", "fresh-2", "fresh-3", "fresh-4")
    assert [x[0] for x in r.query([{}], filter="language:xx-new")[0]] == ["fresh-4"]
    assert {x[0] for x in r.query([{}], filter=c["rare"])[0]} == {c["changed"], "fresh-1"}
    seen = {x[0] for f in FILTERS for rows in r.query(c["users"], filter=f) for x in rows}
    assert not seen & set(c["deleted"] + ["fresh-2", "fresh-3"])
    _, meta = load_artifact(str(out))
    assert meta["compaction"]["base_version"] == b.version


def test_serve_cli_takes_an_updates_file():
    from silverrec.serve.http import _parse_args

    assert _parse_args(["--model", "m.pt2", "--updates", "u.json"]).updates == "u.json"
    assert _parse_args(["--model", "m.pt2"]).updates is None
