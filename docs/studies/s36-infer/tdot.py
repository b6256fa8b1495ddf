"""The training step's kernel-gradient dots (x^T g: the dense layers' [K, M]^T [K, N], the upsampling convs' tap
matmuls, im2col's and Winograd's batched ones) contract the lhs's first axis. XLA:CPU hands YNNPACK only dots whose
lhs contracts its last axis (ynn_support.cc, IsDotSupportedByYnn: lhs_canonical), so these run as XLA's own (Eigen)
dots, 56 + 32 of them a step at batch 256 (`python bench/profile_step.py --batch-size 256 --steps 4`). Timed here,
each shape of the default step: the dot as it is (eigen), and with the lhs transposed first behind an optimisation
barrier so that XLA cannot fold the transpose back into the dot (ynn: it then runs as a ynn_fusion), or without the
barrier (copy: XLA folds it back). Best / median of 30, interleaved by shape.

    PYTHONPATH=. python docs/studies/s36-infer/tdot.py
"""
from jaxae import hostmem

hostmem.keep_freed_memory()
hostmem.run_cpu_programs_inline()

import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402


def eigen(a, b):
    return jnp.einsum("bkm,bkn->bmn", a, b) if a.ndim == 3 else a.T @ b


def ynn(a, b):
    return jnp.matmul(lax.optimization_barrier(jnp.swapaxes(a, -1, -2)), b)


def copy(a, b):
    return jnp.matmul(jnp.swapaxes(a, -1, -2).copy(), b)


# (lhs, rhs) of the default step's kernel-gradient dots at passes of 64 images: the upsampling conv's taps, the dense
# layers (64 rows; 256 where the choice draws 4 codes an image), im2col's three and Winograd's two
SHAPES = [((16384, 16), (16384, 12)), ((64, 512), (64, 512)), ((64, 512), (64, 1024)), ((64, 1024), (64, 512)),
          ((256, 512), (256, 512)), ((16384, 27), (16384, 16)), ((4096, 144), (4096, 32)), ((1024, 288), (1024, 64)),
          ((36, 256, 32), (36, 256, 64)), ((36, 64, 64), (36, 64, 128))]
rng = np.random.default_rng(0)
print("lhs x rhs: best / median ms (what ran it)")
for sa, sb in SHAPES:
    a, b = (jnp.asarray(rng.standard_normal(s, np.float32)) for s in (sa, sb))
    ref, res = None, {}
    for name, f in (("eigen", eigen), ("ynn", ynn), ("copy", copy)):
        c = jax.jit(f).lower(a, b).compile()
        out = np.asarray(c(a, b))
        ref = out if ref is None else ref
        assert np.allclose(out, ref, rtol=1e-3, atol=1e-2), name
        times = []
        for _ in range(30):
            t = time.perf_counter()
            c(a, b).block_until_ready()
            times.append(time.perf_counter() - t)
        res[name] = (min(times) * 1e3, np.median(times) * 1e3, "ynn" if "ynn_fusion" in c.as_text() else "xla")
    print(f"  {sa} x {sb}: " + "  ".join(f"{k} {v[0]:.3f} / {v[1]:.3f} ({v[2]})" for k, v in res.items()))
