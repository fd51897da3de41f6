"""Preemption: Slurm signals the job (e.g. ``--signal=USR1@120``) before its time runs out.

The handler only sets a flag; the training loop notices it between steps, writes a checkpoint
and, under Slurm, asks for a requeue so that the job restarts and resumes from that checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess

log = logging.getLogger(__name__)


class PreemptionFlag:
    def __init__(self, signals=(signal.SIGUSR1,)):
        self.requested = False
        self.signum: int | None = None
        for sig in signals:
            try:
                signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread (e.g. inside some test runners)
                pass

    def _handle(self, signum, frame) -> None:
        self.requested, self.signum = True, signum


def requeue_slurm_job() -> bool:
    """``scontrol requeue $SLURM_JOB_ID``; returns False outside Slurm or on failure."""
    job_id = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_TASK_ID") and os.environ.get("SLURM_ARRAY_JOB_ID"):
        job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job_id:
        return False
    try:
        out = subprocess.run(
            ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as err:
        log.error("could not requeue Slurm job %s: %s", job_id, err)
        return False
    if out.returncode != 0:
        log.error("scontrol requeue %s failed: %s", job_id, out.stderr.strip())
        return False
    log.info("requeued Slurm job %s", job_id)
    return True
