"""Where a CPU training step's time goes: XLA's own trace of jaxae's step, summed per kind of operation.

    python bench/profile_step.py --preset quick
    python bench/profile_step.py --batch-size 256 --microbatch 64 --top 30
    python bench/profile_step.py --batch-size 256 --microbatch 64 --passes-in-flight 4   # all 4 at once

It steps `jaxae.train.make_p_train_steps` (what train.py runs; one device, single-device programs inline,
freed host memory kept) on synthetic CIFAR-shaped uint8 data, traces --steps steps with `jax.profiler`
after a warm-up, and prints the compiled step's temporary buffer (XLA's memory analysis) and, per step:
the wall time, the time XLA's CPU threads spent in operations (summed over threads, so it can exceed the
wall time), how busy the threads were, and the operations
grouped by name without their numeric suffix (`ynn_fusion.76` -> `ynn_fusion`: XLA's YNNPACK convolutions
and dots; `dot_general`; elementwise `*_fusion`s; `all-reduce`), largest first.

Reading the trace needs TensorFlow's profiler protos (`tensorflow-cpu`, in requirements.txt); XLA's per-op
events need `--xla_cpu_enable_xprof_traceme`, which this script sets before JAX starts. CPU only.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> argparse.ArgumentParser:
    from jaxae.config import Config, add_flags

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="traced steps, after 3 untraced (default: 10)")
    p.add_argument("--top", type=int, default=20, help="operation kinds printed (default: 20)")
    p.add_argument("--trace-dir", default="", help="keep the trace here (default: a temporary folder)")
    p.add_argument("--passes-in-flight", type=int, default=0,
                   help="microbatch passes that may run at once (default: jaxae.train.PASSES_IN_FLIGHT)")
    add_flags(p, only=Config.MODEL_FIELDS + ("preset", "batch_size", "microbatch", "loss", "noise", "flip"))
    return p


def op_times(trace_dir: str) -> tuple[collections.Counter, collections.Counter]:
    """(seconds, count) per operation kind over the XLA CPU threads of the trace in `trace_dir`."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    space = xplane_pb2.XSpace()
    with open(paths[0], "rb") as fh:
        space.ParseFromString(fh.read())
    seconds, count = collections.Counter(), collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if "Eigen" not in line.name:  # XLA:CPU's worker threads; the Python thread only waits
                continue
            for ev in line.events:
                name = names.get(ev.metadata_id, "?")
                if name.startswith("ThunkExecutor"):  # the executor's own span around the operations
                    continue
                kind = re.sub(r"\.\d+$", "", name)
                seconds[kind] += ev.duration_ps * 1e-12
                count[kind] += 1
    return seconds, count


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.passes_in_flight < 0:
        print("error: --steps must be at least 1 and --passes-in-flight at least 0", file=sys.stderr)
        return 2
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
    from jaxae import hostmem

    hostmem.keep_freed_memory()
    hostmem.run_cpu_programs_inline()
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from jaxae import train as T
    from jaxae.config import from_args

    cfg, _ = from_args(args)
    if jax.default_backend() != "cpu":
        print(f"error: this profile reads XLA:CPU's threads; the default backend is {jax.default_backend()}",
              file=sys.stderr)
        return 2
    if args.passes_in_flight:
        T.PASSES_IN_FLIGHT = args.passes_in_flight  # read when the step is traced
    batch, spe = cfg.batch_size, 8
    mesh = Mesh(np.array(jax.local_devices()[:1]), (T.AXIS,))
    state = T.place_state(T.create_train_state(cfg, (32, 32, 3), 1000, spe), mesh)
    images = T.put_dataset(np.random.default_rng(0).integers(0, 256, (spe * batch, 32, 32, 3), np.uint8), mesh)
    perm = T.device_epoch_order(cfg.seed, 0, spe * batch, spe, batch, mesh)
    step = T.make_p_train_steps(cfg, 1, spe).lower(state, images, perm).compile()
    temp_mb = step.memory_analysis().temp_size_in_bytes / 1e6
    for _ in range(3):
        state, metrics = step(state, images, perm)
    jax.block_until_ready(metrics)

    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="jaxae-profile-")
    with jax.profiler.trace(trace_dir):  # timed inside: starting and writing the trace take longer than steps
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step(state, images, perm)
        jax.block_until_ready(metrics)
        wall = (time.perf_counter() - start) / args.steps
    seconds, count = op_times(trace_dir)
    busy = sum(seconds.values()) / args.steps
    threads = os.cpu_count() or 1
    print(f"preset {cfg.preset}, batch {batch} in passes of {T.microbatch_size(cfg, batch)} "
          f"({T.PASSES_IN_FLIGHT} at a time), 1 cpu device, {args.steps} traced steps (trace: {trace_dir})")
    print(f"XLA temp buffer of the compiled step: {temp_mb:,.0f} MB")
    print(f"wall {wall * 1e3:.1f} ms/step ({batch / wall:,.0f} img/s under the tracer); operations "
          f"{busy * 1e3:.1f} ms/step summed over threads: {busy / (wall * threads):.0%} of {threads} cores busy")
    print(f"{'ms/step':>8} {'share':>6} {'ops/step':>8}  operation kind")
    for kind, s in seconds.most_common(args.top):
        print(f"{s / args.steps * 1e3:8.2f} {s / args.steps / busy:6.1%} {count[kind] / args.steps:8.1f}  {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
