"""The input gradient of a stride-2 3x3 'SAME' conv alone, two ways, interleaved: XLA's (a convolution of the output
gradient dilated by the stride) and col2im (one matmul of the output gradient with the kernel, then each tap's columns
added back where models._taps took them: JAX's transpose of models._patches). For the default model's and the old
default model's strided convs (one pass of 64 images) and one of 256. Freed host memory kept and programs inline, as
in train.py (docs/performance.md, thirty-fourth session). Argument: rounds (default 7), 10 calls a timing.

    PYTHONPATH=. python docs/studies/s34-col2im/dx.py
"""
import sys
import time

from jaxae import hostmem

hostmem.keep_freed_memory()
hostmem.run_cpu_programs_inline()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from jaxae import models  # noqa: E402


def xla_dx(x, w, g, pad):
    return jax.vjp(lambda x_: models._lax_conv(x_, w, (2, 2), pad, None), x)[1](g)[0]


def col2im_dx(x, w, g, pad):
    dcols = g.reshape(-1, w.shape[3]) @ w.reshape(-1, w.shape[3]).T
    return jax.vjp(lambda x_: models._patches(x_, w.shape[:2], (2, 2), pad)[0], x)[1](dcols)[0]


rng = np.random.default_rng(0)
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
for b, h, cin, cout in [(64, 16, 16, 32), (64, 8, 32, 64), (64, 16, 64, 128), (64, 8, 128, 256), (256, 16, 16, 32)]:
    x = jnp.asarray(rng.normal(size=(b, h, h, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, cin, cout)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(b, h // 2, h // 2, cout)), jnp.float32)
    pad = tuple(tuple(p) for p in lax.padtype_to_pads(x.shape[1:3], (3, 3), (2, 2), "SAME"))
    fns = {name: jax.jit(lambda x, w, g, f=f: f(x, w, g, pad)) for name, f in (("XLA", xla_dx), ("col2im", col2im_dx))}
    a, c = np.asarray(fns["XLA"](x, w, g)), np.asarray(fns["col2im"](x, w, g))
    times = {name: [] for name in fns}
    for r in range(rounds):
        for name, f in (fns.items() if r % 2 == 0 else list(fns.items())[::-1]):
            t = time.perf_counter()
            for _ in range(10):
                jax.block_until_ready(f(x, w, g))
            times[name].append((time.perf_counter() - t) / 10 * 1e3)
    print(f"{b} x {h}x{h}x{cin} -> {cout}: largest difference {np.abs(a - c).max() / np.abs(a).max():.1e} of the "
          f"largest value; " + "; ".join(f"{n} {min(v):.3f} ms best, {np.median(v):.3f} median"
                                         for n, v in times.items()), flush=True)
