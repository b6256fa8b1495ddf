"""A CPU training step (train._PassSteps, batch B) with the strided convs' input gradient as XLA's (a convolution of
the output gradient dilated by the stride, three of its four multiplies by zeros) or as the transpose of their im2col
(col2im below: one matmul, then each tap's columns added back where models._taps took them), interleaved in one
process: K steps of each in turn per round, R rounds, the order reversed every other round. Freed host memory kept and
programs inline, as in train.py (docs/performance.md, thirty-fourth session: the convs' input gradients were 20-57 %
faster alone, the steps no faster, so models.py keeps XLA's).

    PYTHONPATH=. python docs/studies/s34-col2im/ab.py                       # the default model, B=256 K=10 R=8
    PRESET=long B=256 K=2 R=6 PYTHONPATH=. python docs/studies/s34-col2im/ab.py
"""
import os

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=os.environ.get("PRESET", "default") == "long")
hostmem.run_cpu_programs_inline()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from docs.studies.steps import step_inputs, time_interleaved  # noqa: E402
from jaxae import models  # noqa: E402
from jaxae import train as T  # noqa: E402

PRESET = os.environ.get("PRESET", "default")
B, K, R = (int(os.environ.get(k, d)) for k, d in (("B", 256), ("K", 10), ("R", 8)))
spe = 4


def col2im_bwd(strides, padding, precision, kernel_grad_taps, res, g):
    """models._conv_cpu_bwd, with the input gradient of its strided (im2col) convs as the transpose of the im2col."""
    x, w = res
    dx, dw = xla_bwd(strides, padding, precision, kernel_grad_taps, res, g)
    if models._im2col(strides, w):
        dcols = jnp.matmul(g.reshape(-1, w.shape[3]), w.reshape(-1, w.shape[3]).T, precision=precision)
        dx = jax.vjp(lambda x_: models._patches(x_, w.shape[:2], strides, padding)[0], x)[1](dcols)[0]
    return dx, dw


xla_bwd = models._conv_cpu_bwd
runs = {}
for col2im in (False, True):
    models._conv_cpu.defvjp(models._conv_cpu_fwd, col2im_bwd if col2im else xla_bwd)  # read while tracing
    cfg, state, images, perm, n_micro = step_inputs(PRESET, B, spe)
    fn = T._PassSteps(cfg, 1, spe, B, n_micro)
    for _ in range(2):
        state, m = fn(state, images, perm)
    jax.block_until_ready(m)
    runs[col2im] = [fn, state, images, perm, float(m["loss"][0])]
models._conv_cpu.defvjp(models._conv_cpu_fwd, xla_bwd)
diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
           zip(jax.tree.leaves(runs[False][1].params), jax.tree.leaves(runs[True][1].params)))
print(f"after 2 steps: loss {runs[False][4]:.7f} (XLA's) and {runs[True][4]:.7f} (col2im); parameters differ by "
      f"{diff:.1e} at most", flush=True)
times = time_interleaved(runs, K, R)
for c, ts in times.items():
    print(f"{PRESET} batch {B}, input gradient {'col2im' if c else 'XLA':6s}: {K} steps a timing, best "
          f"{B / min(ts):,.0f} img/s, median {B / np.median(ts):,.0f}", flush=True)
