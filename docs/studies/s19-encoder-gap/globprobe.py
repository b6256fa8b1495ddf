"""The search before the descent (docs/quality.md, nineteenth session): for the first 1,000 test images, the
nearest decoding in pixels among M decoded training codes, against the encoder's code; then 100 descent steps
from each start.

    PYTHONPATH=. python docs/studies/s19-encoder-gap/globprobe.py /tmp/s16/review-runs/q30 5000
"""
import sys
import jax, jax.numpy as jnp, optax
from jaxae import evaluate as ev
from jaxae.models import model_from_config
workdir = sys.argv[1]; n = 1000; M = int(sys.argv[2])
cfg, state, ds = ev.restore(workdir)
model = model_from_config(cfg, ds.image_shape); params = state.params
x = jnp.asarray(ds.test_images[:n], jnp.float32) / 255.0
dec = jax.jit(lambda z: model.apply({"params": params}, z, method="decode"))
enc = jax.jit(lambda x: model.apply({"params": params}, x, method="encode"))
z0 = enc(x)
ztr = jnp.concatenate([enc(jnp.asarray(ds.train_images[i:i+1000], jnp.float32) / 255.0) for i in range(0, M, 1000)])[:M]
D = jnp.concatenate([dec(ztr[i:i+1000]) for i in range(0, M, 1000)]).reshape(M, -1)
X = x.reshape(n, -1)
err = (jnp.sum(X**2, 1)[:, None] + jnp.sum(D**2, 1)[None] - 2 * X @ D.T) / X.shape[1]
best = jnp.argmin(err, 1); ebest = err[jnp.arange(n), best]
e0 = jnp.mean((dec(z0) - x) ** 2, axis=(1, 2, 3))
print(f"encoder code MSE {float(e0.mean()):.5f}; best of {M} training codes {float(ebest.mean()):.5f}; "
      f"min(both) {float(jnp.minimum(e0, ebest).mean()):.5f}; "
      f"best candidate beats encoder on {float(jnp.mean(ebest < e0)):.1%}")
scale = jnp.std(ztr, axis=0)
@jax.jit
def refine(zs):
    lr = optax.cosine_decay_schedule(0.03, 100); opt = optax.scale_by_adam(); s = opt.init(zs)
    def loss(z): return jnp.sum(jnp.mean((dec(z) - x) ** 2, axis=(1, 2, 3)))
    def body(c, i):
        z, s = c; g = jax.grad(loss)(z); u, s = opt.update(g, s, z); return (z - lr(i) * scale * u, s), None
    (z, _), _ = jax.lax.scan(body, (zs, s), jnp.arange(100))
    return z, jnp.mean((dec(z) - x) ** 2, axis=(1, 2, 3))
_, e1 = refine(z0); _, e2 = refine(ztr[best])
print(f"refined from encoder {float(e1.mean()):.5f}; refined from best candidate {float(e2.mean()):.5f}; "
      f"min of the two {float(jnp.minimum(e1, e2).mean()):.5f}; candidate start wins on {float(jnp.mean(e2 < e1)):.1%}")
