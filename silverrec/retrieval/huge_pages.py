"""Large index tensors on transparent huge pages (2 MiB) where the kernel allows them.

A search reads rows of the INT8 codes and of the float16 re-score cache at random: at 1M x 128
the cache is 244 MiB, so with 4 KiB pages nearly every re-scored row costs a TLB miss and a page
walk (a two-level walk under a hypervisor), while a core's TLB maps only ~12 MiB of 4 KiB pages.
Linux backs anonymous memory with 2 MiB pages when ``/sys/kernel/mm/transparent_hugepage/enabled``
is ``always``, or ``madvise`` (the common default) and the range was advised ``MADV_HUGEPAGE``
before it was first touched; torch's allocator gives no such advice. :func:`on_huge_pages` copies
a tensor into an advised range. ``IVFInt8Index.build`` places its large buffers there: on
``benchmarks/ann.py``'s clustered set (1M x 128, batch 16) searches took 0.96-0.97x the time
(benchmarks/RESULTS.md).

Only memory built in the process: an exported artifact is memory-mapped from its file (shared
between server processes) and keeps the page cache's pages.
"""
import mmap
from typing import Optional

import torch
from torch import Tensor

HUGE_PAGE_BYTES = 2 << 20
# Tensors below this stay where they are: a core's TLB maps ~12 MiB of 4 KiB pages.
MIN_BYTES = 16 << 20
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_mode() -> Optional[str]:
    """The kernel's transparent huge page setting (``always``, ``madvise``, ``never``), or None
    where there is none (not Linux, or no THP support)."""
    try:
        with open(_THP_SETTING) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def on_huge_pages(t: Tensor, min_bytes: Optional[int] = None) -> Tensor:
    """A contiguous copy of CPU tensor ``t`` in anonymous memory advised ``MADV_HUGEPAGE`` (2 MiB
    aligned, so the kernel can back it with huge pages), or ``t`` itself where that cannot help:
    not a CPU tensor, smaller than ``min_bytes``, or a kernel without the advice or with THP set
    to ``never``. The copy's storage is exactly its bytes (not resizable); the mapping lives as
    long as the tensor.

    Args:
        t (Tensor): any shape and dtype.
        min_bytes (Optional[int]): smaller tensors are returned as they are (default
            :data:`MIN_BYTES`).

    Returns:
        Tensor: same shape, dtype and values as ``t``.
    """
    nbytes = t.numel() * t.element_size()
    if t.device.type != "cpu" or nbytes < (MIN_BYTES if min_bytes is None else min_bytes) or not hasattr(mmap, "MADV_HUGEPAGE"):
        return t
    if huge_pages_mode() not in ("madvise", "always"):
        return t
    region = mmap.mmap(-1, nbytes + HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = memoryview(region)
    start = -torch.frombuffer(view[:1], dtype=torch.uint8).data_ptr() % HUGE_PAGE_BYTES
    aligned = view[start : start + nbytes]
    try:
        region.madvise(mmap.MADV_HUGEPAGE, start, nbytes)  # before the first touch
    except OSError:
        return t
    out = torch.frombuffer(aligned, dtype=t.dtype, count=t.numel()).view(t.shape)  # keeps the mapping alive
    out.copy_(t)
    return out
