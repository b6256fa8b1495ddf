"""What watches a training run: its records (metrics.jsonl, TensorBoard, the progress bar, the log lines) and
the rules that stop it (SIGTERM and Ctrl-C, non-finite losses or parameters, a collapse to the mean image)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import checkpoints
from jaxae.config import Config, TrainingStopped


_SAVING = b"saving a checkpoint before stopping: a moment (Ctrl-C again quits without it)\n"


class Stop:
    """SIGTERM / Ctrl-C: finish the call in flight, save, exit (0 for SIGTERM, 130 for Ctrl-C). A second Ctrl-C
    stops at once, except once the loop has seen the first and is saving (`saving`: an epoch's end it came at, then
    the save): a double press lands there, and lost every step since the last epoch's checkpoint (the whole run, in
    a first epoch). There it says so, and a third stops at once."""

    def __init__(self):
        self.signum = None
        self.saving = False
        self._told = False
        self._old = {}
        self._outer = None

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            self._old[s] = signal.signal(s, self._handle)
        # Inside another Stop (bench/sweep.py's, over its grid): a signal that came before this one started stops
        # it at once, and one this one took but did not act on (it came in a run's last epoch) is handed back on
        # exit. Each caught only what came while it was installed: the sweep trained a whole extra run, or went on.
        outer = getattr(self._old[signal.SIGTERM], "__self__", None)
        self._outer = outer if isinstance(outer, Stop) else None
        if self._outer is not None and self._outer.signum is not None:
            self.signum = self._outer.signum
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT and self.saving and not self._told:
                self._told = True  # os.write: a print here could land inside one of the main thread's
                os.write(sys.stderr.fileno(), _SAVING)
                return
            if signum == signal.SIGINT:  # a second Ctrl-C: the user insists, stop now
                raise KeyboardInterrupt
            return  # SIGTERM again (a job scheduler's and its launcher's both): already stopping and saving
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        if self._outer is not None and self._outer.signum is None:
            self._outer.signum = self.signum


def log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def check_finite(pending, cfg: Config, mngr) -> list[float]:
    """Fetch the pending losses (one host sync per log interval) and stop on the first non-finite one."""
    out = []
    for first, losses_dev in pending:
        vals = np.asarray(jax.device_get(losses_dev)).reshape(-1)
        bad = np.flatnonzero(~np.isfinite(vals))
        if bad.size:
            _diverged(f"loss became {vals[bad[0]]} at step {first + int(bad[0]) + 1}", cfg, mngr)
        out += vals.tolist()
    return out


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def save_finite(mngr, state, cfg: Config) -> None:
    """Save, unless the parameters went non-finite in the steps since the last loss (which is computed
    before the update): a checkpoint is never written from a diverged state."""
    if not bool(_all_finite(state.params)):
        _diverged(f"parameters became non-finite by step {int(state.step)}", cfg, mngr)
    checkpoints.save(mngr, state)


def _kept(mngr, which: str = "last") -> str:
    """What a stopped run leaves: its latest checkpoint, named for the message."""
    last = mngr.latest_step()
    return f"the {which} checkpoint, step {last}, is kept" if last is not None else "no checkpoint was saved"


def _diverged(what: str, cfg: Config, mngr) -> None:
    raise TrainingStopped(f"{what} with --learning-rate {cfg.learning_rate}: training diverged, most likely "
                          f"the learning rate is too high; {_kept(mngr, 'last good')}. Run again with a few times "
                          f"lower --learning-rate and --fresh (old checkpoints are moved aside) or another --workdir")


# A run has collapsed when its test MSE is back at the mean image's after it had been well below it: the
# network gives (nearly) one output for every input. Seen on the H200 (eleventh session, docs/quality.md):
# --batch-size 1024 --learning-rate 0.004 with seed 1 went 0.0330 -> 0.0485 -> 0.0622 in epochs 2-4 (mean image
# 0.0612) and stayed there for the 96 epochs left, with finite losses. A run that has not learnt yet (a tiny
# model's first steps) is never below LEARNED x the baseline, so it is not stopped.
LEARNED, COLLAPSED = 0.8, 0.95


def collapsed(test_mse: float, best: float, baseline: float) -> bool:
    return baseline > 0 and best <= LEARNED * baseline and test_mse >= COLLAPSED * baseline


def check_collapse(epoch: int, test_mse: float, best: float, baseline: float, cfg: Config, mngr) -> None:
    """Stop the run (TrainingStopped) if epoch `epoch` left it collapsed; call it before that epoch's save."""
    if not collapsed(test_mse, best, baseline):
        return
    raise TrainingStopped(
        f"epoch {epoch}: test mse {test_mse:.4f} is no better than the mean training image's ({baseline:.4f}), "
        f"after {best:.4f} earlier: the network has collapsed (it reconstructs no better than one image for every "
        f"input would), most likely because --learning-rate {cfg.learning_rate} is too high for --batch-size "
        f"{cfg.batch_size}; {_kept(mngr)}. Run again with a lower --learning-rate or more --warmup-epochs, and "
        f"--fresh (old checkpoints are moved aside) or another --workdir")


def best_test_mse(path: str, step: int) -> float:
    """The lowest test MSE of a run's metrics.jsonl up to `step` (inf if none). Only process 0 writes the file,
    which every process reads (the workdir is shared); the filter on `step` gives them all the same answer,
    whether they read it before or after process 0 drops the records past a resumed checkpoint."""
    return min((r["test_mse"] for _, r in metric_records(path) if "test_mse" in r and r.get("step", 0) <= step),
               default=float("inf"))


def recorded_steps_per_epoch(path: str) -> int | None:
    """The steps per epoch a run's metrics.jsonl last recorded (None before its first epoch's record, or for a run
    older than the field)."""
    return next((r["steps_per_epoch"] for _, r in reversed(metric_records(path)) if "steps_per_epoch" in r), None)


def metric_records(path: str) -> list[tuple[str, dict]]:
    """Each line of a metrics.jsonl with its record ([] before the file exists). A line that is not a whole
    record (a kill or a full disk cut the last write short: resume and evaluate.py were a JSONDecodeError) is
    skipped with a warning; truncate_metrics then drops it."""
    if not os.path.exists(path):
        return []
    records, bad = [], []
    with open(path) as fh:
        for number, line in enumerate(fh, 1):
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                bad.append(number)
                continue
            if isinstance(record, dict):
                records.append((line if line.endswith("\n") else line + "\n", record))
            elif record is not None:
                bad.append(number)
    if bad:
        warnings.warn(f"{path}: line {', '.join(map(str, bad))} is not a whole record (a write cut short by a kill "
                      f"or a full disk?): skipped")
    return records


def progress_bar(progress: bool, epoch: int, epochs: int, initial: int, total: int):
    """tqdm's bar on a terminal; where stderr is a file or a pipe (a batch job's log), ProgressLines."""
    if not progress or jax.process_index() != 0:
        return None
    desc = f"epoch {epoch + 1}/{epochs}"
    if os.environ.get("TQDM_DISABLE", "") not in ("", "0"):  # tqdm's own switch turns the lines off too
        return None
    if not sys.stderr.isatty() and "ipykernel" not in sys.modules:  # a notebook draws tqdm's bar in place
        return ProgressLines(desc, initial, total)
    try:
        from tqdm import tqdm
    except ImportError:  # a bare accelerator box may lack tqdm: train without a bar
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False, dynamic_ncols=True,
                file=sys.stderr, mininterval=0.5)


class ProgressLines:
    """The progress bar of a log file: a plain line at most every `every` seconds, `epoch 3/30: step 120/390
    (31 %), loss 0.0301, 1,950 img/s`. tqdm's bar there is carriage-return frames (its postfix redraws at every
    update, whatever mininterval says), so each epoch line ended a physical line of kilobytes of frames, and
    `grep "test mse"` printed them all."""

    def __init__(self, desc: str, initial: int, total: int, every: float = 30.0):
        self.desc, self.n, self.total, self.every = desc, initial, total, every
        self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.n += n

    def set_postfix(self, loss: str, img_s: str) -> None:
        now = time.monotonic()
        if now - self.last >= self.every and self.n < self.total:
            self.last = now
            print(f"{self.desc}: step {self.n}/{self.total} ({100 * self.n / self.total:.0f} %), loss {loss}, "
                  f"{img_s} img/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def tensorboard(workdir: str):
    if jax.process_index() != 0:
        return None
    # tensorboardX imports torch whenever it is installed (only for type hints and torch tensors): 1.7 s and
    # 180 MB of resident memory in a JAX run, on the box where the bench's PyTorch twin is installed. Hidden
    # for the import unless something already loaded it.
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # optional (the GPU box has no tensorboardX): metrics.jsonl has everything
        return None
    finally:
        if hide and sys.modules.get("torch", False) is None:
            del sys.modules["torch"]
    return SummaryWriter(os.path.join(workdir, "tensorboard"))


def write_metrics(path: str, writer, record: dict) -> None:
    if jax.process_index() != 0:
        return
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    if writer is not None:
        for k, v in record.items():
            if k not in ("epoch", "step", "time", "steps_per_epoch", "train_steps"):
                writer.add_scalar(k, v, record["step"])
        writer.flush()


def truncate_metrics(path: str, step: int) -> None:
    """On resume, drop records of steps after the restored checkpoint (they will be redone), and a cut line."""
    if jax.process_index() != 0 or not os.path.exists(path):
        return
    keep = [line for line, record in metric_records(path) if record.get("step", 0) <= step]
    with open(path) as fh:
        text = fh.read()
    written = sum(1 for line in text.splitlines() if line.strip())  # a cut line among them
    # a last record without its newline: the next append would join it and the new record into one bad line
    if len(keep) != written or (text and not text.endswith("\n")):
        with open(path + ".tmp", "w") as fh:
            fh.writelines(keep)
        os.replace(path + ".tmp", path)


def timing(result: dict) -> str:
    """The run's time line: start-up and compiles show in the first epoch's end, the steady pace in the rest."""
    text = f"time: {result['seconds']:.0f} s"
    if "first_epoch_seconds" in result:
        text += f"; {result['first_epoch_seconds']:.1f} s to the end of this process's first epoch (start-up, compiles)"
    if "seconds_per_epoch" in result:
        text += f"; then {result['seconds_per_epoch']:.2f} s per epoch (median, test pass and checkpoint included)"
    return text
