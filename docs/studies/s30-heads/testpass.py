"""The test pass after each epoch (metrics._recon_errors over 10k images, batch 500) of the quick preset (4 encoder
heads), through __call__ (K + 1 decoder passes per image) and through reconstruct (K), interleaved, with
train.py's allocator settings (docs/performance.md, thirtieth session). Argument: rounds (default 5).

    PYTHONPATH=. python docs/studies/s30-heads/testpass.py 5
"""
import sys, time, jax, jax.numpy as jnp, numpy as np
from jaxae.config import Config, PRESETS
from jaxae import hostmem
hostmem.keep_freed_memory(); hostmem.run_cpu_programs_inline()
from jaxae.models import model_from_config
from jaxae.metrics import _recon_errors
from jaxae.train import init_params
cfg = Config(**PRESETS["quick"])
model = model_from_config(cfg, (32, 32, 3))
params = init_params(model, jax.random.PRNGKey(0), (32, 32, 3))
imgs = jnp.asarray(np.random.default_rng(0).integers(0, 256, (10000, 32, 32, 3), np.uint8)); mask = jnp.ones(10000)
ways = {"__call__": lambda v, x, method=None: model.apply(v, x), "reconstruct": model.apply}
progs = {n: _recon_errors.lower(f, params, imgs, mask, 500).compile() for n, f in ways.items()}
out = {n: jax.device_get(c(params, imgs, mask)) for n, c in progs.items()}
print({n: f"mse {float(v[0]):.6f}" for n, v in out.items()})
ts = {n: [] for n in progs}
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
    for n, c in progs.items():
        t = time.perf_counter(); c(params, imgs, mask)[0].block_until_ready(); ts[n].append(time.perf_counter() - t)
for n, v in ts.items():
    print(f"{n}: {min(v):.2f} s best / {np.median(v):.2f} s median for 10k test images", flush=True)
