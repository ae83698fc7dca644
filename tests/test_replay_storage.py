"""Replay buffers store float64 observations as float32 (agents.build.Float32ObservationReplayBuffer): the networks
see the same values bit for bit, the buffer and its checkpoint are half as large, and a checkpoint written with a
float64 buffer still resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3.common.buffers import ReplayBuffer

import agents.build
from agents.build import Float32ObservationReplayBuffer
from experiment.plan import plan_run
from experiment.sb3 import train
from tests.agent_helpers import crash_after_checkpoint, tiny_run

# HalfCheetah's observations are float64 (MuJoCo); a budget with gradient steps and a checkpoint half-way
CHEETAH = ["env=HalfCheetah", "agent.sb3.learning_starts=100", "agent.total_timesteps=300", "checkpoint_freq=200"]


def _weights(run_dir) -> dict[str, torch.Tensor]:
    import zipfile

    with zipfile.ZipFile(run_dir / "model.zip") as archive, archive.open("policy.pth") as f:
        return torch.load(f, weights_only=True)


def _float64_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """SB3's own buffer (float64 observations), as before this change."""
    monkeypatch.setattr(agents.build, "replay_buffer_kwargs", lambda spec, env, kwargs: {})


def test_float32_storage_trains_bit_identically(tmp_path, monkeypatch):
    float32 = train(plan_run(tiny_run("sac", "rigl", tmp_path / "f32", *CHEETAH)))
    with monkeypatch.context() as patch:
        _float64_buffers(patch)
        float64 = train(plan_run(tiny_run("sac", "rigl", tmp_path / "f64", *CHEETAH)))
    a, b = _weights(tmp_path / "f32"), _weights(tmp_path / "f64")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert float32["score"] == float64["score"]
    with (
        np.load(tmp_path / "f32" / "checkpoint" / "replay_buffer.npz") as small,
        np.load(tmp_path / "f64" / "checkpoint" / "replay_buffer.npz") as large,
    ):
        assert small["observations"].dtype == np.float32 and large["observations"].dtype == np.float64
        assert np.array_equal(small["observations"], large["observations"].astype(np.float32))


def test_samples_equal_what_the_policy_sees_from_float64(tmp_path):
    """The float32 buffer's samples equal the float64 buffer's after SB3's preprocessing cast (``.float()``)."""
    from gymnasium import spaces

    space = spaces.Box(-np.inf, np.inf, shape=(5,), dtype=np.float64)
    actions = spaces.Box(-1, 1, shape=(2,), dtype=np.float32)
    rng = np.random.default_rng(0)
    wide, narrow = ReplayBuffer(64, space, actions), Float32ObservationReplayBuffer(64, space, actions)
    for _ in range(64):
        obs, nxt = rng.normal(size=(1, 5)) * 1e3, rng.normal(size=(1, 5)) / 7
        act, rew = rng.uniform(-1, 1, size=(1, 2)), rng.normal(size=1)
        for buffer in (wide, narrow):
            buffer.add(obs, nxt, act, rew, np.array([False]), [{}])
    assert narrow.observations.nbytes * 2 == wide.observations.nbytes
    index = np.arange(64)
    a, b = wide._get_samples(index), narrow._get_samples(index)
    assert torch.equal(a.observations.float(), b.observations) and b.observations.dtype == torch.float32
    assert torch.equal(a.next_observations.float(), b.next_observations)


def test_only_float64_vector_observations_without_normalisation():
    from gymnasium import spaces

    from agents.build import stores_float32_observations

    assert stores_float32_observations(spaces.Box(-1, 1, (3,), np.float64), normalized=False)
    assert not stores_float32_observations(spaces.Box(-1, 1, (3,), np.float64), normalized=True)
    assert not stores_float32_observations(spaces.Box(-1, 1, (3,), np.float32), normalized=False)
    assert not stores_float32_observations(spaces.Box(0, 255, (84, 84, 1), np.uint8), normalized=False)


def test_a_float64_checkpoint_resumes_exactly_into_float32_storage(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train(plan_run(tiny_run("sac", "rigl", straight, *CHEETAH)))
    resumed = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        _float64_buffers(patch)
        with crash_after_checkpoint(patch):
            train(plan_run(tiny_run("sac", "rigl", resumed, *CHEETAH)))
    with np.load(resumed / "checkpoint" / "replay_buffer.npz") as saved:
        assert saved["observations"].dtype == np.float64  # written before the change
    train(plan_run(tiny_run("sac", "rigl", resumed, *CHEETAH, "resume=true")))
    a, b = _weights(straight), _weights(resumed)
    for name in a:
        assert torch.equal(a[name], b[name]), name
