"""The optimiser's update alone (TrainState.apply_gradients: optax's clip_by_global_norm + AdamW over every
parameter), jitted, for the quick preset's and the default model's parameters: milliseconds per update, best and
median of 7 timings of 20 updates. Freed host memory kept and programs inline, as in train.py.

    PYTHONPATH=. python docs/studies/s27-dots/update.py
"""
from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=True)
hostmem.run_cpu_programs_inline()

import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxae import train as T  # noqa: E402
from jaxae.config import with_preset  # noqa: E402

for preset, batch in (("quick", 128), ("default", 1024)):
    cfg = with_preset({"preset": preset, "batch_size": batch})
    state = T.create_train_state(cfg, (32, 32, 3), 1000, 4)
    n = sum(x.size for x in jax.tree.leaves(state.params))
    grads = jax.tree.map(lambda p: p * 0.01, state.params)
    update = jax.jit(lambda s, g: s.apply_gradients(grads=g))
    s = jax.block_until_ready(update(state, grads))
    ts = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(20):
            s = update(s, grads)
        jax.block_until_ready(s)
        ts.append((time.perf_counter() - t0) / 20)
    print(f"{preset}: {n:,} parameters, update {min(ts) * 1e3:.2f} / {np.median(ts) * 1e3:.2f} ms; "
          f"{7 * 4 * n / min(ts) / 1e9:.1f} GB/s counting 7 float32 arrays read or written once")
