"""Environment factory: ``configs/env/**.yaml`` -> :class:`EnvSpec` -> single env or SB3 ``VecEnv``."""

from envs.catalog import CONFIGS_DIR, available_env_names, check_action_space, load_env_spec
from envs.families import FAMILIES, action_space_kind, make_single_env
from envs.spec import ACTION_SPACES, EnvSpec
from envs.vec import EVAL_SEED_OFFSET, FRAME_STACK, make_vec_env

__all__ = [
    "ACTION_SPACES",
    "CONFIGS_DIR",
    "EVAL_SEED_OFFSET",
    "FAMILIES",
    "FRAME_STACK",
    "EnvSpec",
    "action_space_kind",
    "available_env_names",
    "check_action_space",
    "load_env_spec",
    "make_single_env",
    "make_vec_env",
]
