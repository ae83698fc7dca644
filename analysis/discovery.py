"""Finding run directories: any directory holding a Hydra ``.hydra/config.yaml``."""

from __future__ import annotations

import os
from pathlib import Path

from experiment.layout import HYDRA_CONFIG


def find_run_dirs(root: str | os.PathLike[str], skip: tuple[str | os.PathLike[str], ...] = ()) -> list[Path]:
    """Run directories under ``root`` (``root`` itself included), sorted; ``skip`` prunes subtrees (e.g. outputs).

    A run directory is not searched further: runs are not nested inside runs.
    """
    root = Path(root)
    skipped = {Path(p).resolve() for p in skip}
    found: list[Path] = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if (here / HYDRA_CONFIG).is_file():
            found.append(here)
            dirnames.clear()
            continue
        dirnames[:] = sorted(d for d in dirnames if d != ".hydra" and (here / d).resolve() not in skipped)
    return sorted(found)
