"""A weight gradient x^T @ g ([M, K]^T @ [M, N], the contraction over the batch rows M) on XLA:CPU: as written,
XLA runs it as its own dot_general (a transposed operand, not given to YNNPACK); with x^T made a copy of its own
first (lax.optimization_barrier keeps XLA from folding the transpose back into the dot), it is a plain matmul that
YNNPACK takes. Milliseconds per call, best / median of R rounds of 20 calls, the variants in turn.

    PYTHONPATH=. python docs/studies/s27-dots/tn.py                       # the quick and default models' shapes
    PYTHONPATH=. python docs/studies/s27-dots/tn.py 64x1024x512 16384x27x16   # M x K x N
"""
import os
import re
import sys
import time

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=True)
hostmem.run_cpu_programs_inline()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

# one pass of 64 images: the MLPs' Dense layers (quick: 1024 -> 512 -> ...; default: 4096 -> 512), the strided
# convs' patch matmuls (M = 64 * Ho * Wo, K = 9 * Cin)
SHAPES = ["64x1024x512", "64x512x512", "64x512x1024", "64x4096x512", "64x512x4096",
          "16384x27x16", "4096x144x32", "1024x288x64", "16384x27x64", "4096x576x128", "1024x1152x256"]


def variants():
    return {"plain": jax.jit(lambda x, g: x.T @ g),
            "copy": jax.jit(lambda x, g: lax.optimization_barrier(x.T) @ g)}


def kinds(f, *args) -> str:
    hlo = f.lower(*args).compile().as_text()
    entry = hlo[hlo.index("ENTRY"):]
    return "ynn" if "ynn" in entry else "xla dot" if re.search(r" dot\(", entry) else "?"


def main():
    rounds = int(os.environ.get("R", "7"))
    rng = np.random.default_rng(0)
    print(f"{'M x K x N':>16} {'GFLOP':>6}  variant: ms best / median (GFLOP/s), how XLA runs it")
    for spec in sys.argv[1:] or SHAPES:
        m, k, n = map(int, spec.split("x"))
        x = jnp.asarray(rng.standard_normal((m, k), np.float32))
        g = jnp.asarray(rng.standard_normal((m, n), np.float32))
        fs = variants()
        ref = np.asarray(fs["plain"](x, g))
        how = {}
        for v, f in fs.items():
            err = float(np.max(np.abs(np.asarray(f(x, g)) - ref)) / np.max(np.abs(ref)))
            assert err < 1e-5, (v, err)
            how[v] = kinds(f, x, g)
        t = {v: [] for v in fs}
        for r in range(rounds):
            for v, f in (fs.items() if r % 2 == 0 else reversed(fs.items())):
                jax.block_until_ready(f(x, g))
                t0 = time.perf_counter()
                for _ in range(20):
                    out = f(x, g)
                jax.block_until_ready(out)
                t[v].append((time.perf_counter() - t0) / 20 * 1e3)
        gf = 2 * m * k * n / 1e9
        cells = "  ".join(f"{v}: {min(ts):.3f} / {np.median(ts):.3f} ({gf / min(ts) * 1e3:.0f}), {how[v]}"
                          for v, ts in t.items())
        print(f"{spec:>16} {gf:6.3f}  {cells}", flush=True)


if __name__ == "__main__":
    main()
