"""Declared ranges of the numbers a run accepts: SB3's constructor kwargs (``agent.sb3.*``), the optimizer's
(``agent.sb3.policy_kwargs.optimizer_kwargs.*``) and the ``agent`` node's own budgets, checked before anything is
built or written (:func:`agents.build.check_agent_config`; ``experiment.plan`` checks the run's keys with the same
:class:`Range`).

One table, not scattered ifs: a key is checked when the config has it (SB3 kwargs mean the same in every SB3
algorithm, so one rule serves SAC, TD3, DQN and PPO). Ranges are what SB3 and torch accept, narrowed to what makes
sense (a discount above 1 diverges, a batch larger than the buffer repeats samples); sources: SB3's docs
(https://stable-baselines3.readthedocs.io, each algorithm's "Parameters"), torch.optim.Adam's docs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """A number's valid range; ``special`` values (SAC's ``ent_coef: auto``, SB3's ``gradient_steps: -1``) pass as
    they are, and so does ``None`` where ``optional``. Infinity only where ``infinite`` (``max_grad_norm: .inf``)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    special: tuple[Any, ...] = ()
    prefixes: tuple[str, ...] = ()  # string values starting with one pass too (SAC's ``auto_0.1``)
    optional: bool = False
    infinite: bool = False
    why: str = ""  # said after the range, e.g. "(-1: as many as env steps)"

    def describe(self) -> str:
        """``positive``, ``>= 0``, ``in (0, 1]``, ...: the words of the error message."""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            positive = (self.low == 0 and self.low_open) or (self.integer and self.low == 1 and not self.low_open)
            return "positive" if positive else f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return "a finite number"

    def problem(self, key: str, value: Any) -> str | None:
        """One line if ``value`` breaks the rule, naming ``key`` and the range; ``None`` if it is valid."""
        if (value is None and self.optional) or (value in self.special and not isinstance(value, bool)):
            return None
        if isinstance(value, str) and self.prefixes and value.startswith(self.prefixes):
            return None
        extra = f" {self.why}" if self.why else ""
        also = f" or {', '.join(map(str, self.special))}" if self.special else ""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = "an integer" if self.integer else "a number"
            return f"{key} must be {kind} {self.describe()}{also}, got {value!r}{extra}"
        if math.isnan(value) or (math.isinf(value) and not self.infinite):
            return f"{key} must be a finite number {self.describe()}{also}, got {value}{extra}"
        if self.integer and not math.isinf(value) and value != int(value):
            return f"{key} must be an integer, got {value}{extra}"
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return None if low_ok and high_ok else f"{key} must be {self.describe()}{also}, got {value}{extra}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE_INT = Range(low=1, integer=True)
COUNT = Range(low=0, integer=True)
UNIT = Range(low=0, high=1)  # a probability or fraction
HALF_OPEN_UNIT = Range(low=0, high=1, low_open=True)  # a discount or Polyak coefficient: 0 learns nothing
POSITIVE = Range(low=0, low_open=True)
NON_NEGATIVE = Range(low=0)

# agent.sb3.<key>: SB3's constructor kwargs (SAC, TD3, DQN, PPO "Parameters" in SB3's docs)
SB3_RULES: Mapping[str, Range] = {
    "learning_rate": POSITIVE,
    "buffer_size": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "learning_starts": COUNT,
    "tau": HALF_OPEN_UNIT,
    "gamma": HALF_OPEN_UNIT,
    "train_freq": POSITIVE_INT,
    "gradient_steps": Range(low=1, integer=True, special=(-1,), why="(-1: as many as env steps)"),
    "target_update_interval": POSITIVE_INT,
    "exploration_fraction": UNIT,
    "exploration_initial_eps": UNIT,
    "exploration_final_eps": UNIT,
    "max_grad_norm": Range(low=0, low_open=True, infinite=True, why="(.inf: no clipping)"),
    "n_steps": POSITIVE_INT,
    "n_epochs": POSITIVE_INT,
    "gae_lambda": UNIT,
    "clip_range": POSITIVE,
    "clip_range_vf": Range(low=0, low_open=True, optional=True),
    "ent_coef": Range(low=0, special=("auto",), prefixes=("auto_",)),
    "vf_coef": NON_NEGATIVE,
    "target_kl": Range(low=0, low_open=True, optional=True),
    "policy_delay": POSITIVE_INT,
    "target_policy_noise": NON_NEGATIVE,
    "target_noise_clip": NON_NEGATIVE,
    "target_entropy": Range(special=("auto",)),
    "sde_sample_freq": Range(low=-1, integer=True, why="(-1: only at the start of a rollout)"),
}
# agent.sb3.policy_kwargs.optimizer_kwargs.<key>: torch.optim.Adam's (fused Adam takes the same)
OPTIMIZER_RULES: Mapping[str, Range] = {"eps": POSITIVE, "lr": POSITIVE}
ADAM_BETA = Range(low=0, high=1, high_open=True)  # each of optimizer_kwargs.betas
# agent.<key>: this project's own keys on the agent node (configs/agent/*.yaml)
AGENT_RULES: Mapping[str, Range] = {
    "total_timesteps": POSITIVE_INT,
    "n_envs": POSITIVE_INT,
    "eval_freq": POSITIVE_INT,
    "eval_episodes": POSITIVE_INT,
    "weight_decay": NON_NEGATIVE,
    "exploration_noise": Range(low=0, optional=True, why="(the std of the Gaussian action noise)"),
}


@dataclass(frozen=True)
class AtMost:
    """``agent.sb3.<key>`` may not exceed the product of ``bound`` keys (``n_envs`` is the agent node's)."""

    key: str
    bound: tuple[str, ...]
    why: str


RELATIONS = (
    AtMost("batch_size", ("buffer_size",), "a batch larger than the replay buffer draws the same transitions repeatedly"),
    AtMost("batch_size", ("n_steps", "n_envs"), "PPO's minibatches come from one rollout of n_steps x n_envs"),
)


def check_agent_values(agent_cfg: Mapping[str, Any]) -> None:
    """Every number of the ``agent`` node against :data:`AGENT_RULES`, :data:`SB3_RULES`, :data:`OPTIMIZER_RULES` and
    :data:`RELATIONS`; raises a one-line ``ValueError`` naming the key, its range and the value."""
    sb3 = agent_cfg.get("sb3") or {}
    optimizer = ((sb3.get("policy_kwargs") or {}).get("optimizer_kwargs")) or {}
    checks = [(f"agent.{k}", r, agent_cfg[k]) for k, r in AGENT_RULES.items() if k in agent_cfg]
    checks += [(f"agent.sb3.{k}", r, sb3[k]) for k, r in SB3_RULES.items() if k in sb3]
    prefix = "agent.sb3.policy_kwargs.optimizer_kwargs"
    checks += [(f"{prefix}.{k}", r, optimizer[k]) for k, r in OPTIMIZER_RULES.items() if k in optimizer]
    if "train_freq" in sb3 and isinstance(sb3["train_freq"], (list, tuple)):  # SB3's (n, "step" | "episode") form
        checks = [c for c in checks if c[0] != "agent.sb3.train_freq"]
        checks.append(("agent.sb3.train_freq[0]", POSITIVE_INT, sb3["train_freq"][0]))
    if "betas" in optimizer:
        checks += [(f"{prefix}.betas[{i}]", ADAM_BETA, beta) for i, beta in enumerate(optimizer["betas"])]
    for key, rule, value in checks:
        if (problem := rule.problem(key, value)) is not None:
            raise ValueError(problem)
    values = {"n_envs": agent_cfg.get("n_envs"), **sb3}
    for relation in RELATIONS:
        if relation.key not in sb3 or any(values.get(k) is None for k in relation.bound):
            continue
        limit = math.prod(int(values[k]) for k in relation.bound)
        if sb3[relation.key] > limit:
            names = " x ".join(f"agent.sb3.{k}" if k in sb3 else f"agent.{k}" for k in relation.bound)
            raise ValueError(
                f"agent.sb3.{relation.key}={sb3[relation.key]} is larger than {names} ({limit}): {relation.why}; "
                f"lower agent.sb3.{relation.key}"
            )
