"""Configs are code: every group option composes, every node instantiates."""
import dataclasses
import os

import pytest
from hydra.utils import instantiate

from silverrec.models.two_tower import TwoTowerConfig
from silverrec.train.optim import SparseOptimizerConfig, check_dense_optimizer
from silverrec.train.trainer import TrainerConfig
from tests.conftest import compose_config

CONF = os.path.join(os.path.dirname(__file__), "..", "..", "silverrec", "conf")


def _options(group):
    return sorted(f[:-5] for f in os.listdir(os.path.join(CONF, group)) if f.endswith(".yaml"))


@pytest.mark.parametrize("optim", _options("optim"))
def test_every_optim_option_instantiates(optim):
    cfg = compose_config("train", [f"optim={optim}"])
    assert isinstance(instantiate(cfg.optim.sparse), SparseOptimizerConfig)
    assert callable(instantiate(cfg.optim.dense))
    assert check_dense_optimizer(instantiate(cfg.optim.dense)) is not None


@pytest.mark.parametrize("override, named", [
    ("optim.dense.lr=-0.01", "optim.dense.lr=-0.01"),
    ("+optim.dense.eps=-1", "optim.dense.eps=-1"),
    ("+optim.dense.momentum=0.9", "optim.dense.momentum=0.9 is invalid: .*unexpected keyword argument 'momentum'"),
])
def test_bad_dense_optimizer_values_name_the_key(override, named):
    cfg = compose_config("train", ["optim=adam", override])
    with pytest.raises(ValueError, match=named):
        check_dense_optimizer(instantiate(cfg.optim.dense), "optim.dense")


@pytest.mark.parametrize("overrides", [[], ["debug=cpu_tiny"], ["experiment=two_tower_small"]])
def test_train_config_nodes_instantiate(overrides):
    cfg = compose_config("train", ["paths.output_dir=/tmp/x", *overrides])
    assert isinstance(instantiate(cfg.model), TwoTowerConfig)
    assert isinstance(instantiate(cfg.trainer), TrainerConfig)
    # YAML keys equal the constructor argument names
    assert set(k for k in cfg.trainer if k != "_target_") == {f.name for f in dataclasses.fields(TrainerConfig)}
    assert set(k for k in cfg.model if k != "_target_") == {f.name for f in dataclasses.fields(TwoTowerConfig)}


def test_every_data_option_composes_and_synthetic_builds():
    for data in _options("data"):
        cfg = compose_config("train", [f"data={data}"])
        assert "_target_" in cfg.data
    ds = instantiate(compose_config("train", ["data=synthetic", "data.size=tiny"]).data)
    ds.validate()


def test_missing_data_files_are_named(tmp_path):
    cfg = compose_config("train", ["data=movielens", f"data.path={tmp_path / 'nowhere'}"])
    with pytest.raises(Exception, match="nowhere"):
        instantiate(cfg.data)


def test_eval_and_export_configs_compose():
    for name in ("eval", "export"):
        cfg = compose_config(name, ["ckpt_path=/tmp/x.pt", "paths.output_dir=/tmp/x"])
        assert cfg.ckpt_path == "/tmp/x.pt"


def test_sequence_movielens_experiment_composes(tmp_path):
    """``experiment=sequence_movielens`` (the README's sequence command, and the sequence row of
    benchmarks/movielens.py) composes and instantiates with the settings documented for it."""
    cfg = compose_config("train", ["paths.output_dir=/tmp/x", "experiment=sequence_movielens", f"data.path={tmp_path}"])
    model, trainer = instantiate(cfg.model), instantiate(cfg.trainer)
    assert isinstance(model, TwoTowerConfig) and isinstance(trainer, TrainerConfig)
    assert (model.user_tower, model.embedding_dim, trainer.batch_size, trainer.max_minutes) == ("sequence", 128, 32, 28)
    assert cfg.eval.protocol == "leave_last_out" and cfg.eval.valid_trains


def test_lr_decay_is_validated_and_shapes_the_rate():
    from silverrec.train.trainer import lr_factor
    with pytest.raises(ValueError, match="trainer.lr_decay must be one of"):
        TrainerConfig(lr_decay="linear")
    cosine, flat = TrainerConfig(warmup_steps=4, lr_decay="cosine"), TrainerConfig(warmup_steps=4)
    assert [lr_factor(flat, s, s / 10) for s in (0, 3, 9)] == [0.25, 1.0, 1.0]
    f = [lr_factor(cosine, s, s / 10) for s in range(3, 11)]
    assert f[0] < 1.0 and all(a > b for a, b in zip(f, f[1:])) and f[-1] == pytest.approx(0.0, abs=1e-12)
