"""A 2-process torchrun training run on CPU (gloo): shards, trains, checkpoints, evaluates."""
import json
import os
import subprocess
import sys

import pytest

from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.trainer import load_two_tower

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.distributed
def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "silverrec.train.train", "debug=cpu_tiny", f"hydra.run.dir={out}",
        "trainer.max_steps=6", "trainer.checkpoint_every=3", "trainer.num_threads=1",
    ]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["train"]["world_size"] == 2 and report["train"]["steps"] == 6
    assert 0.0 < report["test"]["recall@100"] <= 1.0
    # the sharded state was gathered into one plain checkpoint that loads without torchrun
    payload = load_checkpoint(report["train"]["checkpoint"])
    assert payload["world_size"] == 2
    load_two_tower(payload)
