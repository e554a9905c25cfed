"""End-to-end training: in-process runs, checkpoint/resume, a killed run, bad configs and data."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException

from silverrec.train.checkpoint import latest_checkpoint, load_checkpoint
from silverrec.train.train import run_training
from silverrec.train.trainer import load_two_tower
from tests.conftest import compose_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_tiny_run_reports_metrics_checkpoints_and_tensorboard(tiny_run):
    report = tiny_run["report"]
    for split in ("valid", "test"):
        for k in (10, 50, 100):
            assert 0.0 <= report[split][f"recall@{k}"] <= 1.0
            assert 0.0 <= report[split][f"popularity_recall@{k}"] <= 1.0
    assert report["train"]["steps"] == 30 and report["train"]["world_size"] == 1
    assert [h["step"] for h in report["train"]["validation_history"]] == [15]
    with open(os.path.join(tiny_run["dir"], "report.json")) as f:
        assert json.load(f)["test"]["recall@100"] == report["test"]["recall@100"]
    payload = load_checkpoint(tiny_run["checkpoint"])
    assert payload["step"] == 30 and "optimizer" in payload
    model = load_two_tower(payload)  # a plain, unsharded model
    assert model.ebc.embedding_bags["item__item_id"].weight.shape[0] == len(payload["schema"]["item_features"][0]["vocab"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(os.path.join(tiny_run["dir"], "tb"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/examples_per_s", "valid/recall@10", "valid/recall@100", "test/recall@50"} <= tags


def _cfg(out, steps, extra=()):
    return compose_config(
        "train",
        ["debug=cpu_tiny", f"paths.output_dir={out}", f"trainer.max_steps={steps}", "trainer.eval_every=0",
         "trainer.checkpoint_every=2", "trainer.warmup_steps=0", *extra],
    )


def test_resume_continues_exactly(tmp_path):
    torch.set_num_threads(1)  # bit-reproducible CPU kernels for the comparison
    straight = run_training(_cfg(tmp_path / "a", 6))
    run_training(_cfg(tmp_path / "b", 4))
    resumed = run_training(_cfg(tmp_path / "b", 6))
    a = load_checkpoint(straight["train"]["checkpoint"])["model"]
    b = load_checkpoint(resumed["train"]["checkpoint"])["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=f"{k} differs after resume")
    assert resumed["test"]["recall@100"] == pytest.approx(straight["test"]["recall@100"], abs=1e-6)


def test_pool_negatives_build_the_index_before_the_first_step(tmp_path, monkeypatch):
    from silverrec.models.train_task import TwoTowerTrainTask

    seen = []
    pool_logits = TwoTowerTrainTask._pool_logits

    def spy(self, u, item_rows, history, r):
        logits, in_pool = pool_logits(self, u, item_rows, history, r)
        seen.append((logits.shape, float(in_pool.mean())))
        return logits, in_pool

    monkeypatch.setattr(TwoTowerTrainTask, "_pool_logits", spy)
    extra = ["loss.over_arch_negatives=pool", "loss.sampled_negatives=7", "loss.pool_size=50", "loss.over_arch_detach=true"]
    report = run_training(_cfg(tmp_path, 3, extra))
    assert report["train"]["steps"] == 3 and len(seen) == 3  # no step without the index
    assert all(shape[1] == 8 for shape, _ in seen)
    assert any(share > 0 for _, share in seen)  # some positives are in their row's pool
    assert report["multitask"]["has_over_arch"] is True


@pytest.mark.parametrize("negatives", [["loss.hard_negatives=2"], ["loss.over_arch_negatives=pool", "loss.sampled_negatives=7",
                                                                  "loss.pool_size=50"]])
def test_over_arch_side_features_train_and_travel_with_the_checkpoint(tmp_path, negatives):
    """The trainer fills the side features' item table from the data, the OverArch trains with
    them (in-batch + mined negatives, or pool negatives), and a reloaded model carries the table."""
    from silverrec.data.synthetic import synthetic_dataset

    report = run_training(_cfg(tmp_path, 3, ["model.over_arch.side_features=[category,creator,year,popularity]",
                                             *negatives]))
    assert report["multitask"]["has_over_arch"] is True and report["train"]["steps"] == 3
    sf = load_two_tower(load_checkpoint(report["train"]["checkpoint"])).over_arch.side_features
    ds = synthetic_dataset("tiny", seed=0)
    assert sf.names == ["category", "creator", "year", "popularity"]
    assert sf.table_0[:-1, 0].tolist() == ds.items.columns["category"].values.tolist()
    assert sf.table_1[:-1, 0].tolist() == ds.items.columns["creator"].values.tolist()
    assert sf.table_2[:-1].min() >= 1990 and sf.table_0[-1].tolist() == [-1] and float(sf.scale_2) > 1
    assert float(sf.table_3.std()) > 0


def test_resume_refuses_a_different_model(tmp_path):
    run_training(_cfg(tmp_path, 2))
    with pytest.raises(ValueError, match="different model_config"):
        run_training(_cfg(tmp_path, 4, ["model.embedding_dim=8", "model.user_layers=[16,8]", "model.item_layers=[16,8]"]))


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "silverrec.train.train", "debug=cpu_tiny", f"hydra.run.dir={out}",
           "trainer.max_steps=100000", "trainer.checkpoint_every=3", "trainer.eval_every=0"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and not latest_checkpoint(str(out / "checkpoints")):
            time.sleep(0.5)
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = latest_checkpoint(str(out / "checkpoints"))
    assert last is not None, "no checkpoint was written before the kill"
    done_step = load_checkpoint(last)["step"]
    res = subprocess.run(
        [*cmd[:-3], f"trainer.max_steps={done_step + 3}", "trainer.checkpoint_every=3", "trainer.eval_every=0"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resumed from {last}" in res.stdout
    assert load_checkpoint(latest_checkpoint(str(out / "checkpoints")))["step"] == done_step + 3


def test_unknown_config_keys_are_errors():
    with pytest.raises(ConfigCompositionException, match="nonexistent"):
        compose_config("train", ["trainer.nonexistent=3"])
    with pytest.raises(ConfigCompositionException):
        compose_config("train", ["data=no_such_data"])


def test_bad_values_are_named(tmp_path):
    bad = (ValueError, InstantiationException)  # hydra wraps errors raised by config classes
    with pytest.raises(bad, match="trainer.max_steps"):
        run_training(_cfg(tmp_path, 0))
    with pytest.raises(bad, match="optim.sparse.name"):
        run_training(_cfg(tmp_path, 2, ["optim.sparse.name=lamb"]))
    with pytest.raises(bad, match="trainer.device"):
        run_training(_cfg(tmp_path, 2, ["trainer.device=tpu"]))
    # torch alone says "Invalid learning rate: -0.01", naming neither the key nor the optimizer
    with pytest.raises(bad, match=r'optim\.dense\.lr=-0\.01 is invalid: torch\.optim\.Adam says "Invalid learning rate: -0\.01"'):
        run_training(_cfg(tmp_path, 2, ["optim.dense.lr=-0.01"]))
