"""Training throughput of sparse_rl against plain stable-baselines3, in one process with interleaved repeats.

For each agent (SAC HalfCheetah-v5, DQN CartPole-v1, PPO HalfCheetah-v5) it trains: plain SB3 (MlpPolicy,
same hyperparameters), sparse_rl dense, and static / SET / RigL / prune at 90% sparsity, each with the
paper's defaults from configs/ and our callbacks. After a warm-up past ``learning_starts`` every model
learns ``--chunk`` env steps in turn, ``--repeats`` times; medians of env-steps/s and their ratios are
printed, with the topology update cost (ms per update, share of training time) and FLOPs per configuration.

    python benchmarks/throughput.py                   # all agents, CPU, 1 thread
    python benchmarks/throughput.py --agents sac --repeats 7 --device cuda
    python benchmarks/throughput.py --memory          # peak RSS per configuration (one child process each)
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import sparse_rl.run  # noqa: F401  (registers the config schema)
from agents import AGENTS, attach_controller, build_model
from agents.build import sb3_kwargs
from agents.callbacks import FiniteWeightsCallback, TopologyLoggerCallback
from envs import EnvSpec, make_vec_env
from experiment.schema import core_sparsity_config
from sparse_rl.controller import TopologyController

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
SETTINGS = {  # agent -> (env, warm-up env steps, default chunk of env steps per measurement)
    "sac": ("HalfCheetah", 1_000, 500),
    "dqn": ("CartPole", 1_000, 1_000),
    "ppo": ("HalfCheetah", 2_048, 4_096),
}
METHODS = ["sb3_default_adam", "sb3", "dense", "static", "set", "rigl", "prune"]
SPARSITY = 0.9  # the paper's headline sparsity


@dataclass
class Setup:
    name: str
    model: object
    controller: TopologyController | None
    callbacks: list = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    update_ms: list[float] = field(default_factory=list)


def compose_cfg(agent: str, method: str, device: str):
    env, warmup, _ = SETTINGS[agent]
    overrides = [f"agent={agent}", f"env={env}", f"sparsity={'dense' if method.startswith('sb3') else method}"]
    overrides.append(f"device={device}")
    if not method.startswith("sb3") and method != "dense":
        overrides.append(f"sparsity.sparsity={SPARSITY}")
    if agent in ("sac", "dqn"):
        overrides.append(f"agent.sb3.learning_starts={warmup}")
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def build(agent: str, method: str, device: str) -> Setup:
    cfg = compose_cfg(agent, method, device)
    spec = AGENTS.get(agent)
    env = make_vec_env(EnvSpec.from_config(cfg.env), cfg.agent.n_envs, seed=0)
    agent_cfg = OmegaConf.to_container(cfg.agent, resolve=True)
    net_arch = agent_cfg["net_arch"]
    if method.startswith("sb3"):  # plain SB3: its own policy class, no controller, no callbacks
        if method == "sb3_default_adam":  # SB3's own default optimizer instead of our configs' fused Adam
            agent_cfg["sb3"]["policy_kwargs"]["optimizer_kwargs"].pop("fused")
        kwargs = sb3_kwargs(agent_cfg, net_arch)
        for key in ("kernel_decay", "init"):  # our policy classes' arguments: plain SB3 has neither
            kwargs["policy_kwargs"].pop(key)
        kwargs.pop("loss", None)  # plain SB3 DQN: Huber
        algo = next(cls for cls in spec.algo.__mro__ if cls.__module__.startswith("stable_baselines3"))
        model = algo("MlpPolicy", env, seed=0, device=device, verbose=0, **kwargs)
        return Setup(method, model, None)
    model = build_model(spec, agent_cfg, env, net_arch=net_arch, sparse=method != "dense", seed=0, device=device)
    controller = attach_controller(model, spec, core_sparsity_config(cfg.sparsity), cfg.agent.total_timesteps, seed=0)
    setup = Setup(
        method, model, controller, [TopologyLoggerCallback(controller), FiniteWeightsCallback(controller, cfg.nan_check_freq)]
    )
    original = controller._update

    def timed_update(t: int) -> bool:  # record the cost of each topology update
        start = time.perf_counter()
        changed = original(t)
        setup.update_ms.append(1e3 * (time.perf_counter() - start))
        return changed

    controller._update = timed_update
    return setup


def learn(setup: Setup, steps: int) -> float:
    start = time.perf_counter()
    setup.model.learn(steps, callback=setup.callbacks or None, reset_num_timesteps=False)
    return steps / (time.perf_counter() - start)


def run_throughput(agents: list[str], repeats: int, device: str, chunk: int | None) -> None:
    for agent in agents:
        env, warmup, default_chunk = SETTINGS[agent]
        steps = chunk or default_chunk
        setups = [build(agent, m, device) for m in METHODS]
        for setup in setups:
            setup.model.learn(warmup + steps, callback=setup.callbacks or None)  # past learning_starts, caches warm
            setup.update_ms.clear()
        for _ in range(repeats):
            for setup in setups:  # interleaved: drifts in machine speed hit every configuration alike
                setup.rates.append(learn(setup, steps))
        report(agent, env, setups, steps)


def report(agent: str, env: str, setups: list[Setup], steps: int) -> None:
    median = {s.name: statistics.median(s.rates) for s in setups}
    print(f"\n{agent.upper()} {env}: env-steps/s during learning, median of {len(setups[0].rates)} chunks of {steps} steps")
    print(f"{'config':17} {'steps/s':>9} {'÷ SB3':>7} {'÷ dense':>8} {'spread':>13} {'update ms':>10} {'update share':>13} "
          f"{'active params':>14} {'infer FLOPs':>12}")  # fmt: skip
    for s in setups:
        spread = f"{min(s.rates):.0f}-{max(s.rates):.0f}"
        update = statistics.median(s.update_ms) if s.update_ms else 0.0
        if s.controller is not None and s.update_ms:
            interval = s.controller.config.update_interval  # gradient steps between updates
            gradient_steps_per_s = median[s.name] * s.controller.clock / max(s.model.num_timesteps, 1)
            share = f"{update / (1e3 * interval / gradient_steps_per_s):.4%}"
        else:
            share = "-"
        stats = s.controller.stats() if s.controller else None
        active = f"{stats['active_with_bias']:,}" if stats else "-"
        flops = f"{sum(g.get('inference_flops', 0) for g in stats['groups'].values()):,}" if stats else "-"
        print(
            f"{s.name:17} {median[s.name]:9.1f} {median[s.name] / median['sb3']:7.3f} {median[s.name] / median['dense']:8.3f} "
            f"{spread:>13} {update:10.2f} {share:>13} {active:>14} {flops:>12}"
        )


def run_memory(agents: list[str], device: str) -> None:
    print("peak RSS (MiB) after building and training 1,000 env steps past warm-up, one process per configuration")
    for agent in agents:
        row = []
        for method in METHODS:
            out = subprocess.run(
                [sys.executable, __file__, "--child-memory", agent, method, "--device", device],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            row.append(f"{method}={float(out.stdout.strip().splitlines()[-1]):.0f}")
        print(f"{agent:4} " + "  ".join(row))


def child_memory(agent: str, method: str, device: str) -> None:
    setup = build(agent, method, device)
    _, warmup, _ = SETTINGS[agent]
    setup.model.learn(warmup + 1_000, callback=setup.callbacks or None)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=None, help="env steps per measurement (default per agent)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory", action="store_true", help="measure peak RSS per configuration instead")
    parser.add_argument("--child-memory", nargs=2, metavar=("AGENT", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_memory:
        child_memory(*args.child_memory, args.device)
    elif args.memory:
        run_memory(args.agents, args.device)
    else:
        print(f"torch {torch.__version__}, device {args.device}, {args.threads} torch thread(s), sparsity {SPARSITY}")
        run_throughput(args.agents, args.repeats, args.device, args.chunk)


if __name__ == "__main__":
    main()
