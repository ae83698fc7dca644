"""The paper's weight decay as per-group coefficients of torch Adam's (non-decoupled) ``weight_decay``, torch only.

The paper adds a Keras L2 term ``wd·Σw²`` over the **kernels** of each network to that network's loss
(paper_facts §3.2, §9.8); biases, PPO's log-std and SAC's entropy coefficient are never decayed. torch Adam's
``weight_decay=λ`` adds ``λ·w`` to the gradient before the moments, i.e. the gradient of a ``½λΣw²`` term.
What matters is the *ratio* of the decay gradient to the loss gradient (Adam is invariant to a common scale
of both), so λ is ``2·wd`` times the ratio of the paper's loss to ours for that group:

- **SAC critic**: TF-Agents multiplies the whole critic loss, L2 term included, by 0.5:
  ``0.5·(Σ_i mse(q_i, y) + wd·Σw²)`` → gradient ``0.5·∇Σmse + wd·w``. SB3's critic loss is ``0.5·Σ_i mse(q_i, y)``,
  the same TD part, so λ_critic = **wd**.
- **SAC actor**: TF-Agents' actor loss ``+ wd·Σw²`` → ``∇L + 2·wd·w``; SB3's actor loss is the same expression,
  so λ_actor = **2·wd**.
- **DQN, Huber** (SB3's and Dopamine's loss): the paper's ``δ² + wd·Σw²`` has gradient ``2δ·∇q + 2·wd·w``;
  Huber's gradient is ``δ·∇q`` (|δ| ≤ 1), half of it, so λ_q = **wd** (Dopamine's own ``½wd·Σw²`` gives the same).
- **DQN, MSE** (``agent.loss=mse``, the paper's element-wise squared loss ``mean(δ²)``): our loss *is* the paper's,
  gradient ``2δ·∇q``, so λ_q = **2·wd**.
- **TD3** (no TD3 in the paper; the same Keras ``wd·Σw²`` added to each network's loss): SB3's TD3 critic loss is
  ``Σ_i mse(q_i, y)`` (no 0.5, unlike its SAC), gradient ``∇Σmse + 2·wd·w`` → λ_critic = **2·wd**; the actor loss
  ``-mean(Q1)`` + ``wd·Σw²`` → λ_actor = **2·wd**.
- **PPO**: the L2 term is added to TF-Agents' PPO loss (policy-gradient loss + 0.5·value MSE), whose scale is
  SB3's (``vf_coef=0.5``), so λ_actor = λ_critic = **2·wd** (paper_facts gives no finer PPO detail: this
  assumes TF-Agents' default PPO loss).
"""

from __future__ import annotations

from typing import Any

LOSSES = ("mse", "huber")


def kernel_decay(agent: Any, weight_decay: float, loss: str | None) -> dict[str, float]:
    """Per group (``actor``, ``critic``, ``q``) the λ added as ``λ·w`` to that group's kernel gradients.

    ``weight_decay`` is the paper's Keras L2 coefficient ``wd`` (of ``wd·Σw²``); ``loss`` is DQN's TD loss
    (``mse`` or ``huber``) and must be ``None`` for the other agents. Derivation in the module docstring.
    """
    if weight_decay < 0:
        raise ValueError(f"agent.weight_decay must be >= 0, got {weight_decay}")
    wd = float(weight_decay)
    agent = getattr(agent, "name", agent)  # transitional: an AgentSpec or its name
    if agent == "dqn":
        if loss not in LOSSES:
            raise ValueError(f"agent.loss '{loss}' is not a DQN loss; valid choices: {', '.join(LOSSES)}")
        return {"q": 2.0 * wd if loss == "mse" else wd}
    if loss is not None:
        raise ValueError(f"agent.loss applies to dqn only; agent '{agent}' needs agent.loss=null")
    if agent == "sac":
        return {"actor": 2.0 * wd, "critic": wd}
    if agent in ("ppo", "td3"):
        return {"actor": 2.0 * wd, "critic": 2.0 * wd}
    raise ValueError(f"unknown agent '{agent}'; valid choices: dqn, ppo, sac, td3")
