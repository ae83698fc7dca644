"""Training diagnostics per population member, measured by the SB3 path's own code (docs/design.md decision 42).

At a measurement point a running member is copied into an SB3 model of its run
(:func:`agents.population.export.copy_member`: weights, biases, masks, the agent's extras), the model's buffer shows
the member's own data (off-policy: :class:`MemberReplayRows`, the member's rows of the population replay), and the
SB3 path's :class:`~agents.diagnostics_callback.RunDiagnostics` measures it: the same measurement points on the
topology clock, the same batch draw (SB3's ``ReplayBuffer.sample`` under the global generators seeded from the
member's seed and the clock), the same per-sample losses (the agent's ``AgentSpec.diagnostic_losses``), metrics,
mask churn, rows and ``summary.json`` values. Nothing here asks which agent it has; a member's numbers depend on its
own weights, masks and data only, never on the rest of the population.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from agents.diagnostics_callback import DiagnosticsSettings, RunDiagnostics, isolated_rng
from agents.population.export import copy_member
from agents.population.replay import PopulationReplay
from agents.spec import AgentSpec
from sparse_rl.controller import SparseGroup

if TYPE_CHECKING:
    from agents.population.trainer import Member, PopulationTrainer

MemberModel = Callable[[int], BaseAlgorithm]  # member index -> an SB3 model of its run (its weights are copied in)
MemberData = Callable[[BaseAlgorithm, int], None]  # makes the model's buffer show the member's data now


class MemberReplayRows(ReplayBuffer):
    """SB3's ``ReplayBuffer`` over one member's rows of a :class:`PopulationReplay` (it holds only the last drawn rows).

    SB3's own ``sample`` draws the indices (numpy's global generator, over the member's filled size and write
    position); SB3's own ``_get_samples`` turns the drawn rows, gathered from the population's (device) tensors, into
    ``ReplayBufferSamples``. The population stores ``done`` as SB3 uses it (``terminated and not truncated``), so the
    rows carry no timeouts. ``like``: the model's own buffer (its spaces and dtypes).
    """

    def __init__(self, replay: PopulationReplay, member: int, like: ReplayBuffer) -> None:
        super().__init__(1, like.observation_space, like.action_space, device=like.device, n_envs=1)
        self.replay, self.member = replay, member
        self._dtypes = {"observations": like.observations.dtype, "actions": like.actions.dtype}

    def size(self) -> int:
        return self.replay.size

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        self.buffer_size, self.pos, self.full = self.replay.capacity, self.replay.pos, self.replay.full
        return super().sample(batch_size, env)

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> ReplayBufferSamples:
        index = torch.as_tensor(batch_inds, device=self.replay.device)
        rows = {name: tensor[self.member, index].cpu().numpy() for name, tensor in self.replay.storage.items()}
        n = len(batch_inds)
        self.observations = rows["observations"].reshape(n, 1, *self.obs_shape).astype(self._dtypes["observations"])
        self.next_observations = rows["next_observations"].reshape(n, 1, *self.obs_shape).astype(self.observations.dtype)
        self.actions = rows["actions"].reshape(n, 1, self.action_dim).astype(self._dtypes["actions"])
        self.rewards, self.dones = rows["rewards"].reshape(n, 1), rows["dones"].reshape(n, 1)
        self.timeouts = np.zeros((n, 1), dtype=np.float32)
        return super()._get_samples(np.arange(n), env)


def replay_rows(replay: PopulationReplay) -> MemberData:
    """Off-policy members: the model's replay buffer becomes :class:`MemberReplayRows` over the member's rows."""

    def show(model: BaseAlgorithm, member: int) -> None:
        buffer = model.replay_buffer
        if not isinstance(buffer, MemberReplayRows) or buffer.replay is not replay or buffer.member != member:
            model.replay_buffer = MemberReplayRows(replay, member, buffer)

    return show


def rollout_rows(loop: Any) -> MemberData:
    """On-policy members (:class:`agents.population.rollout.PopulationRolloutTrainer`): the model's ``RolloutBuffer``
    holds the member's full rollout with its advantages and returns (SB3 computes them before ``on_rollout_end``), and
    the model's remaining progress is SB3's there (its clip-range schedules read it)."""
    computed: dict[str, Any] = {}

    def show(model: BaseAlgorithm, member: int) -> None:
        if computed.get("at") != loop.num_timesteps:  # once per rollout end for every member
            computed["at"], computed["values"] = loop.num_timesteps, loop.advantages_and_returns()
        advantages, returns = computed["values"]
        rows = {
            "observations": loop.buffer["obs"], "actions": loop.buffer["actions"], "values": loop.buffer["values"],
            "log_probs": loop.buffer["log_probs"], "episode_starts": loop.buffer["episode_starts"],
            "advantages": advantages, "returns": returns,
        }  # fmt: skip
        buffer = model.rollout_buffer
        for name, tensor in rows.items():
            target = getattr(buffer, name)
            target[...] = tensor[:, member].cpu().numpy().reshape(target.shape)
        buffer.pos, buffer.full, buffer.generator_ready = buffer.buffer_size, True, False
        # SB3's learn() updates it after each rollout end, from the steps before that rollout
        model._current_progress_remaining = 1.0 - max(loop.num_timesteps - buffer.buffer_size, 0) / loop.total

    return show


class PopulationDiagnostics:
    """Every member's :class:`RunDiagnostics`, driven at the population loop's rollout ends (the caller's: off-policy
    every ``train_freq`` env steps, before the step's training; on-policy a full rollout, before its epochs).

    ``make_model``: an SB3 model of a member's run (built once per member, at its first measurement, with the global
    random generators' states restored afterwards); ``member_data``: shows a member's data in the model's buffer
    (:func:`replay_rows`, :func:`rollout_rows`); ``states``: each member's :meth:`RunDiagnostics.state` from the
    checkpoint a run resumes from; ``before_row(member)``: called before a member's measurement point, whose row
    is a dump of the member's logger (the caller records there what SB3 would have recorded since its last
    dump). Between measurement points and topology updates a rollout end costs one comparison
    (no per-member Python).
    """

    def __init__(
        self,
        loop: PopulationTrainer,
        settings: DiagnosticsSettings,
        seeds: Sequence[int],
        spec: AgentSpec,
        make_model: MemberModel,
        member_data: MemberData,
        states: Sequence[Mapping[str, Any] | None] | None = None,
        before_row: Callable[[int], None] | None = None,
    ) -> None:
        self.loop, self.spec, self.make_model, self.member_data = loop, spec, make_model, member_data
        self.before_row = before_row
        states = states or [None] * len(seeds)
        self.runs = [
            RunDiagnostics(settings, int(seed), member.controller.groups, spec, None if state is None else state["next"])
            for seed, member, state in zip(seeds, loop.members, states, strict=True)
        ]
        self._models: dict[int, tuple[BaseAlgorithm, list[SparseGroup]]] = {}
        self._check_at: float = 0

    def state(self, member: int) -> dict[str, int]:
        """Member ``member``'s :meth:`RunDiagnostics.state` (saved with the population's checkpoint)."""
        return self.runs[member].state()

    def last(self, member: int) -> dict[str, Any]:
        """Member ``member``'s latest values per group (``summary.json``'s ``diagnostics``)."""
        return self.runs[member].last

    def start(self) -> None:
        """At the training start (after a resume: the resumed masks are the initial ones, as on the SB3 path)."""
        self.loop.sync_controller_clocks()
        for member in self.loop.members:
            self.runs[member.index].start(member.controller.clock, member.controller.num_updates)
        self._check_at = self._next_check()

    def _running(self) -> list[Member]:
        return [m for m in self.loop.members if m.status == "running"]

    def _next_check(self) -> float:
        """The loop clock before which no member has a measurement point or a mask change."""
        running = self._running()
        return min([self.runs[m.index].next for m in running] + [m.next_update for m in running], default=np.inf)

    def at_rollout_end(self, loggers: Sequence[Logger]) -> None:
        """At a rollout end (SB3's ``on_rollout_end``: the rollout collected, its training not yet run) track the
        masks and measure the members whose point the clock has reached."""
        loop = self.loop
        if loop.clock < self._check_at:
            return
        loop.sync_controller_clocks()
        for member in self._running():
            run, controller = self.runs[member.index], member.controller
            run.track_masks(controller.num_updates, controller.sparse)
            if run.due(controller.clock):
                self._before_row(member.index)
                model, groups = self._model(member.index)
                run.at_rollout_end(model, groups, controller.clock, loggers[member.index], loop.num_timesteps)
        self._check_at = self._next_check()

    def at_training_end(self, loggers: Sequence[Logger]) -> None:
        """SB3's ``on_training_end``: a point the last gradient steps reached gets its row; ``last`` is measured."""
        self.loop.sync_controller_clocks()
        for member in self._running():
            run, controller = self.runs[member.index], member.controller
            run.track_masks(controller.num_updates, controller.sparse)
            due = run.due(controller.clock)
            if not due and controller.clock <= run.measured_at:
                continue  # nothing left to measure
            if due:
                self._before_row(member.index)
            model, groups = self._model(member.index)
            run.at_training_end(model, groups, controller.clock, loggers[member.index], self.loop.num_timesteps)
        self._check_at = self._next_check()

    def _before_row(self, member: int) -> None:
        if self.before_row is not None:
            self.before_row(member)

    def _model(self, member: int) -> tuple[BaseAlgorithm, list[SparseGroup]]:
        """The member's SB3 model holding its current weights, masks and data, and the model's groups."""
        if member not in self._models:
            state = random.getstate()
            with isolated_rng(0, self.loop.device):  # building seeds the global generators: the run's stay untouched
                model = self.make_model(member)
            random.setstate(state)
            self._models[member] = (model, self.spec.groups(model))
        model, groups = self._models[member]
        copy_member(self.loop.agent, member, model, to_sb3=True)
        self.member_data(model, member)
        return model, groups
