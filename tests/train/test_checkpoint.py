import os

import pytest
import torch

from silverrec.train import checkpoint as ckpt
from silverrec.train.distributed import local_context


def test_atomic_save_latest_and_prune(tmp_path):
    folder = str(tmp_path)
    for step in (5, 10, 20):
        ckpt.save_checkpoint(ckpt.step_path(folder, step), {"model": {}, "step": step, "schema": {}, "model_config": {}})
    assert ckpt.latest_checkpoint(folder).endswith("step_00000020.pt")
    ckpt.prune_checkpoints(folder, keep=2)
    assert sorted(os.listdir(folder)) == ["step_00000010.pt", "step_00000020.pt"]
    assert not [f for f in os.listdir(folder) if f.startswith(".tmp")]


def test_failed_save_leaves_no_partial_file(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    path = str(tmp_path / "step_00000001.pt")
    with pytest.raises(RuntimeError, match="boom"):
        ckpt.save_checkpoint(path, {"x": Unpicklable()})
    assert os.listdir(tmp_path) == []


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        ckpt.load_checkpoint(str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        ckpt.load_checkpoint(str(bad))
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    with pytest.raises(ValueError, match="silverrec checkpoint"):
        ckpt.load_checkpoint(str(other))


def test_scatter_into_checks_shapes_and_keys():
    target = {"a": torch.zeros(2, 3), "b": {"c": torch.zeros(4)}}
    full = {"a": torch.ones(2, 3), "b": {"c": torch.arange(4.0)}}
    out = ckpt.scatter_into(target, full)
    assert torch.equal(out["a"], torch.ones(2, 3)) and torch.equal(out["b"]["c"], torch.arange(4.0))
    with pytest.raises(ValueError, match="shape"):
        ckpt.scatter_into({"a": torch.zeros(3)}, {"a": torch.zeros(4)})
    with pytest.raises(ValueError, match="missing"):
        ckpt.scatter_into({"a": torch.zeros(3)}, {})


def test_gather_state_copies_plain_tensors():
    t = torch.ones(3)
    out = ckpt.gather_state({"x": t, "n": 3}, local_context())
    t.add_(1)
    assert torch.equal(out["x"], torch.ones(3)) and out["n"] == 3
