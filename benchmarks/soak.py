"""Soak test of ``silverrec-serve`` (issue 16, item 7): query clients and a writer for a long run,
with kill -9 and restart cycles, every result and every acknowledged update checked.

    .venv/bin/python benchmarks/soak.py [--model ARTIFACT] [--minutes 5] [--cycles 5] [--clients 8]

The harness is :mod:`silverrec.serve.stress` (the one ``tests/serve/test_stress.py`` runs for a
minute): N query clients filter on fresh values (an item's own value, its group's, ``NOT`` its
group's, none) with an item excluded; one writer adds, updates and deletes items the whole run.
The run is split into ``--cycles`` phases; each ends with SIGKILL of the server mid-run, a restart
on the same updates file, and (writer paused) a check of every acknowledged update. Prints one
row per cycle and the totals. Targets (issue 16): zero 5xx, zero lost acknowledged updates.

``--model`` must reserve fresh value slots (exports since issue 16 do: ``serving.fresh_terms``);
without it, a tiny model is trained and exported into a temporary folder first (about a minute).
"""
import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_export(folder: str) -> str:
    """A tiny synthetic world, 30 training steps, exported with the default serving settings."""
    from hydra import compose, initialize_config_module

    from silverrec.data.synthetic import synthetic_dataset
    from silverrec.retrieval.serving_graph import ServingConfig
    from silverrec.train.checkpoint import load_checkpoint
    from silverrec.train.export import export_serving
    from silverrec.train.train import run_training
    from silverrec.train.trainer import load_two_tower

    with initialize_config_module(config_module="silverrec.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["debug=cpu_tiny", f"paths.output_dir={folder}",
                                                       "trainer.max_steps=30", "trainer.eval_every=15"])
    report = run_training(cfg)
    model = load_two_tower(load_checkpoint(report["train"]["checkpoint"]))
    path = os.path.join(folder, "serving.pt2")
    export_serving(model, synthetic_dataset("tiny", seed=0), ServingConfig(k=20, candidates_per_task=30, num_clusters=12),
                   path, {})
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="an exported .pt2 with fresh value slots (default: a tiny export)")
    p.add_argument("--minutes", type=float, default=5.0, help="total run time, restarts excluded (default 5)")
    p.add_argument("--cycles", type=int, default=5, help="kill -9 and restart cycles (default 5)")
    p.add_argument("--clients", type=int, default=8, help="query client threads (default 8)")
    p.add_argument("--items", type=int, default=300, help="items the writer cycles through (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads (default 1)")
    args = p.parse_args()
    folder = tempfile.mkdtemp(prefix="soak-")
    sys.path.insert(0, REPO)
    from silverrec.serve.stress import StressHarness

    try:
        model = args.model or tiny_export(os.path.join(folder, "model"))
        harness = StressHarness(model, os.path.join(folder, "updates.json"), clients=args.clients, items=args.items,
                                seed=args.seed, server_args=["--threads", str(args.threads)])
        phase = args.minutes * 60 / args.cycles
        print(f"soak: {model}, {args.clients} query clients + 1 writer, {args.cycles} cycles of {phase:.0f} s, "
              f"each ending with kill -9 and a restart", flush=True)
        t0 = time.monotonic()
        harness.start()
        rows = []
        fields = ("queries", "results_checked", "writes_acked", "server_errors", "deleted_returned", "filter_violations",
                  "excluded_returned")
        before = dataclasses.replace(harness.counters)
        try:
            for cycle in range(1, args.cycles + 1):
                harness.run_for(phase)
                verified, lost, restart_s = harness.kill_and_restart()
                c = harness.counters
                rows.append((cycle, *(getattr(c, f) - getattr(before, f) for f in fields), verified, lost, restart_s))
                before = dataclasses.replace(c)
                print(f"  cycle {cycle}: {rows[-1]}", flush=True)
        finally:
            harness.stop()
        c = harness.counters
        print(f"total {time.monotonic() - t0:.0f} s")
        print("| cycle | queries | results checked | writes acked | 5xx | deleted returned | filter violations | "
              "excluded returned | acked updates verified after kill -9 | lost | restart (s) |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            print("| " + " | ".join(str(x) if not isinstance(x, float) else f"{x:.1f}" for x in row) + " |")
        print(f"| all | {c.queries} | {c.results_checked} | {c.writes_acked} | {c.server_errors} | {c.deleted_returned} | "
              f"{c.filter_violations} | {c.excluded_returned} | {c.updates_verified} | {c.updates_lost} | |")
        if c.examples:
            print("examples:", *c.examples, sep="\n  ")
        ok = c.server_errors == c.deleted_returned == c.filter_violations == c.excluded_returned == c.updates_lost == 0
        print("targets met: zero 5xx, zero lost acknowledged updates" if ok else "TARGETS MISSED")
        if not ok:
            raise SystemExit(1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
