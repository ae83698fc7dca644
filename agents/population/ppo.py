"""Batched PPO (Schulman et al. 2017) with SB3's update math, for K members at once.

Each member is SB3's ``ActorCriticPolicy`` as our config builds it (``configs/agent/ppo.yaml``): separate actor and
value MLPs (``mlp_extractor.policy_net`` / ``value_net``, an activation after every hidden layer), the linear heads
``action_net`` and ``value_net``, and for Box actions a state-independent ``log_std`` (SB3's
``DiagGaussianDistribution``; Discrete actions: ``CategoricalDistribution``), all stepped by one Adam. Its initial
weights (SB3's ``ortho_init``, ``log_std_init``) come from the SB3 path's model of the run (the population copies
them in), so they need no code here.

One :meth:`PopulationPPO.update` is, for every member, exactly one minibatch iteration of
``stable_baselines3.PPO.train``'s loop (SB3 2.x ``stable_baselines3/ppo/ppo.py``): per-minibatch advantage
normalisation, the clipped surrogate, the value loss (clipped around the old values when ``clip_range_vf`` is set),
the entropy term, ``loss = policy + ent_coef·entropy + vf_coef·value``, the gradient-norm clip over all of a
member's parameters, then the optimizer step, parity-tested against SB3 (``tests/test_population_ppo.py``). As on the
SB3 path (``configs/agent/ppo.yaml``: ``max_grad_norm``), the norm includes the gradients at inactive positions; the
masks apply at the optimizer step (:meth:`~agents.population.base.PopulationAgent.finish_gradients_`), with the
kernel decay.

``target_kl`` stops a member early as SB3 does: its approximate KL is checked before the step, and a member past
``1.5·target_kl`` takes no step of this minibatch nor of the rest of the ``train()`` (:meth:`PopulationPPO.update`'s
``training`` mask, kept by the rollout loop). torch's Adam keeps one ``step`` count per parameter tensor, shared by
the members; each member's own count is in ``adam_steps``, and a step of members with different counts runs torch's
Adam once per count, the other members' rows restored (:meth:`PopulationPPO.optimizer_step`), so every member's
update is the one SB3's single-member Adam computes.

Not implemented (refused by the engine with one line, see ``sb3_keys``): ``use_sde`` (state-dependent
exploration), schedules for ``clip_range``/``clip_range_vf``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn
from torch.distributions import Categorical, Normal

from agents.population.base import (
    LayerPair,
    PopulationAgent,
    PopulationConfigError,
    adam,
    clip_member_grad_norm_,
    hidden_sizes,
    sb3_linears,
)
from agents.population.networks import BatchedMLP, member_module
from agents.population.streams import LANES, Draw, MemberStreams
from sparse_rl.controller import SparseGroup

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm


def sb3_default(function: Any, name: str) -> Any:
    """The default of argument ``name`` in SB3's signature of ``function`` (a class: its constructor)."""
    return inspect.signature(function).parameters[name].default


# PPO arguments a config may leave out (SB3's defaults then apply, read from SB3's signature)
SB3_KEYS_WITH_DEFAULTS = ("clip_range", "clip_range_vf", "normalize_advantage", "ent_coef", "vf_coef", "max_grad_norm",
                          "target_kl")  # fmt: skip
ADVANTAGE_EPSILON = 1e-8  # stable_baselines3.PPO.train: (A - mean) / (std + 1e-8)
LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))  # torch.distributions.Normal.log_prob's constant


def _names(prefix: str, n_hidden: int, head: str) -> list[str]:
    """SB3's layer names: ``mlp_extractor.<net>.0, .2, …`` (a Linear before each activation), then the head."""
    return [f"mlp_extractor.{prefix}.{2 * i}" for i in range(n_hidden)] + [head]


class PopulationPPO(PopulationAgent):
    """Per member: actor ``obs → h… → A`` (Gaussian mean or categorical logits), critic ``obs → h… → 1``, ``log_std``."""

    name = "ppo"
    sb3_keys = ("learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range",
                "clip_range_vf", "normalize_advantage", "ent_coef", "vf_coef", "max_grad_norm", "target_kl",
                "policy_kwargs")  # fmt: skip
    # SB3 policy kwargs the engine implements (their effect is in the SB3 start the members copy)
    policy_keys = ("optimizer_kwargs", "log_std_init", "ortho_init")
    on_policy = True  # trained by agents.population.rollout
    lr_schedules = ("constant", "linear")  # the rollout loop sets SB3's schedule before each train()

    def __init__(
        self,
        k: int,
        obs_dim: int,
        action_space: spaces.Box | spaces.Discrete,
        hidden_pi: Sequence[int],
        hidden_vf: Sequence[int],
        activation: str,
        *,
        learning_rate: float,
        clip_range: float,
        clip_range_vf: float | None,
        normalize_advantage: bool,
        ent_coef: float,
        vf_coef: float,
        max_grad_norm: float,
        optimizer_kwargs: Mapping[str, Any],
        actor_decay: Sequence[float],
        critic_decay: Sequence[float],
        device: torch.device,
        capturable: bool = False,
        log_std_init: float = 0.0,
        target_kl: float | None = None,
    ) -> None:
        """Hyperparameters: SB3's ``PPO`` arguments of the same names; ``log_std_init``: SB3's policy kwarg (the
        members' starts overwrite it)."""
        super().__init__()
        self.k, self.obs_dim, self.device, self.action_space = k, obs_dim, device, action_space
        self.discrete = isinstance(action_space, spaces.Discrete)
        self.act_dim = int(action_space.n) if self.discrete else int(action_space.shape[0])
        self.clip_range, self.clip_range_vf = float(clip_range), None if clip_range_vf is None else float(clip_range_vf)
        self.normalize_advantage, self.ent_coef, self.vf_coef = bool(normalize_advantage), float(ent_coef), float(vf_coef)
        self.max_grad_norm = float(max_grad_norm)
        self.target_kl = None if target_kl is None else float(target_kl)
        self.actor = BatchedMLP(
            k, [obs_dim, *hidden_pi, self.act_dim], activation, _names("policy_net", len(hidden_pi), "action_net"), device
        )
        critic_names = _names("value_net", len(hidden_vf), "value_net")
        self.critic = BatchedMLP(k, [obs_dim, *hidden_vf, 1], activation, critic_names, device)
        # SB3's DiagGaussianDistribution.proba_distribution_net: one log-std per action dimension (Box actions only)
        self.log_std = nn.Parameter(torch.full((k, 0 if self.discrete else self.act_dim), float(log_std_init), device=device))
        self.group_layers = {"actor": list(self.actor.layers), "critic": list(self.critic.layers)}
        self.decay = {
            "actor": torch.tensor(list(actor_decay), dtype=torch.float32, device=device),
            "critic": torch.tensor(list(critic_decay), dtype=torch.float32, device=device),
        }
        # SB3's ActorCriticPolicy: one optimizer over all parameters
        params = [*self.actor.parameters(), *self.critic.parameters()] + ([] if self.discrete else [self.log_std])
        self.optimizer = adam(params, learning_rate, optimizer_kwargs, capturable)
        self.adam_steps = torch.zeros(k, dtype=torch.int64)  # each member's Adam step count (SB3: its optimizer's)

    @classmethod
    def from_config(cls, cfg, net_arch, obs_dim, action_space, decays, device, capturable) -> PopulationPPO:
        if not isinstance(action_space, (spaces.Box, spaces.Discrete)):
            raise PopulationConfigError(f"the population engine's PPO acts in Box or Discrete spaces, not {action_space}")
        sb3 = cfg.agent.sb3
        policy_kwargs = dict(sb3.get("policy_kwargs") or {})
        ppo = {key: sb3.get(key, sb3_default(PPO, key)) for key in SB3_KEYS_WITH_DEFAULTS}  # a key absent: SB3's
        return cls(
            len(decays), obs_dim, action_space, hidden_sizes(net_arch, "pi"), hidden_sizes(net_arch, "vf"),
            cfg.agent.activation, learning_rate=sb3.learning_rate, **ppo,
            optimizer_kwargs=dict(policy_kwargs.get("optimizer_kwargs") or {}),
            actor_decay=[d["actor"] for d in decays], critic_decay=[d["critic"] for d in decays], device=device,
            capturable=capturable,
            log_std_init=policy_kwargs.get("log_std_init", sb3_default(ActorCriticPolicy, "log_std_init")),
        )  # fmt: skip

    # ----------------------------------------------------------------- networks
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.optimizer}

    def target_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return []

    def member_groups(self, member: int) -> list[SparseGroup]:
        """The SB3 path's groups (``agents.ppo.GROUP_GLOBS``), layers in SB3's order and names."""
        return [
            SparseGroup("actor", member_module(self.actor.member_layers(member, self.optimizer))),
            SparseGroup("critic", member_module(self.critic.member_layers(member, self.optimizer))),
        ]

    def parameters_per_member(self) -> list[torch.Tensor]:
        """Every trained tensor (leading dimension: members): the gradient clip's scope, SB3's
        ``policy.parameters()``."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def distribution(self, obs: torch.Tensor) -> Normal | Categorical:
        """SB3's action distribution for observations ``[K, B, obs]`` (batch shape ``[K, B]``)."""
        out = self.actor(obs)
        if self.discrete:
            return Categorical(logits=out, validate_args=False)
        std = torch.ones_like(out) * self.log_std.unsqueeze(1).exp()
        return Normal(out, std, validate_args=False)  # validate_args off: a NaN member must not stop the rest

    def log_prob_entropy(self, dist: Normal | Categorical, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability and entropy ``[K, B]`` of buffer actions ``[K, B, A]`` (Discrete: ``[K, B, 1]`` floats)."""
        if self.discrete:
            return dist.log_prob(actions[..., 0].long()), dist.entropy()
        return dist.log_prob(actions).sum(dim=-1), dist.entropy().sum(dim=-1)

    def values(self, obs: torch.Tensor) -> torch.Tensor:
        """The critic's values ``[K, B]``."""
        return self.critic(obs)[..., 0]

    # ----------------------------------------------------------------- acting
    def rollout_noise(self, streams: MemberStreams, rollout: int, n_steps: int) -> torch.Tensor:
        """The acting draws of rollout ``rollout`` ``[K, n_steps, ·]``, drawn at once: env step
        ``t = rollout·n_steps + i`` gets row ``i``, the same numbers as a draw at step ``t`` alone (counter-based
        streams; Box: standard normals, ``ACT_NOISE`` words ``t·w …`` with ``w`` whole vector lanes; Discrete: one
        uniform, word ``t``)."""
        if self.discrete:
            return streams.uniform(Draw.ACT_NOISE, rollout, n_steps).to(torch.float32).view(self.k, n_steps, 1)
        width = -(-self.act_dim // LANES) * LANES
        normal = streams.normal(Draw.ACT_NOISE, rollout, n_steps * width)
        return normal.view(self.k, n_steps, width)[..., : self.act_dim]

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """SB3's ``policy.forward`` for observations ``[K, obs]``: (buffer actions ``[K, A or 1]``, values ``[K]``,
        log-probabilities ``[K]``) with this step's draws ``noise`` ``[K, ·]`` (:meth:`rollout_noise`).

        Box: ``μ + σ·ε``, its log-probability with ``torch.distributions.Normal.log_prob``'s operations (written
        out: building the distribution costs more than the arithmetic, and this runs every env step); Discrete: the
        inverse CDF of the categorical at the uniform draw.
        """
        x = self._obs_tensor(obs)
        out = self.actor(x)[:, :1]
        if self.discrete:
            dist = Categorical(logits=out, validate_args=False)
            cdf = dist.probs.cumsum(dim=-1)
            actions = torch.clamp((cdf <= noise.view(self.k, 1, 1)).sum(dim=-1, keepdim=True), max=self.act_dim - 1)
            actions = actions.to(torch.float32)
            log_prob = dist.log_prob(actions[..., 0].long())
        else:
            std = torch.ones_like(out) * self.log_std.unsqueeze(1).exp()
            actions = torch.addcmul(out, noise.view(self.k, 1, self.act_dim), std)
            log_prob = (-((actions - out) ** 2) / (2 * std**2) - std.log() - LOG_SQRT_2PI).sum(dim=-1)
        return actions[:, 0], self.values(x)[:, 0], log_prob[:, 0]

    def env_actions(self, replay_actions: np.ndarray, active: np.ndarray) -> np.ndarray:
        """SB3's ``collect_rollouts``: Box actions clipped to the space (failed members: its low end stays finite),
        Discrete as integers."""
        if self.discrete:
            return np.where(active, replay_actions[:, 0], 0).astype(np.int64)
        actions = np.where(active[:, None], replay_actions, self.action_space.low)
        return np.clip(actions, self.action_space.low, self.action_space.high)

    def eval_actions(self, obs: np.ndarray) -> np.ndarray:
        """SB3's ``predict(deterministic=True)``: the mean (clipped) or the most likely action."""
        with torch.no_grad():
            out = self.actor(self._obs_tensor(obs))
        out = out[:, 0] if obs.ndim == 2 else out[:, : obs.shape[1]]
        if self.discrete:
            return out.argmax(dim=-1).cpu().numpy()
        return np.clip(np.nan_to_num(out.cpu().numpy()), self.action_space.low, self.action_space.high)

    @property
    def replay_action_dim(self) -> int:
        return 1 if self.discrete else self.act_dim

    # ----------------------------------------------------------------- one minibatch step of every member
    def update(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        old_values: torch.Tensor,
        old_log_prob: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        snapshot_dense: bool = False,
        training: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One PPO minibatch step per member on minibatches ``[K, B, ·]`` (``[K, B]`` for the per-sample scalars);
        SB3's logged quantities ``[K]``, and ``continue_training`` ``[K]`` (bool): the members that took this step.

        ``training`` (bool ``[K]``, default all): the members still training in this ``train()``; the others take no
        step. With ``target_kl``, a member whose approximate KL exceeds ``1.5·target_kl`` takes none either (SB3
        checks before the optimizer step and leaves ``train()``); its losses of this minibatch are still returned.
        """
        dist = self.distribution(obs)
        log_prob, entropy = self.log_prob_entropy(dist, actions)
        values = self.values(obs)
        if self.normalize_advantage and advantages.shape[1] > 1:
            mean, std = advantages.mean(dim=1, keepdim=True), advantages.std(dim=1, keepdim=True)
            advantages = (advantages - mean) / (std + ADVANTAGE_EPSILON)
        ratio = torch.exp(log_prob - old_log_prob)
        clipped = torch.clamp(ratio, 1 - self.clip_range, 1 + self.clip_range)
        policy_loss = -torch.min(advantages * ratio, advantages * clipped).mean(dim=1)
        if self.clip_range_vf is not None:
            values = old_values + torch.clamp(values - old_values, -self.clip_range_vf, self.clip_range_vf)
        value_loss = (returns - values).pow(2).mean(dim=1)
        entropy_loss = -entropy.mean(dim=1)
        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
        with torch.no_grad():
            log_ratio = log_prob - old_log_prob
            approx_kl = ((torch.exp(log_ratio) - 1) - log_ratio).mean(dim=1)
            clip_fraction = ((ratio - 1).abs() > self.clip_range).float().mean(dim=1)
        stepping = None if training is None else training.detach().cpu()
        if self.target_kl is not None:  # SB3: approx_kl_div > 1.5 * target_kl → no step, leave train()
            within = (approx_kl <= 1.5 * self.target_kl).cpu()  # NaN: SB3's comparison is False, it steps on
            within |= torch.isnan(approx_kl).cpu()
            stepping = within if stepping is None else stepping & within
        self.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        clip_member_grad_norm_(self.parameters_per_member(), self.k, self.max_grad_norm)  # SB3: before the masks
        self.finish_gradients_("actor", snapshot_dense)
        self.finish_gradients_("critic", snapshot_dense)
        self.optimizer_step(torch.ones(self.k, dtype=torch.bool) if stepping is None else stepping)
        return {
            "continue_training": torch.ones(self.k, dtype=torch.bool) if stepping is None else stepping,
            "policy_gradient_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "entropy_loss": entropy_loss.detach(),
            "approx_kl": approx_kl,
            "clip_fraction": clip_fraction,
            "loss": loss.detach(),
        }

    @torch.no_grad()
    def optimizer_step(self, stepping: torch.Tensor) -> None:
        """Adam's step of the members ``stepping`` (bool ``[K]``, CPU), each with its own step count ``adam_steps``.

        torch's Adam keeps one ``step`` per parameter tensor; members whose counts differ (one stopped early by
        ``target_kl`` in an earlier ``train()``) are stepped by one call of torch's own Adam per count, the tensor's
        ``step`` set to that count, and the rows of every member not in that call (parameters and moments) put
        back afterwards. All members stepping with one count (no early stop so far): a single plain step.
        """
        counts = sorted({int(c) for c in self.adam_steps[stepping].tolist()})
        params = self.parameters_per_member()
        # after any step here every parameter's state holds the same ``step`` (all get gradients): the first one's tells
        first = self.optimizer.state.get(params[0])
        if len(counts) == 1 and first and int(first["step"]) == counts[0] and bool(stepping.all()):  # the hot path
            self.optimizer.step()
            self.adam_steps += 1
            return
        for count in counts:
            rows = stepping & (self.adam_steps == count)
            for p in params:
                state = self.optimizer.state.get(p)
                if state:
                    state["step"].fill_(count)
            if bool(rows.all()):
                self.optimizer.step()
                continue
            keep = (~rows).to(params[0].device)
            saved = [(p, p[keep].clone(), self.optimizer.state.get(p)) for p in params]
            saved = [(p, value, {n: t[keep].clone() for n, t in (s or {}).items() if n != "step"}) for p, value, s in saved]
            self.optimizer.step()
            for p, value, moments in saved:
                p[keep] = value
                for name, tensor in self.optimizer.state[p].items():
                    if name != "step":  # moments created by this step: a member not in it has none yet (zeros)
                        tensor[keep] = moments[name] if name in moments else 0
        self.adam_steps += stepping.to(torch.int64)

    def train_log(self) -> dict[str, torch.Tensor]:
        """SB3's ``train/std`` (Box actions) and ``train/clip_range`` per member."""
        log = {"clip_range": torch.full((self.k,), self.clip_range, dtype=torch.float64)}  # logged as SB3 logs the float
        if not self.discrete:
            log["std"] = self.log_std.detach().exp().mean(dim=1)
        return log

    def member_problem(self, member: int) -> str | None:
        return None if bool(torch.isfinite(self.log_std[member]).all()) else "non-finite log_std"

    # ----------------------------------------------------------------- SB3 export
    def sb3_layer_pairs(self, member: int, model: BaseAlgorithm) -> Iterator[LayerPair]:
        """Actor hidden layers and ``action_net``; value hidden layers and ``value_net``."""
        policy = model.policy
        nets = ((self.actor, policy.mlp_extractor.policy_net, policy.action_net),
                (self.critic, policy.mlp_extractor.value_net, policy.value_net))  # fmt: skip
        for batched, hidden, head in nets:
            for layer, linear in zip(batched.layers, [*sb3_linears(hidden), head]):
                yield layer, member, [linear]

    def copy_sb3_extras(self, member: int, model: BaseAlgorithm, to_sb3: bool) -> None:
        """The log-std of Box actions."""
        if self.discrete:
            return
        ours, theirs = self.log_std.data[member], model.policy.log_std.data
        (theirs if to_sb3 else ours).copy_(ours if to_sb3 else theirs)
