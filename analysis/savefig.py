"""Atomic plot writes (file writes themselves live in :mod:`experiment.layout`)."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from experiment.layout import atomic_write


def atomic_savefig(fig: Figure, stem: str | os.PathLike[str], formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Save ``fig`` as ``stem.<fmt>`` for each format, each atomically."""
    return [
        atomic_write(f"{stem}.{fmt}", lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, bbox_inches="tight"))
        for fmt in formats
    ]
