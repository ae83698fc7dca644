"""Atomic files and checkpoint directories: a crash never leaves a truncated result behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKPOINT_DIR = "checkpoint"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path`` (same directory, so the rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=float)))


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
