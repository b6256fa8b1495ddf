"""Winograd's kernel transform (G g G^T, [3, 3, Cin, Cout] -> [36, Cin, Cout]) three ways, inside one conv's forward
pass and both gradients (models.winograd_conv), against XLA's own conv: as the einsum the twenty-third session wrote
(two dots of a contraction of 3, with transposes), as one dot of a [36, 9] matrix, and as scaled adds (models._rows;
what models._winograd_kernel does since the twenty-fifth session). Milliseconds, best of 3 timings of 10 calls, freed
host memory kept as in train.py (docs/performance.md, twenty-fifth session).

    PYTHONPATH=. python docs/studies/s25-split/kernel.py 64x4x4x256x256 256x4x4x256x256   # B x H x W x Cin x Cout
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
G = np.asarray(models._WINO_G, np.float64)
M = np.einsum("ak,bl->bakl", G, G).reshape(36, 9).astype(np.float32)


def k_einsum(w):
    g = jnp.asarray(models._WINO_G, w.dtype)
    return jnp.einsum("ak,bl,klio->baio", g, g, w).reshape(-1, w.shape[2], w.shape[3])


def k_dot(w):
    return jnp.matmul(jnp.asarray(M), w.reshape(9, -1)).reshape(36, w.shape[2], w.shape[3])


def timed(f, *args, calls=10, repeats=3):
    f = jax.jit(f)
    out = jax.block_until_ready(f(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            r = f(*args)
        jax.block_until_ready(r)
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e3, out


def fwd_and_grads(conv):
    def f(x, w, g):
        y, vjp = jax.vjp(conv, x, w)
        return (y,) + vjp(g)
    return f


rng = np.random.default_rng(0)
scaled_adds = models._winograd_kernel
print("B x H x W x Cin x Cout   XLA ms   einsum ms   dot ms   scaled adds ms   (largest error / largest value)")
for spec in sys.argv[1:] or ["64x4x4x256x256", "256x4x4x256x256", "64x16x16x64x256"]:
    b, h, wd, c, co = map(int, spec.split("x"))
    x = jnp.asarray(rng.standard_normal((b, h, wd, c), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, c, co), np.float32) / np.sqrt(9 * c))
    g = jnp.asarray(rng.standard_normal((b, h, wd, co), np.float32))
    t_xla, ref = timed(fwd_and_grads(lambda x, w: lax.conv_general_dilated(
        x, w, (1, 1), SAME, dimension_numbers=models._NHWC)), x, w, g)
    row = [f"{spec:22s} {t_xla:7.1f}"]
    for kernel in (k_einsum, k_dot, scaled_adds):
        models._winograd_kernel = kernel
        t, got = timed(fwd_and_grads(lambda x, w: models.winograd_conv(x, w, SAME)), x, w, g)
        err = max(float(jnp.max(jnp.abs(a - r)) / jnp.max(jnp.abs(r))) for a, r in zip(got, ref))
        row.append(f"{t:8.1f} ({err:.0e})")
    models._winograd_kernel = scaled_adds
    print("  ".join(row), flush=True)
