"""What SB3's ``save`` leaves out but an exact continuation needs, in safe formats only.

``training_state.json``: the envs' internal state (:mod:`envs.state`) and the RNG states of numpy, Python
and the model's action space; ``last_obs.npz``: the observation the next step acts on; ``torch_rng.pt``:
torch's RNG (``torch.load(weights_only=True)``). Plus loggers that continue a run's files at a checkpoint.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import CSVOutputFormat, Logger, TensorBoardOutputFormat
from torch.utils.tensorboard import SummaryWriter

from envs.state import restore_vec_env_states, vec_env_states
from sparse_rl.atomic import atomic_write, atomic_write_json

STEP_COLUMN = "time/total_timesteps"
LAST_OBS_KEYS = ("_last_obs", "_last_episode_starts", "_last_original_obs")


def save_training_state(folder: Path, model: BaseAlgorithm) -> None:
    """Write the env, observation and RNG state of ``model`` into ``folder``."""
    name, keys, *rest = np.random.get_state()
    state = {
        "envs": vec_env_states(model.get_env()),
        "numpy_rng": [name, keys.tolist(), *rest],
        "python_rng": random.getstate(),
        "action_space_rng": model.action_space.np_random.bit_generator.state,
    }
    atomic_write_json(folder / "training_state.json", state)
    arrays = {key: getattr(model, key) for key in LAST_OBS_KEYS if isinstance(getattr(model, key, None), np.ndarray)}

    def write_npz(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, **arrays)

    atomic_write(folder / "last_obs.npz", write_npz)
    atomic_write(folder / "torch_rng.pt", lambda tmp: torch.save(torch.get_rng_state(), tmp))


def restore_training_state(folder: Path, model: BaseAlgorithm) -> bool:
    """Restore :func:`save_training_state`; True if the envs' state was captured completely (exact resume)."""
    state = json.loads((folder / "training_state.json").read_text())
    exact = state["envs"] is not None and all(env["exact"] for env in state["envs"])
    if state["envs"] is not None:
        restore_vec_env_states(model.get_env(), state["envs"])
        with np.load(folder / "last_obs.npz", allow_pickle=False) as arrays:
            for key in arrays.files:
                setattr(model, key, arrays[key])
    name, keys, *rest = state["numpy_rng"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    model.action_space.np_random.bit_generator.state = state["action_space_rng"]
    torch.set_rng_state(torch.load(folder / "torch_rng.pt", weights_only=True))
    return exact


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
    """SB3's TensorBoard log; on resume TensorBoard drops the earlier events past the checkpoint (``purge_step``)."""

    def __init__(self, folder: str, purge_step: int | None = None) -> None:
        self.writer = SummaryWriter(log_dir=folder, purge_step=purge_step)
        self._is_closed = False


def run_logger(folder: Path, tensorboard: bool, resume_at: int | None) -> Logger:
    """SB3 logger writing progress.csv (and TensorBoard events) into ``folder``, continuing at ``resume_at``."""
    formats = [ResumableCSVOutputFormat(str(folder / "progress.csv"), resume_at)]
    if tensorboard:
        formats.append(ResumableTensorBoardOutputFormat(str(folder), resume_at))
    return Logger(str(folder), formats)
