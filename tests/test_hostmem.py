"""jaxae.hostmem: freed host memory stays in the process (no page faults on every training step), until
release_free_memory() gives it back."""

import os
import subprocess
import sys

import pytest

# The probes' start: with argv[1] "keep", the allocator settings of train.py; the C library's malloc and free.
PREAMBLE = r"""
import ctypes, sys
from jaxae import hostmem
if sys.argv[1] == "keep":
    assert hostmem.keep_freed_memory()
elif sys.argv[1] == "keep-large":  # a model whose steps need blocks larger than a thread arena's heap
    assert hostmem.keep_freed_memory(large_steps=True)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
"""

# Allocates and touches 256 MiB with the C library's malloc, frees it and prints how much of it the process
# still holds. glibc serves a block that large with its own mmap and unmaps it on free: nothing is held.
PROBE = PREAMBLE + r"""
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
n = 256 << 20
p = libc.malloc(n)
ctypes.memset(p, 1, n)
before = rss()
libc.free(p)
held = (rss() - before + n) / n
if sys.argv[1] == "keep" and len(sys.argv) > 2:
    assert hostmem.release_free_memory()
    held = (rss() - before + n) / n
print(held)
"""


def _held_fraction(*args: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_stays_in_the_process():
    assert _held_fraction("default") < 0.1  # glibc's default: the block went back to the kernel
    assert _held_fraction("keep") > 0.9
    assert _held_fraction("keep", "release") < 0.1  # once an epoch, train_and_evaluate gives it back


# the environment without the settings the probes compare (glibc's and jaxae's arena counts)
_ENV = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES", "JAXAE_MALLOC_ARENAS")}


# The same block allocated and freed by a thread of its own, as XLA's worker threads allocate a step's temporaries
# when the step's inputs are not ready at its call; prints the fraction of it the process still holds
THREAD_PROBE = PREAMBLE + r"""
import threading
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
n = 256 << 20
held = []
def work():
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    before = rss()
    libc.free(p)
    held.append((rss() - before + n) / n)
t = threading.Thread(target=work)
t.start()
t.join()
print(held[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_threads_large_block_stays_only_with_one_arena():
    # the first thread to allocate gets the second arena, whose heaps are at most 64 MB: glibc maps a larger block
    # on its own and unmaps it on free, whatever the settings (a default-model CPU step's 580 MB, every step)
    run = lambda mode: float(subprocess.run([sys.executable, "-c", THREAD_PROBE, mode], capture_output=True,
                                            text=True, check=True, env={**_ENV, "JAX_PLATFORMS": "cpu"}).stdout)
    assert run("keep") < 0.1
    assert run("keep-large") > 0.9  # one arena: the main one, which keeps it


# Threads that malloc, then glibc's own per-arena report (malloc_stats, on stderr): by default each new thread
# gets an arena of its own; after keep_freed_memory() they all share one beside the main thread's.
ARENA_PROBE = PREAMBLE + r"""
import threading
together = threading.Barrier(4)
def work():
    p = libc.malloc(1 << 20)
    ctypes.memset(p, 1, 1 << 20)
    together.wait()  # all four alive at once: no thread can take over an exited one's arena
    libc.free(p)
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc.malloc_stats()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("mode,env_extra,arenas", [
    ("default", {}, lambda n: n >= 4),
    ("keep", {"JAX_PLATFORMS": "cpu"}, lambda n: n == 2),
    ("keep-large", {"JAX_PLATFORMS": "cpu"}, lambda n: n == 1),  # steps with blocks larger than a thread heap
    # an accelerator will run the programs: the arenas are left to glibc (XLA's compiler threads)
    ("keep", {"JAX_PLATFORMS": "cuda"}, lambda n: n >= 4),
    ("keep", {"JAX_PLATFORMS": "tpu,cpu"}, lambda n: n >= 4),
    # the environment variable rules either way
    ("keep", {"JAX_PLATFORMS": "cuda", "JAXAE_MALLOC_ARENAS": "2"}, lambda n: n == 2),
    ("keep", {"JAX_PLATFORMS": "cpu", "JAXAE_MALLOC_ARENAS": "0"}, lambda n: n >= 4),
])
def test_threads_share_one_malloc_arena_beside_the_main_one_where_the_cpu_runs_the_programs(mode, env_extra, arenas):
    env = {k: v for k, v in _ENV.items() if k != "JAX_PLATFORMS"}
    out = subprocess.run([sys.executable, "-c", ARENA_PROBE, mode], capture_output=True, text=True, check=True,
                         env={**env, **env_extra})
    n = out.stderr.count("Arena ")
    assert arenas(n), out.stderr


@pytest.mark.parametrize("value", ["two", "-1", "\u00b2"])  # "²" passes str.isdigit, not int()
def test_an_arena_count_that_is_not_a_number_is_a_clear_error(monkeypatch, value):
    from jaxae import hostmem
    from jaxae.config import UsageError
    monkeypatch.setenv("JAXAE_MALLOC_ARENAS", value)
    with pytest.raises(UsageError, match=f"JAXAE_MALLOC_ARENAS={value}: give a whole number"):
        hostmem.keep_freed_memory()


@pytest.mark.parametrize("platforms,plugin,device,expected", [
    ("cpu", True, True, False),  # JAX_PLATFORMS rules over an installed plugin
    ("cpu,cuda", True, True, False),  # its first entry is JAX's default backend
    ("cuda", False, False, True),
    ("tpu,cpu", False, False, True),
    ("", True, True, True),  # JAX prefers an installed plugin whose device is present
    ("", True, False, False),  # ... and runs on the CPU without the device
    ("", False, True, False),
])
def test_an_accelerator_is_expected_as_jax_would_choose_one(monkeypatch, platforms, plugin, device, expected):
    from jaxae import hostmem
    monkeypatch.setattr(hostmem, "_configured_platforms", lambda: platforms)
    monkeypatch.setattr(hostmem, "_plugin_installed", lambda: plugin)
    monkeypatch.setattr(hostmem, "_accelerator_device_visible", lambda: device)
    assert hostmem.accelerator_expected() is expected


def test_a_plugin_is_found_in_the_jax_plugins_namespace(monkeypatch, tmp_path):
    from jaxae import hostmem
    plugin = tmp_path / "jax_plugins" / "xla_cuda12"  # what jax-cuda12-pjrt installs
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert hostmem._plugin_installed()


# JAX_PLATFORMS as JAX will use it: the environment before jax is imported, its config after
PLATFORMS_PROBE = r"""
import os
os.environ["JAX_PLATFORMS"] = "cuda"
from jaxae import hostmem
assert "jax" not in __import__("sys").modules
before = hostmem._configured_platforms()
import jax
jax.config.update("jax_platforms", "tpu")
print(before, hostmem._configured_platforms())
"""


def test_jax_platforms_is_read_from_the_environment_then_from_jax_config():
    out = subprocess.run([sys.executable, "-c", PLATFORMS_PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["cuda", "tpu"], out.stderr
# A ~40 ms CPU program: dispatched asynchronously, its result is not ready when the call returns; run inline,
# it is. After JAX's backends have started, the setting can no longer change and the call says so.
DISPATCH_PROBE = r"""
import sys
from jaxae import hostmem
if sys.argv[1] == "inline":
    assert hostmem.run_cpu_programs_inline()
import jax, jax.numpy as jnp
f = jax.jit(lambda a: (a @ a @ a).sum())
a = jnp.ones((1024, 1024))
f(a).block_until_ready()
r = f(a)
print(r.is_ready())
assert hostmem.run_cpu_programs_inline() is False
"""


@pytest.mark.parametrize("mode,ready", [("async", False), ("inline", True)])
def test_cpu_programs_run_inline(mode, ready):
    out = subprocess.run([sys.executable, "-c", DISPATCH_PROBE, mode], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(ready)


def test_free_memory_is_given_back_after_each_compile_within_the_block(monkeypatch):
    """release_after_compiles: one release per XLA compile inside the block, none for a cached program or
    after the block."""
    import jax
    import jax.numpy as jnp

    from jaxae import hostmem

    calls = []
    monkeypatch.setattr(hostmem, "release_free_memory", lambda: calls.append(1) or True)
    x = jnp.arange(7.0)
    f = jax.jit(lambda v: v * 3.0 + 1.0)
    with hostmem.release_after_compiles():
        f(x).block_until_ready()  # a new program: compiled, then memory released
        compiled = len(calls)
        f(x).block_until_ready()  # cached: no compile, no release
        cached = len(calls)
    jax.jit(lambda v: v / 5.0)(x).block_until_ready()  # after the block
    assert compiled >= 1 and cached == compiled and len(calls) == compiled


@pytest.mark.parametrize("overrides", [{}, {"head": "conv"}, {"blocks": 1}, {"encoder_heads": 8}])
def test_the_step_temporaries_estimate_that_picks_the_arenas(overrides):
    import jax
    import numpy as np
    from jaxae import train
    from jaxae.config import Config, PRESETS
    if jax.default_backend() != "cpu":
        pytest.skip("the estimate is of CPU steps (microbatches of 64)")
    cfg = Config(**{**PRESETS["quick"], **overrides})
    state = train.create_train_state(cfg, (32, 32, 3), 10, 10)
    step = jax.jit(train.train_step, static_argnames="cfg").lower(
        state, np.zeros((cfg.batch_size, 32, 32, 3), np.uint8), jax.random.PRNGKey(0), cfg=cfg).compile()
    measured = step.memory_analysis().temp_size_in_bytes  # 41, 184, 80 and 78 MB with jax 0.10.2
    assert 0.8 * measured < train.cpu_step_temporaries(cfg) < 1.25 * measured  # 43, 187, 76 and 76 MB
    # and the choice it makes: two arenas for the default (and quick) model (one costs it 14-21 %), one for the
    # long preset's steps (the default model before the thirty-third session)
    assert train.large_cpu_steps(cfg) == bool(overrides)
    assert train.cpu_step_temporaries(Config(**PRESETS["long"])) > 4 * train.LARGE_STEP
    # the default model is the quick preset's: its batch of 1024 runs in the same passes of 64
    assert train.cpu_step_temporaries(Config(**PRESETS["default"])) == train.cpu_step_temporaries(
        Config(**PRESETS["quick"]))


def test_a_resumed_run_gets_the_arenas_of_its_own_model(tmp_path):
    # `python train.py --workdir W` resumes W's run: the command's defaults (the default model) are not its model
    from jaxae import checkpoints, train
    from jaxae.config import Config, PRESETS
    long = Config(**{**PRESETS["long"], "preset": "long", "workdir": str(tmp_path / "run")})
    checkpoints.save_config(long)
    command = Config(workdir=long.workdir)
    assert train._model_config(command, set()).width == 64
    assert train._model_config(command, {"preset"}).width == 16  # a new run's flags: the command's own model
    assert train._model_config(Config(workdir=str(tmp_path / "none")), set()).width == 16
