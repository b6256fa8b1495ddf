"""Where evaluate.py's encode of the 10k test images goes on CPU: XLA's trace of evaluate.encode_split (one program
scanning batches of evaluate.split_batch() images) for a preset's model with random weights, summed per operation
and per kind (bench/profile_step.py's reading of the trace). Freed host memory kept and programs inline, as in
evaluate.py. The time under the tracer is longer than without it.

    PYTHONPATH=. python docs/studies/s35-encode-batch/profile.py [--preset default] [--top 25]
"""
import argparse
import functools
import os
import sys
import tempfile
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, os.pardir, "bench"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="default")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    from jaxae import hostmem
    hostmem.keep_freed_memory()
    hostmem.run_cpu_programs_inline()
    import jax
    import numpy as np
    from profile_step import by_kind, op_times

    from jaxae import evaluate as E
    from jaxae.config import PRESETS, Config
    from jaxae.metrics import pad_to_multiple
    from jaxae.models import model_from_config
    from jaxae.train import init_params

    model = model_from_config(Config(**PRESETS[args.preset]), (32, 32, 3))
    codec = E.autoencoder_codec(model, init_params(model, jax.random.PRNGKey(0), (32, 32, 3)))
    u8 = np.random.default_rng(0).integers(0, 256, (10000, 32, 32, 3), np.uint8)
    x = jax.device_put(pad_to_multiple(u8, E.batch_size_for(len(u8)))[0])
    hlo = E._map_batches.lower(*E._encode_args(codec, x)).compile().as_text()  # the program encode_split runs
    best = min(_timed(lambda: jax.block_until_ready(E.encode_split(codec, x))) for _ in range(3))
    print(f"{args.preset} model: encode 10000 images, scans of {E.batch_size_for(len(u8))}: best of 3 {best:.3f} s")
    trace_dir = tempfile.mkdtemp(prefix="jaxae-enc-")
    with jax.profiler.trace(trace_dir):
        wall = _timed(lambda: jax.block_until_ready(E.encode_split(codec, x)))
    by_name, count, busy_threads = op_times(trace_dir)
    busy = sum(by_name.values())
    print(f"traced: wall {wall:.3f} s, operations {busy:.3f} s and thread-pool regions {busy_threads:.3f} s summed "
          f"over threads")
    print(f"{'ms':>8} {'share':>6} {'count':>5}  operation (top {args.top}): output, the ops it fuses")
    for name, s in by_name.most_common(args.top):
        print(f"{s * 1e3:8.1f} {s / busy:6.1%} {count[name]:5d}  {name} {_s26_profile().describe(hlo, name)}")
    print("by kind:")
    for kind, s in by_kind(by_name).most_common(10):
        print(f"{s * 1e3:8.1f} {s / busy:6.1%}  {kind}")


@functools.cache
def _s26_profile():
    """The twenty-sixth session's study, for its description of an operation of the compiled HLO text (describe)."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "s26-encode", "profile.py")
    spec = importlib.util.spec_from_file_location("s26_profile", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
