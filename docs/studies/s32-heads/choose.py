"""The choice among encoder heads, its drawings compared as images (depth-to-space of each, then the error) or as
the sub-pixel conv's output (the image space-to-depth instead; models.Autoencoder._choose's `cells`): the quick
preset's code (encode's) and drawing (reconstruct's, the test pass's) of the 10,000 test images, both ways in one
process, interleaved, with train.py's allocator settings (docs/performance.md, thirty-second session). Arguments:
rounds (default 5), batch (500), and a workdir of a trained run (its weights and test images; random ones without).

    PYTHONPATH=. python docs/studies/s32-heads/choose.py 5 500 runs/s31/q4e10
"""
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import hostmem

hostmem.keep_freed_memory()
hostmem.run_cpu_programs_inline()

from jaxae import evaluate, models  # noqa: E402
from jaxae.config import PRESETS, Config  # noqa: E402
from jaxae.train import init_params  # noqa: E402

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 500
if len(sys.argv) > 3:
    cfg, state, ds = evaluate.restore(sys.argv[3])
    model, params = models.model_from_config(cfg, ds.image_shape), state.params
    x = jax.device_put(ds.test_images[:10000])
else:
    model = models.model_from_config(Config(**PRESETS["quick"]), (32, 32, 3))
    params = init_params(model, jax.random.PRNGKey(0), (32, 32, 3))
    x = jax.device_put(np.random.default_rng(0).integers(0, 256, (10000, 32, 32, 3), np.uint8))
chunks = [x[i:i + batch] for i in range(0, len(x), batch)]


def program(output, cells):
    """A compiled program of the choice made one way, giving the code (encode's) or the drawing (reconstruct's)."""
    i = ("encode", "reconstruct").index(output)
    fn = jax.jit(lambda p, b: model.apply({"params": p}, b.astype(jnp.float32) / 255.0,
                                          method=lambda m, x: m._choose(x, cells=cells)[i]))
    return fn.lower(params, chunks[0]).compile()


ways = {(m, c): program(m, c) for m in ("encode", "reconstruct") for c in (False, True)}
outs = {k: np.concatenate([np.asarray(f(params, c)) for c in chunks]) for k, f in ways.items()}
for m in ("encode", "reconstruct"):
    a, b = outs[(m, False)], outs[(m, True)]
    differ = (np.abs(a - b).reshape(len(a), -1).max(1) > 1e-5).sum()
    print(f"{m}: {differ} of {len(a)} images differ by more than 1e-5 (max abs difference {np.abs(a - b).max():.2e})")
times = {k: [] for k in ways}
for _ in range(rounds):
    for k, f in ways.items():
        t = time.perf_counter()
        jax.block_until_ready([f(params, c) for c in chunks])
        times[k].append(time.perf_counter() - t)
for (m, c), ts in times.items():
    print(f"{m:12s} compared as {'sub-pixel cells' if c else 'images':15s}: {min(ts):.3f} s best, "
          f"{statistics.median(ts):.3f} s median over {rounds} rounds of 10k images in calls of {batch}")
