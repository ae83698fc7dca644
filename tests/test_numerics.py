"""``flush_denormal`` and ``torch_threads`` (experiment.numerics): applied on every path that runs a network."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from experiment.numerics import apply_torch_settings
from experiment.plan import plan_run
from experiment.sb3 import train
from tests.agent_helpers import compose_run, flushes_denormals


@pytest.mark.parametrize("flush", [True, False])
def test_apply_torch_settings_sets_threads_and_denormal_flushing(flush: bool) -> None:
    torch.set_flush_denormal(not flush)
    apply_torch_settings(OmegaConf.create({"torch_threads": 1, "flush_denormal": flush}))
    assert flushes_denormals() is flush and torch.get_num_threads() == 1


def test_default_config_flushes_denormals() -> None:
    """The paper's TF runs flushed denormals; so does our default (configs/config.yaml)."""
    assert compose_run(["agent=dqn", "env=CartPole"]).flush_denormal is True


def test_sb3_path_trains_with_the_configs_denormal_flushing(tmp_path, monkeypatch) -> None:
    from stable_baselines3 import DQN

    seen = []
    learn = DQN.learn
    monkeypatch.setattr(DQN, "learn", lambda self, *a, **kw: (seen.append(flushes_denormals()), learn(self, *a, **kw))[1])
    overrides = ["agent=dqn", "env=CartPole", "agent.total_timesteps=100", "agent.sb3.learning_starts=50",
                 "agent.net_arch=[8]", "agent.eval_freq=1000", "agent.eval_episodes=1", "progress_bar=false",
                 "tensorboard=false", "diagnostics.freq=0"]  # fmt: skip
    train(plan_run(compose_run([*overrides, f"run_dir={tmp_path / 'on'}"])))
    train(plan_run(compose_run([*overrides, "flush_denormal=false", f"run_dir={tmp_path / 'off'}"])))
    assert seen == [True, False]
