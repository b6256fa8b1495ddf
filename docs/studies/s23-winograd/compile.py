"""The default model's CPU training step (batch 1024: 16 unrolled passes of 64) compiled with and without the
Winograd convs: compile time, host memory after the compile (freed memory given back: what the executable keeps),
XLA's temporaries and the best of 3 steps (docs/performance.md, twenty-third session). One JSON line.

    MODE=before   PYTHONPATH=. python docs/studies/s23-winograd/compile.py   # lax's convs (no Winograd)
    MODE=winograd PYTHONPATH=. python docs/studies/s23-winograd/compile.py   # as jaxae.models decides
    MODE=winograd MIN_SIZE=8 PYTHONPATH=. python docs/studies/s23-winograd/compile.py   # also the 8x8 convs
    MODE=einsum   MIN_SIZE=8 ...   # the tile transforms as einsums (dots) instead of fused adds
"""
import json
import os
import resource
import time

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=True)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from jaxae import models, train  # noqa: E402
from jaxae.config import PRESETS, Config  # noqa: E402

mode = os.environ.get("MODE", "winograd")
if os.environ.get("MIN_SIZE"):
    models._WINOGRAD_MIN_SIZE = int(os.environ["MIN_SIZE"])
if mode == "before":
    models._WINOGRAD_MIN_CHANNELS = 1 << 30
if mode == "einsum":
    BT, AT = np.array(models._WINO_BT, np.float32), np.array(models._WINO_AT, np.float32)

    def winograd_in(x, padding):
        m, t = models._WINO_M, models._WINO_T
        b, h, wd, c = x.shape
        nh, nw = models._tiles(*models._out_size(x, padding))
        xp = jnp.pad(x, ((0, 0), (padding[0][0], nh * m + 2 - h - padding[0][0]),
                         (padding[1][0], nw * m + 2 - wd - padding[1][0]), (0, 0)))
        v = jnp.einsum("ak,kbhwc->abhwc", BT,
                       jnp.stack([lax.slice_in_dim(xp, k, k + m * (nh - 1) + 1, m, 1) for k in range(t)]))
        v = jnp.einsum("ak,kjbhwc->ajbhwc", BT,
                       jnp.stack([lax.slice_in_dim(v, k, k + m * (nw - 1) + 1, m, 3) for k in range(t)]))
        return v.reshape(t * t, b * nh * nw, c)

    def winograd_out(mm, shape):
        m, t = models._WINO_M, models._WINO_T
        b, ho, wo, co = shape
        nh, nw = models._tiles(ho, wo)
        mm = jnp.einsum("qb,pa,banhwo->qpnhwo", AT, AT, mm.reshape(t, t, b, nh, nw, co))
        return mm.transpose(2, 3, 1, 4, 0, 5).reshape(b, nh * m, nw * m, co)[:, :ho, :wo]

    models._winograd_in, models._winograd_out = winograd_in, winograd_out


def rss_mb() -> int:
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024


cfg = Config(**{**PRESETS["long"], "batch_size": int(os.environ.get("B", "1024"))})
state = train.create_train_state(cfg, (32, 32, 3), 10, 10)
batch, key = jnp.zeros((cfg.batch_size, 32, 32, 3), jnp.uint8), jax.random.PRNGKey(0)
t0 = time.time()
step = jax.jit(train.train_step, static_argnames="cfg").lower(state, batch, key, cfg=cfg).compile()
compile_s = time.time() - t0
compile_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
hostmem.release_free_memory()
after_compile = rss_mb()
jax.block_until_ready(step(state, batch, key))
best = float("inf")
for _ in range(3):
    t0 = time.time()
    jax.block_until_ready(step(state, batch, key))
    best = min(best, time.time() - t0)
print(json.dumps({"mode": mode, "min_size": models._WINOGRAD_MIN_SIZE, "batch": cfg.batch_size,
                  "compile_s": round(compile_s, 1), "compile_peak_mb": compile_peak,
                  "after_compile_mb": after_compile, "temp_mb": round(step.memory_analysis().temp_size_in_bytes / 1e6),
                  "step_s": round(best, 2)}))
