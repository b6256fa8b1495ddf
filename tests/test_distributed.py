"""Two processes on 127.0.0.1 (CPU collectives via gloo), one CPU device each, train like one process with
two devices: identical parameters on both processes, equal to the single-process run, and a checkpoint
that restores in a single process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REFERENCE_FLAGS, REFERENCE_STEPS, REPO
from jaxae import checkpoints
from jaxae.config import load_config
from jaxae.train import create_train_state, steps_per_epoch

TIMEOUT = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_cmd(data: str, workdir: str) -> list[str]:
    """The flags of conftest's reference_run (tiny preset, batch 8, noise 0.2, 4 epochs of 4 steps)."""
    return [sys.executable, os.path.join(REPO, "train.py"), *REFERENCE_FLAGS, "--data", data,
            "--workdir", workdir, "--cache-dir", os.path.join(os.path.dirname(workdir), "cache")]


def _env(devices: int) -> dict:
    return {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu"}


def _restore_params(workdir: str, image_shape=(16, 16, 3)):
    cfg = load_config(workdir)
    spe = steps_per_epoch(32, cfg.batch_size)
    state = create_train_state(cfg, image_shape, cfg.epochs * spe, spe)
    mngr = checkpoints.manager(workdir, create=False)
    try:
        state = checkpoints.restore(mngr, state)
    finally:
        mngr.close()
    return int(state.step), jax.device_get(state.params)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, reference_run):
    root = tmp_path_factory.mktemp("dist")
    # The single-process run on 2 devices is conftest's reference_run (shared with test_robustness).
    data, single = reference_run["data"], reference_run["workdir"]  # 2 classes x 16 train images -> 32
    assert "2 cpu device(s)" in reference_run["stdout"]
    multi = str(root / "multi")
    port = _free_port()
    procs = [subprocess.Popen(_train_cmd(data, multi) + ["--coordinator", f"127.0.0.1:{port}",
                                                          "--num-processes", "2", "--process-id", str(i)],
                              env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:  # never leave a process behind, whatever happened
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    return single, multi, outs


def test_two_processes_match_one_process_with_two_devices(runs):
    single, multi, outs = runs
    assert "2 cpu device(s)" in outs[0]  # the global device count spans both processes
    step_s, p_single = _restore_params(single)
    step_m, p_multi = _restore_params(multi)
    assert step_s == step_m == REFERENCE_STEPS
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), p_single, p_multi))
    print(f"\nmax |params(2 processes x 1 device) - params(1 process x 2 devices)| = {max(diffs):.3g}")
    assert max(diffs) < 1e-5, max(diffs)


def test_only_process_zero_logs(runs):
    _, multi, outs = runs
    assert "epoch 4/4" in outs[0] and "epoch 4/4" not in outs[1]
    with open(os.path.join(multi, "metrics.jsonl")) as fh:
        assert len([l for l in fh if l.strip()]) == 4  # one record per epoch, written once


def test_open_mpi_without_orte_is_one_clear_error(monkeypatch, tmp_path):
    """Open MPI 5 sets OMPI_COMM_WORLD_SIZE but not the ORTE variable jax 0.10 detects it by: jax raised
    'coordinator_address should be defined' from deep inside."""
    from conftest import tiny_config
    from jaxae import distributed
    from jaxae.config import UsageError
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    monkeypatch.delenv("OMPI_MCA_orte_hnp_uri", raising=False)
    settings = []
    monkeypatch.setattr(jax.config, "update", lambda *a: settings.append(a))
    with pytest.raises(UsageError, match="Open MPI 5 .*--num-processes \\$OMPI_COMM_WORLD_SIZE"):
        distributed.initialize(tiny_config(tmp_path))
    assert settings == []  # refused before it set anything of JAX's
