"""Stress (issue 16, item 7): ``silverrec-serve`` as a subprocess with ``--updates``, 8 query
clients and 1 writer adding, updating and deleting items for the whole run, filters on fresh
values; the server is killed with SIGKILL mid-run twice and restarted on the same updates file.
Asserts zero deleted items returned, zero filter violations, zero excluded items returned, zero
5xx, and every acknowledged update present after each restart. About a minute (the harness is
:mod:`silverrec.serve.stress`; ``benchmarks/soak.py`` runs it longer)."""
import os

from silverrec.serve.stress import StressHarness

PHASE_S = float(os.environ.get("SILVERREC_STRESS_PHASE_S", "15"))


def test_stress_with_kill_and_restart(model_path, tmp_path):
    harness = StressHarness(model_path, str(tmp_path / "updates.json"), clients=8, items=150, seed=0,
                            server_args=["--threads", "1"])
    harness.start()
    try:
        harness.run_for(PHASE_S)
        first = harness.kill_and_restart()
        harness.run_for(PHASE_S)
        second = harness.kill_and_restart()
        harness.run_for(2)
    finally:
        harness.stop()
    c = harness.counters
    report = f"{c}; restarts (verified, lost, seconds): {first}, {second}"
    print(report)
    assert c.queries > 100 and c.writes_acked > 50 and c.results_checked > 100, report  # the run did work
    assert c.server_errors == 0, report
    assert c.deleted_returned == 0, report
    assert c.filter_violations == 0, report
    assert c.excluded_returned == 0, report
    assert c.restarts == 2 and first[0] > 0 and second[0] >= first[0], report
    assert c.updates_lost == 0, report
