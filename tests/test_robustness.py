"""Training that survives kills and bad input: signals, exact resume, NaN stops, corrupt checkpoints, and one
clear line with exit status 2 for every bad input (issue 7; docs/errors.md lists the messages)."""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import tarfile
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import (REFERENCE_FLAGS, REFERENCE_STEPS, REPO, damage_archive, make_image_folder, tiny_config,
                      tiny_dataset)
from jaxae import checkpoints, data
from jaxae.config import Config, TrainingStopped, UsageError, load_config
from jaxae import train as train_module
from jaxae.metrics import mean_image_mse
from jaxae.monitor import collapsed
from jaxae.train import train_and_evaluate, train_state_to_restore
from tools.kill_resume import final_params_hash as params_hash

ENV = {**os.environ, "JAX_NUM_CPU_DEVICES": "2", "PYTHONUNBUFFERED": "1"}


def script(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)


def tiny_args(data_dir, workdir, *extra) -> list[str]:
    return ["train.py", "--preset", "tiny", "--data", str(data_dir), "--workdir", str(workdir),
            "--cache-dir", os.path.join(os.path.dirname(str(workdir)), "cache"), *extra]


def tree_hash(root) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path."""
    out = {}
    for path in sorted(glob.glob(os.path.join(str(root), "**"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:") or ": error:" in l]
    assert len(errors) == 1, proc.stderr
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


# ------------------------------------------------------------------------------ bad input, exit 2

def _bad_data(kind: str, root: str) -> str:
    from PIL import Image
    if kind == "missing":
        return os.path.join(root, "nope")
    if kind == "empty":
        os.makedirs(os.path.join(root, "empty"))
        return os.path.join(root, "empty")
    if kind == "no_classes":  # images straight in train/ and test/, no class folders
        for split in ("train", "test"):
            os.makedirs(os.path.join(root, "flat", split))
            Image.new("RGB", (16, 16)).save(os.path.join(root, "flat", split, "0.png"))
        return os.path.join(root, "flat")
    folder = make_image_folder(os.path.join(root, kind), n_train=4, n_test=2)
    if kind == "truncated":
        path = os.path.join(folder, "train", "cat", "0001.png")
        with open(path, "rb") as fh:
            head = fh.read()[:40]
        with open(path, "wb") as fh:
            fh.write(head)
    if kind == "mixed_sizes":
        Image.new("RGB", (20, 16)).save(os.path.join(folder, "test", "dog", "0000.png"))  # PIL: width, height
    if kind == "float_pixels":
        Image.new("F", (16, 16), 0.5).save(os.path.join(folder, "train", "cat", "float.tif"))
    if kind == "cut_archive":  # a download cut short
        archive = os.path.join(root, "data.tar.gz")
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(folder, arcname="data")
        damage_archive(pathlib.Path(archive), "cut")
        return archive
    return folder


@pytest.mark.parametrize("kind, words", [
    ("missing", ["no such file or folder", "train/<class>/"]),
    ("empty", ["is empty", "train/<class>/"]),
    ("no_classes", ["no train/<class>/<image>", "one sub-folder per class"]),
    ("truncated", ["cannot read image train/cat/0001.png", "remove or replace"]),
    ("mixed_sizes", ["different sizes", "test/dog/0000.png is 16x20, height x width", "resize them"]),
    ("float_pixels", ["image train/cat/float.tif has floating-point pixels", "8- or 16-bit"]),
    ("cut_archive", ["data.tar.gz: the archive is truncated or damaged", "download it again"]),
])
def test_bad_data_is_one_line_exit_2_and_writes_no_checkpoint(tmp_path, kind, words):
    workdir = tmp_path / "run"
    proc = script(*tiny_args(_bad_data(kind, str(tmp_path)), workdir))
    assert_one_line_error(proc, *words)
    assert not os.path.exists(workdir)  # not even the folder: check_workdir removes the one it made


@pytest.mark.parametrize("flags, words", [
    (["--noise", "-0.1"], ["--noise must be between 0 and 10", "-0.1"]),
    (["--batch-size", "0"], ["--batch-size must be at least 1"]),
    (["--encoder-heads", "0"], ["--encoder-heads must be at least 1 (got 0)"]),
    (["--batch-size", "7"], ["--batch-size 7 does not split evenly over 2 devices", "multiple of 2"]),
    (["--microbatch", "3"], ["--microbatch 3 does not divide the per-device batch (4)", "a divisor of it"]),
    (["--loss", "l3"], ["--loss", "invalid choice", "l3"]),  # argparse's own one-line error
    (["--shift", "-1"], ["--shift must be 0 or more", "-1"]),
    (["--norm", "group", "--width", "12", "--blocks", "1"],
     ["--norm group normalises 8 groups", "multiple of 8 (got 12)"]),
    (["--corruption", "mask"], ["--corruption mask does nothing with --noise 0", "--noise 0.25"]),
    (["--noise-levels", "uniform"], ["--noise-levels uniform does nothing with --noise 0", "--noise 0.2"]),
])
def test_invalid_flags_exit_2(tmp_path, flags, words):
    proc = script(*tiny_args(tmp_path / "nodata", tmp_path / "run", *flags))
    assert_one_line_error(proc, *words)


def test_shift_as_large_as_the_images_exit_2(tmp_path):
    folder = make_image_folder(tmp_path / "img", n_train=4, n_test=2)  # 16x16
    proc = script(*tiny_args(folder, tmp_path / "run", "--shift", "16"))
    assert_one_line_error(proc, "--shift 16 must be smaller than the images' height and width (16x16)")
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_file_as_workdir_or_empty_data_is_named_as_such(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    proc = script(*tiny_args(tmp_path / "nodata", tmp_path / "notes.txt"))  # was "is not writable (File exists"
    assert_one_line_error(proc, f"--workdir {tmp_path / 'notes.txt'} is a file: give a folder")
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    proc = script(*tiny_args("", tmp_path / "run"))  # was read as the current folder, and blamed for its layout
    assert_one_line_error(proc, "--data is empty: give 'tfds' or a local folder")


def test_unwritable_workdir_exit_2(tmp_path):
    folder = make_image_folder(tmp_path / "img", n_train=4, n_test=2)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = script(*tiny_args(folder, blocker / "x"))
    assert_one_line_error(proc, "is not writable", "pick a folder you can write to")
    assert blocker.read_text() == "not a folder"


def test_an_unwritable_checkpoints_folder_is_found_before_training(tmp_path, monkeypatch):
    # a read-only checkpoints/ was 354 lines of orbax tracebacks: the probe tested the workdir alone. (Root
    # ignores permission bits, so the probe's file name is taken by a folder here.)
    workdir = tmp_path / "run"
    monkeypatch.setattr(checkpoints.os, "urandom", lambda n: b"\0" * n)
    monkeypatch.setattr(checkpoints.socket, "gethostname", lambda: "host")
    blocker = workdir / "checkpoints" / f".write-test-host-{os.getpid()}-00000000"
    os.makedirs(blocker)
    with pytest.raises(UsageError, match=f"--workdir {workdir} is not writable \\(Is a directory: "
                                         f".*checkpoints/.write-test-host-"):
        checkpoints.check_workdir(str(workdir))
    os.rmdir(blocker)
    checkpoints.check_workdir(str(workdir))  # and nothing is left behind by the probes
    assert os.listdir(workdir / "checkpoints") == [] and os.listdir(workdir) == ["checkpoints"]


def test_moving_an_earlier_run_aside_that_fails_is_undone(tmp_path, monkeypatch):
    # --fresh in a read-only workdir: a PermissionError traceback and an empty previous-* folder left behind
    workdir = tmp_path / "run"
    os.makedirs(workdir / "checkpoints" / "4")
    (workdir / "metrics.jsonl").write_text('{"step": 4}\n')
    real_replace = os.replace

    def replace(src, dst):
        if str(src).endswith("metrics.jsonl") and "previous-" in str(dst):
            raise PermissionError(13, "Permission denied", str(src))
        return real_replace(src, dst)
    monkeypatch.setattr(checkpoints.os, "replace", replace)
    monkeypatch.setattr(checkpoints.time, "strftime", lambda fmt: "20261127-120000")
    os.makedirs(workdir / "previous-20261127-120000" / "kept")  # an earlier --fresh in the same second
    with pytest.raises(UsageError, match="could not move the earlier run's files aside in .* \\(Permission denied: "
                                         ".*metrics.jsonl\\); nothing was moved"):
        checkpoints.move_aside(str(workdir))
    assert sorted(os.listdir(workdir)) == ["checkpoints", "metrics.jsonl", "previous-20261127-120000"]
    assert os.listdir(workdir / "checkpoints") == ["4"]
    assert os.listdir(workdir / "previous-20261127-120000") == ["kept"]  # not removed by the undo
    monkeypatch.setattr(checkpoints.os, "replace", real_replace)
    assert checkpoints.move_aside(str(workdir)).endswith("previous-20261127-120000-1")


def test_an_epoch_split_by_max_steps_says_which_of_its_steps_each_row_averages(tmp_path, capsys):
    # the cut piece and the resumed rest each printed as a whole "epoch 1/1", each train loss over a piece
    cfg = tiny_config(tmp_path, max_steps=1)  # 4 steps per epoch
    train_and_evaluate(cfg, ds=tiny_dataset(), progress=False)
    train_and_evaluate(cfg.replace(max_steps=0), ds=tiny_dataset(), progress=False)
    out = capsys.readouterr().out
    assert "epoch 1/1 (steps 1-1 of its 4)  train l2 " in out and "epoch 1/1 (steps 2-4 of its 4)  train l2 " in out
    rows = [json.loads(line) for line in open(os.path.join(cfg.workdir, "metrics.jsonl"))]
    assert [(r["epoch"], r["step"], r["train_steps"]) for r in rows] == [(1, 1, 1), (1, 4, 3)]


def test_config_mismatch_refused_naming_the_flag(tmp_path):
    workdir = tmp_path / "run"
    cfg = tiny_config(tmp_path, data=str(tmp_path / "img"))
    checkpoints.save_config(cfg)
    os.makedirs(workdir / "checkpoints" / "8")  # has_checkpoints: the refusal comes before any restore
    before = tree_hash(workdir)
    proc = script(*tiny_args(tmp_path / "img", workdir, "--latent-dim", "5"))
    assert_one_line_error(proc, "--latent-dim 3, not 5", "--fresh")
    proc = script(*tiny_args(tmp_path / "img", workdir, "--preset", "quick"))
    assert_one_line_error(proc, "--preset quick sets")
    assert tree_hash(workdir) == before


def test_data_is_saved_as_an_absolute_path_and_an_older_relative_one_still_resumes(tmp_path, monkeypatch):
    """evaluate.py from another folder found no data for a run trained with a relative --data."""
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path, data="img", max_steps=1)
    train_and_evaluate(cfg, ds=tiny_dataset(), progress=False)
    assert checkpoints.load_config(cfg.workdir).data == str(tmp_path / "img")
    # a run saved before (data as typed, relative): the same relative flag is the same data, another is not
    saved = json.load(open(checkpoints.config_path(cfg.workdir)))
    json.dump({**saved, "data": "img"}, open(checkpoints.config_path(cfg.workdir), "w"))
    resumed, resuming = checkpoints.resolve_workdir(cfg.replace(data=str(tmp_path / "img")), {"data"})
    assert resuming and resumed.data == str(tmp_path / "img")  # accepted, and saved absolute from now on
    assert checkpoints.resolve_workdir(cfg.replace(data=str(tmp_path / "img")), set())[0].data == "img"
    os.makedirs(tmp_path / "img")  # there: other data is not taken for a moved copy of it
    proc = script(os.path.join(REPO, "train.py"), *tiny_args("other", cfg.workdir)[1:], cwd=tmp_path)
    assert_one_line_error(proc, f"--data img, not {tmp_path / 'other'}")


def test_the_same_data_by_another_path_resumes_and_other_data_does_not(tmp_path):
    # --data through a symlink to the run's dataset was refused as other data
    cfg = tiny_config(tmp_path, data=str(tmp_path / "img"), max_steps=1)
    train_and_evaluate(cfg, ds=tiny_dataset(), progress=False)
    os.makedirs(tmp_path / "img")  # the run's data is there: other data is not a moved copy of it
    os.symlink(tmp_path / "img", tmp_path / "link")
    resumed, resuming = checkpoints.resolve_workdir(cfg.replace(data=str(tmp_path / "link")), {"data"})
    assert resuming and resumed.data == str(tmp_path / "link")
    os.makedirs(tmp_path / "other")
    with pytest.raises(UsageError, match=f"holds a run with --data {tmp_path / 'img'}, not {tmp_path / 'other'}"):
        checkpoints.resolve_workdir(cfg.replace(data=str(tmp_path / "other")), {"data"})


def test_evaluate_without_checkpoint_exit_2(tmp_path):
    checkpoints.save_config(tiny_config(tmp_path))
    proc = script("evaluate.py", "--workdir", str(tmp_path / "run"))
    assert_one_line_error(proc, "no checkpoint", "train")


# evaluate.py made to SIGTERM its own process once, as a batch scheduler would: mid-write (in a figure grid), or
# the moment its partial folder exists (before the handler was armed then, so the folder was left behind)
_SIGTERM_AT = """import os, runpy, signal, sys
from jaxae import figures
def once(module, name, when=lambda *a, **k: True):
    real = getattr(module, name)
    def hooked(*args, **kwargs):
        result = real(*args, **kwargs)
        if when(*args, **kwargs):
            setattr(module, name, real)
            os.kill(os.getpid(), signal.SIGTERM)
        return result
    setattr(module, name, hooked)
if sys.argv[1] == "grid":
    once(figures, "image_grid")
else:
    once(os, "makedirs", lambda path, *a, **k: ".partial-" in str(path))
sys.argv = ["evaluate.py"] + sys.argv[2:]
runpy.run_path("evaluate.py", run_name="__main__")
"""


@pytest.mark.parametrize("when", ["grid", "folder"])
def test_sigterm_during_evaluate_leaves_nothing_half_written(tmp_path, when):
    # SIGTERM ended the process where it stood: a hidden .eval.partial-PID folder of figures was left behind
    data = make_image_folder(tmp_path / "img", n_train=16, n_test=8)
    cfg = tiny_config(tmp_path, data=data, max_steps=2)
    train_and_evaluate(cfg, progress=False)
    out = tmp_path / "new" / "eval"
    proc = script("-c", _SIGTERM_AT, when, "--workdir", cfg.workdir, "--out", str(out))
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "terminated" and "Traceback" not in proc.stderr
    assert not (tmp_path / "new").exists()  # neither the partial folder nor the parent made for it
    if when == "grid":
        done = script("evaluate.py", "--workdir", cfg.workdir, "--out", str(out))  # and it runs when left alone
        assert done.returncode == 0 and os.listdir(tmp_path / "new") == ["eval"], done.stderr


def test_restore_from_empty_manager_is_usage_error(tmp_path):
    cfg = tiny_config(tmp_path)
    with checkpoints.manager(cfg.workdir) as mngr, \
            pytest.raises(UsageError, match="no checkpoint in .*python train.py --workdir"):
        checkpoints.restore(mngr, train_state_to_restore(cfg, (16, 16, 3), 1, 1))


def test_stray_files_skipped_with_warning_and_gray_rgba_converted(tmp_path, capsys):
    from PIL import Image
    folder = make_image_folder(tmp_path / "img", n_train=4, n_test=2)
    (tmp_path / "img" / "train" / "cat" / "notes.txt").write_text("not an image")
    Image.new("L", (16, 16), 128).save(tmp_path / "img" / "train" / "dog" / "gray.png")
    Image.new("RGBA", (16, 16), (10, 20, 30, 0)).save(tmp_path / "img" / "test" / "cat" / "alpha.png")
    with pytest.warns(UserWarning, match="skipped 1 file.*notes.txt"):
        ds = data.load(folder, cache_dir=str(tmp_path / "cache"))
    assert ds.train_images.shape == (9, 16, 16, 3) and ds.test_images.shape == (5, 16, 16, 3)
    note = capsys.readouterr().err
    assert "note: converted 1 L, 1 RGBA image(s) to RGB" in note
    gray = ds.train_images[ds.train_labels == 1][-1]  # dog/gray.png sorts after dog/0000.png ...
    assert (gray == 128).all()


def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path, capsys):
    """A 16-bit grayscale PNG (scientific and medical images) became all 255 through PIL's convert("L")."""
    from PIL import Image
    folder = make_image_folder(tmp_path / "img", n_train=2, n_test=1, mode="L")
    values = np.tile(np.repeat(np.array([0, 257, 32896, 65535], np.uint16), 4), (16, 1))  # 16x16
    for split, cls in (("train", "cat"), ("test", "dog")):
        Image.fromarray(values).save(tmp_path / "img" / split / cls / "deep16.png")
        assert Image.open(tmp_path / "img" / split / cls / "deep16.png").mode.startswith("I")
    ds = data.load(folder, cache_dir=str(tmp_path / "cache"))
    assert ds.train_images.shape == (5, 16, 16, 1)
    np.testing.assert_array_equal(ds.train_images[2][0, ::4, 0], [0, 1, 128, 255])  # cat/deep16 after cat/000*
    assert "2 16-bit image(s), values up to 65535: read as 16-bit (0..65535)" in capsys.readouterr().err
    # 12-bit data in 16-bit files (a medical or scientific camera): scaled from 0..4095, not left near black
    for split, cls in (("train", "cat"), ("test", "dog")):
        Image.fromarray(values // 16).save(tmp_path / "img" / split / cls / "deep16.png")
    ds = data.load(folder, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(ds.train_images[2][0, ::4, 0], [0, 1, 128, 255])
    assert "values up to 4095: read as 12-bit (0..4095)" in capsys.readouterr().err
    Image.fromarray(np.full((16, 16), 70000, np.int32), "I").save(tmp_path / "img" / "train" / "cat" / "big.tif")
    with pytest.raises(UsageError, match=r"image train/cat/big.tif has 32-bit integer pixels \(70000..70000\)"):
        data.load(folder, cache_dir=str(tmp_path / "cache"))


def test_hidden_nested_and_empty_folders_are_no_classes_and_are_reported(tmp_path):
    from PIL import Image
    folder = make_image_folder(tmp_path / "img", n_train=2, n_test=1)
    for rel in ("train/.ipynb_checkpoints/x.png", "train/cat/sub/deep.png", "test/cat/._0000.png"):
        os.makedirs(os.path.dirname(tmp_path / "img" / rel), exist_ok=True)
        Image.new("RGB", (16, 16)).save(tmp_path / "img" / rel)
    os.makedirs(tmp_path / "img" / "train" / "eel")
    with pytest.warns(UserWarning) as caught:
        ds = data.load(folder, cache_dir=str(tmp_path / "cache"))
    assert ds.class_names == ["cat", "dog"] and len(ds.train_images) == 4 and len(ds.test_images) == 2
    assert sorted(str(w.message) for w in caught) == [
        "class folder(s) with no images: train/eel (no such class then)",
        "skipped 1 image(s) in sub-folders of a class folder, e.g. train/cat/sub/deep.png: only "
        "<split>/<class>/<image> is read"]


def test_unknown_tfds_dataset_and_no_network(monkeypatch, tmp_path, caplog):
    tfds = pytest.importorskip("tensorflow_datasets")
    with pytest.raises(UsageError, match="--dataset no_such_set: tfds knows no dataset of that name"):
        data.load("tfds", "no_such_set")

    class DownloadError(Exception):  # what tfds raises when it cannot reach the network
        pass

    # what an offline attempt leaves and logs: a partial download, urllib3's retries, absl's note of a new folder
    from tensorflow_datasets.core import constants
    monkeypatch.setattr(constants, "DATA_DIR", str(tmp_path / "tfds"))
    downloads = tmp_path / "tfds" / "downloads" / "cifar10"
    os.makedirs(downloads / "kept.tmp.earlier")  # not this attempt's: left alone

    def offline(*a, **k):
        os.makedirs(downloads / "cs.toronto.edu_kriz_cifar-10-binary.tar.gz.tmp.b976b0")
        logging.getLogger("absl").warning("Variant folder %s has no dataset_info.json", tmp_path / "tfds")
        logging.getLogger("urllib3.connectionpool").warning("Retrying (Retry(total=2)) after connection broken")
        logging.getLogger("urllib3.connectionpool").warning("Connection pool is full")
        raise DownloadError("Failed to get url https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(UsageError, match="could not download cifar10.*pass --data PATH"):
        data.load("tfds", "cifar10")
    assert os.listdir(downloads) == ["kept.tmp.earlier"]
    assert [r.getMessage() for r in caplog.records] == ["Connection pool is full"]


# ----------------------------------------------------------------- checkpoints: disk, corruption

@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    """One in-process run of 3 epochs (checkpoints 4, 8, 12), for tests that damage a copy of it. The same
    settings as the full-disk test below, so that its compiles come from the persistent cache."""
    cfg = tiny_config(tmp_path_factory.mktemp("three_epochs"), epochs=3)
    train_and_evaluate(cfg, ds=tiny_dataset(), progress=False)
    return cfg.workdir


def copy_of(workdir, tmp_path):
    """A copy of the run in `workdir` as tmp_path/run, and its config (paths inside tmp_path)."""
    cfg = tiny_config(tmp_path, epochs=3)
    shutil.copytree(workdir, cfg.workdir)
    return cfg


# what tensorstore raises on a real full disk (a 1 MB tmpfs): a ValueError, not an OSError (it was a traceback)
TENSORSTORE_FULL = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/x/ocdbt.process_0/d/18": Failed to '
                              "write 8590 bytes to file 17: No space left on device [os_error_code='28']")


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), TENSORSTORE_FULL])
def test_full_disk_is_usage_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch, error):
    cfg = tiny_config(tmp_path, epochs=3)
    real_save = ocp.CheckpointManager.save
    calls = []

    def save(self, step, *a, **k):
        calls.append(step)
        if len(calls) == 2:
            raise error
        return real_save(self, step, *a, **k)
    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(UsageError, match="is full.*step 4 is the last complete checkpoint and is intact.*Free"):
        train_and_evaluate(cfg, ds=tiny_dataset(), progress=False)
    assert params_hash(cfg.workdir)[0] == 4


def test_the_log_records_of_a_write_to_a_full_disk_are_dropped():
    # orbax's and tensorstore's threads logged the failed writes: 530 lines above the one error line
    checkpoints._quiet_full_disk()
    try:
        raise RuntimeError("save failed") from TENSORSTORE_FULL
    except RuntimeError:
        record = logging.LogRecord("absl", logging.ERROR, __file__, 1, "Save Finalize thread failed.", None,
                                   sys.exc_info())
    assert not logging.getLogger("absl").filter(record)
    assert not logging.getLogger("asyncio").filter(logging.LogRecord(
        "asyncio", logging.ERROR, __file__, 1, "write: No space left on device", None, None))
    assert logging.getLogger("absl").filter(logging.LogRecord(
        "absl", logging.ERROR, __file__, 1, "some other error", None, None))


def test_a_second_training_in_a_workdir_in_use_is_refused(tmp_path, capsys):
    # two train.py in one workdir mixed silently: the second's config.json, the first's checkpoints, both exit 0
    cfg = tiny_config(tmp_path, max_steps=1)
    train_and_evaluate(cfg, ds=tiny_dataset(), progress=False)
    before = tree_hash(cfg.workdir)
    holder = subprocess.Popen(  # a train.py running there: another process holding the lock
        [sys.executable, "-c", "import fcntl, sys; fh = open(sys.argv[1], 'a+'); fcntl.flock(fh, fcntl.LOCK_EX); "
         "fh.truncate(0); fh.write('pid 1234 on elsewhere'); fh.flush(); print('held', flush=True); sys.stdin.read()",
         os.path.join(cfg.workdir, ".lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert checkpoints.training_now(cfg.workdir)
        capsys.readouterr()
        for again in (cfg.replace(max_steps=2), cfg.replace(fresh=True)):
            with pytest.raises(UsageError, match="is being trained by another process \\(pid 1234 on elsewhere\\): "
                                                 "two trainings in one workdir would mix"):
                train_and_evaluate(again, {"fresh"} if again.fresh else set(), ds=tiny_dataset(), progress=False)
            assert capsys.readouterr().out == ""  # refused first: no "starts over", "resuming" or "--fresh" note
        assert tree_hash(cfg.workdir) == before
    finally:
        holder.communicate("")
    assert not checkpoints.training_now(cfg.workdir)
    assert train_and_evaluate(cfg.replace(max_steps=2), ds=tiny_dataset(), progress=False)["step"] == 2
    assert not checkpoints.training_now(cfg.workdir)  # released at the end of the run


def test_a_run_whose_dataset_moved_resumes_on_its_new_path_and_one_whose_images_changed_is_refused(tmp_path,
                                                                                                      capsys):
    """A moved --data: the resume without --data says where to point it (it said "no such file or folder"), and
    with it the run goes on (it was refused as another run's data, with no way forward but --fresh). Images added at
    the run's path: refused (the run went on silently, with twice the steps per epoch)."""
    folder = make_image_folder(tmp_path / "img", n_train=8, n_test=2)  # 16 training images: 2 steps of 8 an epoch
    cfg = tiny_config(tmp_path, data=folder, epochs=3, max_steps=2)
    assert train_and_evaluate(cfg, ds=None, progress=False)["step"] == 2
    moved = str(tmp_path / "moved")
    os.rename(folder, moved)
    again = cfg.replace(max_steps=4)
    with pytest.raises(UsageError, match=f"run was trained on --data {folder}, which is not there: pass --data "
                                         f"PATH to where it is now"):
        train_and_evaluate(again, set(), progress=False)
    with pytest.raises(UsageError, match=f"--data {tmp_path / 'typo'}: no such file or folder, and .* was trained "
                                         f"on --data {folder}, which is not there: give the path of the dataset's"):
        train_and_evaluate(again.replace(data=str(tmp_path / "typo")), {"data"}, progress=False)  # not "drop it"
    capsys.readouterr()
    assert train_and_evaluate(again.replace(data=moved), {"data"}, progress=False)["step"] == 4
    assert f"was trained on --data {folder}, which is not there; resumed on --data {moved}, which its config.json " \
           f"names from now on" in capsys.readouterr().out
    assert load_config(cfg.workdir).data == moved  # the next resume and evaluate.py find it
    shutil.copy(os.path.join(moved, "train", "cat", "0000.png"), os.path.join(moved, "train", "cat", "more.png"))
    with pytest.raises(UsageError, match="holds a run trained on 16 training images, and --data .* has 17: these are "
                                         "not the training images the run started with"):  # the same steps per epoch
        train_and_evaluate(again.replace(data=moved, max_steps=6), set(), progress=False)
    # a run saved before the count was: its steps per epoch, as metrics.jsonl recorded them
    saved = json.load(open(checkpoints.config_path(cfg.workdir)))
    del saved["train_images"]
    json.dump(saved, open(checkpoints.config_path(cfg.workdir), "w"))
    assert train_and_evaluate(again.replace(data=moved, max_steps=6), set(), progress=False)["step"] == 6
    make_image_folder(tmp_path / "more", n_train=8, n_test=2)
    for name in ("cat", "dog"):
        for f in os.listdir(tmp_path / "more" / "train" / name):
            shutil.copy(tmp_path / "more" / "train" / name / f, os.path.join(moved, "train", name, "more-" + f))
    with pytest.raises(UsageError, match="holds a run of 2 steps per epoch, and --data .* gives 4 now \\(33 training "
                                         "images at batch 8\\): these are not the training images the run"):
        train_and_evaluate(again, set(), progress=False)  # the saved --data: moved


def test_a_run_cut_by_a_second_ctrl_c_says_what_it_kept(tmp_path, monkeypatch):
    """A second Ctrl-C stops at once, without the save: the bare "interrupted" it printed did not say that the steps
    since the last checkpoint were lost, nor where the run resumes."""
    cfg = tiny_config(tmp_path, epochs=3)
    order = train_module.device_epoch_order

    def cut_in_epoch_2(seed, epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt
        return order(seed, epoch, *args)
    monkeypatch.setattr(train_module, "device_epoch_order", cut_in_epoch_2)
    with pytest.raises(KeyboardInterrupt, match="without saving its steps since the last checkpoint, step 4: "
                                                f"`python train.py --workdir {cfg.workdir}` resumes from it"):
        train_and_evaluate(cfg, ds=tiny_dataset(), progress=False)
    assert checkpoints.latest_step(cfg.workdir) == 4  # the first epoch's (32 images, batch 8)


def test_a_second_ctrl_c_while_the_run_saves_to_stop_waits_for_the_save(tmp_path, monkeypatch, capfd):
    """Ctrl-C at the start of the second epoch, and again during the save it asked for: the save completes, and
    the run says so after it (it said "checkpoint saved" before the wait)."""
    cfg = tiny_config(tmp_path, epochs=3)
    order, finish = train_module.device_epoch_order, checkpoints.finish

    def ctrl_c_in_epoch_2(seed, epoch, *args):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return order(seed, epoch, *args)

    def ctrl_c_in_the_wait(mngr):
        os.kill(os.getpid(), signal.SIGINT)
        finish(mngr)
    monkeypatch.setattr(train_module, "device_epoch_order", ctrl_c_in_epoch_2)
    monkeypatch.setattr(checkpoints, "finish", ctrl_c_in_the_wait)
    result = train_and_evaluate(cfg, ds=tiny_dataset(), progress=False)
    out, err = capfd.readouterr()
    assert result["exit"] == 130 and result["step"] == 4 and checkpoints.latest_step(cfg.workdir) == 4
    assert "saving a checkpoint before stopping: a moment (Ctrl-C again quits without it)" in err
    assert out.rstrip().endswith(f"stopped by SIGINT at step 4: checkpoint saved; `python train.py --workdir "
                                 f"{cfg.workdir}` resumes it")


def test_a_refused_run_in_an_existing_folder_leaves_no_lock_behind(tmp_path):
    cfg = tiny_config(tmp_path, batch_size=10000)
    os.makedirs(cfg.workdir)
    with pytest.raises(UsageError, match="--batch-size 10000 is larger than the training set"):
        train_and_evaluate(cfg, ds=tiny_dataset(), progress=False)
    assert os.listdir(cfg.workdir) == []


def test_a_resume_notes_a_save_an_interrupted_run_left_unfinished(tmp_path, capsys):
    # the trainer's own lock made it take its workdir for one in use, and the note went missing
    cfg = tiny_config(tmp_path, max_steps=1)
    train_and_evaluate(cfg, ds=tiny_dataset(), progress=False)
    os.makedirs(os.path.join(checkpoints.checkpoint_dir(cfg.workdir), "2.orbax-checkpoint-tmp-1234"))
    capsys.readouterr()
    train_and_evaluate(cfg.replace(max_steps=2), ds=tiny_dataset(), progress=False)
    assert ("note: ignoring 1 unfinished checkpoint save(s) in " in capsys.readouterr().err)


def test_a_step_the_running_training_removes_while_it_is_read_is_read_again(three_epochs, tmp_path, capsys,
                                                                             monkeypatch):
    # evaluate.py beside a --keep 1 training: the step it read was pruned, and it advised --fresh
    cfg = copy_of(three_epochs, tmp_path)
    ckdir = checkpoints.checkpoint_dir(cfg.workdir)
    real_read = checkpoints._read

    def read(mngr, step, target):
        if step == 12:
            shutil.rmtree(os.path.join(ckdir, "12"))  # the training's --keep prunes it mid-read
            return None, "FileNotFoundError: gone"
        return real_read(mngr, step, target)
    monkeypatch.setattr(checkpoints, "_read", read)
    with checkpoints.manager(cfg.workdir) as mngr:
        state = checkpoints.restore(mngr, train_state_to_restore(cfg, (16, 16, 3), 1, 1))
    assert int(state.step) == 8
    assert "cannot be read" not in capsys.readouterr().err


def garble(ckdir: str, step: int) -> None:
    """Garble the middle of every data file of `step`: orbax itself would read such bytes without complaint."""
    for path in glob.glob(os.path.join(ckdir, str(step), "**", "d", "*"), recursive=True):
        with open(path, "r+b") as fh:
            size = os.path.getsize(path)
            fh.seek(size // 2)
            fh.write(bytes(b ^ 0xFF for b in fh.read(8)) if size > 16 else b"")


def test_corrupt_checkpoint_reported_and_previous_restored(three_epochs, tmp_path, capsys):
    cfg = copy_of(three_epochs, tmp_path)
    ckdir = checkpoints.checkpoint_dir(cfg.workdir)
    assert sorted(os.listdir(ckdir), key=int) == ["4", "8", "12"]
    # Each manager is closed after use, as train.py and evaluate.py close theirs.
    with checkpoints.manager(cfg.workdir) as mngr:
        step8 = checkpoints.restore(mngr, train_state_to_restore(cfg, (16, 16, 3), 1, 1), step=8)
    garble(ckdir, 12)
    capsys.readouterr()
    with checkpoints.manager(cfg.workdir) as mngr:
        state = checkpoints.restore(mngr, train_state_to_restore(cfg, (16, 16, 3), 1, 1), set_aside=True)
    err = capsys.readouterr().err
    assert "checkpoint step 12" in err and "cannot be read" in err and "restored the previous good" in err
    assert int(state.step) == 8
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(step8.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert sorted(os.listdir(ckdir), key=int) == ["4", "8"]
    moved = glob.glob(os.path.join(cfg.workdir, "unreadable-checkpoints", "12-*"))
    assert len(moved) == 1 and os.listdir(moved[0])  # set aside, not deleted


def test_an_unreadable_checkpoint_is_two_warning_lines_and_nothing_else(three_epochs, tmp_path):
    """As evaluate.py sees it, in a process of its own: orbax gives up on the step while tensorstore still reads
    its other arrays, and those printed "Event loop is closed" tracebacks (54 for this model) and, now and then,
    asyncio's "Task exception was never retrieved"."""
    cfg = copy_of(three_epochs, tmp_path)
    garble(checkpoints.checkpoint_dir(cfg.workdir), 12)
    code = ("import sys; from jaxae import checkpoints; from jaxae.config import load_config; "
            "from jaxae.train import train_state_to_restore; cfg = load_config(sys.argv[1]); "
            "state = train_state_to_restore(cfg, (16, 16, 3), 1, 1); "
            "mngr = checkpoints.manager(sys.argv[1], create=False); "
            "print(int(checkpoints.restore(mngr, state).step)); mngr.close()")
    out = script("-c", code, cfg.workdir)
    assert out.returncode == 0 and out.stdout.split() == ["8"], out.stderr[-3000:]
    lines = out.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("warning: checkpoint step 12 ") and \
        lines[1] == "warning: restored the previous good checkpoint, step 8", out.stderr[-3000:]


def test_images_of_another_size_are_one_clear_error_and_nothing_is_moved(three_epochs, tmp_path):
    """A run's data whose images changed size (or evaluate.py --data with another size) builds a model of other
    shapes: that is a mistake in the input, not three damaged checkpoints to set aside (it was, with ~3,000
    lines of orbax tracebacks, and then a new run overwrote config.json and cut metrics.jsonl)."""
    cfg = copy_of(three_epochs, tmp_path)
    before = tree_hash(cfg.workdir)
    with pytest.raises(UsageError, match=r"checkpoint step 12 .* holds a model of other shapes than this one "
                                         r"\(images of 24x24x3 from --data .*\): \['params'\]\[.*\] is "):
        train_and_evaluate(cfg, ds=tiny_dataset(size=24), progress=False)
    folder = make_image_folder(tmp_path / "img24", n_train=4, n_test=2, size=24)
    from jaxae.evaluate import restore
    with pytest.raises(UsageError, match="images of 24x24x3 from --data .*img24.*The run was trained on images of "
                                         "16x16x3. It needs the data it was trained"):
        restore(cfg.workdir, data=folder)
    assert tree_hash(cfg.workdir) == before  # nothing moved, rewritten or cut


def test_a_new_run_never_overwrites_an_earlier_runs_results(three_epochs, tmp_path, capsys):
    """No checkpoint to resume (here: all set aside), but metrics, an evaluation and the set-aside checkpoints:
    `python train.py --workdir W` starts the run's own config over and moves the earlier files aside; --fresh
    moves evaluate.py's folders too."""
    cfg = copy_of(three_epochs, tmp_path)
    os.makedirs(os.path.join(cfg.workdir, "eval"))
    with open(os.path.join(cfg.workdir, "eval", "metrics.json"), "w") as fh:
        fh.write("{}")
    os.replace(os.path.join(cfg.workdir, "checkpoints"), os.path.join(cfg.workdir, "unreadable-checkpoints"))
    before = tree_hash(cfg.workdir)
    capsys.readouterr()
    resolved, resuming = checkpoints.resolve_workdir(tiny_config(tmp_path, max_steps=2), {"workdir", "max_steps"})
    saved = checkpoints.load_config(cfg.workdir)
    assert not resuming and all(getattr(resolved, n) == getattr(saved, n) for n in Config.RUN_FIELDS)
    # the rest is this command's, as on a resume: not the copy's workdir, nor an earlier --max-steps or --fresh
    stale = saved.replace(workdir="elsewhere", max_steps=10, fresh=True, microbatch=16)
    with open(checkpoints.config_path(cfg.workdir)) as fh:
        original = fh.read()
    with open(checkpoints.config_path(cfg.workdir), "w") as fh:
        fh.write(stale.to_json())
    resolved, _ = checkpoints.resolve_workdir(tiny_config(tmp_path, max_steps=2), {"workdir", "max_steps"})
    assert (resolved.workdir, resolved.max_steps, resolved.fresh, resolved.microbatch) == (cfg.workdir, 2, False, 0)
    with open(checkpoints.config_path(cfg.workdir), "w") as fh:
        fh.write(original)
    result = train_and_evaluate(tiny_config(tmp_path, max_steps=2), {"workdir", "max_steps"}, ds=tiny_dataset(),
                                progress=False)
    out = capsys.readouterr().out
    assert result["step"] == 2 and "config.json starts over from step 0: it holds no checkpoint" in out, out
    assert "holds an earlier run's results (metrics.jsonl, unreadable-checkpoints, eval)" in out, out
    (moved,) = glob.glob(os.path.join(cfg.workdir, "previous-*"))
    assert tree_hash(moved) == before  # every earlier file, as it was
    assert not os.path.exists(os.path.join(cfg.workdir, "eval"))

    os.makedirs(os.path.join(cfg.workdir, "eval-2"))
    time.sleep(1)  # previous-<seconds>: a second folder
    train_and_evaluate(tiny_config(tmp_path, max_steps=2, fresh=True), ds=tiny_dataset(), progress=False)
    assert "--fresh: moved the previous run's files" in capsys.readouterr().out
    newest = max(glob.glob(os.path.join(cfg.workdir, "previous-*")))
    assert {"checkpoints", "config.json", "metrics.jsonl", "eval-2"} <= set(os.listdir(newest)), os.listdir(newest)


def test_fresh_alone_starts_the_runs_own_settings_over(three_epochs, tmp_path, capsys):
    """`python train.py --workdir W --fresh` started the defaults over (the tfds data, the default model)."""
    cfg = copy_of(three_epochs, tmp_path)
    saved = checkpoints.load_config(cfg.workdir).replace(workdir=cfg.workdir, data=str(tmp_path / "img"))  # local
    checkpoints.save_config(saved)
    resolved, resuming = checkpoints.resolve_workdir(Config(workdir=cfg.workdir, fresh=True), {"workdir", "fresh"})
    assert not resuming and resolved.fresh
    assert all(getattr(resolved, n) == getattr(saved, n) for n in Config.RUN_FIELDS)
    assert "config.json starts over from step 0 (--fresh with no run setting" in capsys.readouterr().out
    other = Config(workdir=cfg.workdir, fresh=True, latent_dim=5)  # a run setting: that run, not the saved one
    assert checkpoints.resolve_workdir(other, {"workdir", "fresh", "latent_dim"}) == (other, False)
    assert f"--data tfds, not the earlier run's {tmp_path / 'img'}; pass --data to keep it" in capsys.readouterr().out
    with open(checkpoints.config_path(cfg.workdir), "w") as fh:
        fh.write("{not json")  # --fresh alone cannot restart it; the error does not send the user to --fresh
    with pytest.raises(UsageError, match="cannot be read, so --fresh cannot start its settings over: give the run"):
        checkpoints.resolve_workdir(Config(workdir=cfg.workdir, fresh=True), {"workdir", "fresh"})
    assert "starts over" not in capsys.readouterr().out


def test_a_finished_run_says_there_is_nothing_to_train(three_epochs, tmp_path, capsys):
    cfg = copy_of(three_epochs, tmp_path)
    before = tree_hash(cfg.workdir)
    result = train_and_evaluate(cfg, ds=tiny_dataset(), progress=False)
    out = capsys.readouterr().out
    assert result["exit"] == 0 and result["step"] == 12 and "test_mse" not in result
    assert "nothing to train: the run is at step 12, where its 3 epochs end" in out, out
    result = train_and_evaluate(cfg.replace(max_steps=8), {"max_steps"}, ds=tiny_dataset(), progress=False)
    assert "nothing to train: the run is at step 12, where its 3 epochs end" in capsys.readouterr().out  # finished
    assert tree_hash(cfg.workdir) == before
    shutil.rmtree(os.path.join(cfg.workdir, "checkpoints", "12"))  # now as a run stopped by --max-steps 8
    train_and_evaluate(cfg.replace(max_steps=8), {"max_steps"}, ds=tiny_dataset(), progress=False)
    assert "nothing to train: the run is at step 8, where --max-steps 8 ends it; pass a larger --max-steps" in \
        capsys.readouterr().out
    assert checkpoints.resume_command(cfg.replace(max_steps=8)).endswith("--max-steps 8")


def test_an_unreadable_config_json_is_one_clear_error(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"width": 8,')  # cut short
    with pytest.raises(UsageError, match=r"config.json cannot be read as a run's config \(JSONDecodeError"):
        checkpoints.resolve_workdir(tiny_config(tmp_path), {"workdir"})


def test_no_readable_checkpoint_of_a_run_training_now_is_not_called_damaged(three_epochs, tmp_path, monkeypatch,
                                                                             capsys):
    """evaluate.py beside a running train.py read checkpoints as they were saved and removed, and was told to start
    the healthy run over with --fresh: it reads the newest again, then says to run again."""
    cfg = copy_of(three_epochs, tmp_path)
    ckdir = checkpoints.checkpoint_dir(cfg.workdir)
    for step in ("4", "8", "12"):
        os.truncate(max(glob.glob(os.path.join(ckdir, step, "**", "d", "*"), recursive=True), key=os.path.getsize), 10)
    monkeypatch.setattr(checkpoints, "training_now", lambda workdir: True)
    with checkpoints.manager(cfg.workdir) as mngr:
        with pytest.raises(UsageError, match="could be read while the training there saves and removes them .*run "
                                             "evaluate.py again, or when the training ends$"):
            checkpoints.restore(mngr, train_state_to_restore(cfg, (16, 16, 3), 1, 1))
    assert "--fresh" not in capsys.readouterr().err
    assert sorted(os.listdir(ckdir)) == ["12", "4", "8"]  # none moved or deleted


def test_truncated_checkpoint_falls_back(three_epochs, tmp_path, capsys):
    cfg = copy_of(three_epochs, tmp_path)
    ckdir = checkpoints.checkpoint_dir(cfg.workdir)
    biggest = max(glob.glob(os.path.join(ckdir, "12", "**", "d", "*"), recursive=True), key=os.path.getsize)
    os.truncate(biggest, 10)
    with checkpoints.manager(cfg.workdir) as mngr:
        state = checkpoints.restore(mngr, train_state_to_restore(cfg, (16, 16, 3), 1, 1))
    assert int(state.step) == 8
    assert "checkpoint step 12" in capsys.readouterr().err
    assert os.path.isdir(os.path.join(ckdir, "12"))  # without set_aside (evaluate): left where it was
    with checkpoints.manager(cfg.workdir) as mngr:  # evaluate.py --step 12: that step or none
        with pytest.raises(UsageError, match="checkpoint step 12 cannot be read; pick another --step"):
            checkpoints.restore(mngr, train_state_to_restore(cfg, (16, 16, 3), 1, 1), step=12)
    err = capsys.readouterr().err
    assert "left on disk for inspection." in err and "trying the previous one" not in err


# ------------------------------------------------------------------------------------- NaN

def test_nan_stops_with_step_and_learning_rate_and_keeps_last_checkpoint(tmp_path):
    folder = make_image_folder(tmp_path / "img", n_train=16, n_test=4)
    args = tiny_args(folder, tmp_path / "run", "--learning-rate", "1e6", "--epochs", "3")
    # Step 0 runs at learning rate 0 (warm-up), so a 1-step run saves finite parameters... (the run
    # `python train.py ARGS --max-steps 1` makes, made in this process: its compiles then come from the
    # persistent cache in the command below)
    cfg = tiny_config(tmp_path, data=folder, learning_rate=1e6, epochs=3, max_steps=1)
    first = train_and_evaluate(cfg, progress=False)
    assert first["exit"] == 0 and first["step"] == 1
    before = tree_hash(tmp_path / "run" / "checkpoints")
    assert "1/_CHECKPOINT_METADATA" in before
    # ...and resuming it at full learning rate diverges.
    proc = script(*args)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    line = [l for l in proc.stderr.splitlines() if l.startswith("error:")][0]
    assert "became nan at step" in line or "non-finite by step" in line
    assert "--learning-rate 1000000.0" in line and "the last good checkpoint, step 1, is kept" in line
    assert tree_hash(tmp_path / "run" / "checkpoints") == before
    assert (tmp_path / "run" / "loss_curve.png").exists()  # what led to the stop, drawn all the same


# ------------------------------------------------------------------- collapse to the mean image

def test_collapse_needs_learning_first_then_a_return_to_the_mean_image():
    mean = 0.0612  # CIFAR-10's test split
    assert collapsed(0.0622, best=0.0330, baseline=mean)  # the H200 run's epoch 4 (docs/quality.md)
    assert not collapsed(0.0631, best=0.0631, baseline=mean)  # never learnt (a tiny model's first steps)
    assert not collapsed(0.0485, best=0.0330, baseline=mean)  # much worse, not yet back at the mean image
    assert not collapsed(0.0318, best=0.0309, baseline=mean)  # a healthy run's noise


def test_collapse_stops_before_the_save_and_again_after_a_resume(tmp_path, monkeypatch):
    ds, cfg = tiny_dataset(), tiny_config(tmp_path, epochs=3)  # three_epochs' settings: cached compiles
    baseline = mean_image_mse(ds.train_images, ds.test_images)
    # learnt in epoch 1, then the mean image's error in epoch 2; after the resume, epoch 2 again
    scripted = iter([0.5 * baseline, 0.99 * baseline, 0.99 * baseline])
    real = train_module.reconstruction_error

    def scripted_error(*args, **kwargs):
        return {**real(*args, **kwargs), "test_mse": next(scripted)}

    monkeypatch.setattr(train_module, "reconstruction_error", scripted_error)
    with pytest.raises(TrainingStopped) as info:
        train_and_evaluate(cfg, ds=ds, progress=False)
    msg = str(info.value)
    assert msg.startswith(f"epoch 2: test mse {0.99 * baseline:.4f} is no better than the mean training "
                          f"image's ({baseline:.4f}), after {0.5 * baseline:.4f} earlier: the network has collapsed")
    assert "--learning-rate 0.002 is too high for --batch-size 8" in msg
    assert "the last checkpoint, step 4, is kept" in msg
    assert os.listdir(checkpoints.checkpoint_dir(cfg.workdir)) == ["4"]  # epoch 2's state was not saved
    with open(os.path.join(cfg.workdir, "metrics.jsonl")) as fh:
        assert [json.loads(line)["epoch"] for line in fh] == [1, 2]  # the collapsed epoch is on record
    # The same command again resumes from step 4 and redoes epoch 2: epoch 1's record (kept in metrics.jsonl)
    # counts as learnt, so the collapse stops it again instead of saving it as the run's end.
    with pytest.raises(TrainingStopped, match="^epoch 2: .* after .* earlier: the network has collapsed"):
        train_and_evaluate(cfg, ds=ds, progress=False)
    assert os.listdir(checkpoints.checkpoint_dir(cfg.workdir)) == ["4"]


def test_fresh_with_a_bad_flag_leaves_the_earlier_run_where_it_was(three_epochs, tmp_path):
    cfg = copy_of(three_epochs, tmp_path)
    before = tree_hash(cfg.workdir)
    with pytest.raises(UsageError, match="--shift 16 must be smaller"):
        train_and_evaluate(cfg.replace(fresh=True, shift=16), ds=tiny_dataset(), progress=False)
    assert tree_hash(cfg.workdir) == before  # not moved aside: the checks come first


# --------------------------------------------------------------------- signals and exact resume

def _run_until(args, first_line: str, sig: int, delay: float = 0.0) -> tuple[int, str, str]:
    """Start `python args`, send `sig` `delay` s after a stdout line starting with `first_line`."""
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(first_line):
            time.sleep(delay)
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(lines) + out, err


def test_sigterm_sigint_sigkill_then_resume_is_bitwise_identical(tmp_path, reference_run):
    # The straight run to compare with is conftest's reference_run (shared with test_distributed): the same
    # flags (4 epochs of 4 steps) and data folder here, another workdir.
    workdir = tmp_path / "b" / "run"
    args = ["train.py", *REFERENCE_FLAGS, "--data", reference_run["data"], "--workdir", str(workdir),
            "--cache-dir", str(tmp_path / "b" / "cache")]
    ckdir = tmp_path / "b" / "run" / "checkpoints"

    code, out, err = _run_until(args, "epoch 1/4", signal.SIGTERM)
    assert code == 0, err
    stopped = int(out.split("stopped by SIGTERM at step ")[1].split(":")[0])
    assert f"checkpoint saved; `python train.py --workdir {workdir}` resumes it" in out
    assert stopped >= 4 and str(stopped) in os.listdir(ckdir)  # saved at the step it stopped at
    assert "done:" not in out and "time: " in out  # not "done" with the last epoch's stale test mse

    # After an epoch line: monitor.Stop is installed by then (a shell's background job inherits SIGINT ignored).
    code, out, err = _run_until(args, "epoch", signal.SIGINT)
    assert code == 130, err
    assert f"from step {stopped}" in out and "stopped by SIGINT at step" in out

    code, out, _ = _run_until(args, "epoch", signal.SIGKILL, delay=0.05)
    assert code == -signal.SIGKILL

    final = script(*args)
    assert final.returncode == 0, final.stderr
    assert "resuming" in final.stdout and f"done: step {REFERENCE_STEPS}" in final.stdout
    assert params_hash(workdir) == params_hash(reference_run["workdir"])


def test_a_photo_with_an_exif_rotation_is_turned_upright(tmp_path, capsys):
    """A camera stores a portrait photo sideways with an orientation tag; viewers (and now jaxae) turn it."""
    from PIL import Image
    folder = make_image_folder(tmp_path / "img", n_train=2, n_test=1)
    sideways = np.zeros((16, 16, 3), np.uint8)
    sideways[:, :4] = 255  # a white band on the left, stored; the tag says: rotate 90 degrees clockwise to view
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(sideways).save(tmp_path / "img" / "train" / "cat" / "photo.jpg", exif=exif, quality=95)
    ds = data.load(folder, cache_dir=str(tmp_path / "cache"))
    photo = ds.train_images[2]  # cat/0000, cat/0001, cat/photo
    assert photo[:4].mean() > 200 and photo[6:].mean() < 30  # the band is now at the top
    assert "turned 1 image(s) upright by their EXIF orientation" in capsys.readouterr().err


def test_a_symlinked_class_folder_is_read_and_a_link_cycle_ends(tmp_path):
    folder = make_image_folder(tmp_path / "img", n_train=2, n_test=1)
    elsewhere = make_image_folder(tmp_path / "more", classes=("eel",), n_train=3, n_test=1)
    os.symlink(os.path.join(elsewhere, "train", "eel"), tmp_path / "img" / "train" / "eel")
    os.symlink(os.path.join(elsewhere, "test", "eel"), tmp_path / "img" / "test" / "eel")
    os.symlink(tmp_path / "img" / "train", tmp_path / "img" / "train" / "cat" / "loop")  # a cycle
    ds = data.load(folder, cache_dir=str(tmp_path / "cache"))
    assert ds.class_names == ["cat", "dog", "eel"] and len(ds.train_images) == 7 and len(ds.test_images) == 3


@pytest.mark.parametrize("packed", [False, True])
def test_an_empty_class_folder_is_reported_below_a_prefix_folder_and_in_a_tar(tmp_path, packed):
    """A dataset one level down (root/cifar/train/...) got no empty-folder warning when it was a folder."""
    import tarfile
    make_image_folder(tmp_path / "root" / "cifar", n_train=2, n_test=1)
    os.makedirs(tmp_path / "root" / "cifar" / "test" / "eel")
    path = str(tmp_path / "root")
    if packed:
        with tarfile.open(tmp_path / "root.tar", "w") as tar:
            tar.add(path, arcname="root")
        path = str(tmp_path / "root.tar")
    with pytest.warns(UserWarning, match=r"with no images: (root/)?cifar/test/eel \(no such class then\)$"):
        ds = data.load(path, cache_dir=str(tmp_path / "cache"))
    assert ds.class_names == ["cat", "dog"]
