r"""Train within a wall-clock budget, then evaluate: test MSE, PSNR and 10-NN accuracy next to PCA.

    python bench/quality.py --data ../shared/data/cifar10-jpeg.tar.gz --minutes 15 --workdir runs/q15 \
        --preset quick

The number of epochs (and so the warm-up + cosine schedule) is fitted to the budget from a timed
calibration of the real train step (where fewer epochs fit than the preset has, its warm-up shrinks in proportion,
unless --warmup-epochs is given); any train.py flag may follow, except --epochs and --max-steps (the budget
sets the schedule). A checkpoint is saved every tenth of the epochs (--save-every-epochs sets it). The workdir is a
normal one: `python evaluate.py --workdir DIR` reads it (this script already ran it into DIR/eval). Run again on
a workdir that holds a run, the same command resumes that run (its fitted epochs) and evaluates it; --fresh fits
a new one. A run stopped by a signal exits 128 + the signal, with no evaluation.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def calibrate(cfg, ds, calls: int = 3, warmup_s: float = 3.0, min_s: float = 8.0) -> tuple[float, float, float]:
    """(seconds per training step, seconds per test evaluation, seconds of compilation) of `cfg`: `warmup_s`
    untimed, then >= 20 steps and >= `min_s` seconds timed."""
    import jax
    import numpy as np
    from jax.sharding import Mesh
    from jaxae import metrics, train

    n = ds.train_images.shape[0]
    spe = train.steps_per_epoch(n, cfg.batch_size)
    k = train.default_steps_per_call(cfg, spe)
    k = min(k, max(1, 40 // calls)) if k > 1 else 1
    mesh = Mesh(np.array(jax.local_devices()), (train.AXIS,))
    images = train.put_dataset(ds.train_images, mesh)
    perm = train.device_epoch_order(cfg.seed, 0, n, spe, cfg.batch_size, mesh)
    state = train.place_state(train.create_train_state(cfg, ds.image_shape, cfg.epochs * spe, spe), mesh)
    fn = train.make_p_train_steps(cfg, k, spe)
    t0 = time.perf_counter()
    state, m = fn(state, images, perm)
    jax.block_until_ready(m)
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < warmup_s:  # untimed warm-up: the first seconds after a compile run slower
        state, m = fn(state, images, perm)
        jax.block_until_ready(m)
    n_steps, t0 = 0, time.perf_counter()
    # >= 20 steps and >= 8 s, synced as often as the training loop syncs (every --log-every steps): syncing
    # every 5 steps stalled the 2-device pipeline and under-measured it by a third (1,476 vs ~2,200 img/s)
    sync = max(k, cfg.log_every)
    while n_steps < max(calls * k, 20) or time.perf_counter() - t0 < min_s:
        state, m = fn(state, images, perm)
        n_steps += k
        if n_steps % sync < k:
            jax.block_until_ready(m)
    jax.block_until_ready(m)
    t_step = (time.perf_counter() - t0) / n_steps
    test_x, mask, batch = train.put_test_set(ds.test_images, mesh)  # train.py's own test pass
    metrics.reconstruction_error(state, test_x, mask, batch)
    t0 = time.perf_counter()
    metrics.reconstruction_error(state, test_x, mask, batch)
    return t_step, time.perf_counter() - t0, t_compile


def fit_epochs(budget_s: float, spe: int, t_step: float, t_eval: float) -> int:
    """Whole epochs (each `spe` steps and one test pass) that fit in `budget_s` seconds; at least 1."""
    return max(1, int(budget_s / (spe * t_step + t_eval)))


def main(argv=None) -> int:
    import math
    import shlex
    from jaxae import checkpoints, config
    from jaxae.cli import use_compilation_cache
    from jaxae.data import load
    from jaxae.evaluate import run as evaluate
    from jaxae.data import local_path
    from jaxae.train import check_devices, check_settings, keep_host_memory, train_and_evaluate

    from jaxae.cli import ArgumentParser
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget of the training (default 15)")
    config.add_flags(p)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if not (math.isfinite(args.minutes) and args.minutes > 0):
        raise config.UsageError(f"--minutes must be a positive number (got {args.minutes})")
    cfg, explicit = config.from_args(args)
    for flag in ("epochs", "max_steps"):
        if flag in explicit:
            raise config.UsageError(f"--{flag.replace('_', '-')} and --minutes both set the schedule: quality.py "
                                    f"fits the epochs to --minutes; drop --{flag.replace('_', '-')} (or train a "
                                    f"fixed schedule with train.py)")
    t_start = time.perf_counter()
    resume = checkpoints.has_checkpoints(cfg.workdir) and not cfg.fresh  # a run of an earlier call
    if resume or (cfg.fresh and os.path.exists(config.config_path(cfg.workdir))):
        # its saved settings, not this command's defaults, as train.py takes them (flags that contradict them are
        # refused; --fresh alone starts the run's own settings over); its epochs are this script's, not a preset's
        fitted = config.load_config(cfg.workdir).epochs if resume else cfg.epochs
        cfg, _ = checkpoints.resolve_workdir(cfg.replace(data=local_path(cfg.data), epochs=fitted), explicit)
    check_settings(cfg, explicit)
    # as train_and_evaluate does, for the run's own model, and before anything starts JAX (check_workdir asks for
    # the process count): calibrate the step the training will run
    keep_host_memory(cfg, explicit)
    checkpoints.check_workdir(cfg.workdir)  # before the calibration: a typo must not cost it
    use_compilation_cache(cfg.cache_dir)  # as train.py: a second study of the same model compiles nothing
    check_devices(cfg)  # after hostmem's settings: this starts JAX
    ds = load(cfg.data, cfg.dataset, cfg.cache_dir)
    spe = check_settings(cfg, explicit, ds)
    if resume:
        epochs = cfg.epochs
        print(f"note: {cfg.workdir} holds a run of {_epochs(epochs)}: resuming it and evaluating it (pass --fresh "
              f"to fit a new run to --minutes {args.minutes:g}; its files are moved aside)", flush=True)
    else:
        t_step, t_eval, t_compile = calibrate(cfg, ds)
        left = args.minutes * 60 - (time.perf_counter() - t_start) - 2 * t_compile
        epochs = fit_epochs(left, spe, t_step, t_eval)
        print(f"calibration: {t_step * 1e3:.1f} ms/step ({cfg.batch_size / t_step:,.0f} img/s), test pass "
              f"{t_eval:.1f} s, compile {t_compile:.1f} s -> {_epochs(epochs)} fit in {args.minutes:g} min", flush=True)
        if left < spe * t_step + t_eval:
            print(f"note: the calibration and compiles ({time.perf_counter() - t_start:.0f} s) leave less than one "
                  f"epoch of the budget: the run will take longer than --minutes {args.minutes:g}", flush=True)
    if "warmup_epochs" not in explicit and cfg.warmup_epochs == config.fitted_warmup(cfg.preset, cfg.epochs):
        # as train.py --epochs: fewer epochs than the preset's shorten its warm-up in proportion. A fitted run,
        # resumed or started over, keeps the warm-up it has: its value tells (a guess, right unless a run was given
        # the very warm-up its preset and epochs imply)
        cfg = cfg.replace(warmup_epochs=config.fitted_warmup(cfg.preset, epochs))
    cfg = cfg.replace(epochs=epochs)
    if "save_every_epochs" not in explicit:  # a save an epoch cost 2-3 x the budget's epochs on small data
        cfg = cfg.replace(save_every_epochs=max(1, epochs // 10))
    t0 = time.perf_counter()
    result = train_and_evaluate(cfg, explicit | {"epochs"}, ds=ds)
    t_train = time.perf_counter() - t0
    if result["exit"] or result["step"] < result["total"]:  # stopped by a signal: no evaluation of a half-trained
        print("stopped before the end: not evaluated; the same command resumes it", flush=True)  # model
        return result["exit"] or 128 + 15  # SIGTERM (train.py's own exit for it is 0)
    metrics = evaluate(cfg.workdir, cache_dir=cfg.cache_dir)
    from jaxae.pages import knn_key, knn_neighbours
    pca_name = next(n for n in metrics["models"] if n.startswith("PCA-"))  # fewer components with few images
    ae, pca = metrics["models"]["autoencoder"], metrics["models"][pca_name]
    knn = knn_key(ae)
    trained = (f"resumed, trained {t_train / 60:.1f} min more" if resume else
               f"trained in {t_train / 60:.1f} min (budget {args.minutes:g} min)")
    print(f"\nquality run: {_epochs(epochs)}, {trained}; this command took {(time.perf_counter() - t_start) / 60:.1f} "
          f"min with {'the' if resume else 'calibration and'} evaluation; test MSE {ae['test_mse']:.5f} = "
          f"{ae['test_mse'] / pca['test_mse']:.3f} x {pca_name} ({pca['test_mse']:.5f}); PSNR {ae['test_psnr']:.2f} "
          f"dB vs {pca['test_psnr']:.2f} dB; {knn_neighbours(knn)}-NN {ae[knn]:.1%} vs {pca[knn]:.1%}")
    print(f"this schedule again, without a calibration: python train.py {shlex.join(train_flags(cfg, explicit))} "
          f"--workdir NEW_WORKDIR")
    return 0


def train_flags(cfg, explicit=frozenset()) -> list[str]:
    """train.py's flags for the run `cfg` describes: its preset, then each run setting that differs from the
    preset's, and the other settings given (`explicit`) or chosen here (--save-every-epochs) that differ from it
    (argparse took abbreviations such as --min 15, and a resumed run's settings are its saved ones)."""
    from jaxae.config import PRESETS, Config
    preset = Config(**PRESETS[cfg.preset])
    out = ["--preset", cfg.preset] if cfg.preset != "default" else []
    others = sorted((set(explicit) | {"save_every_epochs"}) - set(Config.RUN_FIELDS)
                    - {"epochs", "workdir", "fresh", "max_steps", "preset"})
    for name in [n for n in Config.RUN_FIELDS if n != "epochs"] + others:
        value, flag = getattr(cfg, name), "--" + name.replace("_", "-")
        if value != getattr(preset, name):
            out += ([flag] if value else ["--no-" + flag[2:]]) if isinstance(value, bool) else [flag, str(value)]
    return out + ["--epochs", str(cfg.epochs)]


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' * (n != 1)}"


if __name__ == "__main__":
    from jaxae.cli import run_main
    run_main(main)
