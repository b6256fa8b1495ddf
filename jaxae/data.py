"""Datasets as uint8 arrays: tfds, an image folder, a tar of one, or the official CIFAR-10 python archive.

Every source returns the same `Dataset`: [N, H, W, C] uint8 images, int32 labels and the class names.
Local sources are decoded once and cached as an .npz, so the second run starts in seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import lzma
import os
import pickle
import sys
import tarfile
import tempfile
import threading
import warnings
import zlib

import numpy as np

from jaxae.config import UsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
SPLITS = ("train", "test")


@dataclasses.dataclass
class Dataset:
    train_images: np.ndarray  # [N, H, W, C] uint8
    train_labels: np.ndarray  # [N] int32
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    def described(self, source: str) -> str:
        """"images of HxWxC from --data SOURCE": what a model built for this data was built for."""
        return f"images of {'x'.join(map(str, self.image_shape))} from --data {source}"


def load(data: str, dataset: str = "cifar10", cache_dir: str = "") -> Dataset:
    """Load `data` ('tfds' or a local path) into memory; raise UsageError with a fix when it cannot be read."""
    if data == "tfds":
        return load_tfds(dataset)
    path = os.path.expanduser(data)
    if not os.path.exists(path):
        raise UsageError(f"--data {data}: no such file or folder. Give a folder with train/<class>/ and "
                         f"test/<class>/ images, a .tar/.tar.gz of one, or cifar-10-python.tar.gz")
    cache = _cache_file(path, cache_dir)
    if cache and os.path.exists(cache):
        try:
            with np.load(cache, allow_pickle=False) as z:
                return Dataset(z["train_images"], z["train_labels"], z["test_images"], z["test_labels"],
                               [str(c) for c in z["class_names"]])
        except Exception as e:  # a half-written or stale cache is rebuilt, never trusted
            print(f"note: ignoring unreadable cache {cache} ({e}); decoding {data} again", file=sys.stderr)
    ds = _load_path(path)
    if cache:
        _save_cache(cache, ds)
    return ds


def _load_path(path: str) -> Dataset:
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "data_batch_1")) or os.path.isdir(
                os.path.join(path, "cifar-10-batches-py")):
            return _cifar_python_dir(path)
        return _image_folder(_DirReader(path), path)
    if tarfile.is_tarfile(path):
        try:
            with tarfile.open(path) as tar:
                names = tar.getnames()
                _check_end(tar, path)
                if any(n.rstrip("/").endswith("cifar-10-batches-py/data_batch_1") for n in names):
                    return _cifar_python_tar(tar, path)
                return _image_folder(_TarReader(tar, path), path)
        except _ARCHIVE_ERRORS as e:  # a download or copy cut short, or bytes changed on the way
            if isinstance(e, OSError) and e.errno is not None:  # the system's (a disk error), not the stream's
                raise
            raise UsageError(_damaged(path, str(e) or type(e).__name__)) from None
    with open(path, "rb") as fh:
        head = fh.read(6)
    if not head:
        raise UsageError(f"--data {path} is empty (0 bytes): a download or copy that did not happen; copy or "
                         f"download it again")
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")):  # gzip, bzip2, xz: a cut one reads as no tar
        raise UsageError(_damaged(path, "compressed, but no tar can be read from it"))
    raise UsageError(f"--data {path}: not a folder or a tar archive. Give a folder with train/<class>/ and "
                     f"test/<class>/ images, a .tar/.tar.gz of one, or cifar-10-python.tar.gz")


# ---------------------------------------------------------------------------------------------- tfds

def load_tfds(name: str) -> Dataset:
    """tfds.load of the train and test splits (prepares the dataset on first use: needs TensorFlow)."""
    try:
        import tensorflow_datasets as tfds  # imported here: GPU boxes without tfds still run --data PATH
    except ImportError as e:
        raise UsageError(f"--data tfds needs tensorflow-datasets and tensorflow ({e}): `pip install -r "
                         f"requirements.txt`, or pass --data PATH to a local copy") from None
    try:
        with _few_download_retries(), _own_temp_folder(), _tidy_download(name):
            splits, info = tfds.load(name, split=list(SPLITS), as_supervised=True, with_info=True)
    except tfds.core.registered.DatasetNotFoundError:
        raise UsageError(f"--dataset {name}: tfds knows no dataset of that name (try cifar10, mnist, "
                         f"fashion_mnist)") from None
    except (ValueError, KeyError) as e:
        raise UsageError(f"--dataset {name}: cannot use its train/test splits as (image, label) pairs "
                         f"({e})") from None
    except ImportError as e:  # a package tfds imports lazily but does not declare (importlib_resources was one)
        raise UsageError(f"--data tfds: tensorflow-datasets could not import what it needs ({e}): `pip install -r "
                         f"requirements.txt`, or pass --data PATH to a local copy") from None
    except Exception as e:  # download failures come as many types (OSError, DownloadError, ...)
        if "download" in repr(e).lower() or isinstance(e, OSError):
            raise UsageError(f"tfds could not download {name} ({type(e).__name__}); check the network and run "
                             f"again, or with no network pass --data PATH to a local copy (an image folder, a "
                             f"tar of one, or cifar-10-python.tar.gz)") from None
        raise
    # Read in batches, not with batch_size=-1: that sizes one batch from info.splits, which
    # tfds.testing.mock_data leaves unknown (TensorFlow then aborts the process in vector::reserve).
    (tr_x, tr_y), (te_x, te_y) = [[np.concatenate(a) for a in zip(*tfds.as_numpy(s.batch(4096)))] for s in splits]
    names = list(info.features["label"].names)
    return Dataset(_as_uint8(tr_x), tr_y.astype(np.int32), _as_uint8(te_x), te_y.astype(np.int32), names)


_TEMP_SWAP = threading.Lock()


@contextlib.contextmanager
def _own_temp_folder():
    """tfds.load leaves a tempfile.mkdtemp("tfds") folder behind at every call (DatasetInfo.initialize_from_bucket:
    empty offline, copies of dataset_info files online, read at once): give its temporary files a folder of ours,
    removed afterwards. tempfile.tempdir is the process's: one load at a time swaps it."""
    with _TEMP_SWAP, tempfile.TemporaryDirectory(prefix="jaxae-tfds-", ignore_cleanup_errors=True) as folder:
        before = tempfile.tempdir
        tempfile.tempdir = folder
        try:
            yield
        finally:
            tempfile.tempdir = before


@contextlib.contextmanager
def _few_download_retries(retries: int = 3):
    """tfds retries each request 10 times with exponential backoff: with no network (a failed DNS lookup, a
    refusing proxy) that is 3 min 24 s of silence before its error. 3 retries give up after about 1 s."""
    try:
        from tensorflow_datasets.core.download import downloader
    except ImportError:  # another tfds layout: leave it as it is
        downloader = None
    before = getattr(downloader, "MAX_RETRIES", None)
    if before is None:
        yield
        return
    downloader.MAX_RETRIES = min(before, retries)
    try:
        yield
    finally:
        downloader.MAX_RETRIES = before


class _DropTfdsNoise(logging.Filter):
    """tfds's log lines before a download that tell a user nothing: urllib3's retries of a request (the one-line
    error after them says the download failed), and absl's note that the dataset's folder is new."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (record.name == "urllib3.connectionpool" and message.startswith("Retrying")
                    or record.name == "absl" and message.endswith("has no dataset_info.json"))


@contextlib.contextmanager
def _tidy_download(name: str):
    """Around tfds.load: without the log lines of _DropTfdsNoise, and with the empty download folders of a failed
    download removed (each offline attempt left a DATA_DIR/downloads/NAME/*.tmp.* folder behind)."""
    try:
        from tensorflow_datasets.core import constants
        downloads = os.path.join(constants.DATA_DIR, "downloads", name)
    except (ImportError, AttributeError):  # another tfds layout: nothing to tidy
        downloads = None
    listed = lambda: set(os.listdir(downloads)) if downloads and os.path.isdir(downloads) else set()  # noqa: E731
    before = listed()
    noise = _DropTfdsNoise()
    loggers = [logging.getLogger(n) for n in ("urllib3.connectionpool", "absl")]
    for logger in loggers:
        logger.addFilter(noise)
    try:
        yield
    except BaseException:
        for entry in listed() - before:  # empty ones: a download that never began, not another process's under way
            folder = os.path.join(downloads, entry)
            if ".tmp." in entry and os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
        raise
    finally:
        for logger in loggers:
            logger.removeFilter(noise)


def _as_uint8(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    return x.astype(np.uint8)


# ------------------------------------------------------------------------------- image folders

def local_path(data: str) -> str:
    """--data as an absolute path ('tfds' as it is): what a run saves, so it is found from any folder."""
    return data if data == "tfds" else os.path.abspath(os.path.expanduser(data))


def inside_folder(path: str, data: str) -> bool:
    """Whether `path` is the local dataset folder `data` or lies inside it. A run's or an evaluation's files written
    there change the dataset: under train/ or test/ they are images of a class of their own (a loss_curve.png of
    504x840 made every later load fail); anywhere in it they change the listing that keys the decoded cache."""
    return data != "tfds" and os.path.isdir(local_path(data)) and within(local_path(path), local_path(data))


def within(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies inside it, both as they resolve (symlinks followed)."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _walk(root: str):
    """(folder, sorted file names) under root, symlinked folders followed (a class folder linked in from
    elsewhere is common), each real folder once (a link cycle ends)."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        yield dirpath, sorted(filenames)


class _DirReader:
    def __init__(self, root: str):
        self.root = root

    def files(self) -> list[str]:
        out = []
        for dirpath, filenames in _walk(self.root):
            out += [os.path.relpath(os.path.join(dirpath, f), self.root).replace(os.sep, "/") for f in filenames]
        return out

    def read(self, name: str) -> bytes:
        with open(os.path.join(self.root, name), "rb") as fh:
            return fh.read()

    def folders(self, under: str) -> list[str]:
        """Names of the folders in the folder `under` (a split: the classes), empty ones included."""
        top = os.path.join(self.root, under)
        return [d for d in os.listdir(top) if os.path.isdir(os.path.join(top, d))] if os.path.isdir(top) else []


# What reading a cut or corrupted archive raises: tarfile's "unexpected end of data", gzip's EOFError and
# BadGzipFile (an OSError: a CRC or length that does not match), zlib's and lzma's errors of a changed stream
_ARCHIVE_ERRORS = (EOFError, tarfile.TarError, zlib.error, lzma.LZMAError, OSError)


def _damaged(path: str, why: str) -> str:
    return (f"--data {path}: the archive is truncated or damaged ({why}); copy or download it again, or give the "
            f"folder it was made from")


def _check_end(tar: tarfile.TarFile, path: str) -> None:
    """Raise tarfile.ReadError unless the archive's last member is followed by the tar end marker (zero blocks) and
    nothing but zeros. tarfile ends its member list quietly at a header it cannot read, or at none: changed bytes
    in the middle of an archive dropped the files after them (50 of 80 images, no error), and so did a .tar cut
    between two members. Reading to the end also makes a compressed stream check its length and checksum
    (EOFError, BadGzipFile). Data after the end marker (two tars joined with cat, which tar reads only with -i)
    gets a UsageError of its own: downloading again would not help."""
    tar.fileobj.seek(tar.offset)
    zeros, trailing = 0, False
    while chunk := tar.fileobj.read(1 << 20):
        data = chunk.lstrip(b"\0")
        zeros += len(chunk) - len(data)
        if data:
            trailing = True
            break
    members = tar.getmembers()
    last = members[-1].name if members else "(none)"
    if zeros < 512:
        raise tarfile.ReadError(f"it stops being a tar after {last}")
    if trailing:
        raise UsageError(f"--data {path} holds data after the tar's end marker, which follows {last} (two tars "
                         f"joined with cat?): make one archive with tar, or give the folder it was made from")


class _TarReader:
    def __init__(self, tar: tarfile.TarFile, path: str):
        self.tar, self.path = tar, path
        # By member, not by name: TarFile.getmember(name) searches the whole member list each time, which
        # made decoding CIFAR-10's 60,000 files quadratic (about a minute instead of seconds).
        self.members = {m.name: m for m in tar.getmembers() if m.isfile()}

    def files(self) -> list[str]:
        return list(self.members)

    def read(self, name: str) -> bytes:
        return self.tar.extractfile(self.members[name]).read()

    def folders(self, under: str) -> list[str]:
        """Names of the folders in the folder `under` (a split: the classes), empty ones included (a tar that
        stores its folders as members)."""
        return [m.name.rstrip("/").rsplit("/", 1)[-1] for m in self.tar.getmembers()
                if m.isdir() and os.path.dirname(m.name.rstrip("/")) == under]


_ARCHIVE_NAMES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def _image_folder(reader, where: str) -> Dataset:
    """Decode <prefix>/{train,test}/<class>/<image> from a folder or tar; classes sorted by name."""
    files = reader.files()
    by_split: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    skipped, nested, split_dirs = [], [], set()
    for name in files:
        parts = name.split("/")
        splits_at = [i for i in range(len(parts) - 2) if parts[i] in SPLITS]
        if not splits_at or any(p.startswith(".") for p in parts[splits_at[-1] + 1:]):
            continue  # not under a split; hidden files and folders (.DS_Store, .ipynb_checkpoints/) are no classes
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            skipped.append(name)
        elif splits_at[-1] + 3 == len(parts):
            by_split[parts[splits_at[-1]]].setdefault(parts[splits_at[-1] + 1], []).append(name)
            split_dirs.add("/".join(parts[:splits_at[-1] + 1]))
        else:
            nested.append(name)
    if not by_split["train"] and not by_split["test"]:
        if not files:
            raise UsageError(f"--data {where} is empty: it needs train/<class>/ and test/<class>/ image folders")
        archives = sorted(f for f in files if "/" not in f and f.lower().endswith(_ARCHIVE_NAMES))
        if archives and os.path.isdir(where):  # the folder that holds the dataset's archive (data/, not data/X.tar.gz)
            raise UsageError(f"--data {where} has no train/<class>/<image> files, but holds {archives[0]}: give "
                             f"the archive itself, --data {os.path.join(where, archives[0])}")
        raise UsageError(f"--data {where} has no train/<class>/<image> files: put each split's images in one "
                         f"sub-folder per class (train/cat/0001.png, test/cat/0002.png, ...)")
    for split in SPLITS:
        if not by_split[split]:
            raise UsageError(f"--data {where} has no {split}/<class>/ images: both train/ and test/ are needed")
    classes = sorted(set(by_split["train"]) | set(by_split["test"]))
    if skipped:
        warnings.warn(f"skipped {len(skipped)} file(s) that are not images (by extension), e.g. {skipped[0]}",
                      stacklevel=2)
    if nested:
        warnings.warn(f"skipped {len(nested)} image(s) in sub-folders of a class folder, e.g. {nested[0]}: only "
                      f"<split>/<class>/<image> is read", stacklevel=2)
    empty = [f"{d}/{c}" + ("" if c in classes else " (no such class then)") for d in sorted(split_dirs)
             for c in sorted(reader.folders(d)) if not c.startswith(".") and c not in by_split[d.rsplit("/", 1)[-1]]]
    if empty:
        warnings.warn(f"class folder(s) with no images: {', '.join(empty)}", stacklevel=2)
    decoded = {}
    converted, rotated = {}, []
    for split in SPLITS:
        items = [(f, classes.index(c)) for c in sorted(by_split[split]) for f in sorted(by_split[split][c])]
        decoded[split] = ([_decode(reader, f, converted, rotated) for f, _ in items],
                          np.array([y for _, y in items], np.int32), [f for f, _ in items])
    imgs = decoded["train"][0] + decoded["test"][0]
    names = decoded["train"][2] + decoded["test"][2]
    if rotated:
        print(f"note: turned {len(rotated)} image(s) upright by their EXIF orientation, as image viewers show "
              f"them, e.g. {rotated[0]}", file=sys.stderr)
    sizes = {im.size for im in imgs}
    if len(sizes) > 1:
        odd = next(i for i, im in enumerate(imgs) if im.size != imgs[0].size)
        hw = lambda im: f"{im.size[1]}x{im.size[0]}"  # height x width, as everywhere else (PIL's size is w, h)
        raise UsageError(f"--data {where}: images have different sizes ({names[0]} is {hw(imgs[0])}, {names[odd]} "
                         f"is {hw(imgs[odd])}, height x width); resize them all to one size first")
    full = _deep_range(imgs, names)
    modes = {"L" if im.mode.startswith("I") else im.mode for im in imgs}
    target = "L" if modes <= {"L", "1"} else "RGB"
    # Original modes of everything that is not already `target`: alpha/palette images were converted in
    # _decode, the rest is converted below. Either way the user hears about it once.
    counts: dict[str, int] = {}
    for name, im in zip(names, imgs):
        mode = converted.get(name, im.mode)
        if mode != target and not (mode.startswith("I") and target == "L"):  # _deep_range's note tells those
            counts[mode] = counts.get(mode, 0) + 1
    counts = dict(sorted(counts.items()))
    if counts:
        print(f"note: converted {', '.join(f'{n} {m}' for m, n in counts.items())} image(s) to {target}",
                  file=sys.stderr)
    out = []
    for split in SPLITS:
        arr = np.stack([np.asarray(_eight_bit(im, full).convert(target)) for im in decoded[split][0]])
        out += [_as_uint8(arr), decoded[split][1]]
    return Dataset(out[0], out[1], out[2], out[3], classes)


def _deep_range(imgs: list, names: list[str]) -> int:
    """The largest value of the dataset's 16-bit images' bit depth, 2^b - 1 for the smallest b of 8, 10, 12, 14,
    16 that holds them all: 12-bit data (medical, scientific cameras) scaled as 16-bit would be near black.
    One range for the whole dataset keeps the images' brightness relative to each other. Images of mode "I"
    (32-bit integers) outside 0..65535 are refused."""
    deep = [(name, im) for name, im in zip(names, imgs) if im.mode.startswith("I")]
    if not deep:
        return 0
    top = 0
    for name, im in deep:
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise UsageError(f"image {name} has 32-bit integer pixels ({a.min()}..{a.max()}): save it as 8- or "
                             f"16-bit")
        top = max(top, int(a.max()) if a.size else 0)
    full = next(2 ** b - 1 for b in (8, 10, 12, 14, 16) if top < 2 ** b)
    print(f"note: {len(deep)} 16-bit image(s), values up to {top}: read as {full.bit_length()}-bit (0..{full}) and "
          f"scaled to 8 bits", file=sys.stderr)
    return full


def _eight_bit(im, full: int):
    from PIL import Image
    if not im.mode.startswith("I"):
        return im
    return Image.fromarray(((np.asarray(im).astype(np.uint32) * 255 + full // 2) // full).astype(np.uint8), "L")


def _decode(reader, name: str, converted: dict, rotated: list):
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        im = Image.open(io.BytesIO(reader.read(name)))
        im.load()
        if im.getexif().get(0x0112, 1) != 1:  # a camera's orientation tag (5 us per image to read)
            im = ImageOps.exif_transpose(im)
            rotated.append(name)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        why = "truncated, or not an image" if isinstance(e, UnidentifiedImageError) else str(e)  # PIL names a BytesIO
        where = f" in the archive {reader.path}" if isinstance(reader, _TarReader) else ""
        raise UsageError(f"cannot read image {name}{where} ({why}): remove or replace the file") from None
    if im.mode in ("RGBA", "LA", "P", "PA"):  # palette to colours; alpha dropped (the colour under it is kept)
        converted[name] = im.mode
        im = im.convert("RGB" if im.mode != "LA" else "L")
    elif im.mode == "F":  # (16-bit grayscale, "I;16" or "I", stays as it is: _deep_range and _eight_bit scale it)
        raise UsageError(f"image {name} has floating-point pixels (mode F), whose range jaxae cannot know: save "
                         f"it as an 8- or 16-bit image")
    return im


# ---------------------------------------------------------------------- official CIFAR-10 (python)

def _cifar_batches(read, where: str) -> Dataset:
    """The official python batches; read(name) gives a member's bytes, or None where it is missing. A member
    missing, cut short or damaged is one line naming it (a pickle cut short was a traceback)."""
    def load(name):
        data = read(name)
        if data is None:
            raise UsageError(f"--data {where}: incomplete CIFAR-10 python data, {name} is missing; copy or download "
                             f"it again")
        try:
            return pickle.loads(data, encoding="latin1")
        except Exception as e:  # a pickle cut short or changed raises any of several kinds
            raise UsageError(f"--data {where}: {name} of the CIFAR-10 python data is truncated or damaged "
                             f"({type(e).__name__}); copy or download it again") from None

    def batch(name):
        d = load(name)
        try:
            x = np.asarray(d["data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            y = np.asarray(d["labels"], np.int32)
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"--data {where}: {name} is not a CIFAR-10 python batch ({type(e).__name__}: {e}); "
                             f"copy or download it again") from None
        return x, y
    meta = load("batches.meta")
    train = [batch(f"data_batch_{i}") for i in range(1, 6)]
    tx, ty = batch("test_batch")
    return Dataset(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), tx, ty,
                   list(meta["label_names"]))


def _cifar_python_dir(path: str) -> Dataset:
    if os.path.isdir(os.path.join(path, "cifar-10-batches-py")):
        path = os.path.join(path, "cifar-10-batches-py")

    def read(name):
        try:
            with open(os.path.join(path, name), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
    return _cifar_batches(read, path)


def _cifar_python_tar(tar: tarfile.TarFile, path: str) -> Dataset:
    prefix = next(n for n in tar.getnames() if n.rstrip("/").endswith("cifar-10-batches-py/data_batch_1"))
    prefix = prefix[: -len("data_batch_1")]

    def read(name):
        try:
            return tar.extractfile(prefix + name).read()
        except KeyError:
            return None
    return _cifar_batches(read, path)


# ------------------------------------------------------------------------------------------ cache

# What a decode gives for the same files; part of the cache key, so a change to it decodes again. 2: 16-bit
# images scaled (were clipped), EXIF orientation applied, hidden folders no classes (seventeenth session). 3: a
# damaged archive is refused, where part of it was read before, and cached (twenty-first session).
DECODE_VERSION = 3


def _cache_file(path: str, cache_dir: str) -> str:
    path = os.path.realpath(path)  # a folder reached by a symlink is the same data: one cache, one decode
    h = hashlib.sha1(f"decode {DECODE_VERSION}|".encode())
    if os.path.isdir(path):  # a folder's own mtime misses edits deep inside: hash the listing
        st = os.stat(path)
        h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode())
        for dirpath, filenames in _walk(path):
            for f in filenames:
                s = os.stat(os.path.join(dirpath, f))
                h.update(f"|{dirpath}/{f}:{s.st_size}:{s.st_mtime_ns}".encode())
    else:  # an archive: by its bytes (~0.3 s for CIFAR-10), so a copy or a move of it finds the same cache
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    digest = h.hexdigest()[:16]
    return os.path.join(cache_root(cache_dir), f"{os.path.basename(path.rstrip('/'))}-{digest}.npz")


def cache_root(cache_dir: str = "") -> str:
    """The folder of jaxae's caches (decoded datasets, compiled programs): cache_dir, else $JAXAE_CACHE, else
    ~/.cache/jaxae."""
    return cache_dir or os.environ.get("JAXAE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jaxae")


def _save_cache(cache: str, ds: Dataset) -> None:
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        tmp = cache + f".tmp{os.getpid()}.npz"
        np.savez(tmp, train_images=ds.train_images, train_labels=ds.train_labels, test_images=ds.test_images,
                 test_labels=ds.test_labels, class_names=np.array(ds.class_names))
        os.replace(tmp, cache)  # atomic: a killed run never leaves a half cache behind
    except OSError as e:
        print(f"note: could not write the dataset cache {cache} ({e}); the next run decodes again",
              file=sys.stderr)
