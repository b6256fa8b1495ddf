"""The rates and step counts of the code descent (docs/quality.md, nineteenth session): Adam on the codes of the
first N test images of a run, scaled per axis by the codes' spread, constant or cosine-decayed.

    PYTHONPATH=. python docs/studies/s19-encoder-gap/refprobe.py /tmp/s16/review-runs/q30 1000
"""
import sys, time, functools
import jax, jax.numpy as jnp, numpy as np, optax
from jaxae import evaluate as ev
from jaxae.models import model_from_config
workdir = sys.argv[1]; n = int(sys.argv[2]); split = sys.argv[3] if len(sys.argv) > 3 else "test"
cfg, state, ds = ev.restore(workdir)
model = model_from_config(cfg, ds.image_shape); params = state.params
imgs = ds.test_images if split == "test" else ds.train_images
x = jnp.asarray(imgs[:n], jnp.float32) / 255.0
def dec(z): return model.apply({"params": params}, z, method="decode")
z0 = model.apply({"params": params}, x, method="encode")
scale = jnp.std(z0, axis=0)
@functools.partial(jax.jit, static_argnames=("steps", "decay"))
def refine(z0, rate, steps, decay):
    lr = optax.cosine_decay_schedule(rate, steps) if decay else rate
    opt = optax.scale_by_adam(); s = opt.init(z0)
    def loss(z): return jnp.sum(jnp.mean((dec(z) - x) ** 2, axis=(1, 2, 3)))
    def body(c, i):
        z, s = c; l, g = jax.value_and_grad(loss)(z); u, s = opt.update(g, s, z)
        step = lr(i) if decay else lr
        return (z - step * scale * u, s), l / z.shape[0]
    (z, _), curve = jax.lax.scan(body, (z0, s), jnp.arange(steps))
    return z, jnp.concatenate([curve, jnp.mean(jnp.mean((dec(z) - x) ** 2, axis=(1, 2, 3)))[None]])
for decay in (False, True):
    for rate in (0.01, 0.03, 0.1):
        for steps in ((200,) if not decay else (25, 50, 100)):
            t = time.time(); z, c = refine(z0, rate, steps, decay); c = np.asarray(c)
            pts = {k: c[k] for k in (0, 10, 25, 50, 100, 200) if k < len(c)}
            print(f"{split} decay={decay} rate={rate} steps={steps}: "
                  + " ".join(f"{k}:{v:.5f}" for k, v in pts.items())
                  + f" final {c[-1]:.5f} ratio {c[-1]/c[0]:.4f} {time.time()-t:.0f}s", flush=True)
