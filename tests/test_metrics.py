"""metrics: the PCA baseline, SSIM and k-nearest neighbours on hand-made data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import metrics


def test_mean_image_mse_is_the_test_error_of_the_mean_training_image_at_any_chunk_size():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (37, 5, 4, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (11, 5, 4, 3), dtype=np.uint8)
    want = np.mean(np.square(test / 255.0 - (train / 255.0).mean(axis=0)))
    for chunk in (1, 4, 11, 1000):  # a last partial chunk, exact multiples, one chunk
        assert metrics.mean_image_mse(train, test, chunk) == pytest.approx(want, rel=1e-12)


def test_pca_reconstructs_low_rank_data_exactly():
    rng = np.random.default_rng(0)
    mean = rng.uniform(0, 1, 48)
    x = (mean + rng.normal(size=(200, 3)) @ rng.normal(size=(3, 48))).astype(np.float32)
    pca = metrics.fit_pca(x, 3)
    c = np.asarray(pca["components"])
    np.testing.assert_allclose(c @ c.T, np.eye(3), atol=1e-5)
    recon = metrics.pca_decode(pca, metrics.pca_encode(pca, jnp.asarray(x)), (48,))
    np.testing.assert_allclose(recon, x, atol=1e-4)


@pytest.mark.parametrize("block", [500, 100, 77, 1])  # one block, exact multiples, a remainder, row by row
def test_pca_finds_the_leading_components_of_full_rank_data_in_blocks_of_any_size(block):
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(500, 40)) * np.geomspace(5, 0.01, 40)).astype(np.float32)  # decaying spectrum
    pca = metrics.fit_pca(x, 4, block=block)
    np.testing.assert_allclose(pca["mean"], x.mean(0), atol=1e-5)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    c = np.asarray(pca["components"])
    np.testing.assert_allclose(c.T @ c, vt[:4].T @ vt[:4], atol=1e-4)  # the same subspace


def test_pca_of_uint8_rows_scales_them_block_by_block():
    rng = np.random.default_rng(2)  # uint8 pixels with a decaying spectrum: well-separated components
    x = np.clip(128 + rng.normal(size=(90, 12)) * np.geomspace(60, 1, 12), 0, 255).astype(np.uint8)
    whole, blocks = metrics.fit_pca(x.astype(np.float32) / 255, 2), metrics.fit_pca(x, 2, 1 / 255, block=16)
    np.testing.assert_allclose(blocks["mean"], whole["mean"], atol=1e-6)
    np.testing.assert_allclose(np.abs(blocks["components"] @ np.asarray(whole["components"]).T), np.eye(2),
                               atol=1e-4)


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    x = jnp.asarray(np.random.default_rng(0).uniform(0.2, 0.8, (2, 16, 16, 3)), jnp.float32)
    np.testing.assert_allclose(metrics.ssim(x, x), 1.0, rtol=1e-5)
    noisy = [x + s * jax.random.normal(jax.random.PRNGKey(0), x.shape) for s in (0.02, 0.1, 0.3)]
    scores = [float(metrics.ssim(n, x).mean()) for n in noisy]
    assert 1 > scores[0] > scores[1] > scores[2]
    np.testing.assert_allclose(metrics.ssim(noisy[1], x), metrics.ssim(x, noisy[1]), rtol=1e-5)


@pytest.mark.parametrize("shape", [(32, 32, 3), (12, 17, 1), (7, 9, 2)])
def test_ssim_equals_a_plain_numpy_one(shape):
    """Wang et al.'s SSIM, its Gaussian filter a numpy correlation along each axis in turn ('valid'), against
    metrics.ssim's matmuls: the same to float32 rounding, for CIFAR's size, odd sizes and a window under 11."""
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 1, (3, *shape)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    size = metrics.ssim_window(*shape[:2])
    g = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / (1.5 * size / 11)) ** 2)
    g /= g.sum()

    def blur(x):
        for axis in (1, 2):
            x = np.apply_along_axis(lambda v: np.correlate(v, g, "valid"), axis, x.astype(np.float64))
        return x

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    want = (((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
            ).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(jax.jit(metrics.ssim)(a, b)), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(8, 8), (7, 64), (2, 5)])
def test_ssim_of_images_under_the_11x11_window_is_a_number(shape):
    # an 11x11 'valid' window left no position on an 8x8 image: SSIM was NaN, and metrics.json held NaN
    assert metrics.ssim_window(*shape) == {(8, 8): 7, (7, 64): 7, (2, 5): 1}[shape]
    assert metrics.ssim_window(32, 32) == 11 and metrics.ssim_window(11, 40) == 11
    x = jnp.asarray(np.random.default_rng(0).uniform(0.2, 0.8, (2, *shape, 3)), jnp.float32)
    np.testing.assert_allclose(metrics.ssim(x, x), 1.0, rtol=1e-5)
    noisy = x + 0.1 * jax.random.normal(jax.random.PRNGKey(0), x.shape)
    assert np.all(np.isfinite(metrics.ssim(noisy, x))) and float(metrics.ssim(noisy, x).mean()) < 1


def test_chance_accuracy_is_the_test_share_of_the_commonest_training_class():
    assert metrics.chance_accuracy(np.array([0, 1, 1, 2]), np.array([1, 0, 2, 2, 1])) == pytest.approx(0.4)
    assert metrics.chance_accuracy(np.array([3, 3]), np.array([3, 3, 3])) == 1.0


def test_nearest_neighbours_match_brute_force_at_any_chunk_size():
    rng = np.random.default_rng(0)
    base, queries = rng.normal(size=(300, 3)).astype(np.float32), rng.normal(size=(37, 3)).astype(np.float32)
    want = np.argsort(((queries[:, None] - base[None]) ** 2).sum(-1), axis=1)[:, :5]
    for chunk in (4, 37, 64):
        got = np.asarray(metrics.nearest_neighbours(jnp.asarray(queries), jnp.asarray(base), k=5, chunk=chunk))
        np.testing.assert_array_equal(got, want)


def test_knn_accuracy_votes_and_breaks_ties_by_nearness():
    base_labels = np.array([0, 1, 1, 2])
    neighbours = np.array([[1, 2, 0], [0, 1, 3], [0, 3, 2]])  # votes: 1 | tie 0,1,2 -> 0 | tie 0,2,1 -> 0
    assert metrics.knn_accuracy(neighbours, base_labels, np.array([1, 0, 0]), 3) == 1.0
    assert metrics.knn_accuracy(neighbours, base_labels, np.array([1, 1, 2]), 3) == pytest.approx(1 / 3)
