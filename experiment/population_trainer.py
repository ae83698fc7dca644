"""The population engine's training loop: K members of one agent trained as one batched computation.

It reproduces SB3's off-policy loop per member (``OffPolicyAlgorithm.learn`` with ``train_freq`` steps per rollout):
warm-up with uniform random actions, one env step, evaluation (before training on that step, as SB3's
``EvalCallback``), DQN's target sync and exploration schedule, storing the transition, then ``gradient_steps`` updates
once ``num_timesteps > learning_starts``; after every gradient step each member's own
:class:`~sparse_rl.TopologyController` advances (the SB3 path's optimizer-step clock). Every member writes the SB3
path's run directory. On CUDA the update is one captured CUDA graph; topology updates run outside it.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from omegaconf import OmegaConf
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.utils import LinearSchedule

from agents.build import build_model
from agents.callbacks import record_topology
from agents.population.base import PopulationAgent, polyak_
from agents.population.compose import build_agent, init_cfg_of, initialise_member, member_decay
from agents.population.dqn import PopulationDQN
from agents.population.export import copy_member
from agents.population.member_envs import MemberEnvs
from agents.population.replay import PopulationReplay
from agents.population.sac import PopulationSAC
from agents.spec import off_policy_gradient_steps
from envs import EVAL_SEED_OFFSET, make_vec_env
from experiment.checkpoint import latest_checkpoint, write_checkpoint
from experiment.layout import EVALUATIONS_FILE, atomic_write, atomic_write_json, atomic_write_npz
from experiment.sb3_state import run_logger
from experiment.summary import run_summary
from sparse_rl.controller import NonFiniteError, SparsityInvariantError, TopologyController

LOG_INTERVAL = 4  # episodes between rollout logs: SB3's off-policy learn() default
CUDA_GRAPH_WARMUP = 3  # eager updates before capture (PyTorch's CUDA-graph recipe)


@dataclass
class MemberRun:
    """One member: its run, its controller, its logs and statistics."""

    plan: Any  # experiment.plan.Plan
    index: int
    controller: TopologyController
    rng: np.random.Generator
    logger: Logger | None = None
    status: str = "running"
    error: str | None = None
    episode_rewards: deque = field(default_factory=lambda: deque(maxlen=100))
    episode_lengths: deque = field(default_factory=lambda: deque(maxlen=100))
    episodes: int = 0
    eval_timesteps: list[int] = field(default_factory=list)
    eval_results: list[list[float]] = field(default_factory=list)
    eval_lengths: list[list[int]] = field(default_factory=list)

    @property
    def seed(self) -> int:
        return int(self.plan.cfg.seed)

    @property
    def run_dir(self) -> Path:
        return self.plan.run_dir


class _Evaluations:
    """What :func:`experiment.summary.run_summary` reads from SB3's EvalCallback."""

    def __init__(self, results: list[list[float]]) -> None:
        self.evaluations_results = results


class PopulationTrainer:
    """Trains the compatible ``plans`` (one run each) together; ``population_dir`` holds the shared checkpoint."""

    def __init__(
        self, plans: Sequence[Any], net_arch: Any, population_dir: Path, device: str, cuda_graph: bool, env_workers: int = 0
    ) -> None:
        self.plans = list(plans)
        self.cfg = plans[0].cfg
        self.net_arch = net_arch
        self.population_dir = population_dir
        self.device = torch.device(device)
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.k = len(self.plans)
        self.agent_name = self.cfg.agent.name
        sb3 = self.cfg.agent.sb3
        self.total = int(self.cfg.agent.total_timesteps)
        self.learning_starts = int(sb3.learning_starts)
        self.train_freq = int(sb3.get("train_freq", 1))
        self.gradient_steps = int(sb3.get("gradient_steps", 1))
        self.batch_size = int(sb3.batch_size)
        self.eval_freq, self.eval_episodes = int(self.cfg.agent.eval_freq), int(self.cfg.agent.eval_episodes)
        # the population's shared stream (replay indices, policy noise) is seeded by its first member, as SB3 seeds one run
        torch.manual_seed(int(plans[0].cfg.seed))
        self.envs = MemberEnvs(plans[0].env, [int(p.cfg.seed) for p in plans], env_workers)
        self.eval_envs = MemberEnvs(plans[0].env, [int(p.cfg.seed) + EVAL_SEED_OFFSET for p in plans], env_workers)
        self.action_space = self.envs.action_space
        self.agent: PopulationAgent = build_agent(
            self.cfg, net_arch, self.envs.observation_space, self.action_space,
            [member_decay(p.cfg) for p in plans], self.device, capturable=self.cuda_graph,
        )  # fmt: skip
        init = init_cfg_of(self.cfg)
        for i, plan in enumerate(plans):
            initialise_member(self.agent, i, int(plan.cfg.seed), init)
        steps = off_policy_gradient_steps(self.total, self.learning_starts, self.train_freq, self.gradient_steps, 1)
        self.members: list[MemberRun] = []
        for i, plan in enumerate(plans):
            controller = TopologyController(self.agent.member_groups(i), plan.sparsity, steps, int(plan.cfg.seed))
            controller.init_masks()
            self.members.append(MemberRun(plan, i, controller, np.random.default_rng(int(plan.cfg.seed))))
        targets, sources = zip(*self._target_pairs())
        polyak_(targets, sources, 1.0)  # targets start as copies (SB3)
        self.agent.refresh_masks()
        discrete = isinstance(self.action_space, spaces.Discrete)
        action_dim = 1 if discrete else int(self.action_space.shape[0])
        capacity = min(int(sb3.buffer_size), self.total)
        self.replay = PopulationReplay(self.k, capacity, self.agent.obs_dim, action_dim, self.device)
        self.num_timesteps = 0
        self.clock = 0  # gradient steps
        self.last_metrics: dict[str, torch.Tensor] = {}
        self._obs = self.envs.reset()
        if isinstance(self.agent, PopulationDQN):
            self.exploration = LinearSchedule(
                sb3.exploration_initial_eps, sb3.exploration_final_eps, sb3.exploration_fraction
            )  # fmt: skip
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_out: dict[str, torch.Tensor] = {}
        self._eager_updates = 0
        self.wall_start = time.perf_counter()
        self.steps_at_start = 0

    # ----------------------------------------------------------------- pieces
    def _target_pairs(self):
        if isinstance(self.agent, PopulationSAC):
            return zip(self.agent.critic_target.parameters(), self.agent.critic.parameters())
        return zip(self.agent.q_net_target.parameters(), self.agent.q_net.parameters())

    @property
    def active(self) -> np.ndarray:
        return np.array([m.status == "running" for m in self.members])

    def _actions(self) -> tuple[np.ndarray, np.ndarray]:
        """(env actions, replay actions) of every member for the current observations (SB3's ``_sample_action``)."""
        space = self.action_space
        warmup = self.num_timesteps < self.learning_starts
        if isinstance(space, spaces.Discrete):
            if warmup:
                actions = np.array([m.rng.integers(space.n) for m in self.members])
            else:
                greedy = self.agent.act(torch.as_tensor(self._obs, device=self.device).unsqueeze(1))[:, 0].cpu().numpy()
                eps = self.exploration(1.0 - self.num_timesteps / self.total) if self.num_timesteps > 0 else 0.0
                actions = np.array(
                    [m.rng.integers(space.n) if m.rng.random() < eps else a for m, a in zip(self.members, greedy)]
                )
            return actions, actions.astype(np.float32).reshape(self.k, 1)
        low, high = space.low.astype(np.float32), space.high.astype(np.float32)
        if warmup:
            env_actions = np.stack([m.rng.uniform(low, high).astype(np.float32) for m in self.members])
            scaled = 2.0 * (env_actions - low) / (high - low) - 1.0
        else:
            obs = torch.as_tensor(self._obs, device=self.device).unsqueeze(1)
            scaled = self.agent.act(obs, deterministic=False)[:, 0].cpu().numpy()
            scaled[~self.active] = 0.0  # a failed member's actions may be NaN: keep its env sane
            env_actions = low + 0.5 * (scaled + 1.0) * (high - low)
        return env_actions, scaled

    def _update_fn(self, snapshot_dense: bool) -> dict[str, torch.Tensor]:
        batch = self.replay.sample(self.batch_size)
        if isinstance(self.agent, PopulationSAC):
            shape = (self.k, self.batch_size, self.agent.act_dim)
            noise = torch.randn(shape, device=self.device), torch.randn(shape, device=self.device)
            return self.agent.update(*batch, *noise, snapshot_dense=snapshot_dense)
        return self.agent.update(*batch, snapshot_dense=snapshot_dense)

    def _gradient_step(self) -> None:
        """One update of every member (a CUDA-graph replay where possible), then each member's topology clock."""
        snapshot = any(m.controller.update_due(self.clock + 1) and m.controller.updater.needs_gradients for m in self.members)
        if not self.cuda_graph or snapshot:
            self.last_metrics = self._update_fn(snapshot)
        elif self._graph is None and self._eager_updates < CUDA_GRAPH_WARMUP:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.last_metrics = self._update_fn(False)
            torch.cuda.current_stream().wait_stream(stream)
            self._eager_updates += 1
        else:
            if self._graph is None:
                self._graph = torch.cuda.CUDAGraph()
                for optimizer in self.agent.optimizers().values():
                    optimizer.zero_grad(set_to_none=True)
                with torch.cuda.graph(self._graph):
                    self._graph_out = self._update_fn(False)
            self._graph.replay()
            self.last_metrics = self._graph_out
        self.clock += 1
        updates_before = sum(m.controller.num_updates for m in self.members)
        for member in self.members:
            member.controller.step(self.clock)
        if sum(m.controller.num_updates for m in self.members) != updates_before:  # pruning changes masks, grows nothing
            self.agent.refresh_masks()

    # ----------------------------------------------------------------- evaluation and logs
    def evaluate(self) -> None:
        """Each running member: ``eval_episodes`` deterministic episodes on its evaluation env (SB3's evaluate_policy)."""
        obs = self.eval_envs.reset()
        remaining = np.where(self.active, self.eval_episodes, 0)
        returns: list[list[float]] = [[] for _ in self.members]
        lengths: list[list[int]] = [[] for _ in self.members]
        while remaining.any():
            x = torch.as_tensor(obs, device=self.device).unsqueeze(1)
            if isinstance(self.agent, PopulationSAC):
                scaled = self.agent.act(x, deterministic=True)[:, 0].cpu().numpy()
                low, high = self.action_space.low, self.action_space.high
                actions = low + 0.5 * (np.nan_to_num(scaled) + 1.0) * (high - low)
            else:
                actions = self.agent.act(x)[:, 0].cpu().numpy()
            result = self.eval_envs.step(actions, active=remaining > 0)
            obs = np.where((remaining > 0)[:, None], result.next_obs, obs)
            for i, episode in enumerate(result.episodes):
                if remaining[i] > 0 and result.dones[i]:
                    returns[i].append(float(episode["r"]))
                    lengths[i].append(int(episode["l"]))
                    remaining[i] -= 1
        for member in self.members:
            if member.status != "running":
                continue
            member.eval_timesteps.append(self.num_timesteps)
            member.eval_results.append(returns[member.index])
            member.eval_lengths.append(lengths[member.index])
            member.logger.record("eval/mean_reward", float(np.mean(returns[member.index])))
            member.logger.record("eval/mean_ep_length", float(np.mean(lengths[member.index])))
            member.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
            member.logger.dump(self.num_timesteps)
            self._write_evaluations(member)

    @staticmethod
    def _write_evaluations(member: MemberRun) -> None:
        arrays = {
            "timesteps": np.asarray(member.eval_timesteps),
            "results": np.asarray(member.eval_results),
            "ep_lengths": np.asarray(member.eval_lengths),
        }
        atomic_write_npz(member.run_dir / EVALUATIONS_FILE, arrays)

    def _log_rollout(self, member: MemberRun) -> None:
        """SB3's ``dump_logs`` every LOG_INTERVAL episodes: rollout means, last training losses, topology."""
        logger = member.logger
        elapsed = max(time.perf_counter() - self.wall_start, 1e-9)
        logger.record("time/episodes", member.episodes, exclude="tensorboard")
        logger.record("time/fps", int((self.num_timesteps - self.steps_at_start) / elapsed))
        logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        logger.record("rollout/ep_rew_mean", float(np.mean(member.episode_rewards)))
        logger.record("rollout/ep_len_mean", float(np.mean(member.episode_lengths)))
        for key, values in self.last_metrics.items():
            logger.record(f"train/{key}", float(values[member.index]))
        if isinstance(self.agent, PopulationDQN) and self.num_timesteps > 0:
            logger.record("rollout/exploration_rate", self.exploration(1.0 - self.num_timesteps / self.total))
        record_topology(logger, member.controller)
        logger.dump(self.num_timesteps)

    # ----------------------------------------------------------------- health
    def check_members(self) -> None:
        """Mark members with NaN/Inf weights (or broken invariants) failed; the others go on."""
        for member in self.members:
            if member.status != "running":
                continue
            try:
                member.controller.check_finite(f" at env step {self.num_timesteps} (gradient step {self.clock})")
                if isinstance(self.agent, PopulationSAC) and not bool(torch.isfinite(self.agent.log_ent_coef[member.index])):
                    raise NonFiniteError(f"non-finite entropy coefficient at env step {self.num_timesteps}")
            except (NonFiniteError, SparsityInvariantError) as error:
                self.fail(member, str(error))

    def fail(self, member: MemberRun, error: str) -> None:
        member.status, member.error = "failed", error
        self._write_summary(member, "failed")
        print(f"{member.run_dir}: FAILED ({error}); the other members go on")

    # ----------------------------------------------------------------- the loop
    def learn(
        self, progress: Callable[[int], None] | None = None, checkpoint_freq: int = 0, nan_check_freq: int = 1000
    ) -> None:
        """Train until ``agent.total_timesteps``; ``progress(n)`` is told of every n env steps done."""
        for member in self.members:
            if member.logger is None:
                member.run_dir.mkdir(parents=True, exist_ok=True)
                cfg = member.plan.cfg
                atomic_write(
                    member.run_dir / ".hydra" / "config.yaml", lambda tmp, cfg=cfg: OmegaConf.save(cfg, tmp, resolve=True)
                )
                atomic_write_json(member.run_dir / "population.json", {"population_dir": str(self.population_dir)})
                member.logger = run_logger(member.run_dir, bool(cfg.tensorboard), None)
                record_topology(member.logger, member.controller)
        while self.num_timesteps < self.total:
            env_actions, replay_actions = self._actions()
            result = self.envs.step(env_actions)
            self.num_timesteps += 1
            for member in self.members:
                episode = result.episodes[member.index]
                if episode is not None and member.status == "running":
                    member.episode_rewards.append(float(episode["r"]))
                    member.episode_lengths.append(int(episode["l"]))
                    member.episodes += 1
                    if member.episodes % LOG_INTERVAL == 0:
                        self._log_rollout(member)
            if self.num_timesteps % self.eval_freq == 0:
                self.evaluate()
            if isinstance(self.agent, PopulationDQN):
                interval = max(int(self.cfg.agent.sb3.target_update_interval), 1)
                if self.num_timesteps % interval == 0:
                    self.agent.sync_target(float(self.cfg.agent.sb3.tau))
            self.replay.add(self._obs, replay_actions, result.rewards, result.real_next_obs, result.terminated)
            self._obs = result.next_obs
            if self.num_timesteps > self.learning_starts and self.num_timesteps % self.train_freq == 0:
                for _ in range(self.gradient_steps):
                    self._gradient_step()
            if self.num_timesteps % nan_check_freq == 0:
                self.check_members()
            if progress is not None:
                progress(1)
            if checkpoint_freq > 0 and self.num_timesteps % checkpoint_freq == 0 and self.num_timesteps < self.total:
                self.save_checkpoint()
        self.check_members()

    # ----------------------------------------------------------------- outputs
    def _write_summary(self, member: MemberRun, status: str) -> dict:
        wall = time.perf_counter() - self.wall_start
        extra = {
            "engine": "population",
            "population": {"size": self.k, "device": str(self.device), "cuda_graph": self.cuda_graph,
                           "checkpoint": str(self.population_dir)},
            "equal_parameters_net_arch": self.net_arch if member.plan.variant else None,
        }  # fmt: skip
        if member.error:
            extra["error"] = member.error
        summary = run_summary(
            member.plan, status, member.controller, _Evaluations(member.eval_results), wall,
            self.num_timesteps - self.steps_at_start, **extra,
        )  # fmt: skip
        summary["num_timesteps"] = self.num_timesteps
        atomic_write_json(member.run_dir / "summary.json", summary)
        return summary

    def export_member(self, member: MemberRun, path: Path) -> None:
        """Write ``member`` as an SB3 ``model.zip`` (``SAC.load`` / ``DQN.load``; masks in the policy's state dict)."""
        plan = member.plan
        agent_cfg = OmegaConf.to_container(plan.cfg.agent, resolve=True)
        agent_cfg["sb3"]["buffer_size"] = 1  # the export carries no replay data
        env = make_vec_env(plan.env, 1, member.seed)  # for its spaces
        model = build_model(
            plan.agent, agent_cfg, env, net_arch=self.net_arch, sparse=plan.sparsity.method != "dense", seed=member.seed,
            device="cpu",
        )  # fmt: skip
        copy_member(self.agent, member.index, model, to_sb3=True)
        model.num_timesteps = self.num_timesteps
        model.save(path)
        env.close()

    def finish(self) -> list[dict]:
        """Invariants, ``model.zip`` and ``summary.json`` of every member; returns the summaries."""
        summaries = []
        for member in self.members:
            if member.status == "running":
                try:
                    member.controller.check_invariants()
                except SparsityInvariantError as error:
                    self.fail(member, str(error))
            if member.status == "running":
                self.export_member(member, member.run_dir / "model.zip")
                summaries.append(self._write_summary(member, "completed"))
            else:
                summaries.append(json.loads((member.run_dir / "summary.json").read_text()))
        self.close()
        return summaries

    def close(self) -> None:
        """Close the members' logs and the envs (a stopped population keeps its last checkpoint)."""
        for member in self.members:
            if member.logger is not None:
                member.logger.close()
                member.logger = None
        self.envs.close()
        self.eval_envs.close()

    # ----------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        """Everything needed to continue every member exactly, in safe formats (``weights_only`` torch, JSON)."""
        tensors = {
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
        state = {
            "num_timesteps": self.num_timesteps,
            "clock": self.clock,
            "envs": self.envs.states(),
            "eval_envs": self.eval_envs.states(),
            "members": [
                {
                    "run_dir": str(m.run_dir), "status": m.status, "error": m.error, "rng": m.rng.bit_generator.state,
                    "episode_rewards": list(m.episode_rewards), "episode_lengths": list(m.episode_lengths),
                    "episodes": m.episodes, "eval_timesteps": m.eval_timesteps, "eval_results": m.eval_results,
                    "eval_lengths": m.eval_lengths,
                }
                for m in self.members
            ],
        }  # fmt: skip

        def write_files(folder: Path) -> None:
            torch.save(tensors, folder / "state.pt")
            atomic_write_json(folder / "state.json", state)

        self.population_dir.mkdir(parents=True, exist_ok=True)
        write_checkpoint(self.population_dir, write_files, self.num_timesteps)

    def load_checkpoint(self) -> None:
        """Continue from the population's last checkpoint (the members and their order must be the same)."""
        folder = latest_checkpoint(self.population_dir)
        if folder is None:
            raise FileNotFoundError(f"{self.population_dir} has no population checkpoint")
        state = json.loads((folder / "state.json").read_text())
        saved_dirs = [m["run_dir"] for m in state["members"]]
        if saved_dirs != [str(m.run_dir) for m in self.members]:
            raise ValueError(f"checkpoint {folder} holds other members: {saved_dirs}")
        tensors = torch.load(folder / "state.pt", weights_only=True, map_location="cpu")
        self.agent.load_state_dict(tensors["agent"])
        for name, optimizer in self.agent.optimizers().items():
            optimizer.load_state_dict(tensors["optimizers"][name])
        self.replay.load_state_dict(tensors["replay"])
        for member, controller_state, saved in zip(self.members, tensors["controllers"], state["members"]):
            member.controller.load_state_dict(controller_state)
            member.status, member.error = saved["status"], saved["error"]
            member.rng.bit_generator.state = saved["rng"]
            member.episode_rewards.extend(saved["episode_rewards"])
            member.episode_lengths.extend(saved["episode_lengths"])
            member.episodes = saved["episodes"]
            member.eval_timesteps, member.eval_results = saved["eval_timesteps"], saved["eval_results"]
            member.eval_lengths = saved["eval_lengths"]
        self.envs.restore(state["envs"], continue_streams=True)
        self.eval_envs.restore(state["eval_envs"], continue_streams=any(m["eval_timesteps"] for m in state["members"]))
        self._obs = tensors["obs"].numpy()
        torch.set_rng_state(tensors["torch_rng"])
        if self.device.type == "cuda" and tensors["cuda_rng"].numel():
            torch.cuda.set_rng_state(tensors["cuda_rng"], self.device)
        self.num_timesteps, self.clock = int(state["num_timesteps"]), int(state["clock"])
        self.steps_at_start = self.num_timesteps
        self.agent.refresh_masks()
        for member in self.members:
            member.logger = run_logger(member.run_dir, bool(member.plan.cfg.tensorboard), self.num_timesteps)
