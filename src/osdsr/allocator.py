"""Keep freed memory in the process for reuse, or give it back (glibc only).

``keep_freed_memory``: image-sized temporaries stop page-faulting.

glibc's malloc serves blocks above its mmap threshold (at most 32 MiB) with fresh ``mmap`` pages and
gives them back to the kernel on ``free``, so every 2048x2048 temporary of the next tensor operation
faults its pages in again. On this project's 2-core machine that made the wavelet colour fix of a
2048x2048 image 2.5x slower than with the memory kept (``benchmarks/speed.py`` measures both). With
``M_MMAP_MAX = 0`` every block comes from the heap, and a high ``M_TRIM_THRESHOLD`` keeps freed heap
memory for the next allocation; the peak memory stays what the computation needs.

``release_freed_memory``: the opposite, once. Weight tensors are mostly below the mmap threshold, so
the heap holds them, and a big model freed after loading (the SDXL UNet whose up blocks a NAD drops)
stays resident until ``malloc_trim`` hands the free pages back: 2.3 GiB for SDXL in bf16.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 1 << 30  # give memory back to the kernel only above 1 GiB of free heap


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def release_freed_memory() -> bool:
    """Return the heap's free pages to the kernel (``malloc_trim(0)``); False where there is no glibc."""
    trim = getattr(_glibc(), "malloc_trim", None)
    return trim is not None and bool(trim(0))


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above; False (and nothing changed) on other C libraries and systems."""
    mallopt = getattr(_glibc(), "mallopt", None)  # musl and others: no mallopt
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
