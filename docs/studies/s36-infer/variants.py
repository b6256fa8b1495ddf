"""The default model's encode of the 10k test images (evaluate.encode_split, 250 images a scan step on CPU) with each
conv formulation rule of jaxae.models changed in turn: which forward formulation is fastest for a forward-only pass,
where the rules were chosen for the training step's forward and backward passes. Each variant's program is compiled
with its module settings (jax.clear_caches between them), then all are timed interleaved. Random uint8 images,
freshly initialised parameters; freed host memory kept and programs inline, as in evaluate.py. Arguments: the
variants (default all), rounds (5).

    PYTHONPATH=. python docs/studies/s36-infer/variants.py
    PYTHONPATH=. python docs/studies/s36-infer/variants.py base,wino16 7
"""
import sys
import time

from jaxae import hostmem

hostmem.keep_freed_memory()
hostmem.run_cpu_programs_inline()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxae import evaluate as E  # noqa: E402
from jaxae import models as M  # noqa: E402
from jaxae.config import PRESETS, Config  # noqa: E402
from jaxae.metrics import pad_to_multiple  # noqa: E402
from jaxae.train import init_params  # noqa: E402

VARIANTS = {
    "base": {},
    "wino16": {"_WINOGRAD_MIN_CHANNELS": 16},   # the decoder's last conv (16x16, 16 -> 12) as Winograd's too
    "shifts12": {"_FEW_CHANNELS": 12},          # ... as output shifts (one matmul to 9 x 12 channels, shifted adds)
    "nowino4": {"_WINOGRAD_MIN_SIZE": 8},       # the 4x4 conv (64 -> 128) as XLA's
    "nowino": {"_WINOGRAD_MIN_SIZE": 10 ** 6},  # every stride-1 conv as XLA's
    "noim2col": {"_IM2COL": False},             # the encoder's strided convs as XLA's
}
names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(VARIANTS)
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
default = {k: getattr(M, k) for v in VARIANTS.values() for k in v}

model = M.model_from_config(Config(**PRESETS["default"]), (32, 32, 3))
codec = E.autoencoder_codec(model, init_params(model, jax.random.PRNGKey(0), (32, 32, 3)))
u8 = np.random.default_rng(0).integers(0, 256, (10000, 32, 32, 3), dtype=np.uint8)
x, _ = pad_to_multiple(u8, E.batch_size_for(len(u8)))
x = jax.device_put(x)
args = E._encode_args(codec, x)

compiled, codes = {}, {}
for name in names:
    for k, v in {**default, **VARIANTS[name]}.items():
        setattr(M, k, v)
    jax.clear_caches()
    compiled[name] = E._map_batches.lower(*args).compile()
    codes[name] = np.asarray(compiled[name](*args[1:3]))
for k, v in default.items():
    setattr(M, k, v)

times = {name: [] for name in names}
for _ in range(rounds):
    for name in names:
        t = time.perf_counter()
        jax.block_until_ready(compiled[name](*args[1:3]))
        times[name].append(time.perf_counter() - t)
print(f"default model, encode of 10000 images in scans of {args[3]}, best / median of {rounds} (s); "
      f"codes' largest difference from base's")
for name in names:
    diff = np.abs(codes[name] - codes[names[0]]).max()
    print(f"  {name:9s} {min(times[name]):.3f} / {np.median(times[name]):.3f}   {diff:.2e}")
