"""Which connections change: ``dense``, ``static``, ``set``, ``rigl``, ``prune`` (registry ``UPDATERS``).

An updater proposes a layer's next mask; the :class:`~sparse_rl.controller.TopologyController` applies it
(zeroing weights, resetting optimizer state, syncing targets). Add a method by registering a subclass with its
paper defaults (:attr:`Updater.defaults`, from which :data:`sparse_rl.config.METHOD_DEFAULTS` is derived) and a
``configs/sparsity/<method>.yaml`` holding the same values. A new drop or growth criterion is an override of
:meth:`Updater.drop_scores` or :meth:`SETUpdater.grow_scores` (as in google-research/rigl's
``rigl/rigl_tf2/mask_updaters.py``, whose updaters differ only in their drop and grow scores).

Sources cited below: Graesser et al. 2022, "The State of Sparse Training in Deep Reinforcement Learning"
(arXiv 2206.10369; its appendix hyper-parameter tables) and the google-research/rigl files named.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from sparse_rl.masks import MaskedLayer
from sparse_rl.nm_recipes import NMRecipe, Stage
from sparse_rl.registry import Registry
from sparse_rl.schedules import DROP_FRACTION_SCHEDULES, UpdateWindow, polynomial_sparsity

if TYPE_CHECKING:
    from sparse_rl.config import SparsityConfig

UPDATERS: Registry[type[Updater]] = Registry("sparsity method")

# The schedule every method shares; mirrors configs/sparsity/ (a test keeps the two equal).
_PAPER_SCHEDULE: dict[str, Any] = {
    "sparsity": 0.9,  # Graesser et al. 2022, Fig 1: the headline sparsity
    "distribution": "erk",  # Graesser et al. 2022, Fig 4a: ERK beats uniform; ERK in every other experiment
    "update_interval": 1000,  # Graesser et al. 2022, appendix Tables 1-2: 1,000 gradient steps (DQN classic, SAC)
    "start_fraction": 0.0,  # rigl/rigl_tf2/mask_updaters.py (UpdateSchedule.is_update_iter): updates from step 0
    "end_fraction": 0.8,  # rigl/rl/tfagents/configs/sac_mujoco_sparse_config.gin: last update at 800k of 1M steps
    "drop_fraction_schedule": "cosine",  # rigl/rigl_tf2/mask_updaters.py (CosineUpdateSchedule): decays to 0 at the end
    "prune_power": 3,  # rigl/rl/tfagents/tf_sparse_utils.py: tfmot PolynomialDecay, default power 3 (Zhu & Gupta 2017)
}
# The N:M recipes (sparse_rl.nm_recipes), off unless asked for; mirrors configs/sparsity/ like the schedule.
_RECIPES_OFF: dict[str, Any] = {
    "structure_decay": None,  # no structure stages: the target structure throughout the window
    "mask_decay": "none",  # hard masks, as the methods were published (Kao et al. 2022 add step/linear/exponential)
    "mask_decay_rate": 1.0,  # our normalisation of the PGF code's per-step coefficient: linear decay hits 0 at the end
    "sr_ste": False,  # SR-STE (Zhou et al. 2021) off
    "sr_ste_lambda": 2e-4,  # aojunzz/NM-sparsity devkit/sparse_ops/sparse_ops.py: Sparse.forward(decay=0.0002)
}


class Updater:
    """Base: a sparse method with a random mask at init and no topology updates."""

    sparse: ClassVar[bool] = True  # attaches masks
    starts_dense: ClassVar[bool] = False  # masks start all-ones (pruning)
    updates: ClassVar[bool] = False  # changes topology during training
    needs_gradients: ClassVar[bool] = False  # wants the dense weight gradient of the group's last optimizer step
    accepts_structure: ClassVar[bool] = True  # accepts an N:M ``structure`` (sparse_rl.config.STRUCTURED_METHODS)
    accepts_recipe: ClassVar[bool] = False  # runs the N:M recipes (sparse_rl.nm_recipes; config.RECIPE_METHODS)
    # The paper's value of every SparsityConfig field the method leaves out (sparse_rl.config.METHOD_DEFAULTS);
    # a subclass states its own (``{**Updater.defaults, ...}``), equal to configs/sparsity/<method>.yaml.
    defaults: ClassVar[dict[str, Any]] = {**_PAPER_SCHEDULE, **_RECIPES_OFF, "drop_fraction": 0.0, "sparse_init": True}

    def __init__(self, config: SparsityConfig, total_steps: int) -> None:
        self.config = config
        self.window = UpdateWindow.from_fractions(
            total_steps, config.start_fraction, config.end_fraction, config.update_interval
        )
        # the N:M recipe this method runs (sparse_rl.nm_recipes), None: its hard masks
        self.recipe: NMRecipe | None = NMRecipe.from_config(config) if self.accepts_recipe else None

    def schedule_value(self, t: int) -> float:
        """The scheduled quantity at step ``t`` (drop fraction or target-sparsity progress), for logging."""
        return 0.0

    def decay_factor(self, t: int) -> float:
        """The factor β of the pruned positions at step ``t`` while a :attr:`recipe` runs (none without one: 0)."""
        return 0.0

    def stage_at(self, t: int) -> Stage:
        """The structure in force at step ``t`` while a :attr:`recipe` runs (without one: the configured one)."""
        return self.config.nm

    def drop_scores(self, layer: MaskedLayer) -> torch.Tensor:
        """Lower score = dropped (or pruned) first among the active weights; shape ``layer.shape``. Default: |w|."""
        return layer.dense_weight().abs()

    def next_mask(self, layer: MaskedLayer, t: int, generator: torch.Generator) -> torch.Tensor | None:
        """The layer's next mask at update step ``t``, or ``None`` to leave it unchanged."""
        return None


@UPDATERS.register("dense")
class DenseUpdater(Updater):
    """No masks at all: the standard dense network."""

    sparse = False
    accepts_structure = False
    defaults = {**Updater.defaults, "sparsity": 0.0, "sparse_init": False}  # the schedule is unused


@UPDATERS.register("static")
class StaticUpdater(Updater):
    """A random mask drawn at initialisation and kept fixed (Graesser et al. 2022, "Static")."""

    # the base defaults: sparsity-aware init on, as in Graesser et al. 2022 appendix Table 1 (Static row)


def _top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (shape of ``scores``) of its ``k`` largest entries."""
    flat = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        flat[torch.topk(scores.flatten(), k, sorted=False).indices] = True
    return flat.view_as(scores)


@UPDATERS.register("set")
class SETUpdater(Updater):
    """SET (Mocanu et al. 2018): drop the smallest-|w| active weights (:meth:`drop_scores`), regrow as many at random.

    Per layer ``k = floor(f_t · n_active)``; growth candidates are all positions not kept (the just-dropped
    included), so active counts are conserved exactly. ``f_t`` follows ``drop_fraction_schedule``.
    With an N:M ``structure`` the drop is the same (the layer's ``k`` lowest drop scores, wherever they are) and each
    group of M regrows as many as it lost, among its own positions not kept: every group keeps exactly N.
    """

    updates = True
    # Graesser et al. 2022 appendix Table 2 (SAC), RigL row: drop fraction 0.5, sparsity-aware init; SET takes the
    # same, as the shared rigl/rl/tfagents/configs/sac_mujoco_sparse_config.gin does
    defaults = {**Updater.defaults, "drop_fraction": 0.5, "sparse_init": True}

    def schedule_value(self, t: int) -> float:
        schedule = DROP_FRACTION_SCHEDULES.get(self.config.drop_fraction_schedule)
        return schedule(self.config.drop_fraction, self.window.progress(t))

    def grow_scores(self, layer: MaskedLayer, generator: torch.Generator) -> torch.Tensor:
        """Higher score = grown first. SET: uniform random."""
        return torch.rand(layer.shape, generator=generator).to(layer.weight.device)

    def next_mask(self, layer: MaskedLayer, t: int, generator: torch.Generator) -> torch.Tensor | None:
        mask = layer.mask
        n_active = int(mask.sum().item())
        n_swap = math.floor(self.schedule_value(t) * n_active)
        if n_swap == 0:
            return None
        neg_inf = torch.tensor(float("-inf"), device=mask.device)
        kept = _top_k_mask(torch.where(mask, self.drop_scores(layer), neg_inf), n_active - n_swap)
        nm = self.config.nm
        if nm is not None:  # regrow, in every group of M, as many as it lost: each group keeps its N
            dropped = nm.group_counts(mask) - nm.group_counts(kept)
            return kept | nm.top_k(self.grow_scores(layer, generator), dropped, candidates=~kept)
        grown = _top_k_mask(torch.where(kept, neg_inf, self.grow_scores(layer, generator)), n_swap)
        return kept | grown


@UPDATERS.register("rigl")
class RigLUpdater(SETUpdater):
    """RigL (Evci et al. 2020): as SET, but regrow where the dense gradient magnitude is largest."""

    needs_gradients = True

    def grow_scores(self, layer: MaskedLayer, generator: torch.Generator) -> torch.Tensor:
        if layer.dense_grad is None:
            raise RuntimeError(
                f"RigL needs the dense gradient of layer '{layer.name}': run its optimizer step before a topology update"
            )
        return layer.dense_grad.abs()


@UPDATERS.register("prune")
class PruneUpdater(Updater):
    """Gradual magnitude pruning (Zhu & Gupta 2017): dense → sparse, keep the largest |w| per layer.

    Layer ``l`` reaches its allocated count at the end of the window: its sparsity at progress ``p`` is
    ``s_l · (1 − (1 − p)^power)``. Pruned weights never come back. With an N:M ``structure`` the same schedule
    runs per group of M (:meth:`group_keep`).
    """

    starts_dense = True
    updates = True
    # Graesser et al. 2022 appendix Table 2 (SAC): prune from 20% to 80% of training (rigl/rl/tfagents/configs/
    # sac_mujoco_pruning_config.gin: 200k to 800k); sparsity-aware init has no effect on a dense start
    defaults = {**Updater.defaults, "start_fraction": 0.2, "sparse_init": False}

    accepts_recipe = True

    def __init__(self, config: SparsityConfig, total_steps: int) -> None:
        super().__init__(config, total_steps)
        if self.recipe is not None:  # the recipe masks from the warm-up's end: ``start`` is an update point
            self.window = dataclasses.replace(self.window, include_start=True)

    def schedule_value(self, t: int) -> float:
        if self.recipe is not None:  # the sparsity of the structure stage in force
            stage = self.stage_at(t)
            return 0.0 if stage is None else stage.sparsity
        return polynomial_sparsity(self.config.sparsity, self.window.progress(t), self.config.prune_power)

    def stage_at(self, t: int) -> Stage:
        """The recipe's structure at step ``t``: dense before the window, the stage of the latest update point in it,
        the target structure from the window's end (the fine-tune)."""
        point = self.window.latest_point(t)
        if point is None:
            return None
        if point >= self.window.end:
            return self.config.nm
        return self.recipe.stage(self.window.progress(point))

    def decay_factor(self, t: int) -> float:
        """The recipe's factor β of the pruned positions at step ``t`` (0 once the window has ended)."""
        point = self.window.latest_point(t)
        point_progress = 0.0 if point is None else self.window.progress(point)
        return self.recipe.factor(self.window.progress(t), point_progress)

    def next_mask(self, layer: MaskedLayer, t: int, generator: torch.Generator) -> torch.Tensor | None:
        if self.recipe is not None:
            return self._recipe_mask(layer, t)
        if self.config.nm is not None:
            return self._next_structured_mask(layer, t)
        final_sparsity = 1.0 - layer.allocated / layer.total
        sparsity_now = polynomial_sparsity(final_sparsity, self.window.progress(t), self.config.prune_power)
        n_active = int(layer.mask.sum().item())
        keep = min(n_active, layer.total - round(sparsity_now * layer.total))
        if t >= self.window.end:
            keep = min(n_active, layer.allocated)
        if keep >= n_active:
            return None
        neg_inf = torch.tensor(float("-inf"), device=layer.mask.device)
        return _top_k_mask(torch.where(layer.mask, self.drop_scores(layer), neg_inf), keep)

    def group_keep(self, t: int) -> int:
        """N:M pruning: weights kept per group of M at step ``t``, ``round(d_t · M)`` for the scheduled density
        ``d_t = 1 − s_t`` (``s_t`` Zhu–Gupta from 0 to ``1 − N/M``); non-increasing, exactly N from the window's end.
        """
        nm = self.config.nm
        if t >= self.window.end:
            return nm.n
        sparsity_now = polynomial_sparsity(nm.sparsity, self.window.progress(t), self.config.prune_power)
        return max(nm.n, round((1.0 - sparsity_now) * nm.m))

    def _next_structured_mask(self, layer: MaskedLayer, t: int) -> torch.Tensor | None:
        """Keep the :meth:`group_keep` largest |w| among the active weights of every group (a partial group: at most
        its size); a group never regains a weight."""
        nm, mask = self.config.nm, layer.mask
        keep = nm.group_counts(mask).clamp(max=self.group_keep(t))
        if torch.equal(keep, nm.group_counts(mask)):
            return None
        return nm.top_k(self.drop_scores(layer), keep, candidates=mask)

    def _recipe_mask(self, layer: MaskedLayer, t: int) -> torch.Tensor | None:
        """The N largest |latent| of every group of the stage in force (every position competes: a decayed weight
        wins its place back when it grows); all-ones in a dense stage."""
        stage = self.stage_at(t)
        if stage is None:
            new = torch.ones_like(layer.mask)
        else:
            new = stage.top_k(self.drop_scores(layer), stage.n)
        return None if torch.equal(new, layer.mask) else new
