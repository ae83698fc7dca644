"""Bad input on both training paths (issue 24): every case is a real ``python -m sparse_rl.run`` process, plain (the
SB3 path) and with ``-m hydra/launcher=population`` (the population engine), and each must exit non-zero with exactly
one line, ``error: ...``, and create nothing under ``run_root`` (nor anywhere beside it)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agents.rules import SB3_RULES, Range, check_agent_values
from experiment.cli import POPULATION_LAUNCHER, choice_message, closest_choices, group_options, override_problem

PATHS = {"sb3": [], "population": ["-m", "hydra/launcher=population"]}
BASE = ["agent=dqn", "env=CartPole", "agent.total_timesteps=200", "progress_bar=false"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
# (overrides, the start of the line after "error: "); {tmp} is the test's folder
CASES = [
    (["env=cartpole"], "unknown env 'cartpole'; closest valid choices: CartPole"),
    (["env=HalfCheetah-v5"], "unknown env 'HalfCheetah-v5'; closest valid choices: HalfCheetah"),
    (["env=breakout"], "unknown env 'breakout'; closest valid choices: atari/Breakout, minatar/breakout"),
    (["sparsity=rig1"], "unknown sparsity 'rig1'; closest valid choices: rigl"),
    (["agent=DQN"], "unknown agent 'DQN'; closest valid choices: dqn"),
    (["sparsity=rigl", "sparsity.sparsity=abc"], "sparsity.sparsity=abc: Value 'abc' of type 'str' could not be"),
    (["agent.sb3.learning_rate=-1"], "agent.sb3.learning_rate must be positive, got -1"),
    (["agent.sb3.learning_rate=nan"], "agent.sb3.learning_rate must be a finite number positive, got nan"),
    (["agent.sb3.batch_size=200000"], "agent.sb3.batch_size=200000 is larger than agent.sb3.buffer_size (100000)"),
    (["agent.sb3.gamma=1.5"], "agent.sb3.gamma must be in (0, 1], got 1.5"),
    (["sparsity=rigl", "sparsity.ift=wide"], "unknown sparsity.ift 'wide'; valid choices: doped, factorized, parallel, null"),
    (["+agent.sb3.policy_kwargs.optimizer_kwargs.eps=0"], "agent.sb3.policy_kwargs.optimizer_kwargs.eps must be positive"),
    pytest.param(["device=cuda"], "device=cuda but CUDA is not available", marks=NO_CUDA),
    (["run_root={tmp}/a_file"], "run_root={tmp}/a_file: {tmp}/a_file is a file, not a folder"),
    pytest.param(  # a file system that refuses writes even to root (sysfs); permission bits do not stop root
        ["run_root=/sys/sparse_rl_runs"], "run_root=/sys/sparse_rl_runs: cannot write in /sys",
        marks=pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs"),
    ),
]  # fmt: skip


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("overrides, message", CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_input_is_one_line_nonzero_and_creates_nothing(path, overrides, message, tmp_path):
    (tmp_path / "a_file").write_text("not a folder\n")
    runs = tmp_path / "runs"
    before = _tree(tmp_path)
    argv = [*PATHS[path], *BASE, f"run_root={runs}", *(o.format(tmp=tmp_path) for o in overrides)]
    result = subprocess.run([sys.executable, "-m", "sparse_rl.run", *argv], capture_output=True, text=True, timeout=180)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {message.format(tmp=tmp_path)}"), lines[0]
    assert _tree(tmp_path) == before and not runs.exists()


@NO_CUDA
def test_the_population_engine_on_cuda_without_cuda_is_one_line_before_anything_exists(tmp_path):
    runs = tmp_path / "runs"
    argv = ["-m", "hydra/launcher=population", "hydra.launcher.device=cuda", *BASE, f"run_root={runs}", "seed=0,1"]
    result = subprocess.run([sys.executable, "-m", "sparse_rl.run", *argv], capture_output=True, text=True, timeout=180)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, lines
    assert lines[0].startswith("error: hydra.launcher.device=cuda but CUDA is not available"), lines
    assert not runs.exists()


def test_a_sweep_is_refused_only_when_every_job_is(tmp_path):
    from experiment.cli import jobs_problem

    runs = f"run_root={tmp_path / 'runs'}"
    every = jobs_problem([*BASE, runs, "agent.sb3.gamma=2", "seed=0,1,2"], multirun=True)
    assert every == "agent.sb3.gamma must be in (0, 1], got 2 (each of the sweep's 3 jobs)"
    mixed = jobs_problem([*BASE, runs, "agent.sb3.gamma=2,-1"], multirun=True)
    assert mixed == "every one of the sweep's 2 jobs is refused; the first: agent.sb3.gamma must be in (0, 1], got 2"
    assert jobs_problem([*BASE, runs, "agent.sb3.gamma=2,0.99"], multirun=True) is None  # the second job trains

    assert override_problem([*BASE, "sparsity=rigl", "sparsity.sparsity=0.5,abc"]).startswith("sparsity.sparsity=abc: ")
    assert override_problem([*BASE, "sparsity=dense,rigl,lottery"]).startswith("unknown sparsity 'lottery'")
    assert not (tmp_path / "runs").exists()


# in-process (the same check the command runs before Hydra, without a process each): more values of the table above
MORE_CASES = [
    (["env=cheetah-run"], "unknown env 'cheetah-run'; closest valid choices: dmc/cheetah-run"),
    (["agent.sb3.tau=0"], "agent.sb3.tau must be in (0, 1], got 0"),
    (["agent.sb3.learning_starts=-5"], "agent.sb3.learning_starts must be >= 0, got -5"),
    (["agent.sb3.exploration_final_eps=2"], "agent.sb3.exploration_final_eps must be in [0, 1], got 2"),
    (["agent.sb3.target_update_interval=0"], "agent.sb3.target_update_interval must be positive, got 0"),
    (["agent.sb3.gradient_steps=-2"], "agent.sb3.gradient_steps must be positive or -1, got -2 (-1: as many as env steps)"),
    (["agent.sb3.max_grad_norm=0"], "agent.sb3.max_grad_norm must be positive, got 0 (.inf: no clipping)"),
    (["agent.sb3.buffer_size=2.5"], "agent.sb3.buffer_size must be an integer, got 2.5"),
    (["agent.sb3.learning_rate=inf"], "agent.sb3.learning_rate must be a finite number positive, got inf"),
    (["agent.sb3.learning_rate=fast"], "agent.sb3.learning_rate must be a number positive, got 'fast'"),
    (["agent.total_timesteps=-1"], "agent.total_timesteps must be positive, got -1"),
    (["agent.weight_decay=-1e-4"], "agent.weight_decay must be >= 0, got -0.0001"),
    (["seed=-3"], "seed must be in [0, 4294967295], got -3"),
    (["nan_check_freq=0"], "nan_check_freq must be positive, got 0"),
    (["run_root={tmp}/a_file/runs"], "run_root={tmp}/a_file/runs: {tmp}/a_file is a file, not a folder"),
    (["agent=sac", "env=Pendulum", "agent.sb3.ent_coef=-1"], "agent.sb3.ent_coef must be >= 0 or auto, got -1"),
    (["agent=sac", "env=Pendulum", "agent.sb3.ent_coef=auto_0.1"], None),
    (["agent=ppo", "agent.sb3.n_steps=32", "agent.sb3.batch_size=64"],
     "agent.sb3.batch_size=64 is larger than agent.sb3.n_steps x agent.n_envs (32)"),
    (["agent=ppo", "agent.sb3.gae_lambda=1.2"], "agent.sb3.gae_lambda must be in [0, 1], got 1.2"),
    (["agent=td3", "env=Pendulum", "agent.sb3.policy_delay=0"], "agent.sb3.policy_delay must be positive, got 0"),
]  # fmt: skip


@pytest.mark.parametrize("overrides, message", MORE_CASES, ids=[" ".join(o) for o, _ in MORE_CASES])
def test_more_bad_values_are_one_line_before_hydra(overrides, message, tmp_path):
    from experiment.cli import jobs_problem

    (tmp_path / "a_file").write_text("not a folder\n")
    runs = tmp_path / "runs"
    argv = [*BASE, f"run_root={runs}", *(o.format(tmp=tmp_path) for o in overrides)]
    problem = override_problem(argv) or jobs_problem(argv, multirun=False)
    if message is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(message.format(tmp=tmp_path)) and "\n" not in problem, problem
    assert not runs.exists()


# ------------------------------------------------------------------------------------------- the pieces
def test_closest_choices_ignore_case_and_find_nested_envs_by_their_last_part():
    envs = group_options("env")
    assert closest_choices("CARTPOLE", envs)[0] == "CartPole"
    assert closest_choices("walker-walk", envs)[:2] == ["dmc/walker-walk", "dmc/walker-run"]
    assert "minatar/space_invaders" in closest_choices("space_invaders", envs)
    assert closest_choices("zzzzzz", envs) == []
    message = choice_message("env", "zzzzzz", envs)
    assert "\n" not in message and "atari/..., dmc/..., minatar/..." in message and "--help" in message


def test_population_launcher_constant_names_the_launcher_class():
    from hydra_plugins.sparse_rl_population.population_launcher import PopulationLauncher

    assert POPULATION_LAUNCHER == f"{PopulationLauncher.__module__}.{PopulationLauncher.__qualname__}"


@pytest.mark.parametrize(
    "rule, good, bad",
    [
        (Range(low=0, low_open=True), [1e-9, 3], [0, -1, math.nan, math.inf, "x", True]),
        (Range(low=0, high=1, low_open=True), [1, 0.5], [0, 1.0001, math.nan]),
        (Range(low=1, integer=True, special=(-1,)), [1, 7, -1], [0, -2, 2.5]),
        (Range(low=0, infinite=True), [0, math.inf], [-1, math.nan]),
        (Range(low=0, special=("auto",), prefixes=("auto_",)), ["auto", "auto_0.1", 0.2], ["manual", -0.1]),
        (Range(low=0, optional=True), [None, 0], [-1]),
    ],
)  # fmt: skip
def test_a_range_accepts_its_values_and_names_the_key_for_the_others(rule, good, bad):
    assert all(rule.problem("k", v) is None for v in good)
    for value in bad:
        problem = rule.problem("k", value)
        assert problem is not None and problem.startswith("k must be ") and "\n" not in problem, (value, problem)


def test_every_sb3_default_of_every_agent_passes_the_rules():
    from omegaconf import OmegaConf

    from experiment.cli import CONFIGS_DIR

    for path in sorted((CONFIGS_DIR / "agent").glob("*.yaml")):
        agent = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        check_agent_values(agent)  # raises on a default outside its range
        assert set(agent["sb3"]) - {"policy_kwargs"} <= set(SB3_RULES), path.name


def test_relations_compare_across_keys():
    agent = {"n_envs": 2, "sb3": {"n_steps": 16, "batch_size": 64}}
    with pytest.raises(ValueError, match=r"agent.sb3.batch_size=64 is larger than agent.sb3.n_steps x agent.n_envs \(32\)"):
        check_agent_values(agent)
    check_agent_values({"n_envs": 4, "sb3": {"n_steps": 16, "batch_size": 64}})
    with pytest.raises(ValueError, match=r"optimizer_kwargs.betas\[1\] must be in \[0, 1\)"):
        check_agent_values({"sb3": {"policy_kwargs": {"optimizer_kwargs": {"betas": [0.9, 1.0]}}}})


def test_a_read_only_folder_is_found_by_trying_to_write(tmp_path):
    """The run_root check tries a write and leaves nothing: a 0o555 folder is refused for a user, not for root (who
    may write there; the sysfs case above is a file system that refuses root too)."""
    from experiment.plan import unusable_dir_problem

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        problem = unusable_dir_problem(folder / "runs", "run_root")
        if os.geteuid() == 0:
            assert problem is None
        else:
            assert (
                problem == f"run_root={folder / 'runs'}: cannot write in {folder} (Permission denied); choose another run_root"
            )
        assert _tree(tmp_path) == ["ro"]
    finally:
        folder.chmod(0o755)
