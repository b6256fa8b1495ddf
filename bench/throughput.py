"""Steady-state training throughput of jaxae's model vs its PyTorch twin, against the hardware's matmul peak.

    python bench/throughput.py                               # the default model, CPU: 1 and 2 devices
    python bench/throughput.py --preset quick --batch-sizes 128,256 --out /tmp/tp.json
    python bench/throughput.py --batch-sizes 256,1024 --steps-per-call 1,10,epoch   # on a GPU

For each device count (one subprocess each: the CPU device count must be set before JAX starts) and batch
size it times jaxae's own pmapped step (`jaxae.train.make_p_train_steps`, what `train.py` runs) on synthetic uint8
data of CIFAR shape held on the device: compile excluded, >= --steps steps per timing, best and median of --repeats
timings. It also reports FLOPs per image (XLA cost analysis of one train step), the achieved FLOP/s as a percentage
of a 2048^2 f32 matmul measured in the same process ("direct %": counting the FLOPs of the same step with direct
convolutions, which the CPU's Winograd convs do with fewer), encode img/s over 10k test images (evaluate.py's pass:
evaluate.encode_split), and peak RSS. Every worker keeps freed host memory in the process as train.py does, and
jaxae's run their single-device CPU programs on the calling thread and give back what each compile left free before
the program first runs (jaxae.hostmem); --no-keep-freed-memory times glibc's defaults and JAX's asynchronous CPU
dispatch: up to 1.8x slower steps on CPU. The PyTorch twin (bench/torch_twin.py: same layers, batch, flips, AdamW +
clipping) runs in its own subprocess, eager and with torch.compile, on CUDA when there is one. Needs jax, flax,
optax, orbax and matplotlib (and torch for the twin); not tensorflow, tfds or tensorboardX.

Each measurement is printed, and written to --out, as soon as it is taken, with the workers' progress (compile
time, each timing of the twin) in between; a run stopped by Ctrl-C or `timeout` prints the table of what it
measured, marks the JSON "incomplete" and exits 130.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

IMAGE_SHAPE = (32, 32, 3)
N_TRAIN, N_TEST = 50000, 10000


def _parse_list(s: str) -> list[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    from jaxae.config import Config, add_flags

    from jaxae.cli import ArgumentParser
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", default="auto",
                   help="comma-separated global batch sizes; auto = 256 on CPU, 256,1024 on GPU (default: auto)")
    p.add_argument("--devices", default="auto",
                   help="comma-separated device counts, one subprocess each; auto = 1,2 on CPU (forced with "
                        "jax_num_cpu_devices), all local devices on GPU (default: auto)")
    p.add_argument("--steps-per-call", dest="spc", default="auto",
                   help="comma-separated steps per jitted call to time ('epoch' = a whole epoch, 50000 // "
                        "batch); auto = 1 on CPU, 1,10,epoch on GPU (default: auto)")
    p.add_argument("--steps", type=int, default=20, help="training steps per timing, at least 20 (default: 20)")
    p.add_argument("--repeats", type=int, default=3, help="timings per measurement, at least 3 (default: 3)")
    p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the PyTorch twin, eager and torch.compile (default: on)")
    p.add_argument("--torch-compile", action=argparse.BooleanOptionalAction, default=True,
                   help="time torch.compile too (default: on)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch.set_num_threads for the twin on CPU; 0 = os.cpu_count() (default: 0)")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="every worker (jaxae's and the PyTorch twin's) keeps freed host memory in the process, "
                        "as train.py does, and jaxae's run single-device CPU programs on the calling thread "
                        "(jaxae.hostmem); --no-keep-freed-memory times glibc's defaults and JAX's asynchronous "
                        "CPU dispatch (default: on)")
    p.add_argument("--out", default="bench/out/throughput.json", help="JSON results (default: %(default)s)")
    p.add_argument("--_worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--_ndev", type=int, default=0, help=argparse.SUPPRESS)
    model_fields = Config.MODEL_FIELDS + ("dtype", "preset", "loss", "noise", "corruption", "noise_levels", "flip",
                                          "optimizer", "learning_rate", "weight_decay", "grad_clip", "microbatch")
    add_flags(p, only=model_fields)
    return p


def _config(args):
    from jaxae.config import from_args
    cfg, _ = from_args(args)
    return cfg


# ----------------------------------------------------------------------------------------- jax worker

def _time_calls(fn, n_calls: int, repeats: int) -> list[float]:
    import jax
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = None
        for _ in range(n_calls):
            out = fn()
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
    return times


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n f32 matmul under jit on the default device: the practical compute peak."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    reps = max(1, int(0.3 / max(_time_calls(lambda: f(a), 1, 1)[0], 1e-6)))  # ~0.3 s per timing
    return 2 * n ** 3 * reps / min(_time_calls(lambda: f(a), reps, repeats))


def _progress(message: str) -> None:
    """A line the driver echoes while the worker runs (stderr, prefixed)."""
    print(f"progress: {message}", file=sys.stderr, flush=True)


def _emit_row(row: dict) -> dict:
    """Hand one finished measurement to the driver now (a ROW line), so a run stopped later keeps it."""
    print("ROW " + json.dumps(row), flush=True)
    return row


def _peak_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def jax_worker(args) -> dict:
    if args._ndev:
        import jax
        jax.config.update("jax_num_cpu_devices", args._ndev)  # before the backend starts; CPU only
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from jaxae import hostmem
    from jaxae import train as T

    cfg = _config(args)
    large = T.large_cpu_steps(cfg)  # the arenas train.py's run of cfg would have
    kept = args.keep_freed_memory and hostmem.keep_freed_memory(large_steps=large)  # as train.py does
    inline = args.keep_freed_memory and hostmem.run_cpu_programs_inline()
    backend = jax.default_backend()
    n_dev = jax.device_count()
    if args._ndev and backend != "cpu" and args._ndev != n_dev:
        return {"skipped": f"{args._ndev} devices asked, {n_dev} {backend} device(s) present"}
    peak = matmul_peak()
    rng = np.random.default_rng(0)
    train_u8 = rng.integers(0, 256, (N_TRAIN, *IMAGE_SHAPE), dtype=np.uint8)
    test_u8 = rng.integers(0, 256, (N_TEST, *IMAGE_SHAPE), dtype=np.uint8)
    mesh = Mesh(np.array(jax.local_devices()), (T.AXIS,))
    images = T.put_dataset(train_u8, mesh)
    # as train.py does: what each compile leaves free is given back before the program first runs
    with hostmem.release_after_compiles() if kept else contextlib.nullcontext():
        rows = _time_jaxae(args, cfg, backend, n_dev, mesh, images, train_u8, peak)
        enc = _encode_rate(cfg, test_u8, args.repeats)
    return {"backend": backend, "devices": n_dev, "matmul_peak_flops": peak, "encode": enc, "rows": rows,
            "peak_rss_mb": _peak_rss_mb(), "keep_freed_memory": kept, "cpu_programs_inline": inline,
            "malloc_arenas": hostmem.arena_limit(large) if kept else None,
            "device_kind": jax.devices()[0].device_kind}


def _time_jaxae(args, cfg, backend: str, n_dev: int, mesh, images, train_u8, peak: float) -> list[dict]:
    """One row per batch size and steps per call: jaxae's pmapped step timed after its compile."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxae import models as M
    from jaxae import train as T

    rows = []
    for bs in [int(b) for b in _batch_sizes(args, backend)]:
        if bs % n_dev:
            continue
        cfg_b = cfg.replace(batch_size=bs)
        spe = T.steps_per_epoch(N_TRAIN, bs)
        state = T.create_train_state(cfg_b, IMAGE_SHAPE, 10 * spe, spe)
        perm = T.device_epoch_order(0, 0, N_TRAIN, spe, bs, mesh)
        one_program_flops_img = None  # _step_flops's, where a step is one program (not _PassSteps's)
        # The same step with lax's own convolutions: what the CPU's Winograd convs (models.winograd_conv) compute
        # with fewer multiplies. The FLOP/s of the direct algorithm, as the PyTorch twin computes it.
        fast_convs, M.cpu_conv = M.cpu_conv, None
        try:
            direct_flops_img = _step_flops(cfg_b, state, train_u8[: bs // n_dev])
        finally:
            M.cpu_conv = fast_convs
        for spc in _steps_per_call(args, backend, spe):
            fn = T.make_p_train_steps(cfg_b, spc, spe)
            # the step donates its state: give each timing its own copy (on GPU, reuse of a donated one fails)
            holder = {"state": T.place_state(jax.tree.map(jnp.copy, state), mesh)}
            if isinstance(fn, T._PassSteps):
                flops_img = _programs_flops(fn, holder["state"], images, perm, spc * bs // n_dev)
            else:
                if one_program_flops_img is None:
                    one_program_flops_img = _step_flops(cfg_b, state, train_u8[: bs // n_dev])
                flops_img = one_program_flops_img

            def call():
                holder["state"], m = fn(holder["state"], images, perm)
                return m["loss"]

            t0 = time.perf_counter()
            jax.block_until_ready(call())
            compile_s = time.perf_counter() - t0
            _progress(f"jaxae {n_dev} device(s) batch {bs}, {spc} step(s)/call: compiled in {compile_s:.1f} s")
            n_calls = max(1, -(-max(args.steps, 20) // spc))
            times = _time_calls(call, n_calls, max(args.repeats, 3))
            loss = float(np.asarray(call()).reshape(-1)[-1])
            rates = [n_calls * spc * bs / t for t in times]
            best = max(rates)
            rows.append(_emit_row({
                "impl": "jaxae", "backend": backend, "devices": n_dev, "batch": bs, "steps_per_call": spc,
                "microbatch": T.microbatch_size(cfg_b, bs // n_dev),
                "img_s_best": best, "img_s_median": statistics.median(rates), "compile_s": compile_s,
                "flops_per_img": flops_img, "flops_s": best * flops_img,
                "pct_matmul_peak": 100 * best * flops_img / peak, "direct_flops_per_img": direct_flops_img,
                "pct_matmul_peak_direct": 100 * best * direct_flops_img / peak, "loss": loss}))
    return rows


def _programs_flops(fn, state, images, perm, examples: int) -> float:
    """FLOPs per image of a call of a step that runs as several programs (jaxae.train._PassSteps, CPU): XLA's cost
    analysis of each lowered program times its runs per call, over the examples a device sees in the call."""
    return sum(runs * _lowered_flops(program) for program, runs in fn.lowered(state, images, perm)) / examples


def _lowered_flops(lowered) -> float:
    """The FLOPs of a lowered program by XLA's cost analysis (NaN where it gives none)."""
    ca = lowered.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca.get("flops", float("nan")))


def _step_flops(cfg, state, batch) -> float:
    """FLOPs per image of one step on one device's share, from XLA's cost analysis of the lowered (not compiled)
    step: on GPU the compiled program's convolutions are cuDNN custom calls that the analysis does not count
    (it gave 0.007-0.035 GFLOP/img on an H100 for a 0.78 GFLOP/img step). On CPU both agree within 0.5 %."""
    import jax
    from jaxae import train as T
    step1 = jax.jit(lambda s, b, k: T.train_step(s, b, k, cfg, None))
    return _lowered_flops(step1.lower(state, batch, state.key)) / len(batch)


def _encode_rate(cfg, test_u8, repeats: int) -> dict:
    """Seconds to encode the 10k test images as evaluate.py does (evaluate.encode_split: one program scanning
    batches of evaluate.split_batch() images), after compile."""
    import jax
    from jaxae import evaluate
    from jaxae.metrics import pad_to_multiple
    from jaxae.models import model_from_config
    from jaxae.train import init_params

    model = model_from_config(cfg, IMAGE_SHAPE)
    codec = evaluate.autoencoder_codec(model, init_params(model, jax.random.PRNGKey(0), IMAGE_SHAPE))
    batch = evaluate.batch_size_for(len(test_u8))
    x = jax.device_put(pad_to_multiple(test_u8, batch)[0])
    evaluate.compile_encode_split(codec, x)
    times = _time_calls(lambda: evaluate.encode_split(codec, x), 1, max(repeats, 3))
    return {"images": len(test_u8), "batch": batch, "seconds_best": min(times),
            "img_s_best": len(test_u8) / min(times)}


def _batch_sizes(args, backend: str) -> list[str]:
    if args.batch_sizes != "auto":
        return _parse_list(args.batch_sizes)
    return ["256"] if backend == "cpu" else ["256", "1024"]


def _steps_per_call(args, backend: str, spe: int) -> list[int]:
    vals = ["1"] if args.spc == "auto" and backend == "cpu" else (
        ["1", "10", "epoch"] if args.spc == "auto" else _parse_list(args.spc))
    return sorted({spe if v == "epoch" else min(int(v), spe) for v in vals})


# --------------------------------------------------------------------------------------- torch worker

def torch_worker(args) -> dict:
    import torch

    from jaxae import hostmem

    sys.path.insert(0, os.path.join(REPO, "bench"))
    from torch_twin import time_training

    kept = args.keep_freed_memory and hostmem.keep_freed_memory()
    cfg = _config(args)
    cuda = torch.cuda.is_available()
    threads = 0 if cuda else (args.threads or os.cpu_count())
    if threads:
        torch.set_num_threads(threads)
    rows = []
    modes = [False] + ([True] if args.torch_compile else [])
    for bs in [int(b) for b in _batch_sizes(args, "gpu" if cuda else "cpu")]:
        for comp in modes:
            impl = "torch.compile" if comp else "torch eager"
            try:
                r = time_training(IMAGE_SHAPE, cfg.latent_dim, cfg.width, cfg.stages, cfg.blocks, cfg.hidden,
                                  cfg.mlp_layers, cfg.norm, cfg.upsample, cfg.head, batch_size=bs,
                                  steps=max(args.steps, 20), repeats=max(args.repeats, 3), compile=comp,
                                  bf16=cfg.dtype == "bfloat16",
                                  learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  grad_clip=cfg.grad_clip, activation=cfg.activation, encoder_heads=cfg.encoder_heads,
                                  log=lambda m, prefix=f"{impl} batch {bs}": _progress(f"{prefix}: {m}"))
            except Exception as e:  # torch.compile needs a working compiler toolchain: report, go on
                first = str(e).splitlines()[0][:200] if str(e) else ""
                rows.append(_emit_row({"impl": impl, "batch": bs, "error": f"{type(e).__name__}: {first}"}))
                continue
            rows.append(_emit_row({"impl": impl, "backend": r["device"],
                                   "devices": 1, "threads": threads or None, "batch": bs, "steps_per_call": 1,
                                   "img_s_best": r["img_s_best"], "img_s_median": r["img_s_median"],
                                   "compile_s": r["warmup_s"], "loss": r["loss"]}))
    return {"rows": rows, "peak_rss_mb": _peak_rss_mb(), "keep_freed_memory": kept,
            "malloc_arenas": hostmem.arena_limit() if kept else None, "torch": torch.__version__}


# ------------------------------------------------------------------------------------------- driver

def _run_worker(kind: str, argv: list[str], ndev: int = 0, on_row=None) -> dict:
    """Run one worker subprocess; echo its progress lines, hand each measurement to on_row as it arrives."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--_worker", kind, "--_ndev", str(ndev)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    tail: collections.deque[str] = collections.deque(maxlen=5)  # the worker's last stderr lines, for errors

    def read_stderr():
        for line in proc.stderr:
            if line.startswith("progress: "):
                print(f"  {line[len('progress: '):].rstrip()}", flush=True)
            tail.append(line.rstrip())

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    result = None
    try:
        for line in proc.stdout:
            if line.startswith("ROW ") and on_row:
                on_row(json.loads(line[len("ROW "):]))
            elif line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
        proc.wait()
    finally:  # stopped (Ctrl-C, `timeout`): stop the worker too
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    if proc.returncode or result is None:
        return {"error": f"{kind} worker (devices={ndev}) failed with exit {proc.returncode}: " + "\n".join(tail)}
    return result


def _device_counts(args) -> list[int]:
    if args.devices != "auto":
        return [int(d) for d in _parse_list(args.devices)]
    return [1, 2]  # on an accelerator the first worker takes every local device, and main() stops there


def _fmt(v, spec):
    width = int(spec.split(".")[0].rstrip("dfs,") or 0)  # "9.3f" -> 9: a missing value keeps its column
    return format(v, spec) if isinstance(v, (int, float)) else "-".rjust(width)


def _freed(worker: dict) -> str:
    inline = {True: "; CPU programs run inline", False: "; CPU programs dispatched asynchronously"}
    arenas = worker.get("malloc_arenas")  # absent from runs before the fifteenth session
    kept = "kept" + ("" if arenas is None else f", {arenas or 'glibc default'} malloc arenas")
    return "freed host memory " + (kept if worker.get("keep_freed_memory")
                                   else "returned to the kernel (glibc's default)") + inline.get(
        worker.get("cpu_programs_inline"), "")


def print_table(result: dict) -> None:
    rows = result["rows"]
    head = (f"{'impl':14s} {'backend':7s} {'dev':>3s} {'batch':>5s} {'micro':>5s} {'steps/call':>10s} "
            f"{'img/s best':>10s} {'median':>8s} {'GFLOP/img':>9s} {'GFLOP/s':>8s} {'% mm peak':>9s} {'direct %':>8s} "
            f"{'compile s':>9s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['impl']:14s} batch {r.get('batch')}: {r['error']}")
            continue
        gf = r.get("flops_per_img")
        print(f"{r['impl']:14s} {r['backend']:7s} {r['devices']:3d} {r['batch']:5d} {_fmt(r.get('microbatch'), '5d')} "
              f"{r['steps_per_call']:10d} "
              f"{r['img_s_best']:10,.0f} {r['img_s_median']:8,.0f} {_fmt(gf and gf / 1e9, '9.3f')} "
              f"{_fmt(r.get('flops_s') and r['flops_s'] / 1e9, '8.1f')} {_fmt(r.get('pct_matmul_peak'), '9.1f')} "
              f"{_fmt(r.get('pct_matmul_peak_direct'), '8.1f')} {r['compile_s']:9.1f}")
    for w in result["jax_workers"]:
        if "rows" in w:
            print(f"jaxae {w['devices']} {w['backend']} device(s) ({w['device_kind']}): matmul peak "
                  f"{w['matmul_peak_flops'] / 1e9:,.0f} GFLOP/s; encode {w['encode']['images']} images "
                  f"{w['encode']['seconds_best']:.3f} s ({w['encode']['img_s_best']:,.0f} img/s, "
                  f"{w['encode']['batch']} a scan step); "
                  f"peak RSS {w['peak_rss_mb']:,.0f} MB; {_freed(w)}")
        else:
            print(f"jaxae worker: {w.get('skipped') or w.get('error')}")
    t = result.get("torch_worker")
    if t and "rows" in t:
        print(f"torch {t['torch']}: peak RSS {t['peak_rss_mb']:,.0f} MB; {_freed(t)}")
    elif t:
        print(f"torch worker: {t.get('error')}")
    per_batch = {k: v for k, v in result["ratios"].items() if k != "best"}
    for bs, ratio in sorted(per_batch.items(), key=lambda kv: int(kv[0])):
        print(f"batch {bs}: best jaxae / best PyTorch = {ratio['ratio']:.2f}x "
              f"({ratio['jaxae']:,.0f} vs {ratio['torch']:,.0f} img/s, {ratio['torch_impl']})")
    best = result["ratios"].get("best")
    if best and (len(per_batch) > 1 or best["jaxae_batch"] != best["torch_batch"]):
        print(f"each at its best batch size: jaxae / PyTorch = {best['ratio']:.2f}x ({best['jaxae']:,.0f} img/s "
              f"at {best['jaxae_batch']} vs {best['torch']:,.0f} img/s at {best['torch_batch']}, "
              f"{best['torch_impl']})")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args._worker:
        res = jax_worker(args) if args._worker == "jax" else torch_worker(args)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    from jaxae.config import UsageError
    try:
        _check_lists(args)  # here, not in a worker: a typo ended every worker and the run in exit 0
        cfg = _config(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model: {json.dumps({**cfg.model_settings(), 'dtype': cfg.dtype})}", flush=True)
    result = {"config": cfg.__dict__, "argv": argv, "jax_workers": [], "rows": [], "time": time.time()}

    def on_row(row):  # a finished measurement: show it and save it now, so a stopped run keeps it
        result["rows"].append(row)
        print(f"  {_row_summary(row)}", flush=True)
        _write(result, args.out)

    # `timeout` and kill send SIGTERM: stop as on Ctrl-C, so the rows measured so far are printed and saved
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for ndev in _device_counts(args):
            w = _run_worker("jax", argv, ndev, on_row)
            result["jax_workers"].append(w)
            if "rows" not in w:
                print(f"  jaxae on {ndev} device(s): {w.get('skipped') or w.get('error')}", flush=True)
            if args.devices == "auto" and w.get("backend") not in (None, "cpu"):
                break  # on an accelerator this worker ran on every local device
        if args.torch and (cfg.mlp != "plain" or cfg.fourier):
            print("note: the PyTorch twin has no --mlp residual or --fourier; timing jaxae alone", flush=True)
        elif args.torch:
            t = _run_worker("torch", argv, 0, on_row)
            result["torch_worker"] = t
    except KeyboardInterrupt:
        result["incomplete"] = True
        print("stopped before the end: the table and the JSON hold the measurements finished so far", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    result["ratios"] = _ratios(result["rows"])
    print_table(result)
    _write(result, args.out)
    print(f"wrote {args.out}")
    if result.get("incomplete"):
        return 130
    if not result["rows"]:
        print("error: no measurement finished: every worker failed (their errors are above)", file=sys.stderr)
        return 1
    return 0


def _check_lists(args) -> None:
    """--batch-sizes, --devices and --steps-per-call: auto, or positive whole numbers (and epoch)."""
    from jaxae.config import UsageError
    for flag, text, extra in (("--batch-sizes", args.batch_sizes, ()), ("--devices", args.devices, ()),
                              ("--steps-per-call", args.spc, ("epoch",))):
        vals = _parse_list(text)
        if text == "auto":
            continue
        bad = [v for v in vals if v not in extra and not (v.isdigit() and int(v) > 0)] or ([] if vals else [text])
        if bad:
            allowed = "auto or comma-separated whole numbers above 0" + (" or epoch" if extra else "")
            raise UsageError(f"{flag} {text!r}: {bad[0]!r} is not {allowed}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _ratios(rows: list[dict]) -> dict:
    """Per batch size, and over all batch sizes ("best": each side at the batch size where it does best, as
    issue 5's targets are stated): the best jaxae row against the best PyTorch row."""
    ratios = {}
    ok = [r for r in rows if "error" not in r]
    for key in sorted({r["batch"] for r in ok}) + ["best"]:
        j = [r for r in ok if key in ("best", r["batch"]) and r["impl"] == "jaxae"]
        t = [r for r in ok if key in ("best", r["batch"]) and r["impl"] != "jaxae"]
        if j and t:
            bj, bt = max(j, key=lambda r: r["img_s_best"]), max(t, key=lambda r: r["img_s_best"])
            ratios[str(key)] = {"ratio": bj["img_s_best"] / bt["img_s_best"], "jaxae": bj["img_s_best"],
                                "torch": bt["img_s_best"], "torch_impl": bt["impl"], "jaxae_batch": bj["batch"],
                                "torch_batch": bt["batch"]}
    return ratios


def _row_summary(row: dict) -> str:
    who = f"{row['impl']}" + (f" {row['devices']} device(s)" if row["impl"] == "jaxae" else "")
    if "error" in row:
        return f"{who} batch {row.get('batch')}: {row['error']}"
    return f"{who} batch {row['batch']}: {row['img_s_best']:,.0f} img/s best, {row['img_s_median']:,.0f} median"


def _write(result: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=2)
    os.replace(tmp, path)  # never a half-written file, even when stopped while writing


if __name__ == "__main__":
    sys.exit(main())
