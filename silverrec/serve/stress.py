"""A stress harness for ``silverrec-serve`` (issue 16, item 7): query clients, one writer, kill -9.

Used by ``tests/serve/test_stress.py`` (about a minute) and ``benchmarks/soak.py`` (longer). It
runs the real server as a subprocess (``python -m silverrec.serve.http --updates FILE --port 0``),
then for the whole run:

* **one writer** adds, updates and deletes items -- ``w<i>`` items added after publish and a few
  published ones -- each holding a *fresh* value of its own (``category:sc<i>-<version>``, first
  seen in the update) and a fresh value shared by its group (``tags:st-<i % groups>``); every
  request is recorded with the times it was sent and acknowledged;
* **N query clients** send queries filtering on those fresh values (the item's own value, its
  group's value, ``NOT`` its group's value, no filter), with an item excluded, and check every
  result against the writer's record: a **deleted item returned** (its delete acknowledged before
  the query was sent, nothing sent since), a **filter violation** (no state the item can have had
  while the query ran satisfies the filter), an **excluded item returned**, and every **5xx**;
* at chosen times the server is killed with ``SIGKILL`` and started again on the same updates
  file; with the writer paused, every **acknowledged update** is then checked to be there: each
  item found by a filter on the value of its last acknowledged version (or of an update in flight
  at the kill, which may or may not have been applied), a deleted item under none.

Example::

    >>> harness = StressHarness("serving.pt2", "/tmp/run/updates.json", clients=8)   # doctest: +SKIP
    >>> harness.start(); harness.run_for(20); lost = harness.kill_and_restart()    # doctest: +SKIP
    >>> harness.stop(); harness.counters                                            # doctest: +SKIP
"""
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

INF = float("inf")
_PORT = re.compile(r"on http://[^:]+:(\d+) ")


@dataclass
class Op:
    """One writer request: ``state`` is the item's attributes after it (None: deleted)."""

    item: str
    state: Optional[Dict[str, List[str]]]
    sent: float
    acked: float = INF  # time.monotonic() of a 200 answer; INF: no answer (in flight at a kill)
    status: int = 0


@dataclass
class Counters:
    queries: int = 0
    results_checked: int = 0
    writes_acked: int = 0
    writes_failed: int = 0  # no answer (in flight at a kill) or refused
    server_errors: int = 0  # 5xx answers, queries and writes
    connection_errors: int = 0  # refused / reset, expected only around a kill
    deleted_returned: int = 0
    filter_violations: int = 0
    excluded_returned: int = 0
    restarts: int = 0
    updates_verified: int = 0
    updates_lost: int = 0
    examples: List[str] = field(default_factory=list)  # the first few violations, for the report

    def note(self, what: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(what)


class ServerProcess:
    """``silverrec-serve`` in a subprocess on a free loopback port."""

    def __init__(self, model: str, updates: str, extra: Optional[List[str]] = None) -> None:
        self.cmd = [sys.executable, "-m", "silverrec.serve.http", "--model", model, "--updates", updates, "--port", "0",
                    *(extra or [])]
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        self.log: List[str] = []

    def start(self, timeout: float = 300.0) -> float:
        """Starts it and waits until /healthz answers; returns the seconds that took."""
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        found = threading.Event()

        def drain(proc: subprocess.Popen) -> None:
            for line in proc.stderr:
                self.log.append(line.rstrip())
                del self.log[:-200]
                m = _PORT.search(line)
                if m and not found.is_set():
                    self.port = int(m.group(1))
                    found.set()

        threading.Thread(target=drain, args=(self.proc,), daemon=True).start()
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"silverrec-serve exited with {self.proc.returncode}:\n" + "\n".join(self.log[-30:]))
            if found.is_set():
                try:
                    if request(self.port, "GET", "/healthz", timeout=5)[0] == 200:
                        return time.monotonic() - t0
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("silverrec-serve did not become ready:\n" + "\n".join(self.log[-30:]))

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()


def request(port: int, method: str, path: str, body: Any = None, timeout: float = 60.0,
            conn: Optional[http.client.HTTPConnection] = None) -> Tuple[int, Any]:
    """One request (JSON in and out); raises OSError / HTTPException when the server is away."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"content-type": "application/json"} if data else {})
        res = conn.getresponse()
        raw = res.read()
        try:
            return res.status, json.loads(raw)
        except ValueError:
            return res.status, raw
    finally:
        if own:
            conn.close()


class StressHarness:
    """Query clients and a writer against a :class:`ServerProcess` (see the module doc).

    Args:
        model (str): the exported ``.pt2``.
        updates (str): the updates file (``--updates``) the server persists to.
        clients (int): query client threads.
        items (int): ``w<i>`` items the writer cycles through (plus ``items // 10`` published ones).
        seed (int): the writer's and clients' random choices.
    """

    GROUPS = 8
    VERSIONS = 4  # an item's own value cycles through these, so fresh value slots stay bounded

    def __init__(self, model: str, updates: str, clients: int = 8, items: int = 200, seed: int = 0,
                 server_args: Optional[List[str]] = None) -> None:
        self.server = ServerProcess(model, updates, server_args)
        self.clients, self.seed = clients, seed
        self.counters = Counters()
        self.ops: Dict[str, List[Op]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._writer_may_run = threading.Event()
        self._writer_idle = threading.Event()
        self._threads: List[threading.Thread] = []
        self.items = [f"w{i}" for i in range(items)]
        self.published: List[str] = []
        self.user: Dict[str, Any] = {}
        self.k = 0
        self.start_seconds: List[float] = []

    # --- the run -----------------------------------------------------------------------------------
    def start(self) -> None:
        self.start_seconds.append(self.server.start())
        schema = request(self.server.port, "GET", "/schema")[1]
        self.user = schema["example_request"]["users"][0]
        self.k = int(schema["k"])
        published = [x for x in schema["example_request"]["users"][0].get("history", [])]
        rng = random.Random(self.seed)
        # published items to update and delete: from /schema's examples (history ids are published)
        examples = next(f["examples"] for f in schema["user_features"] if f["name"] == "history")
        self.published = list(dict.fromkeys(published + examples))[: max(1, len(self.items) // 10)]
        self._writer_may_run.set()
        self._threads = [threading.Thread(target=self._writer, args=(rng.random(),), daemon=True)]
        self._threads += [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.clients)]
        for t in self._threads:
            t.start()

    def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.2)

    def kill_and_restart(self) -> Tuple[int, int, float]:
        """SIGKILL mid-run, start again, check every acknowledged update with the writer paused;
        returns (updates verified, updates lost, seconds to restart)."""
        self.server.kill9()
        took = self.server.start()
        self.start_seconds.append(took)
        self.counters.restarts += 1
        self._writer_may_run.clear()
        self._writer_idle.wait(120)
        try:
            verified, lost = self.verify()
        finally:
            self._writer_may_run.set()
        return verified, lost, took

    def stop(self) -> None:
        self._stop.set()
        self._writer_may_run.set()
        for t in self._threads:
            t.join(120)
        self.server.stop()

    # --- the writer ----------------------------------------------------------------------------------
    def _attributes(self, item: str, version: int) -> Dict[str, List[str]]:
        i = self._number(item)
        return {"category": [f"sc{i}-{version}"], "language": ["en"], "tags": [f"st-{i % self.GROUPS}"]}

    def _writer(self, seed: float) -> None:
        rng = random.Random(seed)
        conn: Optional[http.client.HTTPConnection] = None
        while not self._stop.is_set():
            if not self._writer_may_run.is_set():
                self._writer_idle.set()
                self._writer_may_run.wait()
                continue
            self._writer_idle.clear()
            item = rng.choice(self.items) if rng.random() < 0.9 else rng.choice(self.published)
            delete = rng.random() < 0.25
            state = None if delete else self._attributes(item, rng.randrange(self.VERSIONS))
            op = Op(item, state, time.monotonic())
            with self._lock:
                self.ops.setdefault(item, []).append(op)
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
                if delete:
                    status, body = request(0, "DELETE", f"/items/{item}", conn=conn)
                else:
                    status, body = request(0, "POST", "/items", {"item_id": item, "attributes": state}, conn=conn)
            except (OSError, http.client.HTTPException):
                conn = None
                self.counters.connection_errors += 1
                self.counters.writes_failed += 1
                time.sleep(0.05)
                continue
            op.status = status
            if status == 200 or (delete and status == 404):  # a 404 delete: already gone, acknowledged
                op.acked = time.monotonic()
                self.counters.writes_acked += 1
            else:
                self.counters.writes_failed += 1
                if status >= 500:
                    self.counters.server_errors += 1
                    self.counters.note(f"write {item}: {status} {str(body)[:200]}")
        self._writer_idle.set()

    # --- the checks ----------------------------------------------------------------------------------
    def _possible(self, item: str, sent: float, answered: float) -> List[Optional[Dict[str, List[str]]]]:
        """The states ``item`` may have had while a query sent at ``sent`` and answered at
        ``answered`` ran: the last one acknowledged before it was sent (or the published one),
        and every one sent before it was answered and not acknowledged before it was sent."""
        with self._lock:
            ops = list(self.ops.get(item, []))
        before = [op for op in ops if op.acked < sent]
        states: List[Optional[Dict[str, List[str]]]] = [before[-1].state if before else {"published": []}]
        states += [op.state for op in ops if op.sent < answered and op.acked >= sent]
        return states

    def _client(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index + 1)
        conn: Optional[http.client.HTTPConnection] = None
        while not self._stop.is_set():
            item = rng.choice(self.items)
            i, g, v = int(item[1:]), rng.randrange(self.GROUPS), rng.randrange(self.VERSIONS)
            kind = rng.choice(["own", "group", "not_group", "none"])
            flt = {"own": f"category:sc{i}-{v}", "group": f"tags:st-{g}",
                   "not_group": f"language:en AND NOT tags:st-{g}", "none": ""}[kind]
            excluded = rng.choice(self.items)
            body = {"users": [self.user], "filter": flt, "exclude": [[excluded]], "k": self.k}
            sent = time.monotonic()
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
                status, answer = request(0, "POST", "/query", body, conn=conn)
            except (OSError, http.client.HTTPException):
                conn = None
                self.counters.connection_errors += 1
                time.sleep(0.05)
                continue
            answered = time.monotonic()
            self.counters.queries += 1
            if status >= 500:
                self.counters.server_errors += 1
                self.counters.note(f"query {flt!r}: {status} {str(answer)[:200]}")
                continue
            if status != 200:
                self.counters.note(f"query {flt!r}: {status} {str(answer)[:200]}")
                continue
            for row in answer["results"][0]:
                self._check(row["item_id"], kind, flt, i, g, v, excluded, sent, answered)

    def _check(self, got: str, kind: str, flt: str, i: int, g: int, v: int, excluded: str, sent: float,
               answered: float) -> None:
        self.counters.results_checked += 1
        if got == excluded:
            self.counters.excluded_returned += 1
            self.counters.note(f"{flt!r}: excluded {got} returned")
        tracked = got in self.ops or got in self.items
        if not tracked:  # a published item the writer never touched: holds no fresh value
            if kind in ("own", "group"):
                self.counters.filter_violations += 1
                self.counters.note(f"{flt!r}: untouched published item {got} returned")
            return
        states = self._possible(got, sent, answered)
        if all(s is None for s in states):
            self.counters.deleted_returned += 1
            self.counters.note(f"{flt!r}: {got} returned after its delete was acknowledged")
            return
        live = [s for s in states if s is not None]
        own = f"sc{i}-{v}"
        ok = {"own": any(own in s.get("category", []) for s in live),
              "group": any(f"st-{g}" in s.get("tags", []) for s in live),
              "not_group": any(f"st-{g}" not in s.get("tags", []) for s in live),
              "none": True}[kind]
        if not ok:
            self.counters.filter_violations += 1
            self.counters.note(f"{flt!r}: {got} returned; its possible states {live}")

    def verify(self) -> Tuple[int, int]:
        """Every item the writer touched is as its last acknowledged update left it (or as an update
        in flight at the kill left it): found by a filter on its own value of that version, and by
        one on any of its versions only then; a deleted (or never changed) item by neither."""
        expected: Dict[str, List[Optional[Dict[str, List[str]]]]] = {}
        with self._lock:
            for item, ops in self.ops.items():
                acked = [j for j, op in enumerate(ops) if op.acked < INF]
                last = acked[-1] if acked else -1
                start = [ops[last].state] if last >= 0 else [{"published": []}]
                expected[item] = start + [op.state for op in ops[last + 1 :]]
        queries: List[Tuple[str, str]] = []  # (item, filter)
        for item in sorted(expected):
            n = self._number(item)
            queries.append((item, " OR ".join(f"category:sc{n}-{v}" for v in range(self.VERSIONS))))
            queries += [(item, f"category:sc{n}-{v}") for v in range(self.VERSIONS)]
        found: Dict[Tuple[str, str], List[str]] = {}
        for start in range(0, len(queries), 250):
            part = queries[start : start + 250]
            status, answer = request(self.server.port, "POST", "/query",
                                     {"users": [self.user] * len(part), "filter": [f for _, f in part], "k": self.k},
                                     timeout=300)
            if status != 200:
                raise RuntimeError(f"verification query answered {status}: {str(answer)[:300]}")
            for key, rows in zip(part, answer["results"]):
                found[key] = [r["item_id"] for r in rows]
        verified = lost = 0
        for item in sorted(expected):
            n = self._number(item)
            got = [found[(item, f)] for f in [q for x, q in queries if x == item]]
            ok = False
            for state in expected[item]:
                if state is None or "published" in state:
                    ok |= all(g == [] for g in got)
                else:
                    own = state["category"][0]
                    ok |= got[0] == [item] and all(
                        g == ([item] if f"sc{n}-{v}" == own else []) for v, g in enumerate(got[1:]))
            verified += 1
            if not ok:
                lost += 1
                self.counters.note(f"after restart {item}: found {got}, expected one of {expected[item]}")
        self.counters.updates_verified += verified
        self.counters.updates_lost += lost
        return verified, lost

    def _number(self, item: str) -> int:
        return int(item[1:]) if item.startswith("w") else 10_000 + self.published.index(item)
