"""evaluate.py's passes over the 10k-image test split at several images per scan step (evaluate.split_batch),
interleaved: the encode (encode_split, what bench/throughput.py's encode target is about), the clean split's metrics
from its codes (decode, MSE, MAE, SSIM) and the noisy split's (encode and decode of corrupted inputs). Random uint8
images, freshly initialised parameters (the time does not depend on them); freed host memory kept and programs
inline, as in evaluate.py. Arguments: the preset (default "default"), the batch sizes (default 500,250,200,125),
rounds (3).

    PYTHONPATH=. python docs/studies/s35-encode-batch/batch.py
    PYTHONPATH=. python docs/studies/s35-encode-batch/batch.py long 500,250
"""
import sys
import time

from jaxae import hostmem

hostmem.keep_freed_memory()
hostmem.run_cpu_programs_inline()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxae import evaluate as E  # noqa: E402
from jaxae.config import PRESETS, Config  # noqa: E402
from jaxae.metrics import pad_to_multiple  # noqa: E402
from jaxae.models import model_from_config  # noqa: E402
from jaxae.train import init_params  # noqa: E402

preset = sys.argv[1] if len(sys.argv) > 1 else "default"
sizes = [int(b) for b in (sys.argv[2] if len(sys.argv) > 2 else "500,250,200,125").split(",")]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
model = model_from_config(Config(**PRESETS[preset]), (32, 32, 3))
codec = E.autoencoder_codec(model, init_params(model, jax.random.PRNGKey(0), (32, 32, 3)))
u8 = np.random.default_rng(0).integers(0, 256, (10000, 32, 32, 3), dtype=np.uint8)


def passes(b):
    """The three passes at b images per scan step, each as a function of no arguments that waits for its result.
    The step size is evaluate.split_batch(), read at each call (CPU_BATCH on CPU, BATCH elsewhere): set for each."""
    E.split_batch = lambda: b
    x, mask = pad_to_multiple(u8, E.batch_size_for(len(u8)))
    x = jax.device_put(x)
    codes = jax.block_until_ready(E.encode_split(codec, x))  # compiles it

    def at_b(f):
        def call():
            E.split_batch = lambda: b
            return f()
        return call
    return {"encode": at_b(lambda: jax.block_until_ready(E.encode_split(codec, x))),
            "clean metrics": at_b(lambda: E.reconstruction_metrics(codec, x, mask, codes=codes)),
            "noisy metrics": at_b(lambda: E.reconstruction_metrics(codec, x, mask, "gaussian", 0.2))}


runs = {b: passes(b) for b in sizes}
for fns in runs.values():  # compile every program before any timing
    for f in fns.values():
        f()
times = {(b, name): [] for b in sizes for name in runs[b]}
for _ in range(rounds):
    for b in sizes:
        for name, f in runs[b].items():
            t = time.perf_counter()
            f()
            times[b, name].append(time.perf_counter() - t)
print(f"{preset} model, 10000 images, best / median of {rounds} (s)")
for b in sizes:
    print(f"  batch {b:4d}: " + "  ".join(f"{name} {min(times[b, name]):.3f} / {np.median(times[b, name]):.3f}"
                                       for name in runs[b]))
