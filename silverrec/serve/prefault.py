"""Map a loaded artifact's index pages before the first query (``Retriever(..., prefault=True)``).

:func:`~silverrec.serve.artifact.open_artifact` maps the large tensor records of the file instead
of reading them, so a fresh server process has no page-table entries for the index: the first
queries pay a page fault for every page of codes, re-score rows and Bloom words they touch,
even when the file sits in the page cache (a minor fault, ~0.1-1 µs per 4 KiB page, and with a
cold page cache a disk read). At 10M items one batch of 16 touches ~350 MB of INT8 codes, and a
fresh process's first pass over 256 unfiltered queries served in ~0.9x the time with this done at
load (the filtered ones, which touch fewer pages, within the noise; benchmarks/RESULTS.md). :func:`prefault` asks the kernel to populate the page tables of the
given tensors in one call per tensor (``madvise(MADV_POPULATE_READ)``, Linux 5.14+; elsewhere
``MADV_WILLNEED``, which only reads the file ahead), so those costs are paid at load instead.

The pages stay shared: a populated file mapping is still the page cache's copy, so several
server processes on one machine keep sharing one copy of the index (it counts in each process's
RSS as file-backed memory, as touched pages always did).
"""
import ctypes
import ctypes.util
import mmap
import time
from typing import Iterable, Optional, Tuple

from torch import Tensor

MADV_WILLNEED = 3
MADV_POPULATE_READ = 22  # Linux 5.14+
_PAGE = mmap.PAGESIZE


def _madvise() -> Optional[ctypes._CFuncPtr]:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    fn = getattr(libc, "madvise", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
    return fn


def prefault(tensors: Iterable[Tensor]) -> Tuple[int, float]:
    """Populates the page tables of the CPU tensors' memory (their whole pages) before use.

    Args:
        tensors: CPU tensors, e.g. the index buffers of a memory-mapped artifact (others are skipped).

    Returns:
        Tuple[int, float]: bytes advised, seconds taken. Where the kernel refuses
        ``MADV_POPULATE_READ`` (before Linux 5.14), ``MADV_WILLNEED`` (read-ahead only) is used.
    """
    madvise = _madvise()
    t0 = time.perf_counter()
    advised = 0
    if madvise is None:
        return 0, 0.0
    advice = MADV_POPULATE_READ
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if t.device.type != "cpu" or nbytes == 0:
            continue
        start = t.data_ptr() // _PAGE * _PAGE
        length = t.data_ptr() + nbytes - start
        if madvise(start, length, advice) != 0 and advice == MADV_POPULATE_READ:
            advice = MADV_WILLNEED  # an older kernel: read ahead instead
            madvise(start, length, advice)
        advised += nbytes
    return advised, time.perf_counter() - t0
