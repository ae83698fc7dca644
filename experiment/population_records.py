"""A population's runs on disk: each member writes the SB3 path's run directory; the population keeps one checkpoint.

:class:`PopulationRun` turns validated :class:`~experiment.plan.Plan` s into the loop's plain settings, drives
:class:`agents.population.trainer.PopulationTrainer` and answers its :class:`~agents.population.trainer.LoopHooks`:
per-member rollout logs (``progress.csv``), evaluation on each member's own evaluation env (``evaluations.npz``, as
SB3's ``EvalCallback``), ``summary.json``, ``model.zip`` (an SB3 model), and the population's checkpoint.
"""

from __future__ import annotations

import functools
import json
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecNormalize

from agents.build import build_model, sb3_kwargs
from agents.callbacks import TrainingStopped, record_topology
from agents.diagnostics_callback import diagnostics_settings
from agents.population.base import PopulationAgent
from agents.population.compose import AGENT_CLASSES, build_agent, member_decay
from agents.population.diagnostics import PopulationDiagnostics, replay_rows, rollout_rows
from agents.population.export import copy_member
from agents.population.member_envs import MemberEnvs
from agents.population.replay import PopulationReplay
from agents.population.rollout import PopulationRolloutTrainer, RolloutSettings, zero_minibatch
from agents.population.streams import MemberStreams
from agents.population.trainer import LoopSettings, Member, MemberSettings, PopulationTrainer
from agents.ppo import rollout_gradient_steps
from agents.spec import off_policy_gradient_steps
from envs import EVAL_SEED_OFFSET, make_vec_env
from experiment.checkpoint import checkpoint_file_problem, latest_checkpoint, write_checkpoint
from experiment.layout import EVALUATIONS_FILE, MODEL_FILE, SUMMARY_FILE, atomic_write, atomic_write_json, atomic_write_npz
from experiment.member_start import sb3_start
from experiment.plan import Plan, UsageError
from experiment.progress import Budget, StepCosts, time_per_call
from experiment.sb3_state import VEC_NORMALIZE_FILE, run_logger, save_vec_normalize
from experiment.summary import final_checks, run_summary
from sparse_rl.controller import SparsityInvariantError, TopologyController

LOG_INTERVAL = 4  # episodes between rollout logs: SB3's off-policy learn() default
PROBE_UPDATES = 3  # timed population updates in the start-up probe (after one untimed)
PROBE_ENV_STEPS = 50  # timed steps of one member's env in the probe
CHECKPOINT_FILES = ("state.pt", "state.json")  # a population checkpoint, besides meta.json
TIMING_NOTE = (
    "wall_time_s and env_steps_per_s are this member's: its env steps over the wall time it trained, side by side with "
    "the other members in one process; population.env_steps_per_s counts every member's env steps"
)


class PopulationCheckpointProblem(UsageError):
    """The population's checkpoint cannot continue this population (missing, corrupt, other members): one line."""


def _relative_to_root(run_dir: Path) -> tuple[str, ...]:
    """A member's run directory as agent/env/label/seed_N when it follows ``configs/config.yaml``'s pattern (so a
    ``run_root`` spelled differently, or moved with its populations, matches: docs/design.md decision 38), else the
    whole resolved path."""
    parts = run_dir.parts
    if len(parts) >= 4 and parts[-1].startswith("seed_"):
        return parts[-4:]
    return run_dir.resolve().parts


def population_checkpoint_problem(population_dir: Path, run_dirs: Sequence[Path]) -> str | None:
    """Why ``population_dir``'s checkpoint cannot continue the members ``run_dirs`` (in order), or ``None``.

    Every file is read completely as on the SB3 path (:func:`experiment.checkpoint.checkpoint_file_problem`:
    ``meta.json`` and its file list, JSON parsed, ``state.pt`` loaded with ``weights_only``), then the members are
    compared. No checkpoint at all is not a problem: the population starts again from scratch.
    """
    folder = latest_checkpoint(population_dir)
    if folder is None:
        damaged = population_dir / "checkpoint"
        return f"checkpoint {damaged} lacks meta.json" if damaged.exists() else None
    if (problem := checkpoint_file_problem(folder)) is not None:
        return problem
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        return f"checkpoint {folder} lacks {missing[0]}"
    saved = [m.get("run_dir") for m in json.loads((folder / "state.json").read_text()).get("members", [])]
    if [_relative_to_root(Path(d)) for d in saved] != [_relative_to_root(Path(d)) for d in run_dirs]:
        return f"checkpoint {folder} holds other members ({len(saved)} run directories); it continues only its own"
    return None


def member_settings(plan: Plan) -> MemberSettings:
    """The loop's view of one run: its seed, its core sparsity config, its kernel decay, its SB3 path start."""
    return MemberSettings(int(plan.cfg.seed), plan.sparsity, member_decay(plan.cfg), functools.partial(sb3_start, plan))


def loop_settings(cfg: DictConfig) -> LoopSettings:
    """The loop settings the members share (part of the population's compatibility key)."""
    sb3 = cfg.agent.sb3
    return LoopSettings(
        total_timesteps=int(cfg.agent.total_timesteps), learning_starts=int(sb3.learning_starts),
        train_freq=int(sb3.get("train_freq", 1)), gradient_steps=int(sb3.get("gradient_steps", 1)),
        batch_size=int(sb3.batch_size), buffer_size=int(sb3.buffer_size),
    )  # fmt: skip


def rollout_settings(cfg: DictConfig) -> RolloutSettings:
    """The on-policy loop settings the members share; the learning rate (or its schedule) as the SB3 path builds it."""
    sb3 = cfg.agent.sb3
    learning_rate = sb3_kwargs(OmegaConf.to_container(cfg.agent, resolve=True), None)["learning_rate"]
    return RolloutSettings(
        total_timesteps=int(cfg.agent.total_timesteps), n_steps=int(sb3.n_steps), n_epochs=int(sb3.n_epochs),
        batch_size=int(sb3.batch_size), gamma=float(sb3.gamma), gae_lambda=float(sb3.gae_lambda),
        learning_rate=learning_rate, normalize=bool(cfg.agent.normalize),
    )  # fmt: skip


def population_budget(cfg: DictConfig) -> Budget:
    """Each member's env steps, warm-up and gradient steps (one gradient step updates every member)."""
    if AGENT_CLASSES[cfg.agent.name].on_policy:
        rollout = rollout_settings(cfg)
        return Budget(
            rollout.total_timesteps, 0,
            lambda t: rollout_gradient_steps(t, rollout.n_steps, 1, rollout.n_epochs, rollout.batch_size) if t > 0 else 0,
        )  # fmt: skip
    loop = loop_settings(cfg)

    def gradient_steps_until(t: int) -> int:
        if t <= loop.learning_starts:
            return 0
        return off_policy_gradient_steps(t, loop.learning_starts, loop.train_freq, loop.gradient_steps, 1)

    return Budget(loop.total_timesteps, loop.learning_starts, gradient_steps_until)


def probe_costs(plans: Sequence[Plan], net_arch: Any, device: str) -> StepCosts:
    """Seconds per population env step (every member's env step and action) and per population update on this
    machine, measured on a throwaway agent with a replay of zeros and one throwaway env.

    It draws from throwaway streams keyed like the members' (counter-based, design decision 34): the run draws exactly
    what it draws unprobed.
    """
    cfg = plans[0].cfg
    k, batch_size, where = len(plans), int(cfg.agent.sb3.batch_size), torch.device(device)
    sync = torch.cuda.synchronize if where.type == "cuda" else None
    env = make_vec_env(plans[0].env, 1, int(cfg.seed) + EVAL_SEED_OFFSET)
    try:
        decays = [member_decay(p.cfg) for p in plans]
        agent = build_agent(cfg, net_arch, env.observation_space, env.action_space, decays, where, False)
        replay = PopulationReplay(k, batch_size, agent.obs_dim, agent.replay_action_dim, where)
        replay.full = True  # batch_size rows of zeros
        replay.size_tensor.fill_(replay.size)
        streams = MemberStreams([int(p.cfg.seed) for p in plans], where)  # counter-based: the run's draws are its own
        minibatch = zero_minibatch(agent, batch_size) if agent.on_policy else None  # PPO: one minibatch step

        def update() -> None:
            if minibatch is not None:
                agent.update(*minibatch)
                return
            agent.update(*replay.sample(batch_size, streams, 0), *agent.update_noise(streams, 0, batch_size))

        update_s = time_per_call(update, PROBE_UPDATES, sync=sync)
        obs = np.zeros((k, agent.obs_dim), dtype=np.float32)
        act_s = time_per_call(lambda: agent.eval_actions(obs), PROBE_UPDATES, sync=sync)
        env.reset()
        action = np.stack([env.action_space.sample()])
        env_s = time_per_call(lambda: env.step(action), PROBE_ENV_STEPS)
    finally:
        env.close()
    return StepCosts(k * env_s + act_s, update_s)


@dataclass
class MemberRecord:
    """One member's run: its plan, the loop's member, its logs and statistics."""

    plan: Plan
    loop: Member
    logger: Logger | None = None
    episode_rewards: deque = field(default_factory=lambda: deque(maxlen=100))
    episode_lengths: deque = field(default_factory=lambda: deque(maxlen=100))
    episodes: int = 0
    eval_timesteps: list[int] = field(default_factory=list)
    eval_results: list[list[float]] = field(default_factory=list)
    eval_lengths: list[list[int]] = field(default_factory=list)
    logged_n_updates: int = 0  # the member's SB3 _n_updates when its train/ values were last recorded
    logged_topology: int = 0  # its controller's num_updates when its topology was last recorded

    @property
    def index(self) -> int:
        return self.loop.index

    @property
    def controller(self) -> TopologyController:
        return self.loop.controller

    @property
    def status(self) -> str:
        return self.loop.status

    @property
    def error(self) -> str | None:
        return self.loop.error

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


class PopulationRun:
    """Trains the compatible ``plans`` (one run each) together; ``population_dir`` holds the shared checkpoint."""

    def __init__(
        self, plans: Sequence[Plan], net_arch: Any, population_dir: Path, device: str, cuda_graph: bool, env_workers: int = 0
    ) -> None:
        cfg = plans[0].cfg
        self.net_arch, self.population_dir = net_arch, population_dir
        self.eval_freq, self.eval_episodes = int(cfg.agent.eval_freq), int(cfg.agent.eval_episodes)
        make_agent = functools.partial(build_agent, cfg, net_arch)
        self.on_policy = AGENT_CLASSES[cfg.agent.name].on_policy  # SB3's on-policy learn() or the off-policy one
        loop_class = PopulationRolloutTrainer if self.on_policy else PopulationTrainer
        self.loop = loop_class(
            [member_settings(p) for p in plans], rollout_settings(cfg) if self.on_policy else loop_settings(cfg),
            plans[0].env, make_agent, device, cuda_graph, env_workers,
        )  # fmt: skip
        eval_seeds = [int(p.cfg.seed) + EVAL_SEED_OFFSET for p in plans]
        self.eval_envs = MemberEnvs(plans[0].env, eval_seeds, env_workers, episodes=self.eval_episodes)
        self.members = [MemberRecord(plan, member) for plan, member in zip(plans, self.loop.members)]
        self.diagnostics_settings = diagnostics_settings(cfg.diagnostics)  # shared: part of the compatibility key
        self.diagnostics: PopulationDiagnostics | None = None  # per member, from the first learn() (decision 42)
        self._diagnostics_states: list[dict | None] | None = None  # from the checkpoint a run resumes from
        self._progress: Callable[[int], None] | None = None
        self._stop: Callable[[], bool] | None = None
        self._checkpoint_freq = 0
        self._saved_at: int | None = None
        self.wall_start = time.perf_counter()
        self.steps_at_start = 0

    # ----------------------------------------------------------------- the loop's state, read through
    @property
    def agent(self) -> PopulationAgent:
        return self.loop.agent

    @property
    def num_timesteps(self) -> int:
        return self.loop.num_timesteps

    @property
    def total(self) -> int:
        return self.loop.total

    @total.setter
    def total(self, value: int) -> None:
        self.loop.total = value

    @property
    def cuda_graph(self) -> bool:
        return self.loop.cuda_graph

    # ----------------------------------------------------------------- training
    def learn(
        self,
        progress: Callable[[int], None] | None = None,
        checkpoint_freq: int = 0,
        nan_check_freq: int = 1000,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """Train until ``agent.total_timesteps``; ``progress(t)`` is told the env step after every step.

        Once ``stop()`` is true (a stop signal, :mod:`experiment.interrupts`), the population writes a checkpoint
        after the step in progress and raises :class:`~agents.callbacks.TrainingStopped`.
        """
        for member in self.members:
            if member.logger is None:
                self._open_run_dir(member)
        self._progress, self._checkpoint_freq, self._stop = progress, checkpoint_freq, stop
        if self.diagnostics is None and self.diagnostics_settings.enabled:
            self.diagnostics = PopulationDiagnostics(
                self.loop, self.diagnostics_settings, [m.seed for m in self.members], self.members[0].plan.agent,
                lambda index: self.sb3_model(self.members[index], self.loop.device),
                rollout_rows(self.loop) if self.on_policy else replay_rows(self.loop.replay), self._diagnostics_states,
                lambda index: self._record_pending(self.members[index]),
            )  # fmt: skip
            self.diagnostics.start()
        self.loop.learn(self, nan_check_freq)
        if self.diagnostics is not None:
            self.diagnostics.at_training_end([m.logger for m in self.members])

    def _open_run_dir(self, member: MemberRecord) -> None:
        """The run directory's config, its pointer to the population, its log (the first topology record)."""
        member.run_dir.mkdir(parents=True, exist_ok=True)
        cfg = member.plan.cfg
        atomic_write(member.run_dir / ".hydra" / "config.yaml", lambda tmp: OmegaConf.save(cfg, tmp, resolve=True))
        atomic_write_json(member.run_dir / "population.json", {"population_dir": str(self.population_dir)})
        member.logger = run_logger(member.run_dir, bool(cfg.tensorboard), None)
        member.logged_n_updates = self.loop.member_n_updates(member.index)  # a fresh logger has nothing pending
        record_topology(member.logger, member.controller)  # the SB3 path's TopologyLoggerCallback at the start
        member.logged_topology = member.controller.num_updates

    # ----------------------------------------------------------------- LoopHooks
    def episode_ended(self, loop: PopulationTrainer, member: Member, episode: Mapping[str, Any]) -> None:
        record = self.members[member.index]
        record.episode_rewards.append(float(episode["r"]))
        record.episode_lengths.append(int(episode["l"]))
        record.episodes += 1
        if not self.on_policy and record.episodes % LOG_INTERVAL == 0:
            self._log_rollout(record)

    def rollout_ended(self, loop: PopulationRolloutTrainer) -> None:
        """On-policy: SB3's ``dump_logs`` after every rollout (``log_interval=1``), for every running member."""
        if self.diagnostics is not None:  # SB3's on_rollout_end comes first (inside collect_rollouts)
            self.diagnostics.at_rollout_end([m.logger for m in self.members])
        for member in self.members:
            if member.status == "running":
                self._log_rollout(member)

    def env_stepped(self, loop: PopulationTrainer) -> None:
        if loop.num_timesteps % self.eval_freq == 0:
            self.evaluate()
        if self.diagnostics is not None and not self.on_policy and loop.num_timesteps % loop.train_freq == 0:
            self.diagnostics.at_rollout_end([m.logger for m in self.members])  # SB3's rollout end, after evaluation

    def step_done(self, loop: PopulationTrainer) -> None:
        if self._progress is not None:
            self._progress(loop.num_timesteps)
        steps, freq = loop.num_timesteps, self._checkpoint_freq
        if freq > 0 and steps % freq == 0 and steps < loop.total:
            self.save_checkpoint()
        if self._stop is not None and self._stop() and steps < loop.total:  # between steps: a consistent state
            if self._saved_at != steps:
                self.save_checkpoint()
            raise TrainingStopped(steps)

    def member_failed(self, loop: PopulationTrainer, member: Member) -> None:
        record = self.members[member.index]
        self._write_summary(record, "failed")
        print(f"{record.run_dir}: FAILED ({member.error}); the other members go on")

    # ----------------------------------------------------------------- evaluation and logs
    def evaluate(self) -> None:
        """Each running member: ``eval_episodes`` deterministic episodes on its evaluation env (SB3's evaluate_policy).

        Every member's episodes run as one batch where the env allows it (:meth:`MemberEnvs.evaluate`), with the
        returns of the episodes run one after another.
        """
        returns, lengths = self.eval_envs.evaluate(self.loop.eval_actions, self.loop.active)
        for member in self.members:
            if member.status == "running":
                self._record_evaluation(member, returns[member.index], lengths[member.index])

    def _record_evaluation(self, member: MemberRecord, returns: list[float], lengths: list[int]) -> None:
        member.eval_timesteps.append(self.num_timesteps)
        member.eval_results.append(returns)
        member.eval_lengths.append(lengths)
        member.logger.record("eval/mean_reward", float(np.mean(returns)))
        member.logger.record("eval/mean_ep_length", float(np.mean(lengths)))
        member.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self._record_pending(member)
        member.logger.dump(self.num_timesteps)
        arrays = {
            "timesteps": np.asarray(member.eval_timesteps),
            "results": np.asarray(member.eval_results),
            "ep_lengths": np.asarray(member.eval_lengths),
        }
        atomic_write_npz(member.run_dir / EVALUATIONS_FILE, arrays)

    def _log_rollout(self, member: MemberRecord) -> None:
        """SB3's ``dump_logs`` (off-policy: every LOG_INTERVAL episodes; on-policy: every rollout, its iterations
        instead of episodes): rollout means, last training losses, topology."""
        logger = member.logger
        elapsed = max(time.perf_counter() - self.wall_start, 1e-9)
        if self.on_policy:
            logger.record("time/iterations", self.loop.iteration, exclude="tensorboard")
        else:
            logger.record("time/episodes", member.episodes, exclude="tensorboard")
        logger.record("time/fps", int((self.num_timesteps - self.steps_at_start) / elapsed))
        logger.record("time/time_elapsed", int(elapsed), exclude="tensorboard")  # since this process started training
        logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        if member.episode_rewards:  # on-policy: SB3 logs them once an episode has ended
            logger.record("rollout/ep_rew_mean", float(np.mean(member.episode_rewards)))
            logger.record("rollout/ep_len_mean", float(np.mean(member.episode_lengths)))
        self._record_pending(member)
        logger.dump(self.num_timesteps)

    def _record_pending(self, member: MemberRecord) -> None:
        """What SB3 has recorded since the member's last dump, which any dump (rollout log or evaluation) writes: its
        ``train()``'s ``train/`` values if it trained since (SB3's logger keeps them until the next dump, so an
        evaluation between two rollout logs takes them), and the agent's per-env-step entries (DQN's exploration
        rate, recorded in ``_on_step``), and the topology after a topology update (``TopologyLoggerCallback``)."""
        logger, n_updates = member.logger, self.loop.member_n_updates(member.index)
        if n_updates != member.logged_n_updates:
            for key, values in self.loop.last_metrics.items():
                logger.record(f"train/{key}", float(values[member.index]))
            logger.record("train/learning_rate", self.learning_rate)
            logger.record("train/n_updates", n_updates, exclude="tensorboard")
            member.logged_n_updates = n_updates
        for key, value in self.agent.rollout_log(self.loop.env_clock).items():
            logger.record(key, value)
        if member.controller.num_updates != member.logged_topology:
            record_topology(logger, member.loop.topology)  # recomputed only when the masks change
            member.logged_topology = member.controller.num_updates

    # ----------------------------------------------------------------- outputs
    @property
    def learning_rate(self) -> float:
        """The optimizers' learning rate (SB3's ``train/learning_rate``; the population takes a constant one)."""
        return float(next(iter(self.agent.optimizers().values())).param_groups[0]["lr"])

    def _write_summary(self, member: MemberRecord, status: str, **more: Any) -> dict:
        wall = time.perf_counter() - self.wall_start
        steps = self.num_timesteps - self.steps_at_start
        extra = {
            "engine": "population",
            "population": {"size": self.loop.k, "device": str(self.loop.device), "cuda_graph": self.cuda_graph,
                           "checkpoint": str(self.population_dir),
                           "env_steps_per_s": self.loop.k * steps / wall if wall > 0 else None},
            "timing": TIMING_NOTE,
            "equal_parameters_net_arch": self.net_arch if member.plan.variant else None,
            **more,
        }  # fmt: skip
        if member.error:
            extra["error"] = member.error
        summary = run_summary(
            member.plan, status, member.controller, _Evaluations(member.eval_results), wall, steps, **extra
        )  # fmt: skip
        summary["num_timesteps"] = self.num_timesteps
        if status == "completed":
            final_checks(member.run_dir, member.controller, summary)
        atomic_write_json(member.run_dir / SUMMARY_FILE, summary)
        return summary

    def sb3_model(self, member: MemberRecord, device: str | torch.device = "cpu") -> BaseAlgorithm:
        """An SB3 model of ``member``'s run (its policy class, widths and hyperparameters; a replay of one batch) for
        the member's weights to be copied into (export, diagnostics)."""
        plan = member.plan
        agent_cfg = OmegaConf.to_container(plan.cfg.agent, resolve=True)
        if "buffer_size" in agent_cfg["sb3"]:  # off-policy
            agent_cfg["sb3"]["buffer_size"] = agent_cfg["sb3"]["batch_size"]  # it carries no replay data
        env = make_vec_env(plan.env, 1, member.seed)  # for its spaces
        try:
            return build_model(
                plan.agent, agent_cfg, env, net_arch=self.net_arch, sparse=plan.sparsity.method != "dense",
                seed=member.seed, device=device,
            )  # fmt: skip
        finally:
            env.close()

    def export_member(self, member: MemberRecord, path: Path) -> None:
        """Write ``member`` as an SB3 ``model.zip`` (``SAC.load``, ``DQN.load``, ``TD3.load``, ``PPO.load``; masks in the
        policy's state dict)."""
        model = self.sb3_model(member)
        copy_member(self.agent, member.index, model, to_sb3=True)
        model.num_timesteps = self.num_timesteps
        model.save(path)
        if self.loop.normalizer is not None:  # the SB3 path's VecNormalize statistics file, next to the model
            self.export_normalization(member, path.parent / VEC_NORMALIZE_FILE)

    def export_normalization(self, member: MemberRecord, path: Path) -> None:
        """Write ``member``'s observation/reward statistics with the SB3 path's own writer
        (:func:`experiment.sb3_state.save_vec_normalize`: ``vecnormalize.npz``, no pickle), from an SB3
        ``VecNormalize`` as the SB3 path builds it holding them."""
        env = VecNormalize(make_vec_env(member.plan.env, 1, member.seed))
        try:
            self.loop.normalizer.to_vec_normalize(member.index, env)
            save_vec_normalize(env, path)
        finally:
            env.close()

    def finish(self) -> list[dict]:
        """Invariants, ``model.zip`` and ``summary.json`` of every member; returns the summaries."""
        summaries = []
        for member in self.members:
            if member.status == "running":
                try:
                    member.controller.check_invariants()
                except SparsityInvariantError as error:
                    self.loop.fail(member.loop, str(error), self)
            if member.status == "running":
                self.export_member(member, member.run_dir / MODEL_FILE)
                more = {} if self.diagnostics is None else {"diagnostics": self.diagnostics.last(member.index)}
                summaries.append(self._write_summary(member, "completed", **more))  # diagnostics: the values at the end
            else:
                summaries.append(json.loads((member.run_dir / SUMMARY_FILE).read_text()))
        self.close()
        return summaries

    def interrupt(self, signal: str | None, checkpoint_step: int | None, at_once: bool) -> list[dict]:
        """A stop signal ended training: every running member's ``summary.json`` says ``interrupted`` (failed members
        keep theirs), with the step reached and the checkpoint a resume continues from; logs and envs closed."""
        record = {"signal": signal, "checkpoint_step": checkpoint_step, "at_once": at_once}
        summaries = []
        for member in self.members:
            if member.status == "running":
                summaries.append(self._write_summary(member, "interrupted", interrupted=record))
            else:
                summaries.append(json.loads((member.run_dir / SUMMARY_FILE).read_text()))
        self.close()
        return summaries

    def close(self) -> None:
        """Close the members' logs and the envs (a stopped population keeps its last checkpoint)."""
        for member in self.members:
            if member.logger is not None:
                member.logger.close()
                member.logger = None
        self.loop.close()
        self.eval_envs.close()

    # ----------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        """Everything needed to continue every member exactly, in safe formats (``weights_only`` torch, JSON)."""
        tensors = self.loop.state_tensors()
        state = {
            **self.loop.state_json(),
            "eval_envs": self.eval_envs.states(),
            "members": [
                {
                    "run_dir": str(m.run_dir), **PopulationTrainer.member_state(m.loop),
                    "episode_rewards": list(m.episode_rewards), "episode_lengths": list(m.episode_lengths),
                    "episodes": m.episodes, "eval_timesteps": m.eval_timesteps, "eval_results": m.eval_results,
                    "eval_lengths": m.eval_lengths,
                    "diagnostics": None if self.diagnostics is None else self.diagnostics.state(m.index),
                }
                for m in self.members
            ],
        }  # fmt: skip

        def write_files(folder: Path) -> None:
            torch.save(tensors, folder / "state.pt")
            atomic_write_json(folder / "state.json", state)

        self.population_dir.mkdir(parents=True, exist_ok=True)
        write_checkpoint(self.population_dir, write_files, self.num_timesteps)
        self._saved_at = self.num_timesteps

    def load_checkpoint(self) -> None:
        """Continue from the population's last checkpoint (the members and their order must be the same)."""
        problem = population_checkpoint_problem(self.population_dir, [m.run_dir for m in self.members])
        folder = latest_checkpoint(self.population_dir)
        if problem is not None or folder is None:
            raise PopulationCheckpointProblem(problem or f"{self.population_dir} has no population checkpoint")
        state = json.loads((folder / "state.json").read_text())
        tensors = torch.load(folder / "state.pt", weights_only=True, map_location="cpu")
        self.loop.load_state(tensors, state)
        for member, saved in zip(self.members, state["members"]):
            member.episode_rewards.extend(saved["episode_rewards"])
            member.episode_lengths.extend(saved["episode_lengths"])
            member.episodes = saved["episodes"]
            member.eval_timesteps, member.eval_results = saved["eval_timesteps"], saved["eval_results"]
            member.eval_lengths = saved["eval_lengths"]
        self._diagnostics_states = [saved.get("diagnostics") for saved in state["members"]]  # None: saved without
        self.eval_envs.restore(state["eval_envs"], continue_streams=any(m["eval_timesteps"] for m in state["members"]))
        self.steps_at_start = self.num_timesteps
        for member in self.members:
            member.logger = run_logger(member.run_dir, bool(member.plan.cfg.tensorboard), self.num_timesteps)
            member.logged_n_updates = self.loop.member_n_updates(member.index)  # SB3's new process: nothing pending
            member.logged_topology = member.controller.num_updates  # (the resumed start is not a start)
