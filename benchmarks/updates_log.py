"""The durable item-update path at scale: 100,000 upserts of new items, time per upsert at the start and the end.

Two paths:

* the log alone (default): what ``Retriever.upsert_items`` persists for one request: one record
  appended to the write-ahead log and fsynced (:class:`~silverrec.serve.update_log.UpdateLog`),
  the state updated (:class:`~silverrec.serve.update_log.UpdateState`), and a compaction into a
  new snapshot whenever the log reaches its threshold (amortised: the threshold grows with the
  snapshot);
* ``--model ARTIFACT``: the whole serving path, ``Retriever.upsert_items`` of one item per call
  with ``updates_path`` (what ``POST /items`` runs): the item tower embeds it, the log record is
  fsynced, the in-place fresh index (:mod:`silverrec.retrieval.fresh_store`) takes its row and a
  new snapshot is published. Attribute values are drawn from the artifact's filter dictionary.

The target (issue 16): the last 1,000 upserts cost no more than 1.5x the first 1,000.

    .venv/bin/python benchmarks/updates_log.py [--n 100000] [--dir /tmp] [--model runs/demo/serving.pt2]
"""
import argparse
import os
import shutil
import tempfile
import time

from silverrec.serve.update_log import UpdateLog, UpdateState


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="upserts (default 100000)")
    p.add_argument("--window", type=int, default=1000, help="upserts timed at the start and at the end (default 1000)")
    p.add_argument("--dir", default=None, help="folder for the files (default: a temporary folder beside this script)")
    p.add_argument("--model", default=None, help="an exported .pt2: time Retriever.upsert_items (the serving path)")
    args = p.parse_args()
    if args.model:
        return serving_path(args)
    folder = tempfile.mkdtemp(prefix="updates-log-", dir=args.dir or os.path.dirname(os.path.abspath(__file__)))
    try:
        path = os.path.join(folder, "updates.json")
        log = UpdateLog(path, "benchmark")
        known = lambda x: False  # noqa: E731  every id is a new item
        log.open(known, known)
        state = UpdateState(known, known)
        times = []
        compactions, compaction_s = 0, 0.0
        t_all = time.perf_counter()
        for seq in range(1, args.n + 1):
            record = {"seq": seq, "op": "upsert", "items": [{"item_id": f"new-{seq:06d}", "attributes": {
                "language": ["en"], "category": [f"c{seq % 97}"], "creator": [f"cr-{seq % 5003}"]}}]}
            t0 = time.perf_counter()
            log.append(record)
            state.apply(record)
            if log.needs_compaction():
                t1 = time.perf_counter()
                log.compact(state.to_json(), seq)
                compactions += 1
                compaction_s += time.perf_counter() - t1
            times.append(time.perf_counter() - t0)
        total = time.perf_counter() - t_all
        log.close()
        w = args.window
        first, last = sum(times[:w]) / w, sum(times[-w:]) / w
        print(f"{args.n} upserts of new items, one fsynced log record each, in {total:.1f} s "
              f"({compactions} compactions, {compaction_s:.2f} s; snapshot {os.path.getsize(path) / 2**20:.1f} MiB)")
        print(f"| upserts          | per upsert (ms) |")
        print(f"|------------------|-----------------|")
        print(f"| first {w:<10} | {first * 1e3:15.3f} |")
        print(f"| last {w:<11} | {last * 1e3:15.3f} |")
        print(f"| all {args.n:<12} | {total / args.n * 1e3:15.3f} |")
        print(f"last / first = {last / first:.2f} (target <= 1.5)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def serving_path(args: argparse.Namespace) -> None:
    """``Retriever.upsert_items`` of one new item per call, with an updates file (durable)."""
    from silverrec.serve import Retriever

    folder = tempfile.mkdtemp(prefix="updates-serving-", dir=args.dir or os.path.dirname(os.path.abspath(__file__)))
    try:
        path = os.path.join(folder, "updates.json")
        r = Retriever(args.model, updates_path=path)
        terms: dict = {}
        for feature, value in r.metadata["filter"]["terms"]:
            terms.setdefault(feature, []).append(value)
        slots = dict(r.encoder.item_slots)
        features = [f for f in r.schema.item_features[1:] if f.name in terms]
        times, cpu = [], []
        t_all = time.perf_counter()
        for i in range(args.n):
            attrs = {f.name: [terms[f.name][(i * (7 + j)) % len(terms[f.name])]] for j, f in enumerate(features)}
            t0, c0 = time.perf_counter(), time.process_time()
            r.upsert_items([{"item_id": f"new-{i:06d}", "attributes": attrs}])
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            if (i + 1) % max(1, args.n // 10) == 0:
                print(f"  {i + 1} upserts, {time.perf_counter() - t_all:.0f} s", flush=True)
        total = time.perf_counter() - t_all
        fresh = r.fresh_index
        r.close()
        store = getattr(r._updates, "_store", None)  # None: an ItemUpdates that rebuilds (before fresh_store)
        w = args.window
        first, last = sum(times[:w]) / w, sum(times[-w:]) / w
        cpu_first, cpu_last = sum(cpu[:w]) / w, sum(cpu[-w:]) / w
        print(f"{args.n} upserts of new items through Retriever.upsert_items ({args.model}, updates file: one fsynced "
              f"log record each) in {total:.1f} s; fresh index {fresh.codes.shape[0]} rows, "
              f"{store.reallocations if store is not None else 'n/a'} reallocations; {len(slots)} item slots")
        print("CPU time: this process's, less sensitive than wall time to other processes on a shared machine "
              "(wall time includes the fsync)")
        print(f"| upserts          | wall per upsert (ms) | CPU per upsert (ms) |")
        print(f"|------------------|---------------------:|--------------------:|")
        print(f"| first {w:<10} | {first * 1e3:20.3f} | {cpu_first * 1e3:19.3f} |")
        print(f"| last {w:<11} | {last * 1e3:20.3f} | {cpu_last * 1e3:19.3f} |")
        print(f"| all {args.n:<12} | {total / args.n * 1e3:20.3f} | {sum(cpu) / args.n * 1e3:19.3f} |")
        print(f"last / first = {last / first:.2f} wall, {cpu_last / cpu_first:.2f} CPU (target <= 1.5)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
