"""Where the default encoder's time goes on CPU: XLA's trace of encoding 10k images in calls of 1000 (as
bench/throughput.py's encode figure), summed per operation and per convolution shape.

    PYTHONPATH=. python docs/studies/s26-encode/profile.py [--batch 1000] [--top 25]
"""
import argparse
import collections
import os
import re
import sys
import tempfile
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, os.pardir, "bench"))


def describe(hlo: str, name: str) -> str:
    """An operation of the compiled HLO text: its output shape and the ops of its fused computation."""
    line = re.search(r"%" + re.escape(name) + r" = (\S+) ([\w\-]+)\(([^\n]*)", hlo)
    if not line:
        return ""
    called = re.search(r"calls=%([\w.\-]+)", line.group(3))
    if not called:
        return f"{line.group(1)} {line.group(2)}"
    body = re.search(r"\n%" + re.escape(called.group(1)) + r" [^\n]*\{\n(.*?)\n\}", hlo, re.S)
    ops = collections.Counter(re.findall(r" = \S+ ([\w\-]+)\(", body.group(1) if body else ""))
    ops.pop("parameter", None)
    return f"{line.group(1)} " + " ".join(f"{k}x{v}" for k, v in ops.most_common(6))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--images", type=int, default=10000)
    args = p.parse_args()
    from jaxae import hostmem
    hostmem.keep_freed_memory()
    hostmem.run_cpu_programs_inline()
    import jax
    import jax.numpy as jnp
    import numpy as np
    from profile_step import by_kind, op_times

    from jaxae.config import OLD_MODEL, Config
    from jaxae.models import model_from_config
    from jaxae.train import init_params

    model = model_from_config(Config(**OLD_MODEL), (32, 32, 3))
    params = init_params(model, jax.random.PRNGKey(0), (32, 32, 3))
    enc = jax.jit(lambda p, x: model.apply({"params": p}, x.astype(jnp.float32) / 255.0, method="encode"))
    x = jax.device_put(np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), np.uint8))
    chunks = [x[i:i + args.batch] for i in range(0, args.images, args.batch)]
    compiled = enc.lower(params, chunks[0]).compile()
    jax.block_until_ready(enc(params, chunks[0]))
    best = 1e9
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready([enc(params, c) for c in chunks])
        best = min(best, time.perf_counter() - t)
    print(f"encode {args.images} images in calls of {args.batch}: best of 3 {best:.3f} s "
          f"({args.images / best:,.0f} img/s); cost analysis {compiled.cost_analysis()['flops'] / args.batch / 1e6:.1f}"
          f" MFLOP/img")
    trace_dir = tempfile.mkdtemp(prefix="jaxae-enc-")
    with jax.profiler.trace(trace_dir):
        t = time.perf_counter()
        jax.block_until_ready([enc(params, c) for c in chunks])
        wall = time.perf_counter() - t
    by_name, count, _ = op_times(trace_dir)  # and the threads' busy seconds
    kinds = by_kind(by_name)
    busy = sum(by_name.values())
    print(f"traced: wall {wall:.3f} s, ops {busy:.3f} s summed over threads")
    hlo = compiled.as_text()
    print(f"{'ms':>8} {'share':>6} {'count':>5}  operation (per-op, top {args.top}): output, the ops it fuses")
    for name, s in by_name.most_common(args.top):
        print(f"{s * 1e3:8.1f} {s / busy:6.1%} {count[name]:5d}  {name} {describe(hlo, name)}")
    print("by kind:")
    for kind, s in kinds.most_common(10):
        print(f"{s * 1e3:8.1f} {s / busy:6.1%}  {kind}")


if __name__ == "__main__":
    main()
