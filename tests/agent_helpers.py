"""Compose run configs in tests exactly as the command line does (Hydra compose API)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import experiment.sb3

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")

# Tiny budgets per agent on fast envs: small nets, early learning, frequent topology updates.
TINY = {
    "sac": ["env=Pendulum", "agent.total_timesteps=300", "agent.sb3.learning_starts=100", "agent.sb3.buffer_size=1000"],
    "td3": ["env=Pendulum", "agent.total_timesteps=300", "agent.sb3.learning_starts=100", "agent.sb3.buffer_size=1000"],
    "dqn": ["env=CartPole", "agent.total_timesteps=300", "agent.sb3.learning_starts=100", "agent.sb3.buffer_size=1000"],
    "ppo": [
        "env=CartPole",
        "agent.total_timesteps=256",
        "agent.sb3.n_steps=64",
        "agent.sb3.batch_size=32",
        "agent.sb3.n_epochs=2",
    ],
}
COMMON = ["agent.net_arch=[32,32]", "agent.eval_freq=100", "agent.eval_episodes=1", "progress_bar=false", "tensorboard=false"]


def compose_run(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def tiny_run(agent: str, method: str, run_dir: Path, *extra: str):
    overrides = [f"agent={agent}", f"sparsity={method}", *TINY[agent], *COMMON, f"run_dir={run_dir}", *extra]
    if method != "dense":
        overrides += ["sparsity.update_interval=5"]
    return compose_run(overrides)


class Interrupted(Exception):
    """Stands for a crash right after a checkpoint (:func:`crash_after_checkpoint`)."""


@contextlib.contextmanager
def crash_after_checkpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Within the block the SB3 path's first checkpoint is written, then the run stops (``Interrupted``, expected)."""
    run = experiment.sb3
    save = run._save_checkpoint

    def save_then_crash(*args, **kwargs):
        save(*args, **kwargs)
        raise Interrupted

    monkeypatch.setattr(run, "_save_checkpoint", save_then_crash)
    try:
        with pytest.raises(Interrupted):
            yield
    finally:
        monkeypatch.setattr(run, "_save_checkpoint", save)


def flushes_denormals() -> bool:
    """Whether this thread's float arithmetic reads and writes float32 denormals (here 1e-39) as zero."""
    import torch

    return (torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0
