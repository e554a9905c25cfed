"""Ahead-of-time compilation of every Triton kernel for sm_80 and sm_90, no GPU needed.

The interpreter (``TRITON_INTERPRET=1``) runs a kernel as Python and accepts code the real
compiler rejects (a module-level global read inside ``@triton.jit``, the type of a loop-carried
value, a scalar branch), so a kernel that passes its interpreter test can still fail on the first
GPU it meets. This module compiles each kernel with the real compiler (PTX and cubin) instead.

What is compiled is what the launcher launches: each case calls the launcher on small CPU
tensors of the dtypes and shapes serving uses, with the kernel object swapped for a recorder, and
the recorded arguments go through Triton's own argument binder for a CUDA target. So the
signature, the ``tl.constexpr`` values, the integers Triton specialises (an argument equal to 1
becomes a constant, multiples of 16 get a divisibility hint) and the pointer dtypes are the
launcher's, and a new constexpr or dtype in a launcher is compiled without editing this table.

``KERNELS`` has one entry per ``@triton.jit`` function in ``silverrec/ops/triton/``; files that
launch other files' kernels and define none are listed in ``NO_KERNEL``. ``test_triton_compile.py``
fails when a kernel file is in neither, so a new kernel cannot skip the check: add a
``KernelCheck`` with a case per configuration its launcher takes in serving (and one where the
integer arguments are 1, which Triton compiles as constants).

Run by ``test_triton_compile.py`` in a subprocess (``python -m tests.ops.triton_compile [NAME ...]``
from the repository root, without ``TRITON_INTERPRET``); prints one JSON line per (kernel, case,
architecture) and exits non-zero if any failed. Triton is imported only when compiling, so the
table can be read (by the coverage test) where Triton is missing.
"""
import importlib
import json
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

ARCHS = (80, 90)  # A100 and H100
OK_LINE = "triton compile check done"

Call = Tuple[tuple, Dict[str, Any]]  # the launcher's positional and keyword arguments


@dataclass(frozen=True)
class KernelCheck:
    """One Triton kernel and how its launcher is called.

    Args:
        module (str): file stem in ``silverrec/ops/triton/`` (``"exact_filter"``).
        kernel (str): the ``@triton.jit`` function's name in that file.
        launcher (str): the function that launches it, in ``launcher_module``.
        cases (Callable[[], Dict[str, Call]]): label -> launcher arguments, built when compiling
            (CPU tensors; only dtypes, shapes and integer arguments matter).
        launcher_module (Optional[str]): file stem of the launcher when it is not ``module``
            (a launcher that picks one of several kernels).
    """

    module: str
    kernel: str
    launcher: str
    cases: Callable[[], Dict[str, Call]]
    launcher_module: Optional[str] = None

    @property
    def name(self) -> str:
        return f"{self.module}.{self.kernel}"


def _i64(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.int64)


def _f32(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.float32)


def _i8(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.int8)


def _offsets(C: int, rows_per_cluster: int) -> torch.Tensor:
    return torch.arange(C + 1, dtype=torch.int64) * rows_per_cluster


# Serving sizes (silverrec/conf/export.yaml and probe_policy): D = 64, K = 100, K0 = 150,
# filter_length 12, 4 Bloom hashes, C = 4 sqrt(N) clusters (40 for the demo's ~100 items per
# cluster, 4000 at 1M items), max_probe up to C in the capped-list fallback.


def _quantize_cases() -> Dict[str, Call]:
    return {
        "serving D=64": ((_f32(16, 64),), {}),
        "D=100 (not a power of two nor a multiple of 16)": ((_f32(4, 100),), {}),
        "D=1": ((_f32(3, 1),), {}),
    }


def _select_probes_cases() -> Dict[str, Call]:
    return {
        "demo C=40, filtered, max_probe=40": ((_f32(8, 40), _offsets(40, 25), _i64(8, 16), 8, 150, 40), {}),
        "demo C=40, filtered, coverage exponent 0.75": ((_f32(8, 40), _offsets(40, 25), _i64(8, 16), 8, 600, 40, 0.75, 150), {}),
        # at 1M items (C = 4000, a sort of 4096 keys) it compiles too, but takes ~70 s for sm_80
        "C=1000, unfiltered, max_probe=1000": ((_f32(2, 1000), _offsets(1000, 60), None, 20, 150, 1000), {}),
        "C=1, n_probe=max_probe=1": ((_f32(1, 1), _offsets(1, 1), _i64(1, 1), 1, 1, 1), {}),
    }


def _int8_topk_cases() -> Dict[str, Call]:
    def call(B: int, D: int, C: int, per: int, P: int, masked: bool, k: int) -> Call:
        N = C * per
        mask = _i64(B, (N + 63) // 64) if masked else None
        return (_i8(B, D), _f32(B), _i8(N, D), _f32(N), _offsets(C, per), _i64(B, P), mask, k), {}

    # batch 1: the launcher's per-query kernel (from batch 2 on it takes the grouped tl.dot scan)
    return {
        "serving D=64, P=40, K0=150, filtered": call(1, 64, 40, 25, 40, True, 150),
        "fallback scan P=C=4000, K0=150, unfiltered": call(1, 64, 4000, 2, 4000, False, 150),
        "D=1, P=1, K=1, one mask word": call(1, 1, 1, 1, 1, True, 1),
    }


def _int8_topk_grouped_cases() -> Dict[str, Call]:
    def call(B: int, D: int, C: int, per: int, P: int, masked: bool, k: int) -> Call:
        N = C * per
        mask = _i64(B, (N + 63) // 64) if masked else None
        return (_i8(B, D), _f32(B), _i8(N, D), _f32(N), _offsets(C, per), _i64(B, P), mask, k), {}

    # what ivf_int8_topk_cuda launches from batch 2 on: K_PAD 256 (8 warps) and 16 (4 warps),
    # BLOCK_D 64, 128 (D = 200 in two chunks) and 32 (D = 1: the smallest tl.dot K)
    return {
        "serving batch 16, D=64, P=40, K0=150, filtered": call(16, 64, 40, 25, 40, True, 150),
        # also the constexprs of an unfiltered serving batch (batch 256, P = 80 of 4000 clusters)
        "fallback scan P=C=4000, K0=150, batch 2, unfiltered": call(2, 64, 4000, 2, 4000, False, 150),
        "D=200, K=10, filtered": call(4, 200, 8, 10, 3, True, 10),
        "D=1, P=1, K=1, batch 2": call(2, 1, 1, 1, 1, True, 1),
    }


def _rescore_cases() -> Dict[str, Call]:
    def call(B: int, D: int, N: int, K0: int, k: int, dtype: torch.dtype) -> Call:
        return (_f32(B, D), torch.zeros(N, D, dtype=dtype), _i64(B, K0), _i64(N), k), {}

    return {
        "serving float16 cache D=64, K0=150, K=100": call(8, 64, 1000, 150, 100, torch.float16),
        "serving bfloat16 cache D=64, K0=150, K=100": call(8, 64, 1000, 150, 100, torch.bfloat16),
        "D=1, K0=K=1": call(1, 1, 1, 1, 1, torch.float16),
    }


def _exact_filter_cases() -> Dict[str, Call]:
    return {
        "serving K=100 candidates, L=12, W=8": ((_i64(16, 12), _i64(16, 12), _i64(16, 100, 8)), {}),
        "M=L=W=1": ((_i64(1, 1), _i64(1, 1), _i64(1, 1, 1)), {}),
    }


def _bloom_cases() -> Dict[str, Call]:
    def call(M: int, N: int, B: int, L: int, H: int, T: int, nnz: int, C: int, P: int) -> Call:
        W = (N + 63) // 64
        posting_rows = torch.zeros(nnz, dtype=torch.int32)  # int32 rows, as the index stores them
        return (_i64(M, W), _i64(B, L), _i64(B, L), _i64(B, L, H), _i64(T + 1), posting_rows, _i64(B, P),
                _offsets(C, N // C)), {}

    return {
        "serving 100k items, L=12, H=4, 40 probes, 100k postings": call(768, 100_000, 8, 12, 4, 200, 100_000, 400, 40),
        "one row of everything": call(1, 64, 1, 1, 1, 1, 1, 1, 1),
    }


def _pack_id_mask_cases() -> Dict[str, Call]:
    def call(B: int, N: int, R: int, bitmap: bool, device: str = "cpu") -> Call:
        mask = torch.zeros(B, (N + 7) // 8 if bitmap else N, dtype=torch.uint8 if bitmap else torch.bool, device=device)
        return (mask, torch.zeros(R, dtype=torch.int64, device=device)), {}

    big = 2**31 + 64  # ids past int32: the id bound and the row stride become 64-bit arguments
    return {
        "bool mask, 1M ids, B=16": call(16, 1_000_000, 1_000_000, False),
        "uint8 bitmap, 1M ids, B=16": call(16, 1_000_000, 1_000_000, True),
        # meta tensors: only dtypes and sizes reach the compiler, so 2 GiB masks cost nothing here
        "bool mask over 2**31 + 64 ids": call(2, big, 1000, False, "meta"),
        "uint8 bitmap over 2**31 + 64 ids": call(2, big, 1000, True, "meta"),
        "B=N=R=1": call(1, 1, 1, False),
    }


KERNELS: Tuple[KernelCheck, ...] = (
    KernelCheck("bloom_search", "_bloom_search_kernel", "bloom_search_cuda", _bloom_cases),
    KernelCheck("exact_filter", "_exact_filter_kernel", "exact_filter_cuda", _exact_filter_cases),
    KernelCheck("ivf_int8_topk", "_ivf_int8_topk_kernel", "ivf_int8_topk_cuda", _int8_topk_cases),
    KernelCheck("ivf_int8_topk_grouped", "_ivf_int8_topk_grouped_kernel", "ivf_int8_topk_cuda",
                _int8_topk_grouped_cases, launcher_module="ivf_int8_topk"),
    KernelCheck("ivf_rescore_topk", "_ivf_rescore_topk_kernel", "ivf_rescore_topk_cuda", _rescore_cases),
    KernelCheck("ivf_select_probes", "_ivf_select_probes_kernel", "ivf_select_probes_cuda", _select_probes_cases),
    KernelCheck("pack_id_mask", "_pack_id_mask_kernel", "pack_id_mask_cuda", _pack_id_mask_cases),
    KernelCheck("quantize_int8_rowwise", "_quantize_int8_rowwise_kernel", "quantize_int8_rowwise_cuda",
                _quantize_cases),
)

# Files of silverrec/ops/triton/ that define no kernel, and why.
NO_KERNEL: Dict[str, str] = {
    "__init__": "the CUDA_IMPLS table",
    "ivf_search": "runs the launchers of quantize_int8_rowwise, ivf_select_probes, ivf_int8_topk and ivf_rescore_topk",
    "ivf_search_bloom": "runs bloom_search's launcher over all rows, then ivf_search's",
    "held_terms": "the reference's torch operations (fixed-step binary searches, no kernel of its own)",
}


class _Recorder:
    """Stands in for a ``@triton.jit`` function: ``kernel[grid](*args, **kwargs)`` records the call."""

    def __init__(self) -> None:
        self.calls: List[Call] = []

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


def recorded_launches(check: KernelCheck, call: Call) -> List[Call]:
    """The launches of ``check.kernel`` that the launcher makes for ``call`` (no kernel is run).

    Every ``@triton.jit`` function of every ``silverrec/ops/triton`` module is swapped for a
    recorder while the launcher runs (a launcher may pick a kernel of another file); only the
    launches of ``check.kernel`` are returned, so a case in which the launcher picks another
    kernel records none.

    Args:
        check (KernelCheck): the kernel and its launcher.
        call (Call): the launcher's arguments.

    Returns:
        List[Call]: the ``(args, kwargs)`` of each launch.
    """
    from triton.runtime.jit import JITFunction

    import silverrec.ops.triton as package

    swapped: List[Tuple[Any, str, Any]] = []
    recorders: Dict[Tuple[str, str], _Recorder] = {}
    for name in list(package._OPS) + [check.module, check.launcher_module or check.module]:
        module = importlib.import_module(f"silverrec.ops.triton.{name}")
        for attr, value in list(vars(module).items()):
            if isinstance(value, JITFunction) and value.__module__ == module.__name__:
                recorders[(name, attr)] = _Recorder()
                swapped.append((module, attr, value))
                setattr(module, attr, recorders[(name, attr)])
    launcher_module = importlib.import_module(f"silverrec.ops.triton.{check.launcher_module or check.module}")
    try:
        getattr(launcher_module, check.launcher)(*call[0], **call[1])
    finally:
        for module, attr, value in reversed(swapped):
            setattr(module, attr, value)
    return recorders[(check.module, check.kernel)].calls


def compile_launch(kernel: Any, launch: Call, arch: int) -> Any:
    """Compiles one recorded launch of ``kernel`` for ``sm_<arch>`` as the Triton runtime would.

    The runtime's binder (``create_function_from_signature``) and ``_pack_args`` turn the
    arguments into the signature, constexprs, specialisation attributes and options; they are
    internal to Triton, which is why ``triton`` is pinned in the Makefile.

    Args:
        kernel (triton.JITFunction): the kernel.
        launch (Call): recorded ``(args, kwargs)``.
        arch (int): compute capability, e.g. 90.

    Returns:
        triton.compiler.CompiledKernel: with its PTX and cubin in ``asm``.
    """
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    args, kwargs = launch
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    compiled = triton_compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)
    if not (compiled.asm.get("ptx") and compiled.asm.get("cubin")):
        raise RuntimeError(f"no PTX or cubin for sm_{arch}")
    return compiled


def run_checks(names: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Compiles every case of the named kernels (all when None) for each of ``ARCHS``.

    Args:
        names (Optional[Sequence[str]]): ``KernelCheck.name`` values.

    Returns:
        List[Dict[str, Any]]: one record per (kernel, case, arch): ``kernel``, ``case``, ``arch``,
        ``ok``, ``error`` (traceback tail), ``tensor_cores`` (the PTX has ``mma`` instructions)
        and ``seconds``.
    """
    checks = [c for c in KERNELS if names is None or c.name in names]
    unknown = set(names or ()) - {c.name for c in checks}
    if unknown:
        raise SystemExit(f"unknown kernels {sorted(unknown)}; known: {[c.name for c in KERNELS]}")
    records: List[Dict[str, Any]] = []
    for check in checks:
        kernel = getattr(importlib.import_module(f"silverrec.ops.triton.{check.module}"), check.kernel)
        for label, call in check.cases().items():
            for arch in ARCHS:
                start, error, mma = time.perf_counter(), None, True
                try:
                    launches = recorded_launches(check, call)
                    if not launches:
                        raise RuntimeError(f"{check.launcher} launched no {check.kernel} for this case")
                    for launch in launches:
                        ptx = compile_launch(kernel, launch, arch).asm["ptx"]
                        mma = mma and ("mma.sync" in ptx or "wgmma" in ptx)
                except Exception:  # noqa: BLE001 - reported per case, the other cases still run
                    error = "".join(traceback.format_exc().splitlines(keepends=True)[-12:])
                # tensor_cores: the PTX has mma instructions (checked for kernels built on tl.dot)
                records.append(dict(kernel=check.name, case=label, arch=arch, ok=error is None, error=error,
                                    tensor_cores=error is None and mma, seconds=round(time.perf_counter() - start, 2)))
                print(json.dumps(records[-1]), flush=True)
    return records


def main(argv: Sequence[str]) -> int:
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter does not compile", file=sys.stderr)
        return 2
    records = run_checks(list(argv) or None)
    failed = [r for r in records if not r["ok"]]
    print(f"{OK_LINE}: {len(records) - len(failed)} compiled, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
