"""Every env family we ship trains past a checkpoint, is interrupted, and resumes to the end (tiny budgets)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from experiment.plan import plan_run
from experiment.sb3 import train
from tests.agent_helpers import compose_run, crash_after_checkpoint

FAMILIES = [  # (agent, env, modules it needs, whether its state is captured exactly, extra overrides)
    ("dqn", "CartPole", (), True, []),
    ("sac", "HalfCheetah", ("mujoco",), True, []),
    ("sac", "dmc/cheetah-run", ("shimmy", "dm_control"), False, []),
    ("dqn", "minatar/breakout", ("minatar",), False, []),
    ("dqn", "atari/Pong", ("ale_py",), False, ["agent.sb3.batch_size=4", "agent.sb3.learning_starts=180"]),  # slow CNN
]
TINY = [
    "agent.total_timesteps=240",
    "agent.sb3.learning_starts=60",
    "agent.sb3.buffer_size=500",
    "agent.net_arch=[16,16]",
    "agent.eval_freq=1000",
    "agent.eval_episodes=1",
    "checkpoint_freq=100",
    "sparsity=rigl",
    "sparsity.update_interval=10",
    "progress_bar=false",
    "tensorboard=false",
]  # fmt: skip  (evaluation after the budget: an Atari episode is thousands of steps)


@pytest.mark.parametrize("agent, env, modules, exact, extra", FAMILIES, ids=[f[1] for f in FAMILIES])
def test_each_env_family_resumes_past_a_checkpoint(agent, env, modules, exact, extra, tmp_path, monkeypatch):
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    monkeypatch.setenv("MUJOCO_GL", "egl")
    overrides = [f"agent={agent}", f"env={env}", *TINY, *extra, f"run_dir={tmp_path / 'run'}"]
    with crash_after_checkpoint(monkeypatch):
        train(plan_run(compose_run(overrides)))
    assert json.loads((tmp_path / "run" / "checkpoint" / "meta.json").read_text())["num_timesteps"] == 100
    summary = train(plan_run(compose_run([*overrides, "resume=true"])))
    assert summary["status"] == "completed" and summary["num_timesteps"] == 240 and summary["engine"] == "sb3"
    assert summary["exact_resume"] is exact
