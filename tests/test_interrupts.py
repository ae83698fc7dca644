"""Stop signals (experiment/interrupts.py, issue 24): recorded, not raised; handed over once the run is saved."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from experiment.interrupts import DEFAULT_SIGNALS, StopNow, StopSignals, active
from experiment.run_dir import resume_command


def _send(signum: int) -> None:
    os.kill(os.getpid(), signum)  # delivered to the main thread before os.kill returns (CPython checks at once)


@pytest.fixture
def python_sigint() -> object:
    """Python's own SIGINT handler, as in an interactive start: a shell's background job (``cmd &``, nohup) starts
    with SIGINT ignored, and an ignored signal stays ignored (the last test)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_a_signal_is_recorded_not_raised_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals() as stop:
        assert active() is stop and not stop.requested
        _send(signal.SIGUSR1)
        assert stop.requested and stop.name == "SIGUSR1" and stop.exit_status == 128 + signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before and active() is None


def test_the_default_set_covers_ctrl_c_kill_and_the_scheduler_signals(python_sigint: object) -> None:
    assert set(DEFAULT_SIGNALS) == {"SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2"}
    with StopSignals() as stop:
        _send(signal.SIGINT)  # no KeyboardInterrupt
    assert stop.name == "SIGINT"


def test_a_second_signal_stops_at_once() -> None:
    with StopSignals(["SIGTERM"]) as stop:
        _send(signal.SIGTERM)
        with pytest.raises(StopNow):
            _send(signal.SIGTERM)
    assert stop.name == "SIGTERM"


def test_hand_over_exits_with_128_plus_the_signal_and_one_line(capsys: pytest.CaptureFixture) -> None:
    with StopSignals(["SIGUSR2"]) as stop:
        _send(signal.SIGUSR2)
    with pytest.raises(SystemExit) as exit_info:
        stop.hand_over("run x: interrupted; continue with resume=true")
    assert exit_info.value.code == 128 + signal.SIGUSR2
    assert capsys.readouterr().err == "run x: interrupted; continue with resume=true\n"


def test_hand_over_calls_the_previous_python_handler_first() -> None:
    seen: list[int] = []

    def requeue(signum: int, frame: object) -> None:  # e.g. submitit's SIGUSR2 handler, which requeues the job
        seen.append(signum)

    old = signal.signal(signal.SIGUSR2, requeue)
    try:
        with StopSignals() as stop:
            _send(signal.SIGUSR2)
            assert seen == []  # not while training
        with pytest.raises(SystemExit):
            stop.hand_over("saved")
        assert seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_python_default_sigint_handler_is_not_handed_over_to(python_sigint: object) -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with StopSignals() as stop:
        _send(signal.SIGINT)
    with pytest.raises(SystemExit) as exit_info:  # not KeyboardInterrupt
        stop.hand_over("saved")
    assert exit_info.value.code == 128 + signal.SIGINT


def test_an_ignored_signal_stays_ignored() -> None:
    old = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
            _send(signal.SIGUSR1)
        assert not stop.requested
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_the_continue_command_is_the_same_command_with_resume() -> None:
    assert resume_command(["agent=sac", "resume=false", "run_dir=a b"]) == (
        "python -m sparse_rl.run agent=sac 'run_dir=a b' resume=true"
    )
    assert resume_command(["-m", "seed=0,1", "+resume=true"]) == "python -m sparse_rl.run -m seed=0,1 resume=auto"


def test_unknown_signal_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown signal 'SIGFOO'"):
        StopSignals(["SIGFOO"])
    assert StopSignals(["usr1", signal.SIGTERM]).signals == (signal.SIGUSR1, signal.SIGTERM)


# ---------------------------------------------------------------- a real run, a real signal (issue 24)
ROOT = Path(__file__).resolve().parents[1]
SB3_RUN = [
    "agent=dqn", "env=CartPole", "sparsity=rigl", "agent.total_timesteps=1200", "agent.sb3.learning_starts=100",
    "agent.sb3.train_freq=4", "agent.eval_freq=300", "agent.eval_episodes=1", "agent.net_arch=[32,32]",
    "sparsity.update_interval=20",
    "checkpoint_freq=100000", "progress_bar=false", "tensorboard=false",
]  # fmt: skip
WALL_COLUMNS = {"time/fps", "time/time_elapsed"}


def _start(command: list[str]) -> subprocess.Popen:
    """Start ``command`` with SIGINT at its default (a background job of a shell may inherit it ignored)."""
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def _signal_when(process: subprocess.Popen, ready: Callable[[], bool], signum: int) -> tuple[str, str]:
    """Send ``signum`` once ``ready()`` (training is under way), then wait for the process to end."""
    deadline = time.monotonic() + 240
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signum)
    return process.communicate(timeout=240)


def _logged_rows(run_dir: Path) -> int:
    try:
        return len((run_dir / "progress.csv").read_text().splitlines()) - 1
    except FileNotFoundError:
        return 0


def _trained(run_dir: Path) -> bool:
    """Whether a logged row has ``train/n_updates`` (SB3 rewrites the CSV header when a new key appears)."""
    try:
        return "train/n_updates" in (run_dir / "progress.csv").read_text().split("\n", 1)[0]
    except FileNotFoundError:
        return False


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in WALL_COLUMNS} for row in csv.DictReader(f)]


def _policy(run_dir: Path) -> dict[str, torch.Tensor]:
    with zipfile.ZipFile(run_dir / "model.zip") as archive:
        return torch.load(io.BytesIO(archive.read("policy.pth")), weights_only=True)


def test_ctrl_c_checkpoints_records_the_step_says_how_to_continue_and_resumes_exactly(tmp_path: Path) -> None:
    straight, run_dir = tmp_path / "straight", tmp_path / "interrupted"
    command = [sys.executable, "-m", "sparse_rl.run", *SB3_RUN]
    subprocess.run([*command, f"run_dir={straight}"], cwd=ROOT, check=True, capture_output=True, timeout=300)

    process = _start([*command, f"run_dir={run_dir}"])
    _, err = _signal_when(process, lambda: _trained(run_dir), signal.SIGINT)
    assert process.returncode == 128 + signal.SIGINT
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    summary = json.loads((run_dir / "summary.json").read_text())
    step = summary["num_timesteps"]
    assert summary["status"] == "interrupted" and 100 < step < 1200  # after gradient steps began
    assert summary["interrupted"] == {"signal": "SIGINT", "checkpoint_step": step, "at_once": False}
    assert json.loads((run_dir / "checkpoint" / "meta.json").read_text())["num_timesteps"] == step  # none before it
    assert lines[0] == (
        f"{run_dir}: interrupted by SIGINT at env step {step:,} of 1,200; checkpoint at env step {step:,}; continue "
        f"with: {shlex.join(['python', '-m', 'sparse_rl.run', *SB3_RUN, f'run_dir={run_dir}', 'resume=true'])}"
    )
    resumed = subprocess.run([*command, f"run_dir={run_dir}", "resume=true"], cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from step {step:,}" in resumed.stdout
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    for name, tensor in _policy(straight).items():  # the interrupt's checkpoint continues exactly
        assert torch.equal(tensor, _policy(run_dir)[name]), name
    with np.load(straight / "evaluations.npz") as a, np.load(run_dir / "evaluations.npz") as b:
        assert all(np.array_equal(a[key], b[key]) for key in ("timesteps", "results", "ep_lengths"))
    assert _rows(straight / "progress.csv") == _rows(run_dir / "progress.csv")


POPULATION_RUN = [
    "-m", "hydra/launcher=population", "agent=dqn", "env=CartPole", "sparsity=rigl", "seed=0,1",
    "agent.total_timesteps=1500", "agent.sb3.learning_starts=100", "agent.sb3.train_freq=4", "agent.eval_freq=500",
    "agent.eval_episodes=1",
    "agent.net_arch=[16,16]", "checkpoint_freq=100000", "progress_bar=false", "tensorboard=false",
]  # fmt: skip


def test_sigterm_stops_a_population_with_a_checkpoint_and_it_resumes_exactly(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "sparse_rl.run", *POPULATION_RUN]
    straight, root = tmp_path / "straight", tmp_path / "interrupted"
    subprocess.run([*command, f"run_root={straight}"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    members = [Path("dqn/CartPole/rigl_s0.9") / f"seed_{seed}" for seed in (0, 1)]

    process = _start([*command, f"run_root={root}"])
    _, err = _signal_when(process, lambda: _logged_rows(root / members[0]) >= 1, signal.SIGTERM)
    assert process.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted by SIGTERM at env step" in lines[0], err
    (meta,) = root.glob(".populations/*/checkpoint/meta.json")
    step = json.loads(meta.read_text())["num_timesteps"]
    assert 0 < step < 1500 and f"checkpoint at env step {step:,}; continue with: " in lines[0]
    assert lines[0].endswith(" resume=auto")  # a sweep: also starts any job that never ran
    for member in members:
        summary = json.loads((root / member / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["num_timesteps"] == step
        assert summary["interrupted"] == {"signal": "SIGTERM", "checkpoint_step": step, "at_once": False}

    resumed = subprocess.run([*command, f"run_root={root}", "resume=auto"], cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from step {step:,}" in resumed.stdout
    for member in members:
        assert json.loads((root / member / "summary.json").read_text())["status"] == "completed"
        for name, tensor in _policy(straight / member).items():
            assert torch.equal(tensor, _policy(root / member)[name]), (member, name)
        with np.load(straight / member / "evaluations.npz") as a, np.load(root / member / "evaluations.npz") as b:
            assert all(np.array_equal(a[key], b[key]) for key in ("timesteps", "results", "ep_lengths"))
