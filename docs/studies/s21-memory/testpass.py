"""The test pass after each epoch (metrics._recon_errors over 10k images) at several batch sizes: XLA's temporary
memory of each program, and its time with train.py's allocator settings (docs/performance.md, twenty-first
session). Arguments: batch sizes, repeats to time (omit: memory only), preset (omit: the default model).

    PYTHONPATH=. python docs/studies/s21-memory/testpass.py 500,64 3 default
    PYTHONPATH=. python docs/studies/s21-memory/testpass.py 500,64 5 quick
"""
import sys, time, jax, jax.numpy as jnp, numpy as np
from jaxae.config import Config, PRESETS
from jaxae import hostmem
hostmem.keep_freed_memory(); hostmem.run_cpu_programs_inline()
from jaxae.models import model_from_config
from jaxae.metrics import _recon_errors
from jaxae.train import init_params
cfg = Config(**PRESETS[sys.argv[3]]) if len(sys.argv) > 3 else Config(**PRESETS["long"])
model = model_from_config(cfg, (32, 32, 3))
params = init_params(model, jax.random.PRNGKey(0), (32, 32, 3))
imgs = jnp.asarray(np.random.default_rng(0).integers(0, 256, (10000, 32, 32, 3), np.uint8)); mask = jnp.ones(10000)
for b in [int(v) for v in sys.argv[1].split(",")]:
    c = _recon_errors.lower(model.apply, params, imgs, mask, b).compile()
    m = c.memory_analysis()
    line = f"batch {b}: temp {m.temp_size_in_bytes/2**20:.0f} MB"
    if len(sys.argv) > 2:
        c(params, imgs, mask)[0].block_until_ready(); ts = []
        for _ in range(int(sys.argv[2])):
            t = time.perf_counter(); c(params, imgs, mask)[0].block_until_ready(); ts.append(time.perf_counter() - t)
        line += f", {min(ts):.2f} s best / {np.median(ts):.2f} s median for 10k"
    print(line, flush=True)
