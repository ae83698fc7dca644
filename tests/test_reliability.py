"""Reliability: exact resume after SIGKILL, clear errors on bad input, NaN guard, corrupt files, safe loading."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from experiment.layout import atomic_write, atomic_write_json
from experiment.plan import UsageError, plan_run
from experiment.sb3 import train
from tests.agent_helpers import compose_run, tiny_run

RESUMABLE = [
    "agent=sac", "env=Pendulum", "sparsity=rigl", "agent.total_timesteps=1200", "agent.sb3.learning_starts=100",
    "agent.eval_freq=200", "agent.eval_episodes=1", "agent.net_arch=[32,32]", "sparsity.update_interval=20",
    "checkpoint_freq=400", "progress_bar=false",
]  # fmt: skip


def command(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sparse_rl.run", *RESUMABLE, f"run_dir={run_dir}", *extra]


def policy_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The policy state dict inside ``folder/model.zip`` (a run or a checkpoint directory)."""
    with zipfile.ZipFile(folder / "model.zip") as archive:
        return torch.load(io.BytesIO(archive.read("policy.pth")), weights_only=True)


def logged_steps(run_dir: Path) -> list[str]:
    with open(run_dir / "progress.csv") as f:
        return [row["time/total_timesteps"] for row in csv.DictReader(f)]


def interrupted(run_dir: Path) -> None:
    """Make a completed run look killed after its last checkpoint (a completed run is never resumed)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    atomic_write_json(run_dir / "summary.json", {**summary, "status": "running"})


def test_resume_rejects_another_architecture_and_corrupt_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    train(plan_run(tiny_run("dqn", "set", run_dir, "checkpoint_freq=100")))
    interrupted(run_dir)
    with pytest.raises(UsageError, match=r"agent.net_arch=\[32, 32\], this config has agent.net_arch=\[64, 64\]"):
        plan_run(tiny_run("dqn", "set", run_dir, "resume=true", "agent.net_arch=[64,64]"))
    with pytest.raises(UsageError, match=r"sparsity.sparsity=0.9, this config has sparsity.sparsity=0.5"):
        plan_run(tiny_run("dqn", "set", run_dir, "resume=true", "sparsity.sparsity=0.5"))
    model = run_dir / "checkpoint" / "model.zip"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # truncated by a crash mid-copy
    with pytest.raises(UsageError, match="corrupt"):
        plan_run(tiny_run("dqn", "set", run_dir, "resume=true"))


def test_checkpoint_loading_executes_no_code(tmp_path):
    run_dir = tmp_path / "run"
    train(plan_run(tiny_run("dqn", "static", run_dir, "checkpoint_freq=100")))
    interrupted(run_dir)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"masks": Payload()}, run_dir / "checkpoint" / "controller.pt")
    with pytest.raises(UsageError, match="corrupt"):
        plan_run(tiny_run("dqn", "static", run_dir, "resume=true"))
    assert not (tmp_path / "pwned").exists()


def test_nan_stops_the_run_naming_group_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_run(
        "sac", "static", run_dir, "agent.sb3.learning_rate=1e30", "checkpoint_freq=100", "nan_check_freq=10",
        "agent.total_timesteps=600",
    )  # fmt: skip
    with pytest.raises(Exception, match=r"non-finite (weight|bias) in group '(actor|critic)' layer .* at env step \d+"):
        train(plan_run(cfg))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "non-finite" in summary["error"]
    assert json.loads((run_dir / "checkpoint" / "meta.json").read_text())["num_timesteps"] == 100
    assert all(torch.isfinite(t).all() for t in policy_tensors(run_dir / "checkpoint").values())


def test_atomic_write_never_leaves_a_truncated_file(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"status": "completed", "score": 1.0})

    def crash(tmp: Path) -> None:
        tmp.write_text('{"status": "compl')  # half written ...
        raise KeyboardInterrupt  # ... then killed

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert json.loads(path.read_text()) == {"score": 1.0, "status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


# ---------------------------------------------------------------- bad input
BASE = ["agent.total_timesteps=300", "progress_bar=false"]
USAGE_ERRORS = [
    (["sparsity=rigl", "sparsity.sparsity=1.0"], r"sparsity must be in \[0, 1\), got 1.0"),
    (["sparsity=rigl", "sparsity.sparsity=-0.1"], r"sparsity must be in \[0, 1\)"),
    (["sparsity=set", "sparsity.sparsity=1.5"], r"sparsity must be in \[0, 1\)"),
    (["sparsity=rigl", "sparsity.actor=1.0"], r"actor sparsity must be in \[0, 1\)"),
    (["sparsity=rigl", "sparsity.critic=-0.5"], r"critic sparsity must be in \[0, 1\)"),
    (["sparsity=rigl", "sparsity.q=0.5"], "sparsity.q is not a group of agent 'sac'; its groups: actor, critic"),
    (["agent=dqn", "env=CartPole", "sparsity=rigl", "sparsity.actor=0.5"], "not a group of agent 'dqn'; its groups: q"),
    (["sparsity.actor=0.5"], "per-group sparsity overrides need a sparse method"),
    (["agent=dqn", "env=HalfCheetah"], "agent 'dqn' needs a discrete action space but env 'HalfCheetah' is continuous"),
    (["agent=dqn", "env=dmc/cheetah-run"], "needs a discrete action space"),
    (["agent=sac", "env=CartPole"], "agent 'sac' needs a continuous action space but env 'CartPole' is discrete"),
    (["agent=sac", "env=atari/Pong"], "needs a continuous action space"),
    (["agent.total_timesteps=0"], "agent.total_timesteps must be positive, got 0"),
    (["agent.total_timesteps=-5"], "agent.total_timesteps must be positive"),
    (["agent.n_envs=0"], "agent.n_envs must be positive"),
    (["agent.eval_freq=0"], "agent.eval_freq must be positive"),
    (["agent.eval_episodes=0"], "agent.eval_episodes must be positive"),
    (["checkpoint_freq=-1"], "checkpoint_freq must be >= 0"),
    (["torch_threads=0"], "torch_threads must be positive"),
    (["agent.lr_schedule=cosine"], "unknown agent.lr_schedule 'cosine'; valid choices: constant, linear"),
    (["sparsity=set", "sparsity.drop_fraction=1.5"], r"drop_fraction must be in \[0, 1\]"),
    (["sparsity=set", "sparsity.update_interval=0"], "update_interval must be a positive number of steps"),
    (["sparsity=prune", "sparsity.start_fraction=0.9", "sparsity.end_fraction=0.2"], "start_fraction <= end_fraction"),
    (["sparsity=set", "sparsity.distribution=gaussian"], "unknown distribution 'gaussian'; valid choices: er, erk, uniform"),
    (["sparsity=set", "sparsity.drop_fraction_schedule=step"], "valid choices: constant, cosine"),
    (["sparsity=prune", "sparsity.prune_power=0"], "prune_power must be >= 1"),
    (["sparsity.wide=true"], "sparsity.wide=true widens a sparse network"),
    (["agent=dqn", "env=atari/Pong", "sparsity=dense_matched"], "image observations"),
    (["resume=true"], "has no checkpoint to resume from"),
]
COMPOSE_ERRORS = [
    (["agent=a2c"], "Could not find 'agent/a2c'"),
    (["env=Nope"], "Could not find 'env/Nope'"),
    (["sparsity=lottery"], "Could not find 'sparsity/lottery'"),
    (["sparsity.sparsty=0.9"], "sparsty"),
    (["agent.total_timestep=10"], "Could not override 'agent.total_timestep'"),
    (["sparsity.sparsity=abc"], "Error merging override sparsity.sparsity=abc"),
    (["seed=zero"], "Error merging override seed=zero"),
]


@pytest.mark.parametrize("overrides, message", USAGE_ERRORS, ids=[" ".join(o) for o, _ in USAGE_ERRORS])
def test_bad_input_is_one_clear_error_before_anything_is_written(overrides, message, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(UsageError, match=message) as error:
        plan_run(compose_run([*BASE, *overrides, f"run_dir={run_dir}"]))
    assert "\n" not in str(error.value)
    assert not run_dir.exists()


@pytest.mark.parametrize("overrides, message", COMPOSE_ERRORS, ids=[" ".join(o) for o, _ in COMPOSE_ERRORS])
def test_unknown_choices_and_misspelled_keys_fail_at_composition(overrides, message):
    with pytest.raises((HydraException, OmegaConfBaseException), match=message) as error:
        compose_run([*BASE, *overrides])
    cause = str(error.value.__cause__ or "")
    assert not cause or any(word in cause for word in ("not in", "Value", "convert", "could not")), cause


def test_an_existing_run_is_never_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    train(plan_run(tiny_run("dqn", "dense", run_dir)))
    before = (run_dir / "summary.json").read_text()
    for resume in ("false", "true"):
        with pytest.raises(UsageError, match=r"holds a completed run .300 env steps.; it is left untouched"):
            plan_run(tiny_run("dqn", "dense", run_dir, f"resume={resume}"))
    assert (run_dir / "summary.json").read_text() == before
    interrupted(run_dir)
    with pytest.raises(UsageError, match="already holds a run; pass resume=true"):
        plan_run(tiny_run("dqn", "dense", run_dir))


@pytest.mark.parametrize(
    "overrides, message",
    [(["sparsity=rigl", "sparsity.sparsity=1.0"], "error: sparsity must be in [0, 1), got 1.0"),
     (["agent=dqn", "env=HalfCheetah"], "error: agent 'dqn' needs a discrete action space")],
)  # fmt: skip
def test_cli_reports_one_line_and_leaves_no_directory(overrides, message, tmp_path):
    run_dir = tmp_path / "runs" / "x"
    result = subprocess.run(
        [sys.executable, "-m", "sparse_rl.run", *overrides, f"run_dir={run_dir}"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip().splitlines()[0]]
    assert result.stderr.startswith(message)
    assert not (tmp_path / "runs").exists()
