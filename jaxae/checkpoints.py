"""Orbax checkpoints of the TrainState in WORKDIR/checkpoints, and the run's saved config."""

from __future__ import annotations

import os
import sys
import time

import jax
import orbax.checkpoint as ocp

from jaxae.config import Config, UsageError, config_path


def checkpoint_dir(workdir: str) -> str:
    return os.path.abspath(os.path.join(workdir, "checkpoints"))


def manager(workdir: str, keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
    """An orbax CheckpointManager: async, atomic saves (tmp dir + commit), the `keep` most recent kept."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, enable_async_checkpointing=True)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def has_checkpoints(workdir: str) -> bool:
    d = checkpoint_dir(workdir)
    return os.path.isdir(d) and any(name.isdigit() for name in os.listdir(d))


def _as_tree(state) -> dict:
    # What a checkpoint holds: everything needed to continue bit for bit. The data position is the step:
    # epoch = step // steps_per_epoch and the epoch's order comes from the seed.
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "key": state.key}


def save(mngr: ocp.CheckpointManager, state, force: bool = True) -> None:
    """Start an async save of `state` at its step (call mngr.wait_until_finished() before exiting)."""
    step = int(jax.device_get(state.step))
    if step in mngr.all_steps():
        return
    mngr.save(step, args=ocp.args.StandardSave(_as_tree(state)), force=force)


def restore(mngr: ocp.CheckpointManager, state, step: int | None = None):
    """Restore into the structure of `state` (a freshly created TrainState): the latest complete step, or
    `step`. A checkpoint that cannot be read is reported and the previous one tried; none is deleted."""
    steps = sorted(mngr.all_steps(), reverse=True)
    if step is not None:
        if step not in steps:
            raise UsageError(f"no checkpoint at step {step} in {mngr.directory}; saved steps: "
                             f"{', '.join(map(str, sorted(steps))) or 'none'}")
        steps = [step]
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _as_tree(state))
    for s in steps:
        try:
            tree = mngr.restore(s, args=ocp.args.StandardRestore(target))
        except Exception as e:  # a truncated or corrupt step: say so, keep it on disk, fall back
            print(f"warning: checkpoint step {s} in {mngr.directory} cannot be read ({type(e).__name__}: "
                  f"{str(e)[:200]}); trying the previous one. It is left on disk for inspection.",
                  file=sys.stderr)
            if step is not None:
                raise UsageError(f"checkpoint step {s} cannot be read; pick another --step") from None
            continue
        return state.replace(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"],
                             key=tree["key"])
    raise UsageError(f"no readable checkpoint in {mngr.directory}")


def save_config(cfg: Config) -> None:
    """Write WORKDIR/config.json atomically."""
    os.makedirs(cfg.workdir, exist_ok=True)
    path = config_path(cfg.workdir)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(cfg.to_json() + "\n")
    os.replace(tmp, path)


def move_aside(workdir: str) -> str:
    """--fresh: move old checkpoints and metrics to a dated folder instead of deleting them."""
    dest = os.path.join(workdir, "previous-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(dest)
    for name in ("checkpoints", "metrics.jsonl", "config.json", "tensorboard", "loss_curve.png"):
        src = os.path.join(workdir, name)
        if os.path.exists(src):
            os.replace(src, os.path.join(dest, name))
    return dest
