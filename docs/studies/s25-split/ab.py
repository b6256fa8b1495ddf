"""Needs jaxae as of commit bf5df66 (`git checkout bf5df66`): the split step it compares was reverted after it.

The default model's CPU step at one batch size, split (the middle part in chunks of MIDDLE_BATCH) against the passes
alone (train._PassSteps, split=False), interleaved in one process: one step of each in turn (the order alternating),
after one untimed step each. Freed host memory kept and programs inline, as in train.py (docs/performance.md,
twenty-fifth session).

    PYTHONPATH=. python docs/studies/s25-split/ab.py                   # batch 1024, 6 rounds, chunks of 256
    B=256 R=8 VARIANTS=plain,256,512 PYTHONPATH=. python docs/studies/s25-split/ab.py
    VARIANTS=plain@128,plain@1,256@1 PYTHONPATH=. python docs/studies/s25-split/ab.py   # @: models._WINOGRAD_MIN_TILES

A variant's floor of Winograd tiles is set before its first (untimed) step, when its programs are traced.
"""
import os
import time

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=True)
hostmem.run_cpu_programs_inline()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from jaxae import models  # noqa: E402
from jaxae import train as T  # noqa: E402
from jaxae.config import OLD_MODEL, Config  # noqa: E402

B, R = int(os.environ.get("B", 1024)), int(os.environ.get("R", 6))
variants = os.environ.get("VARIANTS", "256,plain").split(",")
cfg, spe = Config(**OLD_MODEL, batch_size=B), 4
mesh = Mesh(np.array(jax.local_devices()[:1]), (T.AXIS,))
state = T.place_state(T.create_train_state(cfg, (32, 32, 3), 1000, spe), mesh)
images = T.put_dataset(np.random.default_rng(0).integers(0, 256, (spe * B, 32, 32, 3), np.uint8), mesh)
perm = T.device_epoch_order(cfg.seed, 0, spe * B, spe, B, mesh)
n_micro = B // T.microbatch_size(cfg, B)
steps = {}
for v in variants:  # MIDDLE_BATCH is read when the step is built, the floor of tiles when it is traced (first call)
    kind, _, floor = v.partition("@")
    T.MIDDLE_BATCH = 256 if kind == "plain" else int(kind)
    models._WINOGRAD_MIN_TILES = int(floor or 128)
    steps[v] = T._PassSteps(cfg, 1, spe, B, n_micro, split=kind != "plain")
    state, m = steps[v](state, images, perm)
    jax.block_until_ready(m)
times = {v: [] for v in steps}
for r in range(R):
    for v in (variants if r % 2 == 0 else variants[::-1]):
        t0 = time.perf_counter()
        state, m = steps[v](state, images, perm)
        jax.block_until_ready(m)
        times[v].append(time.perf_counter() - t0)
for v, ts in times.items():
    kind, _, floor = v.partition("@")
    name = ("passes alone" if kind == "plain" else f"split, middle in chunks of {kind}") + (
        f", Winograd from {floor} tiles" if floor else "")
    print(f"batch {B}, {name}: steps " + " ".join(f"{t * 1e3:.0f}" for t in ts) + f" ms; best {B / min(ts):.0f} img/s, "
          f"median {B / np.median(ts):.0f}")
