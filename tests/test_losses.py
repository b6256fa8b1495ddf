"""L1 / L2 reconstruction losses on hand-computed cases."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import losses


def test_l2_and_l1_hand_computed():
    pred = jnp.array([[0.0, 0.5], [1.0, 0.25]])
    target = jnp.array([[0.0, 0.0], [0.0, 0.75]])
    # differences 0, 0.5, 1, -0.5: squares 0 + 0.25 + 1 + 0.25 = 1.5, abs 0 + 0.5 + 1 + 0.5 = 2, over 4 pixels
    assert float(losses.l2(pred, target)) == pytest.approx(1.5 / 4)
    assert float(losses.l1(pred, target)) == pytest.approx(2.0 / 4)
    assert losses.LOSSES["l2"] is losses.l2 and losses.LOSSES["l1"] is losses.l1


def test_losses_are_zero_on_a_perfect_reconstruction_and_symmetric():
    x = jnp.linspace(0, 1, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
    assert float(losses.l2(x, x)) == 0.0 and float(losses.l1(x, x)) == 0.0
    y = x[::-1]
    assert float(losses.l2(x, y)) == pytest.approx(float(losses.l2(y, x)))
    assert float(losses.l1(x, y)) == pytest.approx(float(losses.l1(y, x)))


def test_averaged_per_pixel_not_summed():
    # A constant error of 0.1 everywhere gives the same loss for any image size.
    for shape in [(1, 2, 2, 1), (3, 32, 32, 3)]:
        pred = jnp.full(shape, 0.6)
        target = jnp.full(shape, 0.5)
        assert float(losses.l2(pred, target)) == pytest.approx(0.01, rel=1e-5)
        assert float(losses.l1(pred, target)) == pytest.approx(0.1, rel=1e-5)


@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_per_example_means_match_the_batch_loss(kind):
    pred = jnp.zeros((2, 2, 2, 1))
    target = jnp.stack([jnp.full((2, 2, 1), 0.5), jnp.full((2, 2, 1), 1.0)])
    per = np.asarray(losses.per_example(kind, pred, target))
    expected = [0.25, 1.0] if kind == "l2" else [0.5, 1.0]
    np.testing.assert_allclose(per, expected, rtol=1e-6)
    assert per.mean() == pytest.approx(float(losses.LOSSES[kind](pred, target)))
