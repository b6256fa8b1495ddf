"""The quick model's head conv (16x16, 16 -> 12 channels: the last upsampling, whose 12 channels become the 32x32x3
image), forward pass and both gradients of one pass of 64 images, computed each way models.cpu_conv knows: XLA's
own conv; the current path (XLA's conv, the kernel gradient as 9 tap matmuls); output shifts (models._conv_out_shifts
forward, models._conv_dw_grad_shifts for the kernel gradient: what convs of at most 4 output channels use); and
Winograd. Milliseconds, best / median of R rounds of 10 calls, the ways in turn.

    PYTHONPATH=. python docs/studies/s27-wino/head.py                 # 64x16x16x16x12
    PYTHONPATH=. R=9 python docs/studies/s27-wino/head.py 64x16x16x16x12 64x32x32x16x3
"""
import os
import sys
import time

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=True)
hostmem.run_cpu_programs_inline()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from jaxae import models as m  # noqa: E402

SAME = ((1, 1), (1, 1))


def shifts(x, w):
    @jax.custom_vjp
    def conv(x, w):
        return m._conv_out_shifts(x, w, SAME)

    def fwd(x, w):
        return conv(x, w), (x, w)

    def bwd(res, g):
        x, w = res
        dx = jax.vjp(lambda x_: m._lax_conv(x_, w, (1, 1), SAME, None), x)[1](g)[0]
        return dx, m._conv_dw_grad_shifts(x, g, w.shape, SAME)

    conv.defvjp(fwd, bwd)
    return conv(x, w)


WAYS = {"xla": lambda x, w: lax.conv_general_dilated(x, w, (1, 1), SAME, dimension_numbers=m._NHWC),
        "taps (now)": lambda x, w: m._conv_cpu(x, w, (1, 1), SAME, None, True),
        "shifts": shifts,
        "winograd": lambda x, w: m.winograd_conv(x, w, SAME)}


def program(conv):
    def f(x, w, g):
        y, vjp = jax.vjp(conv, x, w)
        return (y,) + vjp(g)
    return jax.jit(f)


def main():
    rounds = int(os.environ.get("R", "7"))
    rng = np.random.default_rng(0)
    for spec in sys.argv[1:] or ["64x16x16x16x12"]:
        b, h, wd, c, co = map(int, spec.split("x"))
        x = jnp.asarray(rng.standard_normal((b, h, wd, c), np.float32))
        w = jnp.asarray(rng.standard_normal((3, 3, c, co), np.float32) / np.sqrt(9 * c))
        g = jnp.asarray(rng.standard_normal((b, h, wd, co), np.float32))
        fs = {k: program(f) for k, f in WAYS.items()}
        ref = jax.block_until_ready(fs["xla"](x, w, g))
        for k, f in fs.items():
            got = jax.block_until_ready(f(x, w, g))
            err = max(float(jnp.max(jnp.abs(a - r)) / jnp.max(jnp.abs(r))) for a, r in zip(got, ref))
            assert err < 1e-4, (k, err)
        t = {k: [] for k in fs}
        for r in range(rounds):
            for k, f in (list(fs.items()) if r % 2 == 0 else list(fs.items())[::-1]):
                t0 = time.perf_counter()
                for _ in range(10):
                    out = f(x, w, g)
                jax.block_until_ready(out)
                t[k].append((time.perf_counter() - t0) / 10 * 1e3)
        print(f"{spec}: " + "  ".join(f"{k} {min(v):.2f} / {np.median(v):.2f} ms" for k, v in t.items()), flush=True)


if __name__ == "__main__":
    main()
