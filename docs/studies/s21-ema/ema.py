"""Would an exponential moving average (EMA) of the weights give a lower test MSE than the last weights? The quick
preset's model and schedule (train.py's optimiser: AdamW, warm-up, cosine to 1 % of the peak rate, clipping; flips)
in a loop of its own, with EMAs of several decays kept beside the weights; after every epoch the test MSE of the
weights and of each EMA. (The loop is not train.py's, so compare its rows with each other, not with train.py's runs.)

    PYTHONPATH=. python docs/studies/s21-ema/ema.py EPOCHS SEED [DECAYS]    # 14 0 0.998,0.999,0.9995
"""
import sys, time
import jax, jax.numpy as jnp, optax
from jaxae import hostmem
from jaxae.config import Config, PRESETS
from jaxae.data import load
from jaxae.models import model_from_config
from jaxae.train import init_params, make_optimizer
hostmem.keep_freed_memory(); hostmem.run_cpu_programs_inline()
epochs, seed = int(sys.argv[1]), int(sys.argv[2])
decays = [float(d) for d in (sys.argv[3] if len(sys.argv) > 3 else "0.998,0.999,0.9995").split(",")]
cfg = Config(**{**PRESETS["quick"], "epochs": epochs, "seed": seed})
ds = load("data/cifar10-jpeg.tar.gz")
model = model_from_config(cfg, ds.image_shape)
params = init_params(model, jax.random.PRNGKey(seed), ds.image_shape)
B = cfg.batch_size; spe = len(ds.train_images) // B
tx = make_optimizer(cfg, epochs * spe, spe); opt = tx.init(params)
emas = [jax.tree.map(jnp.zeros_like, params) for _ in decays]  # debiased when read (Adam's way)
train = jnp.asarray(ds.train_images); test = jnp.asarray(ds.test_images)

def loss(p, x):
    return jnp.mean((model.apply({"params": p}, x) - x) ** 2)

@jax.jit
def step(p, opt, emas, idx, k):
    x = train[idx].astype(jnp.float32) / 255.0
    flip = jax.random.bernoulli(k, 0.5, (x.shape[0], 1, 1, 1)); x = jnp.where(flip, x[:, :, ::-1], x)
    l, g = jax.value_and_grad(loss)(p, x)
    u, opt = tx.update(g, opt, p); p = optax.apply_updates(p, u)
    emas = [optax.incremental_update(p, e, 1 - d) for e, d in zip(emas, decays)]
    return p, opt, emas, l

@jax.jit
def sse(p, i):
    x = jax.lax.dynamic_slice_in_dim(test, i, 500).astype(jnp.float32) / 255.0
    return jnp.sum((model.apply({"params": p}, x) - x) ** 2)

def test_mse(p):
    return float(sum(sse(p, i) for i in range(0, len(ds.test_images), 500))) / test[..., 0].size / 3

key = jax.random.PRNGKey(seed + 1); t0 = time.time()
print("epoch  train    weights  " + "  ".join(f"EMA {d:<6g}" for d in decays), flush=True)
for ep in range(epochs):
    key, k = jax.random.split(key); perm = jax.random.permutation(k, len(ds.train_images)); ls = []
    for s in range(spe):
        key, sk = jax.random.split(key)
        params, opt, emas, l = step(params, opt, emas, perm[s * B:(s + 1) * B], sk); ls.append(l)
    print(f"{ep + 1:5d}  {float(jnp.mean(jnp.stack(ls))):.5f}  {test_mse(params):.5f}  "
          + "  ".join(f"{test_mse(jax.tree.map(lambda v: v / (1 - d ** ((ep + 1) * spe)), e)):.5f}   "
                      for e, d in zip(emas, decays)) + f"  {time.time() - t0:.0f} s", flush=True)
