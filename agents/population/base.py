"""The population agent protocol, and what batched agents share (optimizers, masked and decayed gradients, Polyak).

:class:`PopulationAgent` is everything the population trainer (:mod:`agents.population.trainer`), the builder
(:mod:`agents.population.compose`) and the SB3 export (:mod:`agents.population.export`) ask of an agent; they never
ask which agent it is. A new population agent is one module defining a subclass and registering it in
:data:`agents.population.compose.AGENT_CLASSES`:

==========================  ================================================================================
``name``, ``sb3_keys``      the config's ``agent.name``; the ``agent.sb3`` keys the agent implements
``from_config``             the batched agent of a validated config (K members' kernel decays)
``member_groups``           the core's :class:`~sparse_rl.SparseGroup` views of one member
``optimizers``              every optimizer (checkpoints, CUDA-graph capture)
``target_pairs``            (target, online) parameters: targets start as copies
``warmup_actions``          SB3's uniform warm-up actions, from each member's seeded action space
``clock_stride``            gradient steps per step of the topology clock (TD3: ``policy_delay``; else 1)
``policy_actions``          acting after warm-up (exploration included) on the device, from the members' streams
``env_actions``             replay-form actions → env units (host)
``eval_actions``            the deterministic policy in env units (evaluation)
``update_noise``            the random tensors one update consumes, from the members' streams
``update``                  one gradient step of every member
``after_env_step``          what the agent does after each env step (DQN: target sync)
``member_problem``          a non-finite member-level value outside the sparse groups (SAC: ``log_ent_coef``)
``rollout_log``             agent-specific entries of the rollout log (DQN: exploration rate)
``sb3_layer_pairs``         export: (batched layer, row) ⇄ SB3 linears of one member
``copy_sb3_extras``         export: member state outside the layers (SAC: the entropy coefficient)
``on_policy``               trained by the rollout loop (:mod:`agents.population.rollout`, PPO) instead of the
                            off-policy one (:mod:`agents.population.trainer`); such an agent implements
                            :class:`agents.population.rollout.OnPolicyAgent` instead of the acting/replay entries
``policy_keys``             the ``agent.sb3.policy_kwargs`` keys the agent implements
``lr_schedules``            the ``agent.lr_schedule`` values the agent's loop implements
==========================  ================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from sparse_rl.batched import BatchedLinear, add_kernel_decay_, mask_gradients_
from sparse_rl.controller import SparseGroup

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

    from agents.population.streams import MemberStreams

LayerPair = tuple[BatchedLinear, int, list[nn.Linear]]  # batched layer, row, SB3 linears whose output rows concatenate to it


class PopulationConfigError(ValueError):
    """A run config the population engine cannot train (one line, naming the key and the valid choices)."""


@dataclass(frozen=True)
class EnvClock:
    """Where the training loop stands, in SB3's terms (``num_timesteps``, ``_total_timesteps``, ``learning_starts``)."""

    num_timesteps: int
    total_timesteps: int
    learning_starts: int

    @property
    def warmup(self) -> bool:
        """Uniform random actions (SB3's ``_sample_action`` before ``learning_starts``)."""
        return self.num_timesteps < self.learning_starts

    @property
    def progress_remaining(self) -> float:
        """SB3's ``_current_progress_remaining``."""
        return 1.0 - self.num_timesteps / self.total_timesteps


@dataclass(frozen=True)
class DeviceClock:
    """The loop's clock as device tensors, so acting can run inside a captured CUDA graph.

    ``step``: the env step being acted for (0-based: the number of env steps already taken), int64 scalar;
    ``total``: ``total_timesteps`` as a float64 scalar (SB3's ``_total_timesteps``).
    """

    step: torch.Tensor
    total: torch.Tensor

    @property
    def progress_remaining(self) -> torch.Tensor:
        """SB3's ``_current_progress_remaining`` (float64)."""
        return 1.0 - self.step.to(torch.float64) / self.total


ACT_COPIES = 2  # observation copies per member when acting (PopulationAgent._obs_tensor)
# float32 lanes of the widest CPU vector torch's fused Adam uses (AVX-512: 16; AVX2's 8 divides it)
FUSED_LANES = 16


def adam(params: Sequence[torch.Tensor], lr: float, kwargs: Mapping[str, Any], capturable: bool) -> torch.optim.Adam:
    """Adam as the SB3 path builds it (``optimizer_kwargs``), minus weight decay (applied to kernels only, explicitly).

    With ``fused`` on the CPU, a parameter whose per-member row is not a whole number of vector lanes goes to a
    second param group stepped by single-tensor Adam (the same update; cheaper than ``foreach`` for a few small
    tensors): the fused CPU kernel computes the vector lanes and the tail of a tensor with different roundings, so
    such a member's last bits would depend on how many members the tensor holds (``FUSED_LANES``). These are small
    tensors (output biases, odd widths). On CUDA everything stays fused.
    """
    options = {k: v for k, v in kwargs.items() if k != "weight_decay"}
    if capturable:
        options["capturable"] = True
    params = list(params)
    if not options.get("fused") or params[0].device.type != "cpu":
        return torch.optim.Adam(params, lr=lr, **options)
    aligned = [p for p in params if p[0].numel() % FUSED_LANES == 0]
    tails = [p for p in params if p[0].numel() % FUSED_LANES != 0]
    groups = [{"params": aligned}] if aligned else []
    if tails:
        groups.append({"params": tails, "fused": False, "foreach": False})
    return torch.optim.Adam(groups, lr=lr, **options)


def hidden_sizes(net_arch: Any, key: str) -> list[int]:
    """Hidden widths of one network from SB3's net_arch (a shared list, or a dict such as ``{pi: [...], qf: [...]}``)."""
    return [int(x) for x in (net_arch[key] if isinstance(net_arch, Mapping) else net_arch)]


def sb3_linears(seq: nn.Sequential) -> list[nn.Linear]:
    """The Linear modules of an SB3 ``create_mlp`` Sequential, in order."""
    return [m for m in seq if isinstance(m, nn.Linear)]


class PopulationAgent(nn.Module):
    """A population's networks and optimizers (K members, batched); subclasses implement the protocol above."""

    name: ClassVar[str]
    sb3_keys: ClassVar[tuple[str, ...]]
    k: int
    obs_dim: int
    device: torch.device
    action_space: spaces.Space
    group_layers: dict[str, list[BatchedLinear]]  # group name -> its batched layers (all rows)
    decay: dict[str, torch.Tensor]  # group name -> per-row kernel decay coefficients [N]
    on_policy: ClassVar[bool] = False  # SB3's on-policy loop (agents.population.rollout), not the off-policy one
    policy_keys: ClassVar[tuple[str, ...]] = ("optimizer_kwargs",)  # agent.sb3.policy_kwargs keys implemented
    lr_schedules: ClassVar[tuple[str, ...]] = ("constant",)  # agent.lr_schedule values implemented
    # gradient steps per clock step (``agents.spec.AgentSpec.clock_stride``): the topology clock advances, and RigL
    # snapshots dense gradients, only at gradient steps n with n % clock_stride == 0 (``update(clock_step=True)``)
    clock_stride: int = 1

    # ----------------------------------------------------------------- building and members
    @classmethod
    def from_config(
        cls,
        cfg: Any,
        net_arch: Any,
        obs_dim: int,
        action_space: spaces.Space,
        decays: Sequence[Mapping[str, float]],
        device: torch.device,
        capturable: bool,
    ) -> PopulationAgent:
        """The batched agent of ``len(decays)`` members for the shared run config ``cfg``."""
        raise NotImplementedError

    def member_groups(self, member: int) -> list[SparseGroup]:
        """The core's groups of member ``member``: views into the batched tensors (see :mod:`sparse_rl.batched`)."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def target_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(target, online) parameter pairs."""
        raise NotImplementedError

    # ----------------------------------------------------------------- acting
    def warmup_actions(
        self, action_spaces: Sequence[spaces.Space], streams: MemberStreams, clock: DeviceClock
    ) -> tuple[np.ndarray, np.ndarray]:
        """(env actions, replay actions) ``[K, ·]`` of SB3's warm-up (``_sample_action`` before ``learning_starts``):
        one ``action_space.sample()`` per member from its own space, seeded as SB3 seeds the model's (plus any action
        noise SB3 adds in warm-up, from ``streams`` at ``clock.step``)."""
        raise NotImplementedError

    def policy_actions(self, obs: torch.Tensor, streams: MemberStreams, clock: DeviceClock) -> torch.Tensor:
        """Replay-form actions ``[K, replay_action_dim]`` for observations ``[K, obs]`` after warm-up, exploration
        included; random draws from ``streams`` at ``clock.step``. Device tensors only (graph-capturable)."""
        raise NotImplementedError

    def env_actions(self, replay_actions: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Replay-form actions ``[K, ·]`` (host) in env units; members not ``active`` get actions that keep their env
        sane (a failed member's may be NaN)."""
        raise NotImplementedError

    def eval_actions(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic actions in env units ``[K, ·]`` for observations ``[K, obs]`` (SB3's ``predict``).

        Observations ``[K, B, obs]`` (B evaluation episodes per member) give actions ``[K, B, ·]`` in one forward.
        """
        raise NotImplementedError

    @property
    def replay_action_dim(self) -> int:
        """Width of an action as the replay stores it."""
        raise NotImplementedError

    # ----------------------------------------------------------------- training
    def update_noise(self, streams: MemberStreams, step: torch.Tensor | int, batch_size: int) -> tuple[torch.Tensor, ...]:
        """The random tensors :meth:`update` consumes at gradient step ``step`` (0-based), from the members' own
        streams (none by default)."""
        return ()

    def update(
        self, *batch_and_noise: torch.Tensor, snapshot_dense: bool = False, clock_step: bool = True
    ) -> dict[str, torch.Tensor]:
        """One gradient step of every member on a batch ``[K, B, ·]`` and :meth:`update_noise`; metrics ``[K]``.

        ``clock_step``: whether this gradient step is a step of the topology clock (see :attr:`clock_stride`; TD3's
        delayed actor step); ``snapshot_dense`` is only ever set on one."""
        raise NotImplementedError

    def after_env_step(self, clock: EnvClock) -> None:
        """Called after every env step, before the transition is stored (SB3's ``_on_step``)."""

    def member_problem(self, member: int) -> str | None:
        """Why member ``member`` is broken outside its sparse groups (e.g. a non-finite scalar), else ``None``."""
        return None

    def rollout_log(self, clock: EnvClock) -> dict[str, float]:
        """Agent-specific entries of the rollout log (key → value), after the training losses."""
        return {}

    # ----------------------------------------------------------------- SB3 export
    def sb3_layer_pairs(self, member: int, model: BaseAlgorithm) -> Iterator[LayerPair]:
        """Every (batched layer, row) of ``member`` with the SB3 layer(s) it corresponds to."""
        raise NotImplementedError

    def copy_sb3_extras(self, member: int, model: BaseAlgorithm, to_sb3: bool) -> None:
        """Copy member state that is not a layer (e.g. SAC's entropy coefficient) to or from ``model``."""

    # ----------------------------------------------------------------- shared mechanics
    def sparse_layers(self) -> list[BatchedLinear]:
        return [layer for layers in self.group_layers.values() for layer in layers]

    def finish_gradients_(self, group: str, snapshot_dense: bool, max_grad_norm: float | None = None) -> None:
        """Mask (RigL: snapshot the dense gradient first), clip per member on masked gradients, add kernel L2."""
        layers = self.group_layers[group]
        mask_gradients_(layers, snapshot_dense)
        if max_grad_norm is not None and math.isfinite(max_grad_norm):
            clip_member_grad_norm_(self.group_parameters(group), self.k, max_grad_norm)
        add_kernel_decay_(layers, [self.decay[group]] * len(layers))

    def step_group_(
        self,
        group: str,
        optimizer: torch.optim.Optimizer,
        loss: torch.Tensor,
        snapshot_dense: bool,
        max_grad_norm: float | None = None,
    ) -> None:
        """One optimizer step of ``group`` on the members' losses ``[K]`` (summed: members' gradients are disjoint),
        with :meth:`finish_gradients_` between backward and step, as SB3's ``loss.backward(); optimizer.step()``."""
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        self.finish_gradients_(group, snapshot_dense, max_grad_norm)
        optimizer.step()

    def group_parameters(self, group: str) -> list[torch.Tensor]:
        """Weights and biases of a group's layers (leading dimension: rows)."""
        return [p for layer in self.group_layers[group] for p in (layer.weight, layer.bias)]

    @torch.no_grad()
    def refresh_masks(self) -> None:
        """After topology changes: float gradient multipliers follow the boolean masks (in place)."""
        for layer in self.sparse_layers():
            layer.refresh_grad_multiplier()
        for layer in self.target_layers():
            layer.refresh_grad_multiplier()

    def target_layers(self) -> list[BatchedLinear]:
        return []

    def _obs_tensor(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Observations ``[K, obs]`` as a batch of one per member ``[K, 1, obs]`` (``[K, B, obs]`` as is), on the
        device; a batch of one is handed to the networks as ``ACT_COPIES`` copies: take the rows you passed.

        Copies, not one row: torch's CPU ``bmm`` of one matrix-vector product per member takes another kernel when
        the population has one member (``mm``), so a member acting alone would round differently (issue 20).
        """
        tensor = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        tensor = tensor.unsqueeze(1) if tensor.dim() == 2 else tensor
        return tensor.expand(-1, ACT_COPIES, -1) if tensor.shape[1] == 1 else tensor


@torch.no_grad()
def clip_member_grad_norm_(params: Sequence[torch.Tensor], k: int, max_norm: float) -> torch.Tensor:
    """Per-member ``clip_grad_norm_`` (torch's formula) over parameters whose leading dim is ``k × copies``."""
    grads = [p.grad for p in params if p.grad is not None]
    squares = grads[0].reshape(k, -1).pow(2).sum(dim=1)
    for g in grads[1:]:  # elementwise adds: the same order at any K (a stacked sum over tensors reduces K-dependently)
        squares = squares + g.reshape(k, -1).pow(2).sum(dim=1)
    norms = squares.sqrt()
    coefficients = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
    for g in grads:
        per_row = coefficients.view(k, *([1] * (g.dim() - 1)))
        g.mul_(per_row if g.shape[0] == k else per_row.repeat_interleave(g.shape[0] // k, dim=0))
    return norms


@torch.no_grad()
def polyak_(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], tau: float) -> None:
    """SB3's ``polyak_update`` on batched tensors: ``target ← (1 − τ)·target + τ·source`` (same float ops)."""
    torch._foreach_mul_(list(targets), 1 - tau)
    torch._foreach_add_(list(targets), list(sources), alpha=tau)
