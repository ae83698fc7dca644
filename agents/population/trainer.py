"""The population engine's training loop: K members of one agent trained as one batched computation.

It reproduces SB3's off-policy loop per member (``OffPolicyAlgorithm.learn`` with ``train_freq`` steps per rollout):
warm-up with uniform random actions, one env step, the caller's per-step records (evaluation happens there, before
training on that step, as SB3's ``EvalCallback``), the agent's per-step work (DQN's target sync), storing the
transition, then ``gradient_steps`` updates once ``num_timesteps > learning_starts``; after every gradient step each
member's own :class:`~sparse_rl.TopologyController` advances (the SB3 path's optimizer-step clock). An agent whose
clock optimizer steps every ``clock_stride`` gradient steps (TD3's delayed actor) advances the controllers only at
those steps, as ``agents.build.attach_controller`` ticks them (docs/design.md decisions 31 and 40).

Each member is reproducible on its own: it starts from the SB3 path's model of its run (weights, masks, the
controller's generator, the seeded action space of SB3's warm-up; :class:`MemberStart`), and every later random
draw comes from its own counter-based stream (:mod:`agents.population.streams`), so its numbers do not depend on
the rest of the population. One population step after the env step is one device computation: write the
transition, the update(s), the next action; on CUDA it is one captured CUDA graph, fed by one host→device copy and
read by one device→host copy. Steps where a topology update is due run eagerly, with the controllers stepped
between the update and the next action, as on the SB3 path.

The loop knows members by their plain settings (:class:`MemberSettings`) and the agent only through the
:class:`~agents.population.base.PopulationAgent` protocol. What is written where (logs, evaluations, summaries,
models, checkpoints) is the caller's, told through :class:`LoopHooks` (``experiment.population_records``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm

from agents.population.base import DeviceClock, EnvClock, PopulationAgent, polyak_
from agents.population.export import copy_member
from agents.population.member_envs import MemberEnvs
from agents.population.normalize import MemberNormalize
from agents.population.replay import PopulationReplay
from agents.population.streams import MemberStreams
from agents.spec import off_policy_gradient_steps
from envs import EnvSpec
from sparse_rl.config import SparsityConfig
from sparse_rl.controller import NonFiniteError, SparsityInvariantError, TopologyController

CUDA_GRAPH_WARMUP = 3  # eager runs of a step before it is captured (PyTorch's CUDA-graph recipe)


@dataclass(frozen=True)
class MemberStart:
    """A member's start as the SB3 path makes it: the SB3 model of its run (weights, masks, the action space SB3
    seeded for its warm-up) and the controller attached to it (masks drawn, its generator where the SB3 run's is)."""

    model: BaseAlgorithm
    controller: TopologyController


@dataclass(frozen=True)
class MemberSettings:
    """What differs between the members of one population."""

    seed: int
    sparsity: SparsityConfig  # the core's config of this member's method
    decay: Mapping[str, float]  # per-group kernel L2 coefficients (agents.decay.kernel_decay)
    start: Callable[[], MemberStart]  # the SB3 path's start of this run (experiment.member_start.sb3_start)


@dataclass(frozen=True)
class LoopSettings:
    """What the members share: SB3's off-policy loop settings."""

    total_timesteps: int
    learning_starts: int
    train_freq: int
    gradient_steps: int
    batch_size: int
    buffer_size: int


# (observation space, action space, members' decays, device, capturable) -> the batched agent
AgentFactory = Callable[[spaces.Space, spaces.Space, Sequence[Mapping[str, float]], torch.device, bool], PopulationAgent]


class TopologyStats:
    """A controller's :meth:`~sparse_rl.TopologyController.stats`, recomputed only when its masks change (they count
    each layer's mask: a device sync per layer on CUDA). ``stats()`` is what logging reads."""

    def __init__(self, controller: TopologyController) -> None:
        self.controller = controller
        self._stats = controller.stats()

    def refresh(self) -> None:
        self._stats = self.controller.stats()

    def stats(self) -> dict[str, Any]:
        return self._stats


@dataclass
class Member:
    """One member as the loop sees it: its controller, its warm-up action space and whether it still trains."""

    index: int
    settings: MemberSettings
    controller: TopologyController
    action_space: spaces.Space  # SB3's warm-up draws (``action_space.sample()``), seeded as the SB3 path seeds it
    topology: TopologyStats
    next_update: float = math.inf  # the first gradient step at which the controller has work
    status: str = "running"
    error: str | None = None


def next_update_step(controller: TopologyController, after: int) -> float:
    """The first gradient step > ``after`` at which ``controller.step`` changes something (``inf``: none).

    ``update_due`` is monotone in the step (an update point, once reached, stays due until applied), so a bisection
    over the schedule's window finds it; a controller with per-step work (an N:M recipe's decay) is due every step.
    """
    if getattr(controller, "latent_active", False):
        return after + 1
    window = getattr(controller.updater, "window", None)
    if window is None:
        return math.inf
    high = max(int(window.end), after + 1)
    if not controller.update_due(high):
        return math.inf
    low = after + 1
    while low < high:
        middle = (low + high) // 2
        if controller.update_due(middle):
            high = middle
        else:
            low = middle + 1
    return low


class LoopHooks(Protocol):
    """What the loop tells its caller (records, evaluation, checkpoints)."""

    def episode_ended(self, loop: PopulationTrainer, member: Member, episode: Mapping[str, Any]) -> None:
        """A running member's episode ended (Monitor's ``{"r", "l", "t"}``)."""

    def env_stepped(self, loop: PopulationTrainer) -> None:
        """Every member took one env step; called before the agent's per-step work and the step's training."""

    def step_done(self, loop: PopulationTrainer) -> None:
        """The env step, its training and health checks are done."""

    def member_failed(self, loop: PopulationTrainer, member: Member) -> None:
        """``member`` was just marked failed (``member.error`` says why); the others go on."""


class PopulationTrainer:
    """Trains ``members`` (one run each) of the agent ``make_agent`` builds, together, on ``env``."""

    normalizer: MemberNormalize | None = None  # VecNormalize per member (the on-policy loop's, agent.normalize)

    def __init__(
        self,
        members: Sequence[MemberSettings],
        settings: LoopSettings,
        env: EnvSpec,
        make_agent: AgentFactory,
        device: str,
        cuda_graph: bool,
        env_workers: int = 0,
    ) -> None:
        self.settings = settings
        self.learning_starts, self.batch_size = settings.learning_starts, settings.batch_size
        self.train_freq, self.gradient_steps = settings.train_freq, settings.gradient_steps
        self._build(members, env, make_agent, device, cuda_graph, env_workers)
        steps = off_policy_gradient_steps(
            settings.total_timesteps, self.learning_starts, self.train_freq, self.gradient_steps, 1
        )
        # the last clock value the controllers reach (the SB3 path's AgentSpec.gradient_steps, e.g. agents.td3's)
        steps = max(self.clock_stride, steps // self.clock_stride * self.clock_stride)
        self.members: list[Member] = [self._start_member(i, member, steps) for i, member in enumerate(members)]
        targets, sources = zip(*self.agent.target_pairs())
        polyak_(targets, sources, 1.0)  # targets start as copies (SB3)
        self.agent.refresh_masks()
        capacity = min(settings.buffer_size, settings.total_timesteps)
        self.replay = PopulationReplay(self.k, capacity, self.agent.obs_dim, self.agent.replay_action_dim, self.device)
        self.num_timesteps = 0
        self.clock = 0  # gradient steps
        # the same counters on the device (a captured graph reads and advances them) and the budget
        self._step_t = torch.zeros((), dtype=torch.int64, device=self.device)
        self._clock_t = torch.zeros((), dtype=torch.int64, device=self.device)
        self._total_t = torch.zeros((), dtype=torch.float64, device=self.device)
        self.total = settings.total_timesteps  # may be raised between learn() calls (benchmarks)
        self.last_metrics: dict[str, torch.Tensor] = {}
        self._obs = self.envs.reset()
        # one step's input: the transition (replay row), then the observation the next action acts on
        width = self.replay.row_width + self.agent.obs_dim
        self._staging = torch.zeros(self.k, width, pin_memory=self.device.type == "cuda")
        self._step_in = torch.zeros(self.k, width, device=self.device)
        self._act_out = torch.zeros(self.k, self.agent.replay_action_dim, device=self.device)
        self._act_host = torch.zeros(self.k, self.agent.replay_action_dim, pin_memory=self.device.type == "cuda")
        self._actions: np.ndarray | None = None  # replay-form actions for env step ``_actions_step``
        self._actions_step = -1
        # one captured graph per (updates, act, clock phase): with clock_stride > 1 the phase says which of the
        # step's updates are clock steps (TD3: critic-only and actor steps alternate)
        self._graphs: dict[tuple[int, bool, int], torch.cuda.CUDAGraph] = {}
        self._graph_metrics: dict[tuple[int, bool, int], dict[str, torch.Tensor]] = {}
        self._eager_runs: dict[tuple[int, bool, int], int] = {}
        self._next_update = min((m.next_update for m in self.members), default=math.inf)

    def _build(
        self,
        members: Sequence[MemberSettings],
        env: EnvSpec,
        make_agent: AgentFactory,
        device: str,
        cuda_graph: bool,
        env_workers: int,
    ) -> None:
        """What every loop starts from: the device, the members' streams and envs, and the batched agent."""
        self.device = torch.device(device)
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.k = len(members)
        self.streams = MemberStreams([m.seed for m in members], self.device)
        self.envs = MemberEnvs(env, [m.seed for m in members], env_workers)
        self.action_space = self.envs.action_space
        self.agent = make_agent(
            self.envs.observation_space, self.action_space, [m.decay for m in members], self.device, self.cuda_graph
        )
        self.clock_stride = int(self.agent.clock_stride)

    def _start_member(self, index: int, member: MemberSettings, steps: int) -> Member:
        """Copy the SB3 path's start of ``member`` into row ``index``; its controller adopts the masks and continues
        the SB3 controller's generator."""
        start = member.start()
        copy_member(self.agent, index, start.model, to_sb3=False)
        controller = TopologyController(self.agent.member_groups(index), member.sparsity, steps, member.seed)
        controller.init_masks(existing=controller.sparse)
        controller.generator.set_state(start.controller.generator.get_state())
        action_space = copy.deepcopy(start.model.action_space)  # SB3 seeded it in set_random_seed
        next_update = self._next_update_step(controller, 0)
        return Member(index, member, controller, action_space, TopologyStats(controller), next_update)

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        self._total = int(value)
        self._total_t.fill_(float(value))

    @property
    def active(self) -> np.ndarray:
        return np.array([m.status == "running" for m in self.members])

    @property
    def env_clock(self) -> EnvClock:
        return EnvClock(self.num_timesteps, self.total, self.learning_starts)

    @property
    def n_updates(self) -> int:
        """SB3's ``_n_updates`` (logged as ``train/n_updates``): gradient steps (off-policy ``train()``)."""
        return self.clock

    def member_n_updates(self, member: int) -> int:
        """SB3's ``_n_updates`` of member ``member`` (off-policy: every member's is :attr:`n_updates`)."""
        return self.n_updates

    def eval_actions(self, obs: np.ndarray) -> np.ndarray:
        """The members' deterministic actions for evaluation observations (the agent's ``eval_actions``)."""
        return self.agent.eval_actions(obs)

    # ----------------------------------------------------------------- the loop
    def learn(self, hooks: LoopHooks, nan_check_freq: int = 1000) -> None:
        """Train until ``total`` env steps, telling ``hooks``; members with non-finite weights are failed alone."""
        while self.num_timesteps < self.total:
            self._env_step(hooks)
            if self.num_timesteps % nan_check_freq == 0:
                self.check_members(hooks)
            hooks.step_done(self)
        self.check_members(hooks)

    def _env_step(self, hooks: LoopHooks) -> None:
        """Act, step every member's env, report ended episodes, then the population step on the device."""
        if self.env_clock.warmup:
            member_spaces, clock = [m.action_space for m in self.members], DeviceClock(self._step_t, self._total_t)
            env_actions, replay_actions = self.agent.warmup_actions(member_spaces, self.streams, clock)
        else:
            replay_actions = self._policy_actions()
            env_actions = self.agent.env_actions(replay_actions, self.active)
        result = self.envs.step(env_actions)
        self.num_timesteps += 1
        for member in self.members:
            episode = result.episodes[member.index]
            if episode is not None and member.status == "running":
                hooks.episode_ended(self, member, episode)
        hooks.env_stepped(self)
        self.agent.after_env_step(self.env_clock)
        row = [self._obs, replay_actions, result.rewards, result.real_next_obs, result.terminated, result.next_obs]
        self._staging.copy_(torch.from_numpy(np.concatenate([np.asarray(v, np.float32).reshape(self.k, -1) for v in row], 1)))
        self._step_in.copy_(self._staging)  # the step's one host→device copy (synchronous: staging is reused)
        training = self.num_timesteps > self.learning_starts and self.num_timesteps % self.train_freq == 0
        act = self.num_timesteps >= self.learning_starts and self.num_timesteps < self.total
        self._population_step(self.gradient_steps if training else 0, act)
        self._obs = result.next_obs

    def _policy_actions(self) -> np.ndarray:
        """The replay-form actions for the coming env step: the last population step's, or computed now (e.g. the
        first step after a resume); the same numbers either way (the streams are counter-based)."""
        if self._actions_step != self.num_timesteps:
            self._step_in[:, self.replay.row_width :].copy_(torch.as_tensor(self._obs, dtype=torch.float32))
            self._act_out.copy_(self._act(self._step_t))
            self._actions, self._actions_step = self._read_actions(), self.num_timesteps
        return self._actions

    def _act(self, step: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            obs = self._step_in[:, self.replay.row_width :]
            return self.agent.policy_actions(obs, self.streams, DeviceClock(step, self._total_t))

    def _read_actions(self) -> np.ndarray:
        """The step's one device→host copy."""
        if self.device.type != "cuda":
            return self._act_out.numpy().copy()
        self._act_host.copy_(self._act_out, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return self._act_host.numpy().copy()

    def _population_step(self, updates: int, act: bool) -> None:
        """Write the transition, run ``updates`` gradient steps, compute the next action: a CUDA-graph replay, or
        eager where a topology update is due (the controllers step between the update and the next action)."""
        topology = updates > 0 and self.clock + updates >= self._next_update  # once per step, not per member
        key = (updates, act, self.clock % self.clock_stride)
        if topology or not self.cuda_graph:
            metrics = self._step_body(updates, act, topology)
        else:
            metrics = self._graphed_step(key)
        if updates:
            self.last_metrics = metrics
            if not topology:
                self.clock += updates
        self.replay.advance()
        if act:
            self._actions, self._actions_step = self._read_actions(), self.num_timesteps

    def _step_body(self, updates: int, act: bool, topology: bool = False) -> dict[str, torch.Tensor]:
        """The device work of one population step (graph-capturable when ``topology`` is false)."""
        self._step_t.add_(1)
        self.replay.write(self._step_in[:, : self.replay.row_width])
        metrics: dict[str, torch.Tensor] = {}
        start = self.clock  # the host clock before this step's updates (advanced here only when ``topology``)
        for i in range(updates):
            step = start + i + 1  # SB3's _n_updates after its increment
            clock_step = step % self.clock_stride == 0
            snapshot = topology and clock_step and any(m.controller.wants_dense_grad(step) for m in self._due(step))
            batch = self.replay.sample(self.batch_size, self.streams, self._clock_t)
            noise = self.agent.update_noise(self.streams, self._clock_t, self.batch_size)
            metrics = self.agent.update(*batch, *noise, snapshot_dense=snapshot, clock_step=clock_step)
            self._clock_t.add_(1)
            if topology:
                self.clock += 1
                if clock_step:
                    self._step_controllers()
        if act:
            self._act_out.copy_(self._act(self._step_t))
        return metrics

    def _graphed_step(self, key: tuple[int, bool, int]) -> dict[str, torch.Tensor]:
        """CUDA_GRAPH_WARMUP eager runs on a side stream, then capture once, then replay the captured step."""
        graph = self._graphs.get(key)
        updates, act, _ = key  # the phase is the host clock's, which _step_body reads
        if graph is None and self._eager_runs.get(key, 0) < CUDA_GRAPH_WARMUP:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                metrics = self._step_body(updates, act)
            torch.cuda.current_stream().wait_stream(stream)
            self._eager_runs[key] = self._eager_runs.get(key, 0) + 1
            return metrics
        if graph is None:
            graph = self._graphs[key] = torch.cuda.CUDAGraph()
            for optimizer in self.agent.optimizers().values():
                optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                self._graph_metrics[key] = self._step_body(updates, act)
        graph.replay()
        return self._graph_metrics[key]

    # ----------------------------------------------------------------- topology
    def _due(self, t: int) -> list[Member]:
        return [m for m in self.members if m.next_update <= t]

    def _next_update_step(self, controller: TopologyController, after: int) -> float:
        """:func:`next_update_step` on the clock's steps: the first multiple of ``clock_stride`` at or after it (an
        update point between two clock steps is applied at the next one, as ``TopologyController.tick`` does)."""
        step = next_update_step(controller, after)
        return step if math.isinf(step) else -(-int(step) // self.clock_stride) * self.clock_stride

    def _step_controllers(self) -> None:
        """Step the controllers that have work at gradient step ``clock``; masks and statistics follow."""
        changed = False
        for member in self._due(self.clock):
            updates_before = member.controller.num_updates
            member.controller.step(self.clock)
            member.next_update = self._next_update_step(member.controller, self.clock)
            if member.controller.num_updates != updates_before:  # pruning changes masks, grows nothing
                member.topology.refresh()
                changed = True
        if changed:
            self.agent.refresh_masks()
        self._next_update = min(m.next_update for m in self.members)

    def sync_controller_clocks(self) -> None:
        """Controllers are stepped only where they have work: bring their clocks to the loop's last clock step
        (summaries, checks)."""
        for member in self.members:
            member.controller.advance_to(self.clock // self.clock_stride * self.clock_stride)

    # ----------------------------------------------------------------- health
    def check_members(self, hooks: LoopHooks) -> None:
        """Mark members with NaN/Inf weights (or broken invariants) failed; the others go on."""
        self.sync_controller_clocks()
        for member in self.members:
            if member.status != "running":
                continue
            try:
                member.controller.check_finite(f" at env step {self.num_timesteps} (gradient step {self.clock})")
                problem = self.agent.member_problem(member.index)
                if problem is not None:
                    raise NonFiniteError(f"{problem} at env step {self.num_timesteps}")
            except (NonFiniteError, SparsityInvariantError) as error:
                self.fail(member, str(error), hooks)

    def fail(self, member: Member, error: str, hooks: LoopHooks) -> None:
        self.sync_controller_clocks()
        member.status, member.error = "failed", error
        hooks.member_failed(self, member)

    def close(self) -> None:
        self.envs.close()

    # ----------------------------------------------------------------- state (for checkpoints)
    def state_tensors(self) -> dict[str, Any]:
        """The loop's tensors: agent, optimizers, replay, controllers, current observations (the members' streams
        are counter-based: the counters are in :meth:`state_json`)."""
        self.sync_controller_clocks()
        return {
            "agent": {k: v.detach().cpu() for k, v in self.agent.state_dict().items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.agent.optimizers().items()},
            "replay": self.replay.state_dict(),
            "controllers": [m.controller.state_dict() for m in self.members],
            "obs": torch.as_tensor(self._obs),
        }

    def state_json(self) -> dict[str, Any]:
        """The loop's JSON-serialisable state: counters and the envs' states."""
        return {"num_timesteps": self.num_timesteps, "clock": self.clock, "envs": self.envs.states()}

    @staticmethod
    def member_state(member: Member) -> dict[str, Any]:
        """A member's status and its warm-up action space's generator state."""
        return {"status": member.status, "error": member.error, "rng": member.action_space.np_random.bit_generator.state}

    def load_state(self, tensors: Mapping[str, Any], state: Mapping[str, Any]) -> None:
        """Continue exactly where :meth:`state_tensors` / :meth:`state_json` / :meth:`member_state` were taken."""
        self.agent.load_state_dict(tensors["agent"])
        for name, optimizer in self.agent.optimizers().items():
            optimizer.load_state_dict(tensors["optimizers"][name])
        self.replay.load_state_dict(tensors["replay"])
        self.num_timesteps, self.clock = int(state["num_timesteps"]), int(state["clock"])
        for member, controller_state, saved in zip(self.members, tensors["controllers"], state["members"]):
            member.controller.load_state_dict(controller_state)
            member.status, member.error = saved["status"], saved["error"]
            member.action_space.np_random.bit_generator.state = saved["rng"]
            member.next_update = self._next_update_step(member.controller, self.clock)
            member.topology.refresh()
        self._next_update = min(m.next_update for m in self.members)
        self.envs.restore(state["envs"], continue_streams=True)
        self._obs = tensors["obs"].numpy()
        self._step_t.fill_(self.num_timesteps)
        self._clock_t.fill_(self.clock)
        self._actions, self._actions_step = None, -1
        self.agent.refresh_masks()
