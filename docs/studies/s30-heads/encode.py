"""Encoding the 10,000 test images (evaluate.encode_split's program) of the quick preset (4 encoder heads) at several
scan batch sizes, interleaved, with train.py's allocator settings, and with 1 head for scale (docs/performance.md,
thirtieth session). Arguments: batch sizes (default 500,250,125,100), rounds (default 3).

    PYTHONPATH=. python docs/studies/s30-heads/encode.py 500,250,125,100 3
"""
import sys, time, jax, jax.numpy as jnp, numpy as np
from jaxae.config import Config, PRESETS
from jaxae import hostmem
hostmem.keep_freed_memory(); hostmem.run_cpu_programs_inline()
from jaxae import evaluate
from jaxae.models import model_from_config
from jaxae.train import init_params
sizes = [int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "500,250,125,100").split(",")]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
imgs = jnp.asarray(np.random.default_rng(0).integers(0, 256, (10000, 32, 32, 3), np.uint8))
progs = {}
for heads in (4, 1):
    model = model_from_config(Config(**{**PRESETS["quick"], "encoder_heads": heads}), (32, 32, 3))
    params = init_params(model, jax.random.PRNGKey(0), (32, 32, 3))
    codec = evaluate.autoencoder_codec(model, params)
    for b in (sizes if heads > 1 else sizes[:1]):
        c = evaluate._map_batches.lower(evaluate._Encode(codec.encode), params, imgs, b).compile()
        progs[f"{heads} head(s), batch {b}"] = (c, params)
codes = {n: np.asarray(c(p, imgs)) for n, (c, p) in progs.items()}
first = next(iter(codes))
print("same codes at every batch size:", all(np.allclose(codes[first], v, atol=1e-5) for n, v in codes.items()
                                             if n.startswith("4")))
ts = {n: [] for n in progs}
for _ in range(rounds):
    for n, (c, p) in progs.items():
        t = time.perf_counter(); jax.block_until_ready(c(p, imgs)); ts[n].append(time.perf_counter() - t)
for n, v in ts.items():
    temp = progs[n][0].memory_analysis().temp_size_in_bytes / 2 ** 20
    print(f"{n}: {min(v):.2f} s best / {np.median(v):.2f} s median for 10k test images, temp {temp:.0f} MB", flush=True)
