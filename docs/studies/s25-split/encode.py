"""Encoding the 10k test images' worth of random uint8 images with the default model (batches of 1,000, one jitted
call each, as bench/throughput.py times it), with Winograd's rule as it is (RULE=new: 4x4 convs too) or as before the
twenty-fifth session (RULE=old: 8x8 and larger only). Best of 3 (docs/performance.md, twenty-fifth session).

    RULE=old PYTHONPATH=. python docs/studies/s25-split/encode.py; RULE=new PYTHONPATH=. python docs/studies/...
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

if os.environ.get("RULE", "new") == "old":
    models._WINOGRAD_MIN_SIZE = 8
model = models.model_from_config(Config(**OLD_MODEL), (32, 32, 3))
params = init_params(model, jax.random.PRNGKey(0), (32, 32, 3))
enc = jax.jit(lambda p, x: model.apply({"params": p}, x.astype(jnp.float32) / 255.0, method="encode"))
x = jax.device_put(np.random.default_rng(0).integers(0, 256, (10000, 32, 32, 3), np.uint8))
chunks = [x[i:i + 1000] for i in range(0, 10000, 1000)]
flops = enc.lower(params, chunks[0]).cost_analysis()["flops"] / 1000
jax.block_until_ready(enc(params, chunks[0]))
times = []
for _ in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready([enc(params, c) for c in chunks])
    times.append(time.perf_counter() - t0)
print(f"rule {os.environ.get('RULE', 'new')}: {flops / 1e9:.4f} GFLOP/img executed; 10,000 images in "
      + ", ".join(f"{t:.2f}" for t in times) + f" s (best {10000 / min(times):,.0f} img/s)")
