"""Cost of the training diagnostics (agents/diagnostics_callback.py): the same short training with diagnostics on and off.

Builds two identical agents (paper-sized networks, RigL at 90%, past their warm-up), then trains them in
interleaved chunks, one with the diagnostics callback, one without. Prints both walls, their ratio, the time spent
inside measurements, and the projected overhead at the configured ``diagnostics.freq`` (one measurement's cost
over ``freq`` gradient steps of training). The short run measures more often than the default (``--freq``) so that
a few measurements fall inside it. Default: SAC on Pendulum, < 60 s on one core.

``--population K``: the same for the population engine (agents/population/diagnostics.py): two populations of K
members (seeds 0..K-1, RigL 90%) trained in interleaved chunks by the population loop, one measuring every member;
a measurement point costs K member measurements, training a gradient step costs one population step.

    python benchmarks/diagnostics_overhead.py [--agent sac|dqn] [--steps 400] [--freq 200] [--repeats 2] [--population K]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

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
        original = callback.run.measure

        def timed(*args: object) -> bool:
            start = time.perf_counter()
            done = original(*args)
            setup.measure_s.append(time.perf_counter() - start)
            return done

        callback.run.measure = timed
        setup.callback = callback
    return setup


def build_population(agent: str, members: int, on: bool, freq: int, root: Path) -> Setup:
    """A population of ``members`` (seeds 0..members-1) past its warm-up; with ``on``, every rollout end that
    measures is timed (copying each member out, its batch, its measurement, its row)."""
    from experiment.population import plan_member
    from experiment.population_records import PopulationRun

    plans = []
    for seed in range(members):
        overrides = [
            f"agent={agent}", f"env={ENVS[agent]}", "sparsity=rigl", "sparsity.sparsity=0.9", f"seed={seed}",
            f"diagnostics.freq={freq if on else 0}", f"agent.sb3.learning_starts={WARMUP}", "progress_bar=false",
            "tensorboard=false", f"run_dir={root}/{'on' if on else 'off'}/seed_{seed}",
        ]  # fmt: skip
        with initialize_config_dir(config_dir=str(CONFIGS_DIR), version_base="1.3"):
            plans.append(plan_member(compose(config_name="config", overrides=overrides)))
    net_arch = OmegaConf.to_container(plans[0].cfg.agent.net_arch)
    run = PopulationRun(plans, net_arch, root / ("on" if on else "off") / "population", "cpu", False)
    setup = Setup(run, None, None)
    run.total = WARMUP
    run.learn()  # past the warm-up; opens the run directories and starts the diagnostics
    if run.diagnostics is not None:
        original = run.diagnostics.at_rollout_end

        def timed(loggers: object) -> None:
            before = run.diagnostics.runs[0].measured_at
            start = time.perf_counter()
            original(loggers)
            if run.diagnostics.runs[0].measured_at != before:  # a measurement point: every member measured
                setup.measure_s.append(time.perf_counter() - start)

        run.diagnostics.at_rollout_end = timed
    return setup


def main_population(args: argparse.Namespace, default_freq: int) -> None:
    """``--population K``: interleaved chunks of the population loop (``loop.learn``: no end-of-training measurement)."""
    with tempfile.TemporaryDirectory() as folder:
        off = build_population(args.agent, args.population, False, args.freq, Path(folder))
        on = build_population(args.agent, args.population, True, args.freq, Path(folder))
        clock = off.model.loop.clock
        for _ in range(args.repeats):
            for setup in (off, on):  # interleaved: drifts in machine speed hit both alike
                run = setup.model
                run.total = run.num_timesteps + args.steps
                start = time.perf_counter()
                run.loop.learn(run)
                setup.walls.append(time.perf_counter() - start)
        for setup in (off, on):
            setup.model.close()
    wall_off, wall_on = sum(off.walls), sum(on.walls)
    per_step = wall_off / max(off.model.loop.clock - clock, 1)  # wall per population gradient step (and env step)
    n = len(on.measure_s)
    later = sorted(on.measure_s[1:])  # the first point also builds each member's SB3 model, once per run
    per_point = later[len(later) // 2] if later else float("nan")
    k = args.population
    chunks = f"{args.repeats} x {args.steps} env steps per configuration"
    print(f"population of {k}: {args.agent} {ENVS[args.agent]}, RigL 90%, {chunks}")
    print(f"wall off {wall_off:.2f} s, on {wall_on:.2f} s, ratio on/off {wall_on / wall_off:.3f}")
    print(
        f"measurement points {n} (freq {args.freq}): the first {on.measure_s[0] * 1e3:.1f} ms (it builds the SB3 models), "
        f"later ones {per_point * 1e3:.1f} ms (median; {per_point / k * 1e3:.1f} ms per member)"
    )
    print(f"training {per_step * 1e3:.2f} ms per population step ({per_step / k * 1e3:.2f} ms per member)")
    for freq in sorted({args.freq, default_freq}):
        print(f"projected overhead at diagnostics.freq={freq}: {per_point / (freq * per_step):.2%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", choices=("sac", "dqn"), default="sac")
    parser.add_argument("--steps", type=int, default=400, help="env steps per timed chunk")
    parser.add_argument("--freq", type=int, default=200, help="gradient steps between measurements in this run")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved chunks per configuration")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--population", type=int, default=0, help="K > 0: the population engine with K members")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=str(CONFIGS_DIR), version_base="1.3"):
        default_freq = int(compose(config_name="config").diagnostics.freq)
    if args.population > 0:
        main_population(args, default_freq)
        return
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
