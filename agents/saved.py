"""Load a saved run's policy weights into a model rebuilt from its config, without unpickling anything.

SB3's ``load`` unpickles (cloudpickle) parts of ``model.zip``'s ``data`` entry: evaluating a run someone sent
would run their code. Here only the archive's ``policy.pth`` entry is read, with ``torch.load(weights_only=True)``,
into ``model.policy`` (built from the run's ``.hydra/config.yaml``). Sparse policies carry their ``weight_mask``
buffers in that state dict, and masked weights are already zero in it.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch
from stable_baselines3.common.base_class import BaseAlgorithm

POLICY_ENTRY = "policy.pth"


class SavedModelError(ValueError):
    """A ``model.zip`` that cannot be loaded into the rebuilt model; one line says why."""


def load_policy(model: BaseAlgorithm, path: Path) -> None:
    """Load ``path``'s ``policy.pth`` into ``model.policy`` (strict: every tensor, same shapes) and set eval mode."""
    try:
        with zipfile.ZipFile(path) as archive:
            raw = archive.read(POLICY_ENTRY)
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise SavedModelError(f"{path}: cannot read {POLICY_ENTRY} ({error})") from None
    try:
        state = torch.load(io.BytesIO(raw), map_location=model.device, weights_only=True)
        model.policy.load_state_dict(state, strict=True)
    except Exception as error:  # unpickling refused, shape or key mismatch: all mean "not this run's model"
        first = " ".join(str(error).split())[:200]
        raise SavedModelError(f"{path}: {POLICY_ENTRY} does not fit the model rebuilt from the config ({first})") from None
    model.policy.set_training_mode(False)
