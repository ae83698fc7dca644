"""Training diagnostics per population member (issue 21, docs/design.md decision 42): the SB3 path's values, points,
rows, TensorBoard scalars and ``summary.json`` entries; a member's own, whatever its population."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from stable_baselines3.common.logger import configure

from agents.diagnostics_callback import PREFIX, STEP_KEY, DiagnosticsCallback, diagnostics_settings
from agents.population.export import copy_member
from experiment.member_start import sb3_start
from experiment.population_records import PopulationRun
from tests.test_population import _plans

DIAG = ("diagnostics.freq=50", "diagnostics.batch_size=32")


class ReferencedRun(PopulationRun):
    """A population whose member ``index`` is shadowed by the SB3 path's own :class:`DiagnosticsCallback` on an SB3
    model of its run: at every rollout end (and at the training end) that model holds the member's weights and masks,
    its SB3 ``ReplayBuffer`` the member's transitions at the same positions, its controller the member's clock and
    update count; the callback logs to ``log_dir``."""

    def shadow(self, index: int, log_dir: Path) -> None:
        plan = self.members[index].plan
        start = sb3_start(plan)
        self.index, self.model, self.controller = index, start.model, start.controller
        like = self.model.replay_buffer
        self.model.replay_buffer = type(like)(
            self.loop.replay.capacity, self.model.observation_space, self.model.action_space, device="cpu"
        )
        self.model.set_logger(configure(str(log_dir), ["csv"]))
        settings = diagnostics_settings(plan.cfg.diagnostics)
        self.callback = DiagnosticsCallback(self.controller, settings, int(plan.cfg.seed), spec=plan.agent)
        self.callback.init_callback(self.model)
        self._sync()
        self.callback.on_training_start({}, {})

    def _sync(self) -> None:
        loop, index = self.loop, self.index
        copy_member(self.agent, index, self.model, to_sb3=True)
        buffer, replay, n = self.model.replay_buffer, loop.replay, loop.replay.size
        buffer.observations[:n, 0] = replay.storage["observations"][index, :n].numpy()
        buffer.next_observations[:n, 0] = replay.storage["next_observations"][index, :n].numpy()
        buffer.actions[:n, 0] = replay.storage["actions"][index, :n].numpy()
        buffer.rewards[:n, 0] = replay.storage["rewards"][index, :n, 0].numpy()
        buffer.dones[:n, 0] = replay.storage["dones"][index, :n, 0].numpy()
        buffer.pos, buffer.full = replay.pos, replay.full
        loop.sync_controller_clocks()
        member = loop.members[index].controller
        self.controller.clock, self.controller.num_updates = member.clock, member.num_updates
        self.model.num_timesteps = loop.num_timesteps
        if hasattr(self, "callback"):
            self.callback.num_timesteps = loop.num_timesteps  # SB3 sets it in on_step

    def env_stepped(self, loop) -> None:
        super().env_stepped(loop)
        if loop.num_timesteps % loop.train_freq == 0:  # SB3's rollout end (train_freq env steps collected)
            self._sync()
            self.callback.on_rollout_end()

    def learn(self, *args, **kwargs) -> None:
        super().learn(*args, **kwargs)
        self._sync()
        self.callback.on_training_end()


def _rows(path: Path) -> list[dict[str, str]]:
    """The diagnostics rows of a ``progress.csv``: the step columns and every ``diagnostics/`` column."""
    with open(path) as f:
        rows = [row for row in csv.DictReader(f) if row.get(STEP_KEY)]
    return [{k: v for k, v in row.items() if k.startswith(PREFIX) or k == "time/total_timesteps"} for row in rows]


def _same(a: dict, b: dict) -> bool:
    """Equal nested dicts of floats (NaN equals NaN)."""
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        if isinstance(value, dict):
            if not _same(value, b[key]):
                return False
        elif not (value == b[key] or (math.isnan(value) and math.isnan(b[key]))):
            return False
    return True


@pytest.mark.parametrize(("agent", "method"), [("sac", "rigl"), ("dqn", "set"), ("dqn", "dense")])
def test_a_members_diagnostics_are_the_sb3_paths_for_its_weights_masks_and_replay(agent, method, tmp_path):
    """At every point, the member's row equals the SB3 path's callback's on the same weights, masks and replay
    contents (so the same batch), clock and mask history; and so do the values at the end (``summary.json``)."""
    run = ReferencedRun(_plans(agent, tmp_path, [(1, "static"), (0, method)], *DIAG), [32, 32], tmp_path / "pop", "cpu", False)
    run.shadow(1, tmp_path / "reference")
    run.learn()
    summary = run.finish()[1]
    ours = _rows(tmp_path / f"{method}_0" / "progress.csv")
    reference = _rows(tmp_path / "reference" / "progress.csv")
    assert len(ours) >= 5 and ours == reference
    assert _same(summary["diagnostics"], run.callback.last)
    churn = [float(row[f"{PREFIX}/{group}/churn_last"]) for row in ours for group in summary["diagnostics"]]
    if method == "dense":
        assert not any(churn)
    else:  # the mask history matters: connections changed at the last topology update before some points
        assert any(value > 0 for value in churn)
        assert run.members[1].controller.num_updates > 1
