"""``make demo``: train -> evaluate -> export -> load & time, on the embedded synthetic world.

    python -m silverrec.train.demo [hydra overrides...]     # e.g. data.size=small

Writes everything under ``runs/demo`` (or ``paths.output_dir=...``: checkpoints, TensorBoard, ``retrieval.pt2``,
``item_embeddings.pt``, ``report.json``) and prints a summary table. A killed demo resumes
from its last checkpoint when run again.
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
from silverrec.retrieval.exact import exact_topk
from silverrec.serve.artifact import ExportedRetriever
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.evaluate import write_json_atomic
from silverrec.train.evaluator import Evaluator
from silverrec.train.distributed import local_context
from silverrec.train.export import example_request, export_retrieval, request_tensors
from silverrec.train.train import run_training
from silverrec.train.trainer import load_two_tower

RUN_DIR = "runs/demo"


def _latency_ms(retriever: ExportedRetriever, dataset: RecDataset, batch: int, repeats: int = 20) -> float:
    values, lengths = example_request(dataset, num_users=batch)
    retriever.search(values, lengths)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        retriever.search(values, lengths)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def _parity(retriever: ExportedRetriever, ev: Evaluator, users: torch.Tensor, items: torch.Tensor,
            dataset: RecDataset, num_users: int = 64) -> float:
    """Share of top-K ids where the exported module agrees with the training-side embeddings
    (``users`` [U, D] of ``ev``'s users, ``items`` [N, D]) for the first ``num_users`` users."""
    n = min(num_users, users.shape[0])
    _, want = exact_topk(users[:n], items, retriever.k)
    rows = np.arange(n)
    values, lengths = request_tensors(dataset, ev.users.users[rows], ev.users.history.take(rows))
    got, _ = retriever.search(values, lengths)
    return float((got == want).float().mean())


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


def run_demo(overrides: Sequence[str]) -> Dict[str, Any]:
    with initialize_config_module(config_module="silverrec.conf", version_base="1.3"):
        cfg = compose(
            config_name="train",
            # one torch thread: the small MLPs gain little from a second core, and oversubscribed
            # OpenMP threads slow training ~10x when anything else runs (measured on 2 cores)
            overrides=[f"paths.output_dir={RUN_DIR}", "trainer.num_threads=1", *overrides],
        )
    run_dir = cfg.paths.output_dir  # runs/demo unless overridden (paths.output_dir=...)
    dataset: RecDataset = instantiate(cfg.data)
    report = run_training(cfg, dataset)
    payload = load_checkpoint(report["train"]["checkpoint"])
    model = load_two_tower(payload)
    path = os.path.join(run_dir, "retrieval.pt2")
    t0 = time.perf_counter()
    meta = export_retrieval(model, dataset, 100, path, {"checkpoint": report["train"]["checkpoint"], "step": int(payload["step"])})
    export_s = time.perf_counter() - t0
    retriever = ExportedRetriever(path)
    latency = {str(b): round(_latency_ms(retriever, dataset, b), 2) for b in (1, 16, 256)}
    # the test users' queries and the published items: for the parity check and benchmarks/ann.py
    ev = Evaluator(dataset, "test", [100])
    users, items = ev.embed(model, local_context())
    parity = _parity(retriever, ev, users, items, dataset)
    torch.save({"items": items, "users": users}, os.path.join(run_dir, "item_embeddings.pt"))

    report["export"] = {
        "path": os.path.abspath(path),
        "size_mb": round(os.path.getsize(path) / 2**20, 2),
        "version": meta["version"],
        "k": 100,
        "seconds": round(export_s, 1),
        "parity_top100_ids": parity,
        "latency_ms_by_batch": latency,
    }
    write_json_atomic(os.path.join(run_dir, "report.json"), report)
    _print_summary(report, run_dir)
    return report


def _print_summary(report: Dict[str, Any], run_dir: str) -> None:
    test, valid = report["test"], report["valid"]
    rows = [["metric (test split)", "two-tower", "most popular", "ratio"]]
    for k in (10, 50, 100):
        for m in ("recall", "ndcg"):
            a, b = test[f"{m}@{k}"], test[f"popularity_{m}@{k}"]
            rows.append([f"{m}@{k}", f"{a:.4f}", f"{b:.4f}", f"{a / max(b, 1e-12):.1f}x"])
    print()
    print(_table(rows))
    ex = report["export"]
    print(f"valid recall@100 {valid['recall@100']:.4f} (popularity {valid['popularity_recall@100']:.4f}); "
          f"{test['num_users']} test users; trained {report['train']['steps']} steps in {report['train']['seconds']} s "
          f"on {report['train']['world_size']} process(es)")
    print(f"exported {ex['path']} ({ex['size_mb']} MiB, version {ex['version']}); "
          f"exported top-100 ids equal the training-side modules' for {100 * ex['parity_top100_ids']:.1f}% of entries")
    lat = [["batch", "latency (ms, median)", "queries/s"]]
    for b, ms in ex["latency_ms_by_batch"].items():
        lat.append([b, f"{ms:.2f}", f"{int(b) * 1000 / ms:.0f}"])
    print(_table(lat))
    print(f"report: {os.path.join(run_dir, 'report.json')}")
    print(f"TensorBoard: .venv/bin/tensorboard --logdir {run_dir}/tb")


def main() -> None:
    run_demo(sys.argv[1:])


if __name__ == "__main__":
    main()
