"""The Winograd convs' kernel gradient dU = V^T dM: XLA:CPU runs it as its own dot_general (a transposed operand,
which it does not give to YNNPACK). Variants of models.winograd_conv's backward pass, one conv's forward pass and
both gradients for one pass of 64 images, timed in turn (best and median of R rounds of 10 calls each):

- now: models.winograd_conv as it is;
- vt: V^T [36, Cin, P] computed directly by the input transform of x in [C, B, H, W] order, so that dU = V^T @ dM
  is a plain [Cin, P] @ [P, Cout] matmul per position;
- barrier: V transposed in a copy that XLA cannot fold back (lax.optimization_barrier), then the same matmul.

    PYTHONPATH=. python docs/studies/s27-wino/dw.py                      # the default model's Winograd shapes
    PYTHONPATH=. HLO=1 python docs/studies/s27-wino/dw.py 64x16x16x64x64  # also: the dots of each compiled program
    VARIANTS=now,vt R=7 PYTHONPATH=. python docs/studies/s27-wino/dw.py
"""
import functools
import os
import re
import sys
import time

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=True)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from jaxae import models as m  # noqa: E402

SAME = ((1, 1), (1, 1))
SHAPES = ["64x16x16x64x64", "64x16x16x64x256", "64x8x8x128x128", "64x8x8x128x512", "64x4x4x256x256"]


def winograd_in_t(x, padding):
    """[B, H, W, C] -> V^T [36, C, B*nh*nw]: m._winograd_in's transform with the channels before the tiles."""
    mm, t = m._WINO_M, m._WINO_T
    b, h, wd, c = x.shape
    nh, nw = m._tiles(*m._out_size(x, padding))
    xp = jnp.pad(x, ((0, 0), (padding[0][0], nh * mm + 2 - h - padding[0][0]),
                     (padding[1][0], nw * mm + 2 - wd - padding[1][0]), (0, 0))).transpose(3, 0, 1, 2)
    v = jnp.stack(m._rows(m._WINO_BT, [lax.slice_in_dim(xp, k, k + mm * (nh - 1) + 1, mm, 2) for k in range(t)]))
    v = jnp.stack(m._rows(m._WINO_BT, [lax.slice_in_dim(v, k, k + mm * (nw - 1) + 1, mm, 4) for k in range(t)]))
    return v.reshape(t * t, c, b * nh * nw)  # [6 (along W), 6 (along H), C, B, nh, nw]


def make(variant):
    if variant == "now":
        return lambda x, w: m.winograd_conv(x, w, SAME)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def conv(x, w, padding):
        return m.winograd_conv(x, w, padding)

    def fwd(x, w, padding):
        return conv(x, w, padding), (x, w)

    def bwd(padding, res, g):
        x, w = res
        _, in_t = jax.vjp(lambda x_: m._winograd_in(x_, padding), x)  # its transpose, for dV
        u, k_t = jax.vjp(m._winograd_kernel, w)
        p = g.shape[0] * np.prod(m._tiles(*g.shape[1:3]))
        out_t = jax.linear_transpose(lambda mm: m._winograd_out(mm, g.shape),
                                     jax.ShapeDtypeStruct((36, int(p), w.shape[3]), g.dtype))
        dm, = out_t(g)
        dv = jnp.matmul(dm, jnp.swapaxes(u, 1, 2))
        if variant == "vt":
            vt = winograd_in_t(x, padding)
        else:
            vt = lax.optimization_barrier(jnp.swapaxes(m._winograd_in(x, padding), 1, 2))
        du = jnp.matmul(vt, dm)
        return in_t(dv)[0], k_t(du)[0]

    conv.defvjp(fwd, bwd)
    return lambda x, w: conv(x, w, SAME)


def program(conv):
    def f(x, w, g):
        y, vjp = jax.vjp(conv, x, w)
        return (y,) + vjp(g)
    return jax.jit(f)


def dots(f, *args) -> str:
    hlo = f.lower(*args).compile().as_text()
    plain = len(re.findall(r"= \S+ dot\(", hlo))
    ynn = len(re.findall(r"ynn_fusion[.\d]* = ", hlo))
    return f"{plain} dot ops outside fusions, {ynn} ynn fusions"


def main():
    variants = os.environ.get("VARIANTS", "now,vt,barrier").split(",")
    rounds = int(os.environ.get("R", "5"))
    rng = np.random.default_rng(0)
    for spec in sys.argv[1:] or SHAPES:
        b, h, wd, c, co = map(int, spec.split("x"))
        x = jnp.asarray(rng.standard_normal((b, h, wd, c), np.float32))
        w = jnp.asarray(rng.standard_normal((3, 3, c, co), np.float32) / np.sqrt(9 * c))
        g = jnp.asarray(rng.standard_normal((b, h, wd, co), np.float32))
        fs = {v: program(make(v)) for v in variants}  # a fresh function each: jit caches by function object
        ref = jax.block_until_ready(fs[variants[0]](x, w, g))
        errs = {}
        for v, f in fs.items():
            got = jax.block_until_ready(f(x, w, g))
            errs[v] = max(float(jnp.max(jnp.abs(a - r)) / jnp.max(jnp.abs(r))) for a, r in zip(got, ref))
            if os.environ.get("HLO"):
                print(f"  {spec} {v}: {dots(f, x, w, g)}")
        times = {v: [] for v in variants}
        for _ in range(rounds):
            for v, f in fs.items():
                t0 = time.perf_counter()
                for _ in range(10):
                    r = f(x, w, g)
                jax.block_until_ready(r)
                times[v].append((time.perf_counter() - t0) / 10 * 1e3)
        cells = "  ".join(f"{v} {min(t):6.2f} / {np.median(t):6.2f} ms (err {errs[v]:.0e})" for v, t in times.items())
        print(f"{spec:18s} {cells}", flush=True)


if __name__ == "__main__":
    main()
