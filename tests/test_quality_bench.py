"""bench/quality.py: the calibration times the real step, the epochs fit the budget, a finished run is
evaluated in its workdir and a stopped one is not."""

import json
import os

import pytest

from conftest import load_bench, tiny_config, tiny_dataset
import jaxae.data
import jaxae.evaluate
import jaxae.train


@pytest.fixture
def quality(monkeypatch):
    mod = load_bench("quality")
    ds = tiny_dataset(n_train=32, n_test=16)
    monkeypatch.setattr(jaxae.data, "load", lambda *a, **k: ds)
    evaluated = []

    def evaluate(workdir, cache_dir=""):
        evaluated.append(workdir)
        return {"models": {name: {"test_mse": mse, "test_psnr": 15.0, "knn10_accuracy": 0.25}
                           for name, mse in (("autoencoder", 0.03), ("PCA-3", 0.04))}}

    monkeypatch.setattr(jaxae.evaluate, "run", evaluate)
    return mod, ds, evaluated


def test_fit_epochs():
    mod = load_bench("quality")
    assert mod.fit_epochs(600.0, 100, 0.5, 10.0) == 10  # 100 steps of 0.5 s and a 10 s test pass: 60 s an epoch
    assert mod.fit_epochs(659.0, 100, 0.5, 10.0) == 10
    assert mod.fit_epochs(5.0, 100, 0.5, 10.0) == 1  # never less than one epoch
    assert mod.fit_epochs(-3.0, 100, 0.5, 10.0) == 1


def test_calibrate_times_the_train_step(quality, tmp_path):
    mod, ds, _ = quality
    t_step, t_eval, t_compile = mod.calibrate(tiny_config(tmp_path), ds, warmup_s=0.1, min_s=0.3)
    assert 0 < t_step < 5 and 0 < t_eval < 30 and t_compile > 0


def test_a_finished_run_is_fitted_to_the_budget_and_evaluated(quality, monkeypatch, tmp_path, capsys):
    mod, ds, evaluated = quality
    # 4 steps an epoch (32 images, batch 8) of 1 s and a 2 s test pass: 6 s an epoch; 0.5 min, less 2 x 1 s of
    # compile and the time spent so far, fits 4 epochs
    monkeypatch.setattr(mod, "calibrate", lambda cfg, ds: (1.0, 2.0, 1.0))
    workdir = str(tmp_path / "run")
    assert mod.main(["--minutes", "0.5", "--preset", "tiny", "--workdir", workdir]) == 0
    out = capsys.readouterr().out
    assert "(8 img/s), test pass 2.0 s, compile 1.0 s -> 4 epochs fit in 0.5 min" in out
    with open(os.path.join(workdir, "config.json")) as fh:
        assert json.load(fh)["epochs"] == 4
    assert evaluated == [workdir]
    assert "test MSE 0.03000 = 0.750 x PCA-3 (0.04000)" in out and "10-NN 25.0% vs 25.0%" in out


@pytest.mark.parametrize("preset,flags,warmup", [
    ("quick", [], 1.0 * 4 / 20),  # 4 of the preset's 20 epochs fit: its 1-epoch warm-up in proportion
    ("default", [], 3.0 * 4 / 100),  # the default's 3 epochs would be the whole of these 4
    ("quick", ["--warmup-epochs", "2"], 2.0),  # given: kept
    ("tiny", [], 1.0),  # more epochs fit than the preset has (1): its warm-up as it is
])
def test_the_warm_up_shrinks_with_the_epochs_that_fit(quality, monkeypatch, tmp_path, preset, flags, warmup):
    mod, *_ = quality
    monkeypatch.setattr(mod, "calibrate", lambda cfg, ds: (1.0, 2.0, 1.0))  # 4 epochs fit (the test above)
    ran = []
    monkeypatch.setattr(jaxae.train, "train_and_evaluate",
                        lambda cfg, explicit, ds: ran.append(cfg) or {"exit": 0, "step": 0, "total": 1})
    # the small model's image size and batch, so that the tiny data set takes any preset
    mod.main(["--minutes", "0.5", "--preset", preset, "--batch-size", "8", "--stages", "2", "--workdir",
              str(tmp_path / "run"), *flags])
    assert ran[0].epochs == 4 and ran[0].warmup_epochs == pytest.approx(warmup, abs=1e-3)


def test_the_same_command_resumes_a_run_whose_warm_up_was_shortened(quality, monkeypatch, tmp_path, capsys):
    """--preset quick sets a 1-epoch warm-up, which 4 fitted epochs of its 20 shorten to 0.2: the same command
    again was refused ("--preset quick sets --warmup-epochs 1.0")."""
    mod, ds, evaluated = quality
    workdir = str(tmp_path / "run")
    monkeypatch.setattr(mod, "calibrate", lambda cfg, ds: (1.0, 2.0, 1.0))  # 4 epochs fit (above)
    argv = ["--minutes", "0.5", "--preset", "quick", "--batch-size", "8", "--stages", "2", "--width", "8",
            "--hidden", "16", "--workdir", workdir]
    assert mod.main(argv) == 0
    assert json.load(open(os.path.join(workdir, "config.json")))["warmup_epochs"] == pytest.approx(4 / 20, abs=1e-3)
    monkeypatch.setattr(mod, "calibrate", lambda cfg, ds: pytest.fail("calibrated again"))
    assert mod.main(argv) == 0
    assert "holds a run of 4 epochs: resuming it and evaluating it" in capsys.readouterr().out
    assert evaluated == [workdir, workdir]


def test_a_stopped_run_is_not_evaluated(quality, monkeypatch, tmp_path):
    mod, ds, evaluated = quality
    monkeypatch.setattr(mod, "calibrate", lambda cfg, ds: (1.0, 2.0, 1.0))
    monkeypatch.setattr(jaxae.train, "train_and_evaluate",
                        lambda cfg, explicit, ds: {"exit": 0, "step": 5, "total": 16})  # SIGTERM: exit 0
    # not 0: no quality line came (train.py's own 0 for SIGTERM is for a scheduler's requeue)
    assert mod.main(["--minutes", "0.5", "--preset", "tiny", "--workdir", str(tmp_path / "run")]) == 143
    assert evaluated == []


@pytest.mark.parametrize("flags,message", [
    (["--minutes", "0"], "--minutes must be a positive number"),
    (["--minutes", "nan"], "--minutes must be a positive number"),
    (["--minutes", "inf"], "--minutes must be a positive number"),
    (["--epochs", "3"], "--epochs and --minutes both set the schedule"),
    (["--max-steps", "50"], "--max-steps and --minutes both set the schedule"),
    (["--batch-size", "10000"], "--batch-size 10000 is larger than the training set \\(32 images\\)"),
    (["--noise", "0", "--corruption", "mask"], "--corruption mask does nothing with --noise 0"),
    (["--batch-size", "7"], "--batch-size 7 does not split evenly over 2 devices"),  # a reshape traceback
])
def test_bad_input_is_refused_before_the_calibration(quality, monkeypatch, tmp_path, flags, message):
    # a traceback (--batch-size 10000, --minutes nan) or the right line after 15 s of calibration
    mod, *_ = quality
    monkeypatch.setattr(mod, "calibrate", lambda cfg, ds: pytest.fail("calibrated"))
    with pytest.raises(jaxae.config.UsageError, match=message):
        mod.main(["--preset", "tiny", "--workdir", str(tmp_path / "run"), *flags])


def test_a_workdir_holding_a_run_is_resumed_and_evaluated_not_fitted_again(quality, monkeypatch, tmp_path,
                                                                          capsys):
    # the same command again: a new calibration, other epochs, and an error about --epochs it was not given
    mod, ds, evaluated = quality
    workdir = str(tmp_path / "run")
    monkeypatch.setattr(mod, "calibrate", lambda cfg, ds: (0.01, 0.02, 0.5))
    assert mod.main(["--minutes", "0.05", "--preset", "tiny", "--workdir", workdir]) == 0
    first = json.load(open(os.path.join(workdir, "config.json")))["epochs"]
    monkeypatch.setattr(mod, "calibrate", lambda cfg, ds: pytest.fail("calibrated again"))
    assert mod.main(["--minutes", "0.05", "--preset", "tiny", "--workdir", workdir]) == 0
    out = capsys.readouterr().out
    assert f"holds a run of {first} epochs: resuming it and evaluating it" in out
    assert evaluated == [workdir, workdir]
    # without the --preset: the run's own saved settings are checked (not the command's: batch 1024 > 32 images),
    # and the train.py command printed is the run's
    assert mod.main(["--minutes", "0.05", "--workdir", workdir]) == 0
    out = capsys.readouterr().out
    assert f"holds a run of {first} epochs" in out and "quality run: " in out and ", resumed, trained " in out
    every = f" --save-every-epochs {first // 10}" if first >= 20 else ""  # the saves this script chose
    assert f"python train.py --preset tiny{every} --epochs {first} --workdir NEW_WORKDIR" in out


def test_fresh_alone_fits_the_runs_own_settings_again_and_the_command_keeps_every_flag(quality, monkeypatch,
                                                                                      tmp_path, capsys):
    # --fresh alone dropped the run's preset and data (a tfds download); the printed command lost --microbatch
    mod, ds, evaluated = quality
    workdir = str(tmp_path / "run")
    monkeypatch.setattr(mod, "calibrate", lambda cfg, ds: (0.01, 0.02, 0.5))
    assert mod.main(["--minutes", "0.05", "--preset", "tiny", "--microbatch", "4", "--workdir", workdir]) == 0
    assert "--microbatch 4 --save-every-epochs " in capsys.readouterr().out
    assert mod.main(["--minutes", "0.05", "--workdir", workdir, "--fresh"]) == 0
    with open(os.path.join(workdir, "config.json")) as fh:
        assert json.load(fh)["width"] == 8  # the tiny preset's, not the default's 64
    assert any(name.startswith("previous-") for name in os.listdir(workdir))
