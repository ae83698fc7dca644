"""Memory a run needs, from its config: what ``hydra.launcher.mem_gb=auto`` requests for each SLURM job.

The replay buffer dominates an off-policy run (SAC Humanoid: 1M transitions of 348-float observations), and a resume
holds one more copy of its largest array while the checkpoint's ``replay_buffer.npz`` is read into it
(experiment/replay_io.py). Everything else (Python, torch, SB3, MuJoCo, the networks, the evaluation env) is the
:data:`BASE_GB`, from the peak RSS of a tiny run.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from omegaconf import DictConfig

GIB = 1024**3
# peak RSS of a 300-step SAC HalfCheetah run on the CPU: 0.46 GB (/usr/bin/time -v python -m sparse_rl.run agent=sac
# env=HalfCheetah agent.total_timesteps=300 ..., 2026-12-03); 2 GB leaves room for CUDA's host-side libraries
BASE_GB = 2.0
MARGIN = 1.25  # headroom for allocator fragmentation and the checkpoint writer's buffers


@cache
def _spaces(env_cfg_yaml: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(observation shape, stored observation dtype, action size) of an env config (one env built, then closed)."""
    from omegaconf import OmegaConf

    from agents.build import stores_float32_observations
    from envs import EnvSpec
    from envs.families import make_single_env

    env = make_single_env(EnvSpec.from_config(OmegaConf.create(env_cfg_yaml)))
    try:
        space = env.observation_space
        dtype = np.dtype(np.float32) if stores_float32_observations(space, normalized=False) else np.dtype(space.dtype)
        action = env.action_space
        return tuple(space.shape or ()), dtype, int(np.prod(action.shape)) if action.shape else 1
    finally:
        env.close()


def replay_bytes(cfg: DictConfig) -> int:
    """Bytes of the run's replay buffer as SB3 allocates it (0 for an on-policy agent): observations and next
    observations in their stored dtype, float32 actions, rewards, dones and timeouts."""
    from omegaconf import OmegaConf

    capacity = OmegaConf.select(cfg, "agent.sb3.buffer_size")
    if capacity is None:
        return 0
    shape, dtype, action_size = _spaces(OmegaConf.to_yaml(cfg.env))
    if cfg.agent.normalize:
        dtype = np.dtype(np.float64) if dtype == np.float32 else dtype
    obs = int(np.prod(shape)) * dtype.itemsize
    optimize = bool(OmegaConf.select(cfg, "agent.sb3.optimize_memory_usage", default=False))
    per_transition = obs * (1 if optimize else 2) + 4 * action_size + 3 * 4
    return int(capacity) * per_transition


def job_mem_gb(cfg: DictConfig) -> int:
    """Whole GB to request for one run: (base + buffer + the resume's extra copy of the observations) × margin."""
    total = replay_bytes(cfg)
    largest_array = total // 2 if total else 0  # observations, read whole from the checkpoint at a resume
    return math.ceil((BASE_GB + (total + largest_array) / GIB) * MARGIN)
