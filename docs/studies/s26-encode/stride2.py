"""A 3x3 stride-2 'SAME' conv (the encoder's downsampling convs) three ways, forward pass and both gradients:
XLA's own conv (what models.cpu_conv runs now) against im2col, the 9 taps' strided slices side by side as one
[B*Ho*Wo, 9*Cin] patch matrix, then one matmul for the forward pass ([9*Cin, Cout]) and one for the kernel
gradient (patches^T @ g), the input gradient XLA's own or the patches' gradient (g @ W^T, scattered back).
Milliseconds, best of 3 timings of 10 calls, a fresh jitted function per variant.

    PYTHONPATH=. python docs/studies/s26-encode/stride2.py 64x16x16x64x128 64x8x8x128x256 64x32x32x3x64
"""
import sys
import time

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=True)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

PAD = ((0, 1), (0, 1))  # flax's 'SAME' for a 3x3 stride-2 conv of an even size
DN = ("NHWC", "HWIO", "NHWC")


def xla_conv(x, w):
    return lax.conv_general_dilated(x, w, (2, 2), PAD, dimension_numbers=DN)


def patches(x):
    b, h, wd, c = x.shape
    xp = jnp.pad(x, ((0, 0), PAD[0], PAD[1], (0, 0)))
    ho, wo = h // 2, wd // 2
    taps = [lax.slice(xp, (0, i, j, 0), (b, i + 2 * ho - 1, j + 2 * wo - 1, c), (1, 2, 2, 1))
            for i in range(3) for j in range(3)]
    return jnp.stack(taps, axis=3).reshape(b * ho * wo, 9 * c)


def make_im2col(dx_mode):
    @jax.custom_vjp
    def conv(x, w):
        b, h, wd, _ = x.shape
        return (patches(x) @ w.reshape(-1, w.shape[3])).reshape(b, h // 2, wd // 2, w.shape[3])

    def fwd(x, w):
        return conv(x, w), (x, w)

    def bwd(res, g):
        x, w = res
        g2 = g.reshape(-1, w.shape[3])
        dw = (patches(x).T @ g2).reshape(w.shape)
        if dx_mode == "xla":
            dx = jax.vjp(lambda x_: xla_conv(x_, w), x)[1](g)[0]
        else:
            dx = jax.vjp(patches, x)[1](g2 @ w.reshape(-1, w.shape[3]).T)[0]
        return dx, dw

    conv.defvjp(fwd, bwd)
    return conv


def timed(fn, *args):
    jax.block_until_ready(fn(*args))
    best = 1e9
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(10):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t) / 10)
    return best * 1e3


def main():
    for spec in sys.argv[1:]:
        b, h, w, ci, co = map(int, spec.split("x"))
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((b, h, w, ci), np.float32))
        k = jnp.asarray(rng.standard_normal((3, 3, ci, co), np.float32) * 0.1)
        g = jnp.asarray(rng.standard_normal((b, h // 2, w // 2, co), np.float32))
        variants = {"xla": xla_conv, "im2col, dx xla": make_im2col("xla"), "im2col, dx patches": make_im2col("p")}
        ref = None
        row = []
        for name, conv in variants.items():
            # fresh functions per variant: jax.jit caches by function object
            f_fwd = jax.jit(lambda x, k, conv=conv: conv(x, k))
            f_all = jax.jit(lambda x, k, g, conv=conv: jax.vjp(conv, x, k)[1](g) + (conv(x, k),))
            out = f_all(x, k, g)
            if ref is None:
                ref = out
            err = max(float(jnp.max(jnp.abs(a - r)) / jnp.max(jnp.abs(r))) for a, r in zip(out, ref))
            row.append(f"{name}: fwd {timed(f_fwd, x, k):.2f} ms, fwd+grads {timed(f_all, x, k, g):.2f} ms "
                       f"(rel err {err:.1e})")
        print(spec, " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
