"""Structured schema of the ``python -m sparse_rl.run`` config: a misspelled key fails at once.

Values live in ``configs/`` (each with a comment citing its source); here are only types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from experiment.layout import DENSE_METHOD, DENSE_SPARSITY, EQUAL_PARAMETER_METHOD, method_label
from sparse_rl.config import SparsityConfig

OmegaConf.register_new_resolver("method_label", method_label, replace=True)


def normalize_dense(cfg: Any) -> str | None:
    """Set ``sparsity.sparsity`` of a ``dense`` run to 0 (what it trains); a note if the config said otherwise."""
    if cfg.sparsity.method != DENSE_METHOD or float(cfg.sparsity.sparsity) == DENSE_SPARSITY:
        return None
    given = cfg.sparsity.sparsity
    cfg.sparsity.sparsity = DENSE_SPARSITY
    return (
        f"sparsity=dense trains the standard dense network: sparsity.sparsity={given} is ignored (recorded as "
        f"{DENSE_SPARSITY}); for a dense network with a {given}-sparse network's parameter count use sparsity=dense_matched"
    )


@dataclass
class InitSchema:
    mode: str = MISSING  # paper (the schemes below) or sb3 (SB3's own init)
    hidden: dict[str, Any] | None = None  # {scheme: NAME, **params} for hidden layers (agents/initialization.py)
    output: dict[str, Any] | None = None  # the same for output layers


@dataclass
class AgentSchema:
    name: str = MISSING  # dqn, sac, ppo, td3
    total_timesteps: int = MISSING  # env steps
    n_envs: int = MISSING
    net_arch: Any = MISSING  # hidden sizes, list (shared by actor and critic) or SB3's dict form
    activation: str = MISSING  # torch.nn class name
    lr_schedule: str = MISSING  # constant or linear (to 0)
    normalize: bool = MISSING  # VecNormalize observations and rewards
    eval_freq: int = MISSING  # env steps between evaluations
    eval_episodes: int = MISSING
    weight_decay: float = MISSING  # the paper's Keras L2 coefficient (wd·Σw², kernels only); per group: agents/decay.py
    loss: str | None = None  # DQN's TD loss: mse (the paper's classic control) or huber (SB3's, Dopamine's)
    exploration_noise: float | None = None  # TD3's Gaussian action-noise std in SB3's [-1, 1] action scale
    init: InitSchema = field(default_factory=InitSchema)
    sb3: dict[str, Any] = field(default_factory=dict)  # SB3 constructor kwargs, SB3's names


@dataclass
class EnvSchema:
    name: str = MISSING
    family: str = MISSING
    id: str = MISSING
    action_space: str = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SparsitySchema:
    method: str = MISSING
    sparsity: float = MISSING
    distribution: str = MISSING
    update_interval: int = MISSING  # gradient steps
    start_fraction: float = MISSING
    end_fraction: float = MISSING
    drop_fraction: float = MISSING
    drop_fraction_schedule: str = MISSING
    sparse_init: bool = MISSING
    prune_power: int = MISSING
    wide: bool = MISSING  # Sparse Wide: widen the sparse network to the dense network's active count
    ift: str | None = None  # Sparse Parallel/Factorized/Doped of every hidden Linear layer (sparse_rl/ift.py); null: none
    structure: str | None = None  # N:M structured sparsity, e.g. 2:4 (sparse_rl/structure.py); null: unstructured
    # N:M recipes (sparse_rl/nm_recipes.py; prune with a structure): defaults in configs/sparsity/*.yaml
    structure_decay: Any = None  # sparsify, densify, fine, or a list of stages ending at `structure`
    mask_decay: str = MISSING  # none, step, linear, exponential
    mask_decay_rate: float = MISSING
    sr_ste: bool = MISSING
    sr_ste_lambda: float = MISSING
    actor: float | None = None  # per-group overrides of `sparsity`
    critic: float | None = None
    q: float | None = None


@dataclass
class DiagnosticsSchema:
    freq: int = MISSING  # gradient steps between measurements; 0 turns diagnostics off
    batch_size: int = MISSING  # samples per measurement
    taus: list[float] = MISSING  # dormant-neuron thresholds (ReDo)
    srank_delta: float = MISSING  # effective-rank threshold (Kumar et al. 2021)


@dataclass
class RunSchema:
    agent: AgentSchema = field(default_factory=AgentSchema)
    env: EnvSchema = field(default_factory=EnvSchema)
    sparsity: SparsitySchema = field(default_factory=SparsitySchema)
    seed: int = MISSING
    device: str = MISSING
    torch_threads: int = MISSING
    flush_denormal: bool = MISSING  # CPU: float32 denormals flushed to zero (experiment.numerics)
    tf32: bool = MISSING  # CUDA, population engine: TensorFloat-32 matrix products
    run_root: str = MISSING
    run_dir: str = MISSING
    resume: Any = MISSING  # false, true or auto (experiment.run_dir.RESUME_MODES)
    resume_schedule_change: bool = MISSING  # allow resume=true with a changed schedule-defining key
    checkpoint_freq: int = MISSING  # env steps; 0 disables
    save_replay_buffer: bool = MISSING
    progress_bar: bool = MISSING
    nan_check_freq: int = MISSING  # env steps between checks that every weight is finite
    tensorboard: bool = MISSING
    diagnostics: DiagnosticsSchema = field(default_factory=DiagnosticsSchema)


def core_sparsity_config(sparsity: Any) -> SparsityConfig:
    """The core's :class:`SparsityConfig` from the ``sparsity`` config node (``dense_matched`` trains as ``dense``)."""
    overrides = {group: getattr(sparsity, group) for group in ("actor", "critic", "q") if getattr(sparsity, group) is not None}
    return SparsityConfig(
        method=DENSE_METHOD if sparsity.method == EQUAL_PARAMETER_METHOD else sparsity.method,
        sparsity=DENSE_SPARSITY if sparsity.method == DENSE_METHOD else float(sparsity.sparsity),
        distribution=sparsity.distribution,
        update_interval=int(sparsity.update_interval),
        start_fraction=float(sparsity.start_fraction),
        end_fraction=float(sparsity.end_fraction),
        drop_fraction=float(sparsity.drop_fraction),
        drop_fraction_schedule=sparsity.drop_fraction_schedule,
        sparse_init=bool(sparsity.sparse_init),
        prune_power=int(sparsity.prune_power),
        group_sparsity={k: float(v) for k, v in overrides.items()},
        structure=None if sparsity.structure is None else str(sparsity.structure),
        structure_decay=_structure_decay(sparsity.structure_decay),
        mask_decay=str(sparsity.mask_decay),
        mask_decay_rate=float(sparsity.mask_decay_rate),
        sr_ste=bool(sparsity.sr_ste),
        sr_ste_lambda=float(sparsity.sr_ste_lambda),
    )


def _structure_decay(value: Any) -> str | list[str] | None:
    """``sparsity.structure_decay`` as the core takes it: a name, a list of stage strings, or None."""
    if value is None or isinstance(value, str):
        return value
    return [str(stage) for stage in value]


ConfigStore.instance().store(name="run_schema", node=RunSchema)  # configs/config.yaml's defaults list names it
