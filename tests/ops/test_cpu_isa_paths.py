"""Both CPU code paths of the int8 kernels against the reference, on one machine.

The C++ kernels pick the AVX-512 VNNI path or the AVX2 path once per process (``cpu_isa.h``;
``SILVERREC_CPU_ISA=avx2`` forces AVX2). The other op test files run the default path, AVX-512
VNNI on a CPU that has it; this module re-runs their comparisons with the reference (not the
Triton, opcheck or export tests, which do not depend on the path) in a subprocess forced onto
the AVX2 path, so both paths are checked bit for bit on every run.
"""
import os
import subprocess
import sys

import pytest

import silverrec
from silverrec.ops import cpu_isa

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(silverrec.__file__)))

# The op tests whose kernels have per-path code (int8 scan, re-score, fused search, bfloat16 probe
# scores), and the query quantizer they share.
_FILES = ["test_ivf_int8_topk.py", "test_ivf_rescore_topk.py", "test_ivf_search.py", "test_quantize_int8_rowwise.py",
          "test_ivf_probe_scores.py"]
_PATH_INDEPENDENT = "not triton and not opcheck and not export and not meta and not bad_input and not bad_dtype"

# Runs in the subprocess: checks the forced path, then the selected tests.
_CHILD = """
import sys
import pytest
from silverrec.ops import cpu_isa
assert cpu_isa() == "avx2", cpu_isa()
sys.exit(pytest.main(sys.argv[1:]))
"""


def _cpu_has_avx512_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return all(f in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512_vnni"))


def test_default_path_is_the_best_the_cpu_has() -> None:
    if os.environ.get("SILVERREC_CPU_ISA"):
        pytest.skip(f"SILVERREC_CPU_ISA={os.environ['SILVERREC_CPU_ISA']} forces the path")
    if not _cpu_has_avx512_vnni():
        pytest.skip("this CPU lacks AVX-512 F/BW/VL/VNNI: only the AVX2 path exists here")
    assert cpu_isa() == "avx512_vnni"


def test_avx2_path_matches_the_reference() -> None:
    env = dict(os.environ, SILVERREC_CPU_ISA="avx2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO, env.get("PYTHONPATH")) if p)
    args = [os.path.join(_HERE, f) for f in _FILES] + ["-x", "-q", "-p", "no:cacheprovider", "-k", _PATH_INDEPENDENT]
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], cwd=_REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"AVX2 path:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert " passed" in proc.stdout and " deselected" in proc.stdout, proc.stdout[-2000:]
