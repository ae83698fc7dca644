"""Weight initialisation schemes of the paper's networks, torch only (no SB3, no gymnasium).

Graesser et al. 2022 train networks with the initialisers google-research/rigl gives them:
``rigl/rl/tfagents/dqn_train_eval.py`` (DQN, classic control), ``rigl/rl/tfagents/sac_train_eval.py`` (SAC, Keras
defaults) and ``rigl/rl/dqn_agents.py`` (Atari).

One entry point, :func:`init_linear_`, draws a Linear layer's kernel and bias in place under a named scheme.
``weight`` may carry leading member dimensions (``[..., out, in]``, bias ``[..., out]``, as in a batched
population): fans come from the last two dimensions and every leading index is drawn independently.
The schemes (registry :data:`INIT_SCHEMES`):

- ``glorot_uniform``: U(−L, L), L = sqrt(6 / (fan_in + fan_out)), zero bias (Keras' default, the paper's SAC
  actor and critics).
- ``he_truncated_normal``: Keras ``VarianceScaling(scale=2, mode='fan_in', distribution='truncated_normal')``:
  N(0, σ²) truncated at ±2σ, σ = sqrt(2 / fan_in) / 0.87962566103423978, zero bias (the paper's DQN hidden
  layers, classic control).
- ``uniform``: U(−limit, limit) kernel and a constant bias (``limit`` and ``bias`` are required: the paper's DQN
  output layer uses ``limit=0.03, bias=-0.2``).
- ``torch_default``: what ``torch.nn.Linear.reset_parameters`` does: kernel and bias U(−1/sqrt(fan_in),
  1/sqrt(fan_in)) (SB3's init of SAC and DQN; ``agent.init.mode=sb3``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sparse_rl.registry import Registry

# Keras' truncated-normal correction: the std of a unit normal truncated at ±2 (keras VarianceScaling).
INIT_MODES = ("paper", "sb3")  # agent.init.mode: the schemes of agent.init, or SB3's own init
TRUNCATED_NORMAL_STD = 0.87962566103423978

InitFn = Callable[..., None]
INIT_SCHEMES: Registry[InitFn] = Registry("init scheme")


def _fans(weight: Tensor) -> tuple[int, int]:
    if weight.dim() < 2:
        raise ValueError(f"a Linear kernel has at least 2 dims ([..., out, in]), got shape {tuple(weight.shape)}")
    return int(weight.shape[-1]), int(weight.shape[-2])


def _draw(like: Tensor, generator: torch.Generator | None, fill: Callable[[Tensor], Any]) -> Tensor:
    """A float32 tensor shaped like ``like``, filled by ``fill`` on the generator's device, moved to ``like``'s."""
    device = generator.device if generator is not None else like.device
    out = torch.empty(like.shape, dtype=torch.float32, device=device)
    fill(out)
    return out.to(device=like.device, dtype=like.dtype)


@INIT_SCHEMES.register("glorot_uniform")
def glorot_uniform_(weight: Tensor, bias: Tensor | None, generator: torch.Generator | None = None) -> None:
    """Glorot/Xavier uniform kernel, zero bias (Keras ``glorot_uniform``, ``zeros``)."""
    fan_in, fan_out = _fans(weight)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    weight.copy_(_draw(weight, generator, lambda t: t.uniform_(-limit, limit, generator=generator)))
    if bias is not None:
        bias.zero_()


@INIT_SCHEMES.register("he_truncated_normal")
def he_truncated_normal_(weight: Tensor, bias: Tensor | None, generator: torch.Generator | None = None) -> None:
    """Keras ``VarianceScaling(2.0, 'fan_in', 'truncated_normal')`` kernel, zero bias."""
    fan_in, _ = _fans(weight)
    std = math.sqrt(2.0 / fan_in) / TRUNCATED_NORMAL_STD
    weight.copy_(
        _draw(weight, generator, lambda t: torch.nn.init.trunc_normal_(t, 0.0, std, -2.0 * std, 2.0 * std, generator))
    )
    if bias is not None:
        bias.zero_()


@INIT_SCHEMES.register("uniform")
def uniform_(
    weight: Tensor, bias: Tensor | None, generator: torch.Generator | None = None, *, limit: float, bias_value: float
) -> None:
    """U(−limit, limit) kernel, constant bias."""
    weight.copy_(_draw(weight, generator, lambda t: t.uniform_(-limit, limit, generator=generator)))
    if bias is not None:
        bias.fill_(bias_value)


@INIT_SCHEMES.register("torch_default")
def torch_default_(weight: Tensor, bias: Tensor | None, generator: torch.Generator | None = None) -> None:
    """``nn.Linear.reset_parameters``: kaiming_uniform(a=√5) kernel = U(±1/√fan_in), bias U(±1/√fan_in)."""
    fan_in, _ = _fans(weight)
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    weight.copy_(_draw(weight, generator, lambda t: t.uniform_(-bound, bound, generator=generator)))
    if bias is not None:
        bias.copy_(_draw(bias, generator, lambda t: t.uniform_(-bound, bound, generator=generator)))


@torch.no_grad()
def init_linear_(
    weight: Tensor, bias: Tensor | None, generator: torch.Generator | None = None, /, *, scheme: str, **params: Any
) -> None:
    """Initialise a Linear kernel ``[..., out, in]`` (and bias ``[..., out]``) in place under ``scheme``.

    ``params`` are the scheme's own (``uniform``: ``limit``, ``bias``); a config node
    ``{scheme: uniform, limit: 0.03, bias: -0.2}`` is passed as ``init_linear_(w, b, gen, **node)`` (the first
    three arguments are positional-only, so a ``bias`` parameter does not clash with the bias tensor). A parameter
    whose value is ``None`` is ignored (so a config specialisation can switch schemes by nulling the old params).
    Raises ``KeyError`` naming the valid schemes, ``TypeError`` for a missing or unknown parameter.
    """
    fn = INIT_SCHEMES.get(scheme)
    params = {k: v for k, v in params.items() if v is not None}  # null: not set (a config merge cannot delete keys)
    if "bias" in params:  # the config's name for the constant bias of the ``uniform`` scheme
        params["bias_value"] = params.pop("bias")
    if bias is not None and tuple(bias.shape) != tuple(weight.shape[:-1]):
        raise ValueError(f"bias shape {tuple(bias.shape)} does not match kernel shape {tuple(weight.shape)}")
    fn(weight, bias, generator, **params)


def check_init_node(node: Any, where: str) -> None:
    """Raise ``ValueError`` (one line) if ``node`` (``{scheme: ..., **params}``) is not a valid scheme call."""
    if not node or "scheme" not in node:
        raise ValueError(f"{where} needs a 'scheme'; valid choices: {', '.join(INIT_SCHEMES.names())}")
    params = {k: v for k, v in dict(node).items() if k != "scheme" and v is not None}
    try:
        init_linear_(torch.empty(2, 2), torch.empty(2), None, scheme=node["scheme"], **params)
    except KeyError as error:
        raise ValueError(f"{where}: {error.args[0]}") from error
    except TypeError as error:
        raise ValueError(f"{where}: bad parameters {sorted(params)} for scheme '{node['scheme']}' ({error})") from error
