"""Training img/s of the default model's step with the two ways of ordering its microbatch passes (train._after): one
element of the summed gradients (before the twentieth session) or their maxima; both compiled in one process, timed
alternately (docs/performance.md, twentieth session). Arguments: batch size, steps per timing, rounds.

    PYTHONPATH=. python docs/studies/s20-memory/afterspeed.py 1024 4 3
    PYTHONPATH=. python docs/studies/s20-memory/afterspeed.py 256 12 3
"""
import sys, time, jax, numpy as np
from jaxae import train, hostmem
from jaxae.config import OLD_MODEL, Config
hostmem.keep_freed_memory(); hostmem.run_cpu_programs_inline()

def after_old(tree, x):
    dep = sum(leaf.ravel()[-1].astype(x.dtype) for leaf in jax.tree.leaves(tree))
    return x + 0.0 * dep
after_new = train._after
b, n, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cfg = Config(**OLD_MODEL, batch_size=b)
state0 = train.create_train_state(cfg, (32, 32, 3), 4800, 48)
rng = np.random.default_rng(0)
batches = [rng.integers(0, 256, (b, 32, 32, 3), dtype=np.uint8) for _ in range(2)]
fns = {}
for name, fn in (("old", after_old), ("new", after_new)):
    train._after = fn
    step = jax.jit(train.train_step, static_argnames="cfg")
    fns[name] = step.lower(state0, batches[0], jax.random.PRNGKey(0), cfg=cfg).compile()
res = {k: [] for k in fns}
for r in range(rounds):
    for name, f in fns.items():
        s = state0
        s, m = f(s, batches[0], jax.random.PRNGKey(0)); jax.block_until_ready(m)
        t = time.perf_counter()
        for i in range(n):
            s, m = f(s, batches[i % 2], jax.random.PRNGKey(i))
        jax.block_until_ready(m)
        res[name].append(b * n / (time.perf_counter() - t))
        print(r, name, f"{res[name][-1]:.0f} img/s", flush=True)
for name, v in res.items():
    print(name, "best", f"{max(v):.0f}", "median", f"{np.median(v):.0f}")
