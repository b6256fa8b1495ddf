"""Orbax checkpoints of the TrainState in WORKDIR/checkpoints, the run's saved config, and whether a run in a workdir
resumes or starts over."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import gc
import json
import logging
import os
import shlex
import socket
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxae.config import PRESETS, Config, UsageError, config_path, load_config
from jaxae.data import local_path


def checkpoint_dir(workdir: str) -> str:
    return os.path.abspath(os.path.join(workdir, "checkpoints"))


_HELD: set[str] = set()  # the workdirs (real paths) whose lock this process holds


class WorkdirLock:
    """One training at a time in a workdir: WORKDIR/.lock, held (flock) from before the first write to the end of
    the run. A second `train.py` in the same workdir (a requeued job started while the old one still ends, a
    double submit) mixed silently with the first: its config.json over the first's, its saves skipped, the
    first's metrics.jsonl rows dropped, and both exit 0. Process 0 takes it and tells the others whether it got
    it (each raises the same error). On a file system without locks, training goes on unlocked."""

    def __init__(self):
        self.fh = None
        self.path = ""
        self.made = False  # whether .lock was made by this lock (a refused run removes it again)

    def acquire(self, workdir: str) -> None:
        """Take the lock (again: nothing), or raise UsageError naming the process that holds it. Every process
        of a multi-process run must call it at the same point."""
        if self.fh is not None:
            return
        got, holder = self._try(workdir) if jax.process_index() == 0 else (True, "")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            got = bool(multihost_utils.broadcast_one_to_all(np.int32(got)))
        if not got:
            raise UsageError(f"{workdir} is being trained by another process ({holder or 'see process 0'}): two "
                             f"trainings in one workdir would mix their checkpoints and metrics; wait for it to end "
                             f"(or stop it), or pass another --workdir")

    def _try(self, workdir: str) -> tuple[bool, str]:
        path = lock_path(workdir)
        for _ in range(3):
            try:
                os.makedirs(workdir, exist_ok=True)
                made = not os.path.exists(path)
                fh = open(path, "a+")
            except OSError:  # not writable: check_workdir says so in one line
                return True, ""
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                fh.seek(0)
                holder = fh.read().strip()
                fh.close()
                return e.errno not in (errno.EWOULDBLOCK, errno.EACCES), holder  # else ENOLCK and the like
            # a refused run removes the .lock it made (while holding it): a file opened just before that is no
            # longer the one at the path, and a second run would lock a new one beside it
            try:
                if os.path.samestat(os.stat(path), os.fstat(fh.fileno())):
                    break
            except OSError:  # gone
                pass
            fh.close()
        else:
            return True, ""  # removed under us three times: go on unlocked rather than refuse
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        self.fh, self.path, self.made = fh, os.path.realpath(workdir), made
        _HELD.add(self.path)
        return True, ""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if self.fh is not None:
            if self.made and exc_type is not None and issubclass(exc_type, UsageError):
                try:  # a refused run leaves nothing behind (it may have been refused before its first write)
                    os.remove(lock_path(self.path))
                except OSError:
                    pass
            self.fh.close()  # releases the lock
            self.fh = None
            _HELD.discard(self.path)


def lock_path(workdir: str) -> str:
    return os.path.join(workdir, ".lock")


def training_now(workdir: str) -> bool:
    """Whether another process's train.py holds `workdir`'s lock now (WorkdirLock). Not this process's own (a
    resume reading its checkpoints): a second open and flock of the file would also, on NFS, where flock is
    emulated with fcntl locks, turn the held lock shared and then drop it."""
    if os.path.realpath(workdir) in _HELD:
        return False
    try:
        with open(lock_path(workdir)) as fh:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EACCES)
    return False


def manager(workdir: str, keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
    """An orbax CheckpointManager: async, atomic saves (tmp dir + commit), the `keep` most recent kept."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, enable_async_checkpointing=True)
    _quiet_full_disk()
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def _quiet_full_disk() -> None:
    """A save onto a full disk fails in orbax's and tensorstore's threads, and each logged it: 530 lines of
    tracebacks (a 1 MB tmpfs, tiny model) above our one error line (_save_failed). Drop those log records,
    and the "Event loop is closed" tracebacks of the writes abandoned after it (_quiet_late_reads)."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if _not_full_disk not in logger.filters:
            logger.addFilter(_not_full_disk)
    _quiet_late_reads()


def _not_full_disk(record: logging.LogRecord) -> bool:
    """False (drop it) for a log record about a write that found no space left on the device."""
    error = record.exc_info[1] if record.exc_info else None
    return not disk_full(error) and "No space left on device" not in record.getMessage()


def check_workdir(workdir: str) -> None:
    """Prove that `workdir` takes a file, before any data is loaded or anything trained. The workdir itself, when
    made for the proof, is removed again (best effort; not its parents, which a run beside this one may be
    using): a run refused later (a bad batch size, say) leaves no empty workdir. Not in multi-process runs, where
    one process would remove it under another's proof."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UsageError(f"--workdir {workdir} is a file: give a folder (new, or a run's to resume it)")
    made = not os.path.isdir(workdir) and jax.process_count() == 1
    try:
        os.makedirs(workdir, exist_ok=True)
        # the workdir, and the folders and file an earlier run left that this one writes into: a read-only
        # checkpoints/ was 354 lines of orbax tracebacks (the probe of the workdir alone passed)
        for folder in [workdir] + [os.path.join(workdir, n) for n in ("checkpoints", "tensorboard")]:
            if folder == workdir or os.path.isdir(folder):
                # host, pid and a random part: processes of hosts that share the folder may have one pid
                probe = os.path.join(folder, f".write-test-{socket.gethostname()[:32]}-{os.getpid()}-"
                                             f"{os.urandom(4).hex()}")
                try:
                    with open(probe, "w") as fh:
                        fh.write("ok")
                finally:  # a full disk fails at close: remove the probe all the same
                    if os.path.exists(probe):
                        os.remove(probe)
        metrics = os.path.join(workdir, "metrics.jsonl")
        if os.path.isfile(metrics):
            open(metrics, "a").close()  # appends nothing
    except OSError as e:  # root ignores permission bits, so this catches files-in-the-way and full disks too
        fix = ("free some space or pick another --workdir" if disk_full(e)
               else "pick a folder you can write to with --workdir")
        raise UsageError(f"--workdir {workdir} is not writable ({_os_error(e)}): {fix}") from None
    if made:
        try:
            os.rmdir(workdir)  # "run/" and "run" alike
        except OSError:  # something else wrote there meanwhile: leave it
            pass


def has_checkpoints(workdir: str) -> bool:
    return latest_step(workdir) is not None


def latest_step(workdir: str) -> int | None:
    """The step of the newest checkpoint folder in workdir (an unfinished save is not one), or None."""
    d = checkpoint_dir(workdir)
    steps = [int(name) for name in os.listdir(d) if name.isdigit()] if os.path.isdir(d) else []
    return max(steps, default=None)


def _as_tree(state) -> dict:
    # What a checkpoint holds: everything needed to continue bit for bit. The data position is the step:
    # epoch = step // steps_per_epoch and the epoch's order comes from the seed.
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "key": state.key}


def _global(tree):
    """Multi-process runs: pmap hands every process its own local copy of the (identical) state, while orbax
    expects global arrays; make each leaf a global array replicated over all devices, so that orbax writes
    it once (from the primary process) and the checkpoint restores on any number of processes."""
    if jax.process_count() == 1:
        return tree
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("all",)), P())

    def to_global(x):
        x = x if isinstance(x, jax.Array) else jnp.asarray(x)
        local = x.addressable_shards[0].data
        return jax.make_array_from_single_device_arrays(
            x.shape, sharding, [jax.device_put(local, d) for d in jax.local_devices()])
    return jax.tree.map(to_global, tree)


def _local(tree):
    """The inverse of _global: this process's own copy of each leaf."""
    if jax.process_count() == 1:
        return tree
    return jax.tree.map(lambda x: x.addressable_shards[0].data, tree)


# The checksum a checkpoint stores: a uint32 sum of every 32-bit word of the tree times an odd, position-dependent
# weight, so that a checkpoint whose bytes were changed on disk (orbax stores no checksum of its own) almost surely
# disagrees. 8- and 16-bit leaves (bfloat16, int8) have their bits widened to 32. Two implementations give the same
# value (tests/test_checkpoints.py): _checksum on the device, checksum_host in NumPy.
_WEIGHT = 2654435761
_LEAF_OFFSET = 40503


def _weights(xp, n: int, i: int):
    return (xp.arange(n, dtype=xp.uint32) * xp.uint32(_WEIGHT) + xp.uint32(i * _LEAF_OFFSET)) | xp.uint32(1)


def _checksum_of(xp, tree):
    """The checksum in the array module `xp`: jax.numpy (under jit, on the device) or NumPy (on the host). The
    per-leaf sums are added as one array, which wraps at 2**32 in both (NumPy warns on its scalars' overflow)."""
    sums = []
    for i, leaf in enumerate(jax.tree.leaves(tree)):
        leaf = xp.asarray(leaf)
        words = leaf.view(xp.dtype(f"uint{8 * leaf.dtype.itemsize}")).astype(xp.uint32, copy=False).ravel()
        sums.append(xp.sum(words * _weights(xp, words.size, i), dtype=xp.uint32))
    return xp.sum(xp.stack(sums), dtype=xp.uint32)


@jax.jit
def _checksum(tree) -> jax.Array:
    """The checksum, computed where the tree's arrays are (see above)."""
    return _checksum_of(jnp, tree)


def checksum_host(tree) -> int:
    """The checksum, computed by NumPy from host copies of the tree's arrays.

    No program to compile: for the old default model's state (166 arrays, 26 M words) it took 20-45 ms on the 2-core
    box, where compiling _checksum took about 2 s (4.5-5.1 s in the fourteenth session; 12.3 s on an H100 in the
    fifteenth). Every restore paid that compile, since a restored state is placed otherwise than the training's,
    and so did every training process at its first save.
    """
    return int(_checksum_of(np, tree))


def _stored_checksum(tree) -> jax.Array:
    """The checksum a save stores: NumPy's where the state is in host memory already (the CPU backend; the
    arrays are read in place), the device's elsewhere (no copy of the whole state to the host at every save)."""
    leaves = jax.tree.leaves(tree)
    if all(d.platform == "cpu" for leaf in leaves if isinstance(leaf, jax.Array) for d in leaf.devices()):
        return jnp.asarray(checksum_host(tree), jnp.uint32)
    return _checksum(tree)


def disk_full(e: BaseException) -> bool:
    """Whether `e` (or an exception it wraps, as orbax's async save does) is 'no space left on device': an OSError,
    or TensorStore's ValueError "RESOURCE_EXHAUSTED: Error writing local file ...: No space left on device
    [os_error_code='28']" (a real full disk; a ValueError got 480 lines of tracebacks)."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _save_failed(mngr: ocp.CheckpointManager, e: BaseException) -> UsageError | None:
    if not disk_full(e):
        return None
    try:  # let the saves already in flight complete: the last good checkpoint may be one of them
        mngr.wait_until_finished()
    except Exception:
        pass
    done = [s for s in mngr.all_steps() if os.path.isdir(os.path.join(mngr.directory, str(s)))]
    last = f"step {max(done)} is the last complete checkpoint and is intact" if done else "no checkpoint was saved"
    return UsageError(f"the disk holding {mngr.directory} is full (no space left on device) while saving a "
                      f"checkpoint; {last}. Free some space (or pass --keep 1, or --workdir on a bigger disk) "
                      f"and resume the run (the same command without --fresh, or `python train.py --workdir WORKDIR`)")


def save(mngr: ocp.CheckpointManager, state, force: bool = True) -> None:
    """Start an async save of `state` at its step (call `finish(mngr)` before exiting)."""
    step = int(jax.device_get(state.step))
    if step in mngr.all_steps():
        return
    tree = _as_tree(state)
    try:
        mngr.save(step, args=ocp.args.StandardSave(_global({**tree, "checksum": _stored_checksum(tree)})), force=force)
    except Exception as e:  # the sync part of the save, or the previous async one, failed
        raise _save_failed(mngr, e) or e


def wait(mngr: ocp.CheckpointManager) -> None:
    """Wait for the async saves in flight; the manager stays open for more."""
    try:
        mngr.wait_until_finished()
    except Exception as e:
        raise _save_failed(mngr, e) or e


def finish(mngr: ocp.CheckpointManager) -> None:
    """Wait for the async saves in flight (a run must not exit with its last checkpoint half written)."""
    try:
        wait(mngr)
    finally:
        mngr.close()


def _unfinished_saves(mngr: ocp.CheckpointManager) -> list[str]:
    d = str(mngr.directory)
    return sorted(n for n in os.listdir(d) if ".orbax-checkpoint-tmp" in n) if os.path.isdir(d) else []


def restore(mngr: ocp.CheckpointManager, state, step: int | None = None, set_aside: bool = False,
            built_for: str = "", _retries: int = 3):
    """Restore into the structure of `state` (a freshly created TrainState): the latest complete step, or
    `step`. A checkpoint that cannot be read or fails its checksum is reported and the previous one tried;
    none is deleted. With `set_aside` (a resuming run) an unreadable step is moved to
    WORKDIR/unreadable-checkpoints/, so that the run can save that step again.

    A step whose arrays have other shapes than `state`'s is not damaged: `state`'s model does not match the run's
    (its images were of another size than those of the data given now, say). That is a UsageError, saying which
    array differs and, from `built_for`, what `state` was built for; nothing is moved."""
    tmp = _unfinished_saves(mngr)
    live = training_now(os.path.dirname(str(mngr.directory)))  # evaluate.py beside a running train.py
    # orbax writes into <step>.orbax-checkpoint-tmp-* and renames when complete: a kill leaves these
    if tmp and not live:
        print(f"note: ignoring {len(tmp)} unfinished checkpoint save(s) in {mngr.directory} left by an "
              f"interrupted run ({tmp[0]}{', ...' if len(tmp) > 1 else ''}); delete them to free space",
              file=sys.stderr)
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
        raise UsageError(f"no checkpoint in {mngr.directory}: train first with `python train.py --workdir "
                         f"{shlex.quote(os.path.dirname(str(mngr.directory)))}`")
    if step is not None:
        if step not in steps:
            raise UsageError(f"no checkpoint at step {step} in {mngr.directory}; saved steps: "
                             f"{', '.join(map(str, sorted(steps)))}")
        steps = [step]
    tree = _global(_as_tree(state))
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    # the checksum's shape and placement: a scalar, placed as the step
    sharding = getattr(tree["step"], "sharding", None) or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target["checksum"] = jax.ShapeDtypeStruct((), jnp.uint32, sharding=sharding)
    _quiet_late_reads()
    for s in steps:
        mismatch = _shape_mismatch(mngr, s, target)
        if mismatch:
            trained = trained_image_shape(os.path.dirname(str(mngr.directory)))
            was = (f"The run was trained on images of {trained}." if trained else
                   "Was the run trained on images of another size?")
            raise UsageError(f"checkpoint step {s} in {mngr.directory} holds a model of other shapes than this "
                             f"one{' (' + built_for + ')' if built_for else ''}: {mismatch}. {was} It needs the "
                             f"data it was trained on; its checkpoints are left as they are")
        got, error = _read(mngr, s, target)
        if error and _retries and (live or not os.path.isdir(os.path.join(str(mngr.directory), str(s)))):
            # gone while read, or being removed: the training running there keeps only its --keep newest
            # (evaluate.py during a --keep 1 run said "no readable checkpoint ... start over with --fresh"); read its
            # newest again
            _drop_abandoned_reads()
            mngr.reload()
            return restore(mngr, state, step, set_aside, built_for, _retries - 1)
        if error:  # a truncated, garbled or foreign step: say so, keep it on disk, fall back
            _drop_abandoned_reads()
            where = (_set_aside(mngr, s) if set_aside else "left on disk for inspection"
                     + ("; trying the previous one" if step is None else ""))  # a --step asked for is not replaced
            print(f"warning: checkpoint step {s} in {mngr.directory} cannot be read ({error}); {where}.",
                  file=sys.stderr)
            if step is not None:
                raise UsageError(f"checkpoint step {s} cannot be read; pick another --step")
            continue
        if s != steps[0]:
            print(f"warning: restored the previous good checkpoint, step {s}", file=sys.stderr)
        return state.replace(step=got["step"], params=got["params"], opt_state=got["opt_state"], key=got["key"])
    if live:  # not a damaged run: its checkpoints changed while they were read
        raise UsageError(f"no checkpoint in {mngr.directory} could be read while the training there saves and "
                         f"removes them (see the warnings above; none was deleted): run evaluate.py again, or when "
                         f"the training ends")
    raise UsageError(f"no readable checkpoint in {mngr.directory} (see the warnings above; none was deleted): "
                     f"start over with --fresh or another --workdir")


def _shape_mismatch(mngr: ocp.CheckpointManager, step: int, target) -> str:
    """The first array whose stored shape differs from `target`'s, as "PATH is SHAPE there, SHAPE here"; "" when
    all agree, or when the step's metadata cannot be read (the restore itself then reports the step). Arrays
    are matched by their path (orbax stores an optimiser's NamedTuples as dicts), not by their order."""
    def key(path):
        return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax warns that the step's own metadata file is not in the item's folder
    try:
        with ocp.StandardCheckpointer() as ck:
            meta = ck.metadata(os.path.join(str(mngr.directory), str(step), "default"))
        stored = {key(p): (p, tuple(m.shape)) for p, m in
                  jax.tree_util.tree_leaves_with_path(getattr(meta, "item_metadata", meta))}
    except Exception:
        return ""
    finally:
        absl.setLevel(level)
    leaves = sorted(jax.tree_util.tree_leaves_with_path(target), key=lambda pw: key(pw[0])[0] != "params")
    for path, want in leaves:  # the parameters first: the clearest names for what differs
        path_there, shape = stored.get(key(path), (None, None))
        here = tuple(getattr(want, "shape", np.shape(want)))  # a Python scalar (a step) has no .shape
        if shape is not None and shape != here:
            return f"{jax.tree_util.keystr(path_there)} is {shape} there, {here} here"
    return ""


def _read(mngr: ocp.CheckpointManager, step: int, target) -> tuple[dict | None, str]:
    """(the restored tree, "") or (None, what was wrong with the step)."""
    try:
        got = _local(mngr.restore(step, args=ocp.args.StandardRestore(target)))
        stored, actual = int(jax.device_get(got.pop("checksum"))), checksum_host(got)
        if stored != actual:
            raise ValueError(f"checksum mismatch: stored {int(stored):#x}, contents {int(actual):#x}")
        return got, ""
    except Exception as e:
        return None, f"{type(e).__name__}: {str(e)[:200]}"


def _quiet_late_reads() -> None:
    """When one array of a step cannot be read, orbax gives up on the step and closes its asyncio loop while
    tensorstore is still reading the others. Each of those reads then reported its end too: a "RuntimeError:
    Event loop is closed" traceback from tensorstore's threads (54 for the tiny test model's step, every time),
    and now and then asyncio's "Task (or Future) exception was never retrieved" with the read's own error.
    Our one warning line already says the step is unreadable: drop both, in this process, from the first
    restore on. Every other unraisable exception and asyncio error is printed as before."""
    previous = sys.unraisablehook
    if getattr(previous, "jaxae_quiet_late_reads", False):
        return

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            return
        previous(unraisable)

    hook.jaxae_quiet_late_reads = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_unretrieved_reads)


def _unretrieved_reads(record: logging.LogRecord) -> bool:
    """False (drop it) for asyncio's report of an abandoned read of the unreadable step: a Task whose coroutine is
    orbax's async_deserialize, or any Task or Future holding tensorstore's read error. Those broke the two-line
    test 1 run in 20 on the 2-core box (sixteenth session), and 1 in 5 once a metadata read came before each
    restore; with this filter, 30 runs in 30 passed."""
    message = record.getMessage()
    if not message.startswith(("Task exception was never retrieved", "Future exception was never retrieved")):
        return True
    error = record.exc_info[1] if record.exc_info else None
    return "async_deserialize" not in message and "tensorstore_spec" not in f"{message} {error}"


def _drop_abandoned_reads() -> None:
    """A failed orbax restore leaves the reads of its other arrays as coroutines that were never awaited;
    collected later, each printed a 'coroutine ... was never awaited' RuntimeWarning after our own clear
    warning. Collect them now, quietly: they hold nothing but the unread step."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
        gc.collect()


def _set_aside(mngr: ocp.CheckpointManager, step: int) -> str:
    dest = os.path.join(os.path.dirname(str(mngr.directory)), "unreadable-checkpoints",
                        f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    os.replace(os.path.join(str(mngr.directory), str(step)), dest)
    mngr.reload()
    return f"moved it to {dest} (not deleted); trying the previous one"


def save_config(cfg: Config, image_shape=None, train_images: int | None = None) -> None:
    """Write WORKDIR/config.json atomically: the Config, and what the run's data was (not flags: Config.from_dict
    skips them): the shape of its images, which a restore on other data names (trained_image_shape), and the number
    of its training images, which a resume compares (train.py; since the thirty-sixth session)."""
    os.makedirs(cfg.workdir, exist_ok=True)
    path = config_path(cfg.workdir)
    tmp = path + ".tmp"
    # --fresh is what one command did, not a setting of the run: saved true, it read (in config.json and in
    # evaluate.py's metrics.json) as if every resume had started over
    saved = {**dataclasses.asdict(cfg.replace(fresh=False)),
             **({"image_shape": list(image_shape)} if image_shape else {}),
             **({"train_images": int(train_images)} if train_images is not None else {})}
    with open(tmp, "w") as fh:
        fh.write(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def trained_image_shape(workdir: str) -> str:
    """"HxWxC" of the images the run in `workdir` was trained on, from its config.json; "" when not saved (a run
    of before the eighteenth session) or unreadable."""
    shape = trained_on(workdir)[0]
    return "x".join(map(str, shape)) if shape else ""


# What a run leaves in its workdir (evaluate.py's eval/, and eval-* folders from --out and from the evaluations
# it moved aside, included): what --fresh moves aside.
RUN_FILES = ("checkpoints", "metrics.jsonl", "config.json", "tensorboard", "loss_curve.png", "unreadable-checkpoints")


def run_files(workdir: str) -> list[str]:
    """The names in `workdir` that an earlier run left there."""
    if not os.path.isdir(workdir):
        return []
    # evaluations: evaluate.py's own eval/ and eval-*, and any --out in the workdir (index.html and metrics.json):
    # one named otherwise stayed beside a --fresh run, and still said it evaluated the workdir
    evals = sorted(n for n in os.listdir(workdir) if n == "eval" or n.startswith("eval-")
                   or n not in RUN_FILES and is_evaluation(os.path.join(workdir, n)))
    return [n for n in RUN_FILES if os.path.exists(os.path.join(workdir, n))] + evals


def is_evaluation(path: str) -> bool:
    """Whether `path` is a folder evaluate.py wrote (it holds index.html and metrics.json)."""
    return os.path.isdir(path) and {"index.html", "metrics.json"} <= set(os.listdir(path))


def earlier_results(workdir: str) -> list[str]:
    """What a new run in `workdir` would overwrite that is worth keeping: checkpoints, a metrics.jsonl with rows,
    evaluations, figures, checkpoints set aside. A config.json, an empty metrics.jsonl and TensorBoard files
    alone are what a run stopped before its first epoch left: they are rewritten."""
    worth = []
    for name in run_files(workdir):
        path = os.path.join(workdir, name)
        if name == "checkpoints":
            if has_checkpoints(workdir):
                worth.append(name)
        elif name == "metrics.jsonl":
            if os.path.getsize(path) > 0:
                worth.append(name)
        elif name not in ("config.json", "tensorboard"):
            worth.append(name)
    return worth


def move_aside(workdir: str) -> str:
    """--fresh: move everything an earlier run left (run_files) to a dated folder instead of deleting it. A move
    that fails (a read-only folder) is undone, and is one UsageError (a PermissionError traceback, with an empty
    previous-* folder left behind)."""
    base = dest = os.path.join(workdir, "previous-" + time.strftime("%Y%m%d-%H%M%S"))
    n = 1
    while os.path.exists(dest):  # a second --fresh within the same second
        dest, n = f"{base}-{n}", n + 1
    moved, made = [], False
    try:
        os.makedirs(dest)
        made = True
        for name in run_files(workdir):
            os.replace(os.path.join(workdir, name), os.path.join(dest, name))
            moved.append(name)
    except OSError as e:
        stuck = []
        for name in moved:  # undo, as far as it goes
            try:
                os.replace(os.path.join(dest, name), os.path.join(workdir, name))
            except OSError:
                stuck.append(name)
        if made and not stuck:
            try:
                os.rmdir(dest)
            except OSError:
                pass
        where = (f"{', '.join(stuck)} stayed in {dest}, the rest is back in place" if stuck else
                 "nothing was moved")
        raise UsageError(f"could not move the earlier run's files aside in {workdir} ({_os_error(e)}); {where}. "
                         f"Make it writable, or pick another --workdir") from None
    return dest


def _os_error(e: OSError) -> str:
    """'strerror: path' (both paths of a failed rename), or the error alone when it names no path."""
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p)
    return f"{e.strerror}: {paths}" if paths else str(e.strerror or e)


def resolve_workdir(cfg: Config, explicit: set[str]) -> tuple[Config, bool]:
    """Decide fresh start vs resume; on resume, the saved config's run settings win and contradicting flags are
    refused; the other settings (workdir, --max-steps, logging, ...) are this command's.
    With --fresh over an earlier run, the caller sets that run aside (start_over) once every check has passed.

    A workdir with a config.json but no checkpoint (a run killed before its first save, or whose checkpoints
    were set aside), or --fresh, and a command that sets no run setting (`python train.py --workdir W
    [--fresh]`): that run's settings start over, from step 0, as a resume would take them."""
    resuming = not cfg.fresh and has_checkpoints(cfg.workdir)
    if not resuming:
        if (not os.path.exists(config_path(cfg.workdir)) or explicit & (set(Config.RUN_FIELDS) | {"preset"})
                or (cfg.fresh and "fresh" not in explicit)):  # a caller's own fresh Config (bench/sweep.py) as is
            if cfg.fresh and "fresh" in explicit and "data" not in explicit:
                _say_fresh_takes_the_default_data(cfg)
            return cfg, False
    try:
        saved = load_config(cfg.workdir)
    except UsageError:
        if not cfg.fresh:
            raise
        raise UsageError(f"{config_path(cfg.workdir)} cannot be read, so --fresh cannot start its settings over: "
                         f"give the run's flags (--preset, --data, ...) to start a new run") from None
    if not resuming:
        print(f"note: {cfg.workdir}'s config.json starts over from step 0" + (
            " (--fresh with no run setting: give --preset or run flags to start another run)" if cfg.fresh else
            ": it holds no checkpoint to resume"))
    # A --preset sets fields too: resuming a default-preset run with --preset tiny must not silently mix, nor a
    # 30-epoch run saved before the twentieth session go on under --preset default (now 100): the fields either
    # preset sets are compared. Except the warm-up, unless given: it follows from the preset and the epochs
    # (config.fitted_warmup; bench/quality.py fits the epochs), and the run's own is the one its schedule has.
    via_preset = (set(PRESETS.get(cfg.preset, {})) | set(PRESETS.get(saved.preset, {}))) - explicit \
        - {"warmup_epochs"} if "preset" in explicit else set()
    for name in Config.RUN_FIELDS:
        gone = (name == "data" and "data" in explicit and cfg.data != "tfds"
                and not same_setting(name, saved.data, cfg.data) and missing_data(cfg.workdir, saved.data))
        if gone:
            if not os.path.exists(local_path(cfg.data)):  # refused as the run's data, then told to pass --data
                raise UsageError(f"--data {cfg.data}: no such file or folder, and {gone}: give the path of the "
                                 f"dataset's copy")
            continue  # a moved dataset (record_data_path): checked by its images' shape and steps per epoch
        if name in explicit | via_preset and not same_setting(name, getattr(saved, name), getattr(cfg, name)):
            given = (f"--preset {cfg.preset} sets --{name.replace('_', '-')} {getattr(cfg, name)}"
                     if name in via_preset else f"not {getattr(cfg, name)}")
            why = (": the learning rate's warm-up and cosine decay are laid out over the run's epochs, so a run "
                   "cannot be given more (or fewer) of them. Train a new one" if name == "epochs" else
                   ": drop the flag to resume it, or start over")
            # a preset's settings change between versions (the quick preset's epochs: 14, then 30): its older
            # runs resume under their own settings without the flag
            own = (f"; `python train.py --workdir {shlex.quote(cfg.workdir)}` resumes it with its own settings"
                   if name in via_preset else "")
            raise UsageError(f"{cfg.workdir} holds a run with --{name.replace('_', '-')} {getattr(saved, name)}, "
                             f"{given}{why} with --fresh (old checkpoints are moved aside), or use another "
                             f"--workdir{own}")
    # The other settings are this command's, except those the run's preset sets and this command left at its
    # own preset's value: a tiny-preset run resumed by `python train.py --workdir W` keeps --log-every 2.
    keep = {name: getattr(cfg, name) for name in dataclasses.asdict(cfg) if name not in Config.RUN_FIELDS}
    unset = Config(**PRESETS[cfg.preset])
    for name, value in PRESETS.get(saved.preset, {}).items():
        if name in keep and name not in explicit | via_preset and keep[name] == getattr(unset, name):
            keep[name] = value
    # an older run's relative --data, given again here: saved absolute from now on
    data = cfg.data if "data" in explicit else saved.data
    return saved.replace(**{**keep, "preset": saved.preset, "data": data}), resuming


def _say_fresh_takes_the_default_data(cfg: Config) -> None:
    """--fresh with run flags starts from the defaults: the earlier run's local --data is not kept."""
    try:
        before = load_config(cfg.workdir).data
    except UsageError:  # no config.json, or an unreadable one: nothing to compare
        return
    if not same_setting("data", before, cfg.data):
        print(f"note: --fresh with run flags starts from the defaults, so --data {cfg.data}, not the earlier run's "
              f"{before}; pass --data to keep it")


def missing_data(workdir: str, data: str) -> str | None:
    """"W was trained on --data D, which is not there" (from this folder, for a relative D: runs saved before --data
    was stored absolute) when the run's local dataset is not where it says; else None."""
    if data == "tfds" or os.path.exists(local_path(data)):
        return None
    where = "" if os.path.isabs(os.path.expanduser(data)) else f" from {os.getcwd()} (a relative path)"
    return f"{workdir} was trained on --data {data}, which is not there{where}"


def record_data_path(cfg: Config) -> None:
    """A run resumed on a copy of its dataset at another path, its own being gone (resolve_workdir lets --data
    name it; it was refused as other data while the message for the missing path said to pass --data): config.json
    names the new path, so that the next resume and evaluate.py find it without --data. The rest of config.json is
    left as it was."""
    saved = load_config(cfg.workdir)
    if not same_setting("data", saved.data, cfg.data):
        print(f"note: {missing_data(cfg.workdir, saved.data) or f'{cfg.workdir} was trained on --data {saved.data}'}"
              f"; resumed on --data {cfg.data}, which its config.json names from now on")
        save_config(saved.replace(data=cfg.data), *trained_on(cfg.workdir))


def trained_on(workdir: str) -> tuple[list | None, int | None]:
    """(image shape, number of training images) of the run's data as its config.json saved them; None for what a
    run of an older version did not save, or an unreadable file."""
    try:
        with open(config_path(workdir)) as fh:
            saved = json.load(fh)
    except (OSError, ValueError):
        return None, None
    if not isinstance(saved, dict):
        return None, None
    shape, n = saved.get("image_shape"), saved.get("train_images")
    return (shape if isinstance(shape, list) else None), (n if type(n) is int else None)


def same_setting(name: str, saved, given) -> bool:
    """A run saved before --data was stored as an absolute path names it relative to where it was started; and
    one dataset may be reached by several paths (a symlink to it, a folder linked under another name)."""
    if name == "data" and "tfds" not in (saved, given):
        return os.path.realpath(local_path(saved)) == os.path.realpath(local_path(given))
    return saved == given


def start_over(cfg: Config) -> None:
    """--fresh, or a new run where an earlier one left results (earlier_results): move the earlier run's files
    aside (never deleted). Every process calls it: each looked for them at its start, and none may look while
    process 0 moves them."""
    from jax.experimental import multihost_utils
    multi = jax.process_count() > 1
    if multi:
        multihost_utils.sync_global_devices("jaxae-fresh-checked")
    if jax.process_index() == 0:
        names = ", ".join(earlier_results(cfg.workdir))
        moved = move_aside(cfg.workdir)
        print(f"--fresh: moved the previous run's files to {moved}" if cfg.fresh else
              f"note: {cfg.workdir} holds an earlier run's results ({names}) but no checkpoint to resume: moved "
              f"its files to {moved} (not deleted)")
    if multi:
        multihost_utils.sync_global_devices("jaxae-fresh")


def resume_command(cfg: Config) -> str:
    """The command that resumes the run in cfg.workdir: the run's own saved config supplies the rest. Not
    "the same command", which starts over when it had --fresh and is another script's in bench/."""
    until = f" --max-steps {cfg.max_steps}" if cfg.max_steps else ""  # a budget is this command's, not saved
    return f"python train.py --workdir {shlex.quote(cfg.workdir)}{until}"
