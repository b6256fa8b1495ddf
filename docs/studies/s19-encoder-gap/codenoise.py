"""The quick model trained with Gaussian noise on its code (sigma x the batch's code spread per axis) before the
decoder: does a decoder made smooth in code space leave the encoder a smaller gap (and order classes better)?

    PYTHONPATH=. python docs/studies/s19-encoder-gap/codenoise.py SIGMA EPOCHS    # 0 8, then 0.1 8
"""
import sys, time
import jax, jax.numpy as jnp, numpy as np, optax
from jaxae import evaluate as ev, hostmem
from jaxae.config import Config, PRESETS
from jaxae.data import load
from jaxae.metrics import knn_accuracy, nearest_neighbours, pad_to_multiple
from jaxae.models import model_from_config
from jaxae.train import make_optimizer
hostmem.keep_freed_memory(); hostmem.run_cpu_programs_inline()
sigma, epochs = float(sys.argv[1]), int(sys.argv[2])
cfg = Config(**{**PRESETS["quick"], "epochs": epochs})
ds = load("data/cifar10-jpeg.tar.gz")
model = model_from_config(cfg, ds.image_shape)
params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *ds.image_shape)))["params"]
B = cfg.batch_size; spe = len(ds.train_images) // B
tx = make_optimizer(cfg, epochs * spe, spe); opt = tx.init(params)
train = jnp.asarray(ds.train_images)

def loss(p, x, k):
    z = model.apply({"params": p}, x, method="encode")
    z = z + sigma * jax.lax.stop_gradient(jnp.std(z, axis=0)) * jax.random.normal(k, z.shape)
    return jnp.mean((model.apply({"params": p}, z, method="decode") - x) ** 2)

@jax.jit
def step(p, opt, idx, k):
    k1, k2 = jax.random.split(k)
    x = train[idx].astype(jnp.float32) / 255.0
    flip = jax.random.bernoulli(k1, 0.5, (x.shape[0], 1, 1, 1)); x = jnp.where(flip, x[:, :, ::-1], x)
    l, g = jax.value_and_grad(loss)(p, x, k2)
    u, opt = tx.update(g, opt, p); return optax.apply_updates(p, u), opt, l

key = jax.random.PRNGKey(1); t0 = time.time()
for ep in range(epochs):
    key, k = jax.random.split(key); perm = jax.random.permutation(k, len(ds.train_images)); ls = []
    for s in range(spe):
        key, sk = jax.random.split(key); params, opt, l = step(params, opt, perm[s*B:(s+1)*B], sk); ls.append(l)
    print(f"epoch {ep+1}: train {float(jnp.mean(jnp.stack(ls))):.5f}  {time.time()-t0:.0f}s", flush=True)
ae = ev.autoencoder_codec(model, params)
dev = jax.local_devices()[0]
tx_, tm = pad_to_multiple(ds.test_images, 500); tr_, _ = pad_to_multiple(ds.train_images, 500)
tx_, tr_ = jax.device_put(tx_, dev), jax.device_put(tr_, dev)
zte = ev.encode_split(ae, tx_); ztr = np.asarray(ev.encode_split(ae, tr_))[:len(ds.train_images)]
mse = ev.reconstruction_metrics(ae, tx_, tm, codes=zte)["mse"]
nn = np.asarray(nearest_neighbours(zte[:len(ds.test_images)], jnp.asarray(ztr), k=10))
knn = knn_accuracy(nn, ds.train_labels, ds.test_labels, 10)
sub = jax.device_put(ds.test_images[:1000], dev)
z, err, enc_err, _ = ev.best_codes(ae, sub, ev.encode_split(ae, sub), ztr, 100)
gap = 100 * (np.mean(err) / np.mean(enc_err) - 1)
print(f"sigma {sigma} epochs {epochs}: test MSE {mse:.5f}  10-NN {knn:.1%}  first 1,000 test images: encoder "
      f"{float(np.mean(enc_err)):.5f}, best codes {float(np.mean(err)):.5f} ({gap:+.1f} %)  {time.time()-t0:.0f}s",
      flush=True)
