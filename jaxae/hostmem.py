"""The host allocator, tuned for a process that runs the same XLA program thousands of times.

XLA:CPU allocates every step's activations and temporaries with the C library's malloc and frees them when
the step ends. glibc's defaults hand memory back to the kernel as soon as the top of the heap has 128 kB or
more free (and serve each large block with its own mmap), so each step faults its working set back in page
by page: on the 2-core box that was ~25 % of the training time spent in the kernel. Keeping freed memory in
the process removed it (quick model, B = 128, 1 CPU device: 1,330 -> 2,080 img/s, kernel time 16.2 s ->
1.7 s over the same bench; docs/performance.md). The process then holds on to its peak footprint until it
exits, which it reached anyway, except that memory freed in odd sizes (the test pass, a checkpoint save)
piles up: `release_free_memory()`, once an epoch, gives the free part back (the next step faults its
buffers in once).
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (no trimming, no per-block mmap).

    Takes effect for allocations made after the call; calling it again is harmless. Returns False, changing
    nothing, where there is no glibc mallopt (macOS, Windows, musl).
    """
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; musl's stub returns 0 and changes nothing
    return mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and mallopt(_M_MMAP_MAX, 0) == 1


def release_free_memory() -> bool:
    """Give the free memory of every malloc arena back to the kernel now (glibc's malloc_trim(0)); True when
    some was given back. Without glibc, does nothing and returns False."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim(0) == 1
