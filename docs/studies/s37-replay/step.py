"""The default model's CPU training step (train._PassSteps, batch B) with the chosen code drawn by replaying the
rows the heads' pass recorded, or drawn again (models._REPLAY), interleaved in one process: K steps of each in turn
per round, R rounds, the order reversed every other round. Freed host memory kept and programs inline, as in
train.py (docs/performance.md, thirty-seventh session).

    PYTHONPATH=. python docs/studies/s37-replay/step.py              # B=256 K=20 R=6
    MODEL='{"head": "conv"}' PYTHONPATH=. python docs/studies/s37-replay/step.py     # the default model, changed
"""
import json
import os

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=False)
hostmem.run_cpu_programs_inline()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from docs.studies.steps import step_inputs, time_interleaved  # noqa: E402
from jaxae import models  # noqa: E402
from jaxae import train as T  # noqa: E402

B, K, R = (int(os.environ.get(k, d)) for k, d in (("B", 256), ("K", 20), ("R", 6)))
spe = 4
runs = {}
for replay in (False, True):
    models._REPLAY = replay  # read while tracing: each program keeps its way
    cfg, state, images, perm, n_micro = step_inputs("default", B, spe, **json.loads(os.environ.get("MODEL", "{}")))
    fn = T._PassSteps(cfg, 1, spe, B, n_micro)
    for _ in range(2):
        state, m = fn(state, images, perm)
    jax.block_until_ready(m)
    runs[replay] = [fn, state, images, perm, float(m["loss"][0])]
models._REPLAY = True
print(f"the loss of the second step: {runs[False][4]:.7f} drawn again, {runs[True][4]:.7f} replayed")
times = time_interleaved(runs, K, R)
for r, ts in times.items():
    model = f"default model {os.environ['MODEL']}" if os.environ.get("MODEL") else "default model"
    print(f"{model}, batch {B}, chosen code {'replayed' if r else 'drawn again'}: {K} steps a timing, best "
          f"{B / min(ts):,.0f} img/s, median {B / np.median(ts):,.0f}", flush=True)
