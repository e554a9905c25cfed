"""Keeps freed heap memory for reuse: glibc's ``mallopt`` for training loops of many mid-sized tensors.

glibc's malloc serves a block above its mmap threshold (dynamic, from 128 KiB up to 32 MiB) with a
fresh ``mmap`` and unmaps it on free, so every such tensor of a training step pays page faults and
zeroing again. The sequence tower's step allocates hundreds of 0.1-5 MiB tensors ([B, L, E] states,
[B, 1, L, L] attention weights, [P, C] logits); serving them from the heap, and not returning freed
heap to the system, made the MovieLens-1M step about 10% faster (``benchmarks/RESULTS.md``). This is
what the usual advice for PyTorch on CPU (jemalloc or tcmalloc through ``LD_PRELOAD``) achieves,
without a preload: ``mallopt`` applies at run time. Other C libraries (musl, macOS) are left alone.
"""
import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold_mib: int) -> bool:
    """Serves blocks up to ``mmap_threshold_mib`` MiB (at most 32, glibc's cap) from the heap and keeps
    up to 1 GiB of freed heap for reuse.

    Args:
        mmap_threshold_mib (int): the new mmap threshold in MiB (0: leave malloc as it is).

    Returns:
        bool: True when glibc accepted both settings (False on other C libraries or with 0).
    """
    if mmap_threshold_mib < 0:
        raise ValueError(f"trainer.malloc_keep_mib must be >= 0, got {mmap_threshold_mib}")
    if mmap_threshold_mib == 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    threshold = min(mmap_threshold_mib, 32) << 20
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
