"""``make demo``: train -> evaluate -> export the serving graph -> load & time -> evaluate what is
served (``silverrec-eval model=...``'s served evaluation), on the embedded synthetic world.

    python -m silverrec.train.demo [hydra overrides...]     # e.g. data.size=small

Writes everything under ``runs/demo`` (or ``paths.output_dir=...``: checkpoints, TensorBoard,
``serving.pt2``, ``item_embeddings.pt``, ``report.json`` with its ``served`` section) and prints
summary tables, the served one with no filter and the ~10% and ~1% filters of the suite, the index
loss and the coverage line (every number also in TensorBoard and the report). A killed demo
resumes from its last checkpoint when run again.
"""
import os
import sys
import time
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from silverrec.data.dataset import RecDataset
from silverrec.retrieval.serving_graph import RetrievalGraph, ServingConfig
from silverrec.serve import Retriever
from silverrec.serve.aoti import available_cores
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.distributed import local_context
from silverrec.train.evaluate import served_hparams, write_json_atomic
from silverrec.train.evaluator import Evaluator
from silverrec.train.export import build_serving_graph, example_inputs, export_graph
from silverrec.train.multitask_eval import multitask_table
from silverrec.train.served_eval import evaluate_served_details, served_table
from silverrec.train.tb_logging import make_logger
from silverrec.train.tensorboard_served import log_served
from silverrec.train.train import run_training
from silverrec.train.trainer import load_two_tower

RUN_DIR = "runs/demo"
# The demo's OverArch reads (history x candidate) side features of every item attribute the data
# declares, and popularity (silverrec/models/side_features.py): value-weighted recall@100 +8% over
# the dot product, against +0.1% without them (README). The model config's default is none; a later
# override replaces this one, e.g. `model.over_arch.side_features=[]`.
DEMO_OVERRIDES = ("model.over_arch.side_features=[all]",)
DEMO_FILTER = "language:en AND NOT category:music"
SERVED_USERS = 512  # test users of the served evaluation (silverrec-eval model=...'s default)
SERVED_CLASSES = ("none", "~10%", "~1%")  # the filter classes the summary prints (report and TensorBoard: all)


def _latency_ms(retriever: Retriever, inputs, repeats: int = 20) -> float:
    retriever.search(*inputs)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        retriever.search(*inputs)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def _parity(retriever: Retriever, graph: RetrievalGraph, inputs) -> Dict[str, float]:
    """Agreement of the exported file with the eager graph built from the training modules."""
    with torch.no_grad():
        want = graph(*inputs, *retriever.fresh_index)
    got = retriever.search(*inputs)
    ok = want[0] >= 0
    return {
        "ids": float((got[0] == want[0]).float().mean()),
        "max_abs_value_diff": float((got[1] - want[1])[ok].abs().max()) if bool(ok.any()) else 0.0,
        "max_abs_task_score_diff": float((got[2] - want[2]).abs().max()),
    }


def _table(rows: List[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [line]
    for j, r in enumerate(rows):
        out.append("|".join(f" {c:<{w}} " for c, w in zip(r, widths)))
        if j == 0:
            out.append(line)
    out.append(line)
    return "\n".join(out)


def run_demo(overrides: Sequence[str], aoti: bool = True) -> Dict[str, Any]:
    """Trains (or resumes) the default model, evaluates it, exports ``serving.pt2`` (with the
    AOTInductor graph unless ``aoti=False``), times and checks the exported file, prints a summary."""
    with initialize_config_module(config_module="silverrec.conf", version_base="1.3"):
        cfg = compose(
            config_name="train",
            # one torch thread: the small MLPs gain little from a second core, and oversubscribed
            # OpenMP threads slow training ~10x when anything else runs (measured on 2 cores)
            overrides=[f"paths.output_dir={RUN_DIR}", "trainer.num_threads=1", *DEMO_OVERRIDES, *overrides],
        )
    run_dir = cfg.paths.output_dir  # runs/demo unless overridden (paths.output_dir=...)
    dataset: RecDataset = instantiate(cfg.data)
    report = run_training(cfg, dataset)
    payload = load_checkpoint(report["train"]["checkpoint"])
    model = load_two_tower(payload)
    path = os.path.join(run_dir, "serving.pt2")
    config = ServingConfig(k=100)
    torch.set_num_threads(available_cores())  # training ran on one thread; serving uses every core
    t0 = time.perf_counter()
    graph, item_encoder, meta = build_serving_graph(model, dataset, config)
    meta = export_graph(graph, item_encoder, dataset, {**meta, "checkpoint": report["train"]["checkpoint"], "step": int(payload["step"])},
                        path, aoti=aoti)
    export_s = time.perf_counter() - t0
    retriever = Retriever(path)
    def request(b: int, flt=None):  # user slots, filter plan and exclusions (the fresh index is the retriever's)
        return example_inputs(dataset, meta, b, flt)[:5]

    latency, filtered = {}, {}
    for r in [retriever] + ([Retriever(path, backend="export")] if retriever.backend == "aoti" else []):
        latency[r.backend] = {str(b): round(_latency_ms(r, request(b, [""] * b)), 2) for b in (1, 16, 256)}
        filtered[r.backend] = {str(b): round(_latency_ms(r, request(b, [DEMO_FILTER] * b)), 2) for b in (1, 16)}
    parity = _parity(retriever, graph, request(64))
    # the test users' click-head queries and the published items, for benchmarks/ann.py
    ev = Evaluator(dataset, "test", [100])
    users, items = ev.embed(model, local_context())
    torch.save({"items": items, "users": users[:, 0]}, os.path.join(run_dir, "item_embeddings.pt"))

    report["export"] = {
        "path": os.path.abspath(path),
        "size_mb": round(os.path.getsize(path) / 2**20, 2),
        "version": meta["version"],
        "k": config.k,
        "serving_config": meta["serving_config"],
        "seconds": round(export_s, 1),
        "parity": parity,
        "backend": retriever.backend,
        "latency_ms_by_batch": latency[retriever.backend],
        "filtered_latency_ms_by_batch": filtered[retriever.backend],
        "export_program_latency_ms_by_batch": latency["export"],
        "export_program_filtered_latency_ms_by_batch": filtered["export"],
        "filter": DEMO_FILTER,
    }
    t0 = time.perf_counter()
    section, details = evaluate_served_details(retriever, model, dataset, max_users=SERVED_USERS)
    section["seconds"] = round(time.perf_counter() - t0, 1)
    report["served"] = section
    logger = make_logger(cfg.logger.log_dir if cfg.get("logger") else None, True)
    if logger:
        log_served(logger, section, details, int(payload["step"]), served_hparams(retriever, section))
        logger.close()
    write_json_atomic(os.path.join(run_dir, "report.json"), report)
    _print_summary(report, run_dir)
    return report


def _trained(train: Dict[str, Any]) -> str:
    start, steps = int(train.get("start_step", 0)), int(train["steps"])
    where = f"on {train['world_size']} process(es)"
    if start >= steps:
        return f"resumed at the final step {steps} (trained by an earlier run) {where}"
    if start:
        return f"trained steps {start}-{steps} (resumed) in {train['seconds']} s {where}"
    return f"trained {steps} steps in {train['seconds']} s {where}"


def _print_summary(report: Dict[str, Any], run_dir: str) -> None:
    test, valid = report["test"], report["valid"]
    rows = [["metric (test split)", "two-tower (click head)", "most popular", "ratio"]]
    for k in (10, 50, 100):
        for m in ("recall", "ndcg"):
            a, b = test[f"{m}@{k}"], test[f"popularity_{m}@{k}"]
            rows.append([f"{m}@{k}", f"{a:.4f}", f"{b:.4f}", f"{a / max(b, 1e-12):.1f}x"])
    print()
    print(_table(rows))
    print(f"valid recall@100 {valid['recall@100']:.4f} (popularity {valid['popularity_recall@100']:.4f}); "
          f"{test['num_users']} test users; {_trained(report['train'])}")
    mt = report["multitask"]
    print(f"\nmulti-task retrieval, {mt['num_users']} {mt['split']} users: dot product vs OverArch + Value Model "
          f"(candidates: top-{mt['pool_per_task']} per task, merged: {mt['pool_size_mean']:.0f} on average)")
    print(_table(multitask_table(mt)))
    ex = report["export"]
    served = "the AOTInductor graph" if ex["backend"] == "aoti" else "the torch.export program"
    print(f"\nexported {ex['path']} ({ex['size_mb']} MiB, version {ex['version']}); served by {served}, whose top-{ex['k']} "
          f"ids equal the eager graph's for {100 * ex['parity']['ids']:.1f}% of entries (max value diff "
          f"{ex['parity']['max_abs_value_diff']:.2e})")
    runs = [("latency_ms_by_batch", "filtered_latency_ms_by_batch", ex["backend"])]
    if ex["backend"] == "aoti":
        runs.append(("export_program_latency_ms_by_batch", "export_program_filtered_latency_ms_by_batch", "export"))
    lat = [["backend", "batch", "no filter: ms (median)", "queries/s", f"filter {ex['filter']!r}: ms", "queries/s"]]
    for plain, with_filter, backend in runs:
        for b, ms in ex[plain].items():
            f_ms = ex[with_filter].get(b)
            lat.append([backend, b, f"{ms:.2f}", f"{int(b) * 1000 / ms:.0f}", f"{f_ms:.2f}" if f_ms else "-",
                        f"{int(b) * 1000 / f_ms:.0f}" if f_ms else "-"])
    print(_table(lat))
    served = report["served"]
    print(f"\nwhat is served, evaluated like `silverrec-eval model={ex['path']}` ({served['seconds']} s; "
          f"report.json 'served' and TensorBoard served/* hold every filter of the suite):")
    print(served_table(served, classes=SERVED_CLASSES))
    print(f"report: {os.path.join(run_dir, 'report.json')}")
    print(f"TensorBoard: .venv/bin/tensorboard --logdir {run_dir}/tb")


def main() -> None:
    run_demo(sys.argv[1:])


if __name__ == "__main__":
    main()
