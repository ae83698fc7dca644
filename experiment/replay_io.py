"""SB3 replay buffers saved without pickle: only the filled part, as one ``.npz`` (loaded with ``allow_pickle=False``).

SB3's ``save_replay_buffer`` pickles the whole pre-allocated buffer (≈ 300 MB for SAC on HalfCheetah with
its 1M capacity, however little is filled), and loading a pickle runs whatever code the file names. Here
the arrays' filled rows, the write position and the ``full`` flag are stored; restoring writes them into
the model's own (freshly allocated, zero-filled) buffer, so sampling afterwards is bit-identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer

from experiment.layout import atomic_write_npz

FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
META_KEY = "meta_json"  # a uint8 array holding JSON (pos, full, capacity, layout)


class ReplayBufferMismatch(ValueError):
    """The saved buffer does not fit the model's buffer (capacity, shapes or dtypes); one line says which."""


def _arrays(buffer: ReplayBuffer) -> dict[str, np.ndarray]:
    """Every stored array of ``buffer`` by flat name (``observations/key`` for dict observations)."""
    out: dict[str, np.ndarray] = {}
    for field in FIELDS:
        value = getattr(buffer, field, None)
        if isinstance(value, dict):
            for key, array in value.items():
                out[f"{field}/{key}"] = array
        elif isinstance(value, np.ndarray):
            out[field] = value
    return out


def _filled_rows(buffer: ReplayBuffer, name: str) -> int:
    """Rows of array ``name`` that hold data (with ``optimize_memory_usage`` the next observation of the
    last transition lives in ``observations[pos]``)."""
    if buffer.full:
        return buffer.buffer_size
    if name == "observations" and getattr(buffer, "optimize_memory_usage", False):
        return min(buffer.pos + 1, buffer.buffer_size)
    return buffer.pos


def save_replay_buffer(buffer: ReplayBuffer, path: Path) -> None:
    """Write the filled part of ``buffer`` to ``path`` (an uncompressed ``.npz``), atomically."""
    arrays = {name: array[: _filled_rows(buffer, name)] for name, array in _arrays(buffer).items()}
    meta = {
        "pos": int(buffer.pos),
        "full": bool(buffer.full),
        "buffer_size": int(buffer.buffer_size),
        "n_envs": int(buffer.n_envs),
        "dict_observations": isinstance(buffer, DictReplayBuffer),
    }
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

    atomic_write_npz(path, arrays)


def _meta(data: np.lib.npyio.NpzFile) -> dict:
    return json.loads(bytes(data[META_KEY]).decode())


def _narrowed_observations(name: str, saved: np.dtype, target: np.dtype) -> bool:
    """Float64 observations saved before the buffer stored them as float32 (agents.build.Float32ObservationReplayBuffer)."""
    return name.split("/")[0] in ("observations", "next_observations") and saved == np.float64 and target == np.float32


def load_replay_buffer(buffer: ReplayBuffer, path: Path) -> None:
    """Restore :func:`save_replay_buffer` into ``buffer`` (the model's own): rows, ``pos`` and ``full``."""
    with np.load(path, allow_pickle=False) as data:
        meta = _meta(data)
        targets = _arrays(buffer)
        if meta["buffer_size"] != buffer.buffer_size or meta["n_envs"] != buffer.n_envs:
            raise ReplayBufferMismatch(
                f"{path} holds a buffer of {meta['buffer_size']} x {meta['n_envs']} envs, "
                f"the model's is {buffer.buffer_size} x {buffer.n_envs} (agent.sb3.buffer_size or agent.n_envs changed)"
            )
        names = set(data.files) - {META_KEY}
        if names != set(targets):
            raise ReplayBufferMismatch(f"{path} holds {sorted(names)}, the model's buffer has {sorted(targets)}")
        buffer.pos, buffer.full = meta["pos"], meta["full"]
        for name, target in targets.items():
            rows = data[name]
            if _narrowed_observations(name, rows.dtype, target.dtype):  # a checkpoint from before float32 storage
                rows = rows.astype(target.dtype)  # the cast SB3 applied to these rows before the networks saw them
            if rows.shape[1:] != target.shape[1:] or rows.dtype != target.dtype or len(rows) != _filled_rows(buffer, name):
                raise ReplayBufferMismatch(
                    f"{path}: {name} is {rows.dtype}{list(rows.shape)}, the model expects {target.dtype}"
                    f"[{_filled_rows(buffer, name)}, {', '.join(map(str, target.shape[1:]))}]"
                )
            target[: len(rows)] = rows  # the rest of a freshly built buffer is zeros, as in the saved run
