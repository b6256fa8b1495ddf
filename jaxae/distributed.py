"""Multi-process runs on JAX's own multi-controller runtime (jax.distributed): one process per host.

Call `initialize(cfg)` before anything touches a JAX device. Single-process runs are left alone.
"""

from __future__ import annotations

import os

import jax

from jaxae.config import Config, UsageError


def _launched_by_scheduler() -> str | None:
    """Name of the launcher that started several processes (jax.distributed.initialize() detects these
    itself and needs no arguments), or None."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in os.environ:
        return "SLURM"
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        if "OMPI_MCA_orte_hnp_uri" not in os.environ:  # what jax 0.10 detects Open MPI by; 5.x no longer sets it
            raise UsageError("launched by Open MPI 5 (or another mpirun without ORTE), which jax.distributed does "
                             "not detect: pass --coordinator HOST:PORT of rank 0, --num-processes "
                             "$OMPI_COMM_WORLD_SIZE and --process-id $OMPI_COMM_WORLD_RANK")
        return "Open MPI"
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        return "a TPU pod"
    return None


def initialize(cfg: Config) -> bool:
    """Join the other processes when launched as one of several; True when it did."""
    coordinator = cfg.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num = cfg.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
    pid = cfg.process_id if cfg.process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1"))
    launcher = None if coordinator or num else _launched_by_scheduler()  # its mistakes before any setting
    # CPU collectives across processes need gloo; this setting is ignored by GPU and TPU backends.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator or num:
        if not (coordinator and num > 0 and 0 <= pid < num):
            raise UsageError("a multi-process run needs all three of --coordinator HOST:PORT, --num-processes N "
                             f"and --process-id 0..N-1 (got {coordinator or 'none'}, {num}, {pid})")
        if ":" not in coordinator:
            raise UsageError(f"--coordinator {coordinator}: give it as HOST:PORT, e.g. 10.0.0.1:1234")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid)
        return True
    if launcher:
        jax.distributed.initialize()
        return True
    return False
