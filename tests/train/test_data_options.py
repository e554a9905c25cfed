"""Every documented ``data=`` option trains end to end as the README writes it (a few steps on
tiny files), with the default value formula of its data, under both evaluation protocols."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from silverrec.models.value_formula import FormulaError
from silverrec.train.train import run_training
from tests.conftest import compose_config

USERS, ITEMS, PER_USER = 40, 60, 12
TINY = ["trainer.max_steps=3", "trainer.batch_size=64", "trainer.eval_every=2", "trainer.checkpoint_every=3",
        "trainer.warmup_steps=0", "trainer.progress=false", "trainer.eval_max_users=20", "trainer.num_threads=1",
        "model.embedding_dim=8", "model.user_layers=[16,8]", "model.item_layers=[16,8]", "~logger"]


def _ratings(seed: int = 0):
    """(user, item, rating, time) rows: every user rates PER_USER distinct items, 1-based ids."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, USERS + 1):
        for j, m in enumerate(rng.choice(ITEMS, PER_USER, replace=False) + 1):
            rows.append((u, int(m), int(rng.integers(1, 6)), 978300000 + 1000 * u + j))
    return rows


def write_ml1m(root):
    root.mkdir()
    genres = ["Action", "Comedy", "Drama", "Children's"]
    (root / "movies.dat").write_bytes("".join(f"{m}::Movie é{m} ({1980 + m % 20})::{genres[m % 4]}|{genres[(m + 1) % 4]}\n"
                                              for m in range(1, ITEMS + 1)).encode("latin-1"))
    (root / "users.dat").write_text("".join(f"{u}::{'MF'[u % 2]}::{[1, 18, 25][u % 3]}::{u % 7}::0{u}\n" for u in range(1, USERS + 1)))
    (root / "ratings.dat").write_text("".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in _ratings()))
    return root


def write_ml100k(root):
    root.mkdir()
    flags = lambda m: "|".join("1" if g == m % 19 else "0" for g in range(19))  # noqa: E731
    (root / "u.item").write_bytes("".join(f"{m}|Film è{m} ({1990 + m % 9})|01-Jan-1995||http://x|{flags(m)}\n"
                                          for m in range(1, ITEMS + 1)).encode("latin-1"))
    (root / "u.user").write_text("".join(f"{u}|{20 + u % 30}|{'MF'[u % 2]}|job{u % 5}|0{u}\n" for u in range(1, USERS + 1)))
    (root / "u.data").write_text("".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in _ratings()))
    return root


def write_ml25m(root):
    root.mkdir()
    (root / "movies.csv").write_text("movieId,title,genres\n" + "".join(f'{m},"Film, The ({2000 + m % 9})",Drama|Comedy\n'
                                                                        for m in range(1, ITEMS + 1)))
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},{r / 2 + 2.5},{t}\n"
                                                                                  for u, m, r, t in _ratings()))
    return root


def write_recbole(root):
    root.mkdir()
    (root / "ml-tiny.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" +
                                        "".join(f"u{u}\tm{m}\t{r}\t{t}\n" for u, m, r, t in _ratings()))
    (root / "ml-tiny.item").write_text("item_id:token\tgenre:token_seq\trelease_year:float\n" +
                                       "".join(f"m{m}\tDrama Comedy{m % 3}\t{1990 + m % 9}\n" for m in range(1, ITEMS + 1)))
    (root / "ml-tiny.user").write_text("user_id:token\tage:float\tgender:token\n" +
                                       "".join(f"u{u}\t{u % 5}\t{'MF'[u % 2]}\n" for u in range(1, USERS + 1)))
    return root


def write_tables(root):
    root.mkdir()
    rows = _ratings()
    pd.DataFrame({"user_id": [u for u, *_ in rows], "item_id": [f"i{m}" for _, m, _, _ in rows],
                  "timestamp": [t for *_, t in rows], "purchase": [float(r >= 4) for _, _, r, _ in rows]}
                 ).to_parquet(root / "events.parquet")
    pd.DataFrame({"item_id": [f"i{m}" for m in range(1, ITEMS + 1)],
                  "category": [f"c{m % 4}" for m in range(1, ITEMS + 1)]}).to_csv(root / "items.csv", index=False)
    pd.DataFrame({"user_id": range(1, USERS + 1), "country": ["us", "de"] * (USERS // 2)}).to_csv(root / "users.csv", index=False)
    return root


# each documented data= option, as the README's "Train on your data" writes it (paths made real)
OPTIONS = {
    "synthetic": (None, lambda r: ["data.size=tiny", "data.seed=3"], "0.6*like + 0.3*share + 0.1*watch"),
    "movielens-1m": (write_ml1m, lambda r: ["data=movielens", f"data.path={r}"], "like"),
    "movielens-100k": (write_ml100k, lambda r: ["data=movielens", f"data.path={r}"], "like"),
    "movielens-25m": (write_ml25m, lambda r: ["data=movielens", f"data.path={r}"], "like"),
    "recbole": (write_recbole, lambda r: ["data=recbole", f"data.path={r}", "data.name=ml-tiny"], "like"),
    "parquet": (write_tables, lambda r: ["data=parquet", f"data.interactions={r}/events.parquet",
                                         f"data.items={r}/items.csv", f"data.users={r}/users.csv"], "click"),
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_data_option_trains_with_its_default_formula(tmp_path, option):
    write, overrides, formula = OPTIONS[option]
    root = write(tmp_path / "data") if write else None
    out = tmp_path / "run"
    report = run_training(compose_config("train", [*overrides(root), f"paths.output_dir={out}", *TINY]))
    assert report["train"]["steps"] == 3 and report["protocol"] == "temporal"
    for split in ("valid", "test"):
        assert 0.0 <= report[split]["recall@10"] <= 1.0 and 0.0 <= report[split]["popularity_ndcg@100"] <= 1.0
    from silverrec.train.checkpoint import load_checkpoint

    payload = load_checkpoint(report["train"]["checkpoint"])
    assert payload["model_config"]["value_formula"] == formula
    with open(out / "report.json") as f:
        assert json.load(f)["multitask"]["split"] == "test"


def test_leave_last_out_reports_hr_ndcg_mrr_in_json_and_tensorboard(tmp_path):
    root = write_recbole(tmp_path / "data")
    out = tmp_path / "run"
    overrides = ["data=recbole", f"data.path={root}", "eval.protocol=leave_last_out", f"paths.output_dir={out}",
                 *[o for o in TINY if o != "~logger"]]
    report = run_training(compose_config("train", overrides))
    assert report["protocol"] == "leave_last_out"
    for split in ("valid", "test"):
        m = report[split]
        assert m["num_users"] == USERS  # one held-out item per user
        for key in ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200", "mrr"):
            assert 0.0 <= m[key] <= 1.0 and 0.0 <= m[f"popularity_{key}"] <= 1.0
        assert m["hr@200"] == 1.0  # 60 items: every rank is inside 200
        assert "recall@10" not in m
    assert set(report["train"]["validation_history"][0]) >= {"step", "hr@10", "mrr"}
    with open(out / "report.json") as f:
        assert json.load(f)["test"]["popularity_hr@10"] == report["test"]["popularity_hr@10"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(os.path.join(out, "tb"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"valid/hr@10", "valid/mrr", "test/hr@10", "test/ndcg@200", "test/mrr", "test/popularity_hr@10",
            "test/popularity_mrr"} <= tags

    from silverrec.train.evaluate import run_evaluation

    ckpt = report["train"]["checkpoint"]
    again = run_evaluation(compose_config("eval", [f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'eval'}", "~logger"]))
    assert again["protocol"] == "leave_last_out"  # the checkpoint's protocol
    assert again["test"]["hr@10"] == pytest.approx(report["test"]["hr@10"])
    temporal = run_evaluation(compose_config("eval", [f"ckpt_path={ckpt}", "protocol=temporal",
                                                      f"paths.output_dir={tmp_path / 'eval2'}", "~logger"]))
    assert "recall@10" in temporal["test"] and "hr@10" not in temporal["test"]


def test_a_formula_naming_a_missing_task_names_the_tasks_there_are(tmp_path):
    root = write_ml1m(tmp_path / "data")
    cfg = compose_config("train", ["data=movielens", f"data.path={root}", f"paths.output_dir={tmp_path / 'run'}",
                                   "model.value_formula=0.6*like + 0.3*share", *TINY])
    with pytest.raises(FormulaError, match=r"model\.value_formula: unknown task 'share' .*this data set's tasks are click, like"):
        run_training(cfg)
