"""``python -m sparse_rl.run``: the --help text lists what a user picks, and a misspelled key gets our one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

import sparse_rl.run  # noqa: F401  (registers the schema and the resolvers)
from experiment.cli import CONFIGS_DIR, USER_GROUPS, argv_problem, group_options, help_groups, override_problem


def run_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparse_rl.run", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_user_groups_with_env_names_as_written_and_run_root():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "agent_env" not in text and "agent_sparsity" not in text and "env/dmc" not in text
    for name in ("dmc/cheetah-run", "minatar/breakout", "atari/Pong", "HalfCheetah", "dense_matched", "paper_sac_mujoco"):
        assert name in text, name
    assert "run_root" in text and "env=dmc/cheetah-run" in text


def test_help_groups_list_every_config_file_of_the_user_groups():
    text = help_groups()
    for written, folder, _ in USER_GROUPS:
        files = sorted(
            p.relative_to(CONFIGS_DIR / folder).with_suffix("").as_posix() for p in (CONFIGS_DIR / folder).rglob("*.yaml")
        )
        assert sorted(group_options(folder)) == files
        assert f"  {written}: " in text
        assert all(name in text for name in files)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sparsity.sparsty=0.9"], "unknown key 'sparsity.sparsty'; closest valid keys: sparsity.sparsity, sparsity.sparse_"),
        (["agent.total_timestep=10"], "unknown key 'agent.total_timestep'; closest valid keys: agent.total_timesteps"),
        (["sedd=1"], "unknown key 'sedd'; closest valid keys: seed"),
        (["agnet=dqn"], "unknown key 'agnet'; closest valid keys: agent"),
        (["agent.sb3.learning_start=10"],
         "unknown key 'agent.sb3.learning_start'; closest valid keys: agent.sb3.learning_starts, agent.sb3.learning_rate "
         "(to pass a new argument there, write +agent.sb3.learning_start=VALUE)"),
        (["agent=ppo", "env=Hopper", "agent.sb3.learning_starts=10"], "unknown key 'agent.sb3.learning_starts'"),  # not PPO's
        (["sparsity.foo=1"], "unknown key 'sparsity.foo'; valid keys under sparsity: sparsity.method, sparsity.sparsity,"),
        (["seed=0,1", "sparsity=dense,rigl", "sparsity.sparsty=0.5,0.9"], "unknown key 'sparsity.sparsty'; closest"),  # sweep
    ],
)  # fmt: skip
def test_a_misspelled_key_names_the_closest_valid_keys(overrides, message):
    problem = override_problem(overrides)
    assert problem is not None and problem.startswith(message) and "\n" not in problem


@pytest.mark.parametrize(
    "argv",
    [
        ["agent=dqn", "env=CartPole", "sparsity=rigl", "sparsity.sparsity=0.95", "seed=3"],
        ["-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2", "sparsity=dense,rigl", "seed=range(3)"],
        ["-m", "+experiment=paper_dqn_classic", "agent.eval_freq=500"],
        ["+agent.sb3.optimize_memory_usage=false", "env=dmc/cheetah-run", "run_dir=${run_root}/x_${seed}"],
        ["--help"],
        ["--cfg", "job", "device=cuda"],  # inspection shows the config; only training checks the device
    ],
)
def test_valid_overrides_and_inspection_are_left_to_hydra(argv):
    assert argv_problem(argv) is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["env=Nope"], "unknown env 'Nope'; closest valid choices: Hopper"),  # Hydra's: 17 lines, no dmc/ envs
        (["env=Qwxz"], "unknown env 'Qwxz'; valid choices: Acrobot, Ant, "),
        (["seed=zero"], "seed=zero: Value 'zero' of type 'str' could not be converted to Integer"),
        (["-m", "seed=0,zero"], "seed=zero: Value 'zero' of type 'str' could not be converted to Integer"),
        (["-m", "hydra/launcher=populaton"], "unknown hydra/launcher 'populaton'; closest valid choices: population"),
    ],
)
def test_unknown_choices_and_bad_values_are_one_line_instead_of_hydras_message(argv, message):
    problem = argv_problem(argv)
    assert problem is not None and problem.startswith(message) and "\n" not in problem, problem


def test_cli_misspelled_key_is_one_line_without_a_plus_suggestion_and_no_directory(tmp_path):
    result = run_cli("sparsity.sparsty=0.9", f"run_root={tmp_path / 'runs'}")
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "error: unknown key 'sparsity.sparsty'; closest valid keys: sparsity.sparsity, sparsity.sparse_init, sparsity.sr_ste"
    )
    assert not (tmp_path / "runs").exists()
