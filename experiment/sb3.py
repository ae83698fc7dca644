"""The SB3 training path: build a validated :class:`~experiment.plan.Plan` (envs, model, controller, callbacks),
train it, and write its run directory.

Writes to ``run_dir``: ``.hydra/config.yaml``, ``progress.csv``, TensorBoard events, ``evaluations.npz``,
``checkpoint/`` (model with optimizers, controller, replay buffer), ``model.zip`` and ``summary.json``.
One process writes a run directory at a time (:mod:`experiment.lock`); a second one is refused with one line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from agents import attach_controller, build_model
from agents.build import ift_kwarg
from agents.callbacks import (
    CheckpointCallback,
    ClockSyncCallback,
    FiniteWeightsCallback,
    ProgressCallback,
    ResumableEvalCallback,
    StopCallback,
    TopologyLoggerCallback,
    TrainingStopped,
)
from agents.diagnostics_callback import DiagnosticsCallback, diagnostics_settings
from agents.matching import equal_parameter_net_arch
from envs import EVAL_SEED_OFFSET, make_vec_env
from experiment.checkpoint import CheckpointWriteError, checkpoint_step, write_checkpoint
from experiment.interrupts import StopNow, StopSignals
from experiment.layout import (
    CONTROLLER_FILE,
    HYDRA_CONFIG,
    MODEL_FILE,
    REPLAY_FILE,
    SUMMARY_FILE,
    atomic_write,
    atomic_write_json,
)
from experiment.lock import LocksUnsupported, RunDirLocked, cleanup_stale_staging, hold_run_dir, holder_of
from experiment.numerics import apply_torch_settings
from experiment.plan import (
    JobFailed,
    JobSkipped,
    Plan,
    RunCompletedError,
    RunDirUsageError,
    UsageError,
    plan_run,
    resume_checkpoint,
)
from experiment.progress import Budget, RunProgress, StepCosts, probe, start_line, time_per_call
from experiment.replay_io import load_replay_buffer, save_replay_buffer
from experiment.run_dir import clear_run_outputs, completed_score, interrupted_line, non_finite_message, resume_command
from experiment.sb3_state import (
    VEC_NORMALIZE_FILE,
    callback_state,
    load_checkpoint_model,
    load_vec_normalize,
    restore_pending_logs,
    restore_training_state,
    run_logger,
    save_training_state,
)
from experiment.summary import final_checks, format_score, record_failure, run_summary
from sparse_rl.controller import NonFiniteError


def _make_envs(plan: Plan) -> tuple[VecEnv, VecEnv]:
    cfg = plan.cfg
    train_env = make_vec_env(plan.env, cfg.agent.n_envs, cfg.seed)
    eval_env = make_vec_env(plan.env, 1, cfg.seed + EVAL_SEED_OFFSET)
    if cfg.agent.normalize:
        train_env = VecNormalize(train_env)
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
        if plan.checkpoint is not None:
            load_vec_normalize(plan.checkpoint / VEC_NORMALIZE_FILE, train_env)
    return train_env, eval_env


def _save_checkpoint(
    plan: Plan,
    model: Any,
    controller: Any,
    num_timesteps: int,
    eval_env: VecEnv | None = None,
    topology: Any = None,
    states: dict[str, Any] | None = None,
) -> None:
    """Check the run is sound (finite weights, sparsity invariants), then replace the checkpoint atomically."""
    controller.check_finite(f" at env step {num_timesteps}")
    controller.check_invariants()
    callbacks = {} if topology is None else {"topology_logged_updates": topology.logged_updates}
    callbacks.update(states or {})  # other callbacks' small JSON states (diagnostics: its next measurement)

    def write_files(folder: Path) -> None:
        model.save(folder / MODEL_FILE)
        torch.save(controller.state_dict(), folder / CONTROLLER_FILE)
        if plan.cfg.save_replay_buffer and getattr(model, "replay_buffer", None) is not None:
            save_replay_buffer(model.replay_buffer, folder / REPLAY_FILE)
        save_training_state(folder, model, eval_env, callbacks)

    write_checkpoint(plan.run_dir, write_files, num_timesteps)


def build_plan_model(plan: Plan, env: VecEnv, device: str | None = None, **sb3_overrides: Any) -> tuple[Any, dict]:
    """The plan's fresh SB3 model on ``env`` (equal-parameter widths solved), and the summary's extra keys.

    ``device`` replaces the config's; ``sb3_overrides`` replace ``agent.sb3`` keys (e.g. a small replay buffer
    for a model that is only evaluated).
    """
    cfg = plan.cfg
    net_arch = OmegaConf.to_container(cfg.agent.net_arch)
    agent_cfg = OmegaConf.to_container(cfg.agent, resolve=True)
    if sb3_overrides:
        agent_cfg["sb3"] = {**agent_cfg["sb3"], **sb3_overrides}
    extra: dict[str, Any] = {}
    if plan.variant is not None:
        net_arch, extra["equal_parameters"] = equal_parameter_net_arch(
            plan.agent, env.observation_space, env.action_space, net_arch, plan.group_sparsity, plan.variant
        )
        extra["net_arch"] = net_arch
    model = build_model(
        plan.agent,
        agent_cfg,
        env,
        net_arch=net_arch,
        sparse=plan.sparsity.method != "dense",
        seed=cfg.seed,
        device=cfg.device if device is None else device,
        ift=ift_kwarg(cfg.sparsity.get("ift"), plan.group_sparsity),
    )
    return model, extra


PROBE_GRADIENT_CALLS = 3  # timed calls of the model's train() in the start-up probe (after one untimed call)
PROBE_ENV_STEPS = 50  # timed env steps (policy action + env step) in the probe


def _probe_costs(plan: Plan) -> StepCosts:
    """Seconds per env step and per gradient step of this plan on this machine, measured on a throwaway model.

    The throwaway model has its own env and a replay (or rollout) buffer of zeros; it is built before the run's
    model, whose construction seeds every global generator again, so the run draws exactly what it draws unprobed.
    """
    from stable_baselines3.common.logger import Logger

    cfg = plan.cfg
    env = make_vec_env(plan.env, cfg.agent.n_envs, cfg.seed + EVAL_SEED_OFFSET)
    try:
        batch = int(cfg.agent.sb3.get("batch_size", 64))
        model, _ = build_plan_model(plan, env, **({"buffer_size": batch} if "buffer_size" in cfg.agent.sb3 else {}))
        model.set_logger(Logger(folder=None, output_formats=[]))
        obs = env.reset()

        def env_step() -> None:
            nonlocal obs
            action, _ = model.predict(obs, deterministic=False)
            obs = env.step(action)[0]

        env_s = time_per_call(env_step, PROBE_ENV_STEPS) / env.num_envs
        if getattr(model, "replay_buffer", None) is not None:
            model.replay_buffer.full = True  # batch_size rows of zeros
            gradient = int(model.gradient_steps) if int(model.gradient_steps) > 0 else 1
            seconds = time_per_call(lambda: model.train(gradient, model.batch_size), PROBE_GRADIENT_CALLS)
            gradient_s = seconds / gradient
        else:  # on-policy: one epoch over a rollout of zeros
            model.rollout_buffer.full = True
            model.n_epochs = 1
            minibatches = -(-model.n_steps * model.n_envs // model.batch_size)
            gradient_s = time_per_call(model.train, 1) / minibatches
    finally:
        env.close()
    return StepCosts(env_s, gradient_s)


def _budget(plan: Plan, model: Any) -> Budget:
    """The run's env steps, warm-up (off-policy ``learning_starts``) and gradient steps (the agent's own count)."""
    warmup = int(getattr(model, "learning_starts", 0))

    def gradient_steps_until(t: int) -> int:
        return 0 if t <= warmup else int(plan.agent.gradient_steps(model, t))

    return Budget(int(plan.cfg.agent.total_timesteps), warmup, gradient_steps_until)


def _diagnostics_callbacks(plan: Plan, controller: Any) -> list[DiagnosticsCallback]:
    """The diagnostics callback if ``diagnostics.freq`` > 0 (agents/diagnostics_callback.py, design decision 28)."""
    settings = diagnostics_settings(plan.cfg.diagnostics)
    state = callback_state(plan.checkpoint).get("diagnostics") if plan.checkpoint is not None else None
    return [DiagnosticsCallback(controller, settings, plan.cfg.seed, state, plan.agent)] if settings.enabled else []


def _prepare_run_dir(plan: Plan) -> None:
    """Say the plan's warnings, clear a run that never reached a checkpoint (``resume=true``), write the config."""
    cfg = plan.cfg
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.resume and plan.checkpoint is None and clear_run_outputs(plan.run_dir):
        print(f"note: {plan.run_dir} stopped before its first checkpoint; starting it again from scratch")
    atomic_write(plan.run_dir / HYDRA_CONFIG, lambda tmp: OmegaConf.save(cfg, tmp, resolve=True))


def _attach_and_restore(plan: Plan, model: Any, eval_env: VecEnv, extra: dict) -> tuple[Any, int | None]:
    """The model's controller, and everything a checkpoint holds restored into model, controller and eval env.

    Returns the controller and the env step resumed at (``None``: a fresh run). The model is rebuilt from the
    config: nothing in ``model.zip`` is unpickled.
    """
    checkpoint = plan.checkpoint
    resumed_at = None
    if checkpoint is not None:
        load_checkpoint_model(model, checkpoint / MODEL_FILE)
        if (checkpoint / REPLAY_FILE).exists():
            load_replay_buffer(model.replay_buffer, checkpoint / REPLAY_FILE)
        resumed_at = model.num_timesteps
    cfg = plan.cfg
    controller = attach_controller(
        model, plan.agent, plan.sparsity, cfg.agent.total_timesteps, cfg.seed, existing=checkpoint is not None
    )
    if checkpoint is not None:
        controller.load_state_dict(torch.load(checkpoint / CONTROLLER_FILE, weights_only=True))
        extra["exact_resume"] = restore_training_state(checkpoint, model, eval_env)
        if not extra["exact_resume"]:
            print(f"note: {plan.env.name} state is not captured; its current episodes restart after the resume")
    model.set_logger(run_logger(plan.run_dir, cfg.tensorboard, resumed_at))
    if checkpoint is not None:
        restore_pending_logs(checkpoint, model.logger)
    return controller, resumed_at


@dataclass
class _Callbacks:
    """The SB3 callbacks of one run, and the ones whose results the summary reads."""

    all: list[BaseCallback]
    evaluation: ResumableEvalCallback
    diagnostics: DiagnosticsCallback | None
    save: Callable[[int], None]  # writes a checkpoint at an env step
    saved_at: list[int]  # env steps at which a checkpoint was written by this process


def _callbacks(
    plan: Plan, model: Any, controller: Any, eval_env: VecEnv, resumed_at: int | None, stop: StopSignals | None = None
) -> _Callbacks:
    """Clock sync (PPO), topology logging, finite-weight checks, evaluation, checkpoints, diagnostics, in that order;
    with ``stop``, last, the stop at the first rollout start after a stop signal (a checkpoint first)."""
    cfg = plan.cfg
    eval_cb = ResumableEvalCallback(
        eval_env,
        n_eval_episodes=cfg.agent.eval_episodes,
        eval_freq=max(cfg.agent.eval_freq // cfg.agent.n_envs, 1),
        log_path=str(plan.run_dir),
        deterministic=True,
        verbose=0,
        resume_from=resumed_at,
        final_if_none=True,  # a budget shorter than eval_freq still gets one evaluation (experiment.preflight)
    )
    logged = callback_state(plan.checkpoint).get("topology_logged_updates") if plan.checkpoint is not None else None
    topology = TopologyLoggerCallback(controller, logged)
    callbacks = [topology, FiniteWeightsCallback(controller, cfg.nan_check_freq), eval_cb]
    if plan.agent.nominal_clock is not None:  # first: a checkpoint at a rollout start sees the synced clock
        callbacks.insert(0, ClockSyncCallback(controller, plan.agent.nominal_clock))
    diagnostics = next(iter(_diagnostics_callbacks(plan, controller)), None)

    saved_at: list[int] = []

    def save(t: int) -> None:
        states = {"diagnostics": diagnostics.state()} if diagnostics is not None else {}
        _save_checkpoint(plan, model, controller, t, eval_env, topology, states)
        saved_at.append(t)

    def save_once(t: int) -> None:  # a stop right after a periodic checkpoint at the same step writes no second one
        if not saved_at or saved_at[-1] != t:
            save(t)

    if cfg.checkpoint_freq > 0:
        callbacks.append(CheckpointCallback(cfg.checkpoint_freq, save))
    callbacks += [diagnostics] if diagnostics is not None else []
    if stop is not None:
        callbacks.append(StopCallback(lambda: stop.requested, save_once))
    return _Callbacks(callbacks, eval_cb, diagnostics, save, saved_at)


def _failure(plan: Plan, model: Any, controller: Any, error: BaseException) -> BaseException:
    """The error to record: a NaN often surfaces elsewhere first (e.g. a distribution's argument check), so a
    non-finite weight is named (group, step) in its place."""
    try:
        controller.check_finite(f" at env step {model.num_timesteps} (gradient step {controller.clock})")
    except NonFiniteError as non_finite:
        return NonFiniteError(non_finite_message(str(non_finite), plan.run_dir, error))
    return error


def train(plan: Plan, stop: StopSignals | None = None) -> dict:
    """Build everything from a validated plan, train, and write the run directory. Returns the summary.

    With ``stop`` (:mod:`experiment.interrupts`) a stop signal ends training at the next rollout start, after a
    checkpoint; the summary then says ``status: interrupted`` with the env step reached.
    """
    cfg = plan.cfg
    apply_torch_settings(cfg)
    _prepare_run_dir(plan)
    costs = probe(lambda: _probe_costs(plan)) if cfg.progress_bar else None  # before the run's model: it reseeds all
    train_env, eval_env = _make_envs(plan)
    model, extra = build_plan_model(plan, train_env)
    controller, resumed_at = _attach_and_restore(plan, model, eval_env, extra)
    callbacks = _callbacks(plan, model, controller, eval_env, resumed_at, stop)
    start = time.perf_counter()
    steps_before = model.num_timesteps
    budget = _budget(plan, model)
    print(start_line(plan.run_dir, budget, steps_before, costs), flush=True)
    running = run_summary(plan, "running", controller, None, 0.0, steps_before, **extra)
    atomic_write_json(plan.run_dir / SUMMARY_FILE, running)
    progress = RunProgress(f"{plan.agent.name}/{plan.env.name}", budget, steps_before, costs, bool(cfg.progress_bar))
    try:
        with progress:
            model.learn(
                total_timesteps=cfg.agent.total_timesteps - steps_before,
                callback=[*callbacks.all, ProgressCallback(progress.update)],
                progress_bar=False,  # experiment.progress: steps of the whole run, an ETA that knows the warm-up
                reset_num_timesteps=plan.checkpoint is None,
            )
    except (TrainingStopped, StopNow) as stopped:  # a stop signal (experiment.interrupts); the checkpoint is written
        wall = time.perf_counter() - start
        summary = run_summary(
            plan, "interrupted", controller, callbacks.evaluation, wall, model.num_timesteps - steps_before, **extra
        )
        summary["num_timesteps"] = model.num_timesteps
        summary["interrupted"] = {
            "signal": stop.name if stop is not None else None,
            "checkpoint_step": checkpoint_step(plan.run_dir),
            "at_once": isinstance(stopped, StopNow),  # a second signal: no checkpoint at the step reached
        }
        atomic_write_json(plan.run_dir / SUMMARY_FILE, summary)
        model.logger.close()
        train_env.close()
        eval_env.close()
        return summary
    except BaseException as error:
        wall = time.perf_counter() - start
        error = _failure(plan, model, controller, error)
        summary = run_summary(
            plan, "failed", controller, callbacks.evaluation, wall, model.num_timesteps, error=str(error), **extra
        )
        atomic_write_json(plan.run_dir / SUMMARY_FILE, summary)
        raise error
    wall = time.perf_counter() - start
    callbacks.save(model.num_timesteps)
    model.save(plan.run_dir / MODEL_FILE)
    if callbacks.diagnostics is not None:  # per group, the values at the end
        extra["diagnostics"] = callbacks.diagnostics.last
    summary = run_summary(
        plan, "completed", controller, callbacks.evaluation, wall, model.num_timesteps - steps_before, **extra
    )
    summary["num_timesteps"] = model.num_timesteps
    final_checks(plan.run_dir, controller, summary)
    atomic_write_json(plan.run_dir / SUMMARY_FILE, summary)
    train_env.close()
    eval_env.close()
    return summary


def _remove_empty_dirs(path: Path) -> None:
    """Remove ``path`` and its empty parents (Hydra creates the run directory before the config is validated)."""
    cwd = Path.cwd().resolve()
    path = path.resolve()
    while path != cwd and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


def run_job(cfg: DictConfig, multirun: bool) -> float | None:
    """Plan, hold and train one job (``python -m sparse_rl.run``); returns its score. A sweep job that is skipped or
    fails raises :class:`JobSkipped` / :class:`JobFailed` after one line, so its launcher reports it failed while the
    sweep goes on. With ``resume=auto`` a completed run is done: its recorded score is returned, nothing is touched."""
    try:
        plan = plan_run(cfg)
    except UsageError as error:
        if isinstance(error, RunCompletedError) and cfg.resume == "auto":
            return _already_completed(Path(cfg.run_dir))
        if isinstance(error, RunDirUsageError):  # a live writer explains the run directory's state best
            error = holder_of(Path(cfg.run_dir)) or error
        _remove_empty_dirs(Path(cfg.run_dir))
        if multirun:
            print(f"{cfg.run_dir}: SKIPPED: {error}", file=sys.stderr)
            raise JobSkipped(f"{cfg.run_dir}: {error}") from None
        sys.exit(f"error: {error}")
    try:
        with hold_run_dir(plan.run_dir):  # one writer per run directory (12.1); released even on kill -9
            return _train_held(plan, multirun)
    except (RunDirLocked, LocksUnsupported, UsageError) as error:
        if isinstance(error, RunCompletedError) and cfg.resume == "auto":  # completed while this job waited
            return _already_completed(plan.run_dir)
        if multirun:
            print(f"{plan.run_dir}: SKIPPED: {error}", file=sys.stderr)
            raise JobSkipped(f"{plan.run_dir}: {error}") from None
        sys.exit(f"error: {error}")


def _already_completed(run_dir: Path) -> float | None:
    """``resume=auto`` on a completed run: say so, return its recorded score."""
    score = completed_score(run_dir)
    print(f"{run_dir}: completed earlier (score {format_score(score)}); left untouched")
    return score


def _train_held(plan: Plan, multirun: bool) -> float | None:
    """Train ``plan`` in the run directory this process holds: decide again how to start, now that no one else
    writes there; clear stale staging folders; record a failure in ``summary.json``."""
    plan.checkpoint = resume_checkpoint(plan.cfg, plan.run_dir)
    for path in cleanup_stale_staging(plan.run_dir):
        print(f"note: removed {path}, left by an interrupted write")
    stop = StopSignals()
    try:
        with stop:  # Ctrl-C, SIGTERM, the scheduler's warning: checkpoint, record, one line (experiment.interrupts)
            summary = train(plan, stop)
    except StopNow:  # a second signal outside learn() (building, the final save)
        record_failure(plan, RuntimeError(f"stopped at once by a second {stop.name}"), status="interrupted")
        stop.hand_over(f"{plan.run_dir}: stopped at once by a second {stop.name}; continue with: {resume_command()}")
    except Exception as error:
        record_failure(plan, error)
        if multirun:
            print(f"{plan.run_dir}: FAILED ({error!r}); recorded in summary.json", file=sys.stderr)
            raise JobFailed(f"{plan.run_dir}: {error!r}") from None
        if isinstance(error, (NonFiniteError, CheckpointWriteError)):
            sys.exit(f"error: {error}".splitlines()[0])
        raise
    if summary["status"] == "interrupted":
        at_once = " (a second signal: stopped at once)" if summary["interrupted"]["at_once"] else ""
        how = f"interrupted by {stop.name}{at_once}"
        line = interrupted_line(
            plan.run_dir, summary["num_timesteps"], int(plan.cfg.agent.total_timesteps),
            summary["interrupted"]["checkpoint_step"], how, resume_command(),
        )  # fmt: skip
        stop.hand_over(line)
    print(f"{plan.run_dir}: score {format_score(summary['score'])}, {summary['env_steps_per_s']:.0f} env-steps/s")
    if stop.requested:  # the signal came during the final save: the run is complete; stop here all the same
        print(f"{plan.run_dir}: completed; {stop.name} arrived during its final save: stopping", file=sys.stderr)
        raise SystemExit(stop.exit_status)
    return summary["score"]
