"""Shared test setup: 2 CPU devices, and tiny data and configs so every test runs in seconds.

The device count must be set before anything initialises JAX's backend, so it is set here, at import of
conftest (pytest imports it before any test module). Every test process therefore sees
`jax.device_count() == 2`; subprocesses (`python train.py ...`) see 1 unless given JAX_NUM_CPU_DEVICES.

Helpers (plain functions, importable as `from conftest import ...`, and fixtures of the same name that
return them):

- `load_bench(name)`: `bench/<name>.py` imported as a module, for tests of the bench scripts' functions.
- `make_image_folder(root, classes=("cat", "dog"), n_train=16, n_test=8, size=16, ext="png", mode="RGB")`
  writes `root/train/<class>/<i>.<ext>` and `root/test/<class>/<i>.<ext>` with PIL and returns `root`.
  Images are smooth per-class colour gradients plus a little seeded noise: deterministic, and easy
  enough that a tiny autoencoder's loss falls within a few dozen steps.
- `tiny_config(tmp_path, **overrides)`: `Config(**PRESETS["tiny"])` with preset "tiny", workdir
  `tmp_path/run`, cache_dir `tmp_path/cache`, then `overrides`.
- `tiny_dataset(n_train=32, n_test=16, size=16, channels=3, classes=2)`: the same images as an in-memory
  `jaxae.data.Dataset` (no files), for tests of training code.
- `damage_archive(archive, how)`: change a tar archive (a pathlib.Path) in place as a cut download ("cut") or a
  bad copy does ("zeroed", "header", "between": see its docstring).

Session fixture `reference_run`: one `python train.py REFERENCE_FLAGS` on 2 devices, trained once and shared
by the tests that compare another way of training against it (test_distributed: 2 processes; test_robustness:
killed and resumed). Tests must not write into it; copy it first.
"""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

# One persistent compilation cache for the whole session, this process and every `python train.py` /
# `python evaluate.py` it starts (they inherit the environment): the same tiny model's init, train step and
# evaluation are otherwise compiled again by every subprocess that trains and every in-process training run.
# Cached executables are the ones XLA would compile (the key covers the HLO, flags, devices and jax version),
# so no test sees different numbers. A fresh folder per session, deleted at exit, unless one is given.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _CACHE = tempfile.mkdtemp(prefix="jaxae-tests-jax-cache-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # default 1 s: most compiles here are less
# No bound (jaxae.cli.bound_cache gives a user's folder one): JAX's eviction reads the last use of every entry at
# each write, and the suite writes about 2,500 small programs. With a bound the writes, in turn under its lock,
# took 175 ms each at the end, and the suite 485 s instead of 277-320 s (docs/performance.md, thirty-first session).
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", "-1")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 2)
# As train.py and evaluate.py run them (jaxae.hostmem.run_cpu_programs_inline): single-device CPU programs on
# the calling thread. Only the CPU client reads it, when it starts, so it is set here too.
jax.config.update("jax_cpu_enable_async_dispatch", False)
# Again through the config: the environment is read when jax is imported, which a plugin may have done.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_compilation_cache_max_size", int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]))

# Compile time, not run time, dominates the suite: XLA:CPU's LLVM backend spends ~1.5 s CPU compiling each
# threefry random op at its default optimisation level (a tiny model's jitted init: 29 s; at level 0:
# 3 s), and the tiny shapes here run fast either way. Read when the backend starts, so set it now;
# subprocesses inherit it through the environment (XLA_FLAGS).
# The fusion emitters (MLIR) compile slower than the older elemental emitters at these sizes: a tiny model's
# jitted init 2.0 -> 1.5 s, its apply 0.36 -> 0.18 s, the float64 gradient check 11 -> 5 s, the serial suite
# 280 -> 244 s on 2 cores.
for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from jaxae.config import PRESETS, Config  # noqa: E402
from jaxae.data import Dataset  # noqa: E402


def load_bench(name: str):
    """bench/<name>.py imported as a module (bench/ is a folder of scripts, not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"{name}_bench", os.path.join(REPO, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def synthetic_images(n: int, label: int, size: int = 16, channels: int = 3, seed: int = 0) -> np.ndarray:
    """[n, size, size, channels] uint8: a class colour, a gradient whose direction varies per image, noise."""
    rng = np.random.default_rng([seed, label, n, size, channels])
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    base = (np.arange(channels) + 1 + label * 2.3) % 3 / 3.0  # a different colour per class
    angle = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    ramp = np.cos(angle) * xx + np.sin(angle) * yy  # [n, size, size]
    img = 0.2 + 0.6 * (0.5 * base[None, None, None, :] + 0.5 * (ramp[..., None] + 1) / 2)
    img = img + rng.normal(0, 0.02, img.shape)
    return np.clip(img * 255, 0, 255).round().astype(np.uint8)


def make_image_folder(root, classes=("cat", "dog"), n_train: int = 16, n_test: int = 8, size: int = 16,
                      ext: str = "png", mode: str = "RGB") -> str:
    """Write train/<class>/ and test/<class>/ images under `root`; returns `root` as a str."""
    from PIL import Image

    root = str(root)
    channels = 1 if mode == "L" else 3
    for split, n in (("train", n_train), ("test", n_test)):
        for label, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            images = synthetic_images(n, label, size, channels, seed=0 if split == "train" else 1)
            for i, im in enumerate(images):
                Image.fromarray(im[..., 0] if channels == 1 else im).convert(mode).save(
                    os.path.join(folder, f"{i:04d}.{ext}"))
    return root


def damage_archive(archive, how: str) -> None:
    """Change an archive as a cut download or a bad copy does."""
    raw = bytearray(archive.read_bytes())
    if how == "cut":
        raw = raw[:len(raw) // 2]
    elif how == "zeroed":  # 16 bytes of a compressed stream
        raw[len(raw) // 2:len(raw) // 2 + 16] = bytes(16)
    else:  # "header": garbage over a member's header in the middle of a plain tar; "between": cut just before it
        with tarfile.open(archive) as tar:
            middle = tar.getmembers()[len(tar.getmembers()) // 2].offset
        if how == "between":
            raw = raw[:middle]
        else:
            raw[middle:middle + 512] = b"x" * 512
    archive.write_bytes(bytes(raw))


def tiny_dataset(n_train: int = 32, n_test: int = 16, size: int = 16, channels: int = 3,
                 classes: int = 2) -> Dataset:
    """An in-memory Dataset of the synthetic images, `n_train` / `n_test` per split (classes interleaved)."""
    def split(n, seed):
        per = -(-n // classes)
        x = np.concatenate([synthetic_images(per, c, size, channels, seed) for c in range(classes)])
        y = np.repeat(np.arange(classes, dtype=np.int32), per)
        order = np.random.default_rng(seed).permutation(len(x))[:n]
        return x[order], y[order]

    tr_x, tr_y = split(n_train, 0)
    te_x, te_y = split(n_test, 1)
    return Dataset(tr_x, tr_y, te_x, te_y, [f"class{c}" for c in range(classes)])


def tiny_config(tmp_path, **overrides) -> Config:
    """The "tiny" preset with its workdir and cache inside `tmp_path`."""
    base = {**PRESETS["tiny"], "preset": "tiny", "workdir": os.path.join(str(tmp_path), "run"),
            "cache_dir": os.path.join(str(tmp_path), "cache")}
    return Config(**{**base, **overrides})


@pytest.fixture(name="make_image_folder")
def _make_image_folder_fixture():
    return make_image_folder


@pytest.fixture(name="tiny_config")
def _tiny_config_fixture():
    return tiny_config


@pytest.fixture(name="tiny_dataset")
def _tiny_dataset_fixture():
    return tiny_dataset


# 32 training images (make_image_folder(n_train=16) x 2 classes): 4 steps per epoch at the preset's batch 8.
# Noise on, so that resuming and splitting over processes must reproduce the per-example noise keys too.
REFERENCE_FLAGS = ("--preset", "tiny", "--epochs", "4", "--seed", "2", "--noise", "0.2")
REFERENCE_STEPS = 16


_REFERENCE: dict = {}


def _start_reference_run() -> None:
    """Start reference_run's `python train.py` in the background (output to files in its folder)."""
    root = tempfile.mkdtemp(prefix="jaxae-tests-reference-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    data = make_image_folder(os.path.join(root, "img"), n_train=16, n_test=4)
    workdir = os.path.join(root, "run")
    out, err = (open(os.path.join(root, name), "w+") for name in ("stdout.txt", "stderr.txt"))
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), *REFERENCE_FLAGS, "--data", data,
                             "--workdir", workdir, "--cache-dir", os.path.join(root, "cache")], cwd=REPO,
                            env={**os.environ, "JAX_NUM_CPU_DEVICES": "2"}, stdout=out, stderr=err, text=True)
    _REFERENCE.update(data=data, workdir=workdir, proc=proc, out=out, err=err)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items) -> None:
    # pytest.ini runs the suite in pytest-xdist workers with --dist loadgroup. Each test module is one group,
    # so its module-scoped trainings run once; the modules that use reference_run (test_distributed,
    # test_robustness) form one group, so it is trained once.
    uses_reference = {item.module.__name__ for item in items
                      if "reference_run" in getattr(item, "fixturenames", ())}
    for item in items:
        name = item.module.__name__
        item.add_marker(pytest.mark.xdist_group("reference" if name in uses_reference else name))


def pytest_collection_finish(session) -> None:
    # When a collected test uses reference_run, start its training now: it then runs on the second core
    # while the tests before the first user run (test_checkpoints, test_cli, ... in a serial run). Not in an
    # xdist worker: every worker collects every test, only one runs the users, and the other core is busy.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if not session.config.option.collectonly and any(
            "reference_run" in getattr(item, "fixturenames", ()) for item in session.items):
        _start_reference_run()


def pytest_sessionfinish(session) -> None:
    proc = _REFERENCE.get("proc")
    if proc is not None and proc.poll() is None:  # the session ended before a test waited for it
        proc.kill()
        proc.wait()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Once a worker reports the session finished (after this hook), xdist gives it 5 s to exit, then a SIGINT.
        # Its exit ran 4-5 full collections of a heap full of JAX's objects, 0.5-1.1 s each with JAX's callback
        # (on a loaded box, longer): the SIGINT then landed in that callback, the suite's "Exception ignored in
        # _xla_gc_callback ... KeyboardInterrupt" warning. Collected once here, before the report, and frozen out
        # of the later collections.
        gc.collect()
        gc.freeze()


@pytest.fixture(scope="session")
def reference_run() -> dict:
    """`python train.py REFERENCE_FLAGS` on 2 CPU devices, straight through: {"data", "workdir", "flags",
    "stdout"}. The data folder is shared too: a run compared with this one trains on the same files."""
    if "proc" not in _REFERENCE:
        _start_reference_run()
    proc = _REFERENCE["proc"]
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    for f in (_REFERENCE["out"], _REFERENCE["err"]):
        f.seek(0)
    stdout, stderr = _REFERENCE["out"].read(), _REFERENCE["err"].read()
    _REFERENCE["out"].close()
    _REFERENCE["err"].close()
    assert proc.returncode == 0, stderr[-3000:]
    assert f"done: step {REFERENCE_STEPS}" in stdout, stdout[-3000:]
    return {"data": _REFERENCE["data"], "workdir": _REFERENCE["workdir"], "flags": list(REFERENCE_FLAGS),
            "stdout": stdout}
