"""The quick preset's CPU step (train._PassSteps, batch B) with Winograd's convs from BASE input channels (default 64,
as before the twenty-seventh session) and from MIN (default 32: the quick model's 8x8 upsampling conv too; 16: its
head conv as well), interleaved in one process: K steps of each in turn per round, R rounds, the order alternating.
Freed host memory kept and programs inline, as in train.py.

    PYTHONPATH=. python docs/studies/s27-wino/quick.py            # B=128 K=20 R=10 MIN=32
    PRESET=default B=256 K=2 R=6 MIN=32 PYTHONPATH=. python docs/studies/s27-wino/quick.py
    BASE=32 MIN=16 R=16 PYTHONPATH=. python docs/studies/s27-wino/quick.py
"""
import os
import time

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=True)
hostmem.run_cpu_programs_inline()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from docs.studies.steps import step_inputs  # noqa: E402
from jaxae import models  # noqa: E402
from jaxae import train as T  # noqa: E402

B, K, R = (int(os.environ.get(k, d)) for k, d in (("B", 128), ("K", 20), ("R", 10)))
PRESET, MIN = os.environ.get("PRESET", "quick"), int(os.environ.get("MIN", 32))
BASE = int(os.environ.get("BASE", 64))
spe = 4
cfg, state, images, perm, n_micro = step_inputs(PRESET, B, spe)
variants, before = {BASE: None, MIN: None}, models._WINOGRAD_MIN_CHANNELS
for v in variants:
    models._WINOGRAD_MIN_CHANNELS = v  # read when the variant's programs are traced (below)
    variants[v] = T._PassSteps(cfg, 1, spe, B, n_micro)
    text = variants[v].lowered(state, images, perm)[0][0].as_text()
    print(f"Winograd from {v} channels: {text.count('stablehlo.convolution')} convolutions left in the passes program")
    for _ in range(2):
        state, m = variants[v](state, images, perm)
    jax.block_until_ready(m)
models._WINOGRAD_MIN_CHANNELS = before
times = {v: [] for v in variants}
for r in range(R):
    for v in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
        t0 = time.perf_counter()
        for _ in range(K):
            state, m = variants[v](state, images, perm)
        jax.block_until_ready(m)
        times[v].append((time.perf_counter() - t0) / K)
for v, ts in times.items():
    print(f"{PRESET} batch {B}, Winograd from {v} channels: {K} steps a timing, best {B / min(ts):,.0f} img/s, "
          f"median {B / np.median(ts):,.0f}")
