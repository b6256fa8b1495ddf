"""Restore a run, encode the test split, compare with PCA, and write the figures, pages and metrics."""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
import shlex
import shutil
import tempfile
import time
from typing import Any, Callable

import jax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxae import checkpoints, corruption, figures, hostmem, pages
from jaxae.metrics import (KNN_K, chance_accuracy, fit_pca, knn_accuracy, mean_image_mse, nearest_neighbours,
                           pad_to_multiple, pca_decode, pca_encode, psnr, ssim)
from jaxae.cli import sigterm_raises, use_compilation_cache
from jaxae.config import Config, UsageError, load_config
from jaxae.data import Dataset, inside_folder, load, within
from jaxae.models import model_from_config
from jaxae.train import TrainState, steps_per_epoch, train_state_to_restore

BATCH = 500          # images per scan step when encoding / reconstructing a split, on an accelerator (split_batch)
# On CPU: 10k test images of the default model encoded in 2.19 s, not 2.38 (best of 3, interleaved), the noisy
# split's metrics 2.67 s, not 2.95; the old default model's 3.88 and 11.5 s, not 4.28 and 12.3 (2 cores; 125 and 200
# images were within 4 % of 250 either way; docs/studies/s35-encode-batch). 250 divides CIFAR-10's splits.
CPU_BATCH = 250
FIGURE_BATCH = 128   # codes per decoder call for the figures (decode_codes)
NOISE_SEED = 1234    # corrupted test inputs are the same in every evaluation of every run
# The noise curve of a denoising run: the test split at these multiples of its --noise (those over a corruption's
# largest strength at that largest). 0 and 1 are the clean and noisy splits, measured anyway; each other costs an
# encode and decode of the split.
NOISE_CURVE = (0.0, 0.5, 1.0, 2.0)
MAX_INTERP_STEPS = 50  # columns of the interpolation and traversal grids: more are too small to see
BEST_CANDIDATES = 4096  # decoded training codes each test image is compared with before its descent (--best-codes)
BEST_RATE = 0.03       # that descent's Adam step per code axis, x the training codes' spread; cosine-decayed to 0
BEST_REPORT_EVERY = 30.0  # seconds between the progress lines of that search (an hour on CPU for the old default model)


# ------------------------------------------------------------------------------------ restore

def restore(workdir: str, step: int | None = None, data: str | None = None,
            cache_dir: str | None = None) -> tuple[Config, TrainState, Dataset]:
    """The run's saved config, its (latest or `step`) checkpoint and its dataset."""
    cfg = load_config(workdir)
    if not checkpoints.has_checkpoints(workdir):
        raise UsageError(f"{workdir} holds no checkpoint yet: train it first (`python train.py --workdir "
                         f"{shlex.quote(workdir)}`) or point --workdir at a run that has a checkpoints/ folder")
    gone = data is None and checkpoints.missing_data(workdir, cfg.data)
    if gone:
        raise UsageError(f"{gone}: pass --data PATH to a copy of that dataset")
    if data and not checkpoints.same_setting("data", cfg.data, data):
        print(f"note: evaluating on --data {data}, not on the data the run was trained on ({cfg.data})")
    cfg = cfg.replace(data=data or cfg.data, cache_dir=cfg.cache_dir if cache_dir is None else cache_dir)
    ds = load(cfg.data, cfg.dataset, cfg.cache_dir)
    spe = max(steps_per_epoch(ds.train_images.shape[0], cfg.batch_size), 1)
    state = train_state_to_restore(cfg, ds.image_shape, cfg.epochs * spe, spe)
    mngr = checkpoints.manager(workdir, create=False)
    try:
        state = checkpoints.restore(mngr, state, step, built_for=ds.described(cfg.data))
    finally:
        mngr.close()
    return cfg, state, ds


@functools.partial(jax.jit, static_argnames=("fn", "batch_size"))
def _map_batches(fn: Callable, params, images, batch_size: int):
    """fn(params, x in [0, 1], example indices) over a padded uint8 split on device in one scan, with no
    host sync per batch: a pytree of [N, ...] outputs."""
    def body(_, i):
        x = lax.dynamic_slice_in_dim(images, i * batch_size, batch_size).astype(jnp.float32) / 255.0
        return None, fn(params, x, i * batch_size + jnp.arange(batch_size))
    _, out = lax.scan(body, None, jnp.arange(images.shape[0] // batch_size))
    return jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:]), out)


# The functions handed to _map_batches / _apply are static jit arguments: frozen dataclasses compare
# by value, so a second evaluation of an equal model in the same process reuses the compiled code.

@dataclasses.dataclass(frozen=True)
class _Method:
    """model.apply(..., method=name) as a (params, x) function. It holds the module, not the bound
    `model.apply`: bound methods compare by identity, equal Flax modules compare equal."""
    model: nn.Module
    name: str

    def __call__(self, p, x):
        return self.model.apply({"params": p}, x, method=self.name)


@dataclasses.dataclass(frozen=True)
class _PcaDecode:
    shape: tuple

    def __call__(self, p, z):
        return pca_decode(p, z, self.shape)


@dataclasses.dataclass(frozen=True)
class _Compose:
    """decode(encode(x)) as one (params, x) function."""
    encode: Callable
    decode: Callable

    def __call__(self, p, x):
        return self.decode(p, self.encode(p, x))


@dataclasses.dataclass(frozen=True, eq=False)
class Codec:
    """A model seen as encode / decode functions of (params, ...): the autoencoder or the PCA baseline."""
    name: str
    encode: Callable  # (params, x [B, H, W, C] in [0, 1]) -> [B, k]
    decode: Callable  # (params, z [B, k]) -> [B, H, W, C]
    params: Any
    # (params, x) -> decode(encode(x)); by default those two in turn. The autoencoder's draws a chosen code once
    # where they draw it twice (encoder heads: 4 decoder passes per image, not 5)
    roundtrip: Callable | None = None

    def __post_init__(self):
        if self.roundtrip is None:
            object.__setattr__(self, "roundtrip", _Compose(self.encode, self.decode))


def autoencoder_codec(model: nn.Module, params) -> Codec:
    return Codec("autoencoder", _Method(model, "encode"), _Method(model, "decode"), params,
                 _Method(model, "reconstruct"))


def pca_codec(pca: dict, image_shape) -> Codec:
    return Codec(f"PCA-{pca['components'].shape[0]}", pca_encode, _PcaDecode(tuple(image_shape)), pca)


def fit_pca_codec(ds: Dataset, k: int) -> Codec:
    """PCA with k components fit on ds's training images: at most N - 1 for N images (centred, the N-th would
    be an arbitrary direction). evaluate.py's PCA-k, and bench/sweep.py's."""
    n = len(ds.train_images)
    return pca_codec(fit_pca(ds.train_images.reshape(n, -1), max(1, min(k, n - 1)), 1 / 255), ds.image_shape)


@functools.partial(jax.jit, static_argnames="fn")
def _apply(fn: Callable, params, x):
    return fn(params, x)


def reconstruct(codec: Codec, x) -> jax.Array:
    return _apply(codec.roundtrip, codec.params, x)


def decode_codes(codec: Codec, z, batch: int | None = None) -> jax.Array:
    """codec.decode of codes z [N, k], `batch` (by default FIGURE_BATCH) at a time, the last call padded, so that
    one compiled program serves any N: the figures' drawings, where each figure's own number of codes (80, 30, 100,
    10) compiled one of its own, 0.8 s each for the quick model on 2 CPU cores (docs/performance.md, thirty-second
    session), and best_codes' candidates (in calls of split_batch()), which stay on the device."""
    batch = batch or FIGURE_BATCH
    z = np.asarray(z, np.float32)
    padded = np.concatenate([z, np.zeros((-len(z) % batch, z.shape[1]), np.float32)])
    return jnp.concatenate([_apply(codec.decode, codec.params, jnp.asarray(padded[i:i + batch]))
                            for i in range(0, len(padded), batch)])[:len(z)]


def split_batch() -> int:
    """Images per scan step over a split, on this backend."""
    return CPU_BATCH if jax.default_backend() == "cpu" else BATCH


def batch_size_for(n: int) -> int:
    return min(split_batch(), n)


@dataclasses.dataclass(frozen=True)
class _Encode:
    encode: Callable

    def __call__(self, p, x, idx):
        return self.encode(p, x)


def encode_split(codec: Codec, images_dev) -> jax.Array:
    """Codes of a padded on-device uint8 split (pad rows included)."""
    return _map_batches(*_encode_args(codec, images_dev))


def chosen_heads(model: nn.Module, params, images_dev, codes) -> np.ndarray:
    """For a model with encoder heads: the head each image's code came from, the proposal equal to it (one pass of
    the encoder, none of the decoder). `codes` as encode_split gave them for the padded split `images_dev`."""
    proposals = _map_batches(_Encode(_Method(model, "proposals")), params, images_dev,
                             batch_size_for(images_dev.shape[0]))
    return np.asarray(jnp.argmin(jnp.abs(proposals - codes[:, None]).sum(-1), axis=1))


def compile_encode_split(codec: Codec, images_dev) -> None:
    """Compile encode_split's program for this codec and split without running it (a later encode_split call
    reuses it): timing the encode then leaves the compile out, and the 2-core box is spared a whole extra
    encode of the test split (10-14 s for the old default model, fifteenth session)."""
    _map_batches.lower(*_encode_args(codec, images_dev)).compile()


def _encode_args(codec: Codec, images_dev) -> tuple:
    return _Encode(codec.encode), codec.params, images_dev, batch_size_for(images_dev.shape[0])


def corrupt_fixed(kind: str, strength: float, x: jax.Array, idx: jax.Array) -> jax.Array:
    """The trained corruption with a fixed key per test example: every evaluation sees the same noisy set."""
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(NOISE_SEED), i))(idx)
    return corruption.corrupt(kind, keys, x, strength)


@dataclasses.dataclass(frozen=True)
class _NoisyErrors:
    """Per-example squared error against x of roundtrip(x corrupted at a strength handed in beside the
    parameters), or without roundtrip of the corrupted x itself: one program for every strength of the noise curve.
    The noise is corrupt_fixed's at each strength."""
    kind: str
    roundtrip: Callable | None = None

    def __call__(self, p, x, idx):
        p, strength = p
        r = corrupt_fixed(self.kind, strength, x, idx)
        if self.roundtrip is not None:
            r = self.roundtrip(p, r)
        return jnp.square(r - x).reshape(x.shape[0], -1).mean(1)


def noise_curve(codecs, images_dev, mask: np.ndarray, kind: str, strengths,
                known: dict[float, dict[str, float]]) -> dict:
    """Test MSE against the clean images of each codec's reconstructions of the test images corrupted (as
    corrupt_fixed) at each strength, and of the corrupted images themselves ("input"). `known`: the codecs' MSE at
    the strengths measured already ({strength: {codec name: MSE}}: 0, the clean split; the trained one, the noisy
    inputs), which cost no pass here."""
    def mse(fn, params, s):
        se = _map_batches(fn, (params, jnp.float32(s)), images_dev, batch_size_for(images_dev.shape[0]))
        return float(np.asarray(se)[mask > 0].mean())
    curves = {c.name: [known[s][c.name] if s in known else mse(_NoisyErrors(kind, c.roundtrip), c.params, s)
                       for s in strengths] for c in codecs}
    curves["input"] = [mse(_NoisyErrors(kind), None, s) for s in strengths]
    return {"strengths": [float(s) for s in strengths], **curves}


def curve_strengths(kind: str, noise: float) -> list[float]:
    """The noise curve's strengths for a run trained at --noise `noise`: NOISE_CURVE's multiples of it, those over
    the corruption's largest (1 for mask and salt_pepper: every pixel) at that largest."""
    top = 1.0 if kind in ("mask", "salt_pepper") else math.inf
    return sorted({min(f * noise, top) for f in NOISE_CURVE})


@dataclasses.dataclass(frozen=True)
class _Errors:
    """Per-example squared error, absolute error and SSIM against x of roundtrip(corrupt(x)), or, with
    from_codes, of decode(codes[i]) for the split's codes handed in beside the parameters."""
    roundtrip: Callable
    decode: Callable
    kind: str
    strength: float
    from_codes: bool = False

    def __call__(self, p, x, idx):
        if self.from_codes:
            p, codes = p
            r = self.decode(p, codes[idx])
        else:
            r = self.roundtrip(p, corrupt_fixed(self.kind, self.strength, x, idx))
        d = (r - x).reshape(x.shape[0], -1)
        return jnp.square(d).mean(1), jnp.abs(d).mean(1), ssim(r, x)


def reconstruction_metrics(codec: Codec, images_dev, mask: np.ndarray, kind: str = "gaussian",
                           strength: float = 0.0, codes: jax.Array | None = None) -> dict:
    """MSE, MAE, global PSNR and SSIM of the reconstructions of x (corrupted by kind, strength) against x.

    `codes`: the clean split's codes as encode_split gave them (pad rows included), to decode instead of
    encoding the split again (one encode of the test split less: 7-9 s of a CPU evaluation of the old default model)."""
    if codes is not None and strength:
        raise ValueError("codes are the clean inputs' codes: they cannot stand for corrupted inputs")
    fn = _Errors(codec.roundtrip, codec.decode, kind, strength, from_codes=codes is not None)
    params = codec.params if codes is None else (codec.params, codes)
    out = _map_batches(fn, params, images_dev, batch_size_for(images_dev.shape[0]))
    se, ae, ss = (np.asarray(v)[mask > 0] for v in out)
    mse = float(se.mean())
    return {"mse": mse, "mae": float(ae.mean()), "psnr": psnr(mse), "ssim": float(ss.mean())}


@dataclasses.dataclass(frozen=True)
class _BestCodes:
    """For each image of a batch, a code the decoder reconstructs it better from than from the encoder's: start
    from the encoder's code or from the decoded candidate nearest the image in pixels, whichever is nearer, then
    take `steps` Adam steps on the code against decode(code)'s squared error. Returns the better of the start and
    the end, its per-image MSE, and the encoder's code's MSE."""
    decode: Callable
    steps: int
    rate: float

    def __call__(self, p, x, idx):
        p, codes, cand_codes, cand_images, scale = p
        err = lambda z: jnp.square(self.decode(p, z) - x).reshape(x.shape[0], -1).mean(1)
        z_enc = codes[idx]
        e_enc = err(z_enc)
        flat = x.reshape(x.shape[0], -1)
        d = (jnp.sum(jnp.square(cand_images), 1)[None]  # + |x|^2, the same for every candidate of an image
             - 2 * jnp.matmul(flat, cand_images.T, precision=lax.Precision.HIGHEST))  # no TF32 on GPUs
        nearest = cand_codes[jnp.argmin(d, 1)]
        e_near = err(nearest)
        start = jnp.where((e_near < e_enc)[:, None], nearest, z_enc)
        e_start = jnp.minimum(e_near, e_enc)
        opt = optax.scale_by_adam()  # per image and axis: each image's code is its own problem
        rate = optax.cosine_decay_schedule(self.rate, max(self.steps, 1))

        def step(carry, i):
            z, state = carry
            u, state = opt.update(jax.grad(lambda z: err(z).sum())(z), state)
            return (z - rate(i) * scale * u, state), None
        (z, _), _ = lax.scan(step, (start, opt.init(start)), jnp.arange(self.steps))
        e_end = err(z)
        better = e_end < e_start
        return jnp.where(better[:, None], z, start), jnp.where(better, e_end, e_start), e_enc


def best_codes(codec: Codec, images_dev, codes: jax.Array, train_codes: np.ndarray, steps: int,
               candidates: int = BEST_CANDIDATES, report: Callable[[int], None] | None = None
               ) -> tuple[jax.Array, jax.Array, jax.Array, int]:
    """The best code found for each image of a padded on-device uint8 split, for the decoder: the nearer (in
    pixels) of the encoder's code (`codes`, as encode_split gave them) and the decoding of the best of up to
    `candidates` training codes, then `steps` of Adam on the code. This is encoding by optimisation: it uses only
    the image and the decoder, as the encoder does. Where it finds a better code than the encoder gives, that part
    of the error is the encoder's (an amortisation gap; a local search finds a lower bound of it), not the
    decoder's. Returns the codes, their per-image MSE and the encoder's codes' (pad rows included) and the number
    of candidates (fewer for few or large images). `report(n)` is called after each batch with the number of
    rows done (pad rows included)."""
    pixels = int(np.prod(images_dev.shape[1:]))
    m = max(1, min(candidates, len(train_codes), 2 ** 24 // pixels))  # their decodings: at most 64 MB
    cand = jnp.asarray(train_codes[np.sort(np.random.default_rng(0).permutation(len(train_codes))[:m])])
    cand_images = decode_codes(codec, cand, split_batch()).reshape(m, pixels)
    spread = jnp.std(jnp.asarray(train_codes), axis=0)  # an axis the codes barely use still gets steps
    scale = jnp.maximum(spread, 1e-3 * spread.max())
    scale = jnp.where(scale > 0, scale, 1.0)  # codes that all coincide: an untrained model
    fn = _BestCodes(codec.decode, steps, BEST_RATE)
    size, parts = batch_size_for(images_dev.shape[0]), []
    if images_dev.shape[0] % size:  # a short last batch would run no step of the scan and drop its rows
        raise ValueError(f"the split must be padded to a multiple of {size} rows (pad_to_multiple), not "
                         f"{images_dev.shape[0]}")
    for i in range(0, images_dev.shape[0], size):  # a call per batch, one program: progress can be told
        parts.append(_map_batches(fn, (codec.params, codes[i:i + size], cand, cand_images, scale),
                                  images_dev[i:i + size], size))
        if report is not None:
            jax.block_until_ready(parts[-1])
            report(i + size)
    z, err, enc_err = (jnp.concatenate(p) for p in zip(*parts))
    return z, err, enc_err, m


# ----------------------------------------------------------------------------------- pictures

def pick_pairs(labels: np.ndarray, n: int) -> list[tuple[int, int]]:
    """n pairs of test indices, each from two different classes when there are two (deterministic)."""
    classes = np.unique(labels)
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    pairs = []
    for r in range(n):
        shift = 1 + (r // len(classes)) % max(len(classes) - 1, 1)  # 1 .. C-1: never the same class
        a, b = classes[r % len(classes)], classes[(r + shift) % len(classes)]
        q = r // len(classes)  # the q-th image of a from the front, of b from the back
        ia, ib = by_class[a][q % len(by_class[a])], by_class[b][-(q % len(by_class[b])) - 1]
        pairs.append((int(ia), int(ib)))
    return pairs


def neighbour_queries(labels: np.ndarray) -> np.ndarray:
    """The test images of the neighbours figure: one per class up to 20 classes, at least 8 (classes repeat when
    there are fewer). With 8 alone, CIFAR-10's ship and truck never had a row."""
    n = min(max(8, min(len(np.unique(labels)), 20)), len(labels))
    return np.array([a for a, _ in pick_pairs(labels, n)])


def code_axes(fit_on: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean of the training codes and their k main directions [k, D] (PCA), each signed so that its largest
    entry is positive: the one "PC i of the code" of every figure (the latent plots of a long code, the decoder
    map), where each fit's own signs would flip an axis from one figure to the next."""
    pca = jax.device_get(fit_pca(fit_on, k))
    basis = np.asarray(pca["components"])
    return np.asarray(pca["mean"]), basis * np.sign(basis[np.arange(k), np.abs(basis).argmax(1)])[:, None]


def project_to_3d(codes: np.ndarray, fit_on: np.ndarray) -> tuple[np.ndarray, list[str], str]:
    """Codes as points of at most 3 dimensions for the plots, their axis names and a note saying how they were
    made: a code of 3 or fewer dimensions as it is (the figures draw 1-D and 2-D codes in their own dimensions),
    a longer one projected to 3-D with PCA, with the share of the codes' variance the 3 axes keep."""
    d = codes.shape[1]
    if d <= 3:
        return codes, [f"latent {i + 1}" for i in range(d)], ""
    mean, basis = code_axes(fit_on, 3)
    kept = np.square((fit_on - mean) @ basis.T).sum() / np.square(fit_on - mean).sum()
    return ((codes - mean) @ basis.T, [f"PC {i + 1} of the code" for i in range(3)],
            f"{d}-D codes projected to 3-D with PCA, fit on the training codes: {100 * kept:.0f} % of their variance")


def coordinate_labels(values: np.ndarray) -> list[str]:
    """Evenly spaced coordinates as labels with as many decimals as their spacing needs (2 at least), so a
    sweep over a narrow range does not read "0.00, 0.00, 0.01, ...", and no "-0.00"."""
    step = np.abs(np.diff(values)).max() if len(values) > 1 else 0.0
    decimals = 2 if step == 0 or not np.isfinite(step) else int(np.clip(np.ceil(-np.log10(step)) + 1, 2, 8))
    return [f"{round(float(v), decimals) + 0.0:.{decimals}f}" for v in values]


def _u8(x) -> np.ndarray:
    return np.asarray(np.clip(np.asarray(x) * 255.0 + 0.5, 0, 255), np.uint8)


def make_figures(cfg: Config, ae: Codec, pca: Codec, ds: Dataset, codes: dict, out: str,
                 interp_steps: int, heads: np.ndarray | None = None) -> dict[str, str]:
    """Every figure of the evaluation -> {name: file name in `out`}. `heads`: of a model with encoder heads, the
    head that gave each test image's code (chosen_heads)."""
    names = ds.class_names
    test_y = ds.test_labels
    cls = lambda i, y=test_y: names[int(y[i])]
    files = {}
    pts, axes, note = project_to_3d(codes["ae_test"], codes["ae_train"])
    what = f"Autoencoder latent space of {len(pts):,} test images"
    title = what + (f" ({note})" if note else "")
    files["latent_3d"] = figures.latent_views(pts, test_y, names, os.path.join(out, "latent_3d.png"), title, axes)
    files["latent_pairs"] = figures.latent_pairs(pts, test_y, names, os.path.join(out, "latent_pairs.png"),
                                                 title, axes)
    if heads is not None:
        files["latent_heads"] = figures.latent_heads(pts, heads, cfg.encoder_heads, test_y, names,
                                                     os.path.join(out, "latent_heads.png"), title, axes)
    keep = np.random.default_rng(0).permutation(len(pts))[:2000]
    files["latent_3d_html"] = pages.scatter3d(os.path.join(out, "latent_3d.html"), pts, test_y, names,
                                              keep, ds.test_images[keep], title, axes, heads, cfg.encoder_heads)

    dec = functools.partial(decode_codes, ae)

    pairs = pick_pairs(test_y, min(8, len(test_y)))
    za, zb = (codes["ae_test"][[p[i] for p in pairs]] for i in (0, 1))
    t = np.linspace(0.0, 1.0, interp_steps)
    z = za[:, None] * (1 - t[None, :, None]) + zb[:, None] * t[None, :, None]
    steps = _u8(dec(z.reshape(-1, z.shape[-1]))).reshape(len(pairs), interp_steps, *ds.image_shape)
    rows = np.concatenate([ds.test_images[[p[0] for p in pairs]][:, None], steps,
                           ds.test_images[[p[1] for p in pairs]][:, None]], 1)
    files["interpolation"] = figures.image_grid(
        rows, os.path.join(out, "interpolation.png"),
        f"Linear interpolation in the latent space: decode((1-t) z_A + t z_B), {interp_steps} steps",
        ["A"] + [f"t={v:.2f}" for v in t] + ["B"], [f"A: {cls(a)}, B: {cls(b)}" for a, b in pairs])

    idx = pick_pairs(test_y, min(12, len(test_y)))
    sel = np.array([a for a, _ in idx])
    recon_rows = [("original", ds.test_images[sel])]
    if cfg.noise > 0:
        inputs = ds.test_images[sel].astype(np.float32) / 255.0
        noisy = np.asarray(corrupt_fixed(cfg.corruption, cfg.noise, jnp.asarray(inputs), jnp.asarray(sel)))
        recon_rows.append((f"{cfg.corruption} {cfg.noise:g}", _u8(noisy)))
    for c, key in ((ae, "ae_test"), (pca, "pca_test")):  # the drawings of the codes the split's encode gave
        recon_rows.append((c.name, _u8(decode_codes(c, codes[key][sel]))))
    if "best_test" in codes:  # --best-codes: what the decoder draws from each image's best code
        recon_rows.insert(-1, ("best code", _u8(dec(codes["best_test"][sel]))))
    if cfg.noise > 0:
        for c in (ae, pca):
            recon_rows.append((f"{c.name} of noisy", _u8(reconstruct(c, noisy))))
    files["reconstructions"] = figures.image_grid(
        np.stack([r for _, r in recon_rows]), os.path.join(out, "reconstructions.png"),
        "Test images and their reconstructions" + (f" (inputs corrupted: {cfg.corruption}, strength {cfg.noise:g}"
                                                    + (", the top of the training's range)"
                                                       if cfg.noise_levels == "uniform" else ")")
                                                    if cfg.noise > 0 else ""),
        [cls(i) for i in sel], [n for n, _ in recon_rows])

    c = codes["ae_test"]
    files["traversal"] = _traversal(c, dec, interp_steps, ds.image_shape, os.path.join(out, "traversal.png"))

    if c.shape[1] >= 2 and len(c) >= 3:  # a plane needs 3 codes
        files["decoder_map"] = _decoder_map(c, codes["ae_train"], dec, interp_steps, ds.image_shape,
                                            os.path.join(out, "decoder_map.png"))
    files["class_means"] = _class_means(c, test_y, ds, dec, os.path.join(out, "class_means.png"))

    queries = neighbour_queries(test_y)
    k = min(8, len(ds.train_images))
    nn = np.asarray(nearest_neighbours(jnp.asarray(c[queries]), jnp.asarray(codes["ae_train"]), k=k, chunk=8))
    same = (ds.train_labels[nn] == test_y[queries, None]).sum(1)
    files["neighbours"] = figures.image_grid(
        np.concatenate([ds.test_images[queries][:, None], ds.train_images[nn]], 1),
        os.path.join(out, "neighbours.png"),
        f"Test queries and their {k} nearest training images in the autoencoder's latent space",
        ["query"] + [f"#{i + 1}" for i in range(k)],
        [f"{cls(q)}: {s}/{k} same" for q, s in zip(queries, same)])
    return files


def _traversal(codes: np.ndarray, dec: Callable, steps: int, image_shape, out: str) -> str:
    """One row per latent coordinate (the first 8): that coordinate swept in `steps` even steps from its 1st to its
    99th percentile over `codes`, the others at their median, decoded -> out. Column t is the fraction of the way,
    the same at every row; each row's label gives its two ends."""
    lo, hi = np.percentile(codes, 1, axis=0), np.percentile(codes, 99, axis=0)
    dims, t = range(min(codes.shape[1], 8)), np.linspace(0.0, 1.0, steps)
    sweep = np.repeat(np.median(codes, axis=0)[None, None], len(dims), 0).repeat(steps, 1)
    for d in dims:
        sweep[d, :, d] = lo[d] + t * (hi[d] - lo[d])
    trav = _u8(dec(sweep.reshape(-1, codes.shape[1]))).reshape(len(dims), steps, *image_shape)
    return figures.image_grid(
        trav, out,
        "Latent traversal: one coordinate swept in even steps from its 1st percentile (t=0) to its 99th (t=1), "
        "the others at their median" + (f" (the first {len(dims)} of {codes.shape[1]} coordinates)"
                                        if len(dims) < codes.shape[1] else ""),
        [f"t={v:.2f}" for v in t],
        [f"latent {d + 1}: {' .. '.join(ends)}" for d in dims
         for ends in [coordinate_labels(sweep[d, :, d])[::steps - 1]]])


def _class_means(codes: np.ndarray, labels: np.ndarray, ds: Dataset, dec: Callable, out: str) -> str:
    """Per class (a column each; a row each past 20 classes): the decoded mean of its test codes, the mean of its
    test images in pixel space, and its test image whose code is nearest that mean."""
    members = [idx for idx in (np.flatnonzero(labels == k) for k in range(len(ds.class_names))) if len(idx)]
    means = np.stack([codes[idx].mean(0) for idx in members])
    nearest = [idx[np.argmin(((codes[idx] - m) ** 2).sum(1))] for idx, m in zip(members, means)]
    pixel_means = np.stack([ds.test_images[idx].mean(0) for idx in members])
    grid = np.stack([_u8(dec(means)), np.round(pixel_means).astype(np.uint8), ds.test_images[nearest]])
    kinds = ["decoded mean code", "mean image (pixels)", "image nearest the mean code"]
    names = [ds.class_names[labels[idx[0]]] for idx in members]
    title = "Each class's mean code, decoded, against the mean of its images"
    if len(members) > 20:  # CIFAR-100: 100 columns would shrink to nothing on the page
        return figures.image_grid(grid.swapaxes(0, 1), out, title, ["decoded mean", "mean image", "nearest"], names)
    return figures.image_grid(grid, out, title, names, kinds)


def _decoder_map(codes: np.ndarray, train_codes: np.ndarray, dec: Callable, n: int, image_shape, out: str) -> str:
    """What the decoder draws over a regular n x n grid of a plane of the latent space, spanning the test codes'
    1st to 99th percentile along each axis: the plane itself for a 2-D code, else the plane of the codes' two
    main directions through their mean (code_axes: the PC 1 and PC 2 of the latent plots of a longer code)."""
    d = codes.shape[1]
    if d == 2:  # the latent coordinates themselves
        mean, basis, axis = np.zeros(2), np.eye(2), ("latent 1", "latent 2")
        where = "the latent plane"
    else:  # coordinates along the main directions, 0 at the training codes' mean
        mean, basis = code_axes(train_codes, 2)
        axis = ("PC 1", "PC 2") if d == 3 else ("PC 1 of the code", "PC 2 of the code")
        where = "the plane of the codes' two main directions, through their mean"
        if d == 3:  # the scatter shows latent coordinates: say where the plane lies in them
            where += "".join(f"; {a} = ({', '.join(f'{v:.2f}' for v in b)})" for a, b in zip(axis, basis))
    coords = (codes - mean) @ basis.T
    lo, hi = np.percentile(coords, 1, axis=0), np.percentile(coords, 99, axis=0)
    across, down = np.linspace(lo[0], hi[0], n), np.linspace(hi[1], lo[1], n)  # the top row is the high end
    grid = mean + across[None, :, None] * basis[0] + down[:, None, None] * basis[1]
    images = _u8(dec(grid.reshape(n * n, -1))).reshape(n, n, *image_shape)
    return figures.image_grid(
        images, out, f"The decoder over {where}: {axis[0]} across, {axis[1]} down, each from the test codes' 1st "
                     f"to 99th percentile", coordinate_labels(across),
        [f"{axis[1]} = {v}" for v in coordinate_labels(down)])


# ----------------------------------------------------------------------------------------- run

def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out.params if isinstance(out, Codec) else out)  # a Codec is one leaf to jax: its arrays
    return out, time.perf_counter() - t


def run(workdir: str, step: int | None = None, out: str | None = None, data: str | None = None,
        interp_steps: int = 10, cache_dir: str | None = None, best_steps: int = 0) -> dict[str, Any]:
    """Evaluate the run in `workdir` into `out` (default WORKDIR/eval); returns the metrics. best_steps > 0
    also searches the decoder's best code for each test image (best_codes) with that many descent steps."""
    t_start = time.perf_counter()
    hostmem.keep_freed_memory()
    hostmem.run_cpu_programs_inline()
    if not 2 <= interp_steps <= MAX_INTERP_STEPS:
        raise UsageError(f"--interp-steps must be between 2 and {MAX_INTERP_STEPS} (got {interp_steps})")
    if best_steps < 0:
        raise UsageError(f"--best-codes must be 0 (off) or a number of descent steps, about 100 (got {best_steps})")
    saved = load_config(workdir)  # first: a --workdir that is a file was blamed on the --out made from it
    out = _check_out(out, workdir, data or saved.data)
    use_compilation_cache(saved.cache_dir if cache_dir is None else cache_dir)
    cfg, state, ds = restore(workdir, step, data, cache_dir)
    step_done = int(jax.device_get(state.step))
    print(f"evaluating {workdir} at step {step_done}: {ds.test_images.shape[0]} test images, "
          f"{ds.train_images.shape[0]} training images, {cfg.latent_dim}-D code", flush=True)

    dev = jax.local_devices()[0]
    test_x, test_mask = pad_to_multiple(ds.test_images, batch_size_for(len(ds.test_images)))
    train_x, _ = pad_to_multiple(ds.train_images, batch_size_for(len(ds.train_images)))
    test_x, train_x = jax.device_put(test_x, dev), jax.device_put(train_x, dev)
    n_test, n_train = len(ds.test_images), len(ds.train_images)

    model = model_from_config(cfg, ds.image_shape)
    ae = autoencoder_codec(model, state.params)
    compile_encode_split(ae, test_x)  # outside the timing
    ae_test, t_encode = _timed(encode_split, ae, test_x)
    heads = chosen_heads(model, state.params, test_x, ae_test)[:n_test] if cfg.encoder_heads > 1 else None
    wins = figures.head_shares(heads, cfg.encoder_heads) if heads is not None else None
    ae_train = encode_split(ae, train_x)
    pca, t_pca = _timed(fit_pca_codec, ds, cfg.latent_dim)
    test_codes = {"ae": ae_test, "pca": encode_split(pca, test_x)}  # pad rows included
    codes = {"ae_test": ae_test[:n_test], "ae_train": ae_train[:n_train],
             "pca_test": test_codes["pca"][:n_test], "pca_train": encode_split(pca, train_x)[:n_train]}

    results: dict[str, dict] = {}
    knn_k = min(KNN_K, len(ds.train_images))
    if knn_k < KNN_K:
        print(f"note: the class accuracy votes over {knn_k} neighbours, not {KNN_K}: the training split has "
              f"{len(ds.train_images)} images")
    for codec, key in ((ae, "ae"), (pca, "pca")):
        m = {f"test_{k}": v for k, v in
             reconstruction_metrics(codec, test_x, test_mask, codes=test_codes[key]).items()}
        if cfg.noise > 0:
            m.update({f"noisy_test_{k}": v for k, v in
                      reconstruction_metrics(codec, test_x, test_mask, cfg.corruption, cfg.noise).items()})
        nn = np.asarray(nearest_neighbours(codes[f"{key}_test"], codes[f"{key}_train"], k=knn_k))
        m[f"knn{knn_k}_accuracy"] = knn_accuracy(nn, ds.train_labels, ds.test_labels, len(ds.class_names))
        results[codec.name] = m
    noise = (noise_curve((ae, pca), test_x, test_mask, cfg.corruption, curve_strengths(cfg.corruption, cfg.noise),
                         {0.0: {c.name: results[c.name]["test_mse"] for c in (ae, pca)},
                          cfg.noise: {c.name: results[c.name]["noisy_test_mse"] for c in (ae, pca)}})
             if cfg.noise > 0 else None)
    best = None
    if best_steps:
        print(f"searching the best code of each of the {n_test:,} test images ({best_steps} descent steps"
              + ("; on CPU this takes minutes for a small model, an hour or more for the default one)"
                 if dev.platform == "cpu" else ")"), flush=True)
        t = last = time.perf_counter()
        first: tuple[float, int] | None = None  # the pace is taken after the first batch (candidates, compile)

        def report(done: int) -> None:
            nonlocal last, first
            now = time.perf_counter()
            if first is None:
                first = (now, done)
            elif now - last >= BEST_REPORT_EVERY and done < n_test:
                last = now
                pace = (now - first[0]) / (done - first[1])
                print(f"best codes: {done:,} of {n_test:,} test images in {now - t:.0f} s, about "
                      f"{pace * (n_test - done):.0f} s left", flush=True)
        z, err, enc_err, n_cand = jax.block_until_ready(best_codes(ae, test_x, ae_test, codes["ae_train"],
                                                                   best_steps, report=report))
        best = {f"test_{k}": v for k, v in reconstruction_metrics(ae, test_x, test_mask, codes=z).items()}
        gain = 1 - (np.asarray(err) / np.maximum(np.asarray(enc_err), 1e-12))[test_mask > 0]
        best.update(steps=best_steps, candidates=n_cand, seconds=time.perf_counter() - t,
                    median_gain=float(np.median(gain)), improved=float(np.mean(gain > 0.01)))
        codes.update(best_test=z[:n_test], best_mse=err[:n_test], encoder_mse=enc_err[:n_test])
    codes = {k: np.asarray(v) for k, v in codes.items()}
    found = {"best_codes": codes["best_test"], "best_mse": codes["best_mse"],
             "encoder_mse": codes["encoder_mse"]} if best else {}
    baseline = mean_image_mse(ds.train_images, ds.test_images)
    table = format_table(results)

    tmp, made = _output_paths(out)
    with sigterm_raises():  # armed first: a SIGTERM just after the partial folder is made must remove it too
        try:  # an error, Ctrl-C or SIGTERM (a batch scheduler's) leaves nothing half-written behind
            _start_output(tmp, out)
            _save_latents(tmp, codes["ae_test"], ds, **found, **({"heads": heads} if heads is not None else {}))
            files = make_figures(cfg, ae, pca, ds, codes, tmp, interp_steps, heads)
            curve = figures.loss_curve(workdir, os.path.join(tmp, "loss_curve.png"), results[pca.name]["test_mse"],
                                       baseline, step=step_done)
            if curve:
                files["loss_curve"] = os.path.basename(curve)
            if noise:
                files["noise_curve"] = os.path.basename(figures.noise_curve(
                    noise["strengths"], {"autoencoder": noise[ae.name], pca.name: noise[pca.name],
                                         "the corrupted input itself": noise["input"]},
                    cfg.noise, cfg.noise_levels == "uniform", cfg.corruption, os.path.join(tmp, "noise_curve.png")))
            spe = figures.epoch_positions(figures.per_epoch(figures.read_metrics(workdir)))[1]
            metrics = {"workdir": os.path.abspath(workdir), "step": step_done,
                       "epochs_done": step_done / spe if spe else None, "data": cfg.data, "n_test": n_test,
                       "n_train": n_train, "image_shape": list(ds.image_shape), "latent_dim": cfg.latent_dim,
                       "models": results,
                       "mean_image_test_mse": baseline,
                       "chance_accuracy": chance_accuracy(ds.train_labels, ds.test_labels),
                       "class_names": list(ds.class_names),
                       **({"best_codes": best} if best else {}),
                       **({"encoder_heads": {"wins": wins.tolist()}} if wins is not None else {}),
                       **({"noise_curve": noise} if noise else {}),
                       "seconds": {"encode_test": t_encode, "pca_fit": t_pca, "total": time.perf_counter() - t_start},
                       "config": json.loads(cfg.to_json())}
            pages.index(os.path.join(tmp, "index.html"), cfg, metrics, table, files)
            with open(os.path.join(tmp, "metrics.json"), "w") as fh:
                json.dump(_finite_or_null(metrics), fh, indent=2, allow_nan=False)
            _finish_output(tmp, out)
        except BaseException:
            _remove_output(tmp, made)
            raise
    print(table)
    if wins is not None:
        print(f"encoder heads: {pages.heads_text(wins)}")
    if best:
        print(pages.best_codes_text(best, results[ae.name]["test_mse"]))
    if noise:
        print(pages.noise_curve_text(noise, cfg.corruption, ae.name, pca.name))
    print(f"for scale: the mean training image, one output for every input, has test MSE {baseline:.4f}; "
          f"{pages.chance_text(metrics['chance_accuracy'], len(ds.class_names))}")
    if pages.untrained(metrics):
        print(f"note: the autoencoder reconstructs no better than that mean image (test MSE "
              f"{results[ae.name]['test_mse']:.4f}): it has not learned yet at step {step_done}, so its figures "
              f"show little; train it longer")
    print(f"encoded {n_test:,} test images in {t_encode:.2f} s ({n_test / t_encode:,.0f} images/s); PCA fit "
          f"{t_pca:.2f} s; evaluate took {time.perf_counter() - t_start:.1f} s in all")
    print(f"wrote {out}/index.html")
    return metrics


def _finite_or_null(value):
    """value with every NaN or infinity (a model that diverged) as None: json writes those as NaN/Infinity,
    which is not JSON, and strict readers (jq, JavaScript's JSON.parse) refuse the whole file."""
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def format_table(results: dict[str, dict]) -> str:
    names = list(results)
    rows = [k for k in results[names[0]]]
    label = {"mse": "MSE", "mae": "MAE", "psnr": "PSNR (dB)", "ssim": "SSIM"}
    lines = [f"{'test split':<26}" + "".join(f"{n:>14}" for n in names)]
    for r in rows:
        if r == pages.knn_key(results[names[0]]):
            text = f"{pages.knn_neighbours(r)}-NN class accuracy"
            vals = [f"{100 * results[n][r]:.1f} %" for n in names]
        else:
            kind = r.split("_")[-1]
            text = ("noisy input " if r.startswith("noisy") else "") + label[kind]
            vals = [f"{results[n][r]:.2f}" if kind == "psnr" else f"{results[n][r]:.4f}" for n in names]
        lines.append(f"{text:<26}" + "".join(f"{v:>14}" for v in vals))
    return "\n".join(lines)


def _save_latents(out: str, codes: np.ndarray, ds: Dataset, **more: np.ndarray) -> None:
    """latents.npz and latents.csv: the test codes; `more` goes into latents.npz too (with --best-codes, the best
    codes found and each test image's MSE from them and from the encoder's; with encoder heads, the head each code
    came from)."""
    np.savez(os.path.join(out, "latents.npz"), codes=codes, labels=ds.test_labels,
             class_names=np.array(ds.class_names), **more)
    with open(os.path.join(out, "latents.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "label", "class"] + [f"z{i + 1}" for i in range(codes.shape[1])])
        for i, (z, y) in enumerate(zip(codes, ds.test_labels)):
            w.writerow([i, int(y), ds.class_names[int(y)]] + [f"{v:.6g}" for v in z])


def _check_out(out: str | None, workdir: str, data: str = "tfds") -> str:
    """The output folder (default WORKDIR/eval), refused when replacing it would lose something: a file, the run
    itself or a folder holding it, the current folder, or a folder of other things than an earlier evaluation; or
    when it lies inside the dataset's folder `data`, whose images its figures would join."""
    path = out or os.path.join(workdir, "eval")
    flag = f"--out {out}" if out else path
    if inside_folder(path, data):
        raise UsageError(f"{flag} is inside the dataset's folder {data}: its files would change the dataset (under "
                         f"train/ or test/ they are read as images of a class of their own; anywhere in it they make "
                         f"each run decode the images again); give --out a folder outside it")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} is a file: give {'a folder' if out else '--out FOLDER'} (evaluate.py writes "
                         f"index.html, the figures and metrics.json into it)")
    if within(workdir, path):
        raise UsageError(f"{flag} is or holds the run's workdir {workdir}: give a folder of its own, e.g. "
                         f"{os.path.join(workdir, 'eval-2')}")
    if within(os.getcwd(), path):
        raise UsageError(f"{flag} is the current folder or holds it: give a folder of its own, e.g. eval-2")
    entries = set(os.listdir(path)) if os.path.isdir(path) else set()
    if entries and not (checkpoints.is_evaluation(path) and not {"config.json", "checkpoints"} & entries):
        raise UsageError(f"{flag} holds files that are not an evaluation (no index.html and metrics.json): give a "
                         f"new or empty folder, or an earlier evaluation's (it is moved aside, not deleted)")
    parent = os.path.dirname(os.path.abspath(path))
    missing = _missing_folders(parent)
    parent = os.path.dirname(missing[-1]) if missing else parent  # the nearest folder that exists
    if not os.path.isdir(parent):
        raise UsageError(f"{flag}: {parent} is a file, not a folder; pick another --out")
    try:  # by writing there, before the evaluation's minutes: os.access says yes to root in /proc, for one
        os.rmdir(tempfile.mkdtemp(prefix=".jaxae-write-check-", dir=parent))
    except OSError as e:
        raise UsageError(f"{flag}: cannot write in {parent} ({e.strerror}); pick a writable folder") from None
    return path


def _output_paths(out: str) -> tuple[str, list[str]]:
    """The sibling folder to write into (it replaces `out` only once everything is written), and the parent
    folders that making it will make, deepest first (_remove_output removes them again when they are empty)."""
    parent = os.path.dirname(os.path.abspath(out))
    return os.path.join(parent, f".{os.path.basename(os.path.abspath(out))}.partial-{os.getpid()}"), \
        _missing_folders(parent)


def _start_output(tmp: str, out: str) -> None:
    """Make the folder of _output_paths, with its parents."""
    try:
        os.makedirs(tmp, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write there ({e.strerror}); pick a writable folder") from None


def _missing_folders(folder: str) -> list[str]:
    """`folder` and those of its parents that do not exist, deepest first."""
    missing = []
    while not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def _remove_output(tmp: str, made: list[str]) -> None:
    """What a failed or interrupted evaluation wrote: its partial folder and the empty parents it made."""
    shutil.rmtree(tmp, ignore_errors=True)
    for folder in made:
        try:
            os.rmdir(folder)
        except OSError:  # not empty: something else is there now
            break


def _finish_output(tmp: str, out: str) -> None:
    """Move a previous evaluation aside (never delete a result), then put the new one in its place."""
    if os.path.exists(out):
        if os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)
        else:
            old = f"{out.rstrip('/')}-previous-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(out, old)
            print(f"note: moved the previous contents of {out} to {old}")
    os.replace(tmp, out)
