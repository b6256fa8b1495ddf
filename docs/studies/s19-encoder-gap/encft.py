"""Does more encoder training (decoder frozen) close the amortisation gap? Fine-tune the encoder of a trained run.

    PYTHONPATH=. python docs/studies/s19-encoder-gap/encft.py /tmp/s16/review-runs/q30 3 5e-4    # epochs, peak rate
"""
import sys, time
import jax, jax.numpy as jnp, numpy as np, optax
from jaxae import evaluate as ev
from jaxae.models import model_from_config
workdir, epochs, lr = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
cfg, state, ds = ev.restore(workdir)
model = model_from_config(cfg, ds.image_shape)
P = state.params
B = 128
def test_mse(p):
    tot = 0.0
    for i in range(0, len(ds.test_images), 1000):
        x = jnp.asarray(ds.test_images[i:i+1000], jnp.float32) / 255.0
        tot += float(jnp.sum(jnp.mean((model.apply({"params": p}, x) - x) ** 2, axis=(1, 2, 3))))
    return tot / len(ds.test_images)
print(f"before: test MSE {test_mse(P):.5f}", flush=True)
spe = len(ds.train_images) // B
sched = optax.warmup_cosine_decay_schedule(0.0, lr, spe // 4, epochs * spe)
opt = optax.adam(sched)
enc_p, dec_p = P["encoder"], P["decoder"]
os_ = opt.init(enc_p)
train = jnp.asarray(ds.train_images)
@jax.jit
def step(enc_p, os_, idx, flipkey):
    x = train[idx].astype(jnp.float32) / 255.0
    flip = jax.random.bernoulli(flipkey, 0.5, (x.shape[0], 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1], x)
    def loss(e):
        return jnp.mean((model.apply({"params": {"encoder": e, "decoder": dec_p}}, x) - x) ** 2)
    l, g = jax.value_and_grad(loss)(enc_p)
    u, os_ = opt.update(g, os_, enc_p)
    return optax.apply_updates(enc_p, u), os_, l
key = jax.random.PRNGKey(0)
for ep in range(epochs):
    t = time.time(); key, k = jax.random.split(key); perm = jax.random.permutation(k, len(ds.train_images))
    ls = []
    for s in range(spe):
        key, fk = jax.random.split(key)
        enc_p, os_, l = step(enc_p, os_, perm[s*B:(s+1)*B], fk); ls.append(l)
    mse = test_mse({'encoder': enc_p, 'decoder': dec_p})
    print(f"epoch {ep+1}: train {float(np.mean(ls)):.5f}  test MSE {mse:.5f}  {time.time()-t:.0f}s", flush=True)
