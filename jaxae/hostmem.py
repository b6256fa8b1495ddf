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

Which thread allocates matters too. By default JAX hands each CPU program to a dispatch thread, so the
step's buffers come from that thread's malloc arena, and glibc serves any block larger than a thread
arena's 64 MB heap with its own mmap whatever the settings: the old default model's 1.1 GB block of temporaries
was mapped and unmapped on every step (344k page faults). `run_cpu_programs_inline()` runs single-device
CPU programs on the calling thread instead, whose main arena keeps them (docs/performance.md, fifth
session).

Which arena, too. glibc gives each new thread a malloc arena of its own, up to 8 per core (16 here); XLA's
worker threads, orbax's save threads and the rest each grew theirs to its own high-water mark and kept it. The
old default model on 2,560 training images (an epoch end every 10 steps): over 8 epochs the 15 thread arenas grew
from 520 to 834 MB of heap for 100-180 MB in use, and the process's heap from 1.44 to 1.82 GB, the creep seen
at epoch ends of full CPU runs. `keep_freed_memory()` also limits the process to 2 arenas, the main thread's and
one that every other thread shares: the heap then stayed at 1.36-1.39 GB over 7 epoch ends. One arena did the
same for the heap, and left the old default model's step as fast, but slowed the quick model's by 14-29 % (lock
contention, as the fifth session had found); with two it runs as fast as before (docs/performance.md, twelfth
session).

That limit is for processes whose programs run on the CPU. Where JAX will run them on a GPU or TPU, XLA's
compiler works in many threads on a many-core host (16 on the H100 machine), and the steps' memory is on the
device: the arenas are left to glibc there (`accelerator_expected`). Since the limit came in (twelfth session),
GPU compiles were slow: the fifteenth session's H100 compiled the epoch's steps of the default schedule (then
`--preset long`) in 46 s, where the eighth session's bench compiled the same in 5.5 s; the twentieth session's H200
reached the end of the first epoch in 32 s in all. Contention in the compiler's threads is a suspect,
not measured on a GPU yet (docs/performance.md, fifteenth session, 6). `JAXAE_MALLOC_ARENAS=N` sets the limit
whatever the backend (0: glibc's default).

One arena, not two, where a step's temporaries are larger than a thread arena's heap (`THREAD_HEAP`). XLA:CPU runs
a program on the calling thread only when its inputs are ready; otherwise on a worker thread of its own, which
allocates the temporaries. Half of those workers share the second arena, which serves such a block with a
mapping of its own, mapped and unmapped at every step. A 31-minute old-default-model run on the 2-core box
(twenty-second session) ran its whole second epoch that way: VmRSS went 1.96 <-> 2.54 GB (a 580 MB mapping by one
worker, strace), against 1.89-1.96 GB in the first and third epochs (on the main thread, judging by their flat RSS). One
arena: every thread's blocks come from the main arena, which keeps them. It costs the old default model little (166
and 171 img/s against 172 and 174 with two, one run each, alternating) and the quick model, whose step needs 35 MB,
14-21 % (2,334 and 2,131 img/s against 2,780 and 2,702), so it keeps two. `jaxae.train.keep_host_memory` makes
the choice from an estimate of the step (`keep_freed_memory(large_steps=...)`).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys

from jaxae.config import UsageError

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


# glibc's largest heap of a thread arena (HEAP_MAX_SIZE on 64-bit Linux): a larger block is mapped on its own
THREAD_HEAP = 64 * 2**20


def keep_freed_memory(large_steps: bool = False) -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (no trimming, no per-block mmap), in at most 2 arenas
    when the programs will run on the CPU, 1 when their steps need blocks larger than `THREAD_HEAP`
    (`large_steps`; `arena_limit`).

    Takes effect for allocations made after the call. The arena limit holds for threads that allocate for the
    first time after it, and only while glibc has not yet fixed its own limit (it does so once 9 arenas
    exist): call it first thing, before JAX starts its backend or jax.distributed its threads. Calling it
    again is harmless, but cannot lower the arena count once threads have taken arenas. Returns False,
    changing nothing, where there is no glibc mallopt (macOS, Windows, musl).
    """
    arenas = arena_limit(large_steps)
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; musl's stub returns 0 and changes nothing
    return (mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and mallopt(_M_MMAP_MAX, 0) == 1
            and (arenas == 0 or mallopt(_M_ARENA_MAX, arenas) == 1))


def arena_limit(large_steps: bool = False) -> int:
    """The malloc arenas keep_freed_memory allows: $JAXAE_MALLOC_ARENAS when set (0: glibc's default), else 0
    where an accelerator will run the programs, and on the CPU 1 for `large_steps` (blocks of temporaries
    larger than THREAD_HEAP), 2 for others."""
    value = os.environ.get("JAXAE_MALLOC_ARENAS", "").strip()
    if value:
        if not (value.isascii() and value.isdecimal()):
            raise UsageError(f"JAXAE_MALLOC_ARENAS={value}: give a whole number of malloc arenas (0: glibc's "
                             f"default), or unset it")
        return int(value)
    return 0 if accelerator_expected() else 1 if large_steps else 2


def accelerator_expected() -> bool:
    """Whether JAX will run this process's programs on a GPU or TPU, judged as JAX judges it but without
    starting its backends (that starts the threads whose arenas must be limited first): by JAX_PLATFORMS's first
    entry when it is set, else by an installed GPU or TPU plugin, which JAX prefers to the CPU, together with
    the device it would drive (JAX skips a plugin whose device is absent and runs on the CPU)."""
    platforms = _configured_platforms()
    if platforms:
        return platforms.split(",")[0].strip().lower() != "cpu"
    return _plugin_installed() and _accelerator_device_visible()


def _configured_platforms() -> str:
    """JAX_PLATFORMS as JAX will use it: its config once jax is imported (read from the environment at import,
    changed by jax.config.update after), else the environment."""
    jax = sys.modules.get("jax")
    if jax is not None and hasattr(jax, "config"):
        return (jax.config.jax_platforms or "").strip()
    return os.environ.get("JAX_PLATFORMS", "").strip()


def _plugin_installed() -> bool:
    """A GPU or TPU backend for JAX: a `jax_plugins` module or entry point (what jax[cuda12] installs), or
    libtpu. None of them is imported."""
    if importlib.util.find_spec("libtpu") is not None or list(importlib.metadata.entry_points(group="jax_plugins")):
        return True
    spec = importlib.util.find_spec("jax_plugins")
    return spec is not None and any(True for _ in pkgutil.iter_modules(spec.submodule_search_locations or []))


def _accelerator_device_visible() -> bool:
    """The device checks JAX makes before it starts a plugin (jax._src.hardware_utils): NVIDIA's device files
    (with CUDA_VISIBLE_DEVICES not emptied), AMD's /dev/kfd, a Google TPU chip on the PCI bus. Where those
    helpers are not found (another jax), a plugin counts as a device."""
    try:
        from jax._src import hardware_utils as hw
        nvidia = hw.has_visible_nvidia_gpu() and os.environ.get("CUDA_VISIBLE_DEVICES") not in ("", "-1")
        return nvidia or os.path.exists("/dev/kfd") or hw.num_available_tpu_chips_and_device_id()[0] > 0
    except (ImportError, AttributeError):
        return True


def release_free_memory() -> bool:
    """Give the free memory of every malloc arena back to the kernel now (glibc's malloc_trim(0)); True when
    some was given back. Without glibc, does nothing and returns False."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim(0) == 1


# What jax.monitoring reports once XLA has compiled a program, before its first run (jax._src.dispatch)
_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def release_after_compiles():
    """Within the block, give free memory back (`release_free_memory`) each time XLA finishes compiling a
    program, before that program first runs.

    A compile frees hundreds of MB in small pieces that `keep_freed_memory()` keeps, and the program's first
    run then allocates its temporaries as one block that those pieces cannot serve: the old default model's CPU
    run peaked at its first step, 0.3 GB above every later step (docs/performance.md, tenth session).
    """
    import jax

    def listener(event: str, duration: float, **_):
        if event == _BACKEND_COMPILE_EVENT:
            release_free_memory()

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def run_cpu_programs_inline() -> bool:
    """Make JAX run single-device CPU programs on the calling thread (no asynchronous dispatch), so their
    buffers come from glibc's main arena, which `keep_freed_memory()` keeps for the next step.

    Only the CPU client reads the setting, and only when it starts: returns False, changing nothing, when
    JAX's backends are already running (a notebook that computed something first). Accelerators keep their
    asynchronous dispatch; on CPU a training step takes tens of milliseconds or more, so nothing is lost by
    not queueing the next one.
    """
    import jax
    try:
        from jax._src.xla_bridge import backends_are_initialized
    except ImportError:  # moved in another jax: assume running, change nothing
        return False
    if backends_are_initialized():
        return False
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True
