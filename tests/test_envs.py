"""The env factory: every config parses, each family builds and steps, seeding, and one-line config errors."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from envs import (
    CONFIGS_DIR,
    FAMILIES,
    EnvSpec,
    available_env_names,
    check_action_space,
    load_env_spec,
    make_single_env,
    make_vec_env,
)
from envs.quiet import mujoco_warning_handler

ENV_DIR = CONFIGS_DIR / "env"
ALL_NAMES = available_env_names()
SCHEMA_KEYS = ["name", "family", "id", "action_space", "kwargs"]

EXPECTED = {
    "gym": ["HalfCheetah", "Hopper", "Walker2d", "Ant", "Humanoid", "CartPole", "Acrobot", "MountainCar", "Pendulum"],
    "dmc": [
        "cheetah-run",
        "walker-walk",
        "walker-run",
        "hopper-hop",
        "finger-spin",
        "cartpole-swingup",
        "reacher-easy",
        "ball_in_cup-catch",
        "humanoid-run",
        "quadruped-run",
    ],
    "minatar": ["breakout", "asterix", "freeway", "seaquest", "space_invaders"],
    "atari": [
        "MsPacman",
        "Pong",
        "Qbert",
        "Assault",
        "Asterix",
        "BeamRider",
        "Boxing",
        "Breakout",
        "CrazyClimber",
        "DemonAttack",
        "Enduro",
        "FishingDerby",
        "SpaceInvaders",
        "Tutankham",
        "VideoPinball",
    ],
}

DISCRETE = {"CartPole", "Acrobot", "MountainCar"} | {f"{f}/{g}" for f in ("minatar", "atari") for g in EXPECTED[f]}


def _config_name(family: str, game: str) -> str:
    return game if family == "gym" else f"{family}/{game}"


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"python package '{module}' is not installed")


# --- configs ------------------------------------------------------------------------------------------------------


def test_the_paper_envs_all_have_configs() -> None:
    expected = sorted(_config_name(family, game) for family, games in EXPECTED.items() for game in games)
    assert ALL_NAMES == expected


@pytest.mark.parametrize("name", ALL_NAMES)
def test_config_parses_into_valid_spec(name: str) -> None:
    path = ENV_DIR / f"{name}.yaml"
    cfg = OmegaConf.load(path)
    assert list(cfg.keys()) == SCHEMA_KEYS
    spec = EnvSpec.from_config(cfg)
    assert spec.name == name
    assert spec.family in FAMILIES.names()
    assert spec.action_space in ("continuous", "discrete")
    assert spec.family == ("gym" if "/" not in name else name.split("/")[0])
    assert spec.action_space == ("discrete" if spec.name in DISCRETE else "continuous")
    nested = "/" in name
    assert path.read_text().startswith("# @package env\n") == nested


@pytest.mark.parametrize("name", ["HalfCheetah", "dmc/cheetah-run", "minatar/space_invaders", "atari/Pong"])
def test_hydra_group_choice_lands_at_env(name: str) -> None:
    with initialize_config_dir(config_dir=str(CONFIGS_DIR), version_base=None):
        cfg = compose(overrides=[f"+env={name}"])
    assert list(cfg.keys()) == ["env"]
    assert EnvSpec.from_config(cfg.env) == load_env_spec(name)


def test_from_config_accepts_plain_dict_and_rejects_wrong_keys() -> None:
    cfg = {"name": "CartPole", "family": "gym", "id": "CartPole-v1", "action_space": "discrete", "kwargs": {}}
    spec = EnvSpec.from_config(cfg)
    assert spec == load_env_spec("CartPole")
    with pytest.raises(ValueError, match=r"missing \['kwargs'\], unexpected \['seed'\]"):
        EnvSpec.from_config({"name": "x", "family": "gym", "id": "CartPole-v1", "action_space": "discrete", "seed": 0})


# --- construction and stepping ------------------------------------------------------------------------------------


def _rollout(venv, n_steps: int, seed: int) -> list[np.ndarray]:
    venv.action_space.seed(seed)
    obs = [venv.reset()]
    for _ in range(n_steps):
        actions = np.stack([venv.action_space.sample() for _ in range(venv.num_envs)])
        obs.append(venv.step(actions)[0])
    return obs


def _check_builds_and_steps(name: str, n_envs: int) -> np.ndarray:
    spec = load_env_spec(name)
    venv = make_vec_env(spec, n_envs=n_envs, seed=0)
    try:
        expected_space = gym.spaces.Box if spec.action_space == "continuous" else gym.spaces.Discrete
        assert isinstance(venv.action_space, expected_space)
        for obs in _rollout(venv, n_steps=5, seed=0):
            assert obs.shape == (n_envs, *venv.observation_space.shape)
            assert obs.dtype == venv.observation_space.dtype
            assert all(venv.observation_space.contains(o) for o in obs)
        return obs
    finally:
        venv.close()


@pytest.mark.parametrize("name", EXPECTED["gym"])
def test_gym_env_builds_and_steps(name: str) -> None:
    _require("mujoco")
    obs = _check_builds_and_steps(name, n_envs=2)
    assert obs.dtype == (np.float64 if name in ("HalfCheetah", "Hopper", "Walker2d", "Ant", "Humanoid") else np.float32)


def test_dmc_env_builds_steps_and_is_flat() -> None:
    _require("shimmy")
    _require("dm_control")
    obs = _check_builds_and_steps("dmc/cheetah-run", n_envs=2)
    assert obs.shape == (2, 17)  # position (8) + velocity (9), flattened from the Dict observation
    assert obs.dtype == np.float64


def test_minatar_env_builds_and_steps() -> None:
    _require("minatar")
    obs = _check_builds_and_steps("minatar/breakout", n_envs=2)
    assert obs.shape == (2, 10, 10, 4)
    assert obs.dtype == np.bool_
    env = make_single_env(load_env_spec("minatar/breakout"))
    assert env.action_space.n == 6  # the full action set, not the minimal 3-action one
    env.close()


def test_atari_env_builds_steps_and_stacks_frames() -> None:
    _require("ale_py")
    try:
        obs = _check_builds_and_steps("atari/Pong", n_envs=1)
    except gym.error.Error as error:  # e.g. a missing ROM
        pytest.skip(f"ALE cannot build Pong here: {error}")
    assert obs.shape == (1, 84, 84, 4)  # channel-last grayscale, 4 stacked frames
    assert obs.dtype == np.uint8
    env = make_single_env(load_env_spec("atari/Pong"))
    try:
        assert env.unwrapped._frameskip == 1  # the AtariWrapper skips frames, not the ALE
        assert env.unwrapped._game == "pong"
    finally:
        env.close()


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_config_builds_with_its_declared_action_space(name: str) -> None:
    env = make_single_env(load_env_spec(name))  # raises if the built action space is not the declared kind
    try:
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
    finally:
        env.close()


def test_declared_action_space_is_checked_against_the_built_env() -> None:
    spec = EnvSpec(name="CartPole-as-continuous", family="gym", id="CartPole-v1", action_space="continuous")
    with pytest.raises(ValueError, match=r"declared continuous .* builds Discrete\(2\)"):
        make_single_env(spec)


# --- seeding ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CartPole", "Hopper"])
def test_same_seed_same_obs_different_seed_different_obs(name: str) -> None:
    spec = load_env_spec(name)
    first = []
    for seed in (3, 3, 4):
        venv = make_vec_env(spec, n_envs=2, seed=seed)
        first.append(venv.reset())
        venv.close()
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], first[2])
    assert not np.array_equal(first[0][0], first[0][1])  # env i is seeded with seed + i


@pytest.mark.parametrize("name", ["dmc/cheetah-run", "minatar/breakout", "atari/Pong"])
def test_same_seed_reproduces_trajectories(name: str) -> None:
    spec = load_env_spec(name)
    runs = []
    for _ in range(2):
        venv = make_vec_env(spec, n_envs=1, seed=7)
        runs.append(_rollout(venv, n_steps=20, seed=7))
        venv.close()
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


# --- errors -------------------------------------------------------------------------------------------------------


def test_unknown_family_names_the_valid_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown family 'procgen'; valid choices: atari, dmc, gym, minatar$"):
        EnvSpec(name="x", family="procgen", id="x", action_space="discrete")
    with pytest.raises(KeyError, match=r"valid choices: atari, dmc, gym, minatar"):
        FAMILIES.get("procgen")


def test_unknown_action_space_names_the_valid_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown action_space 'multi_discrete'; valid choices: continuous, discrete$"):
        EnvSpec.from_config({"name": "x", "family": "gym", "id": "x", "action_space": "multi_discrete", "kwargs": {}})


def test_unknown_env_name_lists_the_choices() -> None:
    with pytest.raises(KeyError, match=r"unknown env 'dmc/cheetah-walk'; valid choices: .*dmc/cheetah-run"):
        load_env_spec("dmc/cheetah-walk")


def test_check_action_space() -> None:
    check_action_space(load_env_spec("CartPole"), ["discrete"], "dqn")
    check_action_space(load_env_spec("HalfCheetah"), ["continuous", "discrete"], "ppo")
    with pytest.raises(ValueError) as info:
        check_action_space(load_env_spec("HalfCheetah"), ["discrete"], "dqn")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("agent 'dqn' needs a discrete action space but env 'HalfCheetah' is continuous; discrete envs: ")
    listed = message.split("discrete envs: ")[1].split(", ")
    assert listed == available_env_names(action_space="discrete")
    assert {"CartPole", "minatar/breakout", "atari/Pong"} <= set(listed)
    assert "HalfCheetah" not in listed and "Pendulum" not in listed and "dmc/cheetah-run" not in listed
    with pytest.raises(ValueError, match=r"sac.*needs a continuous action space.*CartPole.*continuous envs: .*Pendulum"):
        check_action_space(load_env_spec("CartPole"), ["continuous"], "sac")


def test_available_env_names_filters_by_action_space(tmp_path: Path) -> None:
    continuous = available_env_names(action_space="continuous")
    discrete = available_env_names(action_space="discrete")
    assert sorted(continuous + discrete) == ALL_NAMES
    assert len(continuous) == 5 + 1 + 10 and len(discrete) == 3 + 5 + 15
    (tmp_path / "env" / "toy").mkdir(parents=True)
    (tmp_path / "env" / "toy" / "a.yaml").write_text("action_space: discrete\n")
    assert available_env_names(tmp_path) == ["toy/a"]
    assert available_env_names(tmp_path, "continuous") == []


# --- noise: known harmless messages are silenced at their source, others pass ---------------------------------------


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MUJOCO_GL")}
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=300, env={**environ, **env}
    )


def test_halfcheetah_builds_without_the_settotalmass_warning(tmp_path: Path) -> None:
    _require("mujoco")
    code = "from envs import load_env_spec, make_vec_env; make_vec_env(load_env_spec('HalfCheetah'), 2, 0).close()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(CONFIGS_DIR.parent)})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "settotalmass" not in result.stdout + result.stderr
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_other_mujoco_warnings_still_reach_the_user(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str] = []
    handler = mujoco_warning_handler(seen.append)
    handler("compiler attribute 'settotalmass' is deprecated and will be removed")
    handler("Nan, Inf or huge value in QACC at DOF 0")
    assert seen == ["Nan, Inf or huge value in QACC at DOF 0"]
    mujoco_warning_handler(None)("Nan, Inf or huge value in QACC at DOF 0")
    assert capsys.readouterr().err == "WARNING: Nan, Inf or huge value in QACC at DOF 0\n"


def test_dmc_on_a_headless_machine_does_not_warn_about_x11() -> None:
    _require("shimmy")
    _require("dm_control")
    result = _run_python("from envs import load_env_spec, make_vec_env; make_vec_env(load_env_spec('dmc/cheetah-run'), 1, 0)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DISPLAY" not in result.stderr and "GLFW" not in result.stderr, result.stderr[-2000:]
    assert "settotalmass" not in result.stdout + result.stderr


def test_an_explicit_mujoco_gl_choice_is_kept() -> None:
    code = "import os; from envs.quiet import headless_dm_control; headless_dm_control(None); print(os.environ['MUJOCO_GL'])"
    assert _run_python(code, MUJOCO_GL="osmesa").stdout.strip() == "osmesa"
    assert _run_python(code).stdout.strip() == "disable"
    assert _run_python(code, DISPLAY=":0").returncode != 0  # a display: dm-control chooses itself (no MUJOCO_GL set)
