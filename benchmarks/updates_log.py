"""The durable item-update path at scale: 100,000 upserts of new items through the update log.

Each upsert is what ``Retriever.upsert_items`` persists for one request: one record appended to
the write-ahead log and fsynced (:class:`~silverrec.serve.update_log.UpdateLog`), the state
updated (:class:`~silverrec.serve.update_log.UpdateState`), and a compaction into a new snapshot
whenever the log reaches its threshold (amortised: the threshold grows with the snapshot). The
target (issue 16): the last 1,000 upserts cost no more than 1.5x the first 1,000.

Not measured here: building the in-memory fresh index the serving graph takes as input, which
``Retriever`` still rebuilds from all fresh items on every update.

    .venv/bin/python benchmarks/updates_log.py [--n 100000] [--dir /tmp]
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
    args = p.parse_args()
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


if __name__ == "__main__":
    main()
