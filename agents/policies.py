"""SB3 policies with the paper's initialisation, per-group kernel weight decay and, for sparse methods, masks.

Every agent (dense runs included) uses these classes, with two extra constructor arguments that SB3 stores in
``policy_kwargs`` and passes back on ``load``:

- ``init``: the ``agent.init`` config node. ``mode: paper`` re-draws the Linear layers after SB3 builds them:
  ``hidden`` for hidden layers, ``output`` for output layers (:func:`agents.initialization.init_linear_`);
  SAC's ``mu`` and ``log_std`` heads are drawn as the paper's one 256×2A layer (Glorot with fan-out 2A) and split;
  TD3's actor ``mu`` (a Sequential ending in tanh) has hidden layers and one output layer.
  ``mode: sb3`` keeps SB3's own init. Conv layers (CNN feature extractors) keep torch's default init.
- ``kernel_decay``: per group (``actor``, ``critic``, ``q``) the Adam ``weight_decay`` of that group's kernels
  (:func:`agents.decay.kernel_decay`). Each optimizer is rebuilt with one parameter group per sparse group's
  kernels and one group without decay for everything else (biases, PPO's log-std).

Sparse classes also carry a boolean ``weight_mask`` buffer on every maskable layer (all ones until the
:class:`~sparse_rl.TopologyController` draws them; ``save``/``load`` round-trip them) and a **mask guard**: an
optimizer post-step hook that re-zeroes the weights outside the masks, so a loaded sparse model stays sparse
wherever it is trained (``SAC.load(...)`` then ``learn()``). A controller takes over from the guard
(:func:`agents.build.attach_controller` releases it: the controller masks gradients itself).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.dqn.policies import CnnPolicy as DQNCnnPolicy
from stable_baselines3.dqn.policies import DQNPolicy
from stable_baselines3.sac.policies import CnnPolicy as SACCnnPolicy
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import CnnPolicy as TD3CnnPolicy
from stable_baselines3.td3.policies import TD3Policy
from torch import nn
from torch.optim import Optimizer

from agents.initialization import INIT_MODES, init_linear_
from sparse_rl.masks import MaskedLayer, attach_mask, find_maskable_layers

# Which layers form each decay group, per optimizer: (optimizer owner attribute, group, module attribute, globs).
PPO_GROUP_GLOBS = {
    "actor": ("mlp_extractor.policy_net.*", "action_net", "features_extractor.*", "pi_features_extractor.*"),
    "critic": ("mlp_extractor.value_net.*", "value_net", "vf_features_extractor.*"),
}


def attach_masks(*modules: nn.Module) -> None:
    """All-ones ``weight_mask`` buffers on every Linear/Conv2d layer of ``modules``."""
    for module in modules:
        for layer in find_maskable_layers(module).values():
            attach_mask(layer)


def linears(module: nn.Module) -> list[nn.Linear]:
    """The Linear layers of ``module`` in ``named_modules`` order."""
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


@torch.no_grad()
def init_stacked_(layers: list[nn.Linear], node: dict[str, Any]) -> None:
    """Initialise ``layers`` as ONE Linear layer stacked along the outputs (fans of the stacked layer), then split."""
    weight = torch.cat([layer.weight for layer in layers], dim=0)
    biases = [layer.bias for layer in layers]
    bias = torch.cat(biases, dim=0) if all(b is not None for b in biases) else None
    init_linear_(weight, bias, None, **node)
    start = 0
    for layer in layers:
        rows = layer.weight.shape[0]
        layer.weight.copy_(weight[start : start + rows])
        if bias is not None:
            layer.bias.copy_(bias[start : start + rows])
        start += rows


def _group_kernels(module: nn.Module, globs: Iterable[str] = ("*",)) -> list[torch.Tensor]:
    return [layer.weight for layer in find_maskable_layers(module, tuple(globs)).values()]


def rebuild_with_decay(
    optimizer_class: type[Optimizer], old: Optimizer, groups: dict[str, list[torch.Tensor]], decay: dict[str, float], **kwargs
) -> Optimizer:
    """A new optimizer over ``old``'s parameters: one group per ``groups`` entry (its kernels, ``weight_decay``
    from ``decay``) and one group without decay for the rest. Empty groups are left out."""
    params = [p for group in old.param_groups for p in group["params"]]
    ids = {id(p) for p in params}
    claimed: set[int] = set()
    param_groups = []
    for name in sorted(groups):
        kernels = [p for p in groups[name] if id(p) in ids and id(p) not in claimed]
        claimed.update(id(p) for p in kernels)
        if kernels:
            param_groups.append({"params": kernels, "weight_decay": float(decay.get(name, 0.0)), "name": name})
    rest = [p for p in params if id(p) not in claimed]
    if rest:
        param_groups.append({"params": rest, "weight_decay": 0.0, "name": "no_decay"})
    return optimizer_class(param_groups, **kwargs)


class _Adapted:
    """Mixin over an SB3 policy: paper init, per-group kernel decay, and (``masked_modules``) masks with a guard."""

    masked_modules: tuple[str, ...] = ()

    def __init__(self, *args: Any, kernel_decay: dict[str, float] | None = None, init: dict | None = None, **kwargs: Any):
        # set before SB3's __init__, which calls _build
        object.__setattr__(self, "kernel_decay", dict(kernel_decay or {}))
        object.__setattr__(self, "init", dict(init) if init else {"mode": "sb3"})
        object.__setattr__(self, "_mask_guard", [])
        super().__init__(*args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data.update(kernel_decay=self.kernel_decay, init=self.init)
        return data

    # ---- per-algorithm layout (overridden below)
    def _init_layout(self) -> list[tuple[list[nn.Linear], str]]:
        """Layers (stacks of layers that are one layer in the paper) and their role, ``hidden`` or ``output``."""
        raise NotImplementedError(f"{type(self).__name__} has no paper initialisation")

    def _sync_targets(self) -> None:
        """Copy the online networks into their targets (after re-initialising them)."""

    def _decay_layout(self) -> list[tuple[Any, str, dict[str, list[torch.Tensor]]]]:
        """Per optimizer: (its owner, its attribute name, {group: kernels})."""
        raise NotImplementedError

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)  # type: ignore[misc]
        mode = self.init.get("mode", "sb3")
        if mode not in INIT_MODES:
            raise ValueError(f"unknown agent.init.mode '{mode}'; valid choices: {', '.join(INIT_MODES)}")
        if mode == "paper":
            for layers, role in self._init_layout():
                init_stacked_(layers, dict(self.init[role]))
            self._sync_targets()
        attach_masks(*(getattr(self, name) for name in self.masked_modules))
        if self.kernel_decay:
            for owner, attribute, groups in self._decay_layout():
                old = getattr(owner, attribute)
                new = rebuild_with_decay(
                    self.optimizer_class, old, groups, self.kernel_decay, lr=lr_schedule(1), **self.optimizer_kwargs
                )
                setattr(owner, attribute, new)
        if self.masked_modules:
            self._install_mask_guard()

    # ---- the mask guard
    def _install_mask_guard(self) -> None:
        layers = [
            MaskedLayer(name, layer)
            for module in self.masked_modules
            for name, layer in find_maskable_layers(getattr(self, module)).items()
        ]
        for owner, attribute, _ in self._decay_layout():
            optimizer: Optimizer = getattr(owner, attribute)
            params = {id(p) for group in optimizer.param_groups for p in group["params"]}
            guarded = [layer for layer in layers if id(layer.weight) in params]
            if guarded:
                self._mask_guard.append(optimizer.register_step_post_hook(_guard_hook(guarded)))

    def release_mask_guard(self) -> None:
        """Remove the mask guard (a :class:`~sparse_rl.TopologyController` now enforces the masks)."""
        for handle in self._mask_guard:
            handle.remove()
        self._mask_guard.clear()

    @property
    def mask_guarded(self) -> bool:
        return bool(self._mask_guard)


def _guard_hook(layers: list[MaskedLayer]):
    """Optimizer post-step hook: zero the weights outside their masks (one fused multiply)."""

    @torch.no_grad()
    def hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        torch._foreach_mul_([layer.weight for layer in layers], [layer.float_mask() for layer in layers])

    return hook


# ---------------------------------------------------------------------------------------------------- SAC
class _SACLayout(_Adapted):
    """SAC's layout; its twin-critic part and optimizers also serve TD3 (:class:`_TD3Layout`)."""

    def _init_layout(self) -> list[tuple[list[nn.Linear], str]]:
        return self._actor_layout() + self._critic_layout()

    def _actor_layout(self) -> list[tuple[list[nn.Linear], str]]:
        actor = self.actor
        layout = [([m], "hidden") for m in linears(actor.features_extractor) + linears(actor.latent_pi)]
        if not isinstance(actor.mu, nn.Linear):
            raise ValueError("agent.init.mode=paper supports SAC's plain Linear mu head (no gSDE)")
        layout.append(([actor.mu, actor.log_std], "output"))  # the paper's one 256x2A output layer
        return layout

    def _critic_layout(self) -> list[tuple[list[nn.Linear], str]]:
        critic = self.critic
        layout = []
        if not self.share_features_extractor:
            layout += [([m], "hidden") for m in linears(critic.features_extractor)]
        for q_net in critic.q_networks:
            layers = linears(q_net)
            layout += [([m], "hidden") for m in layers[:-1]] + [([layers[-1]], "output")]
        return layout

    def _sync_targets(self) -> None:
        self.critic_target.load_state_dict(self.critic.state_dict())

    def _decay_layout(self):
        return [
            (self.actor, "optimizer", {"actor": _group_kernels(self.actor)}),
            (self.critic, "optimizer", {"critic": _group_kernels(self.critic)}),
        ]


class DenseSACPolicy(_SACLayout, SACPolicy):
    pass


class DenseSACCnnPolicy(_SACLayout, SACCnnPolicy):
    pass


class SparseSACPolicy(_SACLayout, SACPolicy):
    masked_modules = ("actor", "critic", "critic_target")


class SparseSACCnnPolicy(_SACLayout, SACCnnPolicy):
    masked_modules = ("actor", "critic", "critic_target")


# ---------------------------------------------------------------------------------------------------- TD3
class _TD3Layout(_SACLayout):
    """TD3 (Fujimoto et al. 2018): a deterministic actor ``mu`` (hidden layers, one tanh output layer) with its own
    target, and SAC's twin critics; per-optimizer decay groups as SAC's."""

    def _actor_layout(self) -> list[tuple[list[nn.Linear], str]]:
        layers = linears(self.actor.mu)
        hidden = linears(self.actor.features_extractor) + layers[:-1]
        return [([m], "hidden") for m in hidden] + [([layers[-1]], "output")]

    def _sync_targets(self) -> None:
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())


class DenseTD3Policy(_TD3Layout, TD3Policy):
    pass


class DenseTD3CnnPolicy(_TD3Layout, TD3CnnPolicy):
    pass


class SparseTD3Policy(_TD3Layout, TD3Policy):
    masked_modules = ("actor", "actor_target", "critic", "critic_target")


class SparseTD3CnnPolicy(_TD3Layout, TD3CnnPolicy):
    masked_modules = ("actor", "actor_target", "critic", "critic_target")


# ---------------------------------------------------------------------------------------------------- DQN
class _DQNLayout(_Adapted):
    def _init_layout(self) -> list[tuple[list[nn.Linear], str]]:
        layers = linears(self.q_net.q_net)
        hidden = linears(self.q_net.features_extractor) + layers[:-1]
        return [([m], "hidden") for m in hidden] + [([layers[-1]], "output")]

    def _sync_targets(self) -> None:
        self.q_net_target.load_state_dict(self.q_net.state_dict())

    def _decay_layout(self):
        return [(self, "optimizer", {"q": _group_kernels(self.q_net)})]


class DenseDQNPolicy(_DQNLayout, DQNPolicy):
    pass


class DenseDQNCnnPolicy(_DQNLayout, DQNCnnPolicy):
    pass


class SparseDQNPolicy(_DQNLayout, DQNPolicy):
    masked_modules = ("q_net", "q_net_target")


class SparseDQNCnnPolicy(_DQNLayout, DQNCnnPolicy):
    masked_modules = ("q_net", "q_net_target")


# ---------------------------------------------------------------------------------------------------- PPO
class _PPOLayout(_Adapted):
    """PPO keeps SB3's orthogonal init (``ortho_init``, the paper's): ``agent.init.mode`` must be ``sb3``."""

    def _decay_layout(self):
        return [(self, "optimizer", {group: _group_kernels(self, globs) for group, globs in PPO_GROUP_GLOBS.items()})]


class DensePPOPolicy(_PPOLayout, ActorCriticPolicy):
    pass


class DensePPOCnnPolicy(_PPOLayout, ActorCriticCnnPolicy):
    pass


class SparsePPOPolicy(_PPOLayout, ActorCriticPolicy):
    masked_modules = ("mlp_extractor", "action_net", "value_net")


class SparsePPOCnnPolicy(_PPOLayout, ActorCriticCnnPolicy):
    masked_modules = ("features_extractor", "mlp_extractor", "action_net", "value_net")


__all__ = [
    "DenseDQNCnnPolicy", "DenseDQNPolicy", "DensePPOCnnPolicy", "DensePPOPolicy", "DenseSACCnnPolicy", "DenseSACPolicy",
    "DenseTD3CnnPolicy", "DenseTD3Policy", "SparseDQNCnnPolicy", "SparseDQNPolicy", "SparsePPOCnnPolicy", "SparsePPOPolicy",
    "SparseSACCnnPolicy", "SparseSACPolicy", "SparseTD3CnnPolicy", "SparseTD3Policy", "attach_masks", "init_stacked_",
    "linears", "rebuild_with_decay",
]  # fmt: skip
