"""Cost of the topology controller on SAC-sized networks (Walker2d shapes, 256-256, batch 256).

Prints, per method: median time of one Adam training step (actor + twin critics) with the controller's
hooks vs. plain dense, and the time of one topology update. Interleaved repeats in one process.

    python benchmarks/controller_overhead.py [--steps 200] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from sparse_rl import SparseGroup, SparsityConfig, TopologyController

OBS, ACT, HIDDEN, BATCH = 17, 6, 256, 256
FUSED = True  # Walker2d-v5 sizes; SAC network and batch of Graesser et al. 2022, App. Table 8


def mlp(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, n_out))


def build(method: str):
    torch.manual_seed(0)
    actor, critic = mlp(OBS, 2 * ACT), nn.ModuleList([mlp(OBS + ACT, 1), mlp(OBS + ACT, 1)])
    adam = {"lr": 3e-4, "fused": FUSED}  # the agents' configs use torch's fused Adam (docs/performance.md)
    actor_opt, critic_opt = torch.optim.Adam(actor.parameters(), **adam), torch.optim.Adam(critic.parameters(), **adam)
    config = SparsityConfig(
        method=method,
        sparsity=0.9,
        distribution="erk",
        update_interval=1000,
        start_fraction=0.0,
        end_fraction=0.8,
        drop_fraction=0.5,
        drop_fraction_schedule="cosine",
        sparse_init=True,
        prune_power=3,
    )
    groups = [SparseGroup("actor", actor, actor_opt), SparseGroup("critic", critic, critic_opt)]
    controller = TopologyController(groups, config, total_steps=1_000_000, seed=0)
    controller.init_masks()
    return actor, critic, actor_opt, critic_opt, controller


def train_step(actor, critic, actor_opt, critic_opt) -> None:
    obs = torch.randn(BATCH, OBS)
    act = torch.tanh(actor(obs)[:, :ACT])
    x = torch.cat([obs, act.detach()], dim=1)
    loss = sum((q(x) - 1.0).pow(2).mean() for q in critic)
    critic_opt.zero_grad()
    loss.backward()
    critic_opt.step()
    actor_loss = -critic[0](torch.cat([obs, torch.tanh(actor(obs)[:, :ACT])], dim=1)).mean()
    actor_opt.zero_grad()
    actor_loss.backward()
    actor_opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--unfused", action="store_true", help="torch's default (foreach) Adam instead of fused")
    args = parser.parse_args()
    global FUSED
    FUSED = not args.unfused
    torch.set_num_threads(args.threads)
    methods = ["dense", "static", "set", "rigl", "prune"]
    setups = {m: build(m) for m in methods}
    step_ms: dict[str, list[float]] = {m: [] for m in methods}
    update_ms: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.repeats):
        for m in methods:  # interleaved
            actor, critic, actor_opt, critic_opt, controller = setups[m]
            start = time.perf_counter()
            for _ in range(args.steps):
                train_step(actor, critic, actor_opt, critic_opt)
            step_ms[m].append(1e3 * (time.perf_counter() - start) / args.steps)
            if controller.sparse and controller.updater.updates:
                t = controller.updater.window.start + 1000 * (controller.num_updates + 1)  # next update point
                start = time.perf_counter()
                controller._update(t)
                update_ms[m].append(1e3 * (time.perf_counter() - start))
    dense = statistics.median(step_ms["dense"])
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {BATCH}, hidden {HIDDEN}, 90% ERK")
    print(f"{'method':8} {'train step ms':>14} {'÷ dense':>8} {'update ms':>10} {'update share @1000':>19}")
    for m in methods:
        step = statistics.median(step_ms[m])
        upd = statistics.median(update_ms[m]) if update_ms[m] else 0.0
        share = upd / (1000 * step) if upd else 0.0
        print(f"{m:8} {step:14.3f} {step / dense:8.3f} {upd:10.3f} {share:18.4%}")


if __name__ == "__main__":
    main()
