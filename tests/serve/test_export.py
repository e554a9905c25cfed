"""Export -> load in a fresh process -> the same results as the eager serving graph (parity)."""
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from silverrec.retrieval.publish import publish
from silverrec.retrieval.serving_graph import ServingConfig
from silverrec.serve import Retriever, load_artifact
from silverrec.serve.aoti import aoti_usable, available_cores, vector_isa
from silverrec.serve.integrity import IntegrityError
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.export import example_users, export_serving, latest_history, publish_item_embeddings
from silverrec.train.trainer import load_two_tower

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# bfloat16 probe scores: the exported graph runs ivf_probe_scores (the other serving tests export float32)
CONFIG = ServingConfig(k=20, candidates_per_task=30, num_clusters=12, probe_precision="bfloat16")


@pytest.fixture(scope="module")
def exported(tiny_run, tiny_dataset, tmp_path_factory):
    payload = load_checkpoint(tiny_run["checkpoint"])
    model = load_two_tower(payload)
    path = str(tmp_path_factory.mktemp("export") / "serving.pt2")
    meta = export_serving(model, tiny_dataset, CONFIG, path, {"step": payload["step"]})
    return {"path": path, "meta": meta, "model": model}


def _requests(ds, n):
    users = np.arange(n) % ds.users.num_rows
    return example_users(ds, users, latest_history(ds, users))


def test_fresh_process_parity_with_the_eager_graph(exported, tiny_dataset, tmp_path):
    """A new interpreter that imports only silverrec returns what the eager graph built from the
    training modules returns (ids, values and OverArch/Value Model task scores)."""
    ds = tiny_dataset
    r = Retriever(exported["path"])
    reqs = _requests(ds, 12)
    filters = ["", "language:en", "NOT category:music", "category:music OR category:comedy"] * 3
    exclude = [u["history"][:5] for u in reqs]
    args = (r.encoder.users(reqs), *r.encoder.filters(filters, 12), r.encoder.exclude(exclude, 12))
    items = publish_item_embeddings(exported["model"], ds)
    graph = publish(exported["model"], ds.schema, items, ds.item_terms(), CONFIG)
    with torch.no_grad():
        want = graph(*args, *r.fresh_index)
    torch.save(args, tmp_path / "req.pt")
    script = (
        "import sys, torch\n"
        "from silverrec.serve import Retriever\n"
        "r = Retriever(sys.argv[1])\n"
        "out = r.search(*torch.load(sys.argv[2]))\n"
        "torch.save({'out': out, 'version': r.version}, sys.argv[3])\n"
    )
    subprocess.run([sys.executable, "-c", script, exported["path"], str(tmp_path / "req.pt"), str(tmp_path / "out.pt")],
                   check=True, cwd=str(tmp_path), timeout=300)
    got = torch.load(tmp_path / "out.pt")
    assert got["version"] == exported["meta"]["version"]
    ids, value, scores, num_valid = got["out"]
    assert torch.equal(num_valid, want[3])
    assert (ids == want[0]).float().mean() > 0.99  # equal up to float ties
    torch.testing.assert_close(value, want[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scores, want[2], rtol=1e-5, atol=1e-7)


def test_query_with_external_ids_and_dynamic_batch(exported, tiny_dataset):
    r = Retriever(exported["path"])
    assert r.tasks == list(tiny_dataset.schema.task_names)
    for b in (1, 3, 17):
        reqs = _requests(tiny_dataset, b)
        res = r.query(reqs, filter="language:en", exclude=[u["history"] for u in reqs], k=7)
        assert len(res) == b
        for u, rows in zip(reqs, res):
            assert 0 < len(rows) <= 7
            assert not {item for item, _, _ in rows} & set(u["history"])
            values = [v for _, v, _ in rows]
            assert values == sorted(values, reverse=True)
            assert set(rows[0][2]) == set(r.tasks)
            for item, _, _ in rows:
                row = tiny_dataset.schema.item_ids.index(item)
                assert tiny_dataset.item_terms()[row]["language"] == ["en"]
    assert r.query([{}], k=3)[0]  # a user with no features still gets results


def test_bad_requests_are_named(exported):
    r = Retriever(exported["path"])
    with pytest.raises(ValueError, match="country"):
        r.query([{"country": "atlantis"}])
    with pytest.raises(ValueError, match="unknown feature"):
        r.query([{"shoe_size": 3}])
    with pytest.raises(ValueError, match="history"):
        r.query([{"history": ["no-such-item"]}])
    with pytest.raises(ValueError, match=r"exclude\[0\]\[0\] must be an item id"):
        r.query([{}], exclude=[[None]])
    # an unknown excluded id is ignored (counted by encoder.exclusions), not an error
    assert r.query([{}], exclude=[["no-such-item"]], k=3) == r.query([{}], k=3)
    assert r.encoder.exclusions([["no-such-item", r.schema.item_ids[0]], []], 2).ignored == [1, 0]
    with pytest.raises(ValueError, match="column"):
        r.query([{}], filter="language:en AND (")
    with pytest.raises(ValueError, match="k must be"):
        r.query([{}], k=1000)
    user_ids = r.encoder.users([{}])
    user_ids[0, 0] = 10**6
    with pytest.raises(ValueError, match="outside"):
        r.search(user_ids, *r.encoder.filters(None, 1), r.encoder.exclude(None, 1))


def test_broken_files_fail_clearly(exported, tmp_path):
    data = open(exported["path"], "rb").read()
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_artifact(str(truncated))
    with pytest.raises(FileNotFoundError):
        load_artifact(str(tmp_path / "missing.pt2"))


def test_export_cli_writes_one_file_with_the_aoti_graph(tiny_run, tiny_dataset, tmp_path):
    """``silverrec-export`` (AOTInductor on by default) writes one file; the compiled graph gives
    the torch.export program's results, with item updates, at several batch and exclusion sizes
    (bfloat16 probe scores: the compiled graph calls ivf_probe_scores as well)."""
    out = tmp_path / "cli.pt2"
    res = subprocess.run(
        [sys.executable, "-m", "silverrec.train.export", f"ckpt_path={tiny_run['checkpoint']}", "serving.k=5",
         "serving.num_clusters=10", "serving.probe_precision=bfloat16", f"output={out}", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "exported" in res.stdout and out.is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    _, meta = load_artifact(str(out))
    assert meta["k"] == 5 and meta["num_items"] > 0 and meta["kind"] == "retrieval_graph"
    assert meta["aoti"]["programs"] == ["model"] and meta["aoti"]["isa"] == vector_isa()
    assert meta["aoti"]["threads"] == available_cores()  # not the caller's torch.get_num_threads()
    compiled, plain = Retriever(str(out)), Retriever(str(out), backend="export")
    assert (compiled.backend, plain.backend) == ("aoti", "export")
    ds = tiny_dataset
    ids = ds.schema.item_ids
    for r in (compiled, plain):  # the same updates: a changed item, a new one, a deleted one
        r.upsert_items([{"item_id": ids[0], "attributes": ds.item_terms()[1]},
                        {"item_id": "new-item", "attributes": ds.item_terms()[2]}])
        r.delete_items([ids[3]])
    filters = ["", "language:en", "NOT category:music", "category:music OR category:comedy"]
    for b, width in ((1, 1), (5, 3), (17, 9)):
        reqs = _requests(ds, b)
        args = (compiled.encoder.users(reqs), *compiled.encoder.filters([filters[i % 4] for i in range(b)], b),
                compiled.encoder.exclude([u["history"][:width] for u in reqs], b))
        got, want = compiled.search(*args), plain.search(*args)
        assert torch.equal(got[3], want[3]) and torch.equal(got[0], want[0])
        torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got[2], want[2], rtol=1e-4, atol=1e-6)
    got, want = compiled.query(_requests(ds, 2), k=3), plain.query(_requests(ds, 2), k=3)
    assert [[item for item, _, _ in rows] for rows in got] == [[item for item, _, _ in rows] for rows in want]
    # a corrupted AOTInductor library is refused at load, naming its entry (issue 16, part 3)
    with zipfile.ZipFile(out) as z:
        lib = next(i for i in z.infolist() if i.filename.endswith(".so"))
    bad = tmp_path / "bad_so.pt2"
    shutil.copy(out, bad)
    with open(bad, "r+b") as fh:
        fh.seek(lib.header_offset + 26)
        name_len, extra_len = (int.from_bytes(fh.read(2), "little") for _ in range(2))
        fh.seek(lib.header_offset + 30 + name_len + extra_len + lib.file_size // 2)
        fh.write(os.urandom(64))
    with pytest.raises(IntegrityError, match=f"entry '{lib.filename.partition('/')[2]}' is corrupted"):
        Retriever(str(bad))


def test_aoti_is_used_only_where_it_runs(exported):
    """The compiled graph is served only with the torch and CPU ISA it was built for; ``backend=
    "aoti"`` says why not, ``"auto"`` falls back to the torch.export program."""
    assert aoti_usable({"isa": vector_isa(), "torch": torch.__version__}) == (True, "")
    ok, why = aoti_usable({"isa": "neon", "torch": torch.__version__})
    assert not ok and "neon" in why
    ok, why = aoti_usable({"isa": vector_isa(), "torch": "0.0.1"})
    assert not ok and "0.0.1" in why
    assert Retriever(exported["path"]).backend == "export"  # exported without aoti
    with pytest.raises(ValueError, match="no AOTInductor"):
        Retriever(exported["path"], backend="aoti")
    with pytest.raises(ValueError, match="backend"):
        Retriever(exported["path"], backend="tensorrt")
