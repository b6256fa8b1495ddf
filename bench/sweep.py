r"""Train a list of configurations one after another and tabulate test MSE, 10-NN accuracy and time.

    python bench/sweep.py --data data/cifar10-jpeg.tar.gz --out runs/sweep.jsonl \
        --base '{"epochs": 20}' --grid '[{}, {"width": 32}, {"loss": "l1"}]'

Each grid entry overrides the base config; each run leaves a normal workdir under --root.
--jobs N runs the grid in N worker processes side by side on the same accelerator (entry i goes to worker
i mod N; each worker takes 1/N of the GPU memory). Compiles and per-epoch evaluations are host-bound; workers
overlap them with each other's training.
A run that diverges or collapses (TrainingStopped) writes a row with the reason under "stopped", and the grid
goes on; a run cut off by a signal (`timeout`) writes none, and its worker stops.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PCA3_MSE = 0.0323  # ../shared/data/README.md, the same JPEG copy of CIFAR-10


def knn10(cfg, state, ds) -> float:
    """10-NN class accuracy of the test codes against the training codes (jaxae.evaluate's functions)."""
    import jax
    import numpy as np
    from jaxae.evaluate import autoencoder_codec, batch_size_for, encode_split
    from jaxae.metrics import knn_accuracy, nearest_neighbours
    from jaxae.models import model_from_config
    from jaxae.metrics import pad_to_multiple

    codec = autoencoder_codec(model_from_config(cfg, ds.image_shape), state.params)
    codes = []
    for x in (ds.test_images, ds.train_images):
        padded, _ = pad_to_multiple(x, batch_size_for(len(x)))
        codes.append(encode_split(codec, jax.device_put(padded, jax.local_devices()[0]))[:len(x)])
    nn = np.asarray(nearest_neighbours(codes[0], codes[1], k=10))
    return knn_accuracy(nn, ds.train_labels, ds.test_labels, len(ds.class_names))


def run_workers(args) -> int:
    """Decode the data once (so the workers read the .npz cache), then run grid[i::jobs] in worker i."""
    from jaxae.data import load
    load(args.data, cache_dir=args.cache_dir)
    grid = json.loads(args.grid)
    env = {**os.environ, "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / args.jobs:.2f}"}
    procs = []
    for i in range(args.jobs):
        part = grid[i::args.jobs]
        if part:
            # In sessions of their own, so that `timeout` or Ctrl-C reach them once, through forward() below:
            # a worker stops at its next call, saves and writes no row for the cut-off run (a second signal
            # stops it at once). Left in the driver's group, they ran on after a `timeout` had ended the driver.
            procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--data", args.data,
                                           "--base", args.base, "--grid", json.dumps(part), "--root", args.root,
                                           "--out", args.out, "--cache-dir", args.cache_dir], env=env,
                                          start_new_session=True))

    def forward(signum, frame):
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return max(proc.wait() for proc in procs)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv=None) -> int:
    from jaxae.cli import ArgumentParser
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the data every run trains on, as train.py --data")
    p.add_argument("--base", default="{}", help="JSON dict of Config overrides shared by all runs")
    p.add_argument("--grid", required=True, help="JSON list of dicts, one run each")
    p.add_argument("--root", default="runs/sweep", help="parent folder of the runs' workdirs")
    p.add_argument("--out", default="runs/sweep.jsonl", help="JSON lines, one per run (appended)")
    p.add_argument("--cache-dir", default="", help="as train.py --cache-dir (default ~/.cache/jaxae)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes sharing the accelerator (default: 1)")
    args = p.parse_args(argv)
    if args.jobs > 1:
        return run_workers(args)

    import jax
    from jaxae.cli import use_compilation_cache
    from jaxae.config import Config, TrainingStopped
    from jaxae.data import load
    from jaxae.train import train_and_evaluate

    base, grid = json.loads(args.base), json.loads(args.grid)
    use_compilation_cache(args.cache_dir)  # as train.py; the workers share it
    ds = load(args.data, cache_dir=args.cache_dir)
    print(f"{jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}", flush=True)
    for i, over in enumerate(grid):
        name = "-".join(f"{k}{v}" for k, v in over.items()) or "base"
        cfg = Config(**{**base, **over, "data": args.data, "workdir": os.path.join(args.root, name),
                        "fresh": True}).validate()
        t0 = time.perf_counter()
        try:
            res = train_and_evaluate(cfg, ds=ds, progress=False)
        except TrainingStopped as e:  # diverged or collapsed: a finding of the study, and the grid goes on
            _write_row(args.out, {"name": name, **over, "stopped": str(e), "wall_s": time.perf_counter() - t0,
                                  "base": base})
            print(f"FAILED {name}: {e}", flush=True)
            continue
        wall = time.perf_counter() - t0
        if res["step"] < res["total"]:  # stopped (SIGTERM, `timeout`) before its last step
            print(f"STOPPED {name} at step {res['step']} of {res['total']}: no row written", flush=True)
            return res["exit"] or 130
        knn = knn10(cfg, res["state"], ds)
        row = {"name": name, **over, "test_mse": res["test_mse"], "x_pca3": res["test_mse"] / PCA3_MSE,
               "knn10": knn, "train_loss": res["train_loss"], "steps": res["step"], "wall_s": wall, "base": base}
        _write_row(args.out, row)  # before the print: a closed stdout must not cost the row
        print(f"RESULT {name:40s} mse {row['test_mse']:.5f} ({row['x_pca3']:.3f} x PCA-3)  10-NN {knn:.1%}  "
              f"{wall:6.1f} s", flush=True)
    return 0


def _write_row(path: str, row: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
