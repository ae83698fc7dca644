"""The population engine's training loop: K members of one agent trained as one batched computation.

It reproduces SB3's off-policy loop per member (``OffPolicyAlgorithm.learn`` with ``train_freq`` steps per rollout):
warm-up with uniform random actions, one env step, the caller's per-step records (evaluation happens there, before
training on that step, as SB3's ``EvalCallback``), the agent's per-step work (DQN's target sync), storing the
transition, then ``gradient_steps`` updates once ``num_timesteps > learning_starts``; after every gradient step each
member's own :class:`~sparse_rl.TopologyController` advances (the SB3 path's optimizer-step clock). On CUDA the update
is one captured CUDA graph; topology updates run outside it.

The loop knows members by their plain settings (:class:`MemberSettings`) and the agent only through the
:class:`~agents.population.base.PopulationAgent` protocol. What is written where (logs, evaluations, summaries,
models, checkpoints) is the caller's, told through :class:`LoopHooks` (``experiment.population_records``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from gymnasium import spaces

from agents.population.base import EnvClock, PopulationAgent, polyak_
from agents.population.compose import initialise_member
from agents.population.member_envs import MemberEnvs
from agents.population.replay import PopulationReplay
from agents.spec import off_policy_gradient_steps
from envs import EnvSpec
from sparse_rl.config import SparsityConfig
from sparse_rl.controller import NonFiniteError, SparsityInvariantError, TopologyController

CUDA_GRAPH_WARMUP = 3  # eager updates before capture (PyTorch's CUDA-graph recipe)


@dataclass(frozen=True)
class MemberSettings:
    """What differs between the members of one population."""

    seed: int
    sparsity: SparsityConfig  # the core's config of this member's method
    decay: Mapping[str, float]  # per-group kernel L2 coefficients (agents.decay.kernel_decay)


@dataclass(frozen=True)
class LoopSettings:
    """What the members share: SB3's off-policy loop settings and the initialisation schemes."""

    total_timesteps: int
    learning_starts: int
    train_freq: int
    gradient_steps: int
    batch_size: int
    buffer_size: int
    init: Mapping[str, Any]  # per-role init schemes (agents.population.compose.init_cfg_of)


# (observation space, action space, members' decays, device, capturable) -> the batched agent
AgentFactory = Callable[[spaces.Space, spaces.Space, Sequence[Mapping[str, float]], torch.device, bool], PopulationAgent]


@dataclass
class Member:
    """One member as the loop sees it: its controller, its own random stream and whether it still trains."""

    index: int
    settings: MemberSettings
    controller: TopologyController
    rng: np.random.Generator  # warm-up and exploration draws
    status: str = "running"
    error: str | None = None


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
        self.device = torch.device(device)
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.k = len(members)
        self.total = settings.total_timesteps  # may be raised between learn() calls (benchmarks)
        self.learning_starts, self.batch_size = settings.learning_starts, settings.batch_size
        self.train_freq, self.gradient_steps = settings.train_freq, settings.gradient_steps
        # the population's shared stream (replay indices, policy noise) is seeded by its first member, as SB3 seeds one run
        torch.manual_seed(members[0].seed)
        self.envs = MemberEnvs(env, [m.seed for m in members], env_workers)
        self.action_space = self.envs.action_space
        self.agent = make_agent(
            self.envs.observation_space, self.action_space, [m.decay for m in members], self.device, self.cuda_graph
        )
        for i, member in enumerate(members):
            initialise_member(self.agent, i, member.seed, settings.init)
        steps = off_policy_gradient_steps(self.total, self.learning_starts, self.train_freq, self.gradient_steps, 1)
        self.members: list[Member] = []
        for i, member in enumerate(members):
            controller = TopologyController(self.agent.member_groups(i), member.sparsity, steps, member.seed)
            controller.init_masks()
            self.members.append(Member(i, member, controller, np.random.default_rng(member.seed)))
        targets, sources = zip(*self.agent.target_pairs())
        polyak_(targets, sources, 1.0)  # targets start as copies (SB3)
        self.agent.refresh_masks()
        capacity = min(settings.buffer_size, self.total)
        self.replay = PopulationReplay(self.k, capacity, self.agent.obs_dim, self.agent.replay_action_dim, self.device)
        self.num_timesteps = 0
        self.clock = 0  # gradient steps
        self.last_metrics: dict[str, torch.Tensor] = {}
        self._obs = self.envs.reset()
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_out: dict[str, torch.Tensor] = {}
        self._eager_updates = 0

    @property
    def active(self) -> np.ndarray:
        return np.array([m.status == "running" for m in self.members])

    @property
    def env_clock(self) -> EnvClock:
        return EnvClock(self.num_timesteps, self.total, self.learning_starts)

    # ----------------------------------------------------------------- the loop
    def learn(self, hooks: LoopHooks, nan_check_freq: int = 1000) -> None:
        """Train until ``total`` env steps, telling ``hooks``; members with non-finite weights are failed alone."""
        while self.num_timesteps < self.total:
            self._env_step(hooks)
            if self.num_timesteps > self.learning_starts and self.num_timesteps % self.train_freq == 0:
                for _ in range(self.gradient_steps):
                    self._gradient_step()
            if self.num_timesteps % nan_check_freq == 0:
                self.check_members(hooks)
            hooks.step_done(self)
        self.check_members(hooks)

    def _env_step(self, hooks: LoopHooks) -> None:
        """Act, step every member's env, report ended episodes, store the transitions."""
        env_actions, replay_actions = self.agent.rollout_actions(
            self._obs, [m.rng for m in self.members], self.active, self.env_clock
        )
        result = self.envs.step(env_actions)
        self.num_timesteps += 1
        for member in self.members:
            episode = result.episodes[member.index]
            if episode is not None and member.status == "running":
                hooks.episode_ended(self, member, episode)
        hooks.env_stepped(self)
        self.agent.after_env_step(self.env_clock)
        self.replay.add(self._obs, replay_actions, result.rewards, result.real_next_obs, result.terminated)
        self._obs = result.next_obs

    def _update(self, snapshot_dense: bool) -> dict[str, torch.Tensor]:
        """Sample a batch, then the agent's update noise (this order: the shared stream's), then update every member."""
        batch = self.replay.sample(self.batch_size)
        noise = self.agent.update_noise(self.batch_size)
        return self.agent.update(*batch, *noise, snapshot_dense=snapshot_dense)

    def _gradient_step(self) -> None:
        """One update of every member (a CUDA-graph replay where possible), then each member's topology clock."""
        snapshot = any(m.controller.wants_dense_grad(self.clock + 1) for m in self.members)  # controllers step at clock + 1
        if not self.cuda_graph or snapshot:  # RigL's dense-gradient snapshot runs eagerly, outside the graph
            self.last_metrics = self._update(snapshot)
        else:
            self.last_metrics = self._graphed_update()
        self.clock += 1
        updates_before = sum(m.controller.num_updates for m in self.members)
        for member in self.members:
            member.controller.step(self.clock)
        if sum(m.controller.num_updates for m in self.members) != updates_before:  # pruning changes masks, grows nothing
            self.agent.refresh_masks()

    def _graphed_update(self) -> dict[str, torch.Tensor]:
        """CUDA_GRAPH_WARMUP eager updates on a side stream, then capture once, then replay the captured update."""
        if self._graph is None and self._eager_updates < CUDA_GRAPH_WARMUP:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                metrics = self._update(False)
            torch.cuda.current_stream().wait_stream(stream)
            self._eager_updates += 1
            return metrics
        if self._graph is None:
            self._graph = torch.cuda.CUDAGraph()
            for optimizer in self.agent.optimizers().values():
                optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(self._graph):
                self._graph_out = self._update(False)
        self._graph.replay()
        return self._graph_out

    # ----------------------------------------------------------------- health
    def check_members(self, hooks: LoopHooks) -> None:
        """Mark members with NaN/Inf weights (or broken invariants) failed; the others go on."""
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
        member.status, member.error = "failed", error
        hooks.member_failed(self, member)

    def close(self) -> None:
        self.envs.close()

    # ----------------------------------------------------------------- state (for checkpoints)
    def state_tensors(self) -> dict[str, Any]:
        """The loop's tensors: agent, optimizers, replay, controllers, torch's random streams, current observations."""
        return {
            "agent": {k: v.detach().cpu() for k, v in self.agent.state_dict().items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.agent.optimizers().items()},
            "replay": self.replay.state_dict(),
            "controllers": [m.controller.state_dict() for m in self.members],
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device)
            if self.device.type == "cuda"
            else torch.zeros(0, dtype=torch.uint8),
            "obs": torch.as_tensor(self._obs),
        }

    def state_json(self) -> dict[str, Any]:
        """The loop's JSON-serialisable state: counters and the envs' states."""
        return {"num_timesteps": self.num_timesteps, "clock": self.clock, "envs": self.envs.states()}

    @staticmethod
    def member_state(member: Member) -> dict[str, Any]:
        return {"status": member.status, "error": member.error, "rng": member.rng.bit_generator.state}

    def load_state(self, tensors: Mapping[str, Any], state: Mapping[str, Any]) -> None:
        """Continue exactly where :meth:`state_tensors` / :meth:`state_json` / :meth:`member_state` were taken."""
        self.agent.load_state_dict(tensors["agent"])
        for name, optimizer in self.agent.optimizers().items():
            optimizer.load_state_dict(tensors["optimizers"][name])
        self.replay.load_state_dict(tensors["replay"])
        for member, controller_state, saved in zip(self.members, tensors["controllers"], state["members"]):
            member.controller.load_state_dict(controller_state)
            member.status, member.error = saved["status"], saved["error"]
            member.rng.bit_generator.state = saved["rng"]
        self.envs.restore(state["envs"], continue_streams=True)
        self._obs = tensors["obs"].numpy()
        torch.set_rng_state(tensors["torch_rng"])
        if self.device.type == "cuda" and tensors["cuda_rng"].numel():
            torch.cuda.set_rng_state(tensors["cuda_rng"], self.device)
        self.num_timesteps, self.clock = int(state["num_timesteps"]), int(state["clock"])
        self.agent.refresh_masks()
