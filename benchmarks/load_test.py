"""Load test of ``silverrec-serve`` over loopback: QPS and latency at several concurrency levels.

    python benchmarks/load_test.py [--model runs/demo/serving.pt2] [--concurrency 1 4 16 64]
                                   [--duration 10] [--users-per-request 1] [--k 10]

Starts the server in a subprocess on a free loopback port, then for each concurrency level runs
N client threads (keep-alive ``http.client`` connections, so the client costs little CPU) that
post ``/query`` requests back to back for ``--duration`` seconds after a warm-up. Requests are
random users of the served schema (random feature values and a random 20-item history), a
filter drawn from a small mix (none, one term, a negated term, a conjunction) and the last five
history items excluded. Prints concurrency, requests/s, users/s, p50/p99 latency and the mean
number of users per forward (from the server's ``/metrics``).
"""
import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Tuple

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from silverrec.schema import Schema
from silverrec.serve.artifact import load_artifact

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> Tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def _wait_ready(port: int, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            if _get(port, "/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server did not become ready in {timeout:.0f} s")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc; NaN where there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _metric_sums(port: int) -> Dict[str, float]:
    """``silverrec_batch_size_{sum,count}`` from /metrics (Prometheus text)."""
    status, body = _get(port, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}: {body[:200]!r}")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "silverrec_batch_size":
            for s in family.samples:
                if s.name.endswith(("_sum", "_count")):
                    out[s.name] = s.value
    return out


def _requests(schema: Dict[str, Any], n: int, users_per_request: int, k: int, seed: int) -> List[bytes]:
    """``n`` request bodies of random users (values drawn from the full vocabularies)."""
    rng = random.Random(seed)
    vocab = schema["vocab"]
    items = vocab["item_id"]
    filters = schema["filters"]
    bodies = []
    for _ in range(n):
        users, exclude = [], []
        for _ in range(users_per_request):
            user: Dict[str, Any] = {f: rng.choice(vocab[f]) for f in schema["user_features"]}
            history = rng.sample(items, 20)
            user["history"] = history
            users.append(user)
            exclude.append(history[-5:])
        bodies.append(json.dumps({"users": users, "filter": rng.choice(filters), "exclude": exclude, "k": k}).encode())
    return bodies


def _schema_for_clients(model: str) -> Dict[str, Any]:
    """Full vocabularies of the user features and items, and a filter mix, from the artifact."""
    _, meta = load_artifact(model)
    schema = Schema.from_dict(meta["schema"])
    vocab = {f.name: list(f.vocab) for f in schema.user_features}
    vocab["item_id"] = list(schema.item_ids)
    terms = [tuple(t) for t in meta["filter"]["terms"]]
    by_feature: Dict[str, List[str]] = {}
    for feature, value in terms:
        by_feature.setdefault(feature, []).append(value)
    names = list(by_feature)
    a, b = names[0], names[min(1, len(names) - 1)]
    filters = ["", f"{a}:{by_feature[a][0]}", f"NOT {b}:{by_feature[b][0]}",
               f"{a}:{by_feature[a][0]} AND NOT {b}:{by_feature[b][-1]}"]
    return {"vocab": vocab, "user_features": [f.name for f in schema.user_features if f.max_length == 1],
            "filters": filters}


def _run_level(port: int, bodies: List[bytes], concurrency: int, duration: float, warmup: float
               ) -> Tuple[List[float], int, int]:
    """N threads post back to back; returns latencies (s) of requests started after the warm-up,
    the number of non-200 answers and the number of requests in the measured window."""
    start_at = time.monotonic() + warmup
    stop_at = start_at + duration
    latencies: List[List[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"content-type": "application/json"}
        j = i
        while True:
            t0 = time.monotonic()
            if t0 >= stop_at:
                break
            body = bodies[j % len(bodies)]
            j += concurrency
            conn.request("POST", "/query", body=body, headers=headers)
            res = conn.getresponse()
            res.read()
            t1 = time.monotonic()
            if t0 >= start_at:
                latencies[i].append(t1 - t0)
                errors[i] += res.status != 200
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [x for xs in latencies for x in xs]
    return flat, sum(errors), len(flat)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=os.path.join(REPO, "runs", "demo", "serving.pt2"))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each level")
    p.add_argument("--users-per-request", type=int, default=1)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--requests", type=int, default=2000, help="distinct request bodies (cycled)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if not os.path.isfile(args.model):
        raise SystemExit(f"{args.model} does not exist: run `make demo` (or silverrec-export) first")

    schema = _schema_for_clients(args.model)
    bodies = _requests(schema, args.requests, args.users_per_request, args.k, args.seed)
    port = _free_port()
    cmd = [sys.executable, "-m", "silverrec.serve.http", "--model", args.model, "--port", str(port),
           "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "4096"]
    server = subprocess.Popen(cmd, cwd=REPO)
    try:
        _wait_ready(port, server)
        print(f"server: {' '.join(cmd[1:])}")
        print(f"{args.duration:g} s per level after {args.warmup:g} s warm-up; {args.users_per_request} user(s) per "
              f"request, k={args.k}; filters {schema['filters']}; {os.cpu_count()} CPU cores shared by server and clients")
        rows = []
        for c in args.concurrency:
            before = _metric_sums(port)
            cpu0 = _cpu_seconds(server.pid)
            lat, errors, n = _run_level(port, bodies, c, args.duration, args.warmup)
            cpu = _cpu_seconds(server.pid) - cpu0  # over warm-up + measured window
            after = _metric_sums(port)
            forwards = after["silverrec_batch_size_count"] - before["silverrec_batch_size_count"]
            users = after["silverrec_batch_size_sum"] - before["silverrec_batch_size_sum"]
            ms = np.asarray(lat) * 1000
            rows.append((c, n / args.duration, n * args.users_per_request / args.duration, float(np.percentile(ms, 50)),
                         float(np.percentile(ms, 99)), users / max(forwards, 1), errors,
                         1000 * cpu / max(1.0, n * (args.duration + args.warmup) / args.duration)))
        print("server CPU ms/request: the server process's CPU time (all threads) per request answered, an "
              "efficiency figure that other load on a shared machine disturbs less than requests/s")
        print("| concurrency | requests/s | users/s | p50 (ms) | p99 (ms) | mean batch (users/forward) | errors | server CPU ms/request |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c, rps, ups, p50, p99, mean_batch, errors, cpu_ms in rows:
            print(f"| {c} | {rps:.0f} | {ups:.0f} | {p50:.2f} | {p99:.2f} | {mean_batch:.1f} | {errors} | {cpu_ms:.2f} |")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
