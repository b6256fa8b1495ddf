"""The quick preset's CPU training step (train._PassSteps, batch B) with the heads' drawings compared as images or as
the sub-pixel conv's output (models._CHOOSE_IN_CELLS), interleaved in one process: K steps of each in turn per
round, R rounds, the order reversed every other round. Freed host memory kept and programs inline, as in train.py
(docs/performance.md, thirty-second session).

    PYTHONPATH=. python docs/studies/s32-heads/step.py              # B=128 K=20 R=6
"""
import os

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=False)
hostmem.run_cpu_programs_inline()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from docs.studies.steps import step_inputs, time_interleaved  # noqa: E402
from jaxae import models  # noqa: E402
from jaxae import train as T  # noqa: E402

B, K, R = (int(os.environ.get(k, d)) for k, d in (("B", 128), ("K", 20), ("R", 6)))
spe = 4
runs = {}
for cells in (False, True):
    models._CHOOSE_IN_CELLS = cells  # read while tracing: each program keeps its way
    cfg, state, images, perm, n_micro = step_inputs("quick", B, spe)
    fn = T._PassSteps(cfg, 1, spe, B, n_micro)
    for _ in range(2):
        state, m = fn(state, images, perm)
    jax.block_until_ready(m)
    runs[cells] = [fn, state, images, perm, float(m["loss"][0])]
models._CHOOSE_IN_CELLS = True
print(f"the loss of the second step: {runs[False][4]:.7f} as images, {runs[True][4]:.7f} as cells")
times = time_interleaved(runs, K, R)
for c, ts in times.items():
    print(f"quick batch {B}, compared as {'cells' if c else 'images'}: {K} steps a timing, best {B / min(ts):,.0f} "
          f"img/s, median {B / np.median(ts):,.0f}", flush=True)
