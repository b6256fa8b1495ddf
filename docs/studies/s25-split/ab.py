"""The default model's CPU step at one batch size, split (the middle part in chunks of MIDDLE_BATCH) against the passes
alone (train._PassSteps, split=False), interleaved in one process: one step of each in turn (the order alternating),
after one untimed step each. Freed host memory kept and programs inline, as in train.py (docs/performance.md,
twenty-fifth session).

    PYTHONPATH=. python docs/studies/s25-split/ab.py                   # batch 1024, 6 rounds, chunks of 256
    B=256 R=8 VARIANTS=plain,256,512 PYTHONPATH=. python docs/studies/s25-split/ab.py
"""
import os
import time

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=True)
hostmem.run_cpu_programs_inline()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from jaxae import train as T  # noqa: E402
from jaxae.config import Config  # noqa: E402

B, R = int(os.environ.get("B", 1024)), int(os.environ.get("R", 6))
variants = os.environ.get("VARIANTS", "256,plain").split(",")
cfg, spe = Config(batch_size=B), 4
mesh = Mesh(np.array(jax.local_devices()[:1]), (T.AXIS,))
state = T.place_state(T.create_train_state(cfg, (32, 32, 3), 1000, spe), mesh)
images = T.put_dataset(np.random.default_rng(0).integers(0, 256, (spe * B, 32, 32, 3), np.uint8), mesh)
perm = T.device_epoch_order(cfg.seed, 0, spe * B, spe, B, mesh)
n_micro = B // T.microbatch_size(cfg, B)
steps = {}
for v in variants:  # MIDDLE_BATCH is read when the step is built
    T.MIDDLE_BATCH = 256 if v == "plain" else int(v)
    steps[v] = T._PassSteps(cfg, 1, spe, B, n_micro, split=v != "plain")
for f in steps.values():
    state, m = f(state, images, perm)
    jax.block_until_ready(m)
times = {v: [] for v in steps}
for r in range(R):
    for v in (variants if r % 2 == 0 else variants[::-1]):
        t0 = time.perf_counter()
        state, m = steps[v](state, images, perm)
        jax.block_until_ready(m)
        times[v].append(time.perf_counter() - t0)
for v, ts in times.items():
    name = "passes alone" if v == "plain" else f"split, middle in chunks of {v}"
    print(f"batch {B}, {name}: steps " + " ".join(f"{t * 1e3:.0f}" for t in ts) + f" ms; best {B / min(ts):.0f} img/s, "
          f"median {B / np.median(ts):.0f}")
