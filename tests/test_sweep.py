"""bench/sweep.py: a finished run writes its row; a run stopped before its last step (`timeout`) writes none; a
diverged or collapsed run writes one with the reason, and the grid goes on."""

import contextlib
import json
import os
import signal

import pytest

from conftest import load_bench, tiny_dataset
import jaxae.data
import jaxae.train
from jaxae.config import TrainingStopped, UsageError


@pytest.fixture
def sweep(monkeypatch):
    mod = load_bench("sweep")
    ds = tiny_dataset(n_train=32, n_test=16)
    monkeypatch.setattr(jaxae.data, "load", lambda *a, **k: ds)
    monkeypatch.setattr(mod, "code_stats", lambda cfg, state, ds: {"knn10": 0.5, **(
        {"head_shares": [0.75] + [0.25 / (cfg.encoder_heads - 1)] * (cfg.encoder_heads - 1)}
        if cfg.encoder_heads > 1 else {})})
    monkeypatch.setattr(mod, "pca_mse", lambda ds, k: 0.04)
    return mod


def _fake_training(stop_at=None):
    def train_and_evaluate(cfg, ds=None, progress=True):
        total = cfg.epochs * jaxae.train.steps_per_epoch(ds.train_images.shape[0], cfg.batch_size)
        step = total if stop_at is None else stop_at
        res = {"exit": 0, "step": step, "total": total, "state": None, "train_loss": 0.031}
        if step >= 4:  # an epoch (4 steps of 8) finished: its test pass is in the result
            res["test_mse"] = 0.03
        return res
    return train_and_evaluate


@pytest.mark.parametrize("stop_at,rows,rc", [(None, 2, 0), (6, 0, 130)])
def test_rows_only_for_runs_that_finished(sweep, monkeypatch, tmp_path, capsys, stop_at, rows, rc):
    monkeypatch.setattr(jaxae.train, "train_and_evaluate", _fake_training(stop_at))
    out = tmp_path / "sweep.jsonl"
    got = sweep.main(["--data", "unused", "--root", str(tmp_path / "runs"), "--out", str(out),
                      "--base", json.dumps({"epochs": 2, "batch_size": 8}), "--grid", '[{}, {"width": 4}]'])
    assert got == rc
    lines = out.read_text().splitlines() if out.exists() else []
    assert len(lines) == rows
    text = capsys.readouterr().out
    if rows:
        assert json.loads(lines[1])["steps"] == 8 and text.count("RESULT") == 2
    else:  # the first run was cut off at step 6 of 8, after one epoch's test pass: no row, and the sweep stops
        assert "STOPPED base at step 6 of 8" in text and "RESULT" not in text


def test_a_collapsed_run_is_a_row_with_the_reason_and_the_grid_goes_on(sweep, monkeypatch, tmp_path, capsys):
    finish = _fake_training()

    def train_and_evaluate(cfg, ds=None, progress=True):
        if cfg.learning_rate > 0.01:
            raise TrainingStopped("epoch 4: test mse 0.0622 is no better than the mean training image's")
        return finish(cfg, ds, progress)

    monkeypatch.setattr(jaxae.train, "train_and_evaluate", train_and_evaluate)
    out = tmp_path / "sweep.jsonl"
    got = sweep.main(["--data", "unused", "--root", str(tmp_path / "runs"), "--out", str(out),
                      "--base", json.dumps({"epochs": 2, "batch_size": 8}),
                      "--grid", '[{"learning_rate": 0.1}, {"learning_rate": 0.001}]'])
    assert got == 0
    first, second = [json.loads(line) for line in out.read_text().splitlines()]
    assert first["name"] == "learning_rate0.1" and first["stopped"].startswith("epoch 4: test mse 0.0622")
    assert "test_mse" not in first
    assert second["name"] == "learning_rate0.001" and second["test_mse"] == 0.03 and "stopped" not in second
    text = capsys.readouterr().out
    assert "FAILED learning_rate0.1: epoch 4" in text and text.count("RESULT") == 1


def test_a_preset_applies_its_values_and_each_row_holds_what_reproduces_it(sweep, monkeypatch, tmp_path, capsys):
    # {"preset": "tiny"} trained the default model (width 64 then), and config.json said "tiny"
    seen = []
    finish = _fake_training()
    monkeypatch.setattr(jaxae.train, "train_and_evaluate", lambda cfg, ds=None, progress=True:
                        seen.append(cfg) or finish(cfg, ds, progress))
    out = tmp_path / "sweep.jsonl"
    assert sweep.main(["--data", "unused", "--root", str(tmp_path / "runs"), "--out", str(out),
                       "--base", '{"preset": "tiny"}', "--grid", '[{}, {"width": 4, "latent_dim": 2}]']) == 0
    assert [(c.width, c.hidden, c.latent_dim) for c in seen] == [(8, 16, 3), (4, 16, 2)]
    row = json.loads(out.read_text().splitlines()[1])
    assert row["config"]["width"] == 4 and row["config"]["preset"] == "tiny" and row["data"] == "unused"
    assert row["workdir"].endswith(os.path.join("runs", "width4-latent_dim2")) and row["jax"]
    assert row["pca_mse"] == 0.04 and row["x_pca"] == pytest.approx(0.03 / 0.04)  # not CIFAR's 0.0323
    assert "(0.750 x PCA-2)" in capsys.readouterr().out


def test_fewer_epochs_shorten_the_warm_up_as_in_train_py(sweep, tmp_path):
    import argparse
    grid = '[{"epochs": 10}, {"epochs": 10, "warmup_epochs": 2}, {"preset": "quick", "epochs": 15}]'
    ns = argparse.Namespace(data="unused", root=str(tmp_path / "runs"), base='{"batch_size": 8}', grid=grid)
    assert [cfg.warmup_epochs for _, _, cfg in sweep.configs(ns)] == [0.3, 2.0, 0.75]  # quick: 1 of 20 epochs


@pytest.mark.parametrize("base,grid,message", [
    ("{}", "[{}, {\"widht\": 4}]", "grid entry 1 .*unknown setting 'widht'"),
    ("{\"widht\": 4}", "[{}]", "--base: unknown setting 'widht'"),
    ("{}", "{\"width\": 4}", "--grid a non-empty JSON list of objects"),
    ("{}", "[]", "--grid a non-empty JSON list of objects"),
    ("{}", "[{\"width\": \"abc\"}]", "grid entry 0 .*width must be an int \\(got \"abc\"\\)"),
    ("{}", "[{\"width\": 8.0}]", "grid entry 0 .*width must be an int \\(got 8.0\\)"),
    ("{}", "[{\"epochs\": 1.5}]", "grid entry 0 .*epochs must be an int"),
    ("{}", "[{\"flip\": 1}]", "grid entry 0 .*flip must be a bool"),
    ("{}", "[{\"dataset\": \"mnist\"}]", "grid entry 0 .*'dataset' is the sweep's, not a run's"),
    ("{}", "[{\"data\": \"x\"}]", "grid entry 0 .*'data' is the sweep's, not a run's \\(sweep.py --data\\)"),
    ("{}", "[{\"width\": 32}, {\"width\": 32}]", "two grid entries have the same settings"),
    ("{}", "[{\"noise\": 0, \"corruption\": \"mask\"}]", "grid entry 0 .*--corruption mask does nothing"),
    ("{}", "[{}, {\"batch_size\": 7}]", "grid entry .*--batch-size 7 does not split evenly over 2 devices"),
    ("{}", "[{\"optimizer\": \"sgdx\"}]", "grid entry 0 .*--optimizer must be one of"),
    ("{\"epochs\": 2", "[{}]", "--base and --grid must be JSON"),
    ("{}", "[{\"preset\": \"fast\"}]", "preset must be one of"),
])
def test_every_entry_is_checked_before_anything_trains(sweep, monkeypatch, tmp_path, base, grid, message):
    # a typo in entry 2 was a traceback after entry 1 had trained
    monkeypatch.setattr(jaxae.train, "train_and_evaluate", lambda *a, **k: pytest.fail("a run started"))
    monkeypatch.setattr(jaxae.data, "load", lambda *a, **k: pytest.fail("the data was loaded"))
    with pytest.raises(UsageError, match=message):
        sweep.main(["--data", "unused", "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "o.jsonl"),
                    "--base", base, "--grid", grid])


def test_a_base_setting_that_one_entry_makes_idle_is_no_refusal(sweep, tmp_path):
    """--base is every entry's: a weight decay beside an entry's adam (an optimiser comparison) is not refused, as
    the same two in one entry are."""
    import argparse
    args = argparse.Namespace(data="unused", root=str(tmp_path / "runs"), base='{"weight_decay": 0}',
                              grid='[{}, {"optimizer": "adam"}]')
    assert [cfg.optimizer for _, _, cfg in sweep.configs(args)] == ["adamw", "adam"]
    with pytest.raises(UsageError, match="grid entry 0 .*--weight-decay does nothing with --optimizer adam"):
        sweep.configs(argparse.Namespace(**{**vars(args), "grid": '[{"optimizer": "adam", "weight_decay": 0.1}]'}))


@pytest.mark.parametrize("inside_run", [False, True])
def test_a_signal_at_a_runs_end_stops_the_sweep_after_its_row(sweep, monkeypatch, tmp_path, capsys, inside_run):
    # between runs it was swallowed, or killed the sweep before the finished run's row; in a run's last epoch
    # train_and_evaluate's own Stop took it, the run ended anyway (step == total), and the sweep went on
    from jaxae import monitor
    finish = _fake_training()

    def train_and_evaluate(cfg, ds=None, progress=True):
        with monitor.Stop() if inside_run else contextlib.nullcontext():
            res = finish(cfg, ds, progress)
            os.kill(os.getpid(), signal.SIGTERM)
            return res
    monkeypatch.setattr(jaxae.train, "train_and_evaluate", train_and_evaluate)
    out = tmp_path / "sweep.jsonl"
    got = sweep.main(["--data", "unused", "--root", str(tmp_path / "runs"), "--out", str(out),
                      "--base", json.dumps({"epochs": 2, "batch_size": 8}), "--grid", '[{}, {"width": 4}]'])
    assert got == 128 + signal.SIGTERM
    assert [json.loads(line)["name"] for line in out.read_text().splitlines()] == ["base"]
    assert "STOPPED by SIGTERM after base: 1 run(s) of the grid did not run" in capsys.readouterr().out


def test_a_signal_before_a_run_starts_stops_it_at_once():
    # it went to the sweep's Stop, and the run that started next trained to its end
    from jaxae import monitor
    with monitor.Stop() as outer:
        os.kill(os.getpid(), signal.SIGTERM)
        with monitor.Stop() as inner:
            assert inner.signum == signal.SIGTERM
        assert outer.signum == signal.SIGTERM


def test_table_prints_the_rows_as_markdown_old_and_new(sweep, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(jaxae.train, "train_and_evaluate", _fake_training())
    out = tmp_path / "sweep.jsonl"
    out.write_text(json.dumps({"name": "base", "test_mse": 0.02964, "x_pca3": 0.918, "knn10": 0.265,
                               "train_loss": 0.02942, "wall_s": 45.0, "base": {"epochs": 15}}) + "\n")  # 2026-11-23
    assert sweep.main(["--data", "unused", "--root", str(tmp_path / "runs"), "--out", str(out),
                       "--base", json.dumps({"epochs": 2, "batch_size": 8, "encoder_heads": 1}), "--grid",
                       '[{"latent_dim": 2}]']) == 0
    capsys.readouterr()
    assert sweep.main(["--table", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == 'base: {"batch_size": 8, "encoder_heads": 1, "epochs": 2}, {"epochs": 15}; data: ?, unused'
    assert lines[2] == "| configuration | test MSE | x PCA | 10-NN | final train loss | steps | wall |"
    assert lines[4] == "| base | 0.02964 | 0.918 x PCA-3 | 26.5% | 0.02942 |  | 45 s |"
    assert lines[5].startswith("| latent_dim=2 | 0.03000 | 0.750 x PCA-2 | 50.0% | 0.03100 | 8 | ")
    with pytest.raises(UsageError, match="give --data and --grid to train a sweep"):
        sweep.main(["--grid", "[{}]"])


def test_the_rows_of_models_with_heads_give_each_heads_share(sweep, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(jaxae.train, "train_and_evaluate", _fake_training())
    out = tmp_path / "sweep.jsonl"
    assert sweep.main(["--data", "unused", "--root", str(tmp_path / "runs"), "--out", str(out), "--base",
                       json.dumps({"epochs": 2, "batch_size": 8, "encoder_heads": 1}), "--grid",
                       '[{}, {"encoder_heads": 3}]']) == 0
    one, three = [json.loads(line) for line in out.read_text().splitlines()]
    assert "head_shares" not in one and three["head_shares"] == [0.75, 0.125, 0.125]
    text = capsys.readouterr().out
    assert [line.endswith("heads' shares 75/12/12 %") for line in text.splitlines() if line.startswith("RESULT")] \
        == [False, True], text
    assert sweep.main(["--table", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == ("| configuration | test MSE | x PCA | 10-NN | heads' shares (%) | final train loss | steps "
                        "| wall |") and lines[3].count("|") == lines[2].count("|")
    assert lines[4].startswith("| base | 0.03000 | 0.750 x PCA-3 | 50.0% |  | 0.03100 | 8 | ")
    assert lines[5].startswith("| encoder_heads=3 | 0.03000 | 0.750 x PCA-3 | 50.0% | 75/12/12 | 0.03100 | 8 | ")


def test_code_stats_of_a_model_with_heads(tmp_path):
    """bench/sweep.py's 10-NN and heads' shares, as evaluate.py computes them, on a tiny 2-head model (and none
    for one head)."""
    from conftest import tiny_config
    code_stats = load_bench("sweep").code_stats
    ds = tiny_dataset(n_train=32, n_test=16)
    for heads in (2, 1):
        cfg = tiny_config(tmp_path, encoder_heads=heads)
        stats = code_stats(cfg, jaxae.train.create_train_state(cfg, ds.image_shape, total_steps=4, spe=4), ds)
        assert set(stats) == ({"knn10", "head_shares"} if heads > 1 else {"knn10"}) and 0 <= stats["knn10"] <= 1
        if heads > 1:
            shares = stats["head_shares"]
            assert len(shares) == 2 and abs(sum(shares) - 1) < 1e-9
            assert all(x * 16 == round(x * 16) for x in shares), shares  # fractions of the 16 test images


def test_a_worker_checks_the_whole_grid_before_training_its_share(sweep, monkeypatch, tmp_path):
    # with --jobs 2, a batch the devices do not split failed inside its worker while the other trained its share
    monkeypatch.setattr(jaxae.train, "train_and_evaluate", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(UsageError, match='grid entry {"batch_size": 7}: --batch-size 7 does not split evenly'):
        sweep.main(["--data", "unused", "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "o.jsonl"),
                    "--grid", "[{}]", "--_whole-grid", '[{}, {"batch_size": 7}]'])
    started = []
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda argv, **k: started.append(argv) or
                        type("P", (), {"wait": lambda self: 0, "poll": lambda self: 0})())
    assert sweep.main(["--data", "unused", "--root", str(tmp_path / "runs"), "--grid", '[{}, {"width": 4}]',
                       "--jobs", "2"]) == 0
    assert [a[a.index("--_whole-grid") + 1] for a in started] == ['[{}, {"width": 4}]'] * 2
    assert not any("--again" in a for a in started)
    started.clear()
    assert sweep.main(["--data", "unused", "--root", str(tmp_path / "runs"), "--grid", '[{}, {"width": 4}]',
                       "--jobs", "2", "--again"]) == 0
    assert len(started) == 2 and all("--again" in a for a in started)


def test_the_same_command_again_skips_the_runs_with_rows_and_again_trains_them(sweep, monkeypatch, tmp_path,
                                                                               capsys):
    """Re-running a sweep (after a cut, or with entries added) trains only what has no row yet; a row of other
    data or other settings is not this run's; --again trains everything anew."""
    seen = []
    finish = _fake_training()

    def train_and_evaluate(cfg, ds=None, progress=True):
        seen.append(cfg.width)
        if cfg.learning_rate > 0.01:
            raise TrainingStopped("epoch 4: collapsed")
        return finish(cfg, ds, progress)
    monkeypatch.setattr(jaxae.train, "train_and_evaluate", train_and_evaluate)
    out = tmp_path / "sweep.jsonl"

    def main(grid, data="unused", *more):
        return sweep.main(["--data", data, "--root", str(tmp_path / "runs"), "--out", str(out), "--base",
                           json.dumps({"epochs": 2, "batch_size": 8}), "--grid", json.dumps(grid), *more])
    assert main([{}, {"width": 4, "learning_rate": 0.1}]) == 0 and seen == [16, 4]
    with open(out, "a") as fh:
        fh.write('{"name": "cut sh')  # a line cut short by a kill: skipped
    capsys.readouterr()
    assert main([{}, {"width": 4, "learning_rate": 0.1}, {"width": 8}]) == 0 and seen == [16, 4, 8]
    text = capsys.readouterr().out
    assert f"SKIP base: its run has a row in {out} already (test MSE 0.03000); --again trains it anew" in text
    assert "SKIP width4-learning_rate0.1: its run has a row in" in text and "(stopped: epoch 4: collapsed)" in text
    assert main([{}], "other-data") == 0 and seen[-1] == 16  # another dataset: not the same run
    assert main([{"width": 8}], "unused", "--again") == 0 and seen[-1] == 8
    assert len([line for line in out.read_text().splitlines() if line.startswith("{\"name\": \"width8\"")]) == 2
    # the step budget and the way steps are cut up (a speed sweep's settings) make another run too
    assert main([{"width": 8, "microbatch": 4}, {"width": 8, "max_steps": 8}]) == 0 and seen[-2:] == [8, 8]
    rows = sweep.finished_rows(str(out))  # the cut line left out
    out.write_text("".join(json.dumps({**r, "device": "TPU v9 x8"}) + "\n" for r in rows))
    capsys.readouterr()
    assert main([{}]) == 0 and seen[-1] == 16  # the rows came from another device: trained here, and said so
    assert "note: base has a row in" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)  # the same --data from another folder names another path: other data
    assert sweep.main(["--data", "unused", "--root", str(tmp_path / "runs"), "--out", str(out), "--base",
                       json.dumps({"epochs": 2, "batch_size": 8}), "--grid", "[{}]"]) == 0
    assert "SKIP base" not in capsys.readouterr().out  # "unused" is another path from here


def test_a_cut_run_resumes_from_its_checkpoint(sweep, tmp_path, capsys):
    """A run that a signal cut off (here: 3 of its 8 steps trained by hand) resumes when the sweep is run again,
    and writes the row of the whole run; a checkpoint of other settings, or of a finished run, is not resumed."""
    import argparse
    args = ["--data", "unused", "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "sweep.jsonl"),
            "--base", json.dumps({"preset": "tiny", "epochs": 2, "batch_size": 8}), "--grid", "[{}]"]
    ns = argparse.Namespace(data="unused", root=str(tmp_path / "runs"), base=args[7], grid="[{}]")
    (_, _, cfg), = sweep.configs(ns)
    ds = tiny_dataset(n_train=32, n_test=16)
    cut = jaxae.train.train_and_evaluate(cfg.replace(max_steps=3), ds=ds, progress=False)
    assert cut["step"] == 3 and cut["total"] == 3
    assert sweep.cut_run(cfg, 8) == 3 and sweep.cut_run(cfg, 3) is None  # 8 steps in all; a finished run is not cut
    assert sweep.cut_run(cfg.replace(learning_rate=0.01), 8) is None  # another run's checkpoint
    assert sweep.cut_run(cfg.replace(microbatch=4), 8) is None  # its steps cut up otherwise
    capsys.readouterr()
    assert sweep.main(args) == 0
    text = capsys.readouterr().out
    assert f"RESUME base: {cfg.workdir} holds this run, cut off at step 3 of 8" in text
    assert "resuming" in text and "from step 3" in text
    row = json.loads((tmp_path / "sweep.jsonl").read_text())
    assert row["steps"] == 8 and row["resumed_from"] == 3
    assert not [p for p in os.listdir(cfg.workdir) if "previous" in p]  # resumed, not moved aside
    assert "| 8 | " in sweep.table(str(tmp_path / "sweep.jsonl")) and " s from step 3 |" in sweep.table(
        str(tmp_path / "sweep.jsonl"))
    assert sweep.main(args) == 0 and "SKIP base" in capsys.readouterr().out


def test_a_row_from_before_noise_levels_is_the_run_with_fixed_levels(sweep):
    """A row written before --noise-levels existed holds no such setting: its run corrupted every example at
    --noise, so it is the run of `--noise-levels fixed`, and not that of today's default (uniform)."""
    import dataclasses
    from jaxae.config import PRESETS, Config
    new = dataclasses.asdict(Config(**PRESETS["tiny"], noise=0.2))
    old = {k: v for k, v in new.items() if k != "noise_levels"}
    assert sweep.same_run(old, {**new, "noise_levels": "fixed"})
    assert not sweep.same_run(old, new) and new["noise_levels"] == "uniform"


def test_a_row_from_before_encoder_heads_is_the_run_with_one_head(sweep):
    """A setting that came with a default the older runs had: a row without it is the run of that default."""
    import dataclasses
    from jaxae.config import PRESETS, Config
    new = dataclasses.asdict(Config(**PRESETS["tiny"]))
    old = {k: v for k, v in new.items() if k != "encoder_heads"}
    assert sweep.same_run(old, new) and new["encoder_heads"] == 1
    assert not sweep.same_run(old, {**new, "encoder_heads": 2})
