"""2-process torchrun training on CPU (gloo): shards, trains, checkpoints, resumes, evaluates."""
import json
import os
import subprocess
import sys

import pytest

from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.trainer import load_two_tower

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the "small" world: big enough that the planner spreads the tables over both ranks
ARGS = ["debug=cpu_tiny", "data.size=small", "trainer.checkpoint_every=2", "trainer.eval_every=0", "trainer.num_threads=1"]


def _run(cmd, out):
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


@pytest.mark.distributed
def test_torchrun_two_processes_train_resume_and_hand_over(tmp_path):
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "silverrec.train.train", *ARGS, f"hydra.run.dir={out}"]
    _run([*torchrun, "trainer.max_steps=4"], out)
    report = json.loads((out / "report.json").read_text())
    assert report["train"]["world_size"] == 2 and report["train"]["steps"] == 4
    assert 0.0 < report["test"]["recall@100"] <= 1.0
    # the sharded model and the rank-local fused optimizer state were gathered into one file
    payload = load_checkpoint(report["train"]["checkpoint"])
    assert payload["world_size"] == 2
    momenta = [k for k in payload["optimizer"]["state"] if "ebc" in k]
    assert len(momenta) == len([k for k in payload["model"] if k.startswith("ebc.")])
    load_two_tower(payload)
    # resume on 2 processes, then hand the run over to 1 process
    stdout = _run([*torchrun, "trainer.max_steps=6"], out)
    assert "resumed from" in stdout and "step_00000004.pt" in stdout
    single = [sys.executable, "-m", "silverrec.train.train", *ARGS, f"hydra.run.dir={out}", "trainer.max_steps=8"]
    assert "step_00000006.pt" in _run(single, out)
    assert json.loads((out / "report.json").read_text())["train"]["world_size"] == 1
