r"""Train a list of configurations one after another and tabulate test MSE, 10-NN accuracy and time.

    python bench/sweep.py --data data/cifar10-jpeg.tar.gz --out runs/sweep.jsonl \
        --base '{"epochs": 20}' --grid '[{}, {"width": 32}, {"loss": "l1"}]'
    python bench/sweep.py --table runs/sweep.jsonl     # the rows as a Markdown table

Each grid entry overrides the base config; each run leaves a normal workdir under --root.
--jobs N runs the grid in N worker processes side by side on the same accelerator (entry i goes to worker
i mod N; each worker takes 1/N of the GPU memory). Compiles and per-epoch evaluations are host-bound; workers
overlap them with each other's training.
An entry may name a "preset" (its values come first, as with train.py --preset; then --base, then the entry).
Every entry's settings are checked before anything is loaded or trained (names, types, values; those that
depend on the data, such as a batch larger than the training set, when its run starts): one error line, exit 2.
A run that diverges or collapses (TrainingStopped) writes a row with the reason under "stopped", and the grid
goes on; a run cut off by a signal (`timeout`, Ctrl-C) writes none, and the sweep stops after it (exit 128 +
the signal). A signal between two runs stops the sweep after the row of the run that finished.
Run the same command again to go on: an entry whose run already has a row in --out (the same run settings, step
budget, step layout, data and device) is skipped, and one whose run was cut off resumes from its last checkpoint
(its row says from which step; its wall time is that part's). --again trains every entry anew.
Each row holds the run's resolved config, the data, the workdir, jax's version and the device, and its test MSE
next to PCA's with as many components as the code has dimensions, fit on the same data's training split; of a model
with encoder heads, each head's share of the test images too (a head near 0 % is one that training starved).
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

def code_stats(cfg, state, ds) -> dict:
    """{"knn10": 10-NN class accuracy of the test codes against the training codes}, and of a model with encoder
    heads "head_shares": the fraction of the test images whose code each head gave, in head order (a head near 0
    is dead: docs/quality.md, thirty-first session). jaxae.evaluate's functions, as evaluate.py computes them."""
    import jax
    import numpy as np
    from jaxae.evaluate import autoencoder_codec, batch_size_for, chosen_heads, encode_split
    from jaxae.figures import head_shares
    from jaxae.metrics import knn_accuracy, nearest_neighbours, pad_to_multiple
    from jaxae.models import model_from_config

    model = model_from_config(cfg, ds.image_shape)
    codec = autoencoder_codec(model, state.params)
    n_test, n_train = len(ds.test_images), len(ds.train_images)
    test, train = (jax.device_put(pad_to_multiple(x, batch_size_for(len(x)))[0], jax.local_devices()[0])
                   for x in (ds.test_images, ds.train_images))
    test_codes = encode_split(codec, test)
    nn = np.asarray(nearest_neighbours(test_codes[:n_test], encode_split(codec, train)[:n_train], k=10))
    stats = {"knn10": knn_accuracy(nn, ds.train_labels, ds.test_labels, len(ds.class_names))}
    if cfg.encoder_heads > 1:
        heads = chosen_heads(model, state.params, test, test_codes)[:n_test]
        stats["head_shares"] = head_shares(heads, cfg.encoder_heads).tolist()
    return stats


def pca_mse(ds, k: int) -> float:
    """Test MSE of PCA with k components fit on ds's training images: what evaluate.py reports as PCA-k (0.0323
    for k = 3 on the shared CIFAR-10 copy; a constant of that was printed for every dataset)."""
    import jax
    from jaxae.evaluate import batch_size_for, fit_pca_codec, reconstruction_metrics
    from jaxae.metrics import pad_to_multiple
    test_x, mask = pad_to_multiple(ds.test_images, batch_size_for(len(ds.test_images)))
    return reconstruction_metrics(fit_pca_codec(ds, k), jax.device_put(test_x, jax.local_devices()[0]), mask)["mse"]


def configs(args) -> list:
    """(name, overrides, Config) of every grid entry, all checked: preset < --base < entry."""
    from jaxae.config import Config, UsageError, of_kind, with_preset
    from jaxae.data import local_path
    from jaxae.train import check_settings
    try:
        base, grid = json.loads(args.base), json.loads(args.grid)
    except ValueError as e:
        raise UsageError(f"--base and --grid must be JSON ({e})") from None
    if not isinstance(base, dict) or not isinstance(grid, list) or not grid or \
            not all(isinstance(over, dict) for over in grid):
        raise UsageError("--base must be a JSON object and --grid a non-empty JSON list of objects, e.g. "
                         "--base '{\"epochs\": 20}' --grid '[{}, {\"width\": 32}]'")
    defaults = Config()
    # set once for the whole sweep, by its own flags (or not per run): an entry's value was ignored or misfiled
    shared = {"data": "--data", "workdir": "--root", "fresh": "(always fresh)", "cache_dir": "--cache-dir",
              "dataset": "(tfds's cifar10)", "coordinator": "", "num_processes": "", "process_id": ""}

    def check(where: str, settings: dict) -> None:
        for key, value in settings.items():
            if key not in Config.__dataclass_fields__:
                raise UsageError(f"{where}: unknown setting {key!r}; the settings are Config's fields, train.py's "
                                 f"flags with _ for -")
            if key in shared:
                raise UsageError(f"{where}: {key!r} is the sweep's, not a run's" +
                                 (f" (sweep.py {shared[key]})" if shared[key] else ""))
            if not of_kind(key, value):  # a float 8.0 width was a JAX traceback, 1.5 epochs trained
                want = type(getattr(defaults, key)).__name__
                raise UsageError(f"{where}: {key} must be a{'n' * (want == 'int')} {want} (got {json.dumps(value)})")

    check("--base", base)
    out = []
    for i, over in enumerate(grid):
        where = f"grid entry {i} ({json.dumps(over)})"
        check(where, over)
        given = {**base, **over}
        name = "-".join(f"{k}{v}" for k, v in over.items()) or "base"
        try:  # with_preset refuses an unknown preset
            cfg = with_preset({**given, "data": local_path(args.data),  # a rerun from elsewhere
                               "workdir": os.path.join(args.root, name), "fresh": True}).validate()
            # a --base key is every entry's: what a setting does beside another (--weight-decay beside one entry's
            # adam, --norm beside blocks 0) is checked for the keys the entry sets
            check_settings(cfg, set(over))
        except UsageError as e:
            raise UsageError(f"{where}: {e}") from None
        out.append((name, over, cfg))
    names = [cfg.workdir for _, _, cfg in out]
    if len(set(names)) < len(names):
        raise UsageError("two grid entries have the same settings (and so the same workdir)")
    return out


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
                                           "--out", args.out, "--cache-dir", args.cache_dir,
                                           "--_whole-grid", args.grid] + ["--again"] * args.again, env=env,
                                          start_new_session=True))

    def forward(signum, frame):  # the signal received: a second Ctrl-C stops the workers at once, as it would one
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = [proc.wait() for proc in procs]
        # any worker that did not finish its part counts (max() let one killed by a signal, -15, lose to a 0)
        bad = [c if c > 0 else 128 - c for c in codes if c != 0]
        return bad[0] if bad else 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv=None) -> int:
    from jaxae.cli import ArgumentParser
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="the data every run trains on, as train.py --data (required to train)")
    p.add_argument("--base", default="{}", help="JSON dict of Config overrides shared by all runs")
    p.add_argument("--grid", help="JSON list of dicts, one run each (required to train)")
    p.add_argument("--table", metavar="JSONL", help="print the rows of a sweep's JSON-lines file as a Markdown "
                                                    "table (as in docs/quality.md) and exit; trains nothing")
    p.add_argument("--root", default="runs/sweep", help="parent folder of the runs' workdirs")
    p.add_argument("--out", default="runs/sweep.jsonl", help="JSON lines, one per run (appended)")
    p.add_argument("--cache-dir", default="", help="as train.py --cache-dir (default ~/.cache/jaxae)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes sharing the accelerator (default: 1)")
    p.add_argument("--again", action="store_true", help="train every entry from step 0, even one whose run has a "
                   "row in --out already or a checkpoint to resume (its workdir is moved aside)")
    p.add_argument("--_whole-grid", dest="whole_grid", default="", help=argparse.SUPPRESS)  # a worker's
    args = p.parse_args(argv)
    from jaxae.config import UsageError
    if args.table:
        if args.data or args.grid:
            raise UsageError("--table prints a sweep's rows and trains nothing: give it alone (or drop it to train)")
        print(table(args.table))
        return 0
    if not args.data or not args.grid:
        raise UsageError("give --data and --grid to train a sweep (or --table JSONL to print one)")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1 (got {args.jobs})")
    runs = configs(args)  # every entry checked before the data is loaded or anything trained
    if args.jobs > 1:
        return run_workers(args)

    import dataclasses
    import jax
    from jaxae.cli import use_compilation_cache
    from jaxae.config import TrainingStopped
    from jaxae.data import load
    from jaxae.monitor import Stop
    from jaxae.train import check_devices, steps_per_epoch, steps_to_run, train_and_evaluate

    base = json.loads(args.base)
    # here, not in configs(): it starts JAX, which the driver of workers must not; a worker checks the whole grid,
    # so that no worker trains its share while another refuses an entry
    whole = configs(argparse.Namespace(**{**vars(args), "grid": args.whole_grid})) if args.whole_grid else runs
    for _, over, cfg in whole:
        try:
            check_devices(cfg)
        except UsageError as e:
            raise UsageError(f"grid entry {json.dumps(over)}: {e}") from None
    use_compilation_cache(args.cache_dir)  # as train.py; the workers share it
    ds = load(args.data, cache_dir=args.cache_dir)
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
    print(f"{device}, jax {jax.__version__}", flush=True)
    pca = {}  # test MSE of PCA-k, by k
    done = [] if args.again else finished_rows(args.out)
    with Stop() as stop:  # a signal between runs (train_and_evaluate has its own during one)
        for i, (name, over, cfg) in enumerate(runs):
            rows = [r for r in done if same_run(r["config"], dataclasses.asdict(cfg))]
            row = next((r for r in rows if r.get("device") == device), None)
            if row is None and rows:  # e.g. an H200 where the rows came from an H100: a run of its own here
                print(f"note: {name} has a row in {args.out} from {rows[-1].get('device')}, not from {device}: "
                      f"training it here", flush=True)
            if row is not None:
                outcome = f"stopped: {row['stopped']}" if "stopped" in row else f"test MSE {row['test_mse']:.5f}"
                print(f"SKIP {name}: its run has a row in {args.out} already ({outcome}); --again trains it anew",
                      flush=True)
                continue
            total = steps_to_run(cfg, steps_per_epoch(len(ds.train_images), cfg.batch_size))
            resumed_from = None if args.again else cut_run(cfg, total)
            if resumed_from is not None:
                cfg = cfg.replace(fresh=False)
                print(f"RESUME {name}: {cfg.workdir} holds this run, cut off at step {resumed_from} of {total}",
                      flush=True)
            t0 = time.perf_counter()
            common = {"name": name, **over, "base": base, "data": args.data, "workdir": cfg.workdir,
                      "config": dataclasses.asdict(cfg), "jax": jax.__version__, "device": device,
                      # resumed: wall_s is this part's, train_loss the last epoch's steps run in it
                      **({"resumed_from": resumed_from} if resumed_from is not None else {})}
            try:
                res = train_and_evaluate(cfg, ds=ds, progress=False)
            except TrainingStopped as e:  # diverged or collapsed: a finding of the study, and the grid goes on
                _write_row(args.out, {**common, "stopped": str(e), "wall_s": time.perf_counter() - t0})
                print(f"FAILED {name}: {e}", flush=True)
            else:
                wall = time.perf_counter() - t0
                if res["step"] < res["total"]:  # stopped (SIGTERM, `timeout`, Ctrl-C) before its last step
                    print(f"STOPPED {name} at step {res['step']} of {res['total']}: no row written; the rest of "
                          f"the grid does not run", flush=True)
                    return 128 + res["signal"] if res.get("signal") else (res["exit"] or 130)
                if cfg.latent_dim not in pca:
                    pca[cfg.latent_dim] = pca_mse(ds, cfg.latent_dim)
                stats = code_stats(cfg, res["state"], ds)
                row = {**common, "test_mse": res["test_mse"], "pca_mse": pca[cfg.latent_dim],
                       "x_pca": res["test_mse"] / pca[cfg.latent_dim], **stats, "train_loss": res["train_loss"],
                       "steps": res["step"], "wall_s": wall}
                if resumed_from is not None:  # where it did resume (an unreadable checkpoint is set aside)
                    row["resumed_from"] = res.get("start", resumed_from)
                _write_row(args.out, row)  # before the print: a closed stdout must not cost the row
                shares = f"  heads' shares {_shares(row)} %" if "head_shares" in row else ""
                print(f"RESULT {name:40s} mse {row['test_mse']:.5f} ({row['x_pca']:.3f} x PCA-{cfg.latent_dim})  "
                      f"10-NN {row['knn10']:.1%}  {wall:6.1f} s{shares}", flush=True)
            if stop.signum is not None:
                print(f"STOPPED by {signal.Signals(stop.signum).name} after {name}: {len(runs) - 1 - i} run(s) of "
                      f"the grid did not run", flush=True)
                return 128 + stop.signum
    return 0


def _shares(row: dict) -> str:
    """'27/24/25/24': each head's share of the test images in %, for a row of a model with encoder heads; '' else."""
    return "/".join(f"{100 * x:.0f}" for x in row.get("head_shares") or ())


def table(path: str) -> str:
    """The rows of a sweep's JSON-lines file as a Markdown table, in the order they were written: the entry's
    settings (over the --base, given once above the table), test MSE against PCA's, 10-NN, the final train loss,
    steps and wall time; where a row has encoder heads, a column of each head's share of the test images. A run that
    diverged or collapsed shows why. Rows of sweeps before the eighteenth session (CIFAR-10's PCA-3 constant, no
    config) read as they were written."""
    from jaxae.config import UsageError
    try:
        rows, bad = _read_rows(path)
    except OSError as e:
        raise UsageError(f"--table {path}: cannot be read ({e.strerror})") from None
    if not rows:
        raise UsageError(f"--table {path}: no sweep rows in it")
    skip = {"name", "base", "data", "workdir", "config", "jax", "device", "test_mse", "pca_mse", "x_pca", "x_pca3",
            "knn10", "head_shares", "train_loss", "steps", "wall_s", "stopped", "resumed_from"}
    bases = {json.dumps(r.get("base", {}), sort_keys=True) for r in rows}
    heads = any(r.get("head_shares") for r in rows)
    share_head, share_gap = (" heads' shares (%) |", " |") if heads else ("", "")
    lines = [f"base: {', '.join(sorted(bases))}; data: {', '.join(sorted({str(r.get('data', '?')) for r in rows}))}",
             "", f"| configuration | test MSE | x PCA | 10-NN |{share_head} final train loss | steps | wall |",
             "|---|---|---|---|---|---|---|" + ("---|" if heads else "")]
    for r in rows:
        over = ", ".join(f"{k}={v}" for k, v in r.items() if k not in skip) or "base"
        resumed = f" from step {r['resumed_from']}" if "resumed_from" in r else ""  # wall_s: the resumed part's
        if "stopped" in r:
            why = str(r["stopped"])[:80].replace("|", "/")
            lines.append(f"| {over} | stopped: {why} | | |{share_gap} | | {r.get('wall_s', 0):.0f} s{resumed} |")
            continue
        ratio = r.get("x_pca", r.get("x_pca3"))
        k = r.get("config", {}).get("latent_dim", 3)
        cell = lambda key, spec: (format(r[key], "g" if spec == "d" and isinstance(r[key], float) else spec)  # noqa
                                  if isinstance(r.get(key), (int, float)) else "")
        lines.append(f"| {over} | {cell('test_mse', '.5f')} | "
                     f"{f'{ratio:.3f} x PCA-{k}' if isinstance(ratio, float) else ''} | {cell('knn10', '.1%')} | "
                     f"{_shares(r) + ' | ' if heads else ''}"
                     f"{cell('train_loss', '.5f')} | {cell('steps', 'd')} | {cell('wall_s', '.0f')} s{resumed} |")
    if bad:
        lines.append(f"\n({bad} line(s) of {path} are not rows: skipped)")
    return "\n".join(lines)


def finished_rows(path: str) -> list[dict]:
    """The rows of `path` (none if it is not there) that hold a run's whole config and its outcome: a test MSE, or
    the reason it stopped. Rows of sweeps before the eighteenth session (no config) cannot be matched, nor can a
    line cut short."""
    if not os.path.exists(path):
        return []
    return [row for row in _read_rows(path)[0]
            if isinstance(row.get("config"), dict) and ("test_mse" in row or "stopped" in row)]


def _read_rows(path: str) -> tuple[list[dict], int]:
    """The JSON objects on the lines of `path`, and how many non-blank lines are not one (a line a kill cut short,
    another file's text)."""
    rows, bad = [], 0
    with open(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
    return rows, bad


# What makes two rows the same run: what a run computes (Config.RUN_FIELDS), where it stops, and how its steps are
# cut up, which sets its wall time (a speed sweep varies them)
SAME_RUN_FIELDS = ("max_steps", "steps_per_call", "microbatch")


def same_run(a: dict, b: dict, more: tuple[str, ...] = SAME_RUN_FIELDS) -> bool:
    """Whether two configs (as dicts) describe the same run: every setting that changes what a run computes, and
    `more`, and the same data (paths compared as absolute ones)."""
    import dataclasses
    from jaxae.checkpoints import same_setting
    from jaxae.config import Config
    # read as a saved config.json is: a row from before a setting existed ran with its value then
    a, b = (dataclasses.asdict(Config.from_dict(d)) for d in (a, b))
    return all(same_setting(k, a[k], b[k]) for k in Config.RUN_FIELDS + more)


def cut_run(cfg, total: int) -> int | None:
    """The last checkpoint's step, when cfg.workdir holds one of this very run before its last step (`total`):
    one that was cut off. None otherwise: a finished one (its row lost, or in another --out) is trained anew,
    its files moved aside. The step budget (max_steps) is not compared: a run that an earlier sweep's budget
    ended goes on to this one's."""
    import dataclasses
    from jaxae.checkpoints import latest_step
    from jaxae.config import UsageError, load_config
    last = latest_step(cfg.workdir)
    if last is None:
        return None
    try:
        saved = load_config(cfg.workdir)
    except UsageError:  # no or a broken config.json: start over (the files are moved aside, not deleted)
        return None
    # its step budget was the cut command's (saved with it), not the run's
    same = last < total and same_run(dataclasses.asdict(saved), dataclasses.asdict(cfg), ("steps_per_call",
                                                                                          "microbatch"))
    return last if same else None


def _write_row(path: str, row: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a+b") as fh:
        cut = False  # a line a kill cut short ends without a newline: this row must not join it (and be lost)
        if fh.seek(0, os.SEEK_END) > 0:
            fh.seek(-1, os.SEEK_END)
            cut = fh.read(1) != b"\n"
        fh.write(("\n" * cut + json.dumps(row) + "\n").encode())


if __name__ == "__main__":
    from jaxae.cli import run_main
    run_main(main)
