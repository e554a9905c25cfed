"""The demo pipeline end to end on the tiny world: train, evaluate, export, reload, time, report."""
import json
import os

from silverrec.train.demo import run_demo


def test_demo_writes_the_documented_report(tmp_path, capsys):
    report = run_demo(["debug=cpu_tiny", f"paths.output_dir={tmp_path}"], aoti=False)  # AOTI: tests/serve/test_export.py
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
