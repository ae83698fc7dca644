"""The shared part of the SB3 policies: the paper's initialisation, per-group kernel weight decay and masks.

Each agent's module (``agents/sac.py``, ...) defines its policy classes over :class:`AdaptedPolicy` (and, for the
twin-critic agents, :class:`TwinCriticLayout`) by naming its layers; every agent (dense runs included) uses them,
with two extra constructor arguments that SB3 stores in ``policy_kwargs`` and passes back on ``load``:

- ``init``: the ``agent.init`` config node. ``mode: paper`` re-draws the Linear layers after SB3 builds them:
  ``hidden`` for hidden layers, ``output`` for output layers (:func:`agents.initialization.init_linear_`), as
  the agent's ``_init_layout`` lists them (stacks of layers that are one layer in the paper are drawn as one).
  ``mode: sb3`` keeps SB3's own init. Conv layers (CNN feature extractors) keep torch's default init.
- ``kernel_decay``: per group (``actor``, ``critic``, ``q``) the Adam ``weight_decay`` of that group's kernels
  (:func:`agents.decay.kernel_decay`). Each optimizer is rebuilt with one parameter group per sparse group's
  kernels and one group without decay for everything else (biases, PPO's log-std).
- ``ift``: ``{"kind": parallel | factorized | doped, "sparsity": {group: s}}`` or ``None`` (from ``sparsity.ift``:
  :func:`agents.build.ift_kwarg`): every hidden Linear layer of the networks SB3's ``make_actor``/``make_critic``/
  ``make_q_net`` build (targets included, so they match) is replaced by its Sparse-IFT transformation
  (:mod:`sparse_rl.ift`) before the optimizers are built; ``load`` rebuilds the same layers from the stored argument.

Sparse classes also carry a boolean ``weight_mask`` buffer on every maskable layer (all ones until the
:class:`~sparse_rl.TopologyController` draws them; ``save``/``load`` round-trip them) and a **mask guard**: an
optimizer post-step hook that re-zeroes the weights outside the masks, so a loaded sparse model stays sparse
wherever it is trained (``SAC.load(...)`` then ``learn()``). A controller takes over from the guard
(:func:`agents.build.attach_controller` releases it: the controller masks gradients itself).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import torch
from stable_baselines3.common.type_aliases import Schedule
from torch import nn
from torch.optim import Optimizer

from agents.initialization import INIT_MODES, init_linear_
from sparse_rl.ift import transform_hidden_layers_
from sparse_rl.masks import MaskedLayer, attach_mask, find_maskable_layers

# SB3's network builders and the sparse group each one's networks belong to (Sparse-IFT construction)
IFT_BUILDERS = {"make_actor": "actor", "make_critic": "critic", "make_q_net": "q"}


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


def group_kernels(module: nn.Module, globs: Iterable[str] = ("*",)) -> list[torch.Tensor]:
    """The kernels of ``module``'s maskable layers matching ``globs`` (one decay group)."""
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


class AdaptedPolicy:
    """Mixin over an SB3 policy: paper init, per-group kernel decay, and (``masked_modules``) masks with a guard."""

    masked_modules: tuple[str, ...] = ()

    def __init__(
        self,
        *args: Any,
        kernel_decay: dict[str, float] | None = None,
        init: dict | None = None,
        ift: dict | None = None,
        **kwargs: Any,
    ):
        # set before SB3's __init__, which calls _build
        object.__setattr__(self, "kernel_decay", dict(kernel_decay or {}))
        object.__setattr__(self, "init", dict(init) if init else {"mode": "sb3"})
        object.__setattr__(self, "ift", dict(ift) if ift else None)
        object.__setattr__(self, "_mask_guard", [])
        super().__init__(*args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data.update(kernel_decay=self.kernel_decay, init=self.init)
        if self.ift is not None:
            data.update(ift=self.ift)
        return data

    # ---- Sparse-IFT: SB3's builders, then the hidden layers transformed (before SB3 builds the optimizers)
    def _transformed(self, network: nn.Module, builder: str) -> nn.Module:
        if self.ift is None:
            return network
        group = IFT_BUILDERS[builder]
        if not self.masked_modules:
            raise ValueError("sparsity.ift transforms a sparse network's layers; the method is dense")
        sparsity = (self.ift.get("sparsity") or {}).get(group)
        if sparsity is None:
            raise ValueError(f"the policy's ift argument needs sparsity.{group}: {{kind: ..., sparsity: {{{group}: s}}}}")
        # the hidden layers SB3 built each MLP with: the network's net_arch (Actor, QNetwork) or, for critics, which do
        # not keep it, the policy's critic_kwargs (an output layer may be followed by a squashing Tanh: TD3's actor)
        arch = getattr(network, "net_arch", None)
        depth = len(arch if arch is not None else self.critic_kwargs["net_arch"])  # type: ignore[attr-defined]
        transform_hidden_layers_(network, str(self.ift.get("kind")), float(sparsity), depth)
        return network

    def make_actor(self, *args: Any, **kwargs: Any) -> nn.Module:
        return self._transformed(super().make_actor(*args, **kwargs), "make_actor")  # type: ignore[misc]

    def make_critic(self, *args: Any, **kwargs: Any) -> nn.Module:
        return self._transformed(super().make_critic(*args, **kwargs), "make_critic")  # type: ignore[misc]

    def make_q_net(self, *args: Any, **kwargs: Any) -> nn.Module:
        return self._transformed(super().make_q_net(*args, **kwargs), "make_q_net")  # type: ignore[misc]

    # ---- per-algorithm layout (overridden by each agent's policy classes)
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


# ---------------------------------------------------------------------------------------------- twin critics
class TwinCriticLayout(AdaptedPolicy):
    """SB3's actor and twin-critic policies (SAC, TD3: ``actor``, ``critic``, each with its optimizer): the critic
    layout and the per-optimizer decay groups; the agent names its actor's layers (``_actor_layout``)."""

    def _init_layout(self) -> list[tuple[list[nn.Linear], str]]:
        return self._actor_layout() + self._critic_layout()

    def _actor_layout(self) -> list[tuple[list[nn.Linear], str]]:
        raise NotImplementedError

    def _critic_layout(self) -> list[tuple[list[nn.Linear], str]]:
        critic = self.critic
        layout = []
        if not self.share_features_extractor:
            layout += [([m], "hidden") for m in linears(critic.features_extractor)]
        for q_net in critic.q_networks:
            layers = linears(q_net)
            layout += [([m], "hidden") for m in layers[:-1]] + [([layers[-1]], "output")]
        return layout

    def _decay_layout(self):
        return [
            (self.actor, "optimizer", {"actor": group_kernels(self.actor)}),
            (self.critic, "optimizer", {"critic": group_kernels(self.critic)}),
        ]


def hidden_then_output(hidden: list[nn.Linear], layers: list[nn.Linear]) -> list[tuple[list[nn.Linear], str]]:
    """``hidden`` and all but the last of ``layers`` as hidden layers, the last of ``layers`` as the output layer."""
    return [([m], "hidden") for m in hidden + layers[:-1]] + [([layers[-1]], "output")]


# The policy classes lived here before each agent got its module; saved model.zip files pickle them by this path
# (``SAC.load``), so the old names still resolve (lazily: the agent modules import this one).
_MOVED = {
    f"{kind}{algo}{cnn}Policy": f"agents.{algo.lower()}"
    for kind in ("Dense", "Sparse")
    for algo in ("SAC", "TD3", "DQN", "PPO")
    for cnn in ("", "Cnn")
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'agents.policies' has no attribute '{name}'")


__all__ = [
    "AdaptedPolicy", "TwinCriticLayout", "attach_masks", "group_kernels", "hidden_then_output", "init_stacked_",
    "linears", "rebuild_with_decay",
]  # fmt: skip
