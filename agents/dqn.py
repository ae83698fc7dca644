"""DQN, made sparse: :class:`LossDQN` (SB3's DQN with a choice of TD loss), its policy classes, groups, shapes,
kernel decay and diagnostic losses, as one spec. LossDQN is the one place we override an SB3 update.

The paper's classic-control DQN (TF-Agents) minimises the element-wise squared TD error, ``mean(δ²)`` (Graesser et
al. 2022, App. Table 6; google-research/rigl ``rigl/rl/tfagents/dqn_train_eval.py``: ``element_wise_squared_loss``); SB3's
DQN hard-codes Huber (``smooth_l1_loss``, Dopamine's Atari loss). :class:`LossDQN` is SB3's ``DQN.train``
line for line except for the loss (``loss="huber"`` reproduces SB3's update exactly, tested) and for skipping
the gradient-norm clip when ``max_grad_norm`` is infinite (SB3 would scale by ``min(1, inf/‖g‖) = 1``, a no-op
that still costs a norm).

Kernel decay (:mod:`agents.decay` for the mechanics): with **Huber** (SB3's and Dopamine's loss) the paper's
``δ² + wd·Σw²`` has gradient ``2δ·∇q + 2·wd·w``; Huber's gradient is ``δ·∇q`` (|δ| ≤ 1), half of it, so λ_q = **wd**
(Dopamine's own ``½wd·Σw²`` gives the same). With **MSE** (``agent.loss=mse``, the paper's ``mean(δ²)``) our loss
*is* the paper's, gradient ``2δ·∇q``, so λ_q = **2·wd**.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import DQN
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.dqn.policies import CnnPolicy as DQNCnnPolicy
from stable_baselines3.dqn.policies import DQNPolicy
from torch import nn
from torch.nn import functional as F

from agents.diagnostics_callback import discounts, on_replay
from agents.policies import AdaptedPolicy, group_kernels, hidden_then_output, linears
from agents.spec import AGENTS, AgentSpec, GroupLosses, Net, model_off_policy_gradient_steps
from sparse_rl.controller import SparseGroup

TD_LOSSES = {"mse": F.mse_loss, "huber": F.smooth_l1_loss}  # agent.loss: the DQN TD losses (mean over the batch)


class LossDQN(DQN):
    """DQN whose TD loss is ``loss`` (``mse``: the paper's ``mean(δ²)``; ``huber``: SB3's). Saved with the model:
    ``LossDQN.load`` restores it (``DQN.load`` also loads the file, but then trains with Huber)."""

    def __init__(self, *args: Any, loss: str = "huber", **kwargs: Any) -> None:
        if loss not in TD_LOSSES:
            raise ValueError(f"unknown DQN loss '{loss}'; valid choices: {', '.join(sorted(TD_LOSSES))}")
        self.loss = loss
        super().__init__(*args, **kwargs)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """SB3's ``DQN.train`` (2.9) with the configured loss."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        loss_fn = TD_LOSSES[self.loss]
        clip = self.max_grad_norm is not None and math.isfinite(self.max_grad_norm)

        losses = []
        for _ in range(gradient_steps):
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma

            with th.no_grad():
                next_q_values = self.q_net_target(replay_data.next_observations)
                next_q_values, _ = next_q_values.max(dim=1)
                next_q_values = next_q_values.reshape(-1, 1)
                target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values

            current_q_values = self.q_net(replay_data.observations)
            current_q_values = th.gather(current_q_values, dim=1, index=replay_data.actions.long())

            loss = loss_fn(current_q_values, target_q_values)
            losses.append(loss.item())

            self.policy.optimizer.zero_grad()
            loss.backward()
            if clip:
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()

        self._n_updates += gradient_steps

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))


class DQNLayout(AdaptedPolicy):
    """DQN's Q-network (hidden layers, one output layer), its target, and one decay group ``q``."""

    def _init_layout(self) -> list[tuple[list[nn.Linear], str]]:
        return hidden_then_output(linears(self.q_net.features_extractor), linears(self.q_net.q_net))

    def _sync_targets(self) -> None:
        self.q_net_target.load_state_dict(self.q_net.state_dict())

    def _decay_layout(self):
        return [(self, "optimizer", {"q": group_kernels(self.q_net)})]


class DenseDQNPolicy(DQNLayout, DQNPolicy):
    pass


class DenseDQNCnnPolicy(DQNLayout, DQNCnnPolicy):
    pass


class SparseDQNPolicy(DQNLayout, DQNPolicy):
    masked_modules = ("q_net", "q_net_target")


class SparseDQNCnnPolicy(DQNLayout, DQNCnnPolicy):
    masked_modules = ("q_net", "q_net_target")


def diagnostic_losses(model: BaseAlgorithm, data: Any) -> GroupLosses:
    """The configured TD loss (``mse``/``huber``; a plain SB3 DQN: Huber) per sample of a replay batch."""
    with th.no_grad():
        next_q, _ = model.q_net_target(data.next_observations).max(dim=1)
        target = data.rewards + (1 - data.dones) * discounts(model, data) * next_q.reshape(-1, 1)
    huber = getattr(model, "loss", "huber") == "huber"  # SB3's DQN: Huber; LossDQN: agent.loss

    def q_loss(batch: tuple[th.Tensor, ...]) -> th.Tensor:
        obs, actions, y = batch
        q = th.gather(model.q_net(obs), dim=1, index=actions.long())
        return (F.smooth_l1_loss(q, y, reduction="none") if huber else (q - y).pow(2)).reshape(-1)

    return {"q": ((data.observations, data.actions, target), q_loss)}


def _networks(obs: int, act: int, hidden: Mapping[str, list[int]]) -> dict[str, list[Net]]:
    return {"q": [(obs, hidden["q"], act)]}


SPEC = AGENTS.register("dqn")(
    AgentSpec(
        name="dqn",
        algo=LossDQN,
        action_spaces=("discrete",),
        dense_policies={"mlp": DenseDQNPolicy, "cnn": DenseDQNCnnPolicy},
        sparse_policies={"mlp": SparseDQNPolicy, "cnn": SparseDQNCnnPolicy},
        groups=lambda m: [SparseGroup("q", m.q_net, m.policy.optimizer, target=m.q_net_target)],
        clock_optimizer=lambda m: m.policy.optimizer,
        gradient_steps=model_off_policy_gradient_steps,
        hidden_keys={"q": None},
        networks=_networks,
        decay_factors=lambda loss: {"q": 2.0 if loss == "mse" else 1.0},
        diagnostic_losses=on_replay(diagnostic_losses),
        td_losses=tuple(TD_LOSSES),
        sparse_ift=True,
    )
)
