"""Per-member random streams: counter-based, keyed by each member's seed, drawn for all members at once.

Every random draw of a population member after its warm-up (replay indices, ε-greedy draws, SAC's acting and update
noise) is a pure function of (member seed, purpose, step, index), so a member draws the same numbers alone or in any
population, on the CPU or inside a captured CUDA graph (the step is a device tensor there).

The generator is SplitMix64 in counter mode (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number
generators", OOPSLA; the JDK's ``java.util.SplittableRandom``): output ``i`` of a stream is ``mix64(base + i·γ)``,
``γ`` the golden-ratio constant, ``base`` derived from (seed, purpose) by the same mix. It passes BigCrush in exactly
this counter form. We chose it over Philox4x32-10 (Salmon et al. 2011), the classic counter-based generator, because
it is ~12 elementwise int64 tensor ops per draw instead of ~160 for Philox's ten rounds written in torch ops: on the
CPU each op is a kernel launch of its own and Philox cost 5–25% of a small population step. Both are keyed and
counter-based, which is what per-member reproducibility and graph capture need. Integer arithmetic wraps modulo 2⁶⁴
(torch's int64 multiply and add on CPU and CUDA), so the bits are the same on both devices; the float transforms
(uniform, Box–Muller) may differ by one ulp between devices.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch

GAMMA = 0x9E3779B97F4A7C15  # SplittableRandom's GOLDEN_GAMMA
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # SplitMix64's mix64 multipliers (Stafford's variant 13)
_U64 = (1 << 64) - 1
LANES = 16  # float32 lanes of an AVX-512 vector (AVX2's 8 divides it)


class Draw(enum.IntEnum):
    """What a draw is for: each purpose is its own stream of a member."""

    REPLAY_INDEX = 1
    UPDATE_NOISE = 2  # SAC: the current-observation policy sample of an update; TD3: the target-policy noise
    UPDATE_NEXT_NOISE = 3  # SAC: the next-observation policy sample of an update
    ACT_NOISE = 4  # SAC: the acting policy sample; TD3: the exploration noise (warm-up included)
    EXPLORE = 5  # DQN: ε-greedy's coin
    EXPLORE_ACTION = 6  # DQN: ε-greedy's random action


def _mix64_int(z: int) -> int:
    """SplitMix64's finaliser on a Python int (exact, for the per-member keys)."""
    z &= _U64
    z = ((z ^ (z >> 30)) * MIX1) & _U64
    z = ((z ^ (z >> 27)) * MIX2) & _U64
    return z ^ (z >> 31)


def _signed(z: int) -> int:
    """A 64-bit unsigned value as the int64 with the same bits."""
    return z - (1 << 64) if z >= 1 << 63 else z


def _shr(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (multiplications wrap modulo 2⁶⁴)."""
    z = (z ^ _shr(z, 30)) * _signed(MIX1)
    z = (z ^ _shr(z, 27)) * _signed(MIX2)
    return z ^ _shr(z, 31)


def stream_key(seed: int, purpose: int) -> int:
    """The base of member ``seed``'s stream ``purpose`` (an int64 bit pattern)."""
    return _signed(_mix64_int(_mix64_int(seed * GAMMA + 0x5851F42D4C957F2D) + purpose * GAMMA))


class MemberStreams:
    """K members' streams; ``step`` counts the calls of one purpose (an env step, a gradient step)."""

    def __init__(self, seeds: Sequence[int], device: torch.device) -> None:
        self.k, self.device = len(seeds), device
        keys = {purpose: [stream_key(int(seed), int(purpose)) for seed in seeds] for purpose in Draw}
        self._keys = {p: torch.tensor(v, dtype=torch.int64, device=device).view(-1, 1) for p, v in keys.items()}
        self._index: dict[int, torch.Tensor] = {}

    def bits(self, purpose: Draw, step: torch.Tensor | int, n: int) -> torch.Tensor:
        """``n`` 64-bit words per member ``[K, n]`` (int64 bit patterns): outputs ``step·n … step·n + n − 1``."""
        index = self._index.get(n)
        if index is None:
            index = self._index[n] = torch.arange(n, dtype=torch.int64, device=self.device)
        counter = torch.as_tensor(step, dtype=torch.int64, device=self.device) * n + index
        return _mix64(self._keys[purpose] + counter * _signed(GAMMA))

    def below(self, purpose: Draw, step: torch.Tensor | int, n: int, high: torch.Tensor | int) -> torch.Tensor:
        """``n`` integers per member uniform in ``[0, high)`` ``[K, n]``: 63 random bits modulo ``high``.

        The modulo bias is at most ``high / 2⁶³`` (1e-13 relative at a 1M replay), unlike ``(rand_float32·high)``
        whose 24 bits favour some indices by up to 6% at 1M.
        """
        return torch.remainder(_shr(self.bits(purpose, step, n), 1), high)

    def uniform(self, purpose: Draw, step: torch.Tensor | int, n: int) -> torch.Tensor:
        """``n`` float64 uniforms in ``[0, 1)`` per member (53 random bits each) ``[K, n]``."""
        return _shr(self.bits(purpose, step, n), 11).to(torch.float64) * 2.0**-53

    def normal(self, purpose: Draw, step: torch.Tensor | int, n: int) -> torch.Tensor:
        """``n`` float32 standard normals per member ``[K, n]``: Box–Muller on two 32-bit halves of each word.

        Each member's row is computed ``LANES``-wide (the first ``n`` kept): torch's CPU ``log``/``cos`` round a
        vector's lanes and a tensor's scalar tail differently, and a row of whole vectors takes the same path at
        any K.
        """
        width = -(-n // LANES) * LANES
        words = self.bits(purpose, step, width)
        radius = torch.sqrt(-2.0 * torch.log((_shr(words, 32).to(torch.float32) + 1.0) * 2.0**-32))
        angle = (words & 0xFFFFFFFF).to(torch.float32) * (2.0 * torch.pi * 2.0**-32)
        return (radius * torch.cos(angle))[:, :n]
