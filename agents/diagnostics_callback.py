"""Training diagnostics of SB3 agents (issue 14): per group, every ``diagnostics.freq`` gradient steps, on a batch
drawn from the replay or rollout buffer with the run's RNG states untouched.

The metrics are :mod:`sparse_rl.diagnostics`'s; each agent's per-sample losses, written to match SB3's updates,
are its spec's ``diagnostic_losses`` (in the agent's module, built with :func:`on_replay` or :func:`on_rollout`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from torch import nn

from agents.spec import AgentSpec, GroupLosses, Loss, spec_of
from sparse_rl.controller import SparseGroup, TopologyController
from sparse_rl.diagnostics import dormant_fraction, gradient_snr, mask_churn, norm, srank
from sparse_rl.masks import MASK_BUFFER, name_matches

PREFIX = "diagnostics"
STEP_KEY = f"{PREFIX}/gradient_step"  # the topology clock at the measurement (the x axis of the analysis plots)
DiagnosticLosses = Callable[[BaseAlgorithm, int, np.random.Generator], GroupLosses | None]


@dataclass(frozen=True)
class DiagnosticsSettings:
    """The ``diagnostics`` config node (``configs/config.yaml``)."""

    freq: int  # gradient steps between two measurements; 0 turns diagnostics off
    batch_size: int
    taus: tuple[float, ...]
    srank_delta: float

    @property
    def enabled(self) -> bool:
        return self.freq > 0


def diagnostics_settings(node: Any) -> DiagnosticsSettings:
    """Validated settings from the ``diagnostics`` config node; a ``ValueError`` names the bad key."""
    settings = DiagnosticsSettings(
        int(node.freq), int(node.batch_size), tuple(float(t) for t in node.taus), float(node.srank_delta)
    )
    if settings.freq < 0:
        raise ValueError(f"diagnostics.freq must be >= 0 (0 turns diagnostics off), got {settings.freq}")
    if settings.batch_size < 2:
        raise ValueError(f"diagnostics.batch_size must be >= 2 (a std over samples), got {settings.batch_size}")
    if not settings.taus or any(tau < 0.0 for tau in settings.taus):
        raise ValueError(f"diagnostics.taus must be a non-empty list of values >= 0, got {list(settings.taus)}")
    if not 0.0 < settings.srank_delta < 1.0:
        raise ValueError(f"diagnostics.srank_delta must be in (0, 1), got {settings.srank_delta}")
    return settings


def metric_keys(group: str, taus: tuple[float, ...]) -> list[str]:
    """The logger keys of one group, ``diagnostics/<group>/<metric>``."""
    names = [f"dormant_{tau:g}" for tau in taus]
    names += ["grad_snr", "srank", "churn_initial", "churn_last", "weight_norm", "grad_norm"]
    return [f"{PREFIX}/{group}/{name}" for name in names]


# ---------------------------------------------------------------------------------------------- batches
def replay_batch(model: BaseAlgorithm, batch_size: int) -> Any:
    """A replay minibatch (SB3's own ``sample``; the caller isolates the RNG it draws from)."""
    buffer: ReplayBuffer = model.replay_buffer
    if buffer.size() < 2:
        return None
    return buffer.sample(min(batch_size, buffer.size()), env=model._vec_normalize_env)


def rollout_batch(model: BaseAlgorithm, batch_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...] | None:
    """Samples of the full rollout buffer (at a rollout's end: returns and advantages computed), not reordering it."""
    buffer: RolloutBuffer = model.rollout_buffer
    if not buffer.full or isinstance(buffer.observations, dict):
        return None
    flat = buffer.generator_ready  # already flattened by PPO's get(): (steps*envs, ...); else (steps, envs, ...)
    arrays = [buffer.observations, buffer.actions, buffer.values, buffer.log_probs, buffer.advantages, buffer.returns]
    arrays = [a if flat else buffer.swap_and_flatten(a) for a in arrays]
    n = arrays[0].shape[0]
    index = rng.choice(n, size=min(batch_size, n), replace=False)
    obs, actions, values, log_probs, advantages, returns = (buffer.to_torch(a[index]) for a in arrays)
    return obs, actions, values.flatten(), log_probs.flatten(), advantages.flatten(), returns.flatten()


# ---------------------------------------------------------------------------------------------- shared loss parts
def discounts(model: BaseAlgorithm, data: Any) -> Any:
    """The replay batch's discounts (n-step buffers), else the model's gamma."""
    return data.discounts if getattr(data, "discounts", None) is not None else model.gamma


def target_critic_min(model: BaseAlgorithm, next_obs: torch.Tensor, next_actions: torch.Tensor) -> torch.Tensor:
    """The minimum over the target critics at (next_obs, next_actions), shape (batch, 1) (SAC's and TD3's target)."""
    next_q, _ = torch.min(torch.cat(model.critic_target(next_obs, next_actions), dim=1), 1, True)
    return next_q


def on_replay(losses: Callable[[BaseAlgorithm, Any], GroupLosses]) -> DiagnosticLosses:
    """An agent's diagnostic losses on a replay minibatch (off-policy agents)."""

    def diagnostic_losses(model: BaseAlgorithm, batch_size: int, rng: np.random.Generator) -> GroupLosses | None:
        data = replay_batch(model, batch_size)
        return None if data is None else losses(model, data)

    return diagnostic_losses


def on_rollout(losses: Callable[[BaseAlgorithm, tuple[torch.Tensor, ...]], GroupLosses]) -> DiagnosticLosses:
    """An agent's diagnostic losses on samples of the full rollout buffer (on-policy agents)."""

    def diagnostic_losses(model: BaseAlgorithm, batch_size: int, rng: np.random.Generator) -> GroupLosses | None:
        batch = rollout_batch(model, batch_size, rng)
        return None if batch is None else losses(model, batch)

    return diagnostic_losses


def group_losses(
    model: BaseAlgorithm, batch_size: int, rng: np.random.Generator, spec: AgentSpec | None = None
) -> GroupLosses | None:
    """Per group: (batch inputs, per-sample loss) of ``spec`` (default: the model's agent, :func:`spec_of`);
    ``None`` when the buffer cannot give a batch yet."""
    return (spec or spec_of(model)).diagnostic_losses(model, batch_size, rng)


# ---------------------------------------------------------------------------------------------- measurement
@contextlib.contextmanager
def isolated_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed numpy's and torch's global generators with ``seed`` and restore their states afterwards: a measurement
    draws nothing the run would have drawn (same training with diagnostics on or off)."""
    np_state = np.random.get_state()
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)  # argument checks branch on data: not vmap-able
    try:
        with torch.random.fork_rng(devices=devices, device_type=device.type):
            np.random.seed(seed)
            torch.manual_seed(seed)
            yield
    finally:
        np.random.set_state(np_state)
        torch.distributions.Distribution.set_default_validate_args(validate)


def activation_modules(group: SparseGroup) -> list[nn.Module]:
    """The group's activation modules (``torch.nn`` activations under its include globs), in forward order."""
    return [
        module
        for name, module in group.module.named_modules()
        if type(module).__module__ == "torch.nn.modules.activation" and name_matches(name, group.include, group.exclude)
    ]


def measure_group(
    group: SparseGroup,
    inputs: tuple[torch.Tensor, ...],
    loss: Loss,
    settings: DiagnosticsSettings,
) -> dict[str, float]:
    """Dormant fractions and srank (activations of the batched loss forward), gradient SNR and norms of one group.

    The hidden activations are the outputs of the group's activation modules that a layer of the group reads (an
    output activation, e.g. TD3's tanh, is not a hidden layer); the last of them feeds srank.
    """
    acts = activation_modules(group)
    outputs: dict[int, torch.Tensor] = {}
    read: list[torch.Tensor] = []  # the layers' inputs (kept alive, so their storage is not reused meanwhile)
    handles = [m.register_forward_hook(lambda m, i, o, k=k: outputs.__setitem__(k, o)) for k, m in enumerate(acts)]
    handles += [layer.module.register_forward_pre_hook(lambda m, i: read.append(i[0])) for layer in group.layers]
    try:
        with torch.no_grad():
            loss(inputs)
    finally:
        for handle in handles:
            handle.remove()
    pointers = {x.data_ptr() for x in read if isinstance(x, torch.Tensor)}
    result: dict[str, float] = {}
    layers = [outputs[k] for k in range(len(acts)) if k in outputs and outputs[k].data_ptr() in pointers]
    units = sum(a.shape[1] for a in layers)
    for tau in settings.taus:
        dormant = sum(dormant_fraction(a, tau) * a.shape[1] for a in layers)
        result[f"dormant_{tau:g}"] = dormant / units if units else float("nan")
    result["srank"] = float(srank(layers[-1], settings.srank_delta)) if layers else float("nan")
    params, masks = {}, {}
    for layer in group.layers:
        for kind in ("weight", "bias"):
            value = getattr(layer.module, kind, None)
            if isinstance(value, torch.Tensor):
                key = f"{layer.name}.{kind}"
                params[key] = value
                masks[key] = getattr(layer.module, MASK_BUFFER, None) if kind == "weight" else None
    snr, grad_norm = gradient_snr(group.module, params, loss, inputs, masks)
    result["grad_snr"] = snr
    result["grad_norm"] = grad_norm
    result["weight_norm"] = norm(list(params.values()))
    return result


def group_masks(group: SparseGroup) -> list[torch.Tensor] | None:
    """Copies of the group's masks (``None`` for a dense model, which carries none)."""
    masks = [getattr(layer.module, MASK_BUFFER, None) for layer in group.layers]
    return None if any(m is None for m in masks) else [m.detach().clone() for m in masks]


def record_measurement(logger: Logger, values: Mapping[str, Mapping[str, Any]], clock: int, num_timesteps: int) -> None:
    """One measurement as a ``progress.csv`` row (and TensorBoard scalars) of its own: :func:`metric_keys` and
    ``STEP_KEY``, dumped at ``num_timesteps``."""
    logger.record(STEP_KEY, clock)
    for group, metrics in values.items():
        for name, value in metrics.items():
            logger.record(f"{PREFIX}/{group}/{name}", value)
    logger.record("time/total_timesteps", num_timesteps, exclude="tensorboard")
    logger.dump(step=num_timesteps)


class RunDiagnostics:
    """One run's diagnostics: the measurement points on the topology clock, the mask history churn compares with,
    the latest values per group (``last``), and one warning if a measurement fails.

    The SB3 path's :class:`DiagnosticsCallback` and each member of the population engine
    (:mod:`agents.population.diagnostics`) drive one, so both measure at the same points with the same code.
    ``mask_groups``: the groups whose masks churn compares (the ones the run's controller updates); ``next_point``:
    the next measurement point saved with the checkpoint a run resumes from (``None``: a fresh start).
    """

    def __init__(
        self,
        settings: DiagnosticsSettings,
        seed: int,
        mask_groups: Sequence[SparseGroup],
        spec: AgentSpec | None = None,
        next_point: int | None = None,
    ) -> None:
        self.settings, self.seed, self.mask_groups, self.spec = settings, seed, list(mask_groups), spec
        self.last: dict[str, Any] = {}  # group -> metric -> value; "error" if a measurement failed
        self.error: str | None = None
        self.next = settings.freq if next_point is None else int(next_point)
        self._resumed_next = next_point
        self.measured_at = -1
        self._initial: dict[str, list[torch.Tensor] | None] = {}
        self._before: dict[str, list[torch.Tensor] | None] = {}  # the masks before the last topology update
        self._seen: dict[str, list[torch.Tensor] | None] = {}  # the masks at the last check
        self._updates = 0

    def state(self) -> dict[str, int]:
        """What a resumed run needs to measure where the uninterrupted one does (saved with a checkpoint)."""
        return {"next": self.next}

    def _snapshot(self) -> dict[str, list[torch.Tensor] | None]:
        return {g.name: group_masks(g) for g in self.mask_groups}

    def start(self, clock: int, num_updates: int) -> None:
        """At the training start: the initial masks, and the next measurement point (a resumed run's saved one)."""
        self._initial = self._snapshot()
        self._seen = self._initial
        self._before = dict.fromkeys(self._initial)
        self._updates = num_updates
        if self._resumed_next is None:
            self.next = (clock // self.settings.freq + 1) * self.settings.freq

    def track_masks(self, num_updates: int, sparse: bool) -> None:
        """After topology updates (``num_updates`` changed): the masks before the last one, for ``churn_last``."""
        if sparse and num_updates != self._updates:
            self._updates = num_updates
            self._before, self._seen = self._seen, self._snapshot()

    def churn(self, group: str) -> tuple[float, float]:
        """(churn against the initial masks, churn at the last topology update) of ``group`` now; 0 without masks."""
        current = group_masks(next(g for g in self.mask_groups if g.name == group))
        if current is None:
            return 0.0, 0.0
        return mask_churn(self._initial[group], current, self._before.get(group))

    def due(self, clock: int) -> bool:
        """Whether ``clock`` has reached the next measurement point."""
        return clock >= self.next

    def at_rollout_end(
        self, model: BaseAlgorithm, groups: Sequence[SparseGroup], clock: int, logger: Logger, num_timesteps: int
    ) -> None:
        """Measure ``model``'s ``groups`` and log a row of its own when ``clock`` has reached the next point."""
        if self.due(clock):
            self.next = (clock // self.settings.freq + 1) * self.settings.freq
            if self.measure(model, groups, clock):  # a row of its own: a later one would overwrite undumped values
                record_measurement(logger, self.last, self.measured_at, num_timesteps)

    def at_training_end(
        self, model: BaseAlgorithm, groups: Sequence[SparseGroup], clock: int, logger: Logger, num_timesteps: int
    ) -> None:
        """A point the last gradient steps reached gets its row; ``last`` is measured at the end (``summary.json``)."""
        self.at_rollout_end(model, groups, clock, logger, num_timesteps)
        if clock > self.measured_at:
            self.measure(model, groups, clock)

    def measure(self, model: BaseAlgorithm, groups: Sequence[SparseGroup], clock: int) -> bool:
        """:func:`measure_groups` into ``last``; False when the buffer has no batch yet. A failure is one warning
        and ends the diagnostics, not the training run."""
        if self.error is not None:
            return False
        try:
            values = measure_groups(model, groups, self.settings, self.seed, clock, self.churn, self.spec)
        except Exception as error:  # any failure of a diagnostic must leave training alone
            self.error = f"{type(error).__name__}: {error}".splitlines()[0]
            self.last = {"error": f"at gradient step {clock}: {self.error}"}
            print(f"warning: diagnostics stopped {self.last['error']}", file=sys.stderr)
            return False
        if values is None:
            return False
        self.last.update(values)
        self.measured_at = clock
        return True


def measure_groups(
    model: BaseAlgorithm,
    groups: Sequence[SparseGroup],
    settings: DiagnosticsSettings,
    seed: int,
    clock: int,
    churn: Callable[[str], tuple[float, float]],
    spec: AgentSpec | None = None,
) -> dict[str, dict[str, float]] | None:
    """Every group of ``model`` measured at topology clock ``clock`` on a batch of its buffer (``spec``'s
    ``diagnostic_losses``), drawn with the global generators seeded from (``seed``, ``clock``) and restored
    afterwards (the same batch after a resume); ``churn(group)`` adds its mask churn. ``None``: no batch yet."""
    rng = np.random.default_rng([seed, clock])
    with isolated_rng(int(rng.integers(2**31 - 1)), model.device):
        losses = group_losses(model, settings.batch_size, rng, spec)
        if losses is None:
            return None
        result = {}
        for group in groups:
            inputs, loss = losses[group.name]
            values = measure_group(group, inputs, loss, settings)
            values["churn_initial"], values["churn_last"] = churn(group.name)
            result[group.name] = values
    return result


class DiagnosticsCallback(BaseCallback):
    """Every ``settings.freq`` gradient steps of the topology clock, at a rollout's end (off-policy: before the next
    ``train``; PPO: the fresh rollout, returns computed), records :func:`metric_keys` through SB3's logger and dumps it
    (a row of ``progress.csv`` and TensorBoard scalars per measurement; values other callbacks recorded since the
    last dump go into that row). ``last`` holds the latest values per group, measured once more
    at the end of training (for ``summary.json``). Mask churn compares with the masks at the training start (the
    initial masks; after a resume, the resumed ones) and with the masks before the last topology update. ``state``:
    :meth:`state` saved with the checkpoint a run resumes from (its measurement points stay the uninterrupted run's).
    ``spec``: the model's agent (default: :func:`agents.spec.spec_of` the model). The work is :class:`RunDiagnostics`'s.
    """

    def __init__(
        self,
        controller: TopologyController,
        settings: DiagnosticsSettings,
        seed: int,
        state: dict | None = None,
        spec: AgentSpec | None = None,
    ) -> None:
        super().__init__()
        self.controller = controller
        self.run = RunDiagnostics(settings, seed, controller.groups, spec, None if state is None else int(state["next"]))

    @property
    def last(self) -> dict[str, Any]:
        return self.run.last

    @property
    def error(self) -> str | None:
        return self.run.error

    def state(self) -> dict[str, int]:
        """What a resumed run needs to measure where the uninterrupted one does (saved with a checkpoint)."""
        return self.run.state()

    def _on_training_start(self) -> None:
        self.run.start(self.controller.clock, self.controller.num_updates)

    def _on_rollout_end(self) -> None:
        self.run.track_masks(self.controller.num_updates, self.controller.sparse)
        self.run.at_rollout_end(self.model, self.controller.groups, self.controller.clock, self.logger, self.num_timesteps)

    def _on_training_end(self) -> None:
        self.run.track_masks(self.controller.num_updates, self.controller.sparse)
        self.run.at_training_end(
            self.model, self.controller.groups, self.controller.clock, self.logger, self.num_timesteps
        )  # the last gradient steps may reach a point no later rollout end sees

    def _on_step(self) -> bool:
        return True
