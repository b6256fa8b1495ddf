"""The fast paths compute what the plain ones do: jaxae.models.cpu_conv (the tap-matmul kernel gradient of the
pixel-shuffle conv, the shifted forward pass and kernel gradient of convs to few channels, Winograd's F(4x4, 3x3))
against lax's convolution and XLA's own gradients, on small shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxae import models


def _grads(conv_fn, x, w, strides, padding):
    def f(x, w):
        y = conv_fn(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jnp.sin(y))  # a non-trivial output gradient
    return jax.jit(jax.grad(f, argnums=(0, 1)))(x, w)  # one compile, not one per op (Winograd's are many)


@pytest.mark.parametrize("taps", [False, True])
@pytest.mark.parametrize("strides,padding,shape,cout", [
    ((1, 1), "SAME", (3, 6, 6, 4), 16),   # the pixel-shuffle conv: 4x the input channels
    ((2, 2), "SAME", (2, 7, 5, 3), 8),    # odd sizes, stride 2: the general case still matches
    ((1, 1), "SAME", (2, 8, 8, 6), 3),    # few output channels (the RGB head): shifted forward and dw
    ((1, 1), ((0, 1), (2, 0)), (2, 5, 5, 2), 3),  # explicit asymmetric padding, few channels
    ((1, 1), ((0, 1), (2, 0)), (2, 5, 6, 2), 7),  # explicit asymmetric padding, XLA's own paths
])
def test_cpu_conv_matches_lax(strides, padding, shape, cout, taps):
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (3, 3, shape[-1], cout)) * 0.3

    def fast(*a, **k):
        return models.cpu_conv(*a, **k, kernel_grad_taps=taps)

    y_ref = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y_fast = fast(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    shifted = strides == (1, 1) and cout <= models._FEW_CHANNELS
    im2col = strides != (1, 1)  # a matmul of the patches, forward and kernel gradient
    assert models._im2col(strides, w) is im2col
    if shifted or im2col:
        np.testing.assert_allclose(np.asarray(y_fast), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(np.asarray(y_fast), np.asarray(y_ref))  # the same op
    dx_ref, dw_ref = _grads(lax.conv_general_dilated, x, w, strides, padding)
    dx_fast, dw_fast = _grads(fast, x, w, strides, padding)
    np.testing.assert_allclose(np.asarray(dx_fast), np.asarray(dx_ref), rtol=1e-5, atol=1e-5)  # XLA's own dx
    np.testing.assert_allclose(np.asarray(dw_fast), np.asarray(dw_ref), rtol=1e-5, atol=1e-5)
    if not (shifted or im2col):  # dx is XLA's own op on the same inputs (with im2col, on another output gradient)
        np.testing.assert_array_equal(np.asarray(dx_fast), np.asarray(dx_ref))
    if not (taps or shifted or im2col):  # dw too
        np.testing.assert_array_equal(np.asarray(dw_fast), np.asarray(dw_ref))


@pytest.mark.parametrize("shape,cout,strides,padding", [
    ((2, 16, 16, 64), 128, (2, 2), ((0, 1), (0, 1))),   # the default encoder's second downsampling conv
    ((2, 7, 5, 3), 8, (2, 2), ((1, 1), (1, 1))),        # odd sizes, symmetric padding
    ((1, 9, 9, 4), 5, (3, 2), ((0, 0), (2, 1))),        # other strides, asymmetric padding
])
def test_im2col_conv_matches_lax(shape, cout, strides, padding):
    """A strided conv as the matmul of its patches: forward pass and kernel gradient equal lax's conv and XLA's
    gradient to float32 rounding (the same sums in another order)."""
    kx, kw = jax.random.split(jax.random.PRNGKey(7))
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (3, 3, shape[-1], cout)) * 0.1
    cols, out = models._patches(x, (3, 3), strides, padding)
    y_ref = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert out == y_ref.shape[:3] and cols.shape == (np.prod(out), 9 * shape[-1])
    y = models.cpu_conv(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
    for got, want in zip(_grads(models.cpu_conv, x, w, strides, padding),
                         _grads(lax.conv_general_dilated, x, w, strides, padding)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_upsample_bias_last_equals_nn_conv(monkeypatch):
    """The pixel-shuffle conv with _bias_add's bias gradient (_BiasLastConv): the same parameters, initial values,
    output and gradients as nn.Conv's own bias, so checkpoints of either read into the other."""
    x = jax.random.uniform(jax.random.PRNGKey(8), (3, 4, 4, 8))
    model = models.Upsample(6, "pixel_shuffle")

    def run():
        params = model.init(jax.random.PRNGKey(9), x)
        params = jax.tree.map(lambda p: p + 0.01 * jnp.arange(p.size).reshape(p.shape) / p.size, params)  # bias != 0
        loss, grads = jax.value_and_grad(lambda p: jnp.mean(jnp.square(model.apply(p, x) - 0.5)))(params)
        return model.init(jax.random.PRNGKey(9), x), loss, grads, jax.make_jaxpr(model.apply)(params, x)

    monkeypatch.setattr(models, "_BIAS_LAST", False)
    init_ref, loss_ref, grads_ref, jaxpr_ref = run()
    monkeypatch.setattr(models, "_BIAS_LAST", True)
    init, loss, grads, jaxpr = run()
    assert "name=_bias_add" in str(jaxpr) and "name=_bias_add" not in str(jaxpr_ref)
    assert jax.tree.structure(init) == jax.tree.structure(init_ref)
    assert set(init["params"]["Conv_0"]) == {"kernel", "bias"}
    for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(init_ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(float(loss), float(loss_ref), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_upsample_fast_grad_equals_plain_conv():
    """Same parameter tree and the same loss gradient with and without the fast kernel gradient."""
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 4, 4, 8))
    fast, plain = models.Upsample(6, "pixel_shuffle"), models.Upsample(6, "pixel_shuffle", fast_grad=False)
    params = plain.init(jax.random.PRNGKey(2), x)
    assert jax.tree.structure(fast.init(jax.random.PRNGKey(2), x)) == jax.tree.structure(params)

    def loss(m, p):
        return jnp.mean(jnp.square(m.apply(p, x) - 0.5))

    (lf, gf), (lp, gp) = (jax.value_and_grad(lambda p: loss(fast, p))(params),
                          jax.value_and_grad(lambda p: loss(plain, p))(params))
    assert float(lf) == float(lp)
    for a, b in zip(jax.tree.leaves(gf), jax.tree.leaves(gp)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert gf["params"]["Conv_0"]["kernel"].shape == (3, 3, 8, 24)


@pytest.mark.parametrize("size,width,stages,blocks,head,winograd_convs", [
    (16, 4, 2, 1, "conv", 0),     # tiny: every conv below Winograd's 32 channels
    (32, 64, 1, 1, "conv", 3),    # Winograd for the 16x16 convs of 64 channels: both residual blocks and the upsampling
    (16, 64, 1, 1, "conv", 3),    # the same at 8x8
    (8, 64, 1, 1, "conv", 3),     # and at 4x4 (models._WINOGRAD_MIN_SIZE)
    (32, 16, 3, 0, "upsample", 2),  # the quick model: its upsampling convs of 64 and 32 channels, not the head's 16
])
def test_default_model_gradient_matches_plain(monkeypatch, size, width, stages, blocks, head, winograd_convs):
    """The whole default-architecture model (and the quick preset's): fast and plain parameter gradients agree."""
    calls = []
    winograd = models.winograd_conv
    monkeypatch.setattr(models, "winograd_conv", lambda *a: calls.append(a[0].shape) or winograd(*a))
    x = jax.random.uniform(jax.random.PRNGKey(3), (2, size, size, 3))
    model = models.Autoencoder(image_shape=(size, size, 3), width=width, stages=stages, blocks=blocks, hidden=8,
                               mlp_layers=1, head=head)
    params = jax.jit(model.init)(jax.random.PRNGKey(4), x)
    assert len(calls) == winograd_convs  # in init's trace

    def grads():  # jitted (one compile instead of one per op, as in training); a new trace per call
        return jax.jit(jax.grad(lambda p: jnp.mean(jnp.square(model.apply(p, x) - x))))(params)

    g_fast = grads()
    monkeypatch.setattr(models, "cpu_conv", None)  # every conv then falls back to lax's
    g_plain = grads()
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("shape,cout,padding", [
    ((2, 8, 8, 5), 6, ((1, 1), (1, 1))),     # 'SAME', whole 4x4 tiles
    ((2, 9, 7, 4), 8, ((1, 1), (1, 1))),     # odd sizes: the last tiles reach past the image
    ((1, 8, 10, 3), 12, ((0, 1), (2, 0))),   # explicit asymmetric padding
    ((1, 5, 6, 2), 5, ((0, 0), (0, 0))),     # 'VALID'
])
def test_winograd_conv_matches_lax(shape, cout, padding):
    """Winograd's F(4x4, 3x3): forward pass, input and kernel gradients equal lax's conv and XLA's gradients to
    float32 rounding, measured against the largest value (its transforms multiply by up to 8 and divide by 24, so
    its error grows with the values it sums: within 3e-5 of the largest)."""
    kx, kw = jax.random.split(jax.random.PRNGKey(5))
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (3, 3, shape[-1], cout)) * 0.3

    def wino(x, w, strides, padding, dimension_numbers):
        return models.winograd_conv(x, w, padding)

    def close(got, want):
        assert got.shape == want.shape
        assert float(jnp.max(jnp.abs(got - want))) <= 3e-5 * float(jnp.max(jnp.abs(want)))

    close(jax.jit(lambda x, w: wino(x, w, (1, 1), padding, None))(x, w),
          lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")))
    for got, want in zip(_grads(wino, x, w, (1, 1), padding),
                         _grads(lax.conv_general_dilated, x, w, (1, 1), padding)):
        close(got, want)


def test_cpu_conv_takes_winograd_only_where_it_applies():
    """A 16x16 conv of 64 channels runs as Winograd's in cpu_conv (not bit-equal to lax's), and the same conv with a
    negative padding (a crop, which winograd_conv's tiling cannot do) or in bfloat16 is lax's own op."""
    kx, kw = jax.random.split(jax.random.PRNGKey(6))
    x = jax.random.normal(kx, (1, 16, 16, 64))
    w = jax.random.normal(kw, (3, 3, 64, 8)) * 0.1
    for padding, dtype, winograd in [("SAME", jnp.float32, True), (((-1, 1), (1, 1)), jnp.float32, False),
                                     ("SAME", jnp.bfloat16, False)]:
        a, b = x.astype(dtype), w.astype(dtype)
        got = models.cpu_conv(a, b, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        want = lax.conv_general_dilated(a, b, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        assert got.shape == want.shape and got.dtype == want.dtype
        if winograd:
            assert not np.array_equal(np.asarray(got), np.asarray(want))
            assert float(jnp.max(jnp.abs(got - want))) <= 3e-5 * float(jnp.max(jnp.abs(want)))
        else:
            np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


@pytest.mark.parametrize("shape,cin,winograd", [
    ((1, 4, 4), 64, True),      # 4x4: one tile per image
    ((1, 3, 8), 64, False),     # smaller than a tile's output in one direction
    ((2, 16, 16), 64, True),
    ((2, 4, 4), 32, True),      # the quick model's upsampling convs (twenty-seventh session)
    ((2, 16, 16), 16, False),   # too few channels: its head conv
])
def test_winograd_rule(shape, cin, winograd):
    """cpu_conv takes Winograd's path for a stride-1 3x3 float32 conv of at least 32 input channels on images of at
    least 4x4 (models._WINOGRAD_MIN_SIZE)."""
    x = jax.ShapeDtypeStruct((*shape, cin), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, cin, 64), jnp.float32)
    assert models._winograd(x, w, (1, 1), ((1, 1), (1, 1))) is winograd
