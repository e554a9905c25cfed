"""The demo pipeline end to end on the tiny world: train, evaluate, export, reload, time, report."""
import json
import os

from silverrec.train.demo import run_demo


def test_demo_writes_the_documented_report(tmp_path, capsys):
    report = run_demo(["debug=cpu_tiny", f"paths.output_dir={tmp_path}"])
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["test"]["recall@100"] == report["test"]["recall@100"]
    assert 0.0 <= on_disk["test"]["popularity_recall@100"] <= 1.0
    assert os.path.isfile(on_disk["export"]["path"]) and on_disk["export"]["path"].endswith("retrieval.pt2")
    assert on_disk["export"]["parity_top100_ids"] > 0.99
    assert set(on_disk["export"]["latency_ms_by_batch"]) == {"1", "16", "256"}
    assert (tmp_path / "item_embeddings.pt").is_file()
    out = capsys.readouterr().out
    assert "recall@100" in out and "tensorboard --logdir" in out
