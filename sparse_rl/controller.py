"""The topology controller: the one stateful object of sparse training, algorithm-agnostic.

It owns named groups of layers (each with its optimizer and, optionally, a target network that mirrors
it), the updater (method), the schedule and its own seeded ``torch.Generator``. A trainer calls
:meth:`TopologyController.init_masks` once after building the optimizers, then
:meth:`TopologyController.step` with its step counter; nothing else is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from sparse_rl.accounting import forward_flops, training_flops_per_sample
from sparse_rl.config import SparsityConfig
from sparse_rl.distributions import allocate_joint
from sparse_rl.ift import fixed_active, iso_flop_blocks
from sparse_rl.masks import LinearView, MaskedLayer, attach_mask, find_maskable_layers
from sparse_rl.sparse_init import unit_scaled_init_stacked_
from sparse_rl.updaters import UPDATERS, Updater


class SparsityInvariantError(RuntimeError):
    """A sparse-training invariant (zero inactive weights, exact counts, target masks) does not hold."""


class NonFiniteError(RuntimeError):
    """A weight of a group became NaN or infinite."""


@dataclass
class SparseGroup:
    """A network whose maskable layers share one sparsity budget (e.g. ``actor``, ``critic``).

    ``target`` is a structurally identical network (same layer names) that must carry the same masks.
    ``joint`` declares layers that act as one: each entry names layers (e.g. ``("mu", "log_std")``, SAC's two
    actor heads, which are the paper's one 256×2A output layer) that share all but their output dimension; the
    distribution allocates them as one stacked layer and splits its count over them in proportion to their sizes
    (:func:`~sparse_rl.distributions.allocate_joint`), and sparsity-aware init counts fans over the stacked layer.
    """

    name: str
    module: nn.Module
    optimizer: Optimizer | None = None
    target: nn.Module | None = None
    include: Sequence[str] = ("*",)
    exclude: Sequence[str] = ()
    joint: Sequence[Sequence[str]] = ()
    layers: list[MaskedLayer] = field(default_factory=list, init=False)
    target_layers: list[nn.Module] = field(default_factory=list, init=False)
    joint_indices: list[list[int]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        found = find_maskable_layers(self.module, self.include, self.exclude)
        if not found:
            raise ValueError(f"group '{self.name}' has no Linear/Conv2d layer matching include={list(self.include)}")
        self.layers = [MaskedLayer(name, module) for name, module in found.items()]
        if self.target is not None:
            target_modules = dict(self.target.named_modules())
            missing = [layer.name for layer in self.layers if layer.name not in target_modules]
            if missing:
                raise ValueError(f"target of group '{self.name}' lacks layers {missing}")
            self.target_layers = [target_modules[layer.name] for layer in self.layers]
        index = {layer.name: i for i, layer in enumerate(self.layers)}
        for members in self.joint:
            unknown = [name for name in members if name not in index]
            if unknown:
                raise ValueError(f"joint layers {unknown} of group '{self.name}' are not among its layers {list(index)}")
            self.joint_indices.append([index[name] for name in members])


@torch.no_grad()
def _mirror_into_target(target: nn.Module, mask: torch.Tensor, also_zero: torch.Tensor | None = None) -> None:
    """Give ``target`` the online ``mask``: copy it and zero the target's weights outside it (and at ``also_zero``)."""
    target.weight_mask.copy_(mask)
    if also_zero is not None:
        target.weight.masked_fill_(also_zero, 0.0)
    target.weight.mul_(mask)


def _reset_optimizer_state(optimizer: Optimizer | None, layer: MaskedLayer, positions: torch.Tensor) -> None:
    """Zero every per-element optimizer state tensor of the layer's weight (Adam m and v, momentum, ...) at ``positions``."""
    for value in layer.optimizer_state(optimizer):
        value.masked_fill_(positions, 0)


class TopologyController:
    """Initialises, updates and accounts for the masks of all groups.

    Mask mechanics follow google-research/rigl: new connections start at zero with zeroed optimizer slots
    (``generic_mask_update`` and ``reset_momentum`` in ``rigl/rigl_tf2/mask_updaters.py``), and target networks
    carry the online mask (``_build_sync_op`` in ``rigl/rl/dqn_agents.py``).
    """

    def __init__(
        self, groups: Sequence[SparseGroup], config: SparsityConfig, total_steps: int, seed: int, tick_steps: int = 1
    ) -> None:
        config.validate()
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if tick_steps <= 0:
            raise ValueError(f"tick_steps must be positive, got {tick_steps}")
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            raise ValueError(f"group names must be unique, got {names}")
        self.groups = list(groups)
        self.config = config
        self.total_steps = total_steps
        self.updater: Updater = UPDATERS.get(config.method)(config, total_steps)
        if self.updater.recipe is not None and any(g.optimizer is None for g in groups):
            missing = next(g.name for g in groups if g.optimizer is None)
            raise ValueError(
                f"the N:M recipes (sparsity.mask_decay/structure_decay/sr_ste) step a dense latent weight in each "
                f"group's optimizer; group '{missing}' has none (the population engine does not run them: use the SB3 path)"
            )
        self.decay_factor = 0.0  # β of the recipe's pruned positions, applied after each optimizer step
        self.generator = torch.Generator().manual_seed(seed)
        self.num_updates = 0
        self.clock = 0  # the last step passed to step()/tick()
        self.tick_steps = tick_steps  # steps one tick() advances (TD3: policy_delay gradient steps per actor step)
        self.last_update_step: int | None = None
        self.last_update: dict[str, float] = {}
        self._hooks: list[RemovableHandle] = []
        self._initialised = False
        self._latent_active = False

    @property
    def sparse(self) -> bool:
        return self.updater.sparse

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_masks(self, existing: bool = False) -> None:
        """Allocate per-layer counts, draw masks, zero inactive weights, mirror targets, install optimizer hooks.

        With ``existing=True`` the masks already in the layers' ``weight_mask`` buffers (e.g. a loaded model) are
        adopted instead of drawn; for methods with a fixed count they must match the allocation.
        """
        if self._initialised:
            raise RuntimeError("init_masks() was already called")
        self._initialised = True
        for group in self.groups:
            self._measure_output_positions(group)
            if self.sparse:
                self._init_group_masks(group, existing)
        if self.sparse:
            self._install_grad_hooks()

    def _init_group_masks(self, group: SparseGroup, existing: bool) -> None:
        """Allocate the group's counts, draw (or adopt) its masks, sparsity-aware init, mirror its targets."""
        counts = self._allocate(group)
        # sparsity-aware init of a joint set waits for its last layer's mask (fans count the stacked layer)
        init_with = {members[-1]: members for members in group.joint_indices}
        deferred = {i for members in group.joint_indices for i in members[:-1]}
        for index, (layer, count) in enumerate(zip(group.layers, counts)):
            layer.allocated = count
            if self.updater.needs_gradients:
                layer.dense_grad = layer.new_dense_grad()
            if existing:
                self._adopt_mask(group, layer)
                continue
            mask = self._initial_mask(layer, count)
            attach_mask(layer.module)
            layer.set_mask(mask.view(layer.shape).to(layer.weight.device))
            if self.config.sparse_init and not self.updater.starts_dense and index not in deferred:
                unit_scaled_init_stacked_([group.layers[i] for i in init_with.get(index, [index])], self.generator)
        for layer, target in zip(group.layers, group.target_layers):
            attach_mask(target)
            if not existing:
                target.weight.copy_(layer.weight)  # targets start equal to the online network, as in SB3
            if existing and self.updater.recipe is not None:  # a recipe's target may hold decayed weights off the mask
                target.weight_mask.copy_(layer.mask)
                continue
            _mirror_into_target(target, layer.mask)

    def _install_grad_hooks(self) -> None:
        """One hook per optimizer, over the layers of every group it steps (PPO: actor and critic)."""
        by_optimizer: dict[int, tuple[Optimizer, list[MaskedLayer]]] = {}
        for group in self.groups:
            if group.optimizer is not None:
                by_optimizer.setdefault(id(group.optimizer), (group.optimizer, []))[1].extend(group.layers)
        for optimizer, layers in by_optimizer.values():
            self._hooks.append(optimizer.register_step_pre_hook(self._make_grad_hook(layers)))
            if self.updater.recipe is not None:
                self._hooks.append(optimizer.register_step_post_hook(self._make_latent_post_hook(layers)))

    def _allocate(self, group: SparseGroup) -> list[int]:
        """Final active count per layer: the distribution's, or fixed by the shape under an N:M structure; a
        Sparse-IFT sub-layer keeps its own fixed count (:data:`sparse_rl.ift.FIXED_ACTIVE`: iso-FLOP per layer)."""
        nm = self.config.nm
        shapes = [layer.shape for layer in group.layers]
        if nm is not None:  # N:M fixes every layer's count; the distribution has nothing to allocate
            if any(fixed_active(layer.module) is not None for layer in group.layers):
                raise ValueError(f"group '{group.name}' has Sparse-IFT layers (fixed counts): no sparsity.structure")
            return [nm.allocation(shape) for shape in shapes]
        counts = allocate_joint(self.config.distribution, shapes, self.config.sparsity_of(group.name), group.joint_indices)
        return [
            count if fixed_active(layer.module) is None else fixed_active(layer.module)
            for layer, count in zip(group.layers, counts)
        ]

    def _initial_mask(self, layer: MaskedLayer, count: int) -> torch.Tensor:
        """All-ones (pruning), a random N:M mask, or ``count`` uniformly random positions; on the CPU."""
        if self.updater.starts_dense:
            return torch.ones(layer.shape, dtype=torch.bool)
        if self.config.nm is not None:
            return self.config.nm.random_mask(layer.shape, self.generator)
        mask = torch.zeros(layer.total, dtype=torch.bool)
        mask[torch.randperm(layer.total, generator=self.generator)[:count]] = True
        return mask.view(layer.shape)

    def _adopt_mask(self, group: SparseGroup, layer: MaskedLayer) -> None:
        if not hasattr(layer.module, "weight_mask"):
            raise ValueError(f"layer '{group.name}/{layer.name}' has no weight_mask to adopt (not a sparse model?)")
        if not self.updater.starts_dense and layer.active != layer.allocated:
            raise ValueError(
                f"layer '{group.name}/{layer.name}' has {layer.active} active weights but the configured sparsity "
                f"allocates {layer.allocated}: the model was trained with another sparsity or distribution"
            )
        if not self.updater.starts_dense and (problem := self._structure_problem(layer, final=True)) is not None:
            raise ValueError(f"layer '{group.name}/{layer.name}' is not {self.config.nm}-sparse: {problem}")
        if self.updater.recipe is not None:  # mid-window the layer holds β·latent off the mask and Adam steps the
            return  # latent: load_state_dict restores both; nothing is zeroed here
        layer.set_mask(layer.mask.clone())
        # a model trained without this controller (e.g. SB3 load + learn) may carry optimizer state outside its mask
        _reset_optimizer_state(group.optimizer, layer, ~layer.mask)

    def _measure_output_positions(self, group: SparseGroup) -> None:
        """Record each layer's output positions per sample at its first forward pass (1 for Linear layers)."""
        for layer in group.layers:
            if isinstance(layer.module, (nn.Linear, LinearView)):
                layer.output_positions = 1
            else:
                self._record_positions_once(layer)

    @staticmethod
    def _record_positions_once(layer: MaskedLayer) -> None:
        handle: RemovableHandle | None = None

        def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            layer.output_positions = int(output[0, 0].numel())
            handle.remove()

        handle = layer.module.register_forward_hook(record)

    def _make_grad_hook(self, layers: list[MaskedLayer]):
        """Optimizer pre-step hook: snapshot the dense gradient (RigL), then zero it at inactive positions.

        One fused ``torch._foreach_*`` call over all the optimizer's masked layers instead of a Python loop of
        kernels; the multiplier is a float copy of each boolean mask, refreshed whenever the mask tensor changes
        (its ``_version``). RigL's dense gradient is copied only when the next step of the clock is an update
        point. The per-layer work is kept to attribute reads: this runs on every gradient step.
        """
        entries = [(layer.module.weight, layer) for layer in layers]

        def hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
            if self.latent_active:
                self._latent_pre_step(layers)
                return
            grads, multipliers, layers_with_grad = [], [], []
            for weight, layer in entries:
                grad = weight.grad
                if grad is not None:
                    grads.append(grad)
                    multipliers.append(layer.float_mask())
                    layers_with_grad.append(layer)
            if not grads:
                return
            if self.wants_dense_grad(self.clock + self.tick_steps):
                torch._foreach_copy_([layer.dense_grad for layer in layers_with_grad], grads)
            torch._foreach_mul_(grads, multipliers)

        return hook

    @property
    def latent_active(self) -> bool:
        """Whether an N:M recipe's window is running (the optimizers step dense latent weights)."""
        return self._latent_active

    @torch.no_grad()
    def _latent_pre_step(self, layers: list[MaskedLayer]) -> None:
        """Recipe, before an optimizer step: put the dense latent in the layer so the optimizer steps it, with the
        straight-through gradient (unmasked; Zhou et al. 2021 eq. 6) plus SR-STE's ``λ_W · (¬mask ⊙ latent)``.

        The latent and the effective weight swap storages (no copy): until the post-step hook the layer's
        ``latent`` buffer is scratch space."""
        stepped = [layer for layer in layers if layer.module.weight.grad is not None]
        if not stepped:
            return
        for layer in stepped:
            weight = layer.module.weight
            weight.data, layer.latent = layer.latent, weight.data
        lam = self.updater.recipe.sr_ste_lambda
        if lam > 0:
            weights = [layer.module.weight for layer in stepped]
            grads = [weight.grad for weight in weights]
            torch._foreach_addcmul_(grads, weights, [layer.inverse_float_mask() for layer in stepped], value=lam)

    def _make_latent_post_hook(self, layers: list[MaskedLayer]):
        """Recipe, after an optimizer step: the stepped weight is the new latent; the effective weight
        ``latent ⊙ where(mask, 1, β)`` (β: :attr:`decay_factor`) is written into the scratch buffer and the two
        swap back, so the layer holds the effective weight and ``latent`` the latent (one multiply, no copy)."""

        @torch.no_grad()
        def hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
            if not self.latent_active:
                return
            factor = self.decay_factor
            for layer in layers:
                weight = layer.module.weight
                if weight.grad is None:
                    continue
                torch.mul(weight.data, layer.soft_mask(factor), out=layer.latent)
                weight.data, layer.latent = layer.latent, weight.data
                layer.applied_factor = factor

        return hook

    def close(self) -> None:
        """Remove the optimizer hooks (e.g. before handing the networks to another controller)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    # ------------------------------------------------------------------ updates
    def step(self, t: int) -> bool:
        """Update the topology if an update point was reached at step ``t``; True if any mask changed."""
        if not self._initialised:
            raise RuntimeError("call init_masks() before step()")
        self.clock = t
        if self.latent_active:
            self.decay_factor = self.updater.decay_factor(t)
        if not self.update_due(t):
            return False
        return self._update(self.updater.window.latest_point(t))

    def update_due(self, t: int) -> bool:
        """Whether step ``t`` reaches an update point not yet applied."""
        if not (self.sparse and self.updater.updates):
            return False
        point = self.updater.window.latest_point(t)
        return point is not None and (self.last_update_step is None or point > self.last_update_step)

    def wants_dense_grad(self, step: int) -> bool:
        """Whether the optimizer step about to run should snapshot the dense gradient (RigL's grow criterion).

        ``step`` is the clock value this controller will be given for that optimizer step, i.e. the ``t`` of the
        :meth:`step` call that follows it (``self.clock + self.tick_steps`` for :meth:`tick`; a trainer that counts
        gradient steps from 1 and calls ``step(clock)`` after incrementing passes ``clock + 1`` before the optimizer
        step). True iff the updater grows by gradient and ``step`` reaches an update point not yet applied.
        """
        return self.updater.needs_gradients and self.update_due(step)

    def tick(self) -> bool:
        """Advance the controller's own clock by ``tick_steps`` and :meth:`step` there (for optimizer-step clocks).

        An optimizer stepped once every ``tick_steps`` steps of the schedule's clock (TD3's delayed actor) drives it
        with ``tick_steps`` > 1: an update point between two ticks is applied at the next tick.
        """
        return self.step(self.clock + self.tick_steps)

    def advance_to(self, t: int) -> bool:
        """Move the clock forward to ``t`` without a gradient step (steps a trainer skipped, e.g. PPO's early stop).

        A due update that needs no gradient (pruning, SET) is applied now; RigL's waits for the next gradient step,
        whose dense gradient it needs. True if any mask changed.
        """
        if t <= self.clock:
            return False
        if self.updater.needs_gradients:
            self.clock = t
            return False
        return self.step(t)

    def final_allocation_problem(self) -> str | None:
        """Why the groups do not hold their final allocation (the schedule did not reach its end), else ``None``."""
        if not self.sparse:
            return None
        if self.updater.starts_dense and self.updater.updates:
            end = self.updater.window.end
            if self.last_update_step is None or self.last_update_step < end:
                return (
                    f"the schedule ended at gradient step {self.clock} before its last update point {end} "
                    f"(sparsity {self.stats()['sparsity']:.4f} instead of the allocated one)"
                )
        for group in self.groups:
            for layer in group.layers:
                if layer.active != layer.allocated:
                    where = f"group '{group.name}' layer '{layer.name}'"
                    return f"{where}: {layer.active} active weights, {layer.allocated} allocated"
        return None

    @torch.no_grad()
    def _update(self, t: int) -> bool:
        self.last_update_step = t
        if self.updater.recipe is not None:
            self._recipe_transition(t)
        changed_total, active_total = 0, 0
        for group in self.groups:
            for i, layer in enumerate(group.layers):
                old = layer.mask.clone()
                new = self.updater.next_mask(layer, t, self.generator)
                active_total += int(old.sum().item())
                if new is None:
                    continue
                changed = old ^ new
                changed_total += int((new & ~old).sum().item())
                self._apply(group, i, new, changed)
        if self.updater.recipe is not None:
            self._finish_recipe()
        self.num_updates += 1
        self.last_update = {
            "step": float(t),
            "schedule_value": self.updater.schedule_value(t),
            "mask_change": changed_total / max(active_total, 1),
        }
        if self.updater.recipe is not None:
            self.last_update["decay_factor"] = self.decay_factor
        return changed_total > 0

    def _recipe_transition(self, t: int) -> None:
        """Recipe window: its first update point copies every weight into a dense latent; its end drops them (the
        fine-tune is the hard N:M network, trained with masked gradients). β follows the updater's decay."""
        window = self.updater.window
        if t < window.end and not self._latent_active:
            for group in self.groups:
                for layer in group.layers:
                    layer.latent = layer.weight.detach().clone()
            self._latent_active = True
        self.decay_factor = self.updater.decay_factor(t)

    def _apply(self, group: SparseGroup, index: int, new: torch.Tensor, changed: torch.Tensor) -> None:
        """New connections start at 0 with zero optimizer state; dropped ones are zeroed; targets mirror it.

        While a recipe runs, the layer holds its latent times the new soft mask and the optimizer state is reset at
        the changed positions (as for regrowth); at the window's end the hard mask is installed, the latent dropped
        and the state reset wherever the final mask is off.
        """
        layer = group.layers[index]
        if layer.latent is not None:
            self._apply_recipe(group, index, new, changed)
            return
        layer.weight.masked_fill_(changed, 0.0)
        layer.set_mask(new)
        _reset_optimizer_state(group.optimizer, layer, changed)
        if group.target_layers:
            _mirror_into_target(group.target_layers[index], new, also_zero=changed)  # new connections start at 0

    def _apply_recipe(self, group: SparseGroup, index: int, new: torch.Tensor, changed: torch.Tensor) -> None:
        layer = group.layers[index]
        layer.mask.copy_(new)
        final = self.last_update_step >= self.updater.window.end
        layer.apply_latent(0.0 if final else self.decay_factor)
        _reset_optimizer_state(group.optimizer, layer, (changed | ~new) if final else changed)
        if group.target_layers:
            target = group.target_layers[index]
            if final or self.decay_factor == 0.0:
                _mirror_into_target(target, new, also_zero=changed)
            else:  # pruned positions still hold β·w: the target keeps its lagged copy of them
                target.weight_mask.copy_(new)

    def _finish_recipe(self) -> None:
        """After the window's end point: every layer holds its hard final mask; the latents are gone."""
        if not self._latent_active or self.last_update_step < self.updater.window.end:
            return
        for group in self.groups:
            for i, layer in enumerate(group.layers):
                if layer.latent is not None:  # the end point left this mask unchanged: install it hard now
                    self._apply_recipe(group, i, layer.mask.clone(), torch.zeros_like(layer.mask))
                layer.latent = None
        self._latent_active = False
        self.decay_factor = 0.0

    # ------------------------------------------------------------------ checks and accounting
    def check_invariants(self) -> None:
        """Raise :class:`SparsityInvariantError` if any sparse-training invariant is violated."""
        if not self.sparse:
            return
        final = (not self.updater.starts_dense) or (
            self.last_update_step is not None and self.last_update_step >= self.updater.window.end
        )
        for group in self.groups:
            for i, layer in enumerate(group.layers):
                where = f"group '{group.name}' layer '{layer.name}'"
                if layer.latent is not None:
                    self._check_recipe_layer(group, i, where)
                    continue
                if torch.count_nonzero(layer.weight.detach()[~layer.mask]) != 0:
                    raise SparsityInvariantError(f"{where}: non-zero weight at an inactive position")
                if final and layer.active != layer.allocated:
                    raise SparsityInvariantError(f"{where}: {layer.active} active weights, {layer.allocated} allocated")
                if (problem := self._structure_problem(layer, final)) is not None:
                    raise SparsityInvariantError(f"{where}: {problem}")
                if group.target_layers:
                    target = group.target_layers[i]
                    if not torch.equal(target.weight_mask, layer.mask):
                        raise SparsityInvariantError(f"{where}: target mask differs from the online mask")
                    if torch.count_nonzero(target.weight.detach()[~layer.mask]) != 0:
                        raise SparsityInvariantError(f"{where}: target weight non-zero outside the online mask")

    def _check_recipe_layer(self, group: SparseGroup, index: int, where: str) -> None:
        """While a recipe runs: the hard mask is exactly the stage's N:M (all-ones in a dense stage), the layer holds
        its latent where active and exactly ``β · latent`` elsewhere, and the target carries the online mask."""
        layer = group.layers[index]
        stage = self.updater.stage_at(self.last_update_step)
        problem = (
            (None if bool(layer.mask.all()) else "a dense stage with inactive positions")
            if stage is None
            else (stage.problem(layer.mask))
        )
        if problem is not None:
            raise SparsityInvariantError(f"{where}: stage {stage or 'dense'}: {problem}")
        weight, latent = layer.weight.detach(), layer.latent
        expected = latent * layer.soft_mask(layer.applied_factor)
        if not torch.equal(weight, expected):
            raise SparsityInvariantError(f"{where}: weight differs from latent ⊙ where(mask, 1, {layer.applied_factor:g})")
        if group.target_layers and not torch.equal(group.target_layers[index].weight_mask, layer.mask):
            raise SparsityInvariantError(f"{where}: target mask differs from the online mask")

    def _structure_problem(self, layer: MaskedLayer, final: bool) -> str | None:
        """Why the layer's mask breaks the N:M structure, else None: exactly N per group of M once final; while
        pruning, the same count (between N and M) in every group (a partial group: at most its size)."""
        nm = self.config.nm
        if nm is None:
            return None
        if final:
            return nm.problem(layer.mask)
        per_group = int(nm.group_counts(layer.mask).max())
        if per_group < nm.n:
            return f"{per_group} active weights per group, fewer than the structure's {nm.n} of {nm.m}"
        return nm.problem(layer.mask, per_group)

    @torch.no_grad()
    def check_finite(self, where: str = "") -> None:
        """Raise :class:`NonFiniteError` naming the group and layer if any weight or bias is NaN/Inf."""
        for group in self.groups:
            for layer in group.layers:
                for name in ("weight", "bias"):  # attributes, not named_parameters(): batched views own no Parameter
                    param = getattr(layer.module, name, None)
                    if param is not None and not bool(torch.isfinite(param).all()):
                        raise NonFiniteError(f"non-finite {name} in group '{group.name}' layer '{layer.name}'{where}")

    def stats(self) -> dict[str, Any]:
        """Per-layer and per-group sparsity, active/total parameters (kernels; kernels + biases) and FLOPs."""
        groups = {group.name: self._group_stats(group) for group in self.groups}
        active = sum(g["active"] for g in groups.values())
        total = sum(g["total"] for g in groups.values())
        return {
            "method": self.config.method,
            "num_updates": self.num_updates,
            "last_update": dict(self.last_update),
            "active": active,
            "total": total,
            "active_with_bias": sum(g["active_with_bias"] for g in groups.values()),
            "total_with_bias": sum(g["total_with_bias"] for g in groups.values()),
            "sparsity": 1.0 - active / total,
            "groups": groups,
        }

    def _group_stats(self, group: SparseGroup) -> dict[str, Any]:
        """:meth:`stats` of one group: its layers, counts with and without biases, and FLOPs once measured."""
        layers = []
        for layer in group.layers:
            active = layer.active if self.sparse else layer.total
            layers.append(
                {
                    "name": layer.name,
                    "shape": list(layer.shape),
                    "active": active,
                    "total": layer.total,
                    "sparsity": 1.0 - active / layer.total,
                }
            )
        active = sum(entry["active"] for entry in layers)
        total = sum(entry["total"] for entry in layers)
        biases = sum(layer.bias_count for layer in group.layers)
        entry: dict[str, Any] = {
            "target_sparsity": self.config.sparsity_of(group.name) if self.sparse else 0.0,
            "sparsity": 1.0 - active / total,
            "active": active,
            "total": total,
            "active_with_bias": active + biases,
            "total_with_bias": total + biases,
            "layers": layers,
        }
        if all(layer.output_positions is not None for layer in group.layers):
            f_sparse = sum(forward_flops(e["active"], lay.output_positions) for e, lay in zip(layers, group.layers))
            f_dense = sum(forward_flops(e["total"], lay.output_positions) for e, lay in zip(layers, group.layers))
            entry["inference_flops"] = f_sparse
            entry["training_flops_per_sample"] = training_flops_per_sample(
                f_sparse, f_dense, self.updater.needs_gradients, self.config.update_interval
            )
        if blocks := iso_flop_blocks(group.module):
            entry["iso_flop_layers"] = self._iso_flop_stats(group, blocks, layers)
        return entry

    @staticmethod
    def _iso_flop_stats(group: SparseGroup, blocks: dict[str, Any], layers: list[dict[str, Any]]) -> dict[str, Any]:
        """Per Sparse-IFT layer: its kind, the dense layer's forward FLOPs per sample and the transformed one's (the
        active weights of its sub-layers), equal once the allocation is reached (:mod:`sparse_rl.ift`)."""
        out = {}
        for name, block in blocks.items():
            active = sum(e["active"] for e in layers if e["name"].startswith(f"{name}."))
            out[name] = {
                "kind": block.kind,
                "sparsity": block.sparsity,
                "dense_flops": forward_flops(block.dense_macs, 1),
                "flops": forward_flops(active, 1),
            }
        return out

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: masks, allocations, generator state, update counters."""
        return {
            "masks": {f"{g.name}/{layer.name}": layer.mask.clone().cpu() for g in self.groups for layer in g.layers}
            if self.sparse
            else {},
            "allocated": {f"{g.name}/{layer.name}": layer.allocated for g in self.groups for layer in g.layers},
            "generator": self.generator.get_state(),
            "num_updates": self.num_updates,
            "clock": self.clock,
            "last_update_step": self.last_update_step,
            "last_update": dict(self.last_update),
            # a running N:M recipe: the dense latents and the factor each layer holds (sparse_rl.nm_recipes)
            "latents": {f"{g.name}/{layer.name}": layer.latent.clone().cpu() for g in self.groups for layer in g.layers}
            if self.latent_active
            else {},
            "applied_factors": {f"{g.name}/{layer.name}": layer.applied_factor for g in self.groups for layer in g.layers},
            "decay_factor": self.decay_factor,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; masks are installed in online and target layers."""
        if not self._initialised:
            raise RuntimeError("call init_masks() before load_state_dict()")
        for group in self.groups:
            for i, layer in enumerate(group.layers):
                key = f"{group.name}/{layer.name}"
                layer.allocated = state["allocated"][key]
                if not self.sparse:
                    continue
                if key not in state["masks"] or tuple(state["masks"][key].shape) != layer.shape:
                    raise ValueError(f"checkpoint has no mask of shape {layer.shape} for '{key}' (another architecture?)")
                mask = state["masks"][key].to(device=layer.weight.device, dtype=torch.bool)
                if key in state.get("latents", {}):  # a recipe's window was running: the layer holds latent·soft mask
                    layer.mask.copy_(mask)
                    layer.latent = state["latents"][key].to(device=layer.weight.device, dtype=layer.weight.dtype)
                    layer.apply_latent(state["applied_factors"][key])
                    if group.target_layers:
                        group.target_layers[i].weight_mask.copy_(mask)
                    continue
                layer.set_mask(mask)
                if group.target_layers:
                    _mirror_into_target(group.target_layers[i], mask)
        self.generator.set_state(state["generator"])
        self.num_updates = state["num_updates"]
        self.clock = state["clock"]
        self.last_update_step = state["last_update_step"]
        self.last_update = dict(state["last_update"])
        self._latent_active = bool(state.get("latents"))
        self.decay_factor = state.get("decay_factor", 0.0)
