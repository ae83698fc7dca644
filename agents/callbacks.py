"""SB3 callbacks of the sparse agents: topology logging, periodic checkpoints, resumable evaluation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

from sparse_rl.controller import TopologyController


class TopologyLoggerCallback(BaseCallback):
    """Logs ``sparsity/*`` and ``topology/*`` through SB3's logger at the start and after every topology update."""

    def __init__(self, controller: TopologyController) -> None:
        super().__init__()
        self.controller = controller
        self._logged_updates = -1

    def _record(self) -> None:
        stats = self.controller.stats()
        self.logger.record("sparsity/total", stats["sparsity"])
        self.logger.record("sparsity/active_params", stats["active"])
        for name, group in stats["groups"].items():
            self.logger.record(f"sparsity/{name}", group["sparsity"])
        self.logger.record("topology/num_updates", stats["num_updates"])
        for key in ("schedule_value", "mask_change"):
            if key in stats["last_update"]:
                self.logger.record(f"topology/{key}", stats["last_update"][key])
        self._logged_updates = self.controller.num_updates

    def _on_training_start(self) -> None:
        self._record()

    def _on_step(self) -> bool:
        if self.controller.num_updates != self._logged_updates:
            self._record()
        return True


class PeriodicCallback(BaseCallback):
    """Calls ``action(num_timesteps)`` every ``every`` env steps (e.g. to write a checkpoint)."""

    def __init__(self, every: int, action: Callable[[int], None]) -> None:
        super().__init__()
        self.every = every
        self.action = action
        self._next = every

    def _init_callback(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self.action(self.num_timesteps)
            self._next = (self.num_timesteps // self.every + 1) * self.every
        return True


class ResumableEvalCallback(EvalCallback):
    """SB3's EvalCallback that continues an existing ``evaluations.npz`` up to ``resume_from`` env steps."""

    def __init__(self, *args, resume_from: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.resume_from = resume_from

    def _init_callback(self) -> None:
        super()._init_callback()
        path = Path(self.log_path + ".npz") if self.log_path else None
        if self.resume_from is None or path is None or not path.exists():
            return
        with np.load(path) as data:
            keep = data["timesteps"] <= self.resume_from
            self.evaluations_timesteps = list(data["timesteps"][keep])
            self.evaluations_results = [list(r) for r in data["results"][keep]]
            self.evaluations_length = [list(r) for r in data["ep_lengths"][keep]]
