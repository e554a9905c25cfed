"""AOTInductor: the serving graph compiled ahead of time into a shared library, kept in the artifact.

``torch.export`` programs run op by op through the Python-generated ``GraphModule``: a batch of
16 queries makes about a thousand small aten calls, and at small batches their dispatch costs
more than the work. AOTInductor compiles the same program (same weights, same dynamic shapes)
into C++ with fused element-wise loops; the silverrec ops are called through the dispatcher, so
the C++ kernels of ``silverrec._C`` run inside it unchanged.

The library is compiled for the CPU it was built on (its vector ISA, e.g. ``avx2`` or
``avx512``): the artifact records that ISA, and a machine that picks another one serves the
plain program instead (:func:`aoti_usable`). A program exported on CUDA compiles to CUDA
kernels for the exporting GPU's architecture (recorded as ``"arch"``, e.g. ``sm_90``); a
library serves only on the device type it was compiled for, so a CPU library never runs on
CUDA and the other way round (the ``torch.export`` program, which can be moved, serves instead). Its fused loops run on a thread count fixed at
compile time (Inductor writes ``omp parallel num_threads(T)``), by default the cores available
to the exporting process, not ``torch.get_num_threads()`` of the caller: a training script that
set one thread would otherwise bake in one (measured: 1.5x slower at batch 16 on 2 cores).

Constants: the library is compiled without its weights (``aot_inductor.package_constants_in_so``
off; metadata ``"constants": "program"``). Packed into the shared library, the index would be
stored twice in the artifact (once as the ``torch.export`` program's weights, once in the
library's data section), be copied again when the library loads, and hit the 2 GiB limits of
the ELF relocations a large data section runs into. Instead :func:`load_aoti` hands the library
the program's own weights (memory-mapped from the artifact by
:func:`~silverrec.serve.artifact.open_artifact`) as user-managed constants: one copy on disk,
none on the heap, shared between processes.
"""
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

log = logging.getLogger(__name__)


def vector_isa() -> str:
    """The vector ISA Inductor compiles CPU code for on this machine (``""``: none)."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return str(pick_vec_isa())


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cuda_arch(device: torch.device) -> str:
    """The architecture of a CUDA device, as AOTInductor compiles for it (``sm_90``)."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def compile_aoti(program: torch.export.ExportedProgram, threads: Optional[int] = None,
                 device: torch.device = torch.device("cpu")) -> Tuple[List[Any], Dict[str, Any]]:
    """Compiles ``program`` with AOTInductor for this machine's CPU, or for its GPU when
    ``device`` is CUDA (the program must have been exported with CUDA tensors; about a minute
    for the demo's serving graph on 2 cores).

    Args:
        program: an exported program with ``example_inputs`` (as ``torch.export.export`` leaves it).
        threads: OpenMP threads of the compiled loops (default: :func:`available_cores`).
        device: the device the program's tensors are on.

    Returns:
        (files, info): the files to package (``package_pt2(aoti_files={name: files})``) and
        ``{"isa": .., "torch": .., "threads": .., "device": ..}`` (plus ``"arch"`` on CUDA), the
        conditions under which they load and run.
    """
    if program.example_inputs is None:
        raise ValueError("compile_aoti needs an exported program with example_inputs")
    threads = available_cores() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"compile_aoti: threads must be >= 1, got {threads}")
    args, kwargs = program.example_inputs
    files = torch._inductor.aot_compile(program.module(check_guards=False), args, kwargs,
                                        options={"aot_inductor.package": True, "cpp.threads": threads,
                                                 "aot_inductor.package_constants_in_so": False})
    info = {"isa": vector_isa(), "torch": torch.__version__, "threads": threads, "device": device.type,
            "constants": "program"}
    if device.type == "cuda":
        info["arch"] = cuda_arch(device)
    return list(files), info


def aoti_usable(info: Optional[Dict[str, Any]], device: torch.device = torch.device("cpu")) -> Tuple[bool, str]:
    """Whether an AOTInductor library described by ``info`` (from :func:`compile_aoti`) can run
    here on ``device``: ``(ok, reason)``. Libraries without a recorded device are CPU ones."""
    if not info:
        return False, "the artifact holds no AOTInductor library (export with aoti=true)"
    if info.get("torch") != torch.__version__:
        return False, f"compiled with torch {info.get('torch')}, this is torch {torch.__version__}"
    built_for = info.get("device", "cpu")
    if built_for != device.type:
        return False, (f"compiled for {built_for}, serving on {device.type} (an AOTInductor library is device-specific; "
                       f"re-export with device={device.type} to compile one for it)")
    if device.type == "cuda":
        here = cuda_arch(device)
        if info.get("arch") != here:
            return False, f"compiled for the GPU architecture {info.get('arch')!r}, this GPU's is {here!r}"
        return True, ""
    here = vector_isa()
    if info.get("isa") != here:
        return False, f"compiled for the CPU ISA {info.get('isa')!r}, this machine's is {here!r}"
    return True, ""


def load_aoti(path: str, name: str, device: torch.device = torch.device("cpu"),
              program: Optional[torch.export.ExportedProgram] = None) -> Callable[..., Any]:
    """The compiled program ``name`` of the package ``path``: called like the exported module,
    with the flat graph inputs, returning the flat outputs (on ``device``, the one it was
    compiled for). ``program``: the same program as loaded by ``open_artifact``, whose weights
    and constants the library uses (required for a library compiled without its constants)."""
    from torch._inductor.package import load_package

    index = -1 if device.type != "cuda" else (torch.cuda.current_device() if device.index is None else device.index)
    runner = load_package(os.fspath(path), model_name=name, device_index=index)
    if program is not None:
        available = {**program.state_dict, **dict(program.constants)}
        needed = runner.get_constant_fqns()
        missing = [fqn for fqn in needed if fqn not in available]
        if missing:
            raise ValueError(f"{path!r}: the AOTInductor library {name!r} needs constants the program lacks: "
                             f"{missing[:5]}{' ...' if len(missing) > 5 else ''}; re-export it")
        runner.load_constants({fqn: available[fqn].detach() for fqn in needed}, check_full_update=True,
                              user_managed=True)
    return runner
