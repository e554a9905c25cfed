"""Shared fixtures: a tiny synthetic world and one tiny training run reused by several tests."""
import os
from typing import List

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from silverrec.data.dataset import RecDataset


def compose_config(name: str, overrides: List[str]) -> DictConfig:
    """Composes a packaged Hydra config (as the entry points would) with overrides."""
    with initialize_config_module(config_module="silverrec.conf", version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.fixture(scope="session")
def tiny_dataset() -> RecDataset:
    from silverrec.data.synthetic import synthetic_dataset

    return synthetic_dataset("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict:
    """One debug training run (tiny world, a few steps); returns its report and folder."""
    from silverrec.train.train import run_training

    out = str(tmp_path_factory.mktemp("tiny_run"))
    cfg = compose_config(
        "train",
        ["debug=cpu_tiny", f"paths.output_dir={out}", "trainer.max_steps=30", "trainer.eval_every=15",
         "trainer.checkpoint_every=15", "logger=tensorboard"],
    )
    report = run_training(cfg)
    return {"report": report, "dir": out, "checkpoint": report["train"]["checkpoint"]}


def pytest_configure(config) -> None:
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
