import json
import os
import subprocess
import sys

import numpy as np
import pytest

from silverrec.data.dataset import RecDataset, Split
from silverrec.train.evaluator import Evaluator, eval_users

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_eval_users_exclude_what_was_seen(tiny_dataset):
    ds = tiny_dataset
    ev = eval_users(ds, "test")
    it, sp = ds.interactions, ds.split
    for r in range(0, ev.users.size, 37):
        u = ev.users[r]
        seen = set(it.item[np.concatenate([sp.train, sp.valid])][it.user[np.concatenate([sp.train, sp.valid])] == u].tolist())
        assert set(ev.seen.row(r).tolist()) == seen
        assert set(ev.heldout.row(r).tolist()) == set(it.item[sp.test][it.user[sp.test] == u].tolist())
        assert len(ev.history.row(r)) == min(len(ev.seen.row(r)), ds.schema.history_length)


def test_empty_split_is_a_clear_error(tiny_dataset):
    ds = tiny_dataset
    empty = RecDataset(ds.schema, ds.users, ds.items, ds.interactions,
                       Split(ds.split.train, ds.split.valid, np.zeros(0, dtype=np.int64)))
    with pytest.raises(ValueError, match="'test' split is empty"):
        Evaluator(empty, "test")
    with pytest.raises(ValueError, match="valid' or 'test"):
        eval_users(ds, "train")


def test_popularity_baseline_is_sane(tiny_dataset):
    ev = Evaluator(tiny_dataset, "test", [10, 100])
    pop = ev.popularity_baseline()
    assert 0.0 < pop["recall@10"] <= pop["recall@100"] <= 1.0


def test_eval_cli_writes_a_json_report(tiny_run, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "silverrec.train.evaluate", f"ckpt_path={tiny_run['checkpoint']}",
         f"hydra.run.dir={tmp_path}", "~logger"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "eval_report.json").read_text())
    # the same checkpoint and data: the numbers of the training run's own final evaluation
    assert report["test"]["recall@100"] == pytest.approx(tiny_run["report"]["test"]["recall@100"], abs=1e-6)
    assert report["checkpoint"]["step"] == 30
