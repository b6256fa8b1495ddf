"""Where a CPU training step's time goes: XLA's own trace of jaxae's step, summed per kind of operation.

    python bench/profile_step.py --preset quick
    python bench/profile_step.py --batch-size 256 --microbatch 64 --top 30
    python bench/profile_step.py --batch-size 256 --microbatch 64 --passes-in-flight 4   # all 4 at once
    python bench/profile_step.py --batch-size 256 --microbatch 64 --convs 20   # per convolution shape

It steps `jaxae.train.make_p_train_steps` (what train.py runs; one device, single-device programs inline, freed host
memory kept) on synthetic CIFAR-shaped uint8 data, traces --steps steps with `jax.profiler` after a warm-up, and
prints the compiled step's temporary buffer (XLA's memory analysis; that of its largest program where a step runs as
several) and, per step: the wall time, the time XLA's CPU threads spent in operations (summed over threads, so it can
exceed the wall time), how busy the threads were (time in the thread pool's regions, which covers the work a YNNPACK
operation hands to other threads), and the operations grouped by name without their numeric suffix (`ynn_fusion.76` ->
`ynn_fusion`: XLA's YNNPACK convolutions and dots; `dot_general`; elementwise `*_fusion`s; `all-reduce`), largest
first. --convs N adds the N costliest convolutions, grouped by shape (input, kernel, output, window: forward passes,
input and kernel gradients alike): time per step, how many ran, their FLOPs and GFLOP/s over their own time (a YNNPACK
operation may have used every thread in that time). XLA's own (Eigen) dots and convolutions return before their work
is done (eigen_ops): their kinds are marked "*" and their convolutions get no rate, since their times are lower
bounds.

Reading the trace needs TensorFlow's profiler protos (`tensorflow-cpu`, in requirements.txt); XLA's per-op
events need `--xla_cpu_enable_xprof_traceme`, which this script sets before JAX starts. CPU only.
"""

from __future__ import annotations

import argparse
import collections
import glob
import math
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> argparse.ArgumentParser:
    from jaxae.config import Config, add_flags

    from jaxae.cli import ArgumentParser
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="traced steps, after 3 untraced (default: 10)")
    p.add_argument("--top", type=int, default=20, help="operation kinds printed (default: 20)")
    p.add_argument("--trace-dir", default="", help="keep the trace here (default: a temporary folder)")
    p.add_argument("--convs", type=int, default=0, help="convolution shapes printed (default: 0)")
    p.add_argument("--passes-in-flight", type=int, default=0,
                   help="microbatch passes that may run at once (default: jaxae.train.PASSES_IN_FLIGHT)")
    add_flags(p, only=Config.MODEL_FIELDS + ("preset", "batch_size", "microbatch", "loss", "noise", "flip"))
    return p


def op_times(trace_dir: str) -> tuple[collections.Counter, collections.Counter, float]:
    """(seconds, count) per operation name (`ynn_fusion.76`) over the XLA CPU threads of the trace in
    `trace_dir`, and the seconds those threads worked: inside the thread pool's regions, summed over threads.

    An operation's event is on the thread that runs it; a YNNPACK operation hands part of its work to the other
    threads, which the trace shows only as thread-pool regions there. Counted by operation events alone, the default
    model's step kept its 2 threads 67 % busy; by regions, 89-90 % (twenty-sixth session)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    space = xplane_pb2.XSpace()
    with open(paths[0], "rb") as fh:
        space.ParseFromString(fh.read())
    seconds, count, worked = collections.Counter(), collections.Counter(), 0.0
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if "Eigen" not in line.name:  # XLA:CPU's worker threads; the Python thread only waits
                continue
            start = None
            for ev in sorted(line.events, key=lambda e: e.offset_ps):
                name = names.get(ev.metadata_id, "?")
                if name == "ThreadpoolListener::StartRegion":
                    start = ev.offset_ps
                elif name == "ThreadpoolListener::StopRegion" and start is not None:
                    worked += (ev.offset_ps - start) * 1e-12
                    start = None
                if name.startswith(("ThunkExecutor", "ThreadpoolListener")):  # the executor's and pool's own marks
                    continue
                seconds[name] += ev.duration_ps * 1e-12
                count[name] += 1
    return seconds, count, worked


def kind(name: str) -> str:
    """An operation's kind: its name without the numeric suffix (`ynn_fusion.76` -> `ynn_fusion`)."""
    return re.sub(r"\.\d+$", "", name)


def by_kind(per_name: collections.Counter) -> collections.Counter:
    """Sums per operation kind (kind)."""
    kinds = collections.Counter()
    for name, value in per_name.items():
        kinds[kind(name)] += value
    return kinds


_CONV = re.compile(r"%([\w.\-]+) = (\w+\[[\d,]*\])\S* convolution\(%([\w.\-]+), %([\w.\-]+)\), window=\{([^}]*)\}")


def _dims(shape: str) -> list[int]:
    """'f32[64,3,3,64]' -> [64, 3, 3, 64]"""
    return [int(d) for d in shape[:-1].split("[")[1].split(",") if d]


def _fusion_calls(hlo: str) -> dict[str, str]:
    """Fusion operation name -> the name of the computation it calls, in compiled HLO text."""
    return dict(re.findall(r"%([\w.\-]+) = [^\n]*? fusion\([^\n]*calls=%([\w.\-]+)", hlo))


def _computations(hlo: str) -> list[tuple[str | None, str]]:
    """(name, text) of each computation in compiled HLO text: one per block, its parameters, then its body."""
    return [(head.group(1) if head else None, block) for block in hlo.split("\n\n")
            for head in [re.match(r"\s*(?:ENTRY )?%?([\w.\-]+)", block)]]


def conv_shapes(hlo: str) -> dict[str, tuple[str, float]]:
    """Operation name -> (its convolution as 'input * kernel -> output (window)', FLOPs), from the compiled
    HLO text: convolutions that run as operations of their own, and fusions that hold one (XLA:CPU's
    ynn_fusions of the larger convolutions; fused dots are left out)."""
    calls = _fusion_calls(hlo)
    convs, fused = {}, {}
    for head, block in _computations(hlo):
        shape = dict(re.findall(r"%([\w.\-]+) = (\w+\[[\d,]*\])", block))
        for name, out, lhs, rhs, window in _CONV.findall(block):
            out_dims, kernel = _dims(out), _dims(shape.get(rhs, "?[]"))
            # each output element: a multiply-add per kernel element of its output feature (the last dim, b01f),
            # less the zeros an input dilation inserts (a strided conv's input gradient)
            dilation = re.search(r"lhs_dilate=([\dx]+)", window)
            zeros = math.prod(int(d) for d in dilation.group(1).split("x")) if dilation else 1
            flops = 2.0 * math.prod(out_dims) * math.prod(kernel) / out_dims[-1] / zeros if kernel and out_dims else 0.0
            convs[name] = (f"{shape.get(lhs, '?')} * {shape.get(rhs, '?')} -> {out} ({window.strip()})", flops)
            if head:
                fused[head] = convs[name]
    return {**convs, **{fusion: fused[comp] for fusion, comp in calls.items() if comp in fused}}


def eigen_ops(hlo: str) -> set[str]:
    """Names of the dots and convolutions that XLA:CPU runs as thunks of its own (Eigen), not inside a fusion such as a
    ynn_fusion. On more than one thread such a thunk returns once it has handed its work to the thread pool
    (xla/backends/cpu/runtime/convolution_thunk.cc and dot_thunk.cc return an event that a callback completes), so its
    trace event times the hand-off and what the calling thread did meanwhile, not the whole work: a lower bound. The
    quick model's 16x16 convs (16 <-> 12 channels) read as 1.2-1.6 TFLOP/s by their events, 6-8x the matmul peak
    (twenty-seventh session). The threads' "worked" figure still counts the work."""
    fused = set(_fusion_calls(hlo).values())
    return {name for head, block in _computations(hlo) if head not in fused
            for name in re.findall(r"%([\w.\-]+) = \S+ (?:dot|convolution)\(", block)}


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
    step = T.make_p_train_steps(cfg, 1, spe)
    programs = T.compiled_steps(step, state, images, perm)  # on CPU the passes run as programs of their own
    temp_mb = max(c.memory_analysis().temp_size_in_bytes for c, _ in programs) / 1e6
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
    seconds_by_name, count_by_name, worked = op_times(trace_dir)  # the trace is read once
    seconds, count = by_kind(seconds_by_name), by_kind(count_by_name)
    busy, worked = sum(seconds.values()) / args.steps, worked / args.steps
    threads = os.cpu_count() or 1
    print(f"preset {cfg.preset}, batch {batch} in passes of {T.microbatch_size(cfg, batch)} "
          f"({T.PASSES_IN_FLIGHT} at a time), 1 cpu device, {args.steps} traced steps (trace: {trace_dir})")
    print(f"XLA temp buffer of the compiled step (its largest program): {temp_mb:,.0f} MB")
    print(f"wall {wall * 1e3:.1f} ms/step ({batch / wall:,.0f} img/s under the tracer); operations "
          f"{busy * 1e3:.1f} ms/step summed over threads; the threads worked {worked * 1e3:.1f} ms/step: "
          f"{worked / (wall * threads):.0%} of {threads} cores busy")
    texts = [(c.as_text(), runs) for c, runs in programs]
    eigen = set().union(*(eigen_ops(hlo) for hlo, _ in texts))
    eigen_kinds = {kind(name) for name in eigen}
    print(f"{'ms/step':>8} {'share':>6} {'ops/step':>8}  operation kind")
    for k, s in seconds.most_common(args.top):
        mark = " *" if k in eigen_kinds else ""
        print(f"{s / args.steps * 1e3:8.2f} {s / args.steps / busy:6.1%} {count[k] / args.steps:8.1f}  {k}{mark}")
    if eigen_kinds & set(k for k, _ in seconds.most_common(args.top)):
        print("* XLA's own (Eigen) dots or convolutions: they return once their work is handed to the thread pool, "
              "so their ms are a lower bound")
    if args.convs:
        print_convs(seconds_by_name, texts, args.steps, args.convs, eigen)
    return 0


def print_convs(by_name: collections.Counter, programs: list[tuple[str, int]], steps: int, top: int,
                eigen: set[str] = frozenset()) -> None:
    """The `top` convolution shapes of the programs' (HLO text, runs per step) by their seconds in `by_name`
    (op_times), per step. On CPU a step's passes are one program run several times (jaxae.train._PassSteps);
    the trace's own counts drift from them by an event or two at its ends. A shape with a convolution among `eigen`
    (eigen_ops: its events end before its work) gets no rate."""
    seconds, count, flops = collections.Counter(), collections.Counter(), collections.Counter()
    timed, lower_bound = set(), set()
    for hlo, runs in programs:
        for name, (shape, f) in conv_shapes(hlo).items():
            if name not in by_name:  # a convolution inside a fusion: the trace names the fusion
                continue
            if name not in timed:  # names repeat across programs: its seconds once
                seconds[shape] += by_name[name] / steps
                timed.add(name)
            if name in eigen:
                lower_bound.add(shape)
            count[shape] += runs
            flops[shape] += f * runs
    print(f"\n{'ms/step':>8} {'count':>5} {'GFLOP':>6} {'GFLOP/s':>7}  convolution (input * kernel -> output, window), "
          f"{sum(seconds.values()) * 1e3:.0f} ms/step in all; GFLOP/s over their own time")
    for shape, s in seconds.most_common(top):
        rate = "-" if shape in lower_bound else f"{flops[shape] / 1e9 / s:.1f}"
        note = "  [XLA's own, asynchronous: ms a lower bound]" if shape in lower_bound else ""
        print(f"{s * 1e3:8.2f} {count[shape]:5d} {flops[shape] / 1e9:6.2f} {rate:>7}  {shape}{note}")


if __name__ == "__main__":
    sys.exit(main())
