"""End to end: `python train.py` in a subprocess on a tiny image folder.

One module-scoped run is stopped by --max-steps and resumed by the same command; the tests then check what
it wrote, and that refused or fresh re-runs behave. Subprocesses see 1 CPU device unless told otherwise,
and share a persistent compilation cache so that each run after the first skips most compiles.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO, make_image_folder

EPOCHS = 6
STEPS_PER_EPOCH = 8  # 2 classes x 32 train images / batch 8
STOP_AT = 16


def run_train(args, env_extra=None, cache=None):
    """train.py in a subprocess. cache: a JAX compilation cache folder, or "default" for the one a user gets
    (--cache-dir's xla/), or None for the session's (conftest)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_NUM_CPU_DEVICES", None)  # 1 device unless a test asks for more
    env.update(env_extra or {})
    if cache == "default":  # a user's environment: no cache folder, no bound (use_compilation_cache gives one)
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        env.pop("JAX_COMPILATION_CACHE_MAX_SIZE", None)
    elif cache:
        env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = make_image_folder(root / "data", classes=("a", "b"), n_train=32, n_test=8, size=16)
    workdir = str(root / "run")
    args = ["--preset", "tiny", "--data", data, "--cache-dir", str(root / "cache"), "--workdir", workdir,
            "--epochs", str(EPOCHS), "--learning-rate", "5e-3", "--warmup-epochs", "0", "--noise", "0.1"]
    # the compiled programs go where a user's go, --cache-dir's xla/ (the later tests' runs share it)
    cache = str(root / "cache" / "xla")
    stopped = run_train(args + ["--max-steps", str(STOP_AT)], cache="default")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    steps_after_stop = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    cached_after_stop = sorted(os.listdir(cache)) if os.path.isdir(cache) else []
    resumed = run_train(args, cache="default")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return dict(args=args, workdir=workdir, stopped=stopped, resumed=resumed, cache=cache,
                steps_after_stop=steps_after_stop, cached_after_stop=cached_after_stop,
                cached_after_resume=sorted(os.listdir(cache)))


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_max_steps_stops_and_the_same_command_resumes(run):
    assert max(run["steps_after_stop"]) == STOP_AT
    assert f"from step {STOP_AT}" in run["resumed"].stdout
    assert "resuming" not in run["stopped"].stdout
    assert (f"--max-steps {STOP_AT} ends this command at step {STOP_AT} of the run's {EPOCHS * STEPS_PER_EPOCH}: "
            f"`python train.py --workdir {run['workdir']}` trains on") in run["stopped"].stdout
    assert "ends this command" not in run["resumed"].stdout


def test_compiled_programs_are_kept_for_the_next_run(run):
    """The first run leaves its compiled programs in --cache-dir's xla/ (the steps, the test pass, the init);
    the resumed run finds its steps and test pass there. Neither compiles a checksum: on CPU the save's and the
    restore's are NumPy's (checkpoints.checksum_host). The resumed run adds only the small programs that make
    its restore target."""
    def programs(names):
        return sorted(n.rsplit("-", 2)[0] for n in names)
    before = programs(run["cached_after_stop"])
    assert {"jit_init", "jit__fun", "jit__recon_errors"} <= set(before), before
    added = programs(set(run["cached_after_resume"]) - set(run["cached_after_stop"]))
    assert "jit__fun" not in added and "jit__recon_errors" not in added, added
    assert "jit__checksum" not in before + added, (before, added)
    # bounded (cli.bound_cache): JAX keeps each entry's last use beside it, and locks the folder
    entries = [n.removesuffix("-cache") for n in run["cached_after_resume"] if n.endswith("-cache")]
    assert entries and all(f"{e}-atime" in run["cached_after_resume"] for e in entries), run["cached_after_resume"]
    assert ".lockfile" in run["cached_after_resume"]


def test_the_cache_folder_follows_the_environment_and_cache_dir(tmp_path, monkeypatch, capsys):
    import jax
    from jaxae.cli import CACHE_MAX_BYTES, use_compilation_cache
    from jaxae.data import cache_root
    before = jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache
    bound = jax.config.jax_compilation_cache_max_size
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "theirs"))  # the user's choice wins
    assert use_compilation_cache(str(tmp_path)) == str(tmp_path / "theirs") and not os.listdir(tmp_path)
    try:
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # set and empty: no cache, XLA's autotuning one too
        assert use_compilation_cache(str(tmp_path)) is None and not jax.config.jax_enable_compilation_cache
        jax.config.update("jax_enable_compilation_cache", before[1])
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
        assert use_compilation_cache(str(tmp_path)) == str(tmp_path / "xla")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla") and os.path.isdir(tmp_path / "xla")
        assert jax.config.jax_compilation_cache_max_size == bound == -1  # the environment chose none (conftest)
        monkeypatch.delenv("JAX_COMPILATION_CACHE_MAX_SIZE")
        assert use_compilation_cache(str(tmp_path)) == str(tmp_path / "xla")
        assert jax.config.jax_compilation_cache_max_size == CACHE_MAX_BYTES == 1 << 30
        monkeypatch.setenv("JAXAE_CACHE", str(tmp_path / "env"))
        assert use_compilation_cache("") == str(tmp_path / "env" / "xla")
        monkeypatch.setenv("JAXAE_CACHE", "")  # set and empty: the default root, not the working directory
        assert cache_root("") == os.path.join(os.path.expanduser("~"), ".cache", "jaxae")
        (tmp_path / "afile").write_text("")
        assert use_compilation_cache(str(tmp_path / "afile")) is None  # not a folder: one note, no cache
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("note: compiled programs are not cached"), err
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_enable_compilation_cache", before[1])
        jax.config.update("jax_compilation_cache_max_size", bound)


_COMPILE = """
import sys, warnings
import jax, jax.numpy as jnp
warnings.simplefilter("error")  # a cache entry JAX cannot read or write is a warning: fail on it
if sys.argv[1] == "bound":
    import jaxae.cli
    jaxae.cli.CACHE_MAX_BYTES = int(sys.argv[2])
    jaxae.cli.use_compilation_cache(sys.argv[3])
else:  # the folder as jaxae filled it before it had a bound
    jax.config.update("jax_compilation_cache_dir", sys.argv[3])
for k in range(int(sys.argv[4]), int(sys.argv[5])):
    jax.jit(lambda x: jnp.sin(x) * k).lower(jax.ShapeDtypeStruct((3,), jnp.float32)).compile()
"""


def test_the_compiled_programs_kept_are_bounded_and_an_old_folder_joins_in(tmp_path):
    """use_compilation_cache bounds the folder (JAX's least-recently-used eviction, which also locks each read and
    write): an entry left by a run before the bound is evicted first, and the writes after it raise no warning."""
    def compile_(*argv):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
        for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_COMPILATION_CACHE_MAX_SIZE"):
            env.pop(name, None)
        proc = subprocess.run([sys.executable, "-c", _COMPILE, *map(str, argv)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]

    def entries():
        return {n: os.path.getsize(folder / n) for n in os.listdir(folder) if n.endswith("-cache")}

    folder = tmp_path / "xla"
    compile_("unbounded", 0, folder, 0, 1)
    (old,) = entries()
    assert not os.path.exists(folder / old.replace("-cache", "-atime"))
    compile_("bound", 10 ** 9, tmp_path, 1, 3)  # room for all: the old entry stays and gets a time of last use
    assert len(entries()) == 3 and all(os.path.exists(folder / n.replace("-cache", "-atime")) for n in entries())
    room = int(3.5 * max(entries().values()))
    compile_("bound", room, tmp_path, 3, 5)  # room for 3 of 5: the two least recently used go, the old one first
    assert old not in entries() and len(entries()) == 3 and sum(entries().values()) <= room, entries()


def test_loss_falls_and_the_run_writes_its_files(run):
    workdir = run["workdir"]
    records = read_metrics(workdir)
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    assert [r["step"] for r in records] == [STEPS_PER_EPOCH * e for e in range(1, EPOCHS + 1)]
    assert records[-1]["train_loss"] < 0.8 * records[0]["train_loss"]
    assert records[-1]["test_mse"] < records[0]["test_mse"]
    with open(os.path.join(workdir, "config.json")) as fh:
        saved = json.load(fh)
    assert saved["epochs"] == EPOCHS and saved["noise"] == 0.1 and saved["width"] == 8
    steps = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
    assert max(steps) == EPOCHS * STEPS_PER_EPOCH
    with Image.open(os.path.join(workdir, "loss_curve.png")) as im:
        assert im.size[0] > 200 and im.size[1] > 100
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard")))
    assert f"done: step {EPOCHS * STEPS_PER_EPOCH}" in run["resumed"].stdout
    # where the time went: the resumed process ran epochs 3-6, so a first epoch and a steady pace
    time_line = next(line for line in run["resumed"].stdout.splitlines() if line.startswith("time: "))
    assert "to the end of this process's first epoch" in time_line and "s per epoch" in time_line, time_line


def test_changing_a_run_setting_on_resume_is_refused(run):
    before = read_metrics(run["workdir"])
    proc = run_train(run["args"] + ["--epochs", str(EPOCHS + 1)], cache=run["cache"])
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "--epochs" in lines[0] and "--fresh" in lines[0], proc.stderr
    # not "drop the flag to resume it" (a finished run then has nothing to train): why more epochs cannot be
    assert "cosine decay are laid out over the run's epochs, so a run cannot be given more" in lines[0]
    assert read_metrics(run["workdir"]) == before


def test_fresh_moves_the_old_run_aside(run, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(run["workdir"], workdir)
    args = [a if a != run["workdir"] else workdir for a in run["args"]]
    proc = run_train(args + ["--fresh", "--max-steps", "2"], cache=run["cache"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    previous = [d for d in os.listdir(workdir) if d.startswith("previous-")]
    assert len(previous) == 1
    old = os.path.join(workdir, previous[0])
    assert str(EPOCHS * STEPS_PER_EPOCH) in os.listdir(os.path.join(old, "checkpoints"))
    assert len(read_metrics(old)) == EPOCHS
    assert [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()] == [2]
    assert "resuming" not in proc.stdout


def test_batch_size_not_divisible_by_devices_is_one_line_exit_2(tmp_path):
    data = make_image_folder(tmp_path / "data", n_train=8, n_test=2)
    proc = run_train(["--preset", "tiny", "--batch-size", "7", "--workdir", str(tmp_path / "run"), "--data", data,
                      "--cache-dir", str(tmp_path / "cache")], env_extra={"JAX_NUM_CPU_DEVICES": "2"})
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "--batch-size 7" in lines[0] and "2 devices" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not os.path.exists(os.path.join(tmp_path, "run", "checkpoints"))


@pytest.mark.parametrize("script, argv, words", [
    ("train.py", ["--loss", "L2"], ["argument --loss: invalid choice: 'L2'", "`train.py --help`"]),
    ("train.py", ["--lateent-dim", "4"], ["unrecognized arguments: --lateent-dim 4"]),
    ("train.py", ["--steps", "100"], ["unrecognized arguments: --steps 100"]),  # not --steps-per-call 100
    ("evaluate.py", ["--workdir", "w", "--best", "100"], ["unrecognized arguments: --best 100"]),
    ("evaluate.py", [], ["the following arguments are required: --workdir", "`evaluate.py --help`"]),
])
def test_a_flag_mistake_is_one_line_and_exit_2(script, argv, words, capsys, monkeypatch):
    """argparse's own errors print one line, as every other mistake does (they printed its 17-line usage)."""
    import importlib.util
    monkeypatch.setattr(sys, "argv", [script])  # argparse names the program after argv[0]
    spec = importlib.util.spec_from_file_location(script[:-3], os.path.join(REPO, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_:
        module.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    for w in words:
        assert w in err, err


def test_jaxaes_own_warnings_are_one_line_in_the_scripts(tmp_path, capsys):
    """A skipped file printed Python's two lines (jaxae/data.py:71: UserWarning: ..., then the source line)."""
    import warnings
    import jaxae
    from jaxae import cli, data
    from conftest import make_image_folder
    folder = make_image_folder(tmp_path / "img", n_train=2, n_test=1)
    (tmp_path / "img" / "train" / "cat" / "notes.txt").write_text("not an image")
    before = warnings.formatwarning
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_:
        warnings.simplefilter("always")
        warnings.showwarning = lambda m, c, f, n, file=None, line=None: sys.stderr.write(  # as Python's own
            warnings.formatwarning(m, c, f, n, line))  # printer does, where pytest would record the warning
        cli.run_main(lambda argv: data.load(folder, cache_dir=str(tmp_path / "cache")) and 0)
    assert exit_.value.code == 0 and warnings.formatwarning is before  # restored for the next caller
    assert capsys.readouterr().err.splitlines() == [
        "warning: skipped 1 file(s) that are not images (by extension), e.g. train/cat/notes.txt"]
    ours = os.path.join(os.path.dirname(jaxae.__file__), "metrics.py")
    numpy_s = cli._one_line_warning(RuntimeWarning("Mean of empty slice"), RuntimeWarning, ours, 5)
    assert "metrics.py:5: RuntimeWarning: Mean of empty slice" in numpy_s  # not ours: where it came from stays
    theirs = cli._one_line_warning(UserWarning("deprecated"), UserWarning, "/site-packages/orbax/x.py", 5)
    assert "/site-packages/orbax/x.py:5: UserWarning: deprecated" in theirs
