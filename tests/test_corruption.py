"""Input corruptions: statistics, range, determinism per key, strength 0 is the identity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import corruption

KEY = jax.random.PRNGKey(0)


def test_gaussian_mean_and_std_on_mid_grey():
    # Mid-grey with sigma 0.05: clipping at 0 and 1 is 10 sigma away, so it cannot bias the statistics.
    x = jnp.full((64, 32, 32, 3), 0.5)
    noisy = np.asarray(corruption.gaussian(KEY, x, 0.05))
    noise = noisy - 0.5
    assert abs(noise.mean()) < 1e-3  # 196k samples: standard error of the mean 1.1e-4
    assert noise.std() == pytest.approx(0.05, rel=0.01)


def test_gaussian_is_clipped_to_the_unit_range():
    x = jnp.concatenate([jnp.zeros((8, 8, 8, 3)), jnp.ones((8, 8, 8, 3))])
    noisy = np.asarray(corruption.gaussian(KEY, x, 1.0))
    assert noisy.min() == 0.0 and noisy.max() == 1.0
    # about half the pixels of each half are pushed out of range and clipped exactly to the border
    assert 0.4 < (noisy[:8] == 0.0).mean() < 0.6 and 0.4 < (noisy[8:] == 1.0).mean() < 0.6


def test_mask_zeroes_the_asked_fraction_of_whole_pixels():
    x = jnp.full((32, 32, 32, 3), 0.7)
    out = np.asarray(corruption.mask(KEY, x, 0.3))
    zeroed = out == 0.0
    assert set(np.unique(out)) <= {0.0, np.float32(0.7)}
    assert (zeroed.all(-1) == zeroed.any(-1)).all()  # all channels of a pixel together
    assert zeroed[..., 0].mean() == pytest.approx(0.3, abs=0.01)


def test_salt_pepper_sets_the_asked_fraction_to_zero_or_one():
    x = jnp.full((32, 32, 32, 3), 0.4)
    out = np.asarray(corruption.salt_pepper(KEY, x, 0.2))
    hit = out[..., 0] != np.float32(0.4)
    assert set(np.unique(out)) <= {0.0, np.float32(0.4), 1.0}
    assert hit.mean() == pytest.approx(0.2, abs=0.01)
    salt = (out[..., 0] == 1.0)[hit].mean()
    assert salt == pytest.approx(0.5, abs=0.03)  # half salt, half pepper
    assert (out[hit] == out[hit][:, :1]).all()  # all channels of a hit pixel together


@pytest.mark.parametrize("kind", ["gaussian", "mask", "salt_pepper"])
def test_deterministic_per_key_and_identity_at_zero(kind):
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 3))
    keys = jax.random.split(KEY, 4)
    a = corruption.corrupt(kind, keys, x, 0.3)
    b = corruption.corrupt(kind, keys, x, 0.3)
    np.testing.assert_array_equal(a, b)
    c = corruption.corrupt(kind, jax.random.split(jax.random.PRNGKey(2), 4), x, 0.3)
    assert not np.array_equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0 and a.shape == x.shape and a.dtype == x.dtype
    # each example depends only on its own key: the same example corrupted alone gives the same result
    np.testing.assert_array_equal(corruption.corrupt(kind, keys[2:3], x[2:3], 0.3), a[2:3])
    assert corruption.corrupt(kind, keys, x, 0.0) is x
    np.testing.assert_array_equal(corruption.CORRUPTIONS[kind](KEY, x, 0.0), x)


@pytest.mark.parametrize("kind, top", [("gaussian", 0.1), ("mask", 0.4), ("salt_pepper", 0.4)])
def test_uniform_levels_give_each_example_its_own_strength_up_to_the_given_one(kind, top):
    n = 512
    x = jnp.full((n, 16, 16, 3), 0.5)  # gaussian: clipping at 0 and 1 is 5 top sigmas away
    keys = jax.random.split(KEY, n)
    out = np.asarray(corruption.corrupt(kind, keys, x, top, "uniform"))
    # per example, the noise's std (gaussian) or the fraction of changed pixels, over the top strength
    level = ((out - 0.5).std(axis=(1, 2, 3)) if kind == "gaussian"
             else (out[..., 0] != np.float32(0.5)).mean(axis=(1, 2))) / top
    assert level.min() < 0.1 and level.max() > 0.85  # near-clean and near-full examples both occur
    assert level.mean() == pytest.approx(0.5, abs=0.05)  # uniform on [0, top): mean top / 2
    assert np.histogram(level, bins=4, range=(0, 1))[0].min() > n / 8  # spread over the range, not clumped
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 and out.dtype == np.float32
    # each example depends only on its own key, and the same keys give the same batch
    np.testing.assert_array_equal(corruption.corrupt(kind, keys[5:7], x[5:7], top, "uniform"), out[5:7])
    np.testing.assert_array_equal(corruption.corrupt(kind, keys, x, top, "uniform"), out)
    # fixed levels are the default, and unchanged by the option: every example at the full strength
    np.testing.assert_array_equal(corruption.corrupt(kind, keys, x, top, "fixed"),
                                  corruption.corrupt(kind, keys, x, top))
    assert corruption.corrupt(kind, keys, x, 0.0, "uniform") is x
    with pytest.raises(ValueError, match="levels must be one of"):
        corruption.corrupt(kind, keys, x, top, "gamma")
