"""What SB3's ``save`` leaves out but an exact continuation needs, in safe formats only.

``training_state.json``: the training and evaluation envs' internal state (:mod:`envs.state`), the RNG
states of numpy, Python and the model's action space, the log records pending at the checkpoint and small
callback state; ``last_obs.npz``: the observation the next step acts on; ``torch_rng.pt``: torch's RNG
(``torch.load(weights_only=True)``); ``vecnormalize.npz``: VecNormalize's statistics. Plus loggers that
continue a run's files at a checkpoint.
"""

from __future__ import annotations

import csv
import json
import random
import zipfile
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import CSVOutputFormat, Logger, TensorBoardOutputFormat
from stable_baselines3.common.save_util import load_from_zip_file, recursive_setattr
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from torch.utils.tensorboard import SummaryWriter

from envs.state import innermost_vec_env, restore_vec_env_states, vec_env_states
from experiment.checkpoint import latest_checkpoint
from experiment.layout import PROGRESS_FILE, atomic_write, atomic_write_json, atomic_write_npz

STEP_COLUMN = "time/total_timesteps"
LAST_OBS_KEYS = ("_last_obs", "_last_episode_starts", "_last_original_obs")
EPISODE_BUFFERS = ("ep_info_buffer", "ep_success_buffer")  # rollout/ep_rew_mean, ep_len_mean, success_rate


def _eval_env_states(eval_env: VecEnv | None) -> list[dict[str, Any]] | None:
    """The evaluation envs' state, or ``None`` if they have not run yet (their seeds are still pending)."""
    if eval_env is None or any(seed is not None for seed in innermost_vec_env(eval_env)._seeds):
        return None
    return vec_env_states(eval_env)


def _pending_logs(logger: Logger) -> dict[str, Any]:
    """What ``logger`` recorded since its last dump (written into the next row)."""
    values = {k: v for k, v in logger.name_to_value.items() if isinstance(v, int | float | np.number)}
    return {
        "values": values,
        "counts": {k: v for k, v in logger.name_to_count.items() if k in values},
        "excluded": {k: list(v) for k, v in logger.name_to_excluded.items() if k in values},
    }


def restore_pending_logs(folder: Path, logger: Logger) -> None:
    """Put the records pending at the checkpoint back into ``logger``, so the next row equals the uninterrupted one."""
    pending = json.loads((folder / "training_state.json").read_text()).get("pending_logs")
    if pending is None:
        return
    logger.name_to_value.update(pending["values"])
    logger.name_to_count.update(pending["counts"])
    logger.name_to_excluded.update({k: tuple(v) for k, v in pending["excluded"].items()})


def load_checkpoint_model(model: BaseAlgorithm, path: Path) -> None:
    """Load a checkpoint's ``model.zip`` into ``model``, built from the run's config, without unpickling anything.

    SB3's ``load`` unpickles (cloudpickle) the spaces, schedules, policy class and episode buffers stored in
    the archive's ``data``: loading someone else's checkpoint would run their code. Here the plain JSON
    entries of ``data`` are set on the model (as SB3's ``load`` does), tensors load with
    ``torch.load(weights_only=True)``, and the pickled entries are not read: the config rebuilds them, and
    the observation and episode statistics come from ``last_obs.npz`` and ``training_state.json``.
    """
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data"))
    for key, value in data.items():
        if not (isinstance(value, dict) and ":serialized:" in value):
            setattr(model, key, value)
    _, params, variables = load_from_zip_file(path, device=model.device, load_data=False)
    model.set_parameters(params, exact_match=True, device=model.device)
    for name, value in (variables or {}).items():  # e.g. SAC's log_ent_coef
        if value is not None:
            recursive_setattr(model, f"{name}.data", value.data)


def _episode_buffers(model: BaseAlgorithm) -> dict[str, list | None]:
    return {name: None if getattr(model, name) is None else list(getattr(model, name)) for name in EPISODE_BUFFERS}


def save_training_state(
    folder: Path, model: BaseAlgorithm, eval_env: VecEnv | None = None, callbacks: dict[str, Any] | None = None
) -> None:
    """Write the env, evaluation env, observation, RNG and pending-log state of ``model`` into ``folder``.

    ``callbacks``: small JSON state of callbacks (read back with :func:`callback_state`).
    """
    name, keys, *rest = np.random.get_state()
    state = {
        "envs": vec_env_states(model.get_env()),
        "eval_envs": _eval_env_states(eval_env),
        "numpy_rng": [name, keys.tolist(), *rest],
        "python_rng": random.getstate(),
        "action_space_rng": model.action_space.np_random.bit_generator.state,
        "pending_logs": _pending_logs(model.logger),
        "episode_buffers": _episode_buffers(model),
        "callbacks": callbacks or {},
    }
    atomic_write_json(folder / "training_state.json", state)
    arrays = {key: getattr(model, key) for key in LAST_OBS_KEYS if isinstance(getattr(model, key, None), np.ndarray)}
    atomic_write_npz(folder / "last_obs.npz", arrays)
    atomic_write(folder / "torch_rng.pt", lambda tmp: torch.save(torch.get_rng_state(), tmp))
    if isinstance(model.get_env(), VecNormalize):
        save_vec_normalize(model.get_env(), folder / VEC_NORMALIZE_FILE)


def callback_state(folder: Path) -> dict[str, Any]:
    """The ``callbacks`` given to :func:`save_training_state`."""
    return json.loads((folder / "training_state.json").read_text()).get("callbacks", {})


def restore_training_state(folder: Path, model: BaseAlgorithm, eval_env: VecEnv | None = None) -> bool:
    """Restore :func:`save_training_state`; True if the envs' state was captured completely (exact resume)."""
    state = json.loads((folder / "training_state.json").read_text())
    exact = state["envs"] is not None and all(env["exact"] for env in state["envs"])
    if state["envs"] is not None:
        restore_vec_env_states(model.get_env(), state["envs"])
    if exact:  # otherwise the envs restarted their episodes: SB3 takes the first observation from a reset
        with np.load(folder / "last_obs.npz", allow_pickle=False) as arrays:
            for key in arrays.files:
                setattr(model, key, arrays[key])
    for name, episodes in state.get("episode_buffers", {}).items():
        if episodes is not None:
            setattr(model, name, deque(episodes, maxlen=model._stats_window_size))
    if eval_env is not None and state.get("eval_envs") is not None:
        restore_vec_env_states(eval_env, state["eval_envs"])
    name, keys, *rest = state["numpy_rng"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    model.action_space.np_random.bit_generator.state = state["action_space_rng"]
    torch.set_rng_state(torch.load(folder / "torch_rng.pt", weights_only=True))
    return exact


# VecNormalize's statistics, without pickle (SB3's VecNormalize.save pickles the wrapper). SB3's own pickle
# drops ``returns``; keeping it makes the reward normalisation continue exactly.
VEC_NORMALIZE_FILE = "vecnormalize.npz"
RMS_FIELDS = ("mean", "var", "count")


def vec_normalize_file(run_dir: Path) -> Path | None:
    """Where a run directory keeps its VecNormalize statistics: its last checkpoint's (the SB3 path), else next to
    ``model.zip`` (a population member's export, docs/design.md decision 41); ``None`` if neither exists."""
    checkpoint = latest_checkpoint(run_dir)
    for path in ([] if checkpoint is None else [checkpoint / VEC_NORMALIZE_FILE]) + [run_dir / VEC_NORMALIZE_FILE]:
        if path.is_file():
            return path
    return None


def save_vec_normalize(venv: VecNormalize, path: Path) -> None:
    """Write ``venv``'s running statistics, discounted returns and last raw observation/reward to ``path``."""
    arrays: dict[str, np.ndarray] = {"returns": venv.returns, "old_reward": np.asarray(venv.old_reward)}
    rms = venv.obs_rms if isinstance(venv.obs_rms, dict) else {"": venv.obs_rms}
    for key, stats in [*((f"obs_rms/{k}" if k else "obs_rms", v) for k, v in rms.items()), ("ret_rms", venv.ret_rms)]:
        for field in RMS_FIELDS:
            arrays[f"{key}/{field}"] = np.asarray(getattr(stats, field))
    if isinstance(getattr(venv, "old_obs", None), np.ndarray):
        arrays["old_obs"] = venv.old_obs
    atomic_write_npz(path, arrays)


def load_vec_normalize(path: Path, venv: VecNormalize) -> None:
    """Restore :func:`save_vec_normalize` into ``venv`` (built with the run's own VecNormalize settings)."""
    with np.load(path, allow_pickle=False) as data:
        rms = venv.obs_rms if isinstance(venv.obs_rms, dict) else {"": venv.obs_rms}
        for key, stats in [*((f"obs_rms/{k}" if k else "obs_rms", v) for k, v in rms.items()), ("ret_rms", venv.ret_rms)]:
            for field in RMS_FIELDS:
                value = data[f"{key}/{field}"]
                setattr(stats, field, float(value) if field == "count" else value.copy())
        venv.returns = data["returns"].copy()
        venv.old_reward = data["old_reward"].copy()
        if "old_obs" in data.files:
            venv.old_obs = data["old_obs"].copy()


class ResumableCSVOutputFormat(CSVOutputFormat):
    """SB3's CSV log that, on resume, keeps the rows up to the checkpoint and continues after them."""

    def __init__(self, filename: str, keep_until: int | None = None) -> None:
        rows: list[dict[str, Any]] = []
        keys: list[str] = []
        if keep_until is not None and Path(filename).exists():
            with open(filename, newline="") as f:
                reader = csv.DictReader(f)
                keys = list(reader.fieldnames or [])
                rows = [row for row in reader if row.get(STEP_COLUMN) and float(row[STEP_COLUMN]) <= keep_until]
        super().__init__(filename)
        if keys:
            self.keys = keys
            writer = csv.DictWriter(self.file, fieldnames=keys, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            self.file.flush()


class ResumableTensorBoardOutputFormat(TensorBoardOutputFormat):
    """SB3's TensorBoard log; on resume TensorBoard drops the earlier events from ``purge_step`` on.

    A checkpoint at env step ``T`` is taken after everything logged at step ``T`` (rollout start), so a
    resume purges from ``T + 1``: purging from ``T`` would drop the evaluation logged at ``T`` for good.
    """

    def __init__(self, folder: str, purge_step: int | None = None) -> None:
        self.writer = SummaryWriter(log_dir=folder, purge_step=purge_step)
        self._is_closed = False


def run_logger(folder: Path, tensorboard: bool, resume_at: int | None) -> Logger:
    """SB3 logger writing progress.csv (and TensorBoard events) into ``folder``, continuing at ``resume_at``."""
    formats = [ResumableCSVOutputFormat(str(folder / PROGRESS_FILE), resume_at)]
    if tensorboard:
        formats.append(ResumableTensorBoardOutputFormat(str(folder), None if resume_at is None else resume_at + 1))
    return Logger(str(folder), formats)
