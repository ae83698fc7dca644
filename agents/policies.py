"""SB3 policies whose maskable layers carry a ``weight_mask`` buffer from construction.

They add no constructor arguments: ``model.save`` / ``SAC.load`` (etc.) round-trip the masks with the rest of
the policy's state dict. Masks start all-ones; the :class:`~sparse_rl.TopologyController` draws them.
"""

from __future__ import annotations

from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.dqn.policies import CnnPolicy as DQNCnnPolicy
from stable_baselines3.dqn.policies import DQNPolicy
from stable_baselines3.sac.policies import CnnPolicy as SACCnnPolicy
from stable_baselines3.sac.policies import SACPolicy
from torch import nn

from sparse_rl.masks import attach_mask, find_maskable_layers


def attach_masks(*modules: nn.Module) -> None:
    """All-ones ``weight_mask`` buffers on every Linear/Conv2d layer of ``modules``."""
    for module in modules:
        for layer in find_maskable_layers(module).values():
            attach_mask(layer)


class _MaskedBuild:
    """Mixin: after SB3 builds the networks, attach mask buffers to the modules named by ``masked_modules``."""

    masked_modules: tuple[str, ...] = ()

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)  # type: ignore[misc]
        attach_masks(*(getattr(self, name) for name in self.masked_modules))


class SparseSACPolicy(_MaskedBuild, SACPolicy):
    masked_modules = ("actor", "critic", "critic_target")


class SparseSACCnnPolicy(_MaskedBuild, SACCnnPolicy):
    masked_modules = ("actor", "critic", "critic_target")


class SparseDQNPolicy(_MaskedBuild, DQNPolicy):
    masked_modules = ("q_net", "q_net_target")


class SparseDQNCnnPolicy(_MaskedBuild, DQNCnnPolicy):
    masked_modules = ("q_net", "q_net_target")


class SparsePPOPolicy(_MaskedBuild, ActorCriticPolicy):
    masked_modules = ("mlp_extractor", "action_net", "value_net")


class SparsePPOCnnPolicy(_MaskedBuild, ActorCriticCnnPolicy):
    masked_modules = ("features_extractor", "mlp_extractor", "action_net", "value_net")
