"""``python -m sparse_rl.evaluate``: returns under observation noise, from saved runs, without touching them."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from stable_baselines3 import DQN
from stable_baselines3.common.evaluation import evaluate_policy

from analysis.loading import load_run
from envs import EVAL_SEED_OFFSET, make_vec_env
from envs.noise import ObservationNoise
from experiment.layout import HYDRA_CONFIG
from experiment.noise_robustness import (
    default_out,
    evaluate_run,
    load_defaults,
    load_saved_run,
    main,
    on_current_schema,
    parse_args,
)
from experiment.plan import plan_run
from experiment.sb3 import train
from tests.agent_helpers import tiny_run

METHODS = ("dense", "rigl")
FAST = ["episodes=3", "reps=50", "plots=false"]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """Two tiny DQN CartPole runs (dense and RigL at 0.9), trained once for the module."""
    root = tmp_path_factory.mktemp("sweep") / "runs"
    for method in METHODS:
        train(plan_run(tiny_run("dqn", method, root / method / "seed_0")))
    return root


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


def evaluate(runs_dir: Path, out: Path, *keys: str) -> pd.DataFrame:
    assert main([str(runs_dir), f"out={out}", *FAST, *keys]) == 0
    return pd.read_csv(out / "returns.csv")


def test_table_rows_and_run_dirs_untouched(runs_dir: Path, tmp_path: Path, capsys) -> None:
    before = tree_hashes(runs_dir)
    assert main([str(runs_dir), "noise=5,1", "episodes=2", "reps=50"]) == 0  # default out: a sibling of RUNS_DIR
    assert tree_hashes(runs_dir) == before  # byte-identical: nothing written, nothing changed
    out = runs_dir.parent / f"{runs_dir.name}_robustness"
    table = pd.read_csv(out / "table.csv")
    assert list(table.columns) == ["agent", "env", "method", "sparsity", "sigma", "n_seeds", "mean", "ci_low", "ci_high"]
    assert sorted(zip(table["method"], table["sparsity"], table["sigma"])) == [
        (m, s, sigma) for m, s in (("dense", 0.0), ("rigl", 0.9)) for sigma in (0.0, 1.0, 5.0)
    ]  # sigma 0 is always evaluated
    assert (table["agent"] == "dqn").all() and (table["env"] == "CartPole").all() and (table["n_seeds"] == 1).all()
    returns = pd.read_csv(out / "returns.csv")
    assert len(returns) == 2 * 3 * 2  # runs x sigmas x episodes
    means = returns.groupby(["method", "sigma"])["return"].mean()
    for row in table.itertuples():
        assert row.mean == pytest.approx(means[(row.method, row.sigma)])
    assert {p.name for p in out.iterdir()} == {"table.csv", "table.md", "returns.csv", "robustness.png", "robustness.pdf"}
    assert "| dqn | CartPole | rigl |" in (out / "table.md").read_text()


def test_same_seed_same_output_other_seed_other_noise(runs_dir: Path, tmp_path: Path) -> None:
    keys = ("noise=1,5,20",)
    first = evaluate(runs_dir, tmp_path / "a", *keys, "seed=3")
    again = evaluate(runs_dir, tmp_path / "b", *keys, "seed=3")
    other = evaluate(runs_dir, tmp_path / "c", *keys, "seed=4")
    assert (tmp_path / "a" / "returns.csv").read_bytes() == (tmp_path / "b" / "returns.csv").read_bytes()
    assert (tmp_path / "a" / "table.csv").read_bytes() == (tmp_path / "b" / "table.csv").read_bytes()
    clean = first["sigma"] == 0
    assert first.loc[clean, "return"].tolist() == other.loc[clean, "return"].tolist()  # the seed only moves the noise
    assert first.loc[~clean, "return"].tolist() != other.loc[~clean, "return"].tolist()
    assert first.loc[clean, "return"].tolist() == again.loc[clean, "return"].tolist()


def test_sigma_zero_equals_plain_evaluation_of_the_saved_model(runs_dir: Path) -> None:
    """SB3's own (pickling) ``DQN.load`` on our own file, evaluated on the run's eval env seed, gives the same returns."""
    settings = parse_args([str(runs_dir), "noise=0", "episodes=4"])
    for method in METHODS:
        run_dir = runs_dir / method / "seed_0"
        saved = load_saved_run(load_run(run_dir), "cpu", settings.episodes)
        noisy = evaluate_run(saved, settings)[0.0]
        reference = DQN.load(run_dir / "model.zip", device="cpu")
        env = make_vec_env(saved.plan.env, 1, 0 + EVAL_SEED_OFFSET)
        plain, _ = evaluate_policy(reference, env, n_eval_episodes=4, deterministic=True, return_episode_rewards=True)
        assert noisy.tolist() == plain
        for ours, theirs in zip(saved.model.policy.state_dict().values(), reference.policy.state_dict().values()):
            assert np.array_equal(ours.numpy(), theirs.numpy())


def test_loaded_sparse_policy_keeps_its_masks(runs_dir: Path) -> None:
    saved = load_saved_run(load_run(runs_dir / "rigl" / "seed_0"), "cpu", 1)
    state = saved.model.policy.state_dict()
    masks = {k: v for k, v in state.items() if k.endswith("weight_mask")}
    assert masks and any((m == 0).any() for m in masks.values())
    for key, mask in masks.items():
        weight = state[key.replace("weight_mask", "weight")]
        assert (weight[mask == 0] == 0).all()


class ConstantEnv(gym.Env):
    """Observes a fixed array; episodes never end."""

    def __init__(self, value: np.ndarray, space: gym.spaces.Box) -> None:
        self.value, self.observation_space, self.action_space = value, space, gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.value.copy(), {}

    def step(self, action):
        return self.value.copy(), 0.0, False, False, {}


def test_pixel_noise_is_rounded_clipped_uint8_added_to_the_raw_frame() -> None:
    frame = np.array([0, 3, 128, 252, 255] * 20, dtype=np.uint8).reshape(10, 10, 1)
    env = ObservationNoise(ConstantEnv(frame, gym.spaces.Box(0, 255, frame.shape, np.uint8)), sigma=8.0, seed=[1, 2])
    obs, _ = env.reset()
    draws = np.random.default_rng([1, 2]).normal(0.0, 8.0, size=frame.shape)
    expected = np.clip(frame.astype(float) + np.rint(draws), 0, 255)
    assert obs.dtype == np.uint8 and np.array_equal(obs, expected.astype(np.uint8))
    assert obs.min() == 0 and obs.max() == 255  # clipped, not wrapped around
    unclipped = frame.astype(float) + np.rint(draws)
    inside = (unclipped >= 0) & (unclipped <= 255)
    assert np.array_equal(obs[inside], unclipped[inside])  # integer noise, not truncated
    assert not np.array_equal(env.step(0)[0], obs)  # fresh noise each step
    clean = ObservationNoise(ConstantEnv(frame, env.observation_space), sigma=0.0, seed=0)
    assert np.array_equal(clean.reset()[0], frame)


def test_vector_noise_scales_with_each_dimensions_std() -> None:
    space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    env = ObservationNoise(ConstantEnv(np.ones(3, np.float32), space), sigma=2.0, seed=0, std=[0.0, 1.0, 10.0])
    env.reset()
    samples = np.stack([env.step(0)[0] for _ in range(4000)]) - 1.0
    assert samples.dtype == np.float32
    assert np.all(samples[:, 0] == 0)  # a constant dimension gets no noise
    assert samples.std(axis=0)[1:] == pytest.approx([2.0, 20.0], rel=0.05)
    assert abs(samples[:, 2].mean()) < 20.0 * 4 / np.sqrt(4000)
    with pytest.raises(ValueError, match="std"):
        ObservationNoise(ConstantEnv(np.ones(3, np.float32), space), sigma=1.0, seed=0)
    with pytest.raises(ValueError, match="valid kinds"):
        ObservationNoise(ConstantEnv(np.ones(3, bool), gym.spaces.MultiBinary(3)), sigma=1.0, seed=0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["noise=0,x"], "is not a number"),
        (["noise=-1"], "must be a finite number >= 0"),
        (["episode=3"], "unknown key 'episode'; valid keys: noise, noise.vector, noise.pixels, episodes"),
        (["deterministic=maybe"], "valid choices: true, false"),
        (["out=RUN/inside"], "lies inside the run directory"),
    ],
)
def test_bad_input_is_one_line(runs_dir: Path, args: list[str], message: str, capsys) -> None:
    args = [a.replace("RUN", str(runs_dir / "dense" / "seed_0")) for a in args]
    assert main([str(runs_dir), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_empty_folder_and_runs_without_model_are_one_line(tmp_path: Path, runs_dir: Path, capsys) -> None:
    assert main([str(tmp_path)]) == 2
    assert "no run directory" in capsys.readouterr().err
    unfinished = tmp_path / "sweep" / "run"
    (unfinished / ".hydra").mkdir(parents=True)
    (unfinished / ".hydra" / "config.yaml").write_bytes(
        (runs_dir / "dense" / "seed_0" / ".hydra" / "config.yaml").read_bytes()
    )
    result = subprocess.run(
        [sys.executable, "-m", "sparse_rl.evaluate", str(tmp_path / "sweep")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: no run under {tmp_path / 'sweep'} has a model.zip to evaluate (1 run directories)"
    ]


def test_help_lists_every_key_with_its_configured_default(capsys) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    grids = load_defaults()["noise"]
    vector, pixels = (",".join(f"{v:g}" for v in grids[kind]) for kind in ("vector", "pixels"))
    for line in ("noise=S1,S2,...", f"(default vector {vector}; pixels {pixels})", "noise.vector=S1,S2,...",
                 f"(default {vector})", f"(default {pixels})", "episodes=N", "deterministic=BOOL", "out=DIR"):  # fmt: skip
        assert line in text


def test_atari_noise_goes_on_each_frame_below_the_frame_stack() -> None:
    pytest.importorskip("ale_py")
    from envs import load_env_spec

    spec = load_env_spec("atari/Pong")
    clean = make_vec_env(spec, 1, 7)
    noisy = make_vec_env(spec, 1, 7, wrapper_class=ObservationNoise, wrapper_kwargs={"sigma": 10.0, "seed": [0, 0]})
    assert noisy.get_attr("observation_space")[0].shape == (84, 84, 1)  # one warped frame, not the stack
    clean.reset(), noisy.reset()
    for _ in range(3):  # sticky actions draw from the env's own RNG: both envs stay in the same state
        a = clean.step(np.array([0]))[0]
        b = noisy.step(np.array([0]))[0]
    assert a.shape == b.shape == (1, 84, 84, 4) and b.dtype == np.uint8
    diff = (b.astype(int) - a.astype(int)).reshape(-1, 4)
    assert diff.std(axis=0) == pytest.approx([10.0] * 4, rel=0.1)  # every stacked frame carries its own noise
    assert not np.array_equal(diff[:, 0], diff[:, 1])


def test_table_is_mean_over_seeds_of_per_run_means_with_a_bracketing_ci(tmp_path: Path) -> None:
    from analysis.robustness import RETURN_COLUMNS, plot_robustness, robustness_table

    rows = []
    for seed, offset in enumerate((0.0, 10.0, 20.0)):
        for sigma in (0.0, 5.0):
            for episode, value in enumerate((100.0, 110.0)):  # per-run mean 105 + offset - sigma
                rows.append(["p", "dqn", "Pong", "rigl", 0.9, seed, sigma, episode, value + offset - sigma])
    table = robustness_table(pd.DataFrame(rows, columns=RETURN_COLUMNS), reps=200, seed=0)
    assert table["sigma"].tolist() == [0.0, 5.0] and (table["n_seeds"] == 3).all()
    assert table["mean"].tolist() == pytest.approx([115.0, 110.0])
    assert ((table["ci_low"] < table["mean"]) & (table["mean"] < table["ci_high"])).all()
    assert (table["ci_low"] >= 105.0 - 5.0).all() and (table["ci_high"] <= 125.0).all()  # within the seeds' range
    written = plot_robustness(table, tmp_path)
    assert sorted(p.name for p in written) == ["robustness.pdf", "robustness.png"]


def test_a_run_whose_model_does_not_load_is_left_out_with_its_reason(runs_dir: Path, tmp_path: Path, capsys) -> None:
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(runs_dir, sweep)
    (sweep / "rigl" / "seed_0" / "model.zip").write_bytes(b"not a zip")
    table = evaluate(sweep, tmp_path / "out", "noise=0")
    assert set(table["method"]) == {"dense"}
    err = capsys.readouterr().err
    assert "left out:" in err and "SavedModelError" in err and "cannot read policy.pth" in err
    assert "cannot read policy.pth" in (tmp_path / "out" / "table.md").read_text()


def test_a_run_saved_before_newer_config_keys_still_evaluates(tmp_path):
    """A run trained before ``sparsity.structure`` and ``diagnostics`` existed has neither in its saved config."""
    run_dir = tmp_path / "runs" / "rigl" / "seed_0"
    train(plan_run(tiny_run("dqn", "rigl", run_dir)))
    saved = OmegaConf.load(run_dir / HYDRA_CONFIG)
    del saved.sparsity["structure"]
    del saved["diagnostics"]
    OmegaConf.save(saved, run_dir / HYDRA_CONFIG)
    returns = evaluate(tmp_path / "runs", tmp_path / "out", "noise=0,1")
    assert sorted(returns["sigma"].unique()) == [0, 1]


def test_each_observation_kind_has_its_own_default_grid_and_noise_sets_both(runs_dir: Path) -> None:
    grids = load_defaults()["noise"]
    settings = parse_args([str(runs_dir)])
    assert settings.noise == {kind: tuple(sorted({0.0, *map(float, grids[kind])})) for kind in ("vector", "pixels")}
    # vector agents lose their return between 0.1 and 2 stds (configs/robustness.yaml): most points lie there
    assert len([v for v in settings.noise["vector"] if 0.1 <= v <= 2]) >= 4 and max(settings.noise["vector"]) <= 5
    assert parse_args([str(runs_dir), "noise=0,3"]).noise == {"vector": (0.0, 3.0), "pixels": (0.0, 3.0)}
    one = parse_args([str(runs_dir), "noise.vector=0.5"]).noise
    assert one["vector"] == (0.0, 0.5) and one["pixels"] == settings.noise["pixels"]


def test_a_vector_run_is_evaluated_on_the_vector_grid(runs_dir: Path, tmp_path: Path) -> None:
    returns = evaluate(runs_dir, tmp_path / "out", "noise.vector=0.25", "noise.pixels=7")
    assert sorted(returns["sigma"].unique()) == [0.0, 0.25]  # CartPole observes a vector


@pytest.mark.parametrize(
    "run, out",
    [
        ("runs/dqn/CartPole/rigl_s0.9/seed_0", "runs_robustness/dqn/CartPole/rigl_s0.9/seed_0"),
        ("x/runs/sac/dmc/cheetah-run/dense_s0.0/seed_3", "x/runs_robustness/sac/dmc/cheetah-run/dense_s0.0/seed_3"),
        ("my_run", "my_run_robustness"),  # a run_dir of the user's own: beside it
    ],
)
def test_one_run_directory_is_evaluated_into_a_folder_beside_the_runs_not_among_its_seeds(tmp_path, run, out):
    agent, env = ("dqn", "CartPole") if "dqn" in run or run == "my_run" else ("sac", "dmc/cheetah-run")
    run_dir = tmp_path / run
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"agent": {"name": agent}, "env": {"name": env}}), run_dir / HYDRA_CONFIG)
    assert default_out(run_dir) == (tmp_path / out).resolve()
    assert not default_out(run_dir).is_relative_to(run_dir.resolve().parent) or run == "my_run"
    assert default_out(tmp_path / "runs") == (tmp_path / "runs_robustness").resolve()  # a folder of runs: as before


def test_keys_added_after_a_run_take_their_configured_defaults(runs_dir: Path) -> None:
    """A run saved before a sparsity key existed (e.g. sparsity.mask_decay) gets the value configs/ composes for its
    agent, env and method, not a missing-value error."""
    from hydra import compose, initialize_config_dir

    from experiment.cli import CONFIGS_DIR

    saved = OmegaConf.load(runs_dir / "rigl" / "seed_0" / HYDRA_CONFIG)
    with initialize_config_dir(config_dir=str(CONFIGS_DIR), version_base="1.3"):
        configured = compose(config_name="config", overrides=["agent=dqn", "env=CartPole", "sparsity=rigl"]).sparsity
    dropped = [key for key in configured if key not in ("method", "sparsity")]
    for key in dropped:
        del saved.sparsity[key]  # as if the run predated them all
    current = on_current_schema(saved)
    for key in dropped:
        assert current.sparsity[key] == configured[key], key
    assert current.sparsity.sparsity == saved.sparsity.sparsity  # what the run recorded wins
