"""Kill-and-resume check: a run SIGKILLed at random moments and restarted ends bitwise equal to an uninterrupted one.

    python tools/kill_resume.py                  # 5 kills, about 3 minutes on 2 CPU cores
    python tools/kill_resume.py --kills 2 --epochs 4 --seed 1

Both runs use the same command: `python train.py --preset tiny --data <synthetic folder> --workdir W
--save-every-epochs 1 ...`. The first runs to the end; the second is killed with SIGKILL after seeded random
delays and started again with the same command until it finishes. Then the final checkpoint of each is
restored (and checked against its stored checksum) and the sha256 of its concatenated parameter bytes is
compared. Epochs are a handful of steps, so the kills land before, between and during the async saves;
orbax's temporary directories left by a kill mid-save are counted and must not break the restore.

Exit status 0 when the hashes are equal, 1 when they differ.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def make_folder(root: str, n_train: int, n_test: int, size: int = 16) -> str:
    """train/<class>/ and test/<class>/ PNGs of smooth seeded colour gradients (two classes)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    for split, n in (("train", n_train), ("test", n_test)):
        for label in range(2):
            os.makedirs(os.path.join(root, split, f"c{label}"), exist_ok=True)
            for i in range(n // 2):
                a = rng.uniform(0, 2 * np.pi)
                ramp = (np.cos(a) * xx + np.sin(a) * yy + 1) / 2
                img = 0.2 + 0.6 * ramp[..., None] * (np.arange(3) + 1 + label) / 4 + rng.normal(0, 0.02, (size, size, 3))
                Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8)).save(
                    os.path.join(root, split, f"c{label}", f"{i:04d}.png"))
    return root


def _reader(proc: subprocess.Popen, lines: queue.Queue) -> None:
    for line in proc.stdout:
        lines.put(line)
    lines.put(None)


def run(cmd: list[str], env: dict, log, kill_after: float | None = None) -> tuple[int | None, list[str]]:
    """Run `cmd`; when `kill_after` is given, SIGKILL it that many seconds after its second 'epoch' line (once
    the steps, the evaluation and the first save are compiled). Returns (exit status, or None when killed; stdout lines with
    their times)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(proc, lines), daemon=True).start()
    out, deadline, epochs_seen = [], None, 0
    while True:
        try:
            line = lines.get(timeout=0.01)
        except queue.Empty:
            line = ""
        if line is None:
            break
        if line:
            out.append((time.monotonic(), line.rstrip("\n")))
            epochs_seen += line.startswith("epoch ")
            if epochs_seen == 2 and kill_after is not None and deadline is None:
                deadline = time.monotonic() + kill_after
        if deadline is not None and time.monotonic() >= deadline and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return None, out
    return proc.wait(), out


def final_params_hash(workdir: str) -> tuple[int, str]:
    """(step, sha256 of the parameters' bytes in tree order) of the latest checkpoint, restored and
    checksum-verified the way a resuming run restores it."""
    import jax

    from jaxae import checkpoints
    from jaxae.config import load_config
    from jaxae.train import train_state_to_restore

    cfg = load_config(workdir)
    state = train_state_to_restore(cfg, (16, 16, 3), 1, 1)
    with checkpoints.manager(workdir, create=False) as mngr:
        state = checkpoints.restore(mngr, state)
    digest = hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(state.params)))
    return int(state.step), digest.hexdigest()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=5, help="SIGKILLs to deliver (default 5)")
    p.add_argument("--epochs", type=int, default=8, help="epochs of 8 steps each (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill delays (default 0)")
    p.add_argument("--devices", type=int, default=2, help="CPU devices the runs pmap over (default 2)")
    p.add_argument("--scratch", default="", help="folder for data and workdirs (default: a new temp folder)")
    args = p.parse_args()

    scratch = args.scratch or tempfile.mkdtemp(prefix="kill_resume-")
    data = make_folder(os.path.join(scratch, "data"), 64, 16)
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(args.devices), "PYTHONUNBUFFERED": "1"}

    def command(workdir):
        return [sys.executable, "train.py", "--preset", "tiny", "--data", data, "--cache-dir",
                os.path.join(scratch, "cache"), "--workdir", workdir, "--epochs", str(args.epochs),
                "--save-every-epochs", "1", "--log-every", "4", "--seed", "3"]

    log = open(os.path.join(scratch, "stderr.log"), "a")
    t0 = time.monotonic()
    code, out = run(command(os.path.join(scratch, "straight")), env, log)
    if code != 0:
        print(f"the uninterrupted run failed (exit {code}); see {log.name}")
        return 1
    epoch_times = [t for t, line in out if line.startswith("epoch ")]
    epoch_s = float(np.median(np.diff(epoch_times)))
    print(f"uninterrupted run: {out[-1][1]}  ({time.monotonic() - t0:.0f} s, {epoch_s:.2f} s per epoch)")

    # Each life is killed 0 to 3 epochs after its second epoch ends: into that epoch's async save, between
    # saves, or in a later one.
    rng = np.random.default_rng(args.seed)
    killed_dir = os.path.join(scratch, "killed")
    kills, lives, code = 0, 0, None
    resumed_at = []  # the step each restart resumed from: the last complete checkpoint before the kill
    while code != 0:
        lives += 1
        delay = float(rng.uniform(0.0, 3 * epoch_s)) if kills < args.kills else None
        code, out = run(command(killed_dir), env, log, kill_after=delay)
        if lives > 1:
            found = [m for m in (re.search(r"resuming .* from step (\d+)", line) for _, line in out) if m]
            resumed_at.append(int(found[0].group(1)) if found else 0)
            print(f"  life {lives}: resumed from step {resumed_at[-1]}")
        if code is None:
            kills += 1
            ckpt_dir = os.path.join(killed_dir, "checkpoints")
            names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
            tmp = [n for n in names if "orbax-checkpoint-tmp" in n]
            saved = sorted(int(n) for n in names if n.isdigit())
            print(f"  life {lives}: SIGKILL {delay:.2f} s after its second epoch; complete checkpoints {saved}, "
                  f"unfinished saves left behind: {len(tmp)}")
        elif code != 0:
            print(f"a restarted run failed (exit {code}); see {log.name}")
            return 1
        if lives > 2 * args.kills + 4:
            print("too many restarts without finishing")
            return 1
    print(f"killed run: {out[-1][1]}")

    step_a, hash_a = final_params_hash(os.path.join(scratch, "straight"))
    step_b, hash_b = final_params_hash(killed_dir)
    print(f"kills: {kills}; the restarts resumed from steps {resumed_at}")
    print(f"uninterrupted:  step {step_a}  params sha256 {hash_a}")
    print(f"killed {kills}x:      step {step_b}  params sha256 {hash_b}")
    same = (step_a, hash_a) == (step_b, hash_b)
    print("IDENTICAL" if same else "DIFFERENT", f"(scratch: {scratch})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
