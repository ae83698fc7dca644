"""The population engine's on-policy loop: K PPO members collect rollouts and train on them as one computation.

It reproduces SB3's ``OnPolicyAlgorithm.learn`` per member (SB3 2.x ``stable_baselines3/common/on_policy_algorithm.py``
and ``buffers.RolloutBuffer``): ``n_steps`` env steps per rollout, each acting by a policy sample (the value and
log-probability kept), Box actions clipped for the env, an episode cut by the time limit bootstrapped with
``γ·V(terminal observation)`` added to its last reward; then GAE(λ) with the last values
(``compute_returns_and_advantage``), the learning rate of the remaining progress, and ``n_epochs`` passes over the
rollout in minibatches of ``batch_size``, each a :meth:`~agents.population.ppo.PopulationPPO.update`. Whole rollouts
are collected, the last one past the budget included, as SB3 does. Every optimizer step is one step of the topology
clock (``agents.ppo.SPEC``: ``clock_optimizer`` is the policy's optimizer), so each member's controller advances
after every minibatch step, as on the SB3 path. A member that ``target_kl`` stops early takes no further step in
that ``train()`` and its controller none either; after the ``train()`` its clock moves to the others' (the SB3 path's
``ClockSyncCallback`` at the next rollout start: ``advance_to``).

Each member's numbers are its own (docs/design.md decisions 34 and 41): its action samples come from its stream at
the env step, its minibatch order from its stream at the epoch (``Draw.REPLAY_INDEX``: which stored transitions a
gradient step reads), every computation is per member. What the loop shares with the off-policy one (members'
starts, controllers, health checks, the hooks, checkpoint pieces) is :class:`~agents.population.trainer.PopulationTrainer`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from stable_baselines3.common.utils import FloatSchedule

from agents.population.base import PopulationAgent
from agents.population.normalize import MemberNormalize
from agents.population.streams import Draw, MemberStreams
from agents.population.trainer import AgentFactory, LoopHooks, MemberSettings, PopulationTrainer, next_update_step
from agents.ppo import rollout_gradient_steps
from envs import EnvSpec

BUFFER_FIELDS = ("obs", "actions", "rewards", "episode_starts", "values", "log_probs")
MINIBATCH_FIELDS = ("obs", "actions", "values", "log_probs", "advantages", "returns")  # OnPolicyAgent.update's order
MEAN_METRICS = ("entropy_loss", "policy_gradient_loss", "value_loss", "clip_fraction")  # SB3's means over train()


@dataclass(frozen=True)
class RolloutSettings:
    """What the members share: SB3's on-policy loop settings (``learning_rate``: a float or SB3's schedule of the
    remaining progress, as :func:`agents.build.sb3_kwargs` builds it)."""

    total_timesteps: int
    n_steps: int
    n_epochs: int
    batch_size: int
    gamma: float
    gae_lambda: float
    learning_rate: float | Callable[[float], float]
    normalize: bool = False  # SB3's VecNormalize per member (agents.population.normalize)


class OnPolicyAgent(Protocol):
    """What this loop asks of an on-policy agent besides :class:`~agents.population.base.PopulationAgent`'s
    building, groups, evaluation and export (:class:`agents.population.ppo.PopulationPPO` implements it)."""

    def rollout_noise(self, streams: MemberStreams, rollout: int, n_steps: int) -> torch.Tensor:
        """The acting draws of a whole rollout ``[K, n_steps, ·]`` (row ``i``: env step ``rollout·n_steps + i``)."""

    def sample(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(buffer actions ``[K, ·]``, values ``[K]``, log-probabilities ``[K]``) for observations ``[K, obs]`` and
        this step's draws."""

    def values(self, obs: torch.Tensor) -> torch.Tensor:
        """Values ``[K, B]`` of observations ``[K, B, obs]``."""

    def update(
        self, *minibatch: torch.Tensor, snapshot_dense: bool = False, training: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """One minibatch step of the members still ``training`` (obs, actions, old values, old log-probs,
        advantages, returns); the metrics include ``continue_training`` (bool ``[K]``: those that took the step)."""

    def train_log(self) -> dict[str, torch.Tensor]:
        """Per-member entries ``[K]`` of SB3's ``train/`` log besides the losses (PPO: ``std``, ``clip_range``)."""


class RolloutHooks(LoopHooks, Protocol):
    def rollout_ended(self, loop: PopulationRolloutTrainer) -> None:
        """A rollout is complete, before its training (SB3's ``dump_logs`` of the iteration)."""


class PopulationRolloutTrainer(PopulationTrainer):
    """Trains ``members`` (one run each) of the on-policy agent ``make_agent`` builds, together, on ``env``."""

    def __init__(
        self,
        members: Sequence[MemberSettings],
        settings: RolloutSettings,
        env: EnvSpec,
        make_agent: AgentFactory,
        device: str,
        cuda_graph: bool,
        env_workers: int = 0,
    ) -> None:
        """``cuda_graph`` is accepted for the loop's common signature; this loop runs eagerly."""
        self.settings = settings
        self.learning_starts = 0  # no warm-up; every optimizer step is a clock step (the agent's clock_stride: 1)
        self.n_steps, self.n_epochs, self.batch_size = settings.n_steps, settings.n_epochs, settings.batch_size
        self.lr_schedule = FloatSchedule(settings.learning_rate)
        self._build(members, env, make_agent, device, False, env_workers)
        steps = rollout_gradient_steps(settings.total_timesteps, self.n_steps, 1, self.n_epochs, self.batch_size)
        self.members = [self._start_member(i, member, steps) for i, member in enumerate(members)]
        self.agent.refresh_masks()
        self.num_timesteps, self.clock, self.pos = 0, 0, 0
        self._total_t = torch.zeros((), dtype=torch.float64, device=self.device)
        self.total = settings.total_timesteps
        self.last_metrics: dict[str, torch.Tensor] = {}
        shapes = {"obs": (self.agent.obs_dim,), "actions": (self.agent.replay_action_dim,)}
        self.buffer = {f: torch.zeros(self.n_steps, self.k, *shapes.get(f, ()), device=self.device) for f in BUFFER_FIELDS}
        self.normalizer = MemberNormalize(self.k, self.agent.obs_dim) if settings.normalize else None
        self._obs = self.envs.reset()
        if self.normalizer is not None:  # VecNormalize.reset: the first observations update the statistics
            self._obs = self.normalizer.reset(self._obs)
        self._episode_starts = np.ones(self.k, dtype=bool)
        self._noise, self._noise_rollout = torch.zeros(0), -1  # the acting draws of rollout _noise_rollout
        self._next_update = min((m.next_update for m in self.members), default=float("inf"))
        self._stopped = np.zeros(self.k, dtype=bool)  # members target_kl stopped in the train() under way
        self.member_epochs = np.zeros(self.k, dtype=np.int64)  # SB3's _n_updates per member (epochs begun)

    @property
    def iteration(self) -> int:
        """Rollouts collected so far (SB3's ``iteration``)."""
        return self.num_timesteps // self.n_steps

    @property
    def n_updates(self) -> int:
        """SB3's ``_n_updates`` of PPO without early stops: epochs trained (``n_epochs`` per trained rollout)."""
        return (self.num_timesteps - self.pos) // self.n_steps * self.n_epochs

    def member_n_updates(self, member: int) -> int:
        """SB3's ``_n_updates`` of member ``member``: the epochs its ``train()`` calls began (one stopped early by
        ``target_kl`` counts the epoch it stopped in, and none after)."""
        return int(self.member_epochs[member])

    def _due(self, t: int) -> list:
        """Members with controller work at step ``t``, except those stopped early in this ``train()``."""
        return [m for m in self.members if m.next_update <= t and not self._stopped[m.index]]

    # ----------------------------------------------------------------- the loop
    def learn(self, hooks: RolloutHooks, nan_check_freq: int = 1000) -> None:
        """Collect and train until ``total`` env steps (the last rollout completed), telling ``hooks``."""
        while self.num_timesteps < self.total or self.pos > 0:
            self._env_step(hooks)
            if self.pos == self.n_steps:
                hooks.rollout_ended(self)
                self._train()
                self.pos = 0
            if self.num_timesteps % nan_check_freq == 0:
                self.check_members(hooks)
            hooks.step_done(self)
        self.check_members(hooks)

    def _env_step(self, hooks: LoopHooks) -> None:
        """SB3's ``collect_rollouts`` body: sample, step the envs, report episodes, bootstrap timeouts, store."""
        obs = torch.as_tensor(self._obs, dtype=torch.float32, device=self.device)
        rollout = self.num_timesteps // self.n_steps  # collecting: num_timesteps = rollout·n_steps + pos
        if self._noise_rollout != rollout:  # a rollout's draws at once (also the first step after a resume)
            self._noise, self._noise_rollout = self.agent.rollout_noise(self.streams, rollout, self.n_steps), rollout
        actions, values, log_probs = self.agent.sample(obs, self._noise[:, self.pos])
        result = self.envs.step(self.agent.env_actions(actions.cpu().numpy(), self.active))
        next_obs, env_rewards, terminal_obs = result.next_obs, result.rewards, result.real_next_obs
        if self.normalizer is not None:  # SB3's VecNormalize.step_wait, before the callbacks (an evaluation sees it)
            next_obs, env_rewards, terminal_obs = self.normalizer.step(next_obs, env_rewards, result.dones, terminal_obs)
        self.num_timesteps += 1
        for member in self.members:
            episode = result.episodes[member.index]
            if episode is not None and member.status == "running":
                hooks.episode_ended(self, member, episode)
        hooks.env_stepped(self)
        rewards = torch.as_tensor(env_rewards, dtype=torch.float32, device=self.device)
        truncated = np.asarray(result.dones) & ~np.asarray(result.terminated)
        if truncated.any():  # SB3: rewards[idx] += gamma * V(terminal observation) where TimeLimit.truncated
            with torch.no_grad():
                terminal = self.agent.values(self.agent._obs_tensor(terminal_obs))[:, 0]
            where = torch.as_tensor(truncated, device=self.device)
            rewards = torch.where(where, rewards + self.settings.gamma * terminal, rewards)
        row = {
            "obs": obs, "actions": actions, "rewards": rewards, "values": values, "log_probs": log_probs,
            "episode_starts": torch.as_tensor(self._episode_starts, dtype=torch.float32, device=self.device),
        }  # fmt: skip
        for field in BUFFER_FIELDS:
            self.buffer[field][self.pos] = row[field]
        self.pos += 1
        self._obs, self._episode_starts = next_obs, np.asarray(result.dones, dtype=bool)

    def eval_actions(self, obs: np.ndarray) -> np.ndarray:
        """The members' deterministic actions for evaluation observations ``[K, ·, obs]``; normalised first with each
        member's current statistics, frozen (SB3's ``EvalCallback`` syncs them into the eval ``VecNormalize``)."""
        return self.agent.eval_actions(obs if self.normalizer is None else self.normalizer.normalize_obs(obs))

    @torch.no_grad()
    def advantages_and_returns(self) -> tuple[torch.Tensor, torch.Tensor]:
        """SB3's ``RolloutBuffer.compute_returns_and_advantage`` over the full rollout ``[n_steps, K]``: GAE(λ) with
        the values of the observations after it, cut where the next step starts an episode. In float32 NumPy with
        SB3's operations, element by element (a recurrence over ``n_steps`` tiny arrays: NumPy's per-call cost is a
        fraction of torch's)."""
        last_values = self.agent.values(self.agent._obs_tensor(self._obs))[:, 0].cpu().numpy()
        dones = self._episode_starts.astype(np.float32)
        gamma, lam = self.settings.gamma, self.settings.gae_lambda
        values, rewards, starts = (self.buffer[f].cpu().numpy() for f in ("values", "rewards", "episode_starts"))
        advantages = np.zeros_like(values)
        last_gae = np.zeros_like(last_values)
        for step in reversed(range(self.n_steps)):
            if step == self.n_steps - 1:
                next_non_terminal, next_values = 1.0 - dones, last_values
            else:
                next_non_terminal, next_values = 1.0 - starts[step + 1], values[step + 1]
            delta = rewards[step] + gamma * next_values * next_non_terminal - values[step]
            last_gae = delta + gamma * lam * next_non_terminal * last_gae
            advantages[step] = last_gae
        advantages_t = torch.as_tensor(advantages, device=self.device)
        return advantages_t, advantages_t + self.buffer["values"]

    def minibatch_order(self, epoch: int) -> torch.Tensor:
        """Each member's permutation of its rollout for epoch ``epoch`` (counted over the run) ``[K, n_steps]``: the
        order of uniform 64-bit keys from its stream (SB3: ``np.random.permutation``)."""
        keys = self.streams.bits(Draw.REPLAY_INDEX, epoch, self.n_steps)
        return torch.argsort(keys, dim=1, stable=True)

    def _train(self) -> None:
        """SB3's ``PPO.train`` on the rollout: learning rate of the remaining progress, ``n_epochs`` × minibatches,
        each member's controller stepped after every optimizer step."""
        progress_remaining = 1.0 - self.num_timesteps / self.total  # SB3's _update_current_progress_remaining
        for optimizer in self.agent.optimizers().values():  # SB3's _update_learning_rate
            for group in optimizer.param_groups:
                group["lr"] = self.lr_schedule(progress_remaining)
        advantages, returns = self.advantages_and_returns()
        per_member = {  # [K, n_steps, ·]
            "obs": self.buffer["obs"].transpose(0, 1), "actions": self.buffer["actions"].transpose(0, 1),
            "values": self.buffer["values"].T, "log_probs": self.buffer["log_probs"].T,
            "advantages": advantages.T, "returns": returns.T,
        }  # fmt: skip
        log = TrainLog(self.k, self.device)
        training = torch.ones(self.k, dtype=torch.bool)  # SB3's continue_training per member (CPU)
        clock_end = self.clock + self.n_epochs * -(-self.n_steps // self.batch_size)  # agents.ppo.nominal_clock
        for epoch in range(self.n_epochs):
            if not bool(training.any()):
                break
            order = self.minibatch_order((self.iteration - 1) * self.n_epochs + epoch)
            log.begin_epoch(training)
            self.member_epochs += training.numpy()  # SB3's _n_updates += 1 after each epoch it began
            for start in range(0, self.n_steps, self.batch_size):
                if not bool(training.any()):
                    break
                index = order[:, start : start + self.batch_size]
                metrics = self._gradient_step([_take(per_member[f], index) for f in MINIBATCH_FIELDS], training)
                log.add(metrics, training)
                training = metrics["continue_training"].cpu()
        self.clock = clock_end  # the nominal clock; members stopped early catch up (the SB3 path's ClockSyncCallback)
        self._sync_stopped_clocks()
        self.last_metrics = log.values()
        self.last_metrics["explained_variance"] = _explained_variance(self.buffer["values"].T, returns.T)
        self.last_metrics.update(self.agent.train_log())

    def _gradient_step(self, batch: list[torch.Tensor], training: torch.Tensor) -> dict[str, torch.Tensor]:
        """One minibatch step of the members still ``training``; the controllers of those that stepped and have
        work at the new clock step follow."""
        step = self.clock + 1
        due = step >= self._next_update
        snapshot = due and any(m.controller.wants_dense_grad(step) for m in self._due(step))
        metrics = self.agent.update(*batch, snapshot_dense=snapshot, training=training)
        self._stopped = ~metrics["continue_training"].cpu().numpy()
        self.clock = step
        if due:
            self._step_controllers()
        return metrics

    def _sync_stopped_clocks(self) -> None:
        """The SB3 path's ``ClockSyncCallback`` at the rollout start after a ``train()``: the controller of a member
        stopped early moves to the nominal clock (``advance_to``: a due pruning/SET update is applied now, RigL's
        waits for the next gradient step)."""
        changed = False
        for member in self.members:
            if not self._stopped[member.index]:
                continue
            updates_before = member.controller.num_updates
            member.controller.advance_to(self.clock)
            member.next_update = self._next_update_step(member.controller, self.clock)
            if member.controller.num_updates != updates_before:
                member.topology.refresh()
                changed = True
        if changed:
            self.agent.refresh_masks()
        self._stopped[:] = False
        self._next_update = min(m.next_update for m in self.members)

    # ----------------------------------------------------------------- state (for checkpoints)
    def state_tensors(self) -> dict[str, Any]:
        """The loop's tensors: agent, optimizer, the rollout so far, controllers, current observations."""
        self.sync_controller_clocks()
        return {
            "agent": {k: v.detach().cpu() for k, v in self.agent.state_dict().items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.agent.optimizers().items()},
            "rollout": {f: v.cpu() for f, v in self.buffer.items()},
            "controllers": [m.controller.state_dict() for m in self.members],
            "obs": torch.as_tensor(self._obs),
            "episode_starts": torch.as_tensor(self._episode_starts),
            **({} if self.normalizer is None else {"normalize": self.normalizer.state()}),
        }

    def state_json(self) -> dict[str, Any]:
        return {
            "num_timesteps": self.num_timesteps, "clock": self.clock, "pos": self.pos, "envs": self.envs.states(),
            "member_epochs": self.member_epochs.tolist(), "adam_steps": self.agent.adam_steps.tolist(),
        }  # fmt: skip

    def load_state(self, tensors: Mapping[str, Any], state: Mapping[str, Any]) -> None:
        """Continue exactly where :meth:`state_tensors` / :meth:`state_json` / ``member_state`` were taken."""
        self.agent.load_state_dict(tensors["agent"])
        for name, optimizer in self.agent.optimizers().items():
            optimizer.load_state_dict(tensors["optimizers"][name])
        for field in BUFFER_FIELDS:
            self.buffer[field].copy_(tensors["rollout"][field])
        self.num_timesteps, self.clock, self.pos = int(state["num_timesteps"]), int(state["clock"]), int(state["pos"])
        self.member_epochs[:] = state.get("member_epochs", self.n_updates)  # before target_kl: every member's
        self.agent.adam_steps[:] = torch.as_tensor(state.get("adam_steps", [self.clock] * self.k))
        for member, controller_state, saved in zip(self.members, tensors["controllers"], state["members"]):
            member.controller.load_state_dict(controller_state)
            member.status, member.error = saved["status"], saved["error"]
            member.action_space.np_random.bit_generator.state = saved["rng"]
            member.next_update = next_update_step(member.controller, self.clock)
            member.topology.refresh()
        self._next_update = min(m.next_update for m in self.members)
        self.envs.restore(state["envs"], continue_streams=True)
        self._obs = tensors["obs"].numpy()
        self._episode_starts = tensors["episode_starts"].numpy().astype(bool)
        if self.normalizer is not None:
            self.normalizer.load_state(tensors["normalize"])
        self.agent.refresh_masks()


class TrainLog:
    """SB3's logging lists of one ``PPO.train`` per member ``[K]``: the losses and clip fractions of every minibatch
    a member trained on, the one it stopped at included (SB3 records them before its ``target_kl`` check), averaged;
    ``approx_kl`` over the last epoch it began (SB3 starts that list anew each epoch); ``loss`` of its last
    minibatch."""

    def __init__(self, k: int, device: torch.device) -> None:
        self.device = device
        zeros = torch.zeros(k, device=device)
        self.sums = {key: zeros for key in MEAN_METRICS}
        self.minibatches, self.kl_sum, self.epoch_minibatches, self.loss = zeros, zeros, zeros, zeros

    def begin_epoch(self, training: torch.Tensor) -> None:
        """An epoch begins for the members ``training`` (bool ``[K]``)."""
        begun = training.to(self.device)
        self.kl_sum = torch.where(begun, 0, self.kl_sum)
        self.epoch_minibatches = torch.where(begun, 0, self.epoch_minibatches)

    def add(self, metrics: Mapping[str, torch.Tensor], training: torch.Tensor) -> None:
        """A minibatch's ``metrics`` (``update``'s) for the members that were ``training`` when it began."""
        counted = training.to(self.device)
        for key in MEAN_METRICS:
            self.sums[key] = self.sums[key] + torch.where(counted, metrics[key], 0)
        self.kl_sum = self.kl_sum + torch.where(counted, metrics["approx_kl"], 0)
        self.epoch_minibatches, self.minibatches = self.epoch_minibatches + counted, self.minibatches + counted
        self.loss = torch.where(counted, metrics["loss"], self.loss)

    def values(self) -> dict[str, torch.Tensor]:
        """SB3's ``train/`` means (keys without the prefix)."""
        out = {key: value / self.minibatches for key, value in self.sums.items()}
        return {**out, "approx_kl": self.kl_sum / self.epoch_minibatches, "loss": self.loss}


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index[k]`` of each member's ``values[k]`` (``[K, n, ·]`` → ``[K, b, ·]``)."""
    expanded = index.view(*index.shape, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
    return torch.gather(values, 1, expanded)


def _explained_variance(predicted: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """SB3's ``explained_variance`` per member ``[K]``: 1 − Var[returns − predicted] / Var[returns] (NaN where
    Var[returns] = 0)."""
    var = returns.var(dim=1, unbiased=False)
    explained = 1 - (returns - predicted).var(dim=1, unbiased=False) / var
    return torch.where(var == 0, torch.nan, explained)


def zero_minibatch(agent: PopulationAgent, batch_size: int) -> list[torch.Tensor]:
    """A minibatch of zeros in :meth:`OnPolicyAgent.update`'s order for an on-policy ``agent`` (start-up cost
    probes)."""
    k, device = agent.k, agent.device
    shapes = {"obs": (agent.obs_dim,), "actions": (agent.replay_action_dim,)}
    return [torch.zeros(k, batch_size, *shapes.get(f, ()), device=device) for f in MINIBATCH_FIELDS]
