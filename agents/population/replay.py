"""One replay buffer for a whole population: device tensors ``[K, capacity, ·]``, sampled on the device.

Semantics follow SB3's ``ReplayBuffer``: uniform sampling over the filled part, ``done`` stored as
``terminated and not truncated`` (SB3's ``handle_timeout_termination``), the true last observation stored at episode
ends. Capacity is ``min(buffer_size, total_timesteps)``: a buffer never wrapped needs no more. The write position and
the filled size live on the device too (and in Python, for checkpoints), so a write and a sample can be part of a
captured CUDA graph; indices come from each member's own stream (:mod:`agents.population.streams`).
"""

from __future__ import annotations

import torch

from agents.population.streams import Draw, MemberStreams


class PopulationReplay:
    """Transitions of K members, each member's rows filled in lockstep."""

    FIELDS = ("observations", "actions", "rewards", "next_observations", "dones")

    def __init__(self, k: int, capacity: int, obs_dim: int, action_shape: int, device: torch.device) -> None:
        self.k, self.capacity, self.device = k, capacity, device
        shapes = {"observations": obs_dim, "actions": action_shape, "rewards": 1, "next_observations": obs_dim, "dones": 1}
        self.storage = {name: torch.zeros(k, capacity, dim, device=device) for name, dim in shapes.items()}
        self.widths = [shapes[name] for name in self.FIELDS]
        self.pos = 0
        self.full = False
        # the write position and filled size on the device: a captured graph reads and advances them
        self.pos_tensor = torch.zeros(1, dtype=torch.int64, device=device)
        self.size_tensor = torch.zeros((), dtype=torch.int64, device=device)
        self._member_index = torch.arange(k, device=device).view(k, 1)

    @property
    def size(self) -> int:
        return self.capacity if self.full else self.pos

    @property
    def row_width(self) -> int:
        """Width of one member's transition row (observation, action, reward, next observation, done)."""
        return sum(self.widths)

    def write(self, row: torch.Tensor) -> None:
        """Append one transition per member from a device row ``[K, row_width]`` (no host sync; graph-capturable)."""
        for name, part in zip(self.FIELDS, row.split(self.widths, dim=1)):
            self.storage[name].index_copy_(1, self.pos_tensor, part.unsqueeze(1))
        self.pos_tensor.add_(1).remainder_(self.capacity)
        self.size_tensor.add_(1).clamp_(max=self.capacity)

    def advance(self) -> None:
        """The host's copy of :meth:`write`'s counters (called once per write)."""
        self.pos += 1
        if self.pos == self.capacity:
            self.full, self.pos = True, 0

    def sample(self, batch_size: int, streams: MemberStreams, step: torch.Tensor | int) -> list[torch.Tensor]:
        """A batch ``[K, B, ·]`` per field; member k's indices uniform over its filled part from its own stream."""
        index = streams.below(Draw.REPLAY_INDEX, step, batch_size, self.size_tensor)
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
        self.pos_tensor.fill_(self.pos)
        self.size_tensor.fill_(self.size)
