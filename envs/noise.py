"""Gaussian observation noise for robustness evaluation (Graesser et al. 2022, arXiv 2206.10369, Fig 6).

- **pixels** (``uint8`` Box on [0, 255]): ``N(0, sigma^2)`` in pixel units, rounded to an integer as in the
  paper, added to the raw frame and **clipped** to [0, 255]. The paper's code casts the noise to ``uint8`` and
  adds with wrap-around (``observation_noise`` in ``rigl/rl/run_experiment.py``); clipping is our choice.
- **vectors** (floating Box): ``N(0, (sigma * std_d)^2)`` per dimension ``d``, ``std_d`` the dimension's standard
  deviation (estimated by the caller, e.g. from noise-free evaluation episodes); the paper only did pixels.

The wrapper sits on each single env, below frame stacking and ``VecNormalize`` (the paper adds noise "to raw pixel
values before normalisation"). Noise comes from its own seeded ``numpy.random.Generator``: the same seed gives the
same noise, and ``sigma=0`` returns the observation untouched without drawing anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np

PIXEL_MAX = 255
NOISE_KINDS = ("pixels", "vector")


def noise_kind(space: gym.Space) -> str:
    """``pixels`` for a ``uint8`` Box on [0, 255], ``vector`` for a floating Box; ValueError otherwise."""
    if isinstance(space, gym.spaces.Box):
        if space.dtype == np.uint8 and np.all(space.low == 0) and np.all(space.high == PIXEL_MAX):
            return "pixels"
        if np.issubdtype(space.dtype, np.floating):
            return "vector"
    raise ValueError(
        f"observation noise needs uint8 pixels on [0, 255] or a floating Box; this env observes {space} "
        f"(valid kinds: {', '.join(NOISE_KINDS)})"
    )


class ObservationNoise(gym.ObservationWrapper):
    """Add seeded Gaussian noise to every observation (reset and step); ``record`` keeps the clean ones.

    ``std`` (vector observations only) is the per-dimension scale; a dimension with ``std_d = 0`` gets no noise.
    """

    def __init__(
        self,
        env: gym.Env,
        sigma: float,
        seed: int | Sequence[int],
        std: Sequence[float] | np.ndarray | None = None,
        record: bool = False,
    ) -> None:
        super().__init__(env)
        if not np.isfinite(sigma) or sigma < 0:
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
        self.kind = noise_kind(env.observation_space)
        self.sigma = float(sigma)
        self.rng = np.random.default_rng(seed)
        self.scale: np.ndarray | None = None
        if self.kind == "vector" and self.sigma > 0:
            if std is None:
                raise ValueError("vector observations need std (per-dimension standard deviations) for sigma > 0")
            std = np.asarray(std, dtype=np.float64)
            if std.shape != env.observation_space.shape or not np.all(np.isfinite(std)) or np.any(std < 0):
                raise ValueError(f"std must be finite, >= 0 and of shape {env.observation_space.shape}, got {std.shape}")
            self.scale = self.sigma * std
        self.recorded: list[np.ndarray] | None = [] if record else None

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """The noisy observation, in the observation's own dtype."""
        if self.recorded is not None:
            self.recorded.append(np.array(observation, copy=True))
        if self.sigma == 0:
            return observation
        if self.kind == "pixels":
            noise = np.rint(self.rng.normal(0.0, self.sigma, size=observation.shape))
            return np.clip(observation.astype(np.float64) + noise, 0, PIXEL_MAX).astype(np.uint8)
        noise = self.rng.standard_normal(size=observation.shape) * self.scale
        return (observation + noise).astype(observation.dtype)
