"""Each data config instantiates (Hydra ``_target_``) to a RecDataset; keys mirror the builders."""
import inspect
from pathlib import Path

import pandas as pd
import pytest
from hydra.utils import instantiate, get_method
from omegaconf import OmegaConf

from silverrec.data.dataset import RecDataset

from tests.data.test_movielens import write_ml1m

CONF = Path(__file__).resolve().parents[2] / "silverrec" / "conf" / "data"


@pytest.mark.parametrize("name", ["synthetic", "movielens", "parquet", "recbole"])
def test_keys_are_builder_arguments(name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    params = inspect.signature(get_method(cfg._target_)).parameters
    keys = [k for k in cfg if k != "_target_"]
    assert keys and all(k in params for k in keys), (keys, list(params))
    for k in keys:  # every key carries a one-line comment
        assert any(line.split(":")[0].strip() == k and "#" in line for line in (CONF / f"{name}.yaml").read_text().splitlines())


def test_synthetic_config_instantiates():
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "synthetic.yaml"), {"size": "tiny", "seed": 1})
    ds = instantiate(cfg)
    assert isinstance(ds, RecDataset) and ds.users.num_rows == 300
    ds.validate()


def test_movielens_config_instantiates(tmp_path):
    cfg = OmegaConf.load(CONF / "movielens.yaml")
    assert OmegaConf.is_missing(cfg, "path")
    ds = instantiate(OmegaConf.merge(cfg, {"path": str(write_ml1m(tmp_path / "ml-1m"))}))
    assert ds.schema.task_names == ("click", "like")


def test_parquet_config_instantiates(tmp_path):
    pd.DataFrame({"user_id": [1, 1, 1, 2, 2, 2], "item_id": ["a", "b", "c", "a", "b", "c"],
                  "timestamp": [1, 2, 3, 1, 2, 3]}).to_parquet(tmp_path / "ev.parquet")
    pd.DataFrame({"item_id": ["a", "b", "c"], "kind": ["x", "y", "x|y"]}).to_csv(tmp_path / "it.csv", index=False)
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "parquet.yaml"),
                          {"interactions": str(tmp_path / "ev.parquet"), "items": str(tmp_path / "it.csv")})
    ds = instantiate(cfg)
    assert ds.schema.item_feature("kind").max_length == 2 and len(ds.interactions) == 6
