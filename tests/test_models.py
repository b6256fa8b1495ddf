"""Encoder / Decoder / Autoencoder: shapes, output range, encode/decode, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxae import losses, models
from jaxae.config import UsageError
from jaxae.models import (Autoencoder, Decoder, Encoder, depth_to_space, model_from_config, space_to_depth,
                          stage_shapes)

SMALL = dict(width=4, hidden=8)


# CIFAR's shape with the default latent size, and each other latent size once (not every pair: one compile each,
# 3-6 s, and the two do not interact); 28x28 over 3 stages is the uneven case (28 -> 14 -> 7 -> 4).
@pytest.mark.parametrize("image_shape,stages,latent_dim", [((32, 32, 3), 3, 3), ((28, 28, 1), 3, 1),
                                                           ((28, 28, 1), 3, 8)])
def test_shapes_and_range(image_shape, stages, latent_dim):
    model = Autoencoder(image_shape=image_shape, latent_dim=latent_dim, stages=stages, **SMALL)

    @jax.jit  # one compile per model: eager Flax dispatches (and compiles) op by op
    def run(x):
        params = model.init(jax.random.PRNGKey(1), x)["params"]
        z = model.apply({"params": params}, x, method=Autoencoder.encode)
        decoded = model.apply({"params": params}, z, method=Autoencoder.decode)
        far = model.apply({"params": params}, jnp.full((3, latent_dim), 100.0), method=Autoencoder.decode)
        return z, model.apply({"params": params}, x), decoded, far

    z, recon, decoded, far = run(jax.random.uniform(jax.random.PRNGKey(0), (2, *image_shape)))
    assert z.shape == (2, latent_dim) and z.dtype == jnp.float32
    assert recon.shape == (2, *image_shape)
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    # __call__ is decode(encode(x)); decode takes any latent point, far outside the data too.
    np.testing.assert_allclose(decoded, recon, rtol=1e-6)
    assert far.shape == (3, *image_shape) and float(far.min()) >= 0.0 and float(far.max()) <= 1.0


@pytest.mark.parametrize("upsample", ["pixel_shuffle", "conv_transpose", "resize"])
def test_encoder_and_decoder_modules_alone(upsample):
    enc = Encoder(latent_dim=3, stages=2, **SMALL)
    dec = Decoder(image_shape=(16, 16, 3), stages=2, upsample=upsample, **SMALL)
    x = jnp.full((4, 16, 16, 3), 0.5)
    z, y = jax.jit(lambda x: (z := enc.init_with_output(jax.random.PRNGKey(0), x)[0],
                              dec.init_with_output(jax.random.PRNGKey(1), z)[0]))(x)
    assert z.shape == (4, 3)
    assert y.shape == (4, 16, 16, 3) and bool(jnp.all((y >= 0) & (y <= 1)))


def test_stage_shapes_and_depth_to_space():
    assert stage_shapes(32, 32, 3) == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert stage_shapes(28, 28, 3) == [(28, 28), (14, 14), (7, 7), (4, 4)]
    x = jnp.arange(2 * 1 * 1 * 4).reshape(2, 1, 1, 4)
    y = depth_to_space(x, 2)
    assert y.shape == (2, 2, 2, 1)
    np.testing.assert_array_equal(y[0, :, :, 0], [[0, 1], [2, 3]])


def test_model_from_config_refuses_images_too_small(tiny_config, tmp_path):
    model = model_from_config(tiny_config(tmp_path, latent_dim=5), (16, 16, 3))
    assert model.latent_dim == 5 and model.width == 8 and model.image_shape == (16, 16, 3)
    with pytest.raises(UsageError, match="--stages"):
        model_from_config(tiny_config(tmp_path, stages=3), (4, 4, 3))


@pytest.fixture(scope="module")
def grad_setup():
    """A tiny model with every kind of layer (residual blocks with LayerNorm, MLP) and its loss gradient."""
    model = Autoencoder(image_shape=(8, 8, 3), latent_dim=3, width=4, stages=2, blocks=1, hidden=8, norm="layer")
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 3))
    params = jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]
    return params, jax.jit(jax.grad(lambda p: losses.l2(model.apply({"params": p}, x), x)))(params)


def test_every_parameter_gets_a_nonzero_gradient(grad_setup):
    params, grads = grad_setup
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    assert len(flat) == len(jax.tree.leaves(params)) > 10
    # on the host: jnp here would compile 4 small ops per parameter shape
    dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g) != 0)]
    assert not dead, f"parameters with zero gradient: {dead}"
    assert all(np.all(np.isfinite(np.asarray(g))) for _, g in flat)


class _Float64Numpy:
    """jax.numpy with float32 meaning float64: the model pins its code and output to float32 by design."""
    float32 = jnp.float64

    def __getattr__(self, name):
        return getattr(jnp, name)


def test_gradients_match_finite_differences_in_float64(monkeypatch):
    # check_grads compares the VJP with central differences along a random direction through every
    # parameter; in float64 a small eps keeps both round-off and the h^2 term far below its tolerance
    # (LayerNorm over a few near-equal channels is strongly curved at init).
    from jaxae import models

    monkeypatch.setattr(models, "jnp", _Float64Numpy())
    with jax.enable_x64(True):
        model = Autoencoder(image_shape=(8, 8, 3), latent_dim=3, width=4, stages=2, blocks=1, hidden=8,
                            norm="layer", dtype=jnp.float64)
        x = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 3), jnp.float64)
        params = jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        loss = jax.jit(lambda p: losses.l2(model.apply({"params": p}, x), x))
        assert loss(params).dtype == jnp.float64
        check_grads(loss, (params,), order=1, modes=("rev",), eps=1e-6)  # rev: the model has custom VJPs


@pytest.mark.parametrize("options", [{"head": "upsample"}, {"mlp": "residual"}, {"fourier": 4}])
def test_architecture_options(options):
    """Each option changes the network (new or missing parameters), keeps shapes and the [0, 1] range, and
    every parameter of it learns."""
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 12, 12, 3))

    def model(**kw):
        return Autoencoder(image_shape=(12, 12, 3), latent_dim=3, width=4, stages=2, blocks=0, hidden=8, mlp_layers=3,
                           **kw)

    plain = jax.eval_shape(model().init, jax.random.PRNGKey(1), x)["params"]  # no compile
    net = model(**options)

    @jax.jit  # one compile: init, loss, gradient and output together
    def run(x):
        params = net.init(jax.random.PRNGKey(1), x)["params"]
        (loss, y), grads = jax.value_and_grad(
            lambda p: (lambda y: (losses.l2(y, x), y))(net.apply({"params": p}, x)), has_aux=True)(params)
        return params, loss, grads, y

    params, loss, grads, y = run(x)
    names = lambda p: {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(p)[0]}  # noqa: E731
    assert names(params) != names(plain)
    assert y.shape == x.shape and bool(jnp.all((y >= 0) & (y <= 1))) and np.isfinite(float(loss))
    dead = [jax.tree_util.keystr(k) for k, g in jax.tree_util.tree_flatten_with_path(grads)[0]
            if not bool(jnp.any(g != 0))]
    assert not dead, f"parameters with zero gradient: {dead}"
    if options.get("head") == "upsample":  # no full-resolution conv: the decoder ends in the last Upsample
        assert not any(k.startswith("['decoder']['Conv_") for k in names(params))
    if options.get("mlp") == "residual":
        assert any("LayerNorm" in k and "decoder" in k for k in names(params))


@pytest.mark.parametrize("preset, decoder, size", [
    # the default model before the thirty-third session (OLD_MODEL)
    ("long", ["Dense_0", "Dense_1", "Dense_2", "Dense_3", "ResBlock_0", "ResBlock_1", "ResBlock_2", "Upsample_0",
              "Upsample_1", "Upsample_2", "Conv_0"], 8_799_686),
    # the default model since (and the quick preset's since the twenty-ninth): 3 x 4 codes out of the encoder
    ("default", ["Dense_0", "Dense_1", "Dense_2", "Dense_3", "Upsample_0", "Upsample_1", "Upsample_2"], 2_226_616)])
def test_preset_model_parameters_unchanged_by_the_options(preset, decoder, size):
    """Checkpoints of the presets' models stay loadable: same tree, same initial values as before the options."""
    from jaxae.config import PRESETS, Config
    model = model_from_config(Config(**PRESETS[preset]), (32, 32, 3))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    assert sorted(params["decoder"]) == sorted(decoder)
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == size


def test_activation_is_a_choice_of_function_not_of_parameters(tiny_config, tmp_path):
    # The same parameters run through GELU, ReLU and SiLU give three different codes: the choice reaches the
    # layers, and a model's parameter tree does not depend on it.
    x = jnp.linspace(0.0, 1.0, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
    kw = dict(image_shape=(8, 8, 3), latent_dim=3, width=4, stages=2, blocks=1, hidden=8, mlp_layers=2)
    params = jax.jit(Autoencoder(**kw).init)(jax.random.PRNGKey(0), x)["params"]  # jitted: one compile, not one per op
    relu_params = jax.eval_shape(Autoencoder(**kw, activation="relu").init, jax.random.PRNGKey(0), x)["params"]
    assert jax.tree.structure(relu_params) == jax.tree.structure(params)
    codes = {a: np.asarray(jax.jit(lambda p, x, a=a: Autoencoder(**kw, activation=a).apply(
        {"params": p}, x, method=Autoencoder.encode))(params, x)) for a in ("gelu", "relu", "silu")}
    for a, b in (("gelu", "relu"), ("gelu", "silu"), ("relu", "silu")):
        assert not np.allclose(codes[a], codes[b], rtol=1e-3), (a, b)
    assert model_from_config(tiny_config(tmp_path, activation="silu"), (16, 16, 3)).activation == "silu"


@pytest.mark.parametrize("choose_by,head,shape", [("l2", "conv", (8, 8, 3)), ("l1", "conv", (8, 8, 3)),
                                                  ("l2", "upsample", (6, 10, 1)), ("l1", "upsample", (8, 8, 3))])
def test_encoder_heads_keep_the_proposal_drawn_nearest_the_image(choose_by, head, shape):
    """--encoder-heads K: encode gives, for each image, the one of its K proposed codes whose drawing is nearest it
    by the loss; __call__ is that drawing, which decode of the code gives too, and reconstruct (the evaluation's
    drawing, not drawn again) is it exactly. The sub-pixel output head ("upsample", an even image size) compares
    the drawings before their last depth-to-space, with the image rearranged to match: the same choice."""
    k, d = 3, 2
    net = Autoencoder(image_shape=shape, latent_dim=d, stages=2, encoder_heads=k, choose_by=choose_by, head=head,
                      **SMALL)
    x = jax.random.uniform(jax.random.PRNGKey(0), (6, *shape))

    @jax.jit
    def run(x):
        p = {"params": net.init(jax.random.PRNGKey(1), x)["params"]}
        proposals = net.apply(p, x, method=lambda m, x: m.encoder(x)).reshape(6, k, d)
        drawings = net.apply(p, proposals.reshape(6 * k, d), method=Autoencoder.decode).reshape(6, k, *shape)
        z = net.apply(p, x, method=Autoencoder.encode)
        return (proposals, drawings, z, net.apply(p, x), net.apply(p, z, method=Autoencoder.decode),
                net.apply(p, x, method=Autoencoder.reconstruct))

    assert Decoder(image_shape=shape, head=head).sub_pixel_output() == (head == "upsample" and shape[0] % 2 == 0)
    proposals, drawings, z, recon, decoded, drawn = map(np.asarray, run(x))
    diff = drawings - np.asarray(x)[:, None]
    err = (np.abs(diff) if choose_by == "l1" else diff ** 2).mean(axis=(2, 3, 4))
    best = err.argmin(1)
    assert z.shape == (6, d) and recon.shape == (6, *shape)
    np.testing.assert_array_equal(z, proposals[np.arange(6), best])
    np.testing.assert_allclose(recon, drawings[np.arange(6), best], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(decoded, recon, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(drawn, drawings[np.arange(6), best])
    assert len(set(best)) > 1, "the test's images all chose one head: it would not tell a choice from head 0"


def test_a_sub_pixel_output_before_its_last_shuffle():
    """Decoder(z, shuffle=False) is space_to_depth of the image decode draws (the inverse of depth_to_space), and
    is refused where the image is not the last pixel shuffle's output as it is."""
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 6, 10, 3))
    np.testing.assert_array_equal(np.asarray(depth_to_space(space_to_depth(x))), np.asarray(x))
    z = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
    dec = Decoder(image_shape=(6, 10, 3), stages=2, head="upsample", **SMALL)

    @jax.jit
    def run(z):
        p = dec.init(jax.random.PRNGKey(2), z)
        return dec.apply(p, z, shuffle=False), space_to_depth(dec.apply(p, z))

    cells, drawn = run(z)
    assert cells.shape == (2, 3, 5, 12)
    np.testing.assert_array_equal(np.asarray(cells), np.asarray(drawn))
    for kw in ({"head": "conv"}, {"head": "upsample", "image_shape": (7, 7, 3)},
               {"head": "upsample", "upsample": "conv_transpose"}):
        other = Decoder(**{"image_shape": (8, 8, 3), "stages": 2, **SMALL, **kw})
        with pytest.raises(ValueError, match="shuffle=False needs"):
            jax.eval_shape(functools.partial(other.init, shuffle=False), jax.random.PRNGKey(2), z)


def test_reconstruct_of_a_plain_model_is_its_call():
    """One head: reconstruct (the test pass's and eval_step's) is decode(encode(x)), as __call__."""
    net = Autoencoder(image_shape=(8, 8, 3), latent_dim=3, stages=2, **SMALL)
    x = jax.random.uniform(jax.random.PRNGKey(4), (3, 8, 8, 3))

    @jax.jit
    def run(x):
        p = {"params": net.init(jax.random.PRNGKey(5), x)["params"]}
        return net.apply(p, x, method=Autoencoder.reconstruct), net.apply(p, x)

    drawn, called = run(x)
    np.testing.assert_array_equal(np.asarray(drawn), np.asarray(called))


def test_encoder_heads_train_only_the_chosen_proposal():
    """Winner-take-all: the loss of each image reaches only the head it chose, so the encoder's last layer gets a
    gradient on the outputs of the chosen heads and none on the others'."""
    k, d = 4, 3
    net = Autoencoder(image_shape=(8, 8, 3), latent_dim=d, stages=2, encoder_heads=k, **SMALL)
    x = jax.random.uniform(jax.random.PRNGKey(2), (2, 8, 8, 3))

    @jax.jit
    def run(x):
        params = net.init(jax.random.PRNGKey(3), x)["params"]
        z = net.apply({"params": params}, x, method=lambda m, x: m.encoder(x)).reshape(2, k, d)
        chosen = net.apply({"params": params}, x, method=Autoencoder.encode)
        return z, chosen, jax.grad(lambda p: losses.l2(net.apply({"params": p}, x), x))(params)

    z, chosen, grads = run(x)
    won = {int(np.flatnonzero((np.asarray(z[i]) == np.asarray(chosen[i])).all(1))[0]) for i in range(2)}
    last = max((n for n in grads["encoder"] if n.startswith("Dense_")), key=lambda n: int(n[6:]))  # the code's
    kernel = np.asarray(grads["encoder"][last]["kernel"]).reshape(-1, k, d)  # [hidden, head, code axis]
    assert kernel.shape[1:] == (k, d)
    for head in range(k):
        assert np.any(kernel[:, head] != 0) == (head in won), (head, won)


def _heads_loss_and_grad(net, x, replay: bool, monkeypatch):
    """The L2 loss of net(x) and its gradient, traced with the chosen code's drawing replayed or drawn again."""
    monkeypatch.setattr(models, "_REPLAY", replay)  # read while tracing: a fresh jit per call
    fn = jax.jit(jax.value_and_grad(lambda p, x: losses.l2(net.apply({"params": p}, x), x)))
    params = jax.jit(net.init)(jax.random.PRNGKey(1), x)["params"]
    return fn.lower(params, x).compile(), params


@pytest.mark.parametrize("kw", [
    {"head": "upsample"},  # the default model's sub-pixel output: the heads compared as cells
    {"head": "conv", "activation": "gelu"},
    {"blocks": 1, "norm": "layer", "fourier": 4, "mlp": "residual", "mlp_layers": 2},
    {"upsample": "conv_transpose", "head": "conv", "image_shape": (7, 7, 3)},
])
def test_encoder_heads_gradient_replays_the_chosen_drawing(kw, monkeypatch):
    """With encoder heads, __call__ draws the chosen code by replaying the rows the K proposals' pass recorded
    (models._replayed): the loss and gradient are those of drawing it again, for every kind of layer the decoder
    has, and the program does fewer FLOPs by most of one forward pass of the decoder over the batch: its dense and
    conv layers' (the activations, the sigmoid and a residual block's norm are computed again from the recorded
    outputs: the saving was 65-84 % of the pass in these tiny models)."""
    kw = {"image_shape": (8, 8, 3), "stages": 2, **SMALL, **kw}
    net = Autoencoder(latent_dim=2, encoder_heads=3, **kw)
    x = jax.random.uniform(jax.random.PRNGKey(0), (6, *kw["image_shape"]))
    replayed, params = _heads_loss_and_grad(net, x, True, monkeypatch)
    again, _ = _heads_loss_and_grad(net, x, False, monkeypatch)
    (loss, grads), (loss0, grads0) = replayed(params, x), again(params, x)
    np.testing.assert_allclose(float(loss), float(loss0), rtol=1e-6)
    assert jax.tree.structure(grads) == jax.tree.structure(grads0) == jax.tree.structure(params)
    for g, g0 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads0)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g0), rtol=2e-4, atol=1e-6 * float(np.abs(g0).max()))
    assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(grads["decoder"]))
    z = net.apply({"params": params}, x, method=Autoencoder.encode)
    decode = jax.jit(lambda p, z: net.apply({"params": p}, z, method=Autoencoder.decode)).lower(params, z).compile()
    saved = again.cost_analysis()["flops"] - replayed.cost_analysis()["flops"]
    assert saved > 0.6 * decode.cost_analysis()["flops"], (saved, decode.cost_analysis()["flops"])
