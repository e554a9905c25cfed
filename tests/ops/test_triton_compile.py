"""Every Triton kernel compiles ahead of time for sm_80 and sm_90 (no GPU needed), and none is left out.

The compilation runs once, in a fresh process without ``TRITON_INTERPRET`` (``tests/ops/triton_compile.py``
has the table of kernels and the launcher calls compiled); each kernel is then one test, so a
failure names the kernel, the case and the architecture with the compiler's message.
"""
import ast
import json
import os
from typing import Dict, List, Set

import pytest

from tests.ops.triton_compile import KERNELS, NO_KERNEL, OK_LINE
from tests.ops.triton_interpreter import REPO_ROOT, run_test_module

_TRITON_DIR = os.path.join(REPO_ROOT, "silverrec", "ops", "triton")
_TABLE = "tests/ops/triton_compile.py"


def _is_kernel_decorator(node: ast.expr) -> bool:
    """``@triton.jit``, ``@jit``, ``@triton.jit(...)``, ``@triton.autotune(...)``, ``@triton.heuristics(...)``."""
    target = node.func if isinstance(node, ast.Call) else node
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
    return name in ("jit", "autotune", "heuristics")


def _kernels_by_file() -> Dict[str, Set[str]]:
    """File stem -> names of the functions it decorates as Triton kernels (read from the source, no import)."""
    found: Dict[str, Set[str]] = {}
    for entry in sorted(os.listdir(_TRITON_DIR)):
        if entry.endswith(".py"):
            with open(os.path.join(_TRITON_DIR, entry), encoding="utf-8") as f:
                tree = ast.parse(f.read(), filename=entry)
            found[entry[:-3]] = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
                                 and any(_is_kernel_decorator(d) for d in node.decorator_list)}
    return found


def test_every_kernel_file_is_covered() -> None:
    """Each ``@triton.jit`` function in ``silverrec/ops/triton/`` has a ``KernelCheck``; kernel-free files say why."""
    found = _kernels_by_file()
    checked = {(c.module, c.kernel) for c in KERNELS}
    problems: List[str] = []
    for stem, kernels in found.items():
        for kernel in sorted(kernels - {k for m, k in checked if m == stem}):
            problems.append(f"silverrec/ops/triton/{stem}.py: kernel {kernel} has no KernelCheck in {_TABLE} "
                            f"(add one with its launcher and the cases serving launches)")
        if not kernels and stem not in NO_KERNEL:
            problems.append(f"silverrec/ops/triton/{stem}.py defines no @triton.jit kernel: list it in NO_KERNEL "
                            f"in {_TABLE} with the reason")
        if kernels and stem in NO_KERNEL:
            problems.append(f"silverrec/ops/triton/{stem}.py is in NO_KERNEL but defines {sorted(kernels)}")
    for module, kernel in sorted(checked):
        if kernel not in found.get(module, set()):
            problems.append(f"{_TABLE} checks {module}.{kernel}, which silverrec/ops/triton/{module}.py does not define")
    problems += [f"NO_KERNEL names {stem}, which is not a file of silverrec/ops/triton/"
                 for stem in sorted(set(NO_KERNEL) - set(found))]
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def compile_records(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, List[dict]]:
    """Runs ``python -m tests.ops.triton_compile`` once (an empty Triton cache: nothing is reused)."""
    pytest.importorskip("triton", reason="triton is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton_cache"))
    proc = run_test_module(os.path.join(os.path.dirname(__file__), "triton_compile.py"), env=env)
    # the script prints OK_LINE after the last case, failed or not; without it, it died on the way
    assert OK_LINE in proc.stdout, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    records: Dict[str, List[dict]] = {c.name: [] for c in KERNELS}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            records[record["kernel"]].append(record)
    return records


@pytest.mark.parametrize("name", [c.name for c in KERNELS])
def test_kernel_compiles_for_sm80_and_sm90(name: str, compile_records: Dict[str, List[dict]]) -> None:
    records = compile_records[name]
    assert {r["arch"] for r in records} == {80, 90}, f"{name}: no compile records for both architectures: {records}"
    failed = [f"{r['case']} (sm_{r['arch']}):\n{r['error']}" for r in records if not r["ok"]]
    assert not failed, f"{name} does not compile:\n" + "\n".join(failed)


# kernels whose inner product is a tl.dot: their PTX must use the tensor cores (mma) for every case
TENSOR_CORE_KERNELS = ("ivf_int8_topk_grouped._ivf_int8_topk_grouped_kernel",)


@pytest.mark.parametrize("name", TENSOR_CORE_KERNELS)
def test_tl_dot_kernels_use_tensor_cores(name: str, compile_records: Dict[str, List[dict]]) -> None:
    records = compile_records[name]
    assert records and all(r["ok"] for r in records), f"{name} does not compile (see the test above)"
    missing = [f"{r['case']} (sm_{r['arch']})" for r in records if not r["tensor_cores"]]
    assert not missing, f"{name}: no mma instruction in the PTX of {missing}: the int8 tl.dot is not on the tensor cores"
