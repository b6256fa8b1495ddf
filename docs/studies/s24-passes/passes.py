"""The default model's CPU training step (batch 1024: 16 passes of 64, 1 device) as one program of all the passes
unrolled (jax.jit of train.train_step) or as train.py runs it now (train.make_p_train_steps: one program per two
passes, called from Python; train._PassSteps): compile time (the first call less a step), host memory after the
compile (freed memory given back), peak RSS, XLA's temporaries (the largest program's) and 3 steps' times
(docs/performance.md, twenty-fourth session). One JSON line.

    MODE=unrolled MIN_SIZE=16 PYTHONPATH=. python docs/studies/s24-passes/passes.py   # the twenty-third session's
    MODE=passes   MIN_SIZE=16 PYTHONPATH=. python docs/studies/s24-passes/passes.py
    MODE=passes   PYTHONPATH=. python docs/studies/s24-passes/passes.py   # Winograd from 8x8 (models' default)
    G=1|4 MODE=passes ...   # one or four passes per program (train.PASSES_IN_FLIGHT)
"""
import json
import os
import resource
import time

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=True)  # as train.py has it for this model
hostmem.run_cpu_programs_inline()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from jaxae import models, train  # noqa: E402
from jaxae.config import PRESETS, Config  # noqa: E402

mode = os.environ.get("MODE", "passes")
if os.environ.get("MIN_SIZE"):
    models._WINOGRAD_MIN_SIZE = int(os.environ["MIN_SIZE"])
if os.environ.get("G"):
    train.PASSES_IN_FLIGHT = int(os.environ["G"])


def rss_mb() -> int:
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024


cfg = Config(**{**PRESETS["long"], "batch_size": int(os.environ.get("B", "1024"))})
spe = 4
mesh = Mesh(np.array(jax.local_devices()[:1]), (train.AXIS,))
state = train.place_state(train.create_train_state(cfg, (32, 32, 3), 10 * spe, spe), mesh)
u8 = np.random.default_rng(0).integers(0, 256, (spe * cfg.batch_size, 32, 32, 3), np.uint8)
images = train.put_dataset(u8, mesh)
perm = train.device_epoch_order(0, 0, len(u8), spe, cfg.batch_size, mesh)
if mode == "unrolled":
    one = jax.jit(train.train_step, static_argnames="cfg", donate_argnums=(0,))
    batches = [jnp.asarray(u8[np.asarray(perm)[0, i]]) for i in range(spe)]

    def run(s):
        s, m = one(s, batches[int(s.step) % spe], jax.random.fold_in(s.key, s.step), cfg=cfg)
        return s, m["loss"]

    def temp_bytes():
        return one.lower(state, batches[0], state.key, cfg=cfg).compile().memory_analysis().temp_size_in_bytes
else:
    steps = train.make_p_train_steps(cfg, 1, spe)
    assert isinstance(steps, train._PassSteps), "not the passes' programs: more passes than PASSES_IN_FLIGHT?"

    def run(s):
        s, m = steps(s, images, perm)
        return s, m["loss"]

    def temp_bytes():
        return max(c.memory_analysis().temp_size_in_bytes for c, _ in train.compiled_steps(steps, state, images, perm))
t0 = time.time()
s, loss = run(jax.tree.map(jnp.copy, state))  # the compiles and a first step
jax.block_until_ready(loss)
first_call_s = time.time() - t0
hostmem.release_free_memory()
after_compile = rss_mb()
for _ in range(2):
    s, loss = run(s)
jax.block_until_ready(loss)
times = []
for _ in range(3):
    t0 = time.time()
    s, loss = run(s)
    jax.block_until_ready(loss)
    times.append(round(time.time() - t0, 2))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(json.dumps({"mode": mode, "passes_per_program": train.PASSES_IN_FLIGHT, "min_size": models._WINOGRAD_MIN_SIZE,
                  "batch": cfg.batch_size, "compile_s": round(first_call_s - min(times), 1),
                  "after_compile_mb": after_compile, "peak_mb": peak, "temp_mb": round(temp_bytes() / 1e6),
                  "step_s": times, "loss": float(np.asarray(loss).reshape(-1)[-1])}))
