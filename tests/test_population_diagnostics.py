"""Training diagnostics per population member (issue 21, docs/design.md decision 42): the SB3 path's values, points,
rows, TensorBoard scalars and ``summary.json`` entries; a member's own, whatever its population."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from stable_baselines3.common.logger import configure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.callbacks import TrainingStopped
from agents.diagnostics_callback import PREFIX, STEP_KEY, DiagnosticsCallback, diagnostics_settings
from agents.population.export import copy_member
from experiment.member_start import sb3_start
from experiment.population import plan_member
from experiment.population_records import PopulationRun
from tests.agent_helpers import tiny_run
from tests.test_population import _member_state, _plans, _trainer

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
        like = getattr(self.model, "replay_buffer", None)
        if like is not None:  # off-policy: a real SB3 buffer of the population's capacity
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


@pytest.mark.parametrize(("agent", "method"), [("sac", "rigl"), ("dqn", "set"), ("dqn", "dense"), ("td3", "rigl")])
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


def _diagnostics(run_dir: Path) -> tuple[list[dict[str, str]], dict]:
    return _rows(run_dir / "progress.csv"), json.loads((run_dir / "summary.json").read_text())["diagnostics"]


@pytest.mark.parametrize("agent", ["sac", "dqn"])
def test_a_members_diagnostics_do_not_depend_on_its_population(agent, tmp_path):
    """A member measured alone and inside a population of 3 (other seeds and methods, another order): the same rows
    and final values, bit for bit (its batch comes from its own rows and its own seed)."""
    for name, members in (("alone", [(3, "rigl")]), ("three", [(5, "set"), (3, "rigl"), (0, "dense")])):
        run = _trainer(agent, tmp_path / name, members, *DIAG)
        run.learn()
        run.finish()
    alone, three = _diagnostics(tmp_path / "alone" / "rigl_3"), _diagnostics(tmp_path / "three" / "rigl_3")
    assert len(alone[0]) >= 5 and alone[0] == three[0]
    assert _same(alone[1], three[1])
    assert _diagnostics(tmp_path / "three" / "set_5")[0] != alone[0]  # the others' are their own


def test_diagnostics_leave_every_members_training_unchanged(tmp_path):
    """Measuring (building the SB3 models included) draws nothing the members draw: the same weights, masks, Adam
    moments and evaluations with diagnostics on and off."""
    members = [(0, "rigl"), (1, "dense")]
    runs = {}
    for name, extra in (("on", DIAG), ("off", ("diagnostics.freq=0",))):
        runs[name] = _trainer("dqn", tmp_path / name, members, *extra)
        runs[name].learn()
    assert runs["on"].diagnostics is not None and runs["off"].diagnostics is None
    assert all(_rows(tmp_path / "on" / f"{m}_{s}" / "progress.csv") for s, m in members)
    for seed, _ in members:
        on, off = _member_state(runs["on"], seed), _member_state(runs["off"], seed)
        assert all(torch.equal(on[key], off[key]) for key in on), seed
    assert [m.eval_results for m in runs["on"].members] == [m.eval_results for m in runs["off"].members]


def _tensorboard_tags(run_dir: Path) -> set[str]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag for tag in events.Tags()["scalars"] if tag.startswith(PREFIX)}


@pytest.mark.parametrize(("agent", "method"), [("sac", "rigl"), ("dqn", "set")])
def test_a_population_writes_the_sb3_paths_diagnostics_columns_scalars_and_summary(agent, method, tmp_path):
    """The same ``progress.csv`` columns, TensorBoard tags and ``summary.json`` keys as a run of the SB3 path."""
    from experiment.plan import plan_run
    from experiment.sb3 import train

    extra = ("checkpoint_freq=0", "tensorboard=true", *DIAG)
    sb3 = train(plan_run(tiny_run(agent, method, tmp_path / "sb3", *extra)))
    run = PopulationRun(
        [plan_member(tiny_run(agent, method, tmp_path / "pop", *extra))], [32, 32], tmp_path / "p", "cpu", False
    )
    run.learn()
    population = run.finish()[0]
    with open(tmp_path / "sb3" / "progress.csv") as f:
        sb3_columns = {c for c in next(csv.reader(f)) if c.startswith(PREFIX)}
    with open(tmp_path / "pop" / "progress.csv") as f:
        population_columns = {c for c in next(csv.reader(f)) if c.startswith(PREFIX)}
    assert len(sb3_columns) >= 10 and population_columns == sb3_columns
    assert _tensorboard_tags(tmp_path / "pop") == _tensorboard_tags(tmp_path / "sb3") == sb3_columns
    assert {g: set(v) for g, v in population["diagnostics"].items()} == {g: set(v) for g, v in sb3["diagnostics"].items()}
    steps = [int(float(row[STEP_KEY])) for row in _rows(tmp_path / "pop" / "progress.csv")]
    assert steps == [50 * (i + 1) for i in range(len(steps))] and len(steps) >= 3  # the SB3 path's points


@pytest.mark.parametrize("agent", ["sac", "dqn"])
def test_a_resumed_population_measures_where_and_what_the_uninterrupted_one_does(agent, tmp_path):
    """The next measurement point travels with the population's checkpoint: a checkpoint taken after the training
    that reached a point, before that point's rollout end, still gets its row after the resume."""
    members = [(0, "rigl"), (1, "dense")]
    straight = _trainer(agent, tmp_path / "straight", members, *DIAG)
    straight.learn()
    straight.finish()
    first = _trainer(agent, tmp_path / "resumed", members, *DIAG)
    # a stop right after the checkpoint at step 250, whose training reached gradient step 150 (learning_starts=100):
    # that point's rollout end, and its row, is step 251's
    with pytest.raises(TrainingStopped):
        first.learn(checkpoint_freq=250, stop=lambda: first.num_timesteps >= 250)
    first.close()
    resumed = _trainer(agent, tmp_path / "resumed", members, *DIAG, "resume=true")
    resumed.load_checkpoint()
    resumed.learn()
    resumed.finish()
    for seed, method in members:
        whole = _rows(tmp_path / "straight" / f"{method}_{seed}" / "progress.csv")
        again = _rows(tmp_path / "resumed" / f"{method}_{seed}" / "progress.csv")
        keep = [k for k in whole[0] if not k.endswith("churn_initial") and not k.endswith("churn_last")]
        assert "150" in {row[STEP_KEY].split(".")[0] for row in again}
        assert len(whole) >= 5 and [{k: r[k] for k in keep} for r in again] == [{k: r[k] for k in keep} for r in whole]


class ReferencedRolloutRun(ReferencedRun):
    """:class:`ReferencedRun` for on-policy members: at every rollout end the SB3 model's own ``RolloutBuffer`` is
    filled with the member's transitions by SB3's ``add`` and its advantages and returns computed by SB3's
    ``compute_returns_and_advantage`` (not by the population's GAE)."""

    def _sync(self) -> None:
        loop, index, model = self.loop, self.index, self.model
        copy_member(self.agent, index, model, to_sb3=True)
        buffer, rows = model.rollout_buffer, {name: value[:, index] for name, value in loop.buffer.items()}
        buffer.reset()
        for t in range(loop.n_steps):
            buffer.add(
                rows["obs"][t : t + 1].numpy(), rows["actions"][t : t + 1].numpy(), rows["rewards"][t : t + 1].numpy(),
                rows["episode_starts"][t : t + 1].numpy(), rows["values"][t : t + 1], rows["log_probs"][t : t + 1],
            )  # fmt: skip
        with torch.no_grad():
            last = model.policy.predict_values(torch.as_tensor(loop._obs[index : index + 1], dtype=torch.float32))
        buffer.compute_returns_and_advantage(last.flatten(), loop._episode_starts[index : index + 1])
        model._current_progress_remaining = 1.0 - max(loop.num_timesteps - loop.n_steps, 0) / loop.total
        loop.sync_controller_clocks()
        member = loop.members[index].controller
        self.controller.clock, self.controller.num_updates = member.clock, member.num_updates
        model.num_timesteps = loop.num_timesteps
        if hasattr(self, "callback"):
            self.callback.num_timesteps = loop.num_timesteps

    def env_stepped(self, loop) -> None:
        PopulationRun.env_stepped(self, loop)

    def rollout_ended(self, loop) -> None:
        super().rollout_ended(loop)
        self._sync()
        self.callback.on_rollout_end()


def test_a_ppo_members_diagnostics_are_the_sb3_paths_for_its_weights_masks_and_rollout(tmp_path):
    """PPO members: each rollout end's row equals the SB3 path's callback's on the same weights, masks and rollout
    (advantages and returns computed by SB3's ``RolloutBuffer``)."""
    extra = ("agent.normalize=false", "diagnostics.freq=4")  # tiny_run: 64-step rollouts, 2 epochs of 32
    plans = [
        plan_member(tiny_run("ppo", method, tmp_path / f"{method}_{seed}", f"seed={seed}", "checkpoint_freq=0", *extra))
        for seed, method in ((1, "static"), (0, "rigl"))
    ]
    run = ReferencedRolloutRun(plans, [32, 32], tmp_path / "population", "cpu", False)
    run.shadow(1, tmp_path / "reference")
    run.learn()
    summary = run.finish()[1]
    ours, reference = _rows(tmp_path / "rigl_0" / "progress.csv"), _rows(tmp_path / "reference" / "progress.csv")
    assert len(ours) >= 3 and ours == reference
    assert _same(summary["diagnostics"], run.callback.last)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("agent", ["sac", "dqn"])
def test_cuda_population_measures_its_members_between_graph_replays_and_trains_as_without(agent, tmp_path):
    """On CUDA with captured steps: every member gets its rows (the SB3 copies on the GPU), and the members train as
    with diagnostics off (a measurement reads the batched tensors between graph replays only)."""
    members = [(0, "rigl"), (1, "dense")]
    runs = {}
    for name, extra in (("on", DIAG), ("off", ("diagnostics.freq=0",))):
        plans = _plans(agent, tmp_path / name, members, *extra)
        runs[name] = PopulationRun(plans, [32, 32], tmp_path / f"population_{name}", "cuda", True)
        runs[name].learn()
    assert runs["on"].loop._graphs
    for seed, method in members:
        rows = _rows(tmp_path / "on" / f"{method}_{seed}" / "progress.csv")
        assert len(rows) >= 5 and all(math.isfinite(float(v)) for row in rows for k, v in row.items() if "grad_snr" in k)
        on, off = _member_state(runs["on"], seed), _member_state(runs["off"], seed)
        for key, tensor in off.items():  # the tolerance of test_population_cuda's graph-vs-eager comparison
            torch.testing.assert_close(on[key], tensor, atol=1e-5, rtol=1e-4, msg=f"{seed} {key}")


def test_a_failing_measurement_warns_and_the_population_trains_on(tmp_path, monkeypatch, capsys):
    """As on the SB3 path: one warning per member, its ``summary.json`` says where, training completes."""
    import agents.diagnostics_callback

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(agents.diagnostics_callback, "measure_group", broken)
    run = _trainer("dqn", tmp_path, [(0, "set"), (1, "dense")], *DIAG)
    run.learn()
    summaries = run.finish()
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert all(s["diagnostics"] == {"error": "at gradient step 50: RuntimeError: boom"} for s in summaries)
    assert capsys.readouterr().err.count("warning: diagnostics stopped at gradient step 50: RuntimeError: boom\n") == 2
    assert not _rows(tmp_path / "set_0" / "progress.csv")
