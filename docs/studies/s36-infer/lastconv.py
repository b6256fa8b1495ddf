"""The default decoder's last conv, forward only, as the encode runs it (the sigmoid fused after it): 1000 drawings
(one scan step of evaluate.encode_split: 250 images x 4 heads) of 16x16x16 -> 16x16x12, 3x3 'SAME'. It is XLA's
own conv in jaxae (models.cpu_conv's rules: too few channels for Winograd's, stride 1 so no im2col). Ways timed,
interleaved, best / median of 20:
- lax: XLA's conv (what runs now); nchw: the same in NCHW/OIHW;
- im2col: one [B*256, 144] @ [144, 12] matmul of the patches; shifts: models._conv_out_shifts; wino: Winograd's
  F(4x4, 3x3) (models.winograd_conv);
- s2d-wino, s2d-lax: the same conv on the pixel-shuffled input before its shuffle ([B, 8, 8, 64], what the previous
  upsampling conv gives), with the kernel rearranged to [3, 3, 64, 48] (a quarter of it zeros), output
  space-to-depth: Winograd at 8x8 with 64 channels, the shape that runs well; or XLA's conv of it.

    PYTHONPATH=. python docs/studies/s36-infer/lastconv.py
"""
from jaxae import hostmem

hostmem.keep_freed_memory()
hostmem.run_cpu_programs_inline()

import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from jaxae import models as M  # noqa: E402

B, PAD = 1000, ((1, 1), (1, 1))


def s2d_kernel(w):
    """[3, 3, C, O] kernel of a stride-1 3x3 'SAME' conv -> [3, 3, 4C, 4O]: the same conv on the space_to_depth of
    its input and output (channels ordered row phase, column phase, channel, as models.space_to_depth orders them).
    Output phase a takes input row 2i + a + d (d = -1, 0, 1), which is row i + t of phase p where 2t + p = a + d."""
    k = jnp.zeros((3, 3, 2, 2, w.shape[2], 2, 2, w.shape[3]), w.dtype)
    for t in range(-1, 2):
        for p in range(2):
            for a in range(2):
                for u in range(-1, 2):
                    for q in range(2):
                        for b in range(2):
                            di, dj = 2 * t + p - a, 2 * u + q - b
                            if abs(di) <= 1 and abs(dj) <= 1:
                                k = k.at[t + 1, u + 1, p, q, :, a, b, :].set(w[di + 1, dj + 1])
    return k.reshape(3, 3, 4 * w.shape[2], 4 * w.shape[3])


WAYS = {
    "lax": lambda x, w: M._lax_conv(x, w, (1, 1), PAD, None),
    "nchw": lambda x, w: lax.conv_general_dilated(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), (1, 1),
                                                  PAD).transpose(0, 2, 3, 1),
    "im2col": lambda x, w: (M._patches(x, (3, 3), (1, 1), PAD)[0] @ w.reshape(-1, w.shape[3])).reshape(
        *x.shape[:3], w.shape[3]),
    "shifts": lambda x, w: M._conv_out_shifts(x, w, PAD),
    "wino": lambda x, w: M.winograd_conv(x, w, PAD),
    # these two take the input before its depth-to-space, as the decoder has it, and give the output space-to-depth
    "s2d-wino": lambda pre, w: M.winograd_conv(pre, s2d_kernel(w), PAD),
    "s2d-lax": lambda pre, w: M._lax_conv(pre, s2d_kernel(w), (1, 1), PAD, None),
}

rng = np.random.default_rng(0)
w = jnp.asarray(rng.standard_normal((3, 3, 16, 12), np.float32) * 0.1)
x = jnp.asarray(rng.standard_normal((B, 16, 16, 16), np.float32))
args = {k: (M.space_to_depth(x) if k.startswith("s2d") else x) for k in WAYS}
compiled = {k: jax.jit(lambda x, w, f=f: jax.nn.sigmoid(f(x, w))).lower(args[k], w).compile() for k, f in WAYS.items()}
ref = np.asarray(compiled["lax"](x, w))
for k, c in compiled.items():
    out = np.asarray(c(args[k], w))
    if k.startswith("s2d"):
        out = np.asarray(M.depth_to_space(jnp.asarray(out)))
    print(f"{k:9s} largest difference from lax {np.abs(out - ref).max():.1e}")
times = {k: [] for k in compiled}
for _ in range(20):
    for k, c in compiled.items():
        t = time.perf_counter()
        c(args[k], w).block_until_ready()
        times[k].append(time.perf_counter() - t)
flop = 2 * B * 16 * 16 * 9 * 16 * 12
print(f"{B} drawings, best / median of 20 (ms), GFLOP/s of the direct conv's {flop / 1e9:.2f} GFLOP at the best")
for k in compiled:
    print(f"  {k:9s} {min(times[k]) * 1e3:6.2f} / {np.median(times[k]) * 1e3:6.2f}   {flop / min(times[k]) / 1e9:5.1f}")
