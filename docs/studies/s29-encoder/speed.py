"""The quick preset's CPU step (train._PassSteps, batch B) at each of HEADS encoder heads, interleaved in one
process: K steps of each in turn per round, R rounds, the order reversed every other round. Freed host memory kept
and programs inline, as in train.py.

    PYTHONPATH=. python docs/studies/s29-encoder/speed.py              # HEADS=1,2,4 B=128 K=20 R=6
"""
import os

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=False)
hostmem.run_cpu_programs_inline()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from docs.studies.steps import step_inputs, time_interleaved  # noqa: E402
from jaxae import train as T  # noqa: E402

B, K, R = (int(os.environ.get(k, d)) for k, d in (("B", 128), ("K", 20), ("R", 6)))
PRESET, HEADS = os.environ.get("PRESET", "quick"), [int(h) for h in os.environ.get("HEADS", "1,2,4").split(",")]
spe = 4
runs = {}
for h in HEADS:
    cfg, state, images, perm, n_micro = step_inputs(PRESET, B, spe, encoder_heads=h)
    fn = T._PassSteps(cfg, 1, spe, B, n_micro)
    for _ in range(2):
        state, m = fn(state, images, perm)
    jax.block_until_ready(m)
    runs[h] = [fn, state, images, perm]
times = time_interleaved(runs, K, R)
for h, ts in times.items():
    print(f"{PRESET} batch {B}, {h} encoder head(s): {K} steps a timing, best {B / min(ts):,.0f} img/s, median "
          f"{B / np.median(ts):,.0f}; x{min(times[HEADS[0]]) / min(ts):.2f} of {HEADS[0]} head(s)' best", flush=True)
