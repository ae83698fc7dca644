"""SB3's DQN with a choice of TD loss: the one place we override an SB3 update (paper_facts §3.3).

The paper's classic-control DQN (TF-Agents) minimises the element-wise squared TD error, ``mean(δ²)``; SB3's
DQN hard-codes Huber (``smooth_l1_loss``, Dopamine's Atari loss). :class:`LossDQN` is SB3's ``DQN.train``
line for line except for the loss (``loss="huber"`` reproduces SB3's update exactly, tested) and for skipping
the gradient-norm clip when ``max_grad_norm`` is infinite (SB3 would scale by ``min(1, inf/‖g‖) = 1``, a no-op
that still costs a norm).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import DQN
from torch.nn import functional as F

TD_LOSSES = {"mse": F.mse_loss, "huber": F.smooth_l1_loss}  # the names of agents.decay.LOSSES


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
