"""Step-time cost of the N:M recipes (mask decay, structure decay, SR-STE) against their hard-mask counterpart.

SAC-sized networks (benchmarks/controller_overhead.py: Walker2d shapes, 256-256, batch 256, fused Adam). Every
configuration is ``prune`` with ``--structure`` (default 2:4) at the middle of its window (step 500,000 of 1M):
the hard-mask counterpart runs the cubic per-group schedule with masked gradients; each recipe steps a dense
latent (the controller's pre/post optimizer hooks). Per configuration: the median time of one training step
(actor + twin critics) between updates, the median time of one mask update, and their sum amortised over
``--update-interval`` gradient steps (the default cadence, configs/sparsity/prune.yaml). Interleaved repeats in
one process; the ratio column is each recipe's amortised step time over the hard mask's.

    python benchmarks/nm_recipes.py [--steps 20] [--repeats 30] [--threads 1] [--structure 2:4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from controller_overhead import ACT, OBS, mlp, train_step

from sparse_rl import SparseGroup, SparsityConfig, TopologyController
from sparse_rl.config import METHOD_DEFAULTS
from sparse_rl.structure import NMStructure

TOTAL_STEPS = 1_000_000
MIDDLE = TOTAL_STEPS // 2  # inside every window below (0% to 100%)
RECIPES: dict[str, dict[str, Any]] = {
    "hard (prune N:M)": {},
    "sr_ste": {"sr_ste": True},
    "mask_decay=step": {"mask_decay": "step"},
    "mask_decay=linear": {"mask_decay": "linear"},
    "mask_decay=exponential": {"mask_decay": "exponential"},
    "structure_decay=sparsify": {"structure_decay": "sparsify"},
    "sparsify+linear+sr_ste": {"structure_decay": "sparsify", "mask_decay": "linear", "sr_ste": True},
}


def build(structure: str, update_interval: int, recipe: dict[str, Any]):
    torch.manual_seed(0)
    actor, critic = mlp(OBS, 2 * ACT), torch.nn.ModuleList([mlp(OBS + ACT, 1), mlp(OBS + ACT, 1)])
    adam = {"lr": 3e-4, "fused": True}
    actor_opt, critic_opt = torch.optim.Adam(actor.parameters(), **adam), torch.optim.Adam(critic.parameters(), **adam)
    nm = NMStructure.parse(structure)
    config = SparsityConfig(
        method="prune",
        sparsity=nm.sparsity,
        structure=structure,
        update_interval=update_interval,
        start_fraction=0.0,
        end_fraction=1.0,
        **recipe,
    )
    groups = [SparseGroup("actor", actor, actor_opt), SparseGroup("critic", critic, critic_opt)]
    controller = TopologyController(groups, config, total_steps=TOTAL_STEPS, seed=0)
    controller.init_masks()
    controller.step(MIDDLE)  # the middle of the window: the recipe's latents (or the hard masks) are in place
    return actor, critic, actor_opt, critic_opt, controller


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per block and configuration")
    parser.add_argument("--repeats", type=int, default=30, help="interleaved blocks per configuration (medians)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--structure", default="2:4")
    parser.add_argument("--update-interval", type=int, default=METHOD_DEFAULTS["prune"]["update_interval"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # random-target training drifts weights towards denormals, unequally per setup
    setups = {name: build(args.structure, args.update_interval, recipe) for name, recipe in RECIPES.items()}
    clocks = dict.fromkeys(RECIPES, MIDDLE)
    step_ms: dict[str, list[float]] = {name: [] for name in RECIPES}
    update_ms: dict[str, list[float]] = {name: [] for name in RECIPES}
    for _ in range(args.repeats):
        for name, (actor, critic, actor_opt, critic_opt, controller) in setups.items():  # interleaved
            for _ in range(10):  # warm-up
                clocks[name] += 1
                train_step(actor, critic, actor_opt, critic_opt)
                controller.step(clocks[name])
            start = time.perf_counter()
            for _ in range(args.steps):
                clocks[name] += 1
                train_step(actor, critic, actor_opt, critic_opt)
                controller.step(clocks[name])
            step_ms[name].append((time.perf_counter() - start) / args.steps * 1e3)
            point = (clocks[name] // args.update_interval + 1) * args.update_interval
            start = time.perf_counter()
            controller.step(point)  # one mask update (the recipe: new stage mask, optimizer-state reset)
            update_ms[name].append((time.perf_counter() - start) * 1e3)
            clocks[name] = point
            controller.check_invariants()
    baseline = None
    print(f"prune {args.structure}, SAC-sized networks, update every {args.update_interval} steps, {args.threads} thread(s)")
    print(f"{'configuration':28s} {'step ms':>8s} {'update ms':>10s} {'amortised ms':>13s} {'ratio':>6s}")
    for name in RECIPES:
        step, update = statistics.median(step_ms[name]), statistics.median(update_ms[name])
        amortised = step + update / args.update_interval
        baseline = baseline or amortised
        print(f"{name:28s} {step:8.3f} {update:10.3f} {amortised:13.3f} {amortised / baseline:6.3f}")


if __name__ == "__main__":
    main()
