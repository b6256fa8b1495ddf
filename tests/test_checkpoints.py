"""Orbax checkpoints: save -> restore is exact (optimiser state too), --keep, --step, move_aside, config."""

import json
import logging
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from jaxae import checkpoints, train
from jaxae.config import OLD_MODEL, PRESETS, Config, UsageError, load_config


@pytest.fixture(scope="module")
def fresh_state(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("ckpt"))
    return train.create_train_state(cfg, (16, 16, 3), 20, 4)


def scrambled(state, step: int, seed: int):
    """`state` with every float leaf (params, Adam moments) randomised and a non-zero step count: a state
    that a restore into a fresh one cannot match by accident."""
    rng = np.random.default_rng(seed)
    def scramble(x):
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.floating):
            return jnp.asarray(rng.normal(size=x.shape).astype(x.dtype))
        return jnp.asarray(x + step)  # optimiser step counts
    return state.replace(step=jnp.asarray(step, jnp.int32), params=jax.tree.map(scramble, state.params),
                         opt_state=jax.tree.map(scramble, state.opt_state),
                         key=jax.random.PRNGKey(seed + 100))


def assert_same(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def test_save_restore_round_trip_is_exact(fresh_state, tmp_path):
    saved = scrambled(fresh_state, 7, 0)
    mngr = checkpoints.manager(str(tmp_path))
    checkpoints.save(mngr, saved)
    checkpoints.finish(mngr)
    assert checkpoints.has_checkpoints(str(tmp_path))

    with checkpoints.manager(str(tmp_path)) as mngr:
        restored = checkpoints.restore(mngr, fresh_state)
    assert int(restored.step) == 7
    assert_same(restored.params, saved.params)
    assert_same(restored.opt_state, saved.opt_state)  # optax NamedTuples, not plain lists
    assert_same(restored.key, saved.key)
    assert type(restored.opt_state) is type(fresh_state.opt_state)


def test_the_host_checksum_is_the_device_checksum_and_the_stored_format(fresh_state):
    """checksum_host (restores; saves on CPU) and _checksum (saves on accelerators) agree, on a training state and
    on leaves of every width; the value for a fixed tree is the one the checkpoints of earlier versions store
    (0xea131d67 from _checksum before checksum_host existed), so that they still verify."""
    rng = np.random.default_rng(0)
    tree = {"step": np.int32(1234), "w": rng.normal(size=(5, 7)).astype(np.float32),
            "h": rng.normal(size=(9,)).astype(jnp.bfloat16), "i8": rng.integers(-100, 100, 11).astype(np.int8),
            "key": np.array([7, 0xFFFFFFFF], np.uint32)}
    assert checkpoints.checksum_host(tree) == int(checkpoints._checksum(tree)) == 0xea131d67
    state = checkpoints._as_tree(scrambled(fresh_state, 3, 5))
    assert checkpoints.checksum_host(state) == int(checkpoints._checksum(state))
    assert int(checkpoints._stored_checksum(state)) == checkpoints.checksum_host(state)
    tree["w"][2, 3] = np.nextafter(tree["w"][2, 3], np.float32(np.inf))  # one bit of one word
    assert checkpoints.checksum_host(tree) != 0xea131d67


def test_wait_completes_the_save_and_keeps_the_manager_open(fresh_state, tmp_path):
    """checkpoints.wait (train.py's, once a CPU epoch): the save is on disk after it, and more saves follow."""
    mngr = checkpoints.manager(str(tmp_path))
    checkpoints.save(mngr, scrambled(fresh_state, 1, 1))
    checkpoints.wait(mngr)
    assert checkpoints.has_checkpoints(str(tmp_path))
    checkpoints.save(mngr, scrambled(fresh_state, 2, 2))
    checkpoints.finish(mngr)
    with checkpoints.manager(str(tmp_path)) as mngr:
        assert sorted(mngr.all_steps()) == [1, 2]


def test_keep_most_recent_and_restore_a_given_step(fresh_state, tmp_path):
    mngr = checkpoints.manager(str(tmp_path), keep=2)
    states = {step: scrambled(fresh_state, step, step) for step in (1, 2, 3)}
    for state in states.values():
        checkpoints.save(mngr, state)
    checkpoints.finish(mngr)
    with checkpoints.manager(str(tmp_path), keep=2) as mngr:
        assert sorted(mngr.all_steps()) == [2, 3]
        assert_same(checkpoints.restore(mngr, fresh_state).params, states[3].params)
        assert_same(checkpoints.restore(mngr, fresh_state, step=2).params, states[2].params)
        with pytest.raises(UsageError, match="no checkpoint at step 1"):
            checkpoints.restore(mngr, fresh_state, step=1)


def test_move_aside_deletes_nothing_and_config_is_saved(fresh_state, tmp_path):
    cfg = tiny_config(tmp_path, workdir=str(tmp_path / "run"), noise=0.1)
    checkpoints.save_config(cfg.replace(fresh=True))  # what --fresh did is not saved as a setting of the run
    assert load_config(cfg.workdir) == cfg and not cfg.fresh
    mngr = checkpoints.manager(cfg.workdir)
    checkpoints.save(mngr, scrambled(fresh_state, 4, 1))
    checkpoints.finish(mngr)
    with open(os.path.join(cfg.workdir, "metrics.jsonl"), "w") as fh:
        fh.write(json.dumps({"epoch": 1, "step": 4}) + "\n")

    # evaluations: evaluate.py's eval/, and an --out of another name inside the workdir (it stayed beside the new run,
    # still titled as the workdir's evaluation); a folder of the user's own stays
    for name, files in (("eval", ("index.html", "metrics.json")), ("results", ("index.html", "metrics.json")),
                        ("notes", ("index.html",))):
        os.makedirs(os.path.join(cfg.workdir, name))
        for f in files:
            open(os.path.join(cfg.workdir, name, f), "w").close()
    moved = checkpoints.move_aside(cfg.workdir)
    assert not checkpoints.has_checkpoints(cfg.workdir)
    assert os.path.isdir(os.path.join(moved, "checkpoints", "4"))
    assert os.path.exists(os.path.join(moved, "metrics.jsonl")) and os.path.exists(os.path.join(moved, "config.json"))
    assert os.path.dirname(moved) == cfg.workdir
    assert sorted(os.listdir(moved)) == ["checkpoints", "config.json", "eval", "metrics.jsonl", "results"]
    assert sorted(os.listdir(cfg.workdir)) == ["notes", os.path.basename(moved)]


def test_resuming_keeps_what_the_runs_preset_set(tmp_path):
    """`python train.py --workdir W` on a tiny-preset run: the preset's loop settings (--log-every 2) come
    back with the run's own, unless this command sets them."""
    workdir = str(tmp_path / "run")
    checkpoints.save_config(Config(**PRESETS["tiny"], preset="tiny", workdir=workdir, data="folder"))
    os.makedirs(os.path.join(workdir, "checkpoints", "4"))
    cfg, resuming = checkpoints.resolve_workdir(Config(workdir=workdir), {"workdir"})
    assert resuming and cfg.preset == "tiny" and cfg.log_every == 2 and cfg.width == 8 and cfg.data == "folder"
    cfg, _ = checkpoints.resolve_workdir(Config(workdir=workdir, log_every=7), {"workdir", "log_every"})
    assert cfg.log_every == 7


@pytest.mark.parametrize("saved,given", [("short", "default"), ("default", "short"), ("short", "quick")])
def test_resuming_under_another_preset_is_refused_naming_a_field_either_sets(tmp_path, saved, given):
    workdir = str(tmp_path / "run")
    checkpoints.save_config(Config(**PRESETS[saved], preset=saved, workdir=workdir, data="folder"))
    os.makedirs(os.path.join(workdir, "checkpoints", "4"))
    with pytest.raises(UsageError, match=f"--preset {given} sets --"):
        checkpoints.resolve_workdir(Config(**PRESETS[given], preset=given, workdir=workdir, data="folder"),
                                    {"workdir", "preset"})
    cfg, resuming = checkpoints.resolve_workdir(Config(**PRESETS[saved], preset=saved, workdir=workdir,
                                                       data="folder"), {"workdir", "preset"})
    assert resuming and cfg.preset == saved  # the run's own preset resumes it


def test_a_run_of_the_old_default_is_refused_under_the_presets_of_the_new_one(tmp_path):
    """A 30-epoch batch-256 run saved as preset "default" before the twentieth session: `--preset default` (now
    another model too) or `--preset long` (now 100 epochs at batch 1024) must not resume it; `--workdir W` alone
    does."""
    workdir = str(tmp_path / "run")
    old = Config(**OLD_MODEL, epochs=30, batch_size=256, warmup_epochs=1.0, preset="default", workdir=workdir,
                 data="folder")
    checkpoints.save_config(old)
    os.makedirs(os.path.join(workdir, "checkpoints", "4"))
    for preset, refusal in (("default", "--width 64, --preset default sets --width 16"),
                            ("long", "--epochs 30, --preset long sets --epochs 100")):
        with pytest.raises(UsageError, match=f"holds a run with {refusal}"):
            checkpoints.resolve_workdir(Config(**PRESETS[preset], preset=preset, workdir=workdir, data="folder"),
                                        {"workdir", "preset"})
    cfg, resuming = checkpoints.resolve_workdir(Config(workdir=workdir), {"workdir"})
    assert resuming and (cfg.epochs, cfg.batch_size, cfg.warmup_epochs, cfg.width) == (30, 256, 1.0, 64)


def test_a_run_of_the_default_model_before_the_thirty_third_session_resumes_as_it_was(tmp_path):
    """The default's run of OLD_MODEL (width 64, a residual block per stage, GELU, one head), saved as preset
    "default": the same command, `python train.py` (no run flags), resumes it with its own model; `--preset default`,
    whose model is now another, is refused with a line that says how to resume it."""
    workdir = str(tmp_path / "run")
    checkpoints.save_config(Config(**PRESETS["long"], preset="default", workdir=workdir, data="folder"))
    os.makedirs(os.path.join(workdir, "checkpoints", "4"))
    cfg, resuming = checkpoints.resolve_workdir(Config(workdir=workdir), {"workdir"})
    assert resuming and cfg.preset == "default"
    assert {k: getattr(cfg, k) for k in OLD_MODEL} == OLD_MODEL
    with pytest.raises(UsageError, match="holds a run with --width 64, --preset default sets --width 16") as e:
        checkpoints.resolve_workdir(Config(**PRESETS["default"], preset="default", workdir=workdir, data="folder"),
                                    {"workdir", "preset"})
    assert str(e.value).endswith(f"; `python train.py --workdir {workdir}` resumes it with its own settings")


@pytest.mark.parametrize("epochs", [14, 30])
def test_a_run_of_the_old_quick_preset_resumes_without_the_flag(tmp_path, epochs):
    """A quick-preset run saved before the twenty-seventh session has 14 epochs, one before the twenty-ninth 30, and
    neither has encoder heads (its config.json has no such field): `--preset quick` (now 20 epochs, 4 heads) is
    refused with a line that says how to resume it; `--workdir W` alone resumes it as it was."""
    workdir = str(tmp_path / "run")
    old = {**PRESETS["quick"], "epochs": epochs, "preset": "quick", "workdir": workdir, "data": "folder"}
    checkpoints.save_config(Config(**{k: v for k, v in old.items() if k != "encoder_heads"}))
    with open(os.path.join(workdir, "config.json")) as fh:
        saved = json.load(fh)
    with open(os.path.join(workdir, "config.json"), "w") as fh:
        json.dump({k: v for k, v in saved.items() if k != "encoder_heads"}, fh)
    os.makedirs(os.path.join(workdir, "checkpoints", "4"))
    with pytest.raises(UsageError, match="holds a run with --encoder-heads 1, --preset quick sets --encoder-heads 4") \
            as e:
        checkpoints.resolve_workdir(Config(**PRESETS["quick"], preset="quick", workdir=workdir, data="folder"),
                                    {"workdir", "preset"})
    assert str(e.value).endswith(f"; `python train.py --workdir {workdir}` resumes it with its own settings")
    cfg, resuming = checkpoints.resolve_workdir(Config(workdir=workdir), {"workdir"})
    assert resuming and (cfg.preset, cfg.epochs, cfg.width, cfg.warmup_epochs) == ("quick", epochs, 16, 1.0)
    assert cfg.encoder_heads == 1


def test_a_warm_up_that_follows_from_the_epochs_is_the_runs_own_on_resume(tmp_path):
    """`--preset quick --epochs 5` gave a 1-epoch warm-up before the twentieth session, 0.357 (5 of 14 epochs) until
    the twenty-seventh, 0.167 (5 of 30) until the twenty-ninth and 0.25 (5 of 20) now: the same command resumes a run
    of any, at the warm-up it has; a --warmup-epochs given is compared."""
    workdir = str(tmp_path / "run")
    checkpoints.save_config(Config(**{**PRESETS["quick"], "epochs": 5}, preset="quick", workdir=workdir,
                                   data="folder"))
    os.makedirs(os.path.join(workdir, "checkpoints", "4"))
    now = Config(**{**PRESETS["quick"], "epochs": 5, "warmup_epochs": 0.25}, preset="quick", workdir=workdir,
                 data="folder")
    cfg, resuming = checkpoints.resolve_workdir(now, {"workdir", "preset", "epochs"})
    assert resuming and cfg.warmup_epochs == 1.0
    with pytest.raises(UsageError, match="holds a run with --warmup-epochs 1.0, not 0.25"):
        checkpoints.resolve_workdir(now, {"workdir", "preset", "epochs", "warmup_epochs"})


def test_what_an_abandoned_read_leaves_behind_is_dropped_and_nothing_else(monkeypatch, caplog):
    """The two kinds of report the reads of an unreadable step leave after orbax gave up on it (see
    test_robustness for the step itself): only those are dropped."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    checkpoints._quiet_late_reads()
    closed, other, not_runtime = (RuntimeError("Event loop is closed"), RuntimeError("something else"),
                                  ValueError("Event loop is closed"))
    for exc in (closed, other, not_runtime):
        sys.unraisablehook(types.SimpleNamespace(exc_value=exc))
    assert [u.exc_value for u in seen] == [other, not_runtime]
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for coro in ("async_deserialize", "fetch_page"):
            logging.getLogger("asyncio").error("Task exception was never retrieved\nfuture: <Task finished "
                                               f"name='Task-9' coro=<{coro}() done> exception=ValueError('DATA_LOSS')>")
    assert [r.getMessage().split("coro=<")[1].split("(")[0] for r in caplog.records] == ["fetch_page"]
