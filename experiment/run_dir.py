"""What a run directory holds, and where a run in it continues from (entry-point support: no SB3).

- **no run**: a fresh start writes it; ``resume=true`` is refused (nothing to resume: likely a typo).
- **completed** (``summary.json`` says so): left untouched; starting or resuming it is refused.
- **a checkpoint**: ``resume=true`` continues from it (once every file is checked); a fresh start is refused.
- **interrupted before its first checkpoint**: ``resume=true`` starts it again from scratch (its earlier
  logs are removed first); a fresh start is refused and the message says so.

``resume=auto`` (the cluster launchers' default, docs/design.md decision 38) does whatever continues the run: starts
a directory that holds no run, continues from a checkpoint, restarts a run that never reached one, and leaves a
completed run untouched (:class:`RunCompleted`, which the caller reports as done, not as an error). A requeued or
resubmitted job therefore needs no other setting.

Decide only while holding the directory (:func:`experiment.lock.hold_run_dir`): otherwise a live writer
may change it between the decision and the start.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from experiment.checkpoint import CHECKPOINT_DIR, checkpoint_problem, checkpoint_step, latest_checkpoint
from experiment.layout import EVALUATIONS_FILE, HYDRA_CONFIG, MODEL_FILE, PROGRESS_FILE, SUMMARY_FILE
from sparse_rl.controller import NonFiniteError

# What a run writes besides its checkpoint; the marks of a started run, and what a restart replaces.
RUN_OUTPUTS = (SUMMARY_FILE, PROGRESS_FILE, EVALUATIONS_FILE, MODEL_FILE, str(HYDRA_CONFIG))
TENSORBOARD_GLOB = "events.out.tfevents.*"


RESUME_MODES = (False, True, "auto")  # the values of ``resume``


class RunDirProblem(ValueError):
    """The run directory cannot be used as asked; one line says why and what to do."""


class RunCompleted(RunDirProblem):
    """The run directory holds a completed run: left untouched (with ``resume=auto`` this is success)."""


def resume_mode_problem(resume: object) -> str | None:
    """One line if ``resume`` is not one of :data:`RESUME_MODES`."""
    if any(resume is mode or (isinstance(mode, str) and resume == mode) for mode in RESUME_MODES):
        return None
    return f"resume={resume!r} is not a valid choice; valid choices: false, true, auto"


def run_status(run_dir: Path) -> str | None:
    """``summary.json``'s status (``running``, ``completed``, ``failed``, ``interrupted``), ``unreadable``, or ``None``
    if absent."""
    try:
        return str(json.loads((run_dir / SUMMARY_FILE).read_text()).get("status"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        return "unreadable"


def holds_started_run(run_dir: Path) -> bool:
    """Whether a run has written anything into ``run_dir``."""
    return any((run_dir / name).exists() for name in RUN_OUTPUTS) or any(run_dir.glob(TENSORBOARD_GLOB))


def resume_point(cfg: Any, run_dir: Path) -> Path | None:
    """The checkpoint a run with ``cfg`` continues from (``None``: start from scratch), or :class:`RunDirProblem`."""
    checkpoint = latest_checkpoint(run_dir)
    status = run_status(run_dir)
    auto = cfg.resume == "auto"
    resuming = cfg.resume is True or auto
    if status == "completed":
        steps = _completed_steps(run_dir)
        raise RunCompleted(
            f"{run_dir} holds a completed run ({steps} env steps); it is left untouched: choose another run_dir or seed"
        )
    if checkpoint is not None:
        if not resuming:
            raise RunDirProblem(
                f"{run_dir} already holds a run; pass resume=true to continue it, or choose another run_dir/seed"
            )
        if (problem := checkpoint_problem(run_dir, checkpoint, cfg)) is not None:
            raise RunDirProblem(problem)
        return checkpoint
    if (run_dir / CHECKPOINT_DIR).exists():  # damaged: checkpoints are swapped in with meta.json written last
        raise RunDirProblem(f"checkpoint {run_dir / CHECKPOINT_DIR} lacks meta.json")
    if holds_started_run(run_dir):
        if not resuming:
            raise RunDirProblem(
                f"{run_dir} holds a run that stopped before its first checkpoint (status {status}); "
                "pass resume=true to start it again from scratch, or choose another run_dir/seed"
            )
        return None  # resume=true restarts it: see clear_run_outputs
    if cfg.resume is True:
        raise RunDirProblem(
            f"resume=true but {run_dir} has no checkpoint to resume from (it holds no run); resume=auto starts it"
        )
    return None


def completed_score(run_dir: Path) -> float | None:
    """The score a completed run recorded in ``summary.json`` (``None`` if it has none)."""
    try:
        score = json.loads((run_dir / SUMMARY_FILE).read_text()).get("score")
    except (OSError, ValueError, AttributeError):
        return None
    return None if score is None else float(score)


def _completed_steps(run_dir: Path) -> Any:
    try:
        return json.loads((run_dir / SUMMARY_FILE).read_text()).get("num_timesteps", "?")
    except (OSError, ValueError):
        return "?"


def clear_run_outputs(run_dir: Path) -> list[Path]:
    """Remove what an interrupted run wrote before its first checkpoint (logs, summary); returns what was removed."""
    removed = [run_dir / name for name in RUN_OUTPUTS if (run_dir / name).is_file()]
    removed += sorted(run_dir.glob(TENSORBOARD_GLOB))
    for path in removed:
        path.unlink()
    return removed


def resume_command(argv: list[str] | None = None) -> str:
    """The command that continues this one: ``python -m sparse_rl.run`` with the same arguments and ``resume=true``,
    or for a sweep (``-m``) ``resume=auto``, which also starts the jobs that never ran and leaves completed ones
    untouched (``argv`` defaults to this process's; another program's arguments give a description instead)."""
    if argv is None:
        if Path(sys.argv[0]).name != "run.py" or Path(sys.argv[0]).parent.name != "sparse_rl":
            return "the same command with resume=true (a sweep: resume=auto)"
        argv = sys.argv[1:]
    kept = [arg for arg in argv if arg.lstrip("+").split("=", 1)[0] != "resume"]
    mode = "auto" if any(arg in ("-m", "--multirun") for arg in kept) else "true"
    return shlex.join(["python", "-m", "sparse_rl.run", *kept, f"resume={mode}"])


def interrupted_line(run_dir: Path, reached: int, total: int, checkpoint: int | None, how: str, resume: str) -> str:
    """One line: a run stopped by a signal (``how``: e.g. "interrupted by SIGINT"), where it is, how to continue."""
    saved = (
        f"checkpoint at env step {checkpoint:,}"
        if checkpoint is not None
        else "no checkpoint yet (resume=true starts it again from scratch)"
    )
    return f"{run_dir}: {how} at env step {reached:,} of {total:,}; {saved}; continue with: {resume}"


def non_finite_message(problem: str, run_dir: Path, first_seen: BaseException | None = None) -> str:
    """A NaN/Inf report: the weight and step (``problem``), whether a good checkpoint exists, and the error it first
    surfaced as (a NaN often breaks something else first), each said once."""
    kept = checkpoint_step(run_dir)
    saved = (
        f"the last good checkpoint (env step {kept:,}) is kept" if kept is not None else "no checkpoint was written before it"
    )
    message = f"{problem}; {saved}"
    if first_seen is not None and not isinstance(first_seen, NonFiniteError) and str(first_seen) not in problem:
        first_line = (str(first_seen).splitlines() or [""])[0]
        message += f"; first seen as {type(first_seen).__name__}: {first_line}"
    return message
