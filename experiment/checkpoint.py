"""Checkpoint directories, swapped in atomically: a crash leaves the previous complete checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from experiment.layout import CONTROLLER_FILE, MODEL_FILE, REPLAY_FILE, atomic_write_json

CHECKPOINT_DIR = "checkpoint"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, read-only file system); the previous one is intact.

    Its message is one line: the folder, the system's reason, and which checkpoint a resume continues from.
    """

    def __str__(self) -> str:
        return str(self.strerror)


def write_checkpoint(run_dir: Path, write_files: Callable[[Path], None], num_timesteps: int) -> None:
    """Fill a fresh directory with ``write_files(dir)`` and ``meta.json`` (step and file list, written last),
    then swap it in for ``run_dir/checkpoint``.

    An ``OSError`` while writing (``ENOSPC``: disk full) leaves the previous checkpoint in place, removes the
    partial copy (freeing its space for the summary that records the failure) and is raised as
    :class:`CheckpointWriteError`.
    """
    final = run_dir / CHECKPOINT_DIR
    old = run_dir / f"{CHECKPOINT_DIR}.old"
    staging: Path | None = None
    try:
        staging = Path(tempfile.mkdtemp(dir=run_dir, prefix=".checkpoint."))
        write_files(staging)
        files = sorted(p.name for p in staging.iterdir())
        atomic_write_json(staging / "meta.json", {"num_timesteps": num_timesteps, "files": files})
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    except CheckpointWriteError:
        raise
    except OSError as error:
        previous = checkpoint_step(run_dir)
        kept = "no earlier checkpoint exists" if previous is None else f"the checkpoint of env step {previous} is intact"
        reason = error.strerror or str(error)
        raise CheckpointWriteError(
            error.errno,
            f"cannot write the checkpoint of env step {num_timesteps} in {run_dir} ({reason}); {kept}; "
            "free space, then continue with resume=true",
        ) from error
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The last complete checkpoint directory of a run (the previous one if a swap was interrupted)."""
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old"):
        candidate = run_dir / name
        if (candidate / "meta.json").exists():
            return candidate
    return None


def checkpoint_step(run_dir: Path) -> int | None:
    """The env step of the run's last complete checkpoint (``meta.json``), ``None`` if it has none or it is unreadable."""
    folder = latest_checkpoint(run_dir)
    if folder is None:
        return None
    try:
        return int(json.loads((folder / "meta.json").read_text())["num_timesteps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# Keys that must equal the checkpoint's: they define the networks and what is being trained (a key absent from a
# saved config reads None, its default: sparsity.ift of runs saved before it existed).
RESUME_IDENTITY_KEYS = (
    "agent.name", "agent.net_arch", "agent.activation", "env.name", "sparsity.method", "sparsity.sparsity",
    "sparsity.distribution", "sparsity.wide", "sparsity.ift", "sparsity.structure", "sparsity.actor", "sparsity.critic",
    "sparsity.q", "seed",
)  # fmt: skip
CHECKPOINT_FILES = ("meta.json", MODEL_FILE, CONTROLLER_FILE, "training_state.json", "torch_rng.pt")
SB3_ARCHIVE_MEMBERS = ("data", "policy.pth")  # what stable-baselines3's save always writes
PICKLED_FILES = ("replay_buffer.pkl", "vecnormalize.pkl")  # written by earlier versions; never unpickled


def _check_zip(path: Path) -> None:
    """Every member of a zip archive (``.zip``, ``.npz``) reads back with a matching CRC."""
    with zipfile.ZipFile(path) as archive:  # a truncated file may still open (nested zips)
        bad = archive.testzip()
    if bad is not None:
        raise ValueError(f"bad member {bad}")


def _check_model_zip(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        missing = set(SB3_ARCHIVE_MEMBERS) - set(archive.namelist())
    if missing:
        raise ValueError(f"missing {sorted(missing)}")
    _check_zip(path)


def _check_npz(path: Path) -> None:
    _check_zip(path)
    with np.load(path, allow_pickle=False) as data:
        for name in data.files:
            data[name]


CHECKERS: dict[str, Callable[[Path], Any]] = {
    ".json": lambda path: json.loads(path.read_text()),
    ".zip": _check_model_zip,
    ".npz": _check_npz,
    ".pt": lambda path: torch.load(path, weights_only=True),
}


def checkpoint_file_problem(checkpoint: Path) -> str | None:
    """The first file of ``checkpoint`` that is missing, unreadable or a pickle, as one line; ``None`` if all read."""
    if not (checkpoint / "meta.json").is_file():
        return f"checkpoint {checkpoint} lacks meta.json"
    try:
        meta = json.loads((checkpoint / "meta.json").read_text())
        meta["num_timesteps"]
    except Exception as error:
        return f"checkpoint file {checkpoint / 'meta.json'} is corrupt ({type(error).__name__}: {error})".splitlines()[0]
    for name in meta.get("files", CHECKPOINT_FILES):  # the files written before meta.json (older checkpoints: the core)
        if not (checkpoint / name).is_file():
            return f"checkpoint {checkpoint} lacks {name}"
    for path in sorted(checkpoint.iterdir()):
        if path.name in PICKLED_FILES:
            return f"checkpoint file {path} is a pickle (written by an earlier version); it is never loaded"
        check = CHECKERS.get(path.suffix)
        if check is None or not path.is_file():
            continue
        try:
            check(path)
        except Exception as error:  # any unreadable file is a corrupt checkpoint
            return f"checkpoint file {path} is corrupt ({type(error).__name__}: {error})".splitlines()[0]
    return None


def _replay_problem(checkpoint: Path, cfg: Any) -> str | None:
    """Whether the saved replay buffer fits the configured one (capacity per env, as SB3 allocates it)."""
    path = checkpoint / REPLAY_FILE
    capacity = OmegaConf.select(cfg, "agent.sb3.buffer_size")
    if not path.is_file() or capacity is None:
        return None
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(bytes(data["meta_json"]).decode())
    ours = max(int(capacity) // int(cfg.agent.n_envs), 1)
    if (meta["buffer_size"], meta["n_envs"]) != (ours, int(cfg.agent.n_envs)):
        return (
            f"checkpoint {path} holds a replay buffer of {meta['buffer_size']} x {meta['n_envs']} envs, this config "
            f"gives {ours} x {cfg.agent.n_envs} (agent.sb3.buffer_size, agent.n_envs)"
        )
    return None


def checkpoint_problem(run_dir: Path, checkpoint: Path, cfg: Any) -> str | None:
    """Why ``checkpoint`` cannot continue ``cfg`` (missing or corrupt file, other architecture), or ``None`` if it can.

    Every file is read completely (JSON parsed, zip/npz CRCs checked, ``.pt`` loaded with ``weights_only``).
    """
    if (problem := checkpoint_file_problem(checkpoint)) is not None:
        return problem
    if (problem := _replay_problem(checkpoint, cfg)) is not None:
        return problem
    saved_path = run_dir / ".hydra" / "config.yaml"
    if not saved_path.is_file():
        return f"{saved_path} is missing: cannot check that the checkpoint matches this config"
    if (difference := first_difference(cfg, OmegaConf.load(saved_path), RESUME_IDENTITY_KEYS)) is not None:
        key, theirs, ours = difference
        return f"checkpoint was made with {key}={theirs}, this config has {key}={ours} (another architecture or run)"
    return None


def first_difference(cfg: Any, saved: Any, keys: tuple[str, ...]) -> tuple[str, Any, Any] | None:
    """The first of ``keys`` whose value differs between ``saved`` and ``cfg``: ``(key, saved value, cfg value)``."""
    for key in keys:
        ours, theirs = OmegaConf.select(cfg, key), OmegaConf.select(saved, key)
        ours = OmegaConf.to_container(ours) if OmegaConf.is_config(ours) else ours
        theirs = OmegaConf.to_container(theirs) if OmegaConf.is_config(theirs) else theirs
        if ours != theirs:
            return key, theirs, ours
    return None


# Keys that define the sparsity schedule (the run's gradient-step count and the update window): changing one on
# resume silently moves the schedule (e.g. doubling total_timesteps halves RigL's drop fraction at the resume point).
RESUME_SCHEDULE_KEYS = (
    "agent.total_timesteps", "agent.n_envs", "agent.sb3.learning_starts", "agent.sb3.train_freq",
    "agent.sb3.gradient_steps", "agent.sb3.policy_delay", "agent.sb3.n_steps", "agent.sb3.batch_size", "agent.sb3.n_epochs",
    "sparsity.update_interval", "sparsity.start_fraction", "sparsity.end_fraction", "sparsity.drop_fraction",
    "sparsity.drop_fraction_schedule", "sparsity.prune_power",
)  # fmt: skip


# The N:M recipes (decision 33) change what trains, not only when: compared only where the saved config has them
# (runs saved before they existed trained without them, which is their default).
RESUME_RECIPE_KEYS = (
    "sparsity.structure_decay", "sparsity.mask_decay", "sparsity.mask_decay_rate", "sparsity.sr_ste",
    "sparsity.sr_ste_lambda",
)  # fmt: skip


def schedule_change(run_dir: Path, cfg: Any) -> str | None:
    """One line naming the first schedule-defining key whose value differs from the run's saved config, else None."""
    saved_path = run_dir / ".hydra" / "config.yaml"
    if not saved_path.is_file():
        return None  # checkpoint_problem reports the missing config
    saved = OmegaConf.load(saved_path)
    recipe_keys = tuple(k for k in RESUME_RECIPE_KEYS if OmegaConf.select(saved, k, default="<absent>") != "<absent>")
    difference = first_difference(cfg, saved, RESUME_SCHEDULE_KEYS + recipe_keys)
    if difference is None:
        return None
    key, theirs, ours = difference
    return (
        f"checkpoint was made with {key}={theirs}, this config has {key}={ours}: that moves the sparsity "
        "schedule; pass resume_schedule_change=true to continue anyway"
    )
