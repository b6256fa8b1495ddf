"""One conv's forward pass and both gradients, as the default model's CPU step computes them for one pass of 64
images: XLA's own convolution, the path before Winograd (models._conv_cpu: XLA's, with the tap-matmul kernel
gradient for the upsampling convs) and Winograd's F(4x4, 3x3) (models.winograd_conv). Freed host memory kept, as in
train.py. Milliseconds, best of 3 timings of 10 calls (docs/performance.md, twenty-third session).

    PYTHONPATH=. python docs/studies/s23-winograd/convs.py            # the default model's stride-1 shapes
    PYTHONPATH=. python docs/studies/s23-winograd/convs.py 64x16x16x16x12 64x8x8x32x64   # B x H x W x Cin x Cout
"""
import sys
import time

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=True)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from jaxae import models  # noqa: E402

SAME = ((1, 1), (1, 1))
SHAPES = ["64x16x16x64x64", "64x8x8x128x128", "64x4x4x256x256", "64x4x4x256x512", "64x8x8x128x256",
          "64x16x16x64x256"]


def timed(conv, x, w, g, calls=10, repeats=3):
    def f(x, w, g):
        y, vjp = jax.vjp(conv, x, w)
        return (y,) + vjp(g)
    f = jax.jit(f)
    out = jax.block_until_ready(f(x, w, g))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            r = f(x, w, g)
        jax.block_until_ready(r)
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e3, out


rng = np.random.default_rng(0)
print("shape (B x H x W x Cin -> Cout)   XLA ms   before ms   Winograd ms   Winograd's largest error / largest value")
for spec in sys.argv[1:] or SHAPES:
    b, h, wd, c, co = map(int, spec.split("x"))
    x = jnp.asarray(rng.standard_normal((b, h, wd, c), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, c, co), np.float32) / np.sqrt(9 * c))
    g = jnp.asarray(rng.standard_normal((b, h, wd, co), np.float32))
    t_xla, ref = timed(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), SAME,
                                                             dimension_numbers=models._NHWC), x, w, g)
    t_before, _ = timed(lambda x, w: models._conv_cpu(x, w, (1, 1), SAME, None, co > c), x, w, g)
    t_wino, got = timed(lambda x, w: models.winograd_conv(x, w, SAME), x, w, g)
    err = max(float(jnp.max(jnp.abs(a - r)) / jnp.max(jnp.abs(r))) for a, r in zip(got, ref))
    print(f"{b}x{h}x{wd}x{c} -> {co:<4}              {t_xla:7.1f}   {t_before:9.1f}   {t_wino:11.1f}   {err:.1e}",
          flush=True)
