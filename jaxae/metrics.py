"""The numbers of an evaluation: reconstruction errors, the PCA baseline, SSIM, PSNR and k-nearest-neighbour class
accuracy."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxae import losses

KNN_K = 10
KNN_CHUNK = 500      # test codes per k-NN chunk: 500 x 50k distances = 100 MB, not 10k x 50k = 2 GB


# ------------------------------------------------------------------------- reconstruction

@functools.partial(jax.jit, static_argnames=("apply_fn", "batch_size"))
def _recon_errors(apply_fn, params, images, mask, batch_size: int):
    def body(carry, i):
        x = lax.dynamic_slice_in_dim(images, i * batch_size, batch_size).astype(jnp.float32) / 255.0
        m = lax.dynamic_slice_in_dim(mask, i * batch_size, batch_size)
        r = apply_fn({"params": params}, x, method="reconstruct")  # no second drawing of a chosen code (heads)
        se = losses.per_example("l2", r, x) * m
        ae = losses.per_example("l1", r, x) * m
        return (carry[0] + se.sum(), carry[1] + ae.sum()), None
    (se, ae), _ = lax.scan(body, (0.0, 0.0), jnp.arange(images.shape[0] // batch_size))
    n = mask.sum()
    return se / n, ae / n


def pad_to_multiple(images: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    n = images.shape[0]
    padded = -(-n // multiple) * multiple
    mask = np.zeros(padded, np.float32)
    mask[:n] = 1
    if padded > n:
        images = np.concatenate([images, np.zeros((padded - n, *images.shape[1:]), images.dtype)])
    return images, mask


def reconstruction_error(state, images_dev, mask_dev, batch_size: int) -> dict[str, float]:
    """Test MSE and MAE of a TrainState's clean reconstructions over a padded on-device split."""
    mse, mae = jax.device_get(_recon_errors(state.apply_fn, state.params, images_dev, mask_dev, batch_size))
    return {"test_mse": float(mse), "test_mae": float(mae)}


# ----------------------------------------------------------------------------- baselines

def mean_image_mse(train_u8: np.ndarray, test_u8: np.ndarray, chunk: int = 1000) -> float:
    """Test MSE (pixels in [0, 1]) of the mean training image: the best a network that ignores its input can
    do. A collapsed autoencoder, one output for every input, lands here (0.0612 for CIFAR-10's test split).
    On the host, in chunks of `chunk` images: 0.4 s and ~50 MB for CIFAR-10."""
    chunks = lambda x: (x[i:i + chunk] for i in range(0, len(x), chunk))  # noqa: E731
    mean = sum(c.sum(axis=0, dtype=np.float64) for c in chunks(train_u8)) / (255.0 * len(train_u8))
    total = sum(np.square(c / 255.0 - mean).sum() for c in chunks(test_u8))
    return float(total / test_u8.size)


def fit_pca(x: jax.Array, n_components: int, scale: float = 1.0, iters: int = 4, oversample: int = 20,
            seed: int = 0, block: int = 4096) -> dict:
    """Top principal components of the rows of x * scale (x [N, D], e.g. uint8 with scale 1/255):
    {"mean": [D], "components": [k, D]} (rows orthonormal).

    A randomised subspace iteration on the centred data: it only multiplies X by thin [D, k + oversample]
    matrices, so 50k CIFAR images cost seconds, where X^T X (3072^2 x 50k) or a full SVD cost minutes on
    CPU; with this many power iterations the leading components match the exact ones (test_metrics).
    X is scaled to float32 `block` rows at a time: in one piece, CIFAR-10's training set took 614 MB more,
    0.75 GB of evaluate.py's 2 GB peak RSS on CPU (docs/performance.md, fourteenth session).
    """
    return _fit_pca(jnp.asarray(x), scale, n_components, iters, oversample, seed, max(1, min(block, len(x))))


@functools.partial(jax.jit, static_argnames=("k", "iters", "oversample", "seed", "block"))
def _fit_pca(x, scale, k: int, iters: int, oversample: int, seed: int, block: int):
    n, d = x.shape
    n_blocks = n // block
    rest = x[n_blocks * block:]  # the last n % block rows
    as_float = lambda rows: rows.astype(jnp.float32) * scale
    rows_of = lambda i: as_float(lax.dynamic_slice_in_dim(x, i * block, block))

    def xv(v):  # X v, one block of rows at a time
        out = lax.fori_loop(0, n_blocks, lambda i, out: lax.dynamic_update_slice_in_dim(
            out, rows_of(i) @ v, i * block, 0), jnp.zeros((n, v.shape[1]), jnp.float32))
        return out.at[n_blocks * block:].set(as_float(rest) @ v)

    def utx(u):  # u^T X, summed over the blocks: faster than X^T u on XLA:CPU
        acc = lax.fori_loop(0, n_blocks, lambda i, acc: acc + lax.dynamic_slice_in_dim(u, i * block, block).T
                            @ rows_of(i), jnp.zeros((u.shape[1], d), jnp.float32))
        return acc + u[n_blocks * block:].T @ as_float(rest)

    mean = utx(jnp.ones((n, 1), jnp.float32))[0] / n
    l = min(k + oversample, n, d)
    xc = lambda v: xv(v) - mean @ v                       # (X - mean) v without a centred copy of X
    xtc = lambda u: utx(u).T - jnp.outer(mean, u.sum(0))  # (X - mean)^T u
    q = jnp.linalg.qr(xtc(jax.random.normal(jax.random.PRNGKey(seed), (n, l))))[0]
    q = lax.fori_loop(0, iters, lambda _, q: jnp.linalg.qr(xtc(xc(q)))[0], q)
    # Rayleigh-Ritz: exact SVD of the small projected matrix (X - mean) Q.
    _, _, vt = jnp.linalg.svd(xc(q), full_matrices=False)
    return {"mean": mean, "components": (q @ vt.T).T[:k]}


def pca_encode(pca: dict, x: jax.Array) -> jax.Array:
    return (x.reshape(x.shape[0], -1) - pca["mean"]) @ pca["components"].T


def pca_decode(pca: dict, z: jax.Array, shape) -> jax.Array:
    # Not clipped to [0, 1], so the figures match data/README.md's numpy reference.
    return (z @ pca["components"] + pca["mean"]).reshape(z.shape[0], *shape)


# ---------------------------------------------------------------------------------- metrics

def _gaussian_window(size: int = 11, sigma: float = 1.5) -> jax.Array:
    g = jnp.exp(-0.5 * ((jnp.arange(size) - (size - 1) / 2) / sigma) ** 2)
    return g / g.sum()


def ssim_window(height: int, width: int) -> int:
    """The SSIM window's side for images of this size: Wang et al.'s 11, or for an image under 11 pixels on a
    side the largest odd size that fits it (an 11x11 'valid' window leaves no position there: SSIM was NaN)."""
    side = min(11, height, width)
    return side if side % 2 else side - 1


def _valid_filter(n: int, g: jax.Array) -> jax.Array:
    """[n - len(g) + 1, n]: the matrix of a 'valid' correlation with g along an axis of n pixels (row i holds g at
    columns i .. i + len(g) - 1)."""
    k = jnp.arange(n)[None, :] - jnp.arange(n - g.shape[0] + 1)[:, None]
    return jnp.where((k >= 0) & (k < g.shape[0]), g[jnp.clip(k, 0, g.shape[0] - 1)], 0.0)


def ssim(a: jax.Array, b: jax.Array, max_val: float = 1.0) -> jax.Array:
    """SSIM of each image pair [B, H, W, C] -> [B] (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5,
    K1 0.01, K2 0.03, 'valid' filtering), averaged over positions and channels. Images under 11 pixels on a
    side get a smaller window (`ssim_window`) with sigma scaled to it."""
    size = ssim_window(*a.shape[1:3])
    g = _gaussian_window(size, 1.5 * size / 11)
    rows, cols = _valid_filter(a.shape[1], g), _valid_filter(a.shape[2], g)

    def blur(x):  # the separable Gaussian filter, 'valid' borders, of each channel
        # as two small matmuls: as depthwise convs (feature_group_count=C), XLA:CPU took 8.2 s for the 10k test
        # images, against 0.44 s, the same SSIM to 2e-7 (docs/performance.md, thirty-second session). HIGHEST: not
        # TF32 on a GPU.
        x = jnp.einsum("ih,bhwc->biwc", rows, x, precision=lax.Precision.HIGHEST)
        return jnp.einsum("jw,biwc->bijc", cols, x, precision=lax.Precision.HIGHEST)

    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean(axis=(1, 2, 3))


def psnr(mse: float) -> float:
    """Global PSNR in dB of images in [0, 1]: 10 log10(1 / MSE over the whole split)."""
    return float(10 * np.log10(1.0 / mse))


# ------------------------------------------------------------------------------------- k-NN

@functools.partial(jax.jit, static_argnames=("k", "chunk"))
def nearest_neighbours(queries: jax.Array, base: jax.Array, k: int = KNN_K, chunk: int = KNN_CHUNK) -> jax.Array:
    """Indices [Nq, k] of the k nearest rows of base (Euclidean), nearest first; the queries go through
    in chunks so only chunk x len(base) distances exist at once."""
    n = queries.shape[0]
    q = jnp.pad(queries, ((0, -n % chunk), (0, 0))).reshape(-1, chunk, queries.shape[1])
    base_sq = jnp.sum(base * base, axis=1)

    def one(qc):
        d = base_sq[None, :] - 2 * qc @ base.T  # + |q|^2, the same for every base row of a query
        return lax.top_k(-d, k)[1]
    return lax.map(one, q).reshape(-1, k)[:n]


def knn_accuracy(neighbours: np.ndarray, base_labels: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    """Majority vote of the neighbours' labels; a tie goes to the class with the nearer neighbours."""
    votes = np.zeros((len(labels), n_classes))
    weight = 1 + 1e-3 * (neighbours.shape[1] - np.arange(neighbours.shape[1])) / neighbours.shape[1]
    np.add.at(votes, (np.arange(len(labels))[:, None], base_labels[neighbours]), weight)
    return float(np.mean(votes.argmax(1) == labels))


def chance_accuracy(base_labels: np.ndarray, labels: np.ndarray) -> float:
    """The class accuracy of a guess that ignores the code: always the commonest class of base_labels."""
    return float(np.mean(labels == np.bincount(base_labels).argmax()))
