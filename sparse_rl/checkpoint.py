"""Checkpoint directories, swapped in atomically: a crash leaves the previous complete checkpoint."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

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
