"""Runs a test module in a fresh process, e.g. with ``TRITON_INTERPRET=1`` (shared by the op tests).

The variable must be set before Triton is imported, so each op test file re-runs itself (or a
script beside it) as ``__main__`` in a subprocess; the script exits non-zero on a mismatch and
prints an agreed line when every case matched.

The subprocess runs the file as a module of the ``tests`` package (``python -m tests.ops.x``)
from the repository root, with the root on ``PYTHONPATH``, so its ``from tests.… import …`` lines
resolve exactly as they do under pytest, whatever directory pytest was started from.
"""
import os
import subprocess
import sys
from typing import Mapping, Optional, Sequence

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def module_name(script: str) -> str:
    """The dotted module name of a ``.py`` file inside the repository.

    Args:
        script (str): path of a file under the repository root, e.g. ``tests/ops/test_x.py``.

    Returns:
        str: e.g. ``"tests.ops.test_x"``.
    """
    rel = os.path.relpath(os.path.abspath(script), REPO_ROOT)
    stem, ext = os.path.splitext(rel)
    if ext != ".py" or stem.startswith(os.pardir):
        raise ValueError(f"{script!r} is not a .py file under the repository root {REPO_ROOT!r}")
    return stem.replace(os.sep, ".")


def run_test_module(script: str, args: Sequence[str] = (), env: Optional[Mapping[str, str]] = None,
                    timeout: float = 600) -> "subprocess.CompletedProcess[str]":
    """Runs ``script`` as ``python -m <module> *args`` from the repository root and captures its output.

    Args:
        script (str): path of the test file or helper script (usually ``__file__``).
        args (Sequence[str]): command-line arguments after the module name.
        env (Optional[Mapping[str, str]]): the environment; ``os.environ`` when None. The
            repository root is prepended to its ``PYTHONPATH``.
        timeout (float): seconds before the subprocess is killed.

    Returns:
        subprocess.CompletedProcess[str]: return code, stdout and stderr (text).
    """
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", module_name(script), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_under_triton_interpreter(script: str, ok_line: str) -> None:
    """Skips without Triton; else runs ``script`` under the interpreter and asserts it printed ``ok_line``.

    Args:
        script (str): path of a file under ``tests/`` whose ``__main__`` block runs the cases.
        ok_line (str): the line the script prints when every case matched.
    """
    pytest.importorskip("triton", reason="triton is not installed")
    proc = run_test_module(script, env=dict(os.environ, TRITON_INTERPRET="1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ok_line in proc.stdout
