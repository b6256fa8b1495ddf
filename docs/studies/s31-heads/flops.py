"""What encoder heads add to a training step, by XLA's cost analysis of the lowered step (not compiled, so it runs
on a CPU in seconds): FLOPs per image of the default model (or a preset's) at its batch, for 1, 2, 4 and 8 heads,
and each against one head. On a GPU whose step is compute-bound, a step's time scales about so; the H200 ran the
default schedule (one head) in 103 s, 77 s with its programs cached (docs/quality.md, twentieth session).
With GPU, the step is lowered as on a GPU (jax.default_backend() made to say "gpu": plain convolutions, one
pass over the whole batch), not with this CPU's Winograd and im2col convolutions and microbatches.

    PYTHONPATH=. python docs/studies/s31-heads/flops.py [PRESET] [GPU]

The thirty-first session's figures (0.759 GFLOP per image for one head) are of the default model of the time, now
`--preset long`'s: `flops.py long GPU` gives them since the thirty-third session, `flops.py default GPU` the new
default model's (the quick preset's).
"""
import sys

import jax
import numpy as np

from jaxae import train as T
from jaxae.config import PRESETS, Config


def step_flops(cfg: Config, image_shape=(32, 32, 3)) -> float:
    spe = 50_000 // cfg.batch_size
    state = T.create_train_state(cfg, image_shape, total_steps=cfg.epochs * spe, spe=spe)
    batch = np.zeros((cfg.batch_size, *image_shape), np.uint8)
    lowered = jax.jit(lambda s, b, k: T.train_step(s, b, k, cfg, None)).lower(state, batch, state.key)
    ca = lowered.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca["flops"]) / cfg.batch_size


def main():
    preset = sys.argv[1] if len(sys.argv) > 1 else "default"
    if len(sys.argv) > 2 and sys.argv[2] == "GPU":
        jax.default_backend = lambda: "gpu"  # jaxae's choices of code path read it; the lowering itself does not
    base = Config(**PRESETS[preset], preset=preset)
    one = None
    for heads in (1, 2, 4, 8):
        f = step_flops(base.replace(encoder_heads=heads))
        one = one or f
        print(f"{preset}, batch {base.batch_size}, {' '.join(sys.argv[2:]) or 'CPU'} step, {heads} head(s): {f / 1e9:.3f} GFLOP per image per step, "
              f"{f / one:.2f}x one head's")


if __name__ == "__main__":
    main()
