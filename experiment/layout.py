"""A run directory's layout: its file names, how a run is labelled, how it is scored, how its files are written.

The one module of the experiment layer that :mod:`analysis` imports (it reads what runs wrote). Writes are atomic:
a temporary file in the target directory, then ``os.replace``, so a crash never leaves a truncated result file
behind (summary.json, checkpoints, tables, plots).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sparse_rl.structure import NMStructure

# Files of a run directory (README "Train": outputs)
HYDRA_CONFIG = Path(".hydra") / "config.yaml"  # the validated config: its presence makes a folder a run directory
SUMMARY_FILE = "summary.json"
EVALUATIONS_FILE = "evaluations.npz"
PROGRESS_FILE = "progress.csv"
MODEL_FILE = "model.zip"
# Files of a checkpoint folder (experiment.checkpoint) that other modules name too
CONTROLLER_FILE = "controller.pt"  # the TopologyController's state (torch.load with weights_only)
REPLAY_FILE = "replay_buffer.npz"  # the filled part of an SB3 replay buffer (experiment.replay_io)

# How a run is labelled (its directory's method part, and the analysis's method names)
EQUAL_PARAMETER_METHOD = "dense_matched"  # trains a dense network whose widths match a sparse one's active count
DENSE_METHOD = "dense"  # the standard dense network: it has no sparsity, whatever sparsity.sparsity says
DENSE_SPARSITY = 0.0


def structure_tag(structure: str | None) -> str:
    """``_2of4`` for ``sparsity.structure=2:4`` (so N:M runs are their own method in directories and tables), else ``""``.

    An unparsable value is left for validation to report; it gets a plain tag here.
    """
    if structure is None:
        return ""
    try:
        return f"_{NMStructure.parse(structure).tag}"
    except ValueError:
        return f"_{structure}"


def recipe_tag(structure_decay: Any = None, mask_decay: str | None = None, sr_ste: bool = False) -> str:
    """``_sparsify_lineardecay_srste`` for the N:M recipes of a run (docs/design.md decision 33), else ``""``, so a
    recipe run is its own method beside the hard-mask one in directories and tables. A custom stage list is
    spelled out: ``_stages-dense-4of8-2of8-1of8``."""
    parts = []
    if structure_decay is not None:
        if isinstance(structure_decay, str):
            parts.append(structure_decay)
        else:
            parts.append("-".join(["stages", *(str(s).replace(":", "of") for s in structure_decay)]))
    if mask_decay not in (None, "none"):
        parts.append(f"{mask_decay}decay")
    if sr_ste:
        parts.append("srste")
    return "".join(f"_{part}" for part in parts)


def ift_tag(ift: str | None = None) -> str:
    """``_doped`` for ``sparsity.ift=doped`` (Sparse Parallel, Factorized or Doped; docs/design.md decision 43), else
    ``""``: a transformed network is its own method in directories and tables, as Sparse Wide's ``_wide`` is."""
    return "" if ift is None else f"_{ift}"


def method_label(
    method: str,
    sparsity: float,
    wide: bool = False,
    structure: str | None = None,
    structure_decay: Any = None,
    mask_decay: str | None = None,
    sr_ste: bool = False,
    ift: str | None = None,
) -> str:
    """The method part of a run directory: ``rigl_s0.9``, ``rigl_wide_s0.9``, ``rigl_doped_s0.9``, ``rigl_2of4_s0.5``,
    ``prune_1of8_sparsify_lineardecay_s0.875``; ``dense`` is always ``dense_s0.0``.

    Registered as the OmegaConf resolver ``method_label`` (:mod:`experiment.schema`) used by ``run_dir`` in
    ``configs/config.yaml``, so every path built from that pattern (a run, a sweep job) labels a dense network with
    the sparsity it has.
    """
    sparsity_label = DENSE_SPARSITY if method == DENSE_METHOD else sparsity
    tags = ift_tag(ift) + structure_tag(structure) + recipe_tag(structure_decay, mask_decay, sr_ste)
    return f"{method}{'_wide' if wide else ''}{tags}_s{sparsity_label}"


# How a run is scored: Graesser et al. 2022, §4 ("the mean of the last 10% of evaluation points"; TF-Agents flag
# average_last_fraction = 0.1, Atari AVG_REWARD_FRAC = 0.1). The reference takes int(0.1 · n) points; we take at
# least one.
LAST_FRACTION = 0.1
_FLOOR_SLACK = 1e-9  # 0.1 · 30 is 3.0000000000000004 in floating point; keep int(0.1 · n) exact


def n_last(n_evals: int, fraction: float = LAST_FRACTION) -> int:
    """How many final evaluation points the score averages: ``max(1, floor(fraction · n_evals))``."""
    if n_evals < 1:
        raise ValueError("no evaluation points")
    return min(n_evals, max(1, math.floor(fraction * n_evals + _FLOOR_SLACK)))


def last_fraction_mean(returns: np.ndarray, fraction: float = LAST_FRACTION) -> float:
    """Mean of the last ``fraction`` of the per-evaluation mean returns (at least one point)."""
    returns = np.asarray(returns, dtype=float)
    return float(np.mean(returns[-n_last(len(returns), fraction) :]))


# How a run's files are written
FILE_MODE = 0o644


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, FILE_MODE)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=float))


def atomic_write_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` as an uncompressed ``.npz`` atomically (evaluations, replay buffers, RNG and env states)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, **arrays)

    return atomic_write(path, write)
