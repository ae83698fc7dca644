"""One replay buffer for a whole population: device tensors ``[K, capacity, ·]``, sampled on the device.

Semantics follow SB3's ``ReplayBuffer``: uniform sampling over the filled part, ``done`` stored as
``terminated and not truncated`` (SB3's ``handle_timeout_termination``), the true last observation stored at episode
ends. Capacity is ``min(buffer_size, total_timesteps)``: a buffer never wrapped needs no more.
"""

from __future__ import annotations

import numpy as np
import torch


class PopulationReplay:
    """Transitions of K members, each member's rows filled in lockstep."""

    FIELDS = ("observations", "actions", "rewards", "next_observations", "dones")

    def __init__(self, k: int, capacity: int, obs_dim: int, action_shape: int, device: torch.device) -> None:
        self.k, self.capacity, self.device = k, capacity, device
        shapes = {"observations": obs_dim, "actions": action_shape, "rewards": 1, "next_observations": obs_dim, "dones": 1}
        self.storage = {name: torch.zeros(k, capacity, dim, device=device) for name, dim in shapes.items()}
        self.pos = 0
        self.full = False
        # the filled size as a device scalar, so sampling inside a captured CUDA graph sees it grow
        self.size_tensor = torch.zeros((), device=device)
        self._member_index = torch.arange(k, device=device).view(k, 1)
        self._widths = [shapes[name] for name in self.FIELDS]
        self._staging = torch.zeros(k, sum(self._widths), pin_memory=device.type == "cuda")

    @property
    def size(self) -> int:
        return self.capacity if self.full else self.pos

    def add(self, obs, actions, rewards, next_obs, dones) -> None:
        """Append one transition per member (arrays ``[K, ·]``): one host-to-device copy for all fields."""
        row = np.concatenate(
            [np.asarray(v, dtype=np.float32).reshape(self.k, -1) for v in (obs, actions, rewards, next_obs, dones)], axis=1
        )
        self._staging.copy_(torch.from_numpy(row))
        device_row = self._staging.to(self.device)  # synchronous: the staging buffer is reused next step
        for name, part in zip(self.FIELDS, device_row.split(self._widths, dim=1)):
            self.storage[name][:, self.pos].copy_(part)
        self.pos += 1
        if self.pos == self.capacity:
            self.full, self.pos = True, 0
        self.size_tensor.fill_(self.size)

    def sample(self, batch_size: int) -> list[torch.Tensor]:
        """A batch ``[K, B, ·]`` per field, indices uniform over each member's filled part (no host sync)."""
        index = (torch.rand(self.k, batch_size, device=self.device) * self.size_tensor).long()
        return [self.storage[name][self._member_index, index] for name in self.FIELDS]

    # ----------------------------------------------------------------- checkpoints (filled part only)
    def state_dict(self, rows: slice | None = None) -> dict[str, object]:
        rows = rows or slice(0, self.k)
        return {
            "pos": self.pos,
            "full": self.full,
            **{name: tensor[rows, : self.size].cpu().clone() for name, tensor in self.storage.items()},
        }

    def load_state_dict(self, state: dict[str, object], rows: slice | None = None) -> None:
        rows = rows or slice(0, self.k)
        self.pos, self.full = int(state["pos"]), bool(state["full"])
        for name, tensor in self.storage.items():
            tensor[rows, : self.size].copy_(state[name])
        self.size_tensor.fill_(self.size)
