"""Submitting work to SLURM with submitit and waiting for it without trusting one job's fate to the others
(shared by ``hydra/launcher=slurm`` and the population launcher's cluster mode; docs/design.md decision 38).

- :func:`make_executor`: a ``submitit.AutoExecutor`` from a launcher's settings (partition, account, time, memory,
  GPUs, array parallelism, extra ``sbatch`` options), the way hydra-submitit-launcher builds it.
- :func:`submit_chunked`: ``map_array`` in arrays of at most ``max_array_size`` tasks (SLURM refuses an array whose
  largest index reaches ``MaxArraySize``, 1001 by default: https://slurm.schedmd.com/slurm.conf.html#OPT_MaxArraySize).
- :func:`wait_all`: polls until every job has a result or has ended; the state of a job that ended without one comes
  from ``squeue`` (no accounting database needed) or, once SLURM forgot it, from ``sacct`` through submitit.
  submitit's own ``job.result()`` raises for such a job (``UncompletedJobError``) and, without ``sacct``, never
  returns; here it is one :class:`Ended` among the others.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

# SLURM job states that mean "not finished yet" (https://slurm.schedmd.com/squeue.html#SECTION_JOB-STATE-CODES)
ACTIVE_STATES = {
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
    "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD", "SPECIAL_EXIT", "STOPPED", "UNKNOWN", "READY",
}  # fmt: skip
# how long a job may be absent from squeue and sacct with no result before it counts as ended (slow file systems)
VANISHED_GRACE_S = 60.0


class Ended:
    """A job that ended without a result; ``state`` is what SLURM says (``CANCELLED by 0``, ``OUT_OF_MEMORY``...).

    (No dataclass here: Hydra's plugin scan executes this module outside ``sys.modules``.)
    """

    def __init__(self, state: str) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"Ended({self.state!r})"


def make_executor(params: dict[str, Any], folder: str) -> Any:
    """A submitit SLURM executor with a launcher's settings; keys as in hydra-submitit-launcher's ``SlurmQueueConf``
    (``timeout_min``, ``cpus_per_task``, ``gpus_per_node``, ``mem_gb``, ``partition``, ``account``, ``qos``,
    ``array_parallelism``, ``additional_parameters``, ``setup``, ``signal_delay_s``, ``max_num_timeout``...)."""
    import submitit

    params = {key: value for key, value in params.items() if value is not None}
    executor = submitit.AutoExecutor(
        folder=folder, cluster="slurm", slurm_max_num_timeout=int(params.pop("max_num_timeout", 0))
    )
    shared = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name", "stderr_to_stdout"}
    executor.update_parameters(**{key if key in shared else f"slurm_{key}": value for key, value in params.items()})
    return executor


def submit_chunked(executor: Any, function: Callable, arguments: Sequence[Any], max_array_size: int) -> list[Any]:
    """``executor.map_array(function, arguments)`` in arrays of at most ``max_array_size`` tasks; the submitit jobs."""
    if max_array_size < 1:
        raise ValueError(f"max_array_size must be >= 1, got {max_array_size}")
    jobs: list[Any] = []
    for start in range(0, len(arguments), max_array_size):
        try:
            jobs += executor.map_array(function, list(arguments[start : start + max_array_size]))
        except Exception as error:  # submitit's FailedJobError / CalledProcessError carry sbatch's own message
            raise SystemExit(
                f"error: sbatch refused an array of {min(max_array_size, len(arguments) - start)} task(s) after "
                f"{len(jobs)} were submitted ({sbatch_error(error)}); an invalid array "
                "means hydra.launcher.max_array_size must be below the cluster's MaxArraySize "
                "(scontrol show config | grep MaxArraySize)"
            ) from None
    return jobs


def sbatch_error(error: BaseException) -> str:
    """sbatch's own one-line complaint inside a submitit submission error."""
    lines = [line for line in str(error).splitlines() if "error" in line.lower()] or str(error).splitlines()
    return lines[0].strip() if lines else type(error).__name__


def submit_one(executor: Any, function: Callable, *args: Any, what: str = "a job") -> Any:
    """``executor.submit(function, *args)``; sbatch's refusal is one line naming the settings to check."""
    try:
        return executor.submit(function, *args)
    except Exception as error:
        raise SystemExit(
            f"error: sbatch refused {what} ({sbatch_error(error)}); check hydra.launcher.slurm's partition, account, "
            "time, memory and GPU settings against the cluster (sinfo, scontrol show partition)"
        ) from None


def _squeue_states(job_ids: Sequence[str]) -> dict[str, str]:
    """State of each job SLURM still lists (array tasks as ``12_3``); an empty dict if squeue fails."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    if not arrays:
        return {}
    command = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(arrays)]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def job_state(job: Any, listed: dict[str, str]) -> str:
    """What SLURM says of ``job``: squeue's state if it still lists it, else sacct's (through submitit)."""
    if job.job_id in listed:
        return listed[job.job_id]
    try:
        return str(job.watcher.get_state(job.job_id, mode="force"))
    except Exception:  # submitit bypasses sacct errors itself; anything else means "unknown"
        return "UNKNOWN"


def wait_all(jobs: Sequence[Any], poll_s: float = 10.0, on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
    """Wait for every job; each result is the job's return value, an exception it raised, or :class:`Ended`.

    ``on_done(index, result)`` is called as each job finishes (a grid of thousands reports as it goes).
    """
    results: list[Any] = [None] * len(jobs)
    pending = set(range(len(jobs)))
    vanished: dict[int, float] = {}
    while pending:
        listed = _squeue_states([jobs[i].job_id for i in pending])
        for index in sorted(pending):
            job = jobs[index]
            if job.paths.result_pickle.exists():
                try:
                    results[index] = job.result()
                except Exception as error:  # the callable raised (submitit re-raises it here)
                    results[index] = error
            else:
                state = job_state(job, listed)
                first = state.split()[0].upper() if state else "UNKNOWN"
                if first in ACTIVE_STATES and not (first == "UNKNOWN" and job.job_id not in listed):
                    continue
                if first == "UNKNOWN":  # neither squeue nor sacct knows it: gone, or a slow file system
                    since = vanished.setdefault(index, time.monotonic())
                    if time.monotonic() - since < VANISHED_GRACE_S:
                        continue
                if job.paths.result_pickle.exists():  # written between the two checks
                    continue
                results[index] = Ended(state)
            pending.discard(index)
            if on_done is not None:
                on_done(index, results[index])
        if pending:
            time.sleep(poll_s)
    return results


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
