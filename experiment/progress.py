"""What a run says while it trains, on both training paths: one start line and one progress display.

- **Start line** (:func:`start_line`): the run directory, the budget (env steps, of which warm-up, and gradient
  steps), "resuming from step N" on a resume, and an estimate of the time it will take on this machine: the
  remaining env steps times the measured cost of one env step plus the remaining gradient steps times the measured
  cost of one gradient step (:class:`StepCosts`; each path measures them with a short probe on throwaway copies
  before it builds the run, so the run's own random streams are untouched). Warm-up steps cost an env step only.
- **Progress display** (:class:`RunProgress`, tqdm): env steps out of the whole run (a resumed run starts at its
  step), and an ETA summed per phase: remaining warm-up steps at the warm-up rate plus remaining training steps at
  the training rate, each measured in its own phase (the probe's estimate until a phase has been seen). A plain
  rate average would promise minutes during the cheap warm-up and then jump to hours once gradient steps begin.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

MIN_PHASE_SECONDS = 1.0  # a phase's measured rate replaces the probe's estimate after this much time in it
REFRESH_SECONDS = 0.5  # how often the ETA is recomputed (tqdm redraws at most this often too)


@dataclass(frozen=True)
class StepCosts:
    """Measured seconds per env step (action + env step, as in warm-up) and per gradient step on this machine."""

    env_step_s: float
    gradient_step_s: float


@dataclass(frozen=True)
class Budget:
    """A run's budget in env steps and gradient steps; ``gradient_steps_until(t)`` counts those done by env step t."""

    total: int
    warmup: int  # env steps before the first gradient step (off-policy ``learning_starts``; 0 for PPO)
    gradient_steps_until: Callable[[int], int]

    def remaining_seconds(self, start: int, costs: StepCosts) -> float:
        gradient = max(self.gradient_steps_until(self.total) - self.gradient_steps_until(start), 0)
        return max(self.total - start, 0) * costs.env_step_s + gradient * costs.gradient_step_s

    def training_step_s(self, costs: StepCosts) -> float:
        """Seconds per env step once gradient steps have begun (its share of gradient steps included)."""
        steps = max(self.total - self.warmup, 1)
        gradient = self.gradient_steps_until(self.total) - self.gradient_steps_until(self.warmup)
        return costs.env_step_s + max(gradient, 0) / steps * costs.gradient_step_s


def time_per_call(call: Callable[[], Any], calls: int, warmup_calls: int = 1, sync: Callable[[], None] | None = None) -> float:
    """Seconds per ``call()``, after ``warmup_calls`` untimed ones (first calls allocate and compile)."""
    for _ in range(warmup_calls):
        call()
    if sync is not None:
        sync()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    if sync is not None:
        sync()
    return (time.perf_counter() - start) / max(calls, 1)


def probe(measure: Callable[[], StepCosts]) -> StepCosts | None:
    """``measure()``, or ``None`` with a note if it fails: a time estimate must never stop a run."""
    try:
        return measure()
    except Exception as error:  # any failure of the probe only costs the estimate
        first_line = (str(error).splitlines() or [""])[0]
        print(f"note: no time estimate ({type(error).__name__}: {first_line})")
        return None


def format_duration(seconds: float | None) -> str:
    """``45 s``, ``12 min``, ``3.4 h``, ``2.1 days`` (``?`` if unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def start_line(
    run_dir: Any, budget: Budget, start: int, costs: StepCosts | None, members: int = 1, what: str = "env steps"
) -> str:
    """One line: where, how much, from where, how long (``costs`` None: not measured, e.g. ``progress_bar=false``)."""
    gradient = budget.gradient_steps_until(budget.total)
    parts = [f"{run_dir}: {budget.total:,} {what}{' per member' if members > 1 else ''}"]
    detail = [f"{budget.warmup:,} warm-up"] if budget.warmup > 0 else []
    parts.append(f" ({', '.join([*detail, f'{gradient:,} gradient steps'])})")
    if start > 0:
        parts.append(f", resuming from step {start:,}")
    if costs is not None:
        parts.append(
            f"; estimate on this machine: {format_duration(budget.remaining_seconds(start, costs))} "
            f"({costs.env_step_s * 1e3:.2g} ms per env step, {costs.gradient_step_s * 1e3:.2g} ms per gradient step"
            f"{', all members' if members > 1 else ''})"
        )
    return "".join(parts)


class RunProgress:
    """The progress bar of one run (or one population): env steps of the whole run, ETA per phase."""

    def __init__(self, label: str, budget: Budget, start: int, costs: StepCosts | None, enabled: bool = True) -> None:
        self.budget, self.costs = budget, costs
        self.enabled = enabled
        self.bar = tqdm(
            total=budget.total, initial=start, desc=label, unit="step", disable=not enabled, dynamic_ncols=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]",
        )  # fmt: skip
        self.seconds = {"warmup": 0.0, "train": 0.0}
        self.steps = {"warmup": 0, "train": 0}
        self._last_step, self._last_time = start, None
        self._next_refresh = 0.0

    def update(self, num_timesteps: int) -> None:
        """The run is at env step ``num_timesteps``."""
        if not self.enabled or num_timesteps <= self._last_step:
            return
        now = time.perf_counter()
        if self._last_time is not None:  # the steps since the last update belong to the phase they started in
            phase = "warmup" if self._last_step < self.budget.warmup else "train"
            self.seconds[phase] += now - self._last_time
            self.steps[phase] += num_timesteps - self._last_step
        self.bar.update(num_timesteps - self._last_step)
        self._last_step, self._last_time = num_timesteps, now
        if now >= self._next_refresh:
            self._next_refresh = now + REFRESH_SECONDS
            self.bar.set_postfix_str(f"ETA {format_duration(self.eta())}", refresh=False)

    def seconds_per_step(self, phase: str) -> float | None:
        """The phase's measured rate once it ran ``MIN_PHASE_SECONDS``, else the probe's estimate (or None)."""
        if self.seconds[phase] >= MIN_PHASE_SECONDS and self.steps[phase] > 0:
            return self.seconds[phase] / self.steps[phase]
        if self.costs is None:
            return None
        return self.costs.env_step_s if phase == "warmup" else self.budget.training_step_s(self.costs)

    def eta(self) -> float | None:
        """Seconds left: remaining warm-up steps at the warm-up rate plus remaining training steps at the training rate."""
        at = self._last_step
        warmup_left = max(self.budget.warmup - at, 0)
        train_left = self.budget.total - max(at, self.budget.warmup)
        total = 0.0
        for phase, left in (("warmup", warmup_left), ("train", train_left)):
            if left <= 0:
                continue
            rate = self.seconds_per_step(phase)
            if rate is None:
                return None
            total += left * rate
        return total

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
