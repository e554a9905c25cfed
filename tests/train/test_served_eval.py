"""The served-artifact evaluation (``silverrec-eval model=...``) on a tiny export that probes
every cluster and keeps every item as a candidate: what it serves then differs from the exact
ranking only by INT8 rounding, and under a filter that passes at most K items it serves exactly
the passing items (less the user's seen ones), so recall against exact is 1."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from silverrec.retrieval.attribute_filter import AttributeFilter
from silverrec.retrieval.serving_graph import ServingConfig
from silverrec.serve import Retriever
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.export import export_serving
from silverrec.retrieval.bloom_index import BloomIndex
from silverrec.train.served_eval import evaluate_served, evaluate_served_details, filter_suite, served_table
from silverrec.train.trainer import load_two_tower


@pytest.fixture(scope="module")
def full_probe(tiny_run, tiny_dataset, tmp_path_factory):
    """(path, model): K = 20, 4 clusters all probed, every item a candidate of every task."""
    model = load_two_tower(load_checkpoint(tiny_run["checkpoint"])).eval()
    n = tiny_dataset.items.num_rows
    path = str(tmp_path_factory.mktemp("served") / "serving.pt2")
    export_serving(model, tiny_dataset, ServingConfig(k=20, candidates_per_task=n, merged_candidates=None, num_clusters=4, n_probe=4), path,
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
    assert set(section) == {"backend", "k", "num_users", "filters", "curves", "exposure", "index_loss", "latency_ms",
                            "warnings"}
    assert section["k"] == 20 and section["num_users"] == 32
    assert list(section["filters"]) == ["none", expr]
    assert section["filters"][expr]["pass_fraction"] == rare[0] / tiny_dataset.items.num_rows
    assert section["filters"]["none"]["pass_fraction"] == 1.0 and section["filters"]["none"]["class"] == "none"
    # every item a candidate and every cluster probed: the served curve follows the exact one
    curves = section["curves"]
    assert curves["k"][-1] == min(500, tiny_dataset.items.num_rows) and len(curves["served"]) == curves["k"].index(20) + 1
    for s, e in zip(curves["served"], curves["exact"]):
        assert abs(s - e) <= 0.05
    assert section["exposure"]["served"]["distinct_items"] >= 20
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


def test_filter_suite_on_the_data_matches_the_index(tiny_dataset) -> None:
    """The suite's pass fractions are the exact fractions of the served filter's exact check."""
    terms = tiny_dataset.item_terms()
    suite = filter_suite(terms)
    assert suite
    bloom = BloomIndex.build(terms, features=[f.name for f in tiny_dataset.schema.filterable_features])
    matches = bloom.matches([e for e, _ in suite]).numpy()
    for (expr, fraction), row in zip(suite, matches):
        assert fraction == row.mean(), expr


def test_served_tensorboard_events(full_probe, tiny_dataset, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from silverrec.train.tb_logging import TensorBoardLogger
    from silverrec.train.tensorboard_served import log_served, served_scalars

    path, model = full_probe
    section, details = evaluate_served_details(Retriever(path), model, tiny_dataset, filters=None,
                                               ks=(10, 20), max_users=16, batches=(1, 2))
    logger = TensorBoardLogger(str(tmp_path / "tb"))
    log_served(logger, section, details, 7, {"serving.k": 20})
    logger.close()
    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "histograms": 0, "scalars": 0, "tensors": 0})
    ea.Reload()
    assert {"served/recall_at_k", "served/recall_vs_exact_per_filter", "served/latency"} <= set(ea.Tags()["images"])
    assert {"served/per_user_recall@20/served", "served/per_user_recall@20/exact", "served/item_exposure/most_popular",
            "served/result_popularity/served"} <= set(ea.Tags()["histograms"])
    scalars = set(ea.Tags()["scalars"])
    assert set(served_scalars(section)) <= scalars
    # every number of the printed table is a scalar
    none = section["filters"]["none"]
    for key in ("pass_fraction", "heldout_users", "recall@20", "ndcg@10", "value_recall@20", "recall_vs_exact@20"):
        assert f"served/none/{key}" in scalars
    assert ea.Scalars("served/none/recall_vs_exact@20")[-1].value == pytest.approx(none["recall_vs_exact@20"])
    assert {"served/exposure/served/coverage", "served/exposure/exact/gini", "served/latency_ms/batch_2"} <= scalars
    assert os.path.isdir(tmp_path / "tb" / "served")  # the hparams session
    table = served_table(section, classes=["none", "~10%", "~1%"])
    assert "index loss" in table and "coverage of the catalogue" in table
    # the index-loss line's class means: in the report section and as scalars
    classes = {row["class"] for row in section["filters"].values()}
    assert set(section["index_loss"]) == classes
    for c, mean in section["index_loss"].items():
        rows = [r["recall_vs_exact@20"] for r in section["filters"].values() if r["class"] == c]
        assert mean == pytest.approx(float(np.mean(rows)))
        assert ea.Scalars(f"served/index_loss/{c}/recall_vs_exact@20")[-1].value == pytest.approx(mean)
        if c in ("none", "~10%", "~1%"):
            assert f"{c} {mean:.4f}" in table
