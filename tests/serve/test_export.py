"""Export -> load in a fresh process -> same top-K as the training-side modules (parity)."""
import os
import subprocess
import sys

import pytest
import torch

from silverrec.models.user_encoder import user_encoder_from_two_tower
from silverrec.retrieval.exact import exact_topk
from silverrec.serve.artifact import ExportedRetriever, load_artifact
from silverrec.serve.encoding import encode_users
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.distributed import local_context
from silverrec.train.evaluator import Evaluator
from silverrec.train.export import export_retrieval, request_tensors
from silverrec.train.trainer import load_two_tower

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def exported(tiny_run, tiny_dataset, tmp_path_factory):
    payload = load_checkpoint(tiny_run["checkpoint"])
    model = load_two_tower(payload)
    path = str(tmp_path_factory.mktemp("export") / "retrieval.pt2")
    meta = export_retrieval(model, tiny_dataset, 20, path, {"step": payload["step"]})
    return {"path": path, "meta": meta, "model": model}


def test_user_encoder_matches_the_training_tower(exported, tiny_dataset):
    model = exported["model"]
    ev = Evaluator(tiny_dataset, "test", [10], max_users=25)
    u_train, _ = ev.embed(model, local_context())
    values, lengths = request_tensors(tiny_dataset, ev.users.users, ev.users.history)
    u_serve = user_encoder_from_two_tower(model, tiny_dataset.schema)(values, lengths)
    torch.testing.assert_close(u_serve, u_train, rtol=1e-5, atol=1e-6)


def test_fresh_process_parity(exported, tiny_dataset, tmp_path):
    """The loader in a new interpreter returns the training-side exact top-K."""
    model = exported["model"]
    ev = Evaluator(tiny_dataset, "test", [20], max_users=40)
    u, v = ev.embed(model, local_context())
    want_scores, want_ids = exact_topk(u, v, 20)
    values, lengths = request_tensors(tiny_dataset, ev.users.users, ev.users.history)
    torch.save({"values": values, "lengths": lengths}, tmp_path / "req.pt")
    script = (
        "import sys, torch\n"
        "from silverrec.serve import ExportedRetriever\n"
        "r = ExportedRetriever(sys.argv[1])\n"
        "req = torch.load(sys.argv[2])\n"
        "ids, scores = r.search(req['values'], req['lengths'])\n"
        "torch.save({'ids': ids, 'scores': scores, 'version': r.version}, sys.argv[3])\n"
    )
    subprocess.run([sys.executable, "-c", script, exported["path"], str(tmp_path / "req.pt"), str(tmp_path / "out.pt")],
                   check=True, cwd=str(tmp_path), timeout=300)
    got = torch.load(tmp_path / "out.pt")
    assert got["version"] == exported["meta"]["version"]
    torch.testing.assert_close(got["scores"], want_scores, rtol=1e-5, atol=1e-5)
    # ids agree except where two items tie within float noise
    same = got["ids"] == want_ids
    assert same.float().mean() > 0.99
    assert torch.allclose(got["scores"][~same], want_scores[~same], atol=1e-5)


def test_dynamic_batch_and_users_without_history(exported, tiny_dataset):
    r = ExportedRetriever(exported["path"])
    schema = r.schema
    for b in (1, 3, 17):
        users = [{"history": list(schema.item_ids[i : i + 3])} if i % 2 else {} for i in range(b)]
        values, lengths = encode_users(schema, users)
        ids, scores = r.search(values, lengths)
        assert ids.shape == scores.shape == (b, 20) and ids.dtype == torch.int64
        assert bool((ids >= 0).all()) and bool((scores[:, :-1] >= scores[:, 1:]).all())
    assert r.item_ids(ids[:1])[0][0] in schema.item_ids


def test_bad_requests_are_named(exported):
    r = ExportedRetriever(exported["path"])
    schema = r.schema
    with pytest.raises(ValueError, match="country"):
        encode_users(schema, [{"country": "atlantis"}])
    with pytest.raises(ValueError, match="unknown feature"):
        encode_users(schema, [{"shoe_size": 3}])
    with pytest.raises(ValueError, match="history"):
        encode_users(schema, [{"history": ["no-such-item"]}])
    values, lengths = encode_users(schema, [{"history": [schema.item_ids[0]]}])
    with pytest.raises(ValueError, match="'history': id 999999"):
        r.search(torch.tensor([999999]), lengths)
    with pytest.raises(ValueError, match="lengths must be int64"):
        r.search(values, lengths[:, :2])


def test_broken_files_fail_clearly(exported, tmp_path):
    data = open(exported["path"], "rb").read()
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_artifact(str(truncated))
    with pytest.raises(FileNotFoundError):
        load_artifact(str(tmp_path / "missing.pt2"))


def test_export_cli_writes_one_file(tiny_run, tmp_path):
    out = tmp_path / "cli.pt2"
    res = subprocess.run(
        [sys.executable, "-m", "silverrec.train.export", f"ckpt_path={tiny_run['checkpoint']}", "k=5",
         f"output={out}", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "exported" in res.stdout and out.is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    _, meta = load_artifact(str(out))
    assert meta["k"] == 5 and meta["num_items"] > 0
