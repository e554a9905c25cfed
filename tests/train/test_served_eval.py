"""The served-artifact evaluation (``silverrec-eval model=...``) on a tiny export that probes
every cluster and keeps every item as a candidate: what it serves then differs from the exact
ranking only by INT8 rounding, and under a filter that passes at most K items it serves exactly
the passing items (less the user's seen ones), so recall against exact is 1."""
import json
import subprocess
import sys

import numpy as np
import pytest

from silverrec.retrieval.attribute_filter import AttributeFilter
from silverrec.retrieval.serving_graph import ServingConfig
from silverrec.serve import Retriever
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.export import export_serving
from silverrec.train.served_eval import evaluate_served, filter_suite
from silverrec.train.trainer import load_two_tower


@pytest.fixture(scope="module")
def full_probe(tiny_run, tiny_dataset, tmp_path_factory):
    """(path, model): K = 20, 4 clusters all probed, every item a candidate of every task."""
    model = load_two_tower(load_checkpoint(tiny_run["checkpoint"])).eval()
    n = tiny_dataset.items.num_rows
    path = str(tmp_path_factory.mktemp("served") / "serving.pt2")
    export_serving(model, tiny_dataset, ServingConfig(k=20, candidates_per_task=n, num_clusters=4, n_probe=4), path,
                   {"checkpoint": tiny_run["checkpoint"]})
    return path, model


def test_filter_suite_fractions_are_exact() -> None:
    terms = [{"lang": ["en" if i % 2 else "de"], "tag": [f"t{i % 10}"]} for i in range(200)]
    suite = filter_suite(terms, targets=(0.5, 0.1), per_target=1)
    assert len(suite) == 2
    attr = AttributeFilter(terms)
    for expr, fraction in suite:
        assert fraction == attr(expr, np.arange(200)).mean()
    assert [round(f, 2) for _, f in suite] == [0.5, 0.1]


def test_served_against_exact_when_every_item_is_probed(full_probe, tiny_dataset) -> None:
    path, model = full_probe
    attr = AttributeFilter(tiny_dataset.item_terms())
    rare = min((int(col.sum()), f"{f}:{v}") for (f, v), col in attr.columns.items() if col.any())
    assert rare[0] <= 20, rare  # at most K items pass: served = exact = every passing unseen item
    expr = rare[1]
    section = evaluate_served(Retriever(path), model, tiny_dataset, filters=[expr], ks=(10, 20, 50), max_users=32,
                              batches=(1, 4))
    assert set(section) == {"backend", "k", "num_users", "filters", "latency_ms", "warnings"}
    assert section["k"] == 20 and section["num_users"] == 32
    assert list(section["filters"]) == ["none", expr]
    assert section["filters"][expr]["pass_fraction"] == rare[0] / tiny_dataset.items.num_rows
    assert section["filters"]["none"]["pass_fraction"] == 1.0
    for row in section["filters"].values():
        assert {"recall@10", "ndcg@20", "value_recall@20", "recall_vs_exact@10", "recall_vs_exact@20", "tasks"} <= set(row)
        assert "recall@50" not in row  # above the artifact's K
        assert set(row["tasks"]) == set(model.task_names)
    assert section["filters"][expr]["recall_vs_exact@20"] == 1.0
    assert section["filters"]["none"]["recall_vs_exact@20"] >= 0.98  # only INT8 rounding swaps near-ties
    assert section["warnings"] == []
    assert set(section["latency_ms"]) == {"1", "4"} and all(ms > 0 for ms in section["latency_ms"].values())


def test_cli_model_writes_served_report(full_probe, tmp_path) -> None:
    path, _ = full_probe
    report = tmp_path / "report.json"
    out = subprocess.run([sys.executable, "-m", "silverrec.train.evaluate", f"model={path}", "users=16",
                          "batches=[1]", "filters=[]", f"report_path={report}", f"paths.output_dir={tmp_path}",
                          "~logger"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    served = json.loads(report.read_text())["served"]
    assert list(served["filters"]) == ["none"] and served["filters"]["none"]["recall_vs_exact@20"] >= 0.98
    assert "| none | 1.0000 | " in out.stdout
