"""Cost of the training diagnostics (agents/diagnostics_callback.py): the same short training with diagnostics on and off.

Builds two identical agents (paper-sized networks, RigL at 90%, past their warm-up), then trains them in
interleaved chunks, one with the diagnostics callback, one without. Prints both walls, their ratio, the time spent
inside measurements, and the projected overhead at the configured ``diagnostics.freq`` (one measurement's cost
over ``freq`` gradient steps of training). The short run measures more often than the default (``--freq``) so that
a few measurements fall inside it. Default: SAC on Pendulum, < 60 s on one core.

    python benchmarks/diagnostics_overhead.py [--agent sac|dqn] [--steps 400] [--freq 200] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from agents import AGENTS, attach_controller, build_model
from agents.diagnostics_callback import DiagnosticsCallback, diagnostics_settings
from envs import EnvSpec, make_vec_env
from experiment.cli import CONFIGS_DIR
from experiment.schema import core_sparsity_config  # importing the schema registers it with Hydra

ENVS = {"sac": "Pendulum", "dqn": "CartPole"}  # fast envs: the networks are the paper's
WARMUP = 300  # env steps before learning starts


@dataclass
class Setup:
    model: object
    controller: object
    callback: DiagnosticsCallback | None
    walls: list[float] = field(default_factory=list)
    measure_s: list[float] = field(default_factory=list)


def build(agent: str, on: bool, freq: int) -> Setup:
    overrides = [f"agent={agent}", f"env={ENVS[agent]}", "sparsity=rigl", "sparsity.sparsity=0.9", f"diagnostics.freq={freq}"]
    overrides.append(f"agent.sb3.learning_starts={WARMUP}")
    with initialize_config_dir(config_dir=str(CONFIGS_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    spec = AGENTS.get(agent)
    env = make_vec_env(EnvSpec.from_config(cfg.env), cfg.agent.n_envs, seed=0)
    agent_cfg = OmegaConf.to_container(cfg.agent, resolve=True)
    model = build_model(spec, agent_cfg, env, net_arch=agent_cfg["net_arch"], sparse=True, seed=0, device="cpu")
    controller = attach_controller(model, spec, core_sparsity_config(cfg.sparsity), cfg.agent.total_timesteps, seed=0)
    setup = Setup(model, controller, None)
    if on:
        callback = DiagnosticsCallback(controller, diagnostics_settings(cfg.diagnostics), seed=0)
        original = callback._measure

        def timed() -> bool:
            start = time.perf_counter()
            done = original()
            setup.measure_s.append(time.perf_counter() - start)
            return done

        callback._measure = timed
        setup.callback = callback
    return setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", choices=("sac", "dqn"), default="sac")
    parser.add_argument("--steps", type=int, default=400, help="env steps per timed chunk")
    parser.add_argument("--freq", type=int, default=200, help="gradient steps between measurements in this run")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved chunks per configuration")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=str(CONFIGS_DIR), version_base="1.3"):
        default_freq = int(compose(config_name="config").diagnostics.freq)
    off, on = build(args.agent, False, args.freq), build(args.agent, True, args.freq)
    for setup in (off, on):  # past the warm-up: every timed step trains
        setup.model.learn(WARMUP, callback=setup.callback)
        setup.measure_s.clear()
    clock = off.controller.clock
    for _ in range(args.repeats):
        for setup in (off, on):  # interleaved: drifts in machine speed hit both alike
            start = time.perf_counter()
            setup.model.learn(args.steps, callback=setup.callback, reset_num_timesteps=False)
            setup.walls.append(time.perf_counter() - start)
    wall_off, wall_on = sum(off.walls), sum(on.walls)
    per_step = wall_off / max(off.controller.clock - clock, 1)  # wall per gradient step of the timed chunks
    n = len(on.measure_s)
    per_measure = sum(on.measure_s) / n if n else float("nan")
    print(f"{args.agent} {ENVS[args.agent]}, RigL 90%, {args.repeats} x {args.steps} env steps per configuration")
    print(f"wall off {wall_off:.2f} s, on {wall_on:.2f} s, ratio on/off {wall_on / wall_off:.3f}")
    print(
        f"measurements {n} (freq {args.freq}), {per_measure * 1e3:.1f} ms each; training {per_step * 1e3:.2f} ms/gradient step"
    )
    for freq in sorted({args.freq, default_freq}):
        print(f"projected overhead at diagnostics.freq={freq}: {per_measure / (freq * per_step):.2%}")


if __name__ == "__main__":
    main()
