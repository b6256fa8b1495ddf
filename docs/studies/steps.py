"""What the step studies share (docs/studies/s26-encode/ab.py and rss.py, s27-wino/quick.py, s29-encoder/speed.py,
s32-heads/step.py, s37-replay/step.py): one device's train state, a synthetic epoch of CIFAR-shaped uint8 images
and its order, set up as train.py sets them up, the step traced under each value of a jaxae.models flag, and an
interleaved timing of steps. Import it after jaxae.hostmem's settings, which must
come before JAX starts."""
import time

import jax
import numpy as np
from jax.sharding import Mesh

from jaxae import train as T
from jaxae.config import with_preset


def step_inputs(preset: str, batch: int, spe: int = 4, **overrides):
    """(cfg, state, images, perm, passes per step): `spe` steps of `batch` images for the preset's model (with
    `overrides` of its settings), to give jaxae.train._PassSteps(cfg, 1, spe, batch, passes)."""
    cfg = with_preset({"preset": preset, "batch_size": batch, **overrides})
    mesh = Mesh(np.array(jax.local_devices()[:1]), (T.AXIS,))
    state = T.place_state(T.create_train_state(cfg, (32, 32, 3), 1000, spe), mesh)
    images = T.put_dataset(np.random.default_rng(0).integers(0, 256, (spe * batch, 32, 32, 3), np.uint8), mesh)
    perm = T.device_epoch_order(cfg.seed, 0, spe * batch, spe, batch, mesh)
    return cfg, state, images, perm, batch // T.microbatch_size(cfg, batch)


def time_interleaved(runs: dict, steps: int, rounds: int) -> dict:
    """Seconds per step of each of `runs` ({name: [fn, state, images, perm]}, fn a jaxae.train._PassSteps, each with
    a state of its own: the update donates it), `steps` steps of one at a time, in turn, for `rounds` rounds, the
    order reversed every other round. Each run's state is carried on in `runs`. {name: [seconds, one per round]}"""
    times = {k: [] for k in runs}
    for r in range(rounds):
        for k in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            fn, state, images, perm = runs[k][:4]
            t0 = time.perf_counter()
            for _ in range(steps):
                state, m = fn(state, images, perm)
            jax.block_until_ready(m)
            times[k].append((time.perf_counter() - t0) / steps)
            runs[k][1] = state
    return times


def flag_runs(flag: str, values, preset: str, batch: int, spe: int = 4, **overrides) -> dict:
    """{value: [fn, state, images, perm, the second step's loss]}: the preset's step (a jaxae.train._PassSteps of
    `spe` steps, `batch` images) traced with jaxae.models' module-level `flag` set to each of `values` (the flags are
    read while tracing, so each program keeps its way), after two warm-up steps; the flag is restored after. For
    time_interleaved."""
    from jaxae import models
    before, runs = getattr(models, flag), {}
    try:
        for value in values:
            setattr(models, flag, value)
            cfg, state, images, perm, n_micro = step_inputs(preset, batch, spe, **overrides)
            fn = T._PassSteps(cfg, 1, spe, batch, n_micro)
            for _ in range(2):
                state, m = fn(state, images, perm)
            jax.block_until_ready(m)
            runs[value] = [fn, state, images, perm, float(m["loss"][0])]
    finally:
        setattr(models, flag, before)
    return runs
