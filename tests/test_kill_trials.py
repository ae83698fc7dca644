"""kill -9 at random moments, resume, and compare everything with an uninterrupted run.

Each trial starts ``python -m sparse_rl.run``, SIGKILLs it at a random moment of its training (one or two
kills), resumes it with ``resume=true`` until it completes, and compares with an uninterrupted run:
weights and masks (bit for bit), ``evaluations.npz``, ``progress.csv`` and the TensorBoard scalars (equal
except the wall-clock columns ``time/fps`` and ``time/time_elapsed``). A kill before the first checkpoint
is resumed by starting again from scratch. ``SPARSE_RL_KILL_TRIALS`` sets the trials per agent (default 1,
to stay within the CI budget) and ``SPARSE_RL_KILL_SEED`` replays a failing draw.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

CONFIGS = {
    "sac": ["agent=sac", "env=Pendulum", "agent.total_timesteps=600"],
    "dqn": ["agent=dqn", "env=CartPole", "agent.total_timesteps=800"],
}
COMMON = [
    "sparsity=rigl", "sparsity.update_interval=20", "agent.sb3.learning_starts=100", "agent.sb3.buffer_size=1000",
    "agent.net_arch=[32,32]", "agent.eval_freq=150", "agent.eval_episodes=2", "checkpoint_freq=150", "progress_bar=false",
]  # fmt: skip
WALL_CLOCK = {"time/fps", "time/time_elapsed"}
TRIALS = int(os.environ.get("SPARSE_RL_KILL_TRIALS", "1"))
SEED = int(os.environ.get("SPARSE_RL_KILL_SEED", str(random.SystemRandom().randrange(10**6))))


def command(agent: str, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sparse_rl.run", *CONFIGS[agent], *COMMON, f"run_dir={run_dir}", *extra]


def policy_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    with zipfile.ZipFile(run_dir / "model.zip") as archive:
        return torch.load(io.BytesIO(archive.read("policy.pth")), weights_only=True)


def progress_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "progress.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in csv.DictReader(f)]


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir))  # reads every event file, honouring purge_step
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"] if tag not in WALL_CLOCK}


def run_with_kills(agent: str, run_dir: Path, delays: list[float]) -> list[str]:
    """Start (then resume) the run, SIGKILLing it ``delays[i]`` seconds into its training; finish it. Returns a log."""
    log = []
    for i, delay in enumerate(delays):
        process = subprocess.Popen(command(agent, run_dir, *(["resume=true"] if i else [])), stderr=subprocess.PIPE)
        deadline = time.time() + 300
        while (
            not (run_dir / "summary.json").exists()
            or json.loads((run_dir / "summary.json").read_text() or "{}").get("status") != "running"
        ):
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.time() < deadline
            time.sleep(0.02)
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        meta = run_dir / "checkpoint" / "meta.json"
        at = json.loads(meta.read_text())["num_timesteps"] if meta.exists() else None
        log.append(f"kill {i + 1} after {delay:.2f} s (checkpoint at {at})")
    resumed = subprocess.run(command(agent, run_dir, "resume=true"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, f"{log}: {resumed.stderr[-3000:]}"
    return log


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reference(request, tmp_path_factory) -> tuple[str, Path, float]:
    run_dir = tmp_path_factory.mktemp(request.param) / "reference"
    subprocess.run(command(request.param, run_dir), check=True, capture_output=True, timeout=600)
    return request.param, run_dir, json.loads((run_dir / "summary.json").read_text())["wall_time_s"]


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill9_at_random_moments_resumes_to_the_uninterrupted_run(reference, trial, tmp_path):
    agent, reference_dir, wall = reference
    draw = random.Random(f"{SEED}-{agent}-{trial}")
    kills = 2 if (trial + (agent == "sac")) % 2 else 1  # SAC: two kills in its first trial, DQN: one
    delays = sorted(draw.uniform(0.0, 0.8 * wall) for _ in range(kills))
    delays = [delays[0]] + [b - a for a, b in zip(delays, delays[1:])]  # each resume re-runs from its checkpoint
    run_dir = tmp_path / "killed"
    log = run_with_kills(agent, run_dir, delays)
    where = f"SPARSE_RL_KILL_SEED={SEED} {agent} trial {trial}: {log}"

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary.get("exact_resume") is not False, where  # absent: restarted
    ours, theirs = policy_tensors(run_dir), policy_tensors(reference_dir)
    assert ours.keys() == theirs.keys() and any(k.endswith("weight_mask") for k in ours), where
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), f"{where}: {key}"
    with np.load(run_dir / "evaluations.npz") as a, np.load(reference_dir / "evaluations.npz") as b:
        for name in ("timesteps", "results", "ep_lengths"):
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{where}: {name}")
    assert progress_rows(run_dir) == progress_rows(reference_dir), where
    assert tensorboard_scalars(run_dir) == tensorboard_scalars(reference_dir), where
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".checkpoint.")], where
    print(where)
