"""``make gpu-check`` (issue 17, item 5) on a machine without a GPU: it fails loudly, and every
step runs on the CPU in its dry-run mode (tiny sizes), so the script itself is exercised here."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_check.py")
HAS_CUDA = {"condition": torch.cuda.is_available(), "reason": "this machine has CUDA: the no-CUDA failure cannot happen"}

_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)  # a script, not a package module
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(**HAS_CUDA)
def test_make_gpu_check_fails_loudly_without_cuda() -> None:
    proc = _run("make", "-s", "gpu-check", timeout=120)
    assert proc.returncode != 0
    assert "make gpu-check needs a CUDA GPU, and this machine has none" in proc.stdout + proc.stderr
    assert "torch.cuda.is_available() is False" in proc.stdout + proc.stderr


@pytest.mark.skipif(**HAS_CUDA)
@pytest.mark.parametrize("args", [(), ("--steps", "ops"), ("--preflight",)])
def test_the_script_fails_without_cuda_before_any_work(args) -> None:
    proc = _run(sys.executable, SCRIPT, *args, timeout=120)
    assert proc.returncode != 0 and "needs a CUDA GPU" in proc.stderr, proc.stdout + proc.stderr
    assert "gpu-check passed" not in proc.stdout


def test_dry_run_of_the_ops_and_ann_steps() -> None:
    """Every registered op's parity cases and the ANN benchmark, on the CPU at tiny sizes."""
    proc = _run(sys.executable, SCRIPT, "--dry-run", "--steps", "ops", "ann")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "DRY RUN on the CPU" in out and "gpu-check passed" in out
    from silverrec.ops.triton import CUDA_IMPLS

    for op in CUDA_IMPLS:  # one parity row per registered CUDA op
        assert f"| {op} == reference" in out, op
    for batch in gpu_check.BATCHES:
        assert f"filter none, batch {batch}," in out and f"filter 10%, batch {batch}," in out


def test_dry_run_of_the_serving_step(tiny_run) -> None:
    """Export, parity with the CPU graph and latency (the tiny run's model; batches 1 / 4 / 16
    here, 1 / 16 / 256 on the GPU)."""
    proc = _run(sys.executable, SCRIPT, "--dry-run", "--steps", "serving", "--checkpoint", tiny_run["checkpoint"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for batch in gpu_check.DRY_RUN_SERVING_BATCHES:
        assert f"parity with the CPU graph, batch {batch}" in proc.stdout
        assert f"latency on cpu, batch {batch}" in proc.stdout


def test_an_op_without_cases_is_a_failure_not_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    import silverrec.ops.triton as triton_ops

    monkeypatch.setattr(triton_ops, "CUDA_IMPLS", {"brand_new_op": {"CUDA": None}})
    report = gpu_check.Report()
    gpu_check.check_ops(report, "cpu", dry_run=True)
    assert not report.ok and "no CUDA parity cases" in report.table()


@pytest.mark.skipif(**HAS_CUDA)
def test_ann_benchmark_on_cuda_without_cuda_is_a_usage_error() -> None:
    proc = _run(sys.executable, os.path.join(REPO, "benchmarks", "ann.py"), "--device", "cuda", "--n", "100", timeout=120)
    assert proc.returncode == 2 and "--device cuda: CUDA is not available" in proc.stderr, proc.stderr[-2000:]
