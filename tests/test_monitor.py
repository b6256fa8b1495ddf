"""The run's records and stopping rules: metrics.jsonl read back on resume, the first non-finite loss named,
TensorBoard without torch."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from jaxae import checkpoints, monitor
from jaxae.config import Config, TrainingStopped


def write_records(path, records) -> None:
    with open(path, "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n\n")  # blank lines are skipped


def test_a_resumed_run_reads_and_keeps_only_the_records_up_to_its_checkpoint(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    assert monitor.best_test_mse(path, 100) == float("inf")
    monitor.truncate_metrics(path, 100)
    assert not os.path.exists(path)  # nothing to truncate: no file is created

    write_records(path, [{"epoch": e, "step": 4 * e, "train_loss": 0.1, "test_mse": mse}
                         for e, mse in [(1, 0.05), (2, 0.03), (3, 0.04), (4, 0.02)]])
    assert monitor.best_test_mse(path, 16) == 0.02
    assert monitor.best_test_mse(path, 12) == 0.03  # the epoch past the checkpoint does not count
    assert monitor.best_test_mse(path, 3) == float("inf")

    monitor.truncate_metrics(path, 8)
    with open(path) as fh:
        assert [json.loads(line)["step"] for line in fh] == [4, 8]
    before = os.stat(path).st_mtime_ns
    monitor.truncate_metrics(path, 8)  # nothing past step 8: the file is left as it is
    assert os.stat(path).st_mtime_ns == before


def test_a_record_cut_short_is_skipped_with_a_warning_and_dropped_on_resume(tmp_path):
    # a kill or a full disk during the append: resume and evaluate.py were a JSONDecodeError traceback
    path = str(tmp_path / "metrics.jsonl")
    write_records(path, [{"epoch": e, "step": 4 * e, "test_mse": 0.05} for e in (1, 2)])
    with open(path, "a") as fh:
        fh.write('{"epoch": 3, "step": 12, "train_lo')
    with pytest.warns(UserWarning, match="metrics.jsonl: line 5 is not a whole record .*: skipped"):
        assert [r["step"] for _, r in monitor.metric_records(path)] == [4, 8]
    with pytest.warns(UserWarning):
        monitor.truncate_metrics(path, 8)
    with open(path) as fh:
        assert [json.loads(line)["step"] for line in fh] == [4, 8]


def test_a_last_record_without_its_newline_is_not_joined_to_the_next(tmp_path):
    # the next append ran the two records into one bad line, which the next resume dropped: rows were lost
    path = str(tmp_path / "metrics.jsonl")
    with open(path, "w") as fh:
        fh.write('{"epoch": 1, "step": 4}\n{"epoch": 2, "step": 8}')
    monitor.truncate_metrics(path, 8)
    with open(path, "a") as fh:
        fh.write('{"epoch": 3, "step": 12}\n')
    assert [r["step"] for _, r in monitor.metric_records(path)] == [4, 8, 12]


def test_the_first_non_finite_loss_stops_the_run_with_its_step(tmp_path):
    with checkpoints.manager(str(tmp_path)) as mngr:
        pending = [(10, jnp.array([0.5, 0.25])), (12, jnp.array([0.125, 0.0625]))]
        assert monitor.check_finite(pending, Config(learning_rate=0.001), mngr) == [0.5, 0.25, 0.125, 0.0625]
        pending = [(10, jnp.array([0.5, 0.25])), (12, jnp.array([np.inf, np.nan]))]
        with pytest.raises(TrainingStopped, match=r"^loss became inf at step 13 with --learning-rate 0.001: "
                                                  r"training diverged.*no checkpoint was saved"):
            monitor.check_finite(pending, Config(learning_rate=0.001), mngr)


def test_the_tensorboard_writer_does_not_import_torch(tmp_path):
    """tensorboardX imports torch whenever it is installed (1.7 s and 180 MB in a JAX run); the writer hides it
    for that import. Checked in a fresh interpreter with an import hook that records any attempt to import torch,
    installed or not; torch stays importable afterwards."""
    code = """
import sys
attempts = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            attempts.append(name)
        return None
sys.meta_path.insert(0, Spy())
from jaxae import monitor
writer = monitor.tensorboard(sys.argv[1])
writer.add_scalar("test_mse", 0.03, 1)
writer.close()
assert attempts == [] and "torch" not in sys.modules, attempts
try:
    import torch
except ImportError:
    pass
assert attempts == ["torch"], attempts
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    assert os.listdir(tmp_path)  # the event file


def test_the_time_line_says_what_was_measured_and_nothing_else():
    assert monitor.timing({"seconds": 0.4}) == "time: 0 s"  # stopped before an epoch ended: no epoch figures
    one = monitor.timing({"seconds": 71.2, "first_epoch_seconds": 68.04})
    assert one == "time: 71 s; 68.0 s to the end of this process's first epoch (start-up, compiles)"
    full = monitor.timing({"seconds": 147.0, "first_epoch_seconds": 68.0, "seconds_per_epoch": 0.6378})
    assert full == ("time: 147 s; 68.0 s to the end of this process's first epoch (start-up, compiles); "
                    "then 0.64 s per epoch (median, test pass and checkpoint included)")


def test_a_log_file_gets_progress_lines_not_carriage_return_frames(monkeypatch, capsys):
    # tqdm's bar in a batch job's log: 306 '\r' frames in 8 s, each epoch line at the end of a 30 KB line
    monkeypatch.setenv("TQDM_DISABLE", "1")  # tqdm's own switch (bench/h100.sh sets it) turns the lines off too
    assert monitor.progress_bar(True, 2, 30, 0, 390) is None
    monkeypatch.delenv("TQDM_DISABLE")
    clock = [100.0]
    monkeypatch.setattr(monitor.time, "monotonic", lambda: clock[0])
    bar = monitor.progress_bar(True, 2, 30, 0, 390)  # capsys's stderr is not a terminal
    assert isinstance(bar, monitor.ProgressLines)
    for seconds in (10, 25, 31, 40, 65):  # an update every log_every steps
        clock[0] = 100.0 + seconds
        bar.update(60)
        bar.set_postfix(loss="0.0301", img_s="1,950")
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines() == ["epoch 3/30: step 180/390 (46 %), loss 0.0301, 1,950 img/s",
                                "epoch 3/30: step 300/390 (77 %), loss 0.0301, 1,950 img/s"]


def test_a_second_ctrl_c_during_the_stop_save_is_told_and_a_third_stops_at_once(capfd):
    """A double press of Ctrl-C landed in the save the first one asked for, and the run lost every step since its
    last epoch's checkpoint."""
    import signal
    with monitor.Stop() as stop:
        stop._handle(signal.SIGINT, None)
        stop.saving = True
        stop._handle(signal.SIGINT, None)
        assert capfd.readouterr().err == ("saving a checkpoint before stopping: a moment (Ctrl-C again quits without "
                                          "it)\n")
        with pytest.raises(KeyboardInterrupt):
            stop._handle(signal.SIGINT, None)


def test_a_second_sigterm_does_not_cut_the_save_short_but_a_second_ctrl_c_does():
    # two SIGTERMs 0.1 s apart (scheduler and launcher) gave a bare "interrupted" and exit 130, no checkpoint
    import signal
    with monitor.Stop() as stop:
        stop._handle(signal.SIGTERM, None)
        stop._handle(signal.SIGTERM, None)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            stop._handle(signal.SIGINT, None)
