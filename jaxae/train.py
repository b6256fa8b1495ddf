"""create_train_state, train_step, the epoch loop and train_and_evaluate."""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import shlex
import signal
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxae import checkpoints, corruption, hostmem, losses, monitor
from jaxae.config import PRESETS, Config, UsageError, config_path, load_config
from jaxae.data import Dataset, inside_folder, load, local_path
from jaxae.metrics import mean_image_mse, pad_to_multiple, reconstruction_error
from jaxae.models import model_from_config

AXIS = "batch"


class TrainState(train_state.TrainState):
    key: jax.Array  # root PRNG key: step keys are fold_in(key, step), so any step can be replayed


# ------------------------------------------------------------------------------------ state

def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return n_train // batch_size


def steps_to_run(cfg: Config, spe: int) -> int:
    """The step a run's command ends at: its epochs' last, or --max-steps before that."""
    return min(cfg.max_steps, cfg.epochs * spe) if cfg.max_steps else cfg.epochs * spe


def learning_rate_schedule(cfg: Config, total_steps: int, spe: int) -> optax.Schedule:
    """Linear warm-up over --warmup-epochs (at most all but the run's last step), then cosine decay to 1 % of the
    peak at the run's end."""
    warmup = int(min(cfg.warmup_epochs * spe, max(total_steps - 1, 0)))  # int(1e308 * spe) was an OverflowError
    return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, warmup, max(total_steps, warmup + 1),
                                              end_value=cfg.learning_rate * 0.01)


def make_optimizer(cfg: Config, total_steps: int, spe: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg, total_steps, spe)
    if cfg.optimizer == "adamw":
        opt = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    else:
        opt = optax.adam(schedule)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt) if cfg.grad_clip > 0 else opt


def init_params(model, key: jax.Array, image_shape):
    """model.init's parameters for images of image_shape, compiled as one program.

    On CPU that program is compiled at optimisation level 1 rather than XLA's default 3. It is mostly the
    threefry random bits of each parameter array (54 in the old default model), which level 3 took 10-25 s to
    optimise on the 2-core box, the tiny test models longest; level 1 takes about 4 s and gives the same
    parameters bit for bit (docs/performance.md, twelfth session; tests/test_train.py). The program runs
    once, in 0.25 s either way. A level set in XLA_FLAGS is left to rule, and so is an enclosing trace
    (train_state_to_restore's eval_shape), inside which a jit may not carry compiler options.
    """
    x = jnp.zeros((1, *image_shape), jnp.float32)
    level_set = "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", "")
    traced = isinstance(x, jax.core.Tracer)  # made here, so a tracer under any enclosing trace, whatever the key
    on_cpu = jax.default_backend() == "cpu"
    options = {"xla_backend_optimization_level": 1} if on_cpu and not level_set and not traced else None
    return jax.jit(model.init, compiler_options=options)(key, x)["params"]


def check_settings(cfg: Config, explicit: set[str], ds: Dataset | None = None) -> int:
    """The checks of a run's settings that Config.validate cannot make alone: against the flags given, and,
    with `ds`, against the data. Returns the steps per epoch (0 without `ds`). bench/quality.py makes them
    before its calibration, train_and_evaluate before its first write."""
    # flags given that do nothing beside the run's other settings, which config.json would save as the run's
    idle = [
        ("corruption", cfg.noise == 0, f"--corruption {cfg.corruption} does nothing with --noise 0: give its strength, "
                                       f"e.g. --noise {0.2 if cfg.corruption == 'gaussian' else 0.25}"),
        ("noise_levels", cfg.noise == 0, f"--noise-levels {cfg.noise_levels} does nothing with --noise 0: give the "
                                         f"largest strength, e.g. --noise 0.2"),
        ("weight_decay", cfg.optimizer != "adamw", f"--weight-decay does nothing with --optimizer {cfg.optimizer} (it "
                                                   f"is adamw's decoupled weight decay): drop it, or use --optimizer "
                                                   f"adamw"),
        ("norm", cfg.blocks == 0, f"--norm {cfg.norm} does nothing with --blocks 0 (it normalises inside the residual "
                                  f"blocks): drop it, or add residual blocks, e.g. --blocks 1"),
        ("dataset", cfg.data != "tfds", f"--dataset {cfg.dataset} names a tensorflow-datasets dataset, for --data "
                                        f"tfds; a local --data is read as it is: drop --dataset"),
    ]
    for name, does_nothing, message in idle:
        if name in explicit and does_nothing:
            raise UsageError(message)
    if inside_folder(cfg.workdir, cfg.data):
        raise UsageError(f"--workdir {cfg.workdir} is inside --data {cfg.data}: the run's files would change the "
                         f"dataset (under train/ or test/ they are read as images of a class of their own; anywhere "
                         f"in it they make each run decode the images again); give a workdir outside it")
    if ds is None:
        return 0
    spe = steps_per_epoch(ds.train_images.shape[0], cfg.batch_size)
    if spe == 0:
        raise UsageError(f"--batch-size {cfg.batch_size} is larger than the training set "
                         f"({ds.train_images.shape[0]} images)")
    if cfg.shift >= min(ds.image_shape[:2]):
        raise UsageError(f"--shift {cfg.shift} must be smaller than the images' height and width "
                         f"({ds.image_shape[0]}x{ds.image_shape[1]}); CIFAR-10's usual is 2-4")
    return spe


def check_devices(cfg: Config) -> tuple[int, int]:
    """The batch splits evenly over the devices, and into passes (--microbatch): (the per-device batch, the
    examples per pass). It starts JAX's backend: call it where the process may (after jaxae.hostmem's settings;
    not in bench/sweep.py's driver of workers)."""
    local_batch = _device_layout(cfg.batch_size)[1]
    return local_batch, microbatch_size(cfg, local_batch)


def _one_cpu_device() -> str:
    """How this process was given several CPU devices, undone: an environment variable or an XLA flag."""
    flag = next((f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" in f), "")
    return (f"drop {flag.split('=')[0]} from XLA_FLAGS" if flag else "unset JAX_NUM_CPU_DEVICES"
            if os.environ.get("JAX_NUM_CPU_DEVICES") else "no jax_num_cpu_devices setting")


# Training images/s on the 2-core CPU box, one device, 32x32x3, of the models of the default preset and of --preset
# long (the default model until the thirty-third session), each as the low and high ends that cpu_schedule_note's
# estimate spans:
# - the default model at batch 1024: 1,680 over a whole train.py run of the default schedule alone on the box (48:43,
#   28.85 s per epoch, median, test pass and checkpoint included; thirty-fifth session, seed 2), 1,340 over the
#   thirty-third session's (37.3 s per epoch; the box's speed varies between days), about 860 in its epochs that
#   shared the box with a test run;
# - the old one: 240 on an idle box (207 s per epoch, test pass and checkpoint included, in a 35-minute train.py run
#   of the twenty-sixth session; 231-239 in bench/throughput.py), 80 over a whole 15-epoch run that shared the box
#   (thirteenth session; docs/performance.md).
CPU_IMG_S = {"default": (600, 1680), "long": (80, 240)}


def cpu_schedule_note(cfg: Config, image_shape, images_left: int) -> str | None:
    """A note for a CPU run of the default model, or of --preset long's, that may take more than an hour at the
    2-core box's speed (at the low end of CPU_IMG_S): the default schedule is for GPUs and TPUs, and `--preset quick`
    trains the default model on a CPU's schedule. None for any other run."""
    preset = next((p for p in CPU_IMG_S if cfg.model_settings() == Config(**PRESETS[p]).model_settings()), None)
    if preset is None:
        return None
    low, high = CPU_IMG_S[preset]
    slow, fast = (images_left * float(np.prod(image_shape)) / 3072 / rate / 3600 for rate in (low, high))
    if slow < 1:
        return None
    model = "the default model" if preset == "default" else "the model of --preset long (the old default model)"
    return (f"note: this run trains {model} on {images_left:,} images: about {fast:.1f}-{slow:.1f} h on a 2-core CPU "
            f"({low}-{high} images/s), less with more cores. The default schedule is for GPUs and TPUs. "
            f"`--preset quick` trains the default model on a CPU's schedule (20 epochs at batch 128): about 13 "
            f"minutes on 2 cores, test MSE 0.0264-0.0266 on CIFAR-10, against 0.0261 for the default schedule "
            f"(49-63 minutes on 2 cores) and 0.0281-0.0282 for --preset long's (on an H200)")


def create_train_state(cfg: Config, image_shape, total_steps: int, spe: int) -> TrainState:
    """Fresh parameters and optimiser state from cfg.seed."""
    model = model_from_config(cfg, image_shape)
    root = jax.random.PRNGKey(cfg.seed)
    init_key, train_key = jax.random.split(root)
    params = init_params(model, init_key, image_shape)
    return TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer(cfg, total_steps, spe),
                             key=train_key)


def train_state_to_restore(cfg: Config, image_shape, total_steps: int, spe: int) -> TrainState:
    """Zeros in the structure of create_train_state's state, to restore a checkpoint into: restore overwrites
    every leaf, so tracing create_train_state (its checks included) is enough and model.init is not compiled."""
    abstract = jax.eval_shape(lambda: create_train_state(cfg, image_shape, total_steps, spe))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)


def place_state(state: TrainState, mesh: Mesh) -> TrainState:
    """The state placed as the pmapped steps return it: replicated over `mesh`, its step an int32 array.

    Handed a fresh state (arrays on one device, the step a Python int), the steps' first call compiled them
    and the second compiled them again for the state the first returned: 7 s of the tiny model's first
    steps on the 2-core box, and 14-18 s of the old default model's. The result may share buffers with `state`,
    which the steps donate: pass a state that is not used afterwards (or a copy).
    """
    return jax.device_put(state.replace(step=jnp.asarray(state.step, jnp.int32)), NamedSharding(mesh, P()))


# ------------------------------------------------------------------------------------- step

def prepare_batch(key: jax.Array, images_u8: jax.Array, cfg: Config, axis_name: str | None = None,
                  offset=0, local_batch: int | None = None):
    """uint8 batch -> (corrupted input, clean target) in [0, 1], per-example keys from the step key.

    Example i of the *global* batch always gets key split(key, global_batch)[i], whatever the number of
    devices, so a run on 2 devices sees the same noise and flips as a run on 1. images_u8 may also be examples
    offset .. of a device's batch of local_batch (a microbatch; offset may be traced): they get the same keys.
    """
    x = _unit_range(images_u8)
    local = x.shape[0] if local_batch is None else local_batch
    if axis_name is None:
        n_dev, dev = 1, 0
    else:
        n_dev, dev = lax.psum(1, axis_name), lax.axis_index(axis_name)
    keys = jax.random.split(key, local * n_dev)
    keys = lax.dynamic_slice_in_dim(keys, dev * local + offset, x.shape[0])
    flip_keys, noise_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
    if cfg.flip:
        flip = jax.vmap(lambda k: jax.random.bernoulli(k))(flip_keys)
        x = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
    if cfg.shift:  # keys folded from the flip keys: runs without --shift keep their random streams
        x = random_shift(jax.vmap(lambda k: jax.random.fold_in(k, 1))(flip_keys), x, cfg.shift)
    return corruption.corrupt(cfg.corruption, noise_keys, x, cfg.noise, cfg.noise_levels), x


def random_shift(keys: jax.Array, x: jax.Array, n: int) -> jax.Array:
    """Translate each image of x [B, H, W, C] by its own uniform offset in [-n, n] along each axis, filling the
    uncovered border by reflection (n < H, W); the shape is kept."""
    padded = jnp.pad(x, ((0, 0), (n, n), (n, n), (0, 0)), mode="reflect")
    offsets = jax.vmap(lambda k: jax.random.randint(k, (2,), 0, 2 * n + 1))(keys)
    return jax.vmap(lambda im, o: lax.dynamic_slice(im, (o[0], o[1], 0), x.shape[1:]))(padded, offsets)


def _unit_range(images_u8: jax.Array) -> jax.Array:
    if images_u8.dtype != jnp.uint8:  # floats in [0, 1] divided by 255 again would train towards black
        raise TypeError(f"jaxae's steps take uint8 images (0-255) and scale them themselves, not "
                        f"{images_u8.dtype}: pass (x * 255).round().astype(np.uint8) for floats in [0, 1]")
    if images_u8.ndim != 4:  # N x H x W grayscale: "not enough values to unpack" in the model before
        raise ValueError(f"jaxae's steps take a batch of images [N, H, W, C], not an array of shape "
                         f"{tuple(images_u8.shape)}: grayscale images need a channel axis (images[..., None])")
    return images_u8.astype(jnp.float32) / 255.0


def train_step(state: TrainState, batch: jax.Array, key: jax.Array, cfg: Config,
               axis_name: str | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on a uint8 batch: (state, batch, key) -> (state, metrics). Pure; gradients and
    metrics are averaged over `axis_name` when it is given (inside a pmap over that axis, as train.py does)."""
    inputs, targets = prepare_batch(key, batch, cfg, axis_name)
    n_micro = inputs.shape[0] // microbatch_size(cfg, inputs.shape[0])
    if n_micro == 1:
        loss_fn = losses.LOSSES[cfg.loss]
        loss, grads = jax.value_and_grad(lambda p: loss_fn(state.apply_fn({"params": p}, inputs), targets))(
            state.params)
        return _apply_gradients(state, (loss, grads), 1, axis_name)
    size = inputs.shape[0] // n_micro

    def microbatch(start):
        return lax.dynamic_slice_in_dim(inputs, start, size), lax.dynamic_slice_in_dim(targets, start, size)

    acc = _grad_passes(state.params, _zero_sums(state.params), microbatch, 0, n_micro, size, cfg, state.apply_fn)
    return _apply_gradients(state, acc, n_micro, axis_name)


def _zero_sums(params):
    """The (loss, gradients) sums of a step's microbatch passes before the first."""
    return jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params)


def _grad_passes(params, acc, microbatch: Callable, first, count: int, size: int, cfg: Config, apply_fn):
    """acc, the (loss, gradients) sums, plus those of the microbatch passes first .. first + count - 1 of a batch
    in passes of `size` examples; microbatch(start) gives a pass's (input, target), examples start .. start +
    size - 1 of the batch; `first` may be traced. A pass starts once the pass PASSES_IN_FLIGHT before it is done."""
    loss_fn = losses.LOSSES[cfg.loss]
    grad_fn = jax.value_and_grad(lambda p, x, y: loss_fn(apply_fn({"params": p}, x), y))
    accs = []
    for i in range(count):
        x, y = microbatch((first + i) * size)
        if i >= PASSES_IN_FLIGHT:  # pass i starts once pass i - 2 is done: two at a time, not all
            x = _after(accs[i - PASSES_IN_FLIGHT], x)
        acc = jax.tree.map(jnp.add, acc, grad_fn(params, x, y))
        accs.append(acc)
    return acc


def _apply_gradients(state: TrainState, acc, n_micro: int, axis_name: str | None):
    """The update from the sums of n_micro equal microbatches' mean losses and gradients: their mean is the
    batch's (averaged over `axis_name` too, when given)."""
    loss, grads = jax.tree.map(lambda a: a / n_micro, acc)
    if axis_name is not None:
        grads, loss = lax.pmean((grads, loss), axis_name)
    return state.apply_gradients(grads=grads), {"loss": loss}


def eval_step(state: TrainState, batch: jax.Array) -> dict[str, jax.Array]:
    """Reconstruction errors of a clean uint8 batch: {"mse", "mae"}, means over pixels and channels in [0, 1]."""
    x = _unit_range(batch)
    err = state.apply_fn({"params": state.params}, x, method="reconstruct") - x
    return {"mse": jnp.mean(err * err), "mae": jnp.mean(jnp.abs(err))}


# Microbatch passes of a step that may run at once. Left alone, XLA interleaved all the unrolled passes op by
# op, so every pass's activations were live together: the old default model's CPU step held 1,025 MB of temp
# buffers at 4 passes of 64, as much as one pass of 256. Two at a time: 605 MB, and as fast. One at a time:
# 328 MB (187 MB at 8 passes of 32), but 12-30 % slower on 2 cores, which then lose the overlap of two
# passes' ops (docs/performance.md, ninth session).
PASSES_IN_FLIGHT = 2


def _after(tree, x: jax.Array) -> jax.Array:
    """x, unchanged, but computed only once every array of `tree` is: x + 0 * (the largest of their maxima).

    Orders the microbatch passes (PASSES_IN_FLIGHT). XLA:CPU drops lax.optimization_barrier before it
    schedules, and a lax.scan over the passes ran ~20x slower (the scan trap), so a data dependence it cannot
    remove does it: a pass's input reads the gradients summed so far. XLA does not fold 0 * y for floats (y
    may be inf or NaN), and x + 0 * y is x for finite y. A maximum needs the whole sum: with one element of each
    array instead, XLA took the element from the summands, put the sums off to the step's end and held every
    pass's gradients until then (the old default model at batch 1024, 16 passes: 918 MB of temporaries, 483 MB with
    the maxima, as fast; twentieth session).
    """
    dep = jnp.max(jnp.stack([jnp.max(leaf).astype(x.dtype) for leaf in jax.tree.leaves(tree)]))
    return x + 0.0 * dep


def _step_key(key, step) -> jax.Array:
    """Step `step`'s key, from the state's root key."""
    return jax.random.fold_in(key, step)


def _step_rows(perm, step, spe: int) -> jax.Array:
    """A device's rows of the on-device dataset for step `step`: the epoch's order (perm: [spe, local_batch]) at
    step % spe."""
    return perm[step % spe]


def _train_steps(state, images, perm, cfg: Config, n_steps: int, spe: int, axis_name: str | None = AXIS):
    """n_steps consecutive steps, each on its batch of the epoch's order (_step_rows)."""
    def one(state, _):
        batch = images[_step_rows(perm, state.step, spe)]
        return train_step(state, batch, _step_key(state.key, state.step), cfg, axis_name)

    if n_steps == 1:  # no scan: on XLA:CPU a scan of whole steps ran > 5x slower than separate calls
        state, metrics = one(state, None)
        return state, jax.tree.map(lambda m: m[None], metrics)
    return lax.scan(one, state, None, length=n_steps)


def make_p_train_steps(cfg: Config, n_steps: int, spe: int) -> Callable:
    """pmap of `n_steps` train steps over all devices: unreplicated state, the dataset as put_dataset
    made it and the per-device batch order in; state and metrics out. On CPU, a step of more microbatch passes
    than PASSES_IN_FLIGHT runs as a few programs (_PassSteps), the same update as train_step's."""
    if jax.default_backend() == "cpu":
        local_batch = cfg.batch_size // jax.device_count()
        n_micro = local_batch // microbatch_size(cfg, local_batch)
        if n_micro > PASSES_IN_FLIGHT:
            return _PassSteps(cfg, n_steps, spe, local_batch, n_micro)
    fn = functools.partial(_train_steps, cfg=cfg, n_steps=n_steps, spe=spe)
    return jax.pmap(fn, axis_name=AXIS, in_axes=(None, 0, 0), out_axes=(None, None), donate_argnums=(0,))


class _PassSteps:
    """train_step on CPU as one program per PASSES_IN_FLIGHT microbatch passes, called from Python, rather than
    one program of all the passes unrolled: the passes in turn, then the update, each pmapped.

    The old default model's step at batch 1024 (16 passes of 64) compiled in 21 s instead of 47.5 in the bench and
    trained as fast (186 and 182 img/s; docs/performance.md, twenty-fourth session). The small programs are what
    let the 8x8 convs take Winograd too (models._WINOGRAD_MIN_SIZE): compiled 16 times over in one program, their
    transforms had cost 300 MB of RSS. A lax.scan over the passes is no substitute: it ran ~20x slower (_after).

    Only the loss and gradient sums pass between the programs, donated from call to call; the update hands them
    back zeroed for the next step. Each pass program gathers and prepares its own microbatches (the same noise and
    flips as prepare_batch gives the whole batch), and nothing is copied from the host at a call. With the pass
    offset copied from the host at each call, or the batch prepared by a program of its own, a pass's 521 MB block
    of temporaries now and then went to a second place in the heap: RSS rose by 0.5 GB, to 2.03 GB in a train.py run.
    """

    def __init__(self, cfg: Config, n_steps: int, spe: int, local_batch: int, n_micro: int):
        self.n_steps = n_steps
        group = PASSES_IN_FLIGHT
        self.groups = [(first, min(group, n_micro - first)) for first in range(0, n_micro, group)]
        size = local_batch // n_micro

        def passes(params, acc, images, perm, key, step, first, count, apply_fn):
            rows, key = _step_rows(perm, step, spe), _step_key(key, step)

            def microbatch(start):
                u8 = images[lax.dynamic_slice_in_dim(rows, start, size)]
                return prepare_batch(key, u8, cfg, AXIS, offset=start, local_batch=local_batch)

            return _grad_passes(params, acc, microbatch, first, count, size, cfg, apply_fn)

        def update(state, acc):
            state, metrics = _apply_gradients(state, acc, n_micro, AXIS)
            return state, jax.tree.map(lambda m: m[None], metrics), jax.tree.map(jnp.zeros_like, acc)

        # first is an argument (one program for all groups of `count` passes); count and the model, static
        self._passes = jax.pmap(passes, axis_name=AXIS, in_axes=(None, 0, 0, 0, None, None, None, None, None),
                                static_broadcasted_argnums=(7, 8), donate_argnums=(1,))
        self._update = jax.pmap(update, axis_name=AXIS, in_axes=(None, 0), out_axes=(None, None, 0),
                                donate_argnums=(0, 1))
        # zero sums, once per device (perm, mapped, gives the axis its size)
        self._zeros = jax.pmap(lambda params, perm: _zero_sums(params), axis_name=AXIS, in_axes=(None, 0))
        # On the devices once: a host scalar was copied to the device at every call, just before the pass's block of
        # temporaries was allocated, and the block now and then went to a second place in the heap (0.5 GB more RSS).
        replicated = NamedSharding(Mesh(np.array(jax.local_devices()), (AXIS,)), P())
        self._firsts = {first: jax.device_put(np.int32(first), replicated) for first, _ in self.groups}
        self._acc = None  # the zeroed sums the last step's update returned

    def __call__(self, state, images, perm):
        metrics = []
        for _ in range(self.n_steps):
            acc, self._acc = self._acc, None  # donated below: a step cut short leaves none behind
            if acc is None:
                acc = self._zeros(state.params, perm)
            for first, count in self.groups:
                acc = self._passes(state.params, acc, images, perm, state.key, state.step, self._firsts[first],
                                   count, state.apply_fn)
            state, m, self._acc = self._update(state, acc)
            metrics.append(m)
        if len(metrics) == 1:
            return state, metrics[0]
        return state, jax.tree.map(lambda *m: jnp.concatenate(m), *metrics)

    def lowered(self, state, images, perm) -> list[tuple[Any, int]]:
        """The step's programs lowered for these arguments, each with its runs per call: the passes (once per group
        of their count), the update (once a step)."""
        acc = jax.eval_shape(self._zeros, state.params, perm)
        counts = collections.Counter(count for _, count in self.groups)
        passes = [(self._passes.lower(state.params, acc, images, perm, state.key, state.step, np.int32(0), count,
                                      state.apply_fn), runs * self.n_steps) for count, runs in sorted(counts.items())]
        return [*passes, (self._update.lower(state, acc), self.n_steps)]


def compiled_steps(p_train_steps: Callable, state, images, perm) -> list[tuple[Any, int]]:
    """make_p_train_steps's programs compiled anew (not run) for these arguments, each with its runs per call:
    one program, or _PassSteps's."""
    lowered = (p_train_steps.lowered(state, images, perm) if isinstance(p_train_steps, _PassSteps)
               else [(p_train_steps.lower(state, images, perm), 1)])
    return [(program.compile(), runs) for program, runs in lowered]


def put_dataset(images_u8: np.ndarray, mesh: Mesh) -> jax.Array:
    """The training set on every local device once, as [n_devices, N, H, W, C] split on the device axis.

    make_p_train_steps maps over that axis (in_axes 0), so each device reads its own copy in place. Handed
    to pmap unmapped (in_axes None) the one array was broadcast to the devices again on every call: on 2 CPU
    devices that made a CIFAR-10 step 5x slower (752 vs 153 ms at batch 128, docs/performance.md).
    """
    n_dev = mesh.devices.size
    return jax.device_put(np.broadcast_to(images_u8, (n_dev, *images_u8.shape)), NamedSharding(mesh, P(AXIS)))


def cpu_step_temporaries(cfg: Config, height: int = 32, width: int = 32) -> int:
    """An estimate of the bytes of XLA temporaries of one training step of cfg's model on one CPU device, for
    images of height x width (CIFAR-10's by default: the images are not loaded yet when it is needed).

    Per microbatch pass in flight, in full-resolution activations of `cfg.width` channels: 4.2, plus 4.0 per
    residual block, 5.2 for the conv output head, and 1.0 + 1.8 per block for a smooth activation (GELU, SiLU)
    over ReLU; and for K encoder heads, 0.1 (K - 1)^2, plus 4.0 (K - 1) with the conv head, whose pass over the
    K proposals keeps its full-resolution outputs for the chosen code's replay (thirty-seventh session, fitted to
    1-8 heads: docs/studies/s37-replay/cost.py; 0.25 (K - 1) and 0.6 with the conv head before had put 8 heads'
    77-80 MB at 50 MB, under LARGE_STEP). Fitted to XLA's memory_analysis of 18 steps (twenty-second session,
    docs/performance.md): within 15 % of it for the presets and their variants at batch 128-1024, and on the right
    side of LARGE_STEP for all 18; it over-estimates a batch of one pass (quick at batch 64: 17.6 MB for 10.5). The
    dtype does not enter: on CPU a bfloat16 step needs as much (the quick preset's: 35.8 MB). It decides the malloc
    arenas (keep_host_memory), so it is read before JAX starts: one device, and microbatch_size's CPU choice of
    pass."""
    micro = cfg.microbatch or _cpu_microbatch(cfg.batch_size)
    in_flight = max(1, min(PASSES_IN_FLIGHT, cfg.batch_size // micro))
    per_pass = 4.2 + 4.0 * cfg.blocks + (5.2 if cfg.head == "conv" else 0.0)
    if cfg.activation != "relu":
        per_pass += 1.0 + 1.8 * cfg.blocks
    per_pass += 0.1 * (cfg.encoder_heads - 1) ** 2 + (cfg.encoder_heads - 1) * (4.0 if cfg.head == "conv" else 0.0)
    return int(micro * height * width * cfg.width * 4 * in_flight * per_pass)


# A step's temporaries above this get one malloc arena (keep_host_memory): 3/4 of a thread arena's heap, the size
# past which glibc maps a block on its own, as a margin for the estimate
LARGE_STEP = hostmem.THREAD_HEAP * 3 // 4


def large_cpu_steps(cfg: Config) -> bool:
    """Whether cfg's model gets one malloc arena on CPU (hostmem.keep_freed_memory's large_steps)."""
    return cpu_step_temporaries(cfg) > LARGE_STEP


def keep_host_memory(cfg: Config, explicit: set[str] = frozenset()) -> bool:
    """train.py's host allocator settings for the model this command will train (jaxae.hostmem): freed memory
    kept, in one malloc arena where its CPU step's temporaries come near a thread arena's heap or exceed it (the
    long preset's model), else two (the default model: one costs it 14-21 %); single-device CPU programs on the calling
    thread. Call it before anything starts JAX or another thread: a later call cannot lower the arena count
    that the threads have taken. Returns whether one arena was asked for."""
    large = large_cpu_steps(_model_config(cfg, explicit))
    hostmem.keep_freed_memory(large_steps=large)
    hostmem.run_cpu_programs_inline()
    return large


def _model_config(cfg: Config, explicit: set[str]) -> Config:
    """The config whose model this command trains, as checkpoints.resolve_workdir will decide it: the workdir's
    saved one when the command sets no run setting there (a resume, or a run that starts over), else cfg. Reads
    the JSON only: JAX is not started yet."""
    if not os.path.exists(config_path(cfg.workdir)) or explicit & (set(Config.RUN_FIELDS) | {"preset"}):
        return cfg
    try:
        return load_config(cfg.workdir)
    except UsageError:  # resolve_workdir says what is wrong with it
        return cfg


def _cpu_microbatch(local_batch: int) -> int:
    """microbatch_size's choice on CPU: the largest divisor of the batch from 32 to 64 (none: the whole batch)."""
    if local_batch <= 64:
        return local_batch
    return max((d for d in range(32, 65) if local_batch % d == 0), default=local_batch)


def microbatch_size(cfg: Config, local_batch: int) -> int:
    """Examples per forward/backward pass on one device: cfg.microbatch (which must divide the per-device
    batch), else on CPU the largest divisor of it from 32 to 64 (none: the whole batch) and elsewhere the whole
    batch.

    Measured on the 2-core box (docs/performance.md): the old default model's step at batch 256 ran 1.3-1.7x
    faster as 4 passes of 64 (a 32x32x64 activation is 67 MB at 256, 17 MB at 64); the quick model (batch
    128, width 16) ran the same either way. On accelerators one pass keeps the device busiest.
    """
    if cfg.microbatch:
        if local_batch % cfg.microbatch:
            raise UsageError(f"--microbatch {cfg.microbatch} does not divide the per-device batch ({local_batch}): "
                             f"use a divisor of it, or 0 for the default")
        return cfg.microbatch
    return local_batch if jax.default_backend() != "cpu" else _cpu_microbatch(local_batch)


def test_pass_batch() -> int:
    """Test images per pass of the evaluation after each epoch: 64 on CPU, 500 on accelerators.

    Measured on the 2-core box (twenty-first session, docs/performance.md), with train.py's allocator settings: the
    old default model's pass over the 10k test images took 18.9 s at 500 and 18.3 s at 64, with 250 MB of XLA
    temporaries against 32 MB; the quick model's 1.17 s either way. A 2-epoch old-default-model run peaked at 2.08 GB
    of RSS at 500, during its second test pass, and at 1.73 GB at 64; a 40-minute one at 2.08 GB at 500, about
    0.3 GB over its steps' at each epoch end.
    """
    return 64 if jax.default_backend() == "cpu" else 500


def put_test_set(images_u8: np.ndarray, mesh: Mesh) -> tuple[jax.Array, jax.Array, int]:
    """The test images for the pass after each epoch: padded to whole batches of test_pass_batch(), with the mask
    of the real ones, replicated like the parameters that come out of the pmap (jit refuses arguments on
    different devices); and that batch size."""
    batch = test_pass_batch()
    test_x, test_mask = pad_to_multiple(images_u8, batch)
    test_x, test_mask = jax.device_put((test_x, test_mask), NamedSharding(mesh, P()))
    return test_x, test_mask, batch


def default_steps_per_call(cfg: Config, spe: int) -> int:
    if cfg.steps_per_call:
        return min(cfg.steps_per_call, spe)
    # Measured (docs/performance.md): on GPU the per-step dispatch is half the step time at B=256, so a
    # whole epoch in one call pays; on XLA:CPU a scan of steps was several times slower.
    return 1 if jax.default_backend() == "cpu" else spe


# ------------------------------------------------------------------------------------- loop

def _device_layout(batch_size: int) -> tuple[int, int]:
    n_dev = jax.device_count()
    if batch_size % n_dev:
        raise UsageError(f"--batch-size {batch_size} does not split evenly over {n_dev} devices: use a multiple "
                         f"of {n_dev}")
    return n_dev, batch_size // n_dev


def epoch_permutation(seed: int, epoch: int, n: int, spe: int, batch_size: int) -> np.ndarray:
    """The global order of epoch `epoch`: [spe, batch_size] indices, a function of seed and epoch only."""
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(n)[: spe * batch_size].reshape(spe, batch_size).astype(np.int32)


def local_permutation(perm: np.ndarray, n_dev: int) -> np.ndarray:
    """[spe, B] global order -> [local devices, spe, B / n_dev]: this process's devices' columns."""
    spe, b = perm.shape
    per_dev = perm.reshape(spe, n_dev, b // n_dev).transpose(1, 0, 2)
    ids = [d.id for d in jax.devices()]
    local = [ids.index(d.id) for d in jax.local_devices()]
    return np.ascontiguousarray(per_dev[local])


def device_epoch_order(seed: int, epoch: int, n: int, spe: int, batch_size: int, mesh: Mesh) -> jax.Array:
    """Epoch `epoch`'s order as this process's devices' share, [local devices, spe, B / n_dev], on them:
    the `perm` argument of the pmapped steps (uploaded once per epoch)."""
    order = local_permutation(epoch_permutation(seed, epoch, n, spe, batch_size), jax.device_count())
    return jax.device_put(order, NamedSharding(mesh, P(AXIS)))


def train_and_evaluate(cfg: Config, explicit: set[str] = frozenset(), ds: Dataset | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the run in cfg.workdir; returns the final metrics. Exit status in result['exit']."""
    # CPU: no page faults on each step's buffers (quick model 1.8x faster), from the main arena, which keeps them
    keep_host_memory(cfg, explicit)  # (as train.py and bench/quality.py have; no-op once JAX runs)
    # what each compile left free: 0.3 GB of the old default model's peak
    with hostmem.release_after_compiles(), checkpoints.WorkdirLock() as lock:
        return _train_and_evaluate(cfg, explicit, ds, progress, lock)


def _train_and_evaluate(cfg: Config, explicit: set[str], ds: Dataset | None, progress: bool,
                        lock: checkpoints.WorkdirLock) -> dict[str, Any]:
    started = time.perf_counter()
    if os.path.isdir(cfg.workdir) and jax.process_count() == 1:
        lock.acquire(cfg.workdir)  # first: another run there refuses this one before its notes, decode and init
    cfg = cfg.replace(data=local_path(cfg.data))  # saved absolute: evaluate.py and a resume work from any folder
    cfg, resuming = checkpoints.resolve_workdir(cfg.validate(), set(explicit))
    check_settings(cfg, explicit)
    # set aside below, after the checks: --fresh over an earlier run, or a new run over an earlier one's results
    earlier_run = not resuming and bool(checkpoints.earlier_results(cfg.workdir))
    local_batch, micro = check_devices(cfg)
    checkpoints.check_workdir(cfg.workdir)  # before the data: a typo in --workdir should not cost a decode
    gone = resuming and ds is None and "data" not in explicit and checkpoints.missing_data(cfg.workdir, cfg.data)
    if gone:  # "--data D: no such file or folder" said nothing of the run
        raise UsageError(f"{gone}: pass --data PATH to where it is now, or to a copy of it")
    ds = ds if ds is not None else load(cfg.data, cfg.dataset, cfg.cache_dir)
    n_train = ds.train_images.shape[0]
    spe = check_settings(cfg, explicit, ds)
    if resuming:  # training images added or removed at the run's --data, or other data at a moved one's path
        count = checkpoints.trained_on(cfg.workdir)[1]
        if count is not None:
            differs = count != n_train and (f"holds a run trained on {count:,} training images, and --data "
                                             f"{cfg.data} has {n_train:,}")
        else:  # a run saved before the count was: its steps per epoch, as metrics.jsonl recorded them
            was = monitor.recorded_steps_per_epoch(os.path.join(cfg.workdir, "metrics.jsonl"))
            differs = bool(was) and was != spe and (f"holds a run of {was} steps per epoch, and --data {cfg.data} "
                                                    f"gives {spe} now ({n_train} training images at batch "
                                                    f"{cfg.batch_size})")
        if differs:
            raise UsageError(f"{cfg.workdir} {differs}: these are not the training images the run started with. "
                             f"Give --data those to resume it, or start over with --fresh")
    total = steps_to_run(cfg, spe)
    k = default_steps_per_call(cfg, spe)

    # the model's own checks, too; a resumed run restores every leaf, so it needs only the structure
    state = (train_state_to_restore if resuming else create_train_state)(cfg, ds.image_shape, cfg.epochs * spe, spe)
    lock.acquire(cfg.workdir)  # before the first write (a new workdir; every process of a multi-process run)
    if earlier_run:
        checkpoints.start_over(cfg)
    mngr = checkpoints.manager(cfg.workdir, cfg.keep)
    if resuming:
        state = checkpoints.restore(mngr, state, set_aside=True, built_for=ds.described(cfg.data))
        if jax.process_index() == 0:  # a run resumed on its moved dataset: config.json names the new path
            checkpoints.record_data_path(cfg)
        if int(state.step) >= total:
            checkpoints.finish(mngr)
            if int(state.step) >= cfg.epochs * spe:
                ends = f"{cfg.epochs} epochs end" if cfg.epochs != 1 else "1 epoch ends"
                why = f"its {ends}; `python evaluate.py --workdir {shlex.quote(cfg.workdir)}` shows it"
            else:
                why = f"--max-steps {cfg.max_steps} ends it; pass a larger --max-steps, or none, to train on"
            monitor.log(f"nothing to train: the run is at step {int(state.step)}, where {why}")
            return {"exit": 0, "step": int(state.step), "total": total, "state": state,
                    "seconds": time.perf_counter() - started}
        monitor.log(f"resuming {cfg.workdir} from step {int(state.step)} (epoch {int(state.step) // spe + 1})")
    elif jax.process_index() == 0:
        checkpoints.save_config(cfg, ds.image_shape, n_train)
    monitor.log("config: " + json.dumps(dataclasses.asdict(cfg), sort_keys=True))
    monitor.log(f"data: {n_train} train / {ds.test_images.shape[0]} test images of {ds.image_shape}, "
                f"{len(ds.class_names)} classes; {jax.device_count()} {jax.default_backend()} device(s), "
                f"{spe} steps/epoch, {k} step(s) per call, {local_batch // micro} pass(es) of {micro} per step and "
                f"device, {total} steps in all")

    if jax.default_backend() == "cpu" and jax.local_device_count() > 1 and jax.process_index() == 0:
        print(f"note: with {jax.local_device_count()} CPU devices in one process XLA:CPU can hang at the gradient "
              f"all-reduce when other programs compete for the cores (docs/performance.md); XLA then aborts "
              f"after 40 s and `{checkpoints.resume_command(cfg)}` resumes from the last checkpoint. One device "
              f"({_one_cpu_device()}) is the safe choice, and as fast for the quick preset", file=sys.stderr)
    if jax.default_backend() == "cpu" and jax.process_index() == 0:
        note = cpu_schedule_note(cfg, ds.image_shape, (total - int(state.step)) * cfg.batch_size)
        if note:
            print(note, file=sys.stderr)
    metrics_file = os.path.join(cfg.workdir, "metrics.jsonl")
    monitor.truncate_metrics(metrics_file, int(state.step))
    baseline = mean_image_mse(ds.train_images, ds.test_images)
    best = monitor.best_test_mse(metrics_file, int(state.step))  # a resumed run's earlier epochs count too
    monitor.log(f"baseline: the mean training image has test mse {baseline:.5f} (a network that ignores its "
                f"input does no better)")
    writer = monitor.tensorboard(cfg.workdir)

    mesh = Mesh(np.array(jax.local_devices()), (AXIS,))
    state = place_state(state, mesh)  # the step compiles once, not again at its second call
    images = put_dataset(ds.train_images, mesh)  # once: every batch is a gather on device
    test_x, test_mask, test_batch = put_test_set(ds.test_images, mesh)
    ds = None  # the host copies (180 MB for CIFAR-10) are freed, unless the caller holds them (train.py does not)
    fns: dict[int, Callable] = {}
    result: dict[str, Any] = {"exit": 0}
    epoch_ends: list[float] = []  # seconds since `started` at each epoch end of this process
    step = start = int(state.step)
    bar = None
    cut = False  # by a second Ctrl-C, before a save
    with monitor.Stop() as stop:
        try:
            while step < total and stop.signum is None:
                epoch = step // spe
                perm = device_epoch_order(cfg.seed, epoch, n_train, spe, cfg.batch_size, mesh)
                end = min((epoch + 1) * spe, total)
                bar = monitor.progress_bar(progress, epoch, cfg.epochs, step - epoch * spe, end - epoch * spe)
                pending, t_last, n_last = [], time.perf_counter(), step
                losses_epoch = []
                while step < end and stop.signum is None:
                    n = min(k, end - step)
                    first_call = n not in fns
                    if first_call:
                        fns[n] = make_p_train_steps(cfg, n, spe)
                    state, m = fns[n](state, images, perm)
                    if first_call and jax.default_backend() == "cpu":
                        # what the compile and the first run left free: in some runs the second malloc arena held
                        # 600 MB more of it through the whole run (docs/performance.md, twentieth session)
                        jax.block_until_ready(m)
                        hostmem.release_free_memory()
                    pending.append((step, m["loss"]))
                    step += n
                    if step - n_last >= cfg.log_every or step == end:
                        fetched = monitor.check_finite(pending, cfg, mngr)
                        losses_epoch += fetched
                        now = time.perf_counter()
                        rate = (step - n_last) * cfg.batch_size / (now - t_last)
                        if bar is not None:
                            bar.update(step - n_last)
                            bar.set_postfix(loss=f"{np.mean(fetched):.4f}", img_s=f"{rate:,.0f}")
                        pending, t_last, n_last = [], now, step
                if pending:
                    losses_epoch += monitor.check_finite(pending, cfg, mngr)
                if bar is not None:
                    bar.close()
                # stopping: what is left (an epoch's end that the signal came at, then the save) is the save's
                stop.saving = stop.signum is not None
                epoch_done = step == end and (step % spe == 0 or step == total)
                if epoch_done:
                    # the steps this process ran of the epoch: all of it, or a piece of an epoch that --max-steps
                    # or a signal cut, or that a resumed run finished (the train loss averages those alone)
                    first = max(epoch * spe, start)
                    record = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses_epoch)),
                              **reconstruction_error(state, test_x, test_mask, test_batch), "time": time.time(),
                              "steps_per_epoch": spe,  # where a cut epoch ends, for the figures
                              "train_steps": step - first}
                    monitor.write_metrics(metrics_file, writer, record)
                    part = (f" (steps {first - epoch * spe + 1}-{step - epoch * spe} of its {spe})"
                            if step - first < spe else "")
                    monitor.log(f"epoch {epoch + 1}/{cfg.epochs}{part}  train {cfg.loss} {record['train_loss']:.5f}  "
                                f"test mse {record['test_mse']:.5f}  test mae {record['test_mae']:.5f}")
                    result.update(record)
                    epoch_ends.append(time.perf_counter() - started)
                    best = min(best, record["test_mse"])
                    # before the save, so that the last checkpoint is kept
                    monitor.check_collapse(epoch + 1, record["test_mse"], best, baseline, cfg, mngr)
                    if (epoch + 1) % cfg.save_every_epochs == 0 or step == total:
                        monitor.save_finite(mngr, state, cfg)
                        if jax.default_backend() == "cpu":
                            # Let the async save finish first: its buffers, allocated while the next epoch's
                            # first steps ran, split the step's freed block of temporaries, and the heap grew
                            # by a second one (old default model: 1.66 -> 2.51 GB; docs/performance.md, tenth
                            # session). The wait: ~0.3 s for the old default model's state; a CPU epoch: minutes.
                            checkpoints.wait(mngr)
                    hostmem.release_free_memory()  # what the test pass and the save left free, once an epoch
            if step < total:  # stopped by a signal: keep what was done
                stop.saving = True  # through the wait in finish below
                monitor.save_finite(mngr, state, cfg)
                result["exit"] = 0 if stop.signum == signal.SIGTERM else 130
            else:
                monitor.save_finite(mngr, state, cfg)
        except KeyboardInterrupt:  # a second Ctrl-C before the save, or one more after the one told to wait
            cut = True
        finally:
            if bar is not None:
                bar.close()
            # Even when the run stops with an error, the save in flight (a good checkpoint) is completed.
            try:
                checkpoints.finish(mngr)
            except KeyboardInterrupt:  # ... in that wait
                cut = True
    if writer is not None:
        writer.close()
    if cut:  # said after the wait, so that a save it completed counts
        last = checkpoints.latest_step(cfg.workdir)
        raise KeyboardInterrupt("Ctrl-C stopped the run at once, without saving its steps since the last checkpoint"
                                + (f", step {last}: `{checkpoints.resume_command(cfg)}` resumes from it"
                                   if last is not None else ": none was saved, and the same command starts over"))
    if step < total:  # once the save is complete
        monitor.log(f"stopped by {signal.Signals(stop.signum).name} at step {step}: checkpoint saved; "
                    f"`{checkpoints.resume_command(cfg)}` resumes it")
    result["step"] = step
    result["start"] = start  # a resume's first step (a checkpoint that cannot be read is set aside for an earlier)
    result["signal"] = stop.signum  # the signal that stopped it (or came during its last epoch), else None
    result["total"] = total  # step < total: stopped by a signal before the end (exit 0 for SIGTERM)
    result["run_steps"] = cfg.epochs * spe  # more than total: --max-steps ends this command first
    result["seconds"] = time.perf_counter() - started
    if epoch_ends:  # start-up (data, compiles, a restore) shows in the first; the steady pace in the rest
        result["first_epoch_seconds"] = epoch_ends[0]
        if len(epoch_ends) > 1:
            result["seconds_per_epoch"] = float(np.median(np.diff(epoch_ends)))
    result["state"] = state
    return result
