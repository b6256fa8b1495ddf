"""Can an encoder learn the best codes directly? Search the best codes of the training images for a run's frozen
decoder (evaluate.best_codes), train a fresh encoder of the run's size to regress them (squared error per axis,
scaled by the codes' spread), then fine-tune it on reconstruction; report the test MSE of each (docs/quality.md,
nineteenth session).

    PYTHONPATH=. python docs/studies/s19-encoder-gap/distil.py /tmp/s16/review-runs/q30 20 10 3
    # arguments: workdir, descent steps of the search, regression epochs, reconstruction epochs
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxae import evaluate as ev, hostmem
from jaxae.metrics import pad_to_multiple
from jaxae.models import Encoder, model_from_config

hostmem.keep_freed_memory()
hostmem.run_cpu_programs_inline()
workdir = sys.argv[1]
steps, epochs, ft_epochs = (int(a) for a in sys.argv[2:5])
cfg, state, ds = ev.restore(workdir)
model = model_from_config(cfg, ds.image_shape)
ae = ev.autoencoder_codec(model, state.params)
dec_p = state.params["decoder"]
dev = jax.local_devices()[0]
t0 = time.time()
tr, _ = pad_to_multiple(ds.train_images, 500)
tr = jax.device_put(tr, dev)
n = len(ds.train_images)
enc_codes = ev.encode_split(ae, tr)
target, err, enc_err, _ = ev.best_codes(ae, tr, enc_codes, np.asarray(enc_codes)[:n], steps)
target = np.asarray(target)[:n]
print(f"training images: encoder's codes {float(np.mean(np.asarray(enc_err)[:n])):.5f}, best codes "
      f"{float(np.mean(np.asarray(err)[:n])):.5f} ({time.time() - t0:.0f} s)", flush=True)
spread = target.std(0)
enc = Encoder(latent_dim=cfg.latent_dim, width=cfg.width, stages=cfg.stages, blocks=cfg.blocks, hidden=cfg.hidden,
              mlp_layers=cfg.mlp_layers, mlp=cfg.mlp, norm=cfg.norm, activation=cfg.activation)
enc_p = enc.init(jax.random.PRNGKey(1), jnp.zeros((1, *ds.image_shape)))["params"]
train, targets = jnp.asarray(ds.train_images), jnp.asarray(target / spread)
B = 128
spe = n // B


def test_mse(e):
    tot = 0.0
    for i in range(0, len(ds.test_images), 1000):
        x = jnp.asarray(ds.test_images[i:i + 1000], jnp.float32) / 255.0
        z = enc.apply({"params": e}, x)
        tot += float(jnp.sum(jnp.mean((model.apply({"params": {"decoder": dec_p}}, z, method="decode") - x) ** 2,
                                      axis=(1, 2, 3))))
    return tot / len(ds.test_images)


def fit(e, n_epochs, loss, lr):
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, spe, n_epochs * spe), weight_decay=1e-4))
    opt = tx.init(e)

    @jax.jit
    def step(e, opt, idx):
        x = train[idx].astype(jnp.float32) / 255.0
        val, g = jax.value_and_grad(loss)(e, x, idx)
        u, opt = tx.update(g, opt, e)
        return optax.apply_updates(e, u), opt, val
    key = jax.random.PRNGKey(0)
    for ep in range(n_epochs):
        key, k = jax.random.split(key)
        perm = jax.random.permutation(k, n)
        vals = []
        for s in range(spe):
            e, opt, v = step(e, opt, perm[s * B:(s + 1) * B])
            vals.append(v)
        print(f"  epoch {ep + 1}: loss {float(jnp.mean(jnp.stack(vals))):.5f}  test MSE {test_mse(e):.5f}  "
              f"{time.time() - t0:.0f} s", flush=True)
    return e


def regress(e, x, idx):  # the best codes, in units of their spread per axis
    return jnp.mean((enc.apply({"params": e}, x) / spread - targets[idx]) ** 2)


def reconstruct(e, x, idx):
    z = enc.apply({"params": e}, x)
    return jnp.mean((model.apply({"params": {"decoder": dec_p}}, z, method="decode") - x) ** 2)


print("regressing the best codes:", flush=True)
enc_p = fit(enc_p, epochs, regress, 1e-3)
print("then on reconstruction:", flush=True)
enc_p = fit(enc_p, ft_epochs, reconstruct, 5e-4)
