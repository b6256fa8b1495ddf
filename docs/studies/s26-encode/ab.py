"""The default model's CPU step (train._PassSteps, batch B) with this session's changes on and off, interleaved in one
process: one step of each variant in turn (the order alternating), after one untimed step each. Freed host memory
kept and programs inline, as in train.py (docs/performance.md, twenty-sixth session).

    PYTHONPATH=. python docs/studies/s26-encode/ab.py                   # batch 1024, 6 rounds: none, im2col+bias
    B=256 R=8 VARIANTS=none,im2col,bias,im2col+bias PYTHONPATH=. python docs/studies/s26-encode/ab.py
    PRESET=quick B=128 R=10 VARIANTS=none,im2col PYTHONPATH=. python docs/studies/s26-encode/ab.py

A variant is the changes it turns on, joined by "+" ("none": none of them): im2col (models._IM2COL: strided convs as
one matmul of their patches), bias (models._BIAS_LAST: the upsampling convs' bias gradient as the sum of an [N, C]
view), onepass (models._WINO_ONE_PASS, tried and dropped: Winograd's tile transforms along both axes in one pass,
which needs that flag restored in models.py); "all": all three. wino32 (twenty-seventh session): Winograd's convs
from 32 input channels (models._WINOGRAD_MIN_CHANNELS), not 64. The flags are read when a variant's programs are
traced (its first call); each variant's lowered passes program is checked to differ from the others'.
"""
import hashlib
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

B, R = int(os.environ.get("B", 1024)), int(os.environ.get("R", 6))
variants = os.environ.get("VARIANTS", "none,im2col+bias").split(",")
PRESET = os.environ.get("PRESET", "default")
spe = 4
cfg, state, images, perm, n_micro = step_inputs(PRESET, B, spe)
steps, digests = {}, {}
for v in variants:
    on = {"im2col", "bias", "onepass"} if v == "all" else set(v.split("+")) - {"none"}
    models._IM2COL, models._BIAS_LAST = ("im2col" in on), ("bias" in on)
    models._WINOGRAD_MIN_CHANNELS = 32 if "wino32" in on else 64
    if hasattr(models, "_WINO_ONE_PASS"):
        models._WINO_ONE_PASS = "onepass" in on
    elif "onepass" in on:
        raise SystemExit("onepass needs models._WINO_ONE_PASS, which was dropped (see this script's docstring)")
    steps[v] = T._PassSteps(cfg, 1, spe, B, n_micro)
    text = steps[v].lowered(state, images, perm)[0][0].as_text()
    digests[v] = hashlib.sha1(text.encode()).hexdigest()[:10]
    print(f"{v}: passes program {digests[v]}, {text.count('stablehlo.convolution')} convolutions", flush=True)
    state, m = steps[v](state, images, perm)
    jax.block_until_ready(m)
assert len(set(digests.values())) == len(digests), "two variants traced to the same program"
times = {v: [] for v in steps}
for r in range(R):
    for v in (variants if r % 2 == 0 else variants[::-1]):
        t0 = time.perf_counter()
        state, m = steps[v](state, images, perm)
        jax.block_until_ready(m)
        times[v].append(time.perf_counter() - t0)
for v, ts in times.items():
    print(f"batch {B}, {v}: steps " + " ".join(f"{t * 1e3:.0f}" for t in ts) + f" ms; best {B / min(ts):.0f} img/s, "
          f"median {B / np.median(ts):.0f}")
