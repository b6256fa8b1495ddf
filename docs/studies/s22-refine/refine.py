"""Does refining the codes inside training help the encoder's own codes? The quick preset's model and schedule
(train.py's optimiser: AdamW, warm-up, cosine to 1 % of the peak rate, clipping; flips) in a loop of its own, with
K steps of descent on each image's code in every training step (semi-amortised inference, Kim et al. 2018):

  plain  the usual loss, L(dec(enc(x)), x): the baseline, in this same loop.
  sg     the decoder also learns from the refined codes: 0.5 L(dec(z0)) + 0.5 L(dec(sg(zK))), where zK is the
         better (per image) of the code after K steps and the encoder's z0; the encoder learns from its own codes
         alone, as in the plain loss.
  sa     the steps are part of the model: 0.5 L(dec(z0)) + 0.5 L(dec(zK)), differentiated through the K steps
         (second derivatives of the decoder), so the encoder also learns to give a good start for them.

Each step moves the code a set distance in units of the batch's spread per axis (0.1, then less: 0.1 (K - k) / K),
downhill along the gradient of the image's squared error. After the last epoch: the test MSE of the encoder's own
codes (what the targets and the latent plots use) and of the codes after the same K steps (better-of-two per
image). The loop is not train.py's: compare its rows with each other, not with train.py's runs.

    PYTHONPATH=. python docs/studies/s22-refine/refine.py VARIANT EPOCHS K SEED    # e.g. sg 8 3 0
"""
import sys, time
import jax, jax.numpy as jnp, optax
from jaxae import hostmem
from jaxae.config import Config, PRESETS
from jaxae.data import load
from jaxae.models import model_from_config
from jaxae.train import init_params, make_optimizer
hostmem.keep_freed_memory(); hostmem.run_cpu_programs_inline()
variant, epochs, K, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
assert variant in ("plain", "sg", "sa"), variant
cfg = Config(**{**PRESETS["quick"], "epochs": epochs, "seed": seed})
ds = load("data/cifar10-jpeg.tar.gz")
model = model_from_config(cfg, ds.image_shape)
params = init_params(model, jax.random.PRNGKey(seed), ds.image_shape)
B = cfg.batch_size; spe = len(ds.train_images) // B
tx = make_optimizer(cfg, epochs * spe, spe); opt = tx.init(params)
train = jnp.asarray(ds.train_images); test = jnp.asarray(ds.test_images)
enc = lambda p, x: model.apply({"params": p}, x, method=model.encode)
dec = lambda p, z: model.apply({"params": p}, z, method=model.decode)
per_image = lambda p, z, x: jnp.mean((dec(p, z) - x) ** 2, axis=(1, 2, 3))


def refine(p, z0, x, differentiable):
    """K descent steps on the codes, each of length 0.1 (K - k) / K spreads; returns the codes and their errors."""
    spread = jax.lax.stop_gradient(jnp.std(z0, axis=0) + 1e-6)
    z = z0 if differentiable else jax.lax.stop_gradient(z0)
    for k in range(K):
        g = jax.grad(lambda z: jnp.sum(per_image(p, z, x)))(z) * spread  # gradient in spread units
        z = z - 0.1 * (K - k) / K * spread * g / (jnp.linalg.norm(g, axis=-1, keepdims=True) + 1e-12)
    return z


def loss(p, x):
    z0 = enc(p, x)
    l0 = per_image(p, z0, x)
    if variant == "plain":
        return jnp.mean(l0)
    if variant == "sg":
        pd = jax.lax.stop_gradient(p)
        zk = refine(pd, z0, x, False)
        zb = jnp.where((per_image(pd, zk, x) < jax.lax.stop_gradient(l0))[:, None], zk, jax.lax.stop_gradient(z0))
        return 0.5 * jnp.mean(l0) + 0.5 * jnp.mean(per_image(p, zb, x))
    return 0.5 * jnp.mean(l0) + 0.5 * jnp.mean(per_image(p, refine(p, z0, x, True), x))


@jax.jit
def step(p, opt, idx, k):
    x = train[idx].astype(jnp.float32) / 255.0
    flip = jax.random.bernoulli(k, 0.5, (x.shape[0], 1, 1, 1)); x = jnp.where(flip, x[:, :, ::-1], x)
    l, g = jax.value_and_grad(loss)(p, x)
    u, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, u), opt, l


@jax.jit
def sse(p, i):
    """Summed squared errors of 500 test images: the encoder's codes, and the better of them and K steps on."""
    x = jax.lax.dynamic_slice_in_dim(test, i, 500).astype(jnp.float32) / 255.0
    z0 = enc(p, x); l0 = per_image(p, z0, x)
    lk = per_image(p, refine(p, z0, x, False), x) if K else l0
    return jnp.sum(l0), jnp.sum(jnp.minimum(l0, lk))


def test_mse(p):
    s = [sse(p, i) for i in range(0, len(ds.test_images), 500)]
    return [float(sum(a[j] for a in s)) / len(ds.test_images) for j in (0, 1)]


key = jax.random.PRNGKey(seed + 1); t0 = time.time()
print(f"{variant}, K={K}, seed {seed}\nepoch  train    test: encoder  after {K} steps", flush=True)
for ep in range(epochs):
    key, k = jax.random.split(key); perm = jax.random.permutation(k, len(ds.train_images)); ls = []
    for s in range(spe):
        key, sk = jax.random.split(key)
        params, opt, l = step(params, opt, perm[s * B:(s + 1) * B], sk); ls.append(l)
    if ep + 1 in (epochs // 2, epochs) or ep == 0:
        e, r = test_mse(params)
        print(f"{ep + 1:5d}  {float(jnp.mean(jnp.stack(ls))):.5f}  {e:.5f}        {r:.5f}   {time.time() - t0:.0f} s",
              flush=True)
