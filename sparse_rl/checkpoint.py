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

import torch
from omegaconf import OmegaConf

CHECKPOINT_DIR = "checkpoint"


def write_checkpoint(run_dir: Path, write_files: Callable[[Path], None]) -> None:
    """Fill a fresh directory with ``write_files(dir)``, then swap it in for ``run_dir/checkpoint``."""
    final = run_dir / CHECKPOINT_DIR
    staging = Path(tempfile.mkdtemp(dir=run_dir, prefix=".checkpoint."))
    old = run_dir / f"{CHECKPOINT_DIR}.old"
    try:
        write_files(staging)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The last complete checkpoint directory of a run (the previous one if a swap was interrupted)."""
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old"):
        candidate = run_dir / name
        if (candidate / "meta.json").exists():
            return candidate
    return None


# Keys that must equal the checkpoint's: they define the networks and what is being trained.
RESUME_IDENTITY_KEYS = (
    "agent.name", "agent.net_arch", "agent.activation", "env.name", "sparsity.method", "sparsity.sparsity",
    "sparsity.distribution", "sparsity.wide", "sparsity.actor", "sparsity.critic", "sparsity.q", "seed",
)  # fmt: skip
CHECKPOINT_FILES = ("meta.json", "model.zip", "controller.pt")
SB3_ARCHIVE_MEMBERS = ("data", "policy.pth")  # what stable-baselines3's save always writes


def checkpoint_problem(run_dir: Path, checkpoint: Path, cfg: Any) -> str | None:
    """Why ``checkpoint`` cannot continue ``cfg`` (corrupt file, other architecture), or ``None`` if it can."""
    for name in CHECKPOINT_FILES:
        if not (checkpoint / name).is_file():
            return f"checkpoint {checkpoint} lacks {name}"
    try:
        json.loads((checkpoint / "meta.json").read_text())["num_timesteps"]
        with zipfile.ZipFile(checkpoint / "model.zip") as archive:  # a truncated file may still open (nested zips)
            missing = set(SB3_ARCHIVE_MEMBERS) - set(archive.namelist())
            bad = archive.testzip()
        if missing or bad is not None:
            return f"checkpoint {checkpoint}/model.zip is corrupt (missing {sorted(missing)}, bad member {bad})"
        torch.load(checkpoint / "controller.pt", weights_only=True)
    except Exception as error:  # any unreadable file is a corrupt checkpoint
        return f"checkpoint {checkpoint} is corrupt ({type(error).__name__}: {error})".splitlines()[0]
    saved_path = run_dir / ".hydra" / "config.yaml"
    if not saved_path.is_file():
        return f"{saved_path} is missing: cannot check that the checkpoint matches this config"
    saved = OmegaConf.load(saved_path)
    for key in RESUME_IDENTITY_KEYS:
        ours, theirs = OmegaConf.select(cfg, key), OmegaConf.select(saved, key)
        ours = OmegaConf.to_container(ours) if OmegaConf.is_config(ours) else ours
        theirs = OmegaConf.to_container(theirs) if OmegaConf.is_config(theirs) else theirs
        if ours != theirs:
            return f"checkpoint was made with {key}={theirs}, this config has {key}={ours} (another architecture or run)"
    return None


# Keys that define the sparsity schedule (the run's gradient-step count and the update window): changing one on
# resume silently moves the schedule (e.g. doubling total_timesteps halves RigL's drop fraction at the resume point).
RESUME_SCHEDULE_KEYS = (
    "agent.total_timesteps", "agent.n_envs", "agent.sb3.learning_starts", "agent.sb3.train_freq",
    "agent.sb3.gradient_steps", "agent.sb3.n_steps", "agent.sb3.batch_size", "agent.sb3.n_epochs",
    "sparsity.update_interval", "sparsity.start_fraction", "sparsity.end_fraction", "sparsity.drop_fraction",
    "sparsity.drop_fraction_schedule", "sparsity.prune_power",
)  # fmt: skip


def schedule_change(run_dir: Path, cfg: Any) -> str | None:
    """One line naming the first schedule-defining key whose value differs from the run's saved config, else None."""
    saved_path = run_dir / ".hydra" / "config.yaml"
    if not saved_path.is_file():
        return None  # checkpoint_problem reports the missing config
    saved = OmegaConf.load(saved_path)
    for key in RESUME_SCHEDULE_KEYS:
        ours, theirs = OmegaConf.select(cfg, key), OmegaConf.select(saved, key)
        ours = OmegaConf.to_container(ours) if OmegaConf.is_config(ours) else ours
        theirs = OmegaConf.to_container(theirs) if OmegaConf.is_config(theirs) else theirs
        if ours != theirs:
            return (
                f"checkpoint was made with {key}={theirs}, this config has {key}={ours}: that moves the sparsity "
                "schedule; pass resume_schedule_change=true to continue anyway"
            )
    return None
