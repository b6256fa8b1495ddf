"""What the scripts share: turn UsageError into one line and exit status 2, TrainingStopped into one line and
exit status 1, a SIGTERM where a script asked for it into exit status 143 after its clean-up; keep compiled
programs for the next run."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import sys
import threading
import warnings
from typing import Callable

from jaxae.config import TrainingStopped, UsageError


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose mistakes (an unknown flag, a bad choice, a missing value) are one line and exit
    status 2, as every other mistake is: argparse printed its whole usage first (17 lines for train.py).

    A shortened flag is refused as unknown, not completed: argparse took `train.py --steps 100` (meant as a budget of
    100 steps, which is --max-steps) for --steps-per-call 100, and trained the whole run."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (`{self.prog} --help` lists every flag)\n")


class Terminated(BaseException):
    """A SIGTERM (what a batch scheduler or `kill` sends) raised as an exception, so that the clean-up of an
    interrupted write runs as it does for Ctrl-C: by default the signal ends the process where it stands."""


@contextlib.contextmanager
def sigterm_raises():
    """Within this block, a SIGTERM raises Terminated (in the main thread, where Python runs signal handlers;
    elsewhere the block changes nothing). The handler before it is put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        raise Terminated()

    before = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:  # None: a handler not set from Python (signal.signal refuses None); the default is the nearest
        signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)


_format_warning = warnings.formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """jaxae's own warnings (a skipped file, an empty class folder) as one `warning:` line, like its notes and
    errors: Python's format adds the file, line and source of the warnings.warn call, which tell a user nothing.
    Other warnings (other libraries', or a numpy RuntimeWarning raised in jaxae's code) keep that format."""
    ours = os.path.dirname(os.path.abspath(filename)) == os.path.dirname(os.path.abspath(__file__))
    if ours and category is UserWarning:
        return f"warning: {message}\n"
    return _format_warning(message, category, filename, lineno, line)


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    warnings.formatwarning, before = _one_line_warning, warnings.formatwarning
    try:
        code = main(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt as e:
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)  # what a run lost, where it says
        code = 130
    except Terminated:
        print("terminated", file=sys.stderr)
        code = 128 + signal.SIGTERM
    finally:
        warnings.formatwarning = before  # for a caller in the same process (the tests)
    sys.exit(code)


def use_compilation_cache(cache_dir: str = "") -> str | None:
    """Keep the programs XLA compiles in CACHE_ROOT/xla (JAX's persistent compilation cache; CACHE_ROOT is
    --cache-dir, else $JAXAE_CACHE, else ~/.cache/jaxae), so that a later process that needs the same
    programs loads them instead of compiling again: a resumed run, a training repeated with the same settings
    on the same devices, a second evaluate.py of a run. (The schedule, batch size, loss and noise are part of
    the step's program: a run with other settings compiles its own.)

    On an H100, the default schedule (then `--preset long`) took 81 s to the end of its first epoch with nothing
    cached, 46 s of it compiling the epoch's steps, and 9 s with everything cached (docs/performance.md, fifteenth
    session); on an H200, 32 s and 10 s (twentieth session). JAX's key covers
    the program, the compiler flags, the devices and the jax version: a cached program is the one XLA compiled
    for that key. The folder is kept to CACHE_MAX_BYTES (bound_cache). $JAX_COMPILATION_CACHE_DIR, when set, is
    left to JAX, its bound too (set and empty: no cache).
    Returns the folder in use, or None; a folder that cannot be written gets one note and no cache.
    Call it before the first compile: JAX opens its cache once per process.
    """
    import jax
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        if os.environ["JAX_COMPILATION_CACHE_DIR"]:
            return os.environ["JAX_COMPILATION_CACHE_DIR"]
        # set and empty: no cache. JAX would still keep XLA's GPU autotuning results in a folder named after
        # its flag, relative to the working directory, for a cache folder of "" (jax 0.10)
        jax.config.update("jax_enable_compilation_cache", False)
        return None

    from jaxae.data import cache_root
    path = os.path.join(cache_root(cache_dir), "xla")
    try:
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(f"Permission denied: {path}")
    except OSError as e:
        print(f"note: compiled programs are not cached ({e}); pass --cache-dir a writable folder to keep them "
              f"for the next run", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    bound_cache(path, CACHE_MAX_BYTES)
    return path


# The most jaxae's folder of compiled programs keeps; past it the programs least recently used go first.
CACHE_MAX_BYTES = 1 << 30


def bound_cache(path: str, max_bytes: int) -> bool:
    """Turn on JAX's eviction for the cache folder `path`, unless $JAX_COMPILATION_CACHE_MAX_SIZE chose: at most
    `max_bytes`, the least recently used programs evicted first. With a bound JAX also takes a file lock around
    every read and write of the folder. Without one, a process could read a program another was still writing
    (two runs compiling the same program at once), which costs a warning and a compile: a reader racing a writer
    of 40 entries got 40 cut short, and none with a bound (docs/performance.md, thirty-first session). Returns
    whether it set one.

    The bound needs the filelock package (requirements.txt). JAX's eviction reads each entry's last use from a
    file beside it, which the entries written without a bound lack: those files are written first, from the
    entries' modification times, or JAX would warn at every write. Without filelock, or with a JAX whose cache
    is laid out otherwise, the folder stays unbounded as before."""
    import jax
    if "JAX_COMPILATION_CACHE_MAX_SIZE" in os.environ:
        return False
    if importlib.util.find_spec("filelock") is None:  # JAX imports it; a bound without it fails at the first compile
        return False
    try:
        from jax._src.lru_cache import _ATIME_SUFFIX, _CACHE_SUFFIX
    except ImportError:
        return False
    try:
        for name in os.listdir(path):
            atime = os.path.join(path, name.removesuffix(_CACHE_SUFFIX) + _ATIME_SUFFIX)
            if name.endswith(_CACHE_SUFFIX) and not os.path.exists(atime):
                with open(atime, "wb") as fh:
                    fh.write(os.stat(os.path.join(path, name)).st_mtime_ns.to_bytes(8, "little"))
    except OSError:
        return False
    jax.config.update("jax_compilation_cache_max_size", max_bytes)
    return True
