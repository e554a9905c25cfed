"""Runs a test script in a fresh process with ``TRITON_INTERPRET=1`` (shared by the op tests).

The variable must be set before Triton is imported, so each op test file re-runs itself (or a
script beside it) as ``__main__`` in a subprocess; the script exits non-zero on a mismatch and
prints an agreed line when every case matched.
"""
import os
import subprocess
import sys
from typing import Optional, Sequence

import pytest


def run_under_triton_interpreter(script: str, ok_line: str, pythonpath: Optional[Sequence[str]] = None) -> None:
    """Skips without Triton; else runs ``script`` under the interpreter and asserts it printed ``ok_line``."""
    pytest.importorskip("triton", reason="triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*pythonpath, os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, os.path.abspath(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ok_line in proc.stdout
