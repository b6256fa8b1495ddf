"""Encoding the 10k test images with the default model (calls of 1000, as bench/throughput.py's encode figure),
the strided convs as XLA's own conv against im2col (models._IM2COL), interleaved in one process: best of R rounds.

    PYTHONPATH=. python docs/studies/s26-encode/encode.py      # R=5
"""
import os
import time

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=True)
hostmem.run_cpu_programs_inline()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxae import models  # noqa: E402
from jaxae.config import OLD_MODEL, Config  # noqa: E402
from jaxae.train import init_params  # noqa: E402

R = int(os.environ.get("R", 5))
model = models.model_from_config(Config(**OLD_MODEL), (32, 32, 3))
params = init_params(model, jax.random.PRNGKey(0), (32, 32, 3))
x = jax.device_put(np.random.default_rng(0).integers(0, 256, (10000, 32, 32, 3), np.uint8))
chunks = [x[i:i + 1000] for i in range(0, 10000, 1000)]
fns, codes = {}, {}
for im2col in (False, True):
    models._IM2COL = im2col
    # a new function per variant: jax.jit caches by function object, and the flag is read when it is traced
    fns[im2col] = jax.jit(lambda p, c: model.apply({"params": p}, c.astype(jnp.float32) / 255.0, method="encode"))
    codes[im2col] = jax.block_until_ready(fns[im2col](params, chunks[0]))
print(f"codes differ by {float(jnp.max(jnp.abs(codes[True] - codes[False]))):.2e} "
      f"(largest {float(jnp.max(jnp.abs(codes[False]))):.2e})")
times = {k: [] for k in fns}
for r in range(R):
    for k in ((False, True) if r % 2 == 0 else (True, False)):
        t = time.perf_counter()
        jax.block_until_ready([fns[k](params, c) for c in chunks])
        times[k].append(time.perf_counter() - t)
for k, ts in times.items():
    print(f"{'im2col' if k else 'XLA conv'}: " + " ".join(f"{t:.2f}" for t in ts) + f" s; best {min(ts):.3f} s")
