"""SB3 callbacks of the sparse agents: topology logging, periodic checkpoints, resumable evaluation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.logger import Logger

from sparse_rl.controller import TopologyController


class TopologySource(Protocol):
    """What :func:`record_topology` reads: a :class:`TopologyController`, or the population's cached
    ``agents.population.trainer.TopologyStats`` of one."""

    def stats(self) -> dict[str, Any]: ...


def record_topology(logger: Logger, controller: TopologySource) -> None:
    """Record ``sparsity/*`` and ``topology/*`` of ``controller`` in an SB3 logger (both training paths)."""
    stats = controller.stats()
    logger.record("sparsity/total", stats["sparsity"])
    logger.record("sparsity/active_params", stats["active"])
    for name, group in stats["groups"].items():
        logger.record(f"sparsity/{name}", group["sparsity"])
    logger.record("topology/num_updates", stats["num_updates"])
    for key in ("schedule_value", "mask_change"):
        if key in stats["last_update"]:
            logger.record(f"topology/{key}", stats["last_update"][key])


class TopologyLoggerCallback(BaseCallback):
    """Logs ``sparsity/*`` and ``topology/*`` through SB3's logger at the start and after every topology update.

    ``logged_updates``: on resume, the count of updates already logged at the checkpoint (the start of a
    resumed run is not a start: logging there would add columns the uninterrupted run lacks).
    """

    def __init__(self, controller: TopologyController, logged_updates: int | None = None) -> None:
        super().__init__()
        self.controller = controller
        self.resumed = logged_updates is not None
        self.logged_updates = -1 if logged_updates is None else logged_updates

    def _record(self) -> None:
        record_topology(self.logger, self.controller)
        self.logged_updates = self.controller.num_updates

    def _on_training_start(self) -> None:
        if not self.resumed:
            self._record()

    def _on_step(self) -> bool:
        if self.controller.num_updates != self.logged_updates:
            self._record()
        return True


class ClockSyncCallback(BaseCallback):
    """Keeps the topology clock on the schedule when a trainer skips gradient steps (PPO's ``target_kl`` stop).

    At every rollout start and at the end of training, the controller's clock is moved to ``nominal(model)``, the
    gradient steps the iterations so far would have taken, if it is behind: the schedule stays the one planned
    from the budget, and a run ends at its final allocation (:meth:`~sparse_rl.TopologyController.advance_to`).
    """

    def __init__(self, controller: TopologyController, nominal: Callable[[Any], int]) -> None:
        super().__init__()
        self.controller = controller
        self.nominal = nominal

    def _sync(self) -> None:
        self.controller.advance_to(self.nominal(self.model))

    def _on_rollout_start(self) -> None:
        self._sync()

    def _on_training_end(self) -> None:
        self._sync()

    def _on_step(self) -> bool:
        return True


class FiniteWeightsCallback(BaseCallback):
    """Stops training with :class:`~sparse_rl.NonFiniteError` once a weight turns NaN/Inf (checked every ``every`` steps)."""

    def __init__(self, controller: TopologyController, every: int) -> None:
        super().__init__()
        self.controller = controller
        self.every = every

    def _on_step(self) -> bool:
        if self.n_calls % self.every == 0:
            where = f" at env step {self.num_timesteps} (gradient step {self.controller.clock})"
            self.controller.check_finite(where)
        return True


class CheckpointCallback(BaseCallback):
    """Calls ``save(num_timesteps)`` once ``every`` env steps have passed, at the start of a rollout.

    SB3 runs step callbacks between the env step and storing/training on that transition; the start of a
    rollout (after ``train()``) is the one point where model, replay buffer, last observation and envs agree,
    so a run resumed from there continues exactly.
    """

    def __init__(self, every: int, save: Callable[[int], None]) -> None:
        super().__init__()
        self.every = every
        self.save = save
        self._next = every

    def _init_callback(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_rollout_start(self) -> None:
        if self.num_timesteps >= self._next:
            self.save(self.num_timesteps)
            self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        return True


class TrainingStopped(Exception):
    """Raised out of ``learn()`` by :class:`StopCallback` once the checkpoint at ``num_timesteps`` is written."""

    def __init__(self, num_timesteps: int) -> None:
        super().__init__(f"training stopped at env step {num_timesteps} on request; checkpoint written")
        self.num_timesteps = num_timesteps


class StopCallback(BaseCallback):
    """Stops ``learn()`` at the next rollout start once ``requested()`` is true, after ``save(num_timesteps)``.

    The rollout start is :class:`CheckpointCallback`'s consistent point, so the run continues exactly from that
    checkpoint. A signal handler only sets the request (``experiment.interrupts``): the step in progress finishes.
    Stopping raises :class:`TrainingStopped` (``on_training_end`` hooks do not run: the run did not end, e.g. no
    final evaluation is added).
    """

    def __init__(self, requested: Callable[[], bool], save: Callable[[int], None]) -> None:
        super().__init__()
        self.requested = requested
        self.save = save

    def _on_rollout_start(self) -> None:
        if self.requested():
            self.save(self.model.num_timesteps)
            raise TrainingStopped(self.model.num_timesteps)

    def _on_step(self) -> bool:
        return True


class ProgressCallback(BaseCallback):
    """Tells ``update(num_timesteps)`` after every env step (the run's progress display, both training paths)."""

    def __init__(self, update: Callable[[int], None]) -> None:
        super().__init__()
        self.update = update

    def _on_step(self) -> bool:
        self.update(self.model.num_timesteps)
        return True


class ResumableEvalCallback(EvalCallback):
    """SB3's EvalCallback that continues an existing ``evaluations.npz`` up to ``resume_from`` env steps.

    With ``final_if_none``, a run that ends without any evaluation (a budget shorter than ``eval_freq``) is
    evaluated once at its last step: ``evaluations.npz``, a ``progress.csv`` row and a score.
    """

    def __init__(self, *args, resume_from: int | None = None, final_if_none: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.resume_from = resume_from
        self.final_if_none = final_if_none

    def _on_training_end(self) -> None:
        if self.final_if_none and not self.evaluations_timesteps:
            self.num_timesteps = self.model.num_timesteps
            self.eval_freq = 1  # EvalCallback evaluates when n_calls % eval_freq == 0
            self._on_step()

    def _init_callback(self) -> None:
        super()._init_callback()
        if self.resume_from is not None:  # keep the evaluation points of the uninterrupted run
            self.n_calls = self.resume_from // self.training_env.num_envs
        path = Path(self.log_path + ".npz") if self.log_path else None
        if self.resume_from is None or path is None or not path.exists():
            return
        with np.load(path) as data:
            keep = data["timesteps"] <= self.resume_from
            self.evaluations_timesteps = list(data["timesteps"][keep])
            self.evaluations_results = [list(r) for r in data["results"][keep]]
            self.evaluations_length = [list(r) for r in data["ep_lengths"][keep]]
