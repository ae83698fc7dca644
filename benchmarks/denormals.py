"""What ``flush_denormal`` buys: a DQN gradient step on decayed weights with float32 denormals kept vs flushed.

Late in a DQN run most weights have decayed to magnitudes around 1e-38 (L2 through Adam pushes weights without a
data gradient towards zero geometrically). In the study's MountainCar dense run at env step 68k (docs/results.md)
90% of the 512x512 kernel, 46% of the input kernel and 81% of the output kernel were below 1e-36, and 4% of the
hidden kernel was denormal. Products of such weights are denormal, and x86 float units take a slow path for each.
This benchmark gives the paper's DQN network (configs/agent/dqn.yaml: MLP widths, batch size) that profile (each
kernel's fraction ``TINY`` drawn log-uniformly from [1e-39, 1e-36]) and times, side by side in one process with
one thread, one update's products (target forward without gradient, online forward, backward) for one network
and for a population of ``--members`` networks as batched products (torch.bmm, the population engine's layout).
The weights are not stepped: an optimizer step would move this synthetic state's tiny weights (a real run's stay).

    python benchmarks/denormals.py [--seconds 3] [--members 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
DQN = OmegaConf.load(ROOT / "configs" / "agent" / "dqn.yaml")
OBS_DIM, N_ACTIONS = 2, 3  # MountainCar-v0: position and velocity; push left, none, right
TINY = (0.45, 0.9, 0.8)  # per kernel, as measured in the study's MountainCar dense run at env step 68k


def aged(shape: tuple[int, ...], tiny: float, generator: torch.Generator) -> torch.Tensor:
    """He-normal weights with a fraction ``tiny`` of entries at magnitudes log-uniform in [1e-39, 1e-36]."""
    fan_in = shape[-1]
    weight = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
    pick = torch.rand(shape, generator=generator) < tiny
    magnitude = 10.0 ** (-39.0 + 3.0 * torch.rand(shape, generator=generator))
    return torch.where(pick, weight.sign() * magnitude, weight)


def network(members: int, tiny: tuple[float, ...], seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) per layer; with ``members`` > 0 a leading member dimension (the population's layout)."""
    generator = torch.Generator().manual_seed(seed)
    widths = [OBS_DIM, *DQN.net_arch, N_ACTIONS]
    lead = (members,) if members else ()
    layers = []
    for fan_in, fan_out, fraction in zip(widths[:-1], widths[1:], tiny):
        weight = aged((*lead, fan_out, fan_in), fraction, generator).requires_grad_()
        layers.append((weight, torch.zeros((*lead, 1, fan_out) if members else (fan_out,), requires_grad=True)))
    return layers


def forward(layers: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    for i, (weight, bias) in enumerate(layers):
        x = torch.baddbmm(bias, x, weight.transpose(1, 2)) if x.dim() == 3 else torch.nn.functional.linear(x, weight, bias)
        x = torch.relu(x) if i < len(layers) - 1 else x
    return x


def update(members: int, tiny: tuple[float, ...]) -> Callable[[], None]:
    """One DQN update's products: target forward (no gradient), online forward, backward."""
    online, target = network(members, tiny, 0), network(members, tiny, 1)
    batch = int(DQN.sb3.batch_size)
    shape = (members, batch, OBS_DIM) if members else (batch, OBS_DIM)
    obs = torch.rand(shape) * torch.tensor([1.8, 0.14]) - torch.tensor([1.2, 0.07])  # MountainCar's box

    def step() -> None:
        with torch.no_grad():
            next_q = forward(target, obs).max(dim=-1).values
        q = forward(online, obs).max(dim=-1).values
        ((q - next_q) ** 2).mean().backward()
        for weight, bias in online:
            weight.grad = bias.grad = None

    return step


def median_ms(step: Callable[[], None], seconds: float) -> float:
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        begin = time.perf_counter()
        step()
        times.append(time.perf_counter() - begin)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    parser.add_argument("--members", type=int, default=12, help="population size (default 12, the study's)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for label, members, tiny in [("fresh (no tiny weights)", 0, (0.0,) * 3), ("aged", 0, TINY),
                                 (f"aged, population of {args.members}", args.members, TINY)]:  # fmt: skip
        step = update(members, tiny)
        timed = {}
        for flush in (False, True, False, True):  # interleaved: each setting measured twice, the better kept
            torch.set_flush_denormal(flush)
            timed[flush] = min(timed.get(flush, float("inf")), median_ms(step, args.seconds / 2))
        rows.append({"setup": label, "members": max(members, 1), "kept_ms": timed[False], "flushed_ms": timed[True],
                     "speedup": timed[False] / timed[True]})  # fmt: skip
        print(f"{label:34s} denormals kept {timed[False]:8.2f} ms   flushed {timed[True]:7.2f} ms   "
              f"x{timed[False] / timed[True]:.1f}", flush=True)  # fmt: skip
    torch.set_flush_denormal(False)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
