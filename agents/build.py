"""Build an SB3 model from the agent config and put a topology controller on it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from torch import nn

from agents.decay import kernel_decay
from agents.initialization import INIT_MODES, check_init_node
from agents.rules import check_agent_values
from agents.spec import AgentSpec, agent_spec
from sparse_rl.config import SparsityConfig
from sparse_rl.controller import TopologyController


def observation_kind(space: spaces.Space) -> str:
    """``cnn`` for image observations (SB3's check), else ``mlp``."""
    return "cnn" if is_image_space(space) else "mlp"


LR_SCHEDULES = ("constant", "linear")


def _linear_schedule(initial: float):
    """Learning rate decayed linearly to 0 over training (SB3 passes the remaining progress 1 → 0)."""
    return lambda progress_remaining: progress_remaining * initial


def check_agent_config(agent_cfg: Mapping[str, Any]) -> None:
    """Validate the ``agent`` config node: every number against its declared range (:mod:`agents.rules`: budgets,
    SB3 kwargs, optimizer kwargs, batch vs buffer), ``lr_schedule``, no bias-decaying ``optimizer_kwargs.weight_decay``,
    ``init`` (mode and scheme nodes), then the agent's own rules (:meth:`agents.spec.AgentSpec.check_config`). Raises
    a one-line ``ValueError`` naming the key and valid choices."""
    check_agent_values(agent_cfg)
    if agent_cfg.get("lr_schedule") not in LR_SCHEDULES:
        raise ValueError(
            f"unknown agent.lr_schedule '{agent_cfg.get('lr_schedule')}'; valid choices: {', '.join(LR_SCHEDULES)}"
        )
    policy_kwargs = (agent_cfg.get("sb3") or {}).get("policy_kwargs") or {}
    if "ift" in policy_kwargs:
        raise ValueError(
            "agent.sb3.policy_kwargs.ift is set from sparsity.ift (Sparse-IFT: parallel, factorized, doped) and the "
            "group sparsities; use sparsity.ift=KIND"
        )
    if (policy_kwargs.get("optimizer_kwargs") or {}).get("weight_decay") is not None:
        raise ValueError(
            "agent.sb3.policy_kwargs.optimizer_kwargs.weight_decay would decay biases too; set agent.weight_decay "
            "(the paper's L2 coefficient, applied to kernels per group)"
        )
    spec = agent_spec(agent_cfg["name"])
    kernel_decay(spec, agent_cfg["weight_decay"], agent_cfg.get("loss"))
    init = agent_cfg.get("init") or {}
    mode = init.get("mode", "sb3")
    if mode not in INIT_MODES:
        raise ValueError(f"unknown agent.init.mode '{mode}'; valid choices: {', '.join(INIT_MODES)}")
    spec.check_config(agent_cfg)
    if mode == "paper":
        check_init_node(init.get("hidden"), "agent.init.hidden")
        check_init_node(init.get("output"), "agent.init.output")


def sb3_kwargs(agent_cfg: Mapping[str, Any], net_arch: Any, ift: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """SB3 constructor kwargs: ``agent.sb3`` plus net_arch, activation, the learning-rate schedule, the paper's
    initialisation (``agent.init``), per-group kernel decay (``agent.weight_decay``), DQN's ``agent.loss``
    (``agent_cfg`` checked by :func:`check_agent_config`) and the Sparse-IFT transformation ``ift``
    (:func:`ift_kwarg`; the policy stores it, so a plain SB3 ``load`` rebuilds the layers)."""
    check_agent_config(agent_cfg)
    kwargs = dict(agent_cfg["sb3"])
    policy_kwargs = dict(kwargs.pop("policy_kwargs", None) or {})
    policy_kwargs["net_arch"] = net_arch
    policy_kwargs["activation_fn"] = getattr(nn, agent_cfg["activation"])
    loss = agent_cfg.get("loss")
    policy_kwargs["kernel_decay"] = kernel_decay(agent_cfg["name"], agent_cfg["weight_decay"], loss)
    policy_kwargs["init"] = dict(agent_cfg["init"])
    if ift is not None:
        policy_kwargs["ift"] = dict(ift)
    kwargs["policy_kwargs"] = policy_kwargs
    if loss is not None:
        kwargs["loss"] = loss
    if agent_cfg["lr_schedule"] == "linear":
        kwargs["learning_rate"] = _linear_schedule(kwargs["learning_rate"])
    return kwargs


class Float32ObservationReplayBuffer(ReplayBuffer):
    """SB3's ``ReplayBuffer`` storing float64 ``Box`` observations as float32: half the memory and checkpoint size.

    What the networks see is unchanged bit for bit: SB3's ``preprocess_obs`` casts a ``Box`` observation to float32
    before any layer (``stable_baselines3/common/preprocessing.py``), with the same round-to-nearest cast that numpy
    applies here when a transition is stored (SB3 already stores float64 actions as float32: ``_maybe_cast_dtype``).
    Used only without ``VecNormalize``, which normalises stored observations in float64 (:func:`replay_buffer_kwargs`).
    """

    def __init__(self, buffer_size: int, observation_space: spaces.Space, *args: Any, **kwargs: Any) -> None:
        assert isinstance(observation_space, spaces.Box)
        low, high = observation_space.low.astype(np.float32), observation_space.high.astype(np.float32)
        super().__init__(buffer_size, spaces.Box(low, high, dtype=np.float32), *args, **kwargs)


def stores_float32_observations(observation_space: spaces.Space, normalized: bool) -> bool:
    """Whether :class:`Float32ObservationReplayBuffer` applies: float64 ``Box`` observations, not image, not normalised."""
    return (
        isinstance(observation_space, spaces.Box)
        and observation_space.dtype == np.float64
        and not is_image_space(observation_space)
        and not normalized
    )


def replay_buffer_kwargs(spec: AgentSpec, env: VecEnv, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``replay_buffer_class`` for an off-policy agent whose observations are float64 (unless ``agent.sb3`` names one)."""
    if not issubclass(spec.algo, OffPolicyAlgorithm) or kwargs.get("replay_buffer_class") is not None:
        return {}
    if not stores_float32_observations(env.observation_space, isinstance(env, VecNormalize)):
        return {}
    return {"replay_buffer_class": Float32ObservationReplayBuffer}


def build_model(
    spec: AgentSpec,
    agent_cfg: Mapping[str, Any],
    env: VecEnv,
    *,
    net_arch: Any,
    sparse: bool,
    seed: int,
    device: str,
    tensorboard_log: str | None = None,
    ift: Mapping[str, Any] | None = None,
) -> BaseAlgorithm:
    """A fresh SB3 model; sparse methods get the mask-carrying policy class (``ift``: :func:`ift_kwarg`)."""
    policy = spec.policy(observation_kind(env.observation_space), sparse)
    kwargs = sb3_kwargs(agent_cfg, net_arch, ift)
    kwargs.update(replay_buffer_kwargs(spec, env, kwargs))
    if agent_cfg.get("exploration_noise") is not None:
        kwargs["action_noise"] = exploration_noise(float(agent_cfg["exploration_noise"]), env.action_space)
    return spec.algo(policy, env, seed=seed, device=device, tensorboard_log=tensorboard_log, verbose=0, **kwargs)


def ift_kwarg(kind: str | None, group_sparsity: Mapping[str, float]) -> dict[str, Any] | None:
    """The policy's ``ift`` argument (:mod:`agents.policies`) for ``sparsity.ift=kind``: every hidden Linear layer of
    a group's networks becomes Sparse Parallel, Factorized or Doped at that group's sparsity; ``None`` without."""
    if kind is None:
        return None
    return {"kind": str(kind), "sparsity": {group: float(s) for group, s in group_sparsity.items()}}


def exploration_noise(sigma: float, action_space: spaces.Space) -> NormalActionNoise:
    """Gaussian exploration noise N(0, sigma) per action dimension, in SB3's [-1, 1] action scale (TD3; Fujimoto
    et al. 2018 §6.1 add N(0, 0.1·max_action) to the actor's action, the same in a [-1, 1]-rescaled space)."""
    if sigma < 0:
        raise ValueError(f"agent.exploration_noise must be >= 0, got {sigma}")
    shape = action_space.shape
    return NormalActionNoise(mean=np.zeros(shape), sigma=sigma * np.ones(shape))


def attach_controller(
    model: BaseAlgorithm, spec: AgentSpec, config: SparsityConfig, total_timesteps: int, seed: int, existing: bool = False
) -> TopologyController:
    """A controller over the model's groups, clocked by gradient steps (the optimizer's ``step`` calls).

    The clock runs in an optimizer post-step hook, so topology changes happen between two gradient steps —
    as in the paper's trainers — without touching SB3's training loops.
    """
    release = getattr(model.policy, "release_mask_guard", None)
    if release is not None:  # the controller masks gradients itself (and RigL needs them dense first)
        release()
    stride = spec.clock_stride(model) if spec.clock_stride is not None else 1
    total_steps = spec.gradient_steps(model, total_timesteps)
    controller = TopologyController(spec.groups(model), config, total_steps, seed, tick_steps=stride)
    controller.init_masks(existing=existing)
    spec.clock_optimizer(model).register_step_post_hook(lambda optimizer, args, kwargs: controller.tick())
    return controller
