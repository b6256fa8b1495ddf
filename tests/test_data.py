"""Data sources (tfds, image folder, tar, official CIFAR-10 python archive) and the .npz cache."""

import os
import pickle
import re
import socket
import subprocess
import sys
import time
import tarfile
import tempfile

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, damage_archive, synthetic_images
from jaxae import data
from jaxae.config import UsageError

CLASSES = ("cat", "dog", "ship")


def expected_split(n: int, seed: int) -> np.ndarray:
    """What make_image_folder wrote for one split, in load order (classes sorted, files sorted)."""
    return np.concatenate([synthetic_images(n, label, 16, 3, seed) for label in range(len(CLASSES))])


def check_folder_dataset(ds: data.Dataset, n_train: int = 4, n_test: int = 2, exact: bool = True) -> None:
    assert ds.class_names == list(CLASSES)
    assert ds.train_images.shape == (3 * n_train, 16, 16, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (3 * n_test, 16, 16, 3)
    np.testing.assert_array_equal(ds.train_labels, np.repeat([0, 1, 2], n_train))
    np.testing.assert_array_equal(ds.test_labels, np.repeat([0, 1, 2], n_test))
    assert ds.train_labels.dtype == np.int32 and ds.image_shape == (16, 16, 3)
    train, test = expected_split(n_train, 0), expected_split(n_test, 1)
    if exact:  # PNG is lossless
        np.testing.assert_array_equal(ds.train_images, train)
        np.testing.assert_array_equal(ds.test_images, test)
    else:  # JPEG: close, not equal
        assert np.abs(ds.train_images.astype(float) - train).mean() < 8


@pytest.fixture
def folder(tmp_path, make_image_folder):
    return make_image_folder(tmp_path / "cifar", classes=CLASSES, n_train=4, n_test=2)


def test_image_folder_png(folder, tmp_path):
    check_folder_dataset(data.load(folder, cache_dir=str(tmp_path / "cache")))


def test_image_folder_jpeg_and_grayscale(tmp_path, make_image_folder):
    jpeg = make_image_folder(tmp_path / "jpeg", classes=CLASSES, n_train=4, n_test=2, ext="jpg")
    check_folder_dataset(data.load(jpeg, cache_dir=str(tmp_path / "cache")), exact=False)
    grey = make_image_folder(tmp_path / "grey", classes=CLASSES, n_train=4, n_test=2, mode="L")
    ds = data.load(grey, cache_dir=str(tmp_path / "cache"))
    assert ds.train_images.shape == (12, 16, 16, 1) and ds.test_images.shape == (6, 16, 16, 1)


@pytest.mark.parametrize("suffix,mode", [(".tar.gz", "w:gz"), (".tar", "w")])
def test_tar_of_an_image_folder(folder, tmp_path, suffix, mode):
    archive = tmp_path / f"cifar{suffix}"
    with tarfile.open(archive, mode) as tar:
        tar.add(folder, arcname="cifar10")  # a top-level folder inside, as archives usually have
    check_folder_dataset(data.load(str(archive), cache_dir=str(tmp_path / "cache")))


@pytest.mark.parametrize("suffix,mode,how,why", [
    (".tar.gz", "w:gz", "cut", "Compressed file ended"),  # was an EOFError traceback
    (".tar", "w", "cut", "unexpected end of data"),  # a tarfile.ReadError traceback
    (".tar.gz", "w:gz", "zeroed", "CRC check failed"),  # read part of the images, or blamed one of them
    (".tar", "w", "header", "it stops being a tar after"),  # silently read the images before it alone
    (".tar", "w", "between", "it stops being a tar after"),  # the same, with no end marker at all
    (".tar.bz2", "w:bz2", "cut", "compressed, but no tar can be read"),  # was "not a folder or a tar archive"
])
def test_a_damaged_archive_is_named_as_such(folder, tmp_path, suffix, mode, how, why):
    archive = tmp_path / f"cifar{suffix}"
    with tarfile.open(archive, mode) as tar:
        tar.add(folder, arcname="cifar10")
    damage_archive(archive, how)
    with pytest.raises(UsageError, match=f"--data {archive}: the archive is truncated or damaged .*{why}.*copy or "
                                         f"download it again"):
        data.load(str(archive), cache_dir=str(tmp_path / "cache"))
    assert not os.path.exists(tmp_path / "cache") or not os.listdir(tmp_path / "cache")  # nothing cached


def test_tars_joined_with_cat_are_refused_by_name(folder, tmp_path):
    # tarfile (as tar without -i) reads the first alone: the second's images were dropped without a word
    parts = []
    for split in ("train", "test"):
        part = tmp_path / f"{split}.tar"
        with tarfile.open(part, "w") as tar:
            tar.add(os.path.join(folder, split), arcname=f"cifar10/{split}")
        parts.append(part.read_bytes())
    joined = tmp_path / "joined.tar"
    joined.write_bytes(b"".join(parts))
    with pytest.raises(UsageError, match="holds data after the tar's end marker.*joined with cat"):
        data.load(str(joined), cache_dir=str(tmp_path / "cache"))


def write_cifar_python(root) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The official layout: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}, pickled dicts
    whose 'data' rows are 3072 bytes: the red plane, then green, then blue, each 32x32 row-major."""
    folder = os.path.join(str(root), "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 12).tolist()

    def dump(name, x, y):
        with open(os.path.join(folder, name), "wb") as fh:
            pickle.dump({"data": x.transpose(0, 3, 1, 2).reshape(len(x), 3072), "labels": y,
                         "batch_label": name}, fh, protocol=2)

    for i in range(5):
        dump(f"data_batch_{i + 1}", images[2 * i:2 * i + 2], labels[2 * i:2 * i + 2])
    dump("test_batch", images[10:], labels[10:])
    with open(os.path.join(folder, "batches.meta"), "wb") as fh:
        pickle.dump({"label_names": [f"name{c}" for c in range(10)], "num_vis": 3072}, fh, protocol=2)
    return images[:10], np.array(labels[:10]), images[10:], np.array(labels[10:])


def test_official_cifar_python_archive_and_folder(tmp_path):
    tr_x, tr_y, te_x, te_y = write_cifar_python(tmp_path / "extracted")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "extracted" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    for path in (archive, tmp_path / "extracted", tmp_path / "extracted" / "cifar-10-batches-py"):
        ds = data.load(str(path), cache_dir=str(tmp_path / "cache"))
        np.testing.assert_array_equal(ds.train_images, tr_x)
        np.testing.assert_array_equal(ds.train_labels, tr_y)
        np.testing.assert_array_equal(ds.test_images, te_x)
        np.testing.assert_array_equal(ds.test_labels, te_y)
        assert ds.class_names == [f"name{c}" for c in range(10)] and ds.image_shape == (32, 32, 3)


@pytest.mark.parametrize("harm, words", [
    ("cut", "data_batch_3 of the CIFAR-10 python data is truncated or damaged (UnpicklingError)"),
    ("remove", "incomplete CIFAR-10 python data, test_batch is missing; copy or download it again"),
    ("replace", "data_batch_3 is not a CIFAR-10 python batch (KeyError"),
])
def test_a_damaged_official_cifar_python_batch_is_one_line_naming_it(tmp_path, harm, words):
    """A batch cut short (a pickle error was a traceback), missing (its message was garbled, with no fix), or of
    other contents, in the folder and in an archive of it."""
    write_cifar_python(tmp_path / "extracted")
    folder = tmp_path / "extracted" / "cifar-10-batches-py"
    if harm == "cut":
        os.truncate(folder / "data_batch_3", os.path.getsize(folder / "data_batch_3") // 2)
    elif harm == "remove":
        os.remove(folder / "test_batch")
    else:
        with open(folder / "data_batch_3", "wb") as fh:
            pickle.dump({"rows": []}, fh)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    for path in (folder, archive):
        with pytest.raises(UsageError, match=f"^--data {re.escape(str(path))}: .*{re.escape(words)}"):
            data.load(str(path), cache_dir=str(tmp_path / "cache"))


def test_the_folder_that_holds_an_archive_and_an_empty_archive_are_named_as_such(folder, tmp_path):
    """--data data/ for data/cifar10-jpeg.tar.gz was told to put each split's images in class folders; an empty
    (0-byte) archive was "not a folder or a tar archive"."""
    holder = tmp_path / "data"
    holder.mkdir()
    with tarfile.open(holder / "images.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="images")
    (holder / "README.md").write_text("where the data came from")
    with pytest.raises(UsageError, match=f"--data {holder} has no train/<class>/<image> files, but holds "
                                         f"images.tar.gz: give the archive itself, --data {holder}/images.tar.gz$"):
        data.load(str(holder), cache_dir=str(tmp_path / "cache"))
    assert data.load(str(holder / "images.tar.gz"), cache_dir=str(tmp_path / "cache")).image_shape == (16, 16, 3)
    (tmp_path / "empty.tar.gz").write_bytes(b"")
    with pytest.raises(UsageError, match="empty.tar.gz is empty \\(0 bytes\\): a download or copy that did not "
                                         "happen; copy or download it again"):
        data.load(str(tmp_path / "empty.tar.gz"), cache_dir=str(tmp_path / "cache"))


def test_second_load_reads_the_npz_cache(folder, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = data.load(folder, cache_dir=str(cache_dir))
    assert len(list(cache_dir.glob("*.npz"))) == 1

    def no_decoding(path):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(data, "_load_path", no_decoding)
    second = data.load(folder, cache_dir=str(cache_dir))
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
    assert second.class_names == first.class_names
    monkeypatch.undo()

    # An image added to the folder changes the cache key: decoded again, with the new image.
    os.replace(os.path.join(folder, "test", "cat", "0000.png"), os.path.join(folder, "test", "cat", "9999.png"))
    Image.fromarray(synthetic_images(1, 2, 16, 3, 5)[0]).save(os.path.join(folder, "test", "cat", "0000.png"))
    third = data.load(folder, cache_dir=str(cache_dir))
    assert third.test_images.shape[0] == first.test_images.shape[0] + 1
    assert len(list(cache_dir.glob("*.npz"))) == 2


def test_an_archive_is_cached_by_its_contents(folder, tmp_path, monkeypatch):
    archive = tmp_path / "a" / "cifar.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname="cifar10")
    cache_dir = str(tmp_path / "cache")
    first = data.load(str(archive), cache_dir=cache_dir)
    # A copy elsewhere (another path, another mtime) is the same data: read from the cache, not decoded.
    copy = tmp_path / "b" / "cifar.tar"
    copy.parent.mkdir()
    copy.write_bytes(archive.read_bytes())
    monkeypatch.setattr(data, "_load_path", lambda path: pytest.fail("decoded again instead of reading the cache"))
    np.testing.assert_array_equal(data.load(str(copy), cache_dir=cache_dir).train_images, first.train_images)
    monkeypatch.undo()
    # Changed bytes are another dataset.
    with tarfile.open(copy, "w") as tar:
        tar.add(os.path.join(folder, "train"), arcname="cifar10/train")
        tar.add(os.path.join(folder, "train"), arcname="cifar10/test")
    assert data.load(str(copy), cache_dir=cache_dir).test_images.shape[0] == first.train_images.shape[0]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_missing_path_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such file or folder"):
        data.load(str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "cache"))


def test_tfds_with_mock_data(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    # tfds's builder leaves an empty tempfile.mkdtemp("tfds") behind (DatasetInfo.initialize_from_bucket): load
    # gives it a folder of its own and removes it (the temp folder here is tmp_path, in case that breaks)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load("tfds", "cifar10")
    assert os.listdir(tmp_path) == [] and tempfile.gettempdir() == str(tmp_path)
    assert ds.train_images.shape == (12, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (12, 32, 32, 3)
    assert ds.train_labels.shape == (12,) and ds.train_labels.dtype == np.int32
    assert 0 <= ds.train_labels.min() and ds.train_labels.max() < 10
    assert len(ds.class_names) == 10


def test_a_module_tfds_cannot_import_is_a_usage_error(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def missing(*a, **k):  # what tfds.load raised inside DatasetBuilder.code_path without importlib_resources
        raise ModuleNotFoundError("No module named 'importlib_resources'")
    monkeypatch.setattr(tfds, "load", missing)
    with pytest.raises(UsageError, match="could not import what it needs \\(No module named 'importlib_resources'"
                                         "\\): `pip install -r requirements.txt`, or pass --data PATH"):
        data.load("tfds", "cifar10")


def test_tfds_without_network_is_one_line_exit_2(tmp_path):
    # The real `python train.py --data tfds` down to tfds's HTTP request (test_robustness mocks tfds.load, which
    # hid a missing importlib_resources: a 73-line traceback before any download). No download can start:
    # every HTTP(S) request goes to a "proxy" on a local port that is bound, not listening, so it refuses.
    # tfds's own setting retries that 10 times with backoff (3 min 24 s, as for a failed DNS lookup with no
    # network); jaxae lowers it to 3, so the one line comes within seconds.
    pytest.importorskip("tensorflow_datasets")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
    env = {**os.environ, "TFDS_DATA_DIR": str(tmp_path / "tfds"), "JAX_NUM_CPU_DEVICES": "2",
           "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy,
           "NO_PROXY": "", "no_proxy": "", "TMPDIR": str(tmp_path / "tmp")}  # where a leak would be seen
    os.mkdir(tmp_path / "tmp")
    workdir = tmp_path / "run"
    argv = ["train.py", "--preset", "tiny", "--max-steps", "1", "--data", "tfds", "--workdir", str(workdir)]
    with closed:
        start = time.monotonic()
        proc = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)
        seconds = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [proc.stderr.splitlines()[-1]], proc.stderr[-3000:]
    assert errors[0].startswith("error: tfds could not download cifar10 (") and "--data PATH" in errors[0]
    assert seconds < 60, seconds  # the imports and the retries' backoff; 3.5 minutes more with tfds's 10 retries
    assert os.path.isdir(tmp_path / "tfds" / "downloads" / "cifar10")  # tfds got as far as its download
    assert [p for p in os.listdir(tmp_path / "tmp") if "tfds" in p] == []  # its empty mkdtemp("tfds") removed
    assert not os.path.exists(workdir / "checkpoints") and not os.path.exists(workdir / "config.json")
