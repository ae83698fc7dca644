"""The paper's weight decay as per-group coefficients of torch Adam's (non-decoupled) ``weight_decay``.

The paper adds a Keras L2 term ``wd·Σw²`` over the **kernels** of each network to that network's loss
(Graesser et al. 2022, App. Tables 1–3 for the wd values; google-research/rigl ``rigl/rl/tfagents/sac_train_eval.py``
and ``ppo_train_eval.py`` for the Keras term; Dopamine's Atari DQN uses ``wd·½Σw²``); biases, PPO's log-std and SAC's
entropy coefficient are never decayed. torch Adam's ``weight_decay=λ`` adds ``λ·w`` to the gradient before the
moments, i.e. the gradient of a ``½λΣw²`` term. What matters is the *ratio* of the decay gradient to the loss
gradient (Adam is invariant to a common scale of both), so λ is ``2·wd`` times the ratio of the paper's loss to ours
for that group. That ratio is the agent's fact, its spec's ``decay_factors`` (derived in each agent's module:
``agents/sac.py``, ``agents/td3.py``, ``agents/dqn.py``, ``agents/ppo.py``); here λ = factor · wd.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agents.spec import AgentSpec


def kernel_decay(agent: str | AgentSpec, weight_decay: float, loss: str | None) -> dict[str, float]:
    """Per group (e.g. ``actor``, ``critic``, ``q``) the λ added as ``λ·w`` to that group's kernel gradients.

    ``agent`` is an :class:`~agents.spec.AgentSpec` or its name (a name loads the SB3 agents); ``weight_decay`` is
    the paper's Keras L2 coefficient ``wd`` (of ``wd·Σw²``); ``loss`` is the agent's TD loss (``agent.loss``; ``None``
    for agents without one). Raises a one-line ``ValueError``.
    """
    from agents.spec import agent_spec  # SB3-facing: imported when called, so this module stays torch-only

    if weight_decay < 0:
        raise ValueError(f"agent.weight_decay must be >= 0, got {weight_decay}")
    spec = agent_spec(agent)
    spec.check_loss(loss)
    return {group: factor * float(weight_decay) for group, factor in spec.decay_factors(loss).items()}
