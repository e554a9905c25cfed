"""The demo pipeline end to end on the tiny world: train, evaluate, export, reload, time, report."""
import json
import os

from silverrec.train.demo import run_demo


def test_demo_writes_the_documented_report(tmp_path, capsys):
    report = run_demo(["debug=cpu_tiny", f"paths.output_dir={tmp_path}", "logger=tensorboard"], aoti=False)  # AOTI: tests/serve/test_export.py
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["test"]["recall@100"] == report["test"]["recall@100"]
    assert 0.0 <= on_disk["test"]["popularity_recall@100"] <= 1.0
    ex = on_disk["export"]
    assert os.path.isfile(ex["path"]) and ex["path"].endswith("serving.pt2")
    assert ex["parity"]["ids"] > 0.99 and ex["parity"]["max_abs_value_diff"] < 1e-5
    assert set(ex["latency_ms_by_batch"]) == {"1", "16", "256"} and set(ex["filtered_latency_ms_by_batch"]) == {"1", "16"}
    assert ex["backend"] == "export" and ex["export_program_latency_ms_by_batch"] == ex["latency_ms_by_batch"]
    mt = on_disk["multitask"]
    assert set(mt["tasks"]) == {"click", "like", "share", "watch"}
    assert set(mt["tasks"]["like"]["recall@100"]) == {"dot", "overarch"}
    assert {"dot", "overarch"} <= set(mt["value_recall@100"])
    assert (tmp_path / "item_embeddings.pt").is_file()
    out = capsys.readouterr().out
    assert "recall@100" in out and "tensorboard --logdir" in out and "value (weighted)" in out
    # the served evaluation: its table, index loss and coverage line, every printed number in the
    # report and in TensorBoard
    served = on_disk["served"]
    assert served["k"] == 100 and "none" in served["filters"] and {"~10%", "~1%"} <= {r["class"] for r in served["filters"].values()}
    assert "index loss: served-vs-exact recall@100" in out and "coverage of the catalogue" in out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    for expr, row in served["filters"].items():
        if row["class"] in ("none", "~10%", "~1%"):
            assert f"| {expr} | {row['class']} | {row['pass_fraction']:.4f} | {row['heldout_users']} |" in out
            for key, value in row.items():
                if key not in ("class", "tasks") and value is not None:
                    assert f"served/{expr}/{key}" in scalars, (expr, key)
    for name, e in served["exposure"].items():
        assert f"{name} {e['coverage']:.2%}" in out and f"served/exposure/{name}/gini" in scalars
    assert {f"served/latency_ms/batch_{b}" for b in served["latency_ms"]} <= scalars
