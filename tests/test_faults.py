"""Faults on both training paths (issue 24): a full disk while checkpointing, damaged population checkpoints, a live
holder, NaN reports, and what a run says (start line, progress ETA, rounded scores, the same fields on both paths)."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import experiment.population_records
import experiment.progress
import experiment.sb3
from experiment.plan import plan_run
from experiment.population import run_jobs
from experiment.progress import Budget, RunProgress, StepCosts, start_line
from experiment.sb3 import run_job, train
from experiment.summary import format_score
from sparse_rl.controller import NonFiniteError
from tests.agent_helpers import compose_run, tiny_run

ROOT = Path(__file__).resolve().parents[1]
SB3_RUN = [
    "agent=dqn", "env=CartPole", "sparsity=rigl", "agent.total_timesteps=600", "agent.sb3.learning_starts=100",
    "agent.eval_freq=200", "agent.eval_episodes=1", "agent.net_arch=[32,32]", "sparsity.update_interval=20",
    "checkpoint_freq=200", "progress_bar=false", "tensorboard=false",
]  # fmt: skip
POPULATION = [
    "agent=dqn", "env=CartPole", "sparsity=rigl", "agent.total_timesteps=600", "agent.sb3.learning_starts=100",
    "agent.eval_freq=200", "agent.eval_episodes=1", "agent.net_arch=[16,16]", "checkpoint_freq=200",
    "progress_bar=false", "tensorboard=false",
]  # fmt: skip
MEMBER_DIRS = [Path("dqn/CartPole/rigl_s0.9") / f"seed_{seed}" for seed in (0, 1)]


def _policy(run_dir: Path) -> dict[str, torch.Tensor]:
    with zipfile.ZipFile(run_dir / "model.zip") as archive:
        return torch.load(io.BytesIO(archive.read("policy.pth")), weights_only=True)


def _assert_same_run(a: Path, b: Path) -> None:
    for name, tensor in _policy(a).items():
        assert torch.equal(tensor, _policy(b)[name]), name
    with np.load(a / "evaluations.npz") as x, np.load(b / "evaluations.npz") as y:
        assert all(np.array_equal(x[key], y[key]) for key in ("timesteps", "results", "ep_lengths"))


def _fail_from_the_nth_call(monkeypatch: pytest.MonkeyPatch, module: object, name: str, n: int) -> None:
    """``module.name`` raises ENOSPC (a full disk) from its ``n``-th call on, after writing half a file."""
    real, calls = getattr(module, name), []

    def write(*args, **kwargs):
        calls.append(1)
        if len(calls) >= n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, write)


# ---------------------------------------------------------------- a full disk while checkpointing
def test_sb3_disk_full_is_one_line_records_the_failure_keeps_the_checkpoint_and_resumes_exactly(tmp_path, monkeypatch):
    straight, run_dir = tmp_path / "straight", tmp_path / "full"
    train(plan_run(compose_run([*SB3_RUN, f"run_dir={straight}"])))
    with monkeypatch.context() as patch:
        _fail_from_the_nth_call(patch, experiment.sb3, "save_training_state", 2)  # the checkpoint at 400 fails
        with pytest.raises(SystemExit) as exit_info:
            run_job(compose_run([*SB3_RUN, f"run_dir={run_dir}"]), multirun=False)
    message = str(exit_info.value.code)
    assert message == (
        f"error: cannot write the checkpoint of env step 400 in {run_dir} (No space left on device); the checkpoint "
        "of env step 200 is intact; free space, then continue with resume=true"
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]  # not 'running'
    assert json.loads((run_dir / "checkpoint" / "meta.json").read_text())["num_timesteps"] == 200
    assert not list(run_dir.glob(".checkpoint.*"))  # the partial copy is gone (its space freed)
    assert run_job(compose_run([*SB3_RUN, f"run_dir={run_dir}", "resume=true"]), multirun=False) is not None
    _assert_same_run(straight, run_dir)


def test_population_disk_full_is_one_line_records_the_failure_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    def jobs(root: Path, *extra: str) -> list:
        cfgs = [compose_run([*POPULATION, f"seed={seed}", f"run_root={root}", *extra]) for seed in (0, 1)]
        return run_jobs(cfgs, "cpu", False, 64, 0)

    jobs(tmp_path / "straight")
    root = tmp_path / "full"
    with monkeypatch.context() as patch:
        _fail_from_the_nth_call(patch, experiment.population_records.torch, "save", 2)  # the checkpoint at 400 fails
        capsys.readouterr()
        failed = jobs(root)
    assert all("No space left on device" in job.failed and job.score is None for job in failed)  # for the exit status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "FAILED: cannot write the checkpoint of env step 400" in err[0], err
    assert "No space left on device); the checkpoint of env step 200 is intact" in err[0]
    (meta,) = root.glob(".populations/*/checkpoint/meta.json")
    assert json.loads(meta.read_text())["num_timesteps"] == 200
    for member in MEMBER_DIRS:
        summary = json.loads((root / member / "summary.json").read_text())
        assert summary["status"] == "failed" and "No space left on device" in summary["error"]
    assert not list(root.glob(".populations/*/.checkpoint.*"))
    jobs(root, "resume=true")
    for member in MEMBER_DIRS:
        assert json.loads((root / member / "summary.json").read_text())["status"] == "completed"
        _assert_same_run(tmp_path / "straight" / member, root / member)


# ---------------------------------------------------------------- population checkpoints are checked
def _population_with_checkpoint(root: Path) -> Path:
    """A population killed after its checkpoint at 200 (its members' summaries say running)."""
    cfgs = [compose_run([*POPULATION, f"seed={seed}", f"run_root={root}"]) for seed in (0, 1)]
    run_jobs(cfgs, "cpu", False, 64, 0)
    for member in MEMBER_DIRS:
        path = root / member / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "status": "running"}))
    (folder,) = root.glob(".populations/*")
    return folder


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["state.pt", "state.json", "meta.json"])
def test_a_truncated_population_checkpoint_is_one_line_naming_the_file_and_changes_nothing(name, tmp_path, capsys):
    folder = _population_with_checkpoint(tmp_path)
    path = folder / "checkpoint" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = _snapshot(tmp_path)
    capsys.readouterr()
    cfgs = [compose_run([*POPULATION, f"seed={seed}", f"run_root={tmp_path}", "resume=true"]) for seed in (0, 1)]
    jobs = run_jobs(cfgs, "cpu", False, 64, 0)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"SKIPPED: checkpoint file {path} is corrupt" in err[0], err
    assert all(job.skipped and job.score is None for job in jobs)
    assert _snapshot(tmp_path) == before


def test_leftover_staging_folders_of_a_population_are_removed_on_the_next_start(tmp_path, capsys):
    folder = _population_with_checkpoint(tmp_path)
    (folder / ".checkpoint.k1ll3d").mkdir()
    (folder / ".checkpoint.k1ll3d" / "state.pt").write_bytes(b"half")
    capsys.readouterr()
    cfgs = [compose_run([*POPULATION, f"seed={seed}", f"run_root={tmp_path}", "resume=true"]) for seed in (0, 1)]
    run_jobs(cfgs, "cpu", False, 64, 0)
    assert f"note: removed {folder / '.checkpoint.k1ll3d'}, left by an interrupted write" in capsys.readouterr().out
    assert not list(folder.glob(".checkpoint.*"))


@contextlib.contextmanager
def _held(run_dir: Path) -> Iterator[subprocess.Popen]:
    """Another live process holding ``run_dir``'s lock for the block."""
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; from experiment.lock import hold_run_dir\n"
            f"with hold_run_dir({str(run_dir)!r}):\n    print('held', flush=True); time.sleep(120)"
        )], cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- a live holder
@pytest.mark.parametrize("resume", [True, False])
def test_a_population_on_directories_a_live_process_holds_changes_nothing_and_names_it(resume, tmp_path, capsys):
    _population_with_checkpoint(tmp_path)
    with _held(tmp_path / MEMBER_DIRS[1]) as holder:
        before = _snapshot(tmp_path)
        capsys.readouterr()
        cfgs = [compose_run([*POPULATION, f"seed={seed}", f"run_root={tmp_path}", f"resume={resume}"]) for seed in (0, 1)]
        jobs = run_jobs(cfgs, "cpu", False, 64, 0)
        err = capsys.readouterr().err
        assert f"in use by another process: host {__import__('socket').gethostname()}, pid {holder.pid}" in err
        assert all(job.score is None for job in jobs)
        assert _snapshot(tmp_path) == before  # no summary.json written, nothing else either


def test_a_population_sweep_refused_by_a_live_holder_leaves_multirun_yaml_alone(tmp_path):
    """Through the command: failed before, the refused sweep rewrote the live sweep's multirun.yaml."""
    _population_with_checkpoint(tmp_path)
    (tmp_path / "multirun.yaml").write_text("# the live sweep's\n")
    with _held(tmp_path / MEMBER_DIRS[1]) as holder:
        before = _snapshot(tmp_path)
        command = [sys.executable, "-m", "sparse_rl.run", "-m", "hydra/launcher=population", *POPULATION]
        proc = subprocess.run(
            [*command, "seed=0,1", f"run_root={tmp_path}", "resume=true"], cwd=ROOT, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert proc.returncode != 0 and f"pid {holder.pid}" in proc.stderr
        assert _snapshot(tmp_path) == before


# ---------------------------------------------------------------- NaN reports
@pytest.mark.parametrize("checkpoint_freq", [100, 0])
def test_nan_message_says_whether_a_good_checkpoint_exists_once(checkpoint_freq, tmp_path):
    cfg = tiny_run(
        "sac", "static", tmp_path / "run", "agent.sb3.learning_rate=1e30", f"checkpoint_freq={checkpoint_freq}",
        "nan_check_freq=10", "agent.total_timesteps=600",
    )  # fmt: skip
    with pytest.raises(NonFiniteError) as error:
        train(plan_run(cfg))
    message = str(error.value)
    assert message.count("non-finite") == 1 and "NonFiniteError" not in message
    if checkpoint_freq:
        assert "; the last good checkpoint (env step 100) is kept" in message
    else:
        assert "; no checkpoint was written before it" in message and "checkpoint is kept" not in message


# ---------------------------------------------------------------- what a run says
def test_scores_print_rounded() -> None:
    assert format_score(-2.3381925999999997) == "-2.338"
    assert format_score(4512.345) == "4512" and format_score(499.99999) == "500"
    assert format_score(None) == "none"


def test_start_line_says_where_how_much_from_where_and_how_long() -> None:
    budget = Budget(1_000_000, 10_000, lambda t: max(t - 10_000, 0))
    costs = StepCosts(env_step_s=0.0005, gradient_step_s=0.005)
    line = start_line("runs/sac/HalfCheetah/dense_s0.0/seed_0", budget, 0, costs)
    # 1M env steps at 0.5 ms + 990k gradient steps at 5 ms = 500 s + 4950 s
    assert line == (
        "runs/sac/HalfCheetah/dense_s0.0/seed_0: 1,000,000 env steps (10,000 warm-up, 990,000 gradient steps); "
        "estimate on this machine: 1.5 h (0.5 ms per env step, 5 ms per gradient step)"
    )
    assert ", resuming from step 500,000; estimate on this machine: 46 min" in start_line("r", budget, 500_000, costs)


def test_progress_eta_does_not_jump_when_gradient_steps_begin(monkeypatch) -> None:
    """Warm-up at 1 ms per step, training at 10 ms: the ETA stays near the true time left throughout (a plain
    average over the warm-up would promise 1/10 of it and then jump)."""
    clock = [0.0]
    monkeypatch.setattr(experiment.progress.time, "perf_counter", lambda: clock[0])
    budget = Budget(20_000, 5_000, lambda t: max(t - 5_000, 0))
    costs = StepCosts(env_step_s=0.0008, gradient_step_s=0.008)  # a probe within 20% of the truth
    progress = RunProgress("test", budget, 0, costs, enabled=True)
    progress.bar.disable = True  # nothing printed; the ETA is still computed
    worst = 0.0
    for step in range(1, 20_001):
        clock[0] += 0.001 if step <= 5_000 else 0.010
        progress.update(step)
        if step % 500 == 0 and step < 20_000:
            true_left = max(5_000 - step, 0) * 0.001 + (20_000 - max(step, 5_000)) * 0.010
            worst = max(worst, abs(progress.eta() - true_left) / true_left)
    progress.close()
    assert worst < 0.15  # the probe's 12% error until training is measured; exact after
    naive_at_warmup_end = 15_000 * 5.0 / 5_000  # tqdm's average rate over the warm-up: 15 s for what takes 150 s
    assert naive_at_warmup_end < 0.15 * 150


def _columns(run_dir: Path) -> set[str]:
    with open(run_dir / "progress.csv") as f:
        return set(next(csv.reader(f)))


def test_population_members_record_the_sb3_paths_fields(tmp_path) -> None:
    sb3_dir = tmp_path / "sb3"
    train(plan_run(compose_run([*POPULATION, f"run_dir={sb3_dir}", "diagnostics.freq=0"])))
    run_jobs([compose_run([*POPULATION, "seed=0", f"run_root={tmp_path / 'pop'}"])], "cpu", False, 64, 0)
    member = tmp_path / "pop" / MEMBER_DIRS[0]
    for key in ("train/n_updates", "train/learning_rate", "time/time_elapsed"):
        assert key in _columns(sb3_dir) and key in _columns(member), key
    assert _columns(sb3_dir) <= _columns(member)
    ours, theirs = json.loads((member / "summary.json").read_text()), json.loads((sb3_dir / "summary.json").read_text())
    assert ours["checks"] == theirs["checks"] == {"final_allocation": "passed"}
    assert set(theirs) - set(ours) <= {"exact_resume"}  # the population records no env-family resume note
    assert "this member's" in ours["timing"]  # one member: its rate is the population's
    assert ours["population"]["env_steps_per_s"] == pytest.approx(ours["env_steps_per_s"])
    # same meaning: the same learning rate; n_updates = gradient steps so far: one per env step after the 100 warm-up
    # steps, logged during an env step before its update (SB3's OffPolicyAlgorithm.collect_rollouts), so step - 101
    assert _logged(member, "train/learning_rate") == _logged(sb3_dir, "train/learning_rate") == {0.001}
    assert _logged(member, "train/n_updates", offset=True) == _logged(sb3_dir, "train/n_updates", offset=True) == {101}


def _logged(run_dir: Path, key: str, offset: bool = False) -> set[float]:
    """The values of ``key`` in ``progress.csv`` (``offset``: env step minus the value, per row)."""
    with open(run_dir / "progress.csv") as f:
        rows = [row for row in csv.DictReader(f) if row[key]]
    return {int(row["time/total_timesteps"]) - int(row[key]) if offset else float(row[key]) for row in rows}


def test_the_time_probe_leaves_the_run_unchanged(tmp_path) -> None:
    """progress_bar=true probes the machine before building the run; the run draws exactly what it draws unprobed."""
    quiet, probed = tmp_path / "quiet", tmp_path / "probed"
    train(plan_run(compose_run([*SB3_RUN, f"run_dir={quiet}"])))
    start = time.perf_counter()
    train(plan_run(compose_run([*SB3_RUN, f"run_dir={probed}", "progress_bar=true"])))
    assert time.perf_counter() - start < 120
    _assert_same_run(quiet, probed)


def test_a_failing_time_probe_costs_only_the_estimate(capsys) -> None:
    def broken() -> StepCosts:
        raise RuntimeError("no such kernel\nsecond line")

    assert experiment.progress.probe(broken) is None
    assert capsys.readouterr().out == "note: no time estimate (RuntimeError: no such kernel)\n"
