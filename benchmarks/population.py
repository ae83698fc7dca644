"""Population engine throughput: member-env-steps/s for K members against plain SB3, side by side in one run.

    python benchmarks/population.py                                  # CPU: K = 1, 4; SAC, TD3, PPO HalfCheetah, DQN CartPole
    python benchmarks/population.py --device cuda --sizes 1 4 16 64  # one GPU (the population step as a CUDA graph)
    python benchmarks/population.py --agents dqn --methods dense rigl --sizes 1 4 --seconds 20 --out results.json
    python benchmarks/population.py --real-run --sizes 64 --device cuda   # + a real run with the paper's cadence

Every steady-state configuration uses the paper's agent settings (configs/agent/*.yaml: SAC 256-256 batch 256, DQN
512-512 batch 128; TD3 sfujim/TD3's 256-256 batch 256, the actor every 2nd gradient step) except a short warm-up
(``learning_starts`` = one batch) and a 100k replay buffer, and measures
steady-state training: env step, the population step (transition write, one gradient step per env step, the next
action), topology updates on the paper's schedule (RigL every 1,000 gradient steps of a 1M-step run). Evaluation and
training diagnostics are excluded there (``diagnostics.freq=0``; their cost: benchmarks/diagnostics_overhead.py). It
prints where the time goes (env, population step, topology). PPO (configs/agent/ppo.yaml: 64-64,
rollouts of 2,048 steps, 10 epochs of 32 minibatches of 64; ``agent.normalize=false``, as the rows measured
before the engine normalised) is measured over whole rollouts, collection and training (env, train, topology).

``--real-run`` adds, per agent, method and K, a real run through ``PopulationRun`` with everything a run does: the
paper's warm-up, replay buffer, evaluation cadence (DQN CartPole: 20 episodes every 2,000 steps; SAC HalfCheetah: 10
every 10,000), checkpoints (``checkpoint_freq``), logs and the final export, over ``--real-steps`` env steps of the
paper's budget (default: DQN's whole 100k, a 50k slice of SAC's 1M). It reports wall time per member-step against the
steady-state figure of the same configuration in the same run, and the share of evaluation and checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENVS = {"sac": "HalfCheetah", "dqn": "CartPole", "td3": "HalfCheetah", "ppo": "HalfCheetah"}
ON_POLICY = ("ppo",)  # whole rollouts of configs/agent/ppo.yaml (2,048 steps, 10 epochs of 32 minibatches of 64)
BENCH_BUFFER = 100_000  # replay rows per member: enough for the measured steps, bounded memory at K = 64


def compose(agent: str, method: str, seed: int, run_dir: Path, real: list[str] | None = None):
    """The steady-state configuration, or with ``real`` (extra overrides) the paper's run as configured."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import sparse_rl.run  # noqa: F401  (registers the schema)

    overrides = [f"agent={agent}", f"env={ENVS[agent]}", f"sparsity={method}", f"seed={seed}", f"run_dir={run_dir}",
                 "progress_bar=false"]  # fmt: skip
    if real is None:  # steady state: the loop is called in short chunks, and every call's end measures diagnostics
        overrides.append("diagnostics.freq=0")  # (SB3's on_training_end); their cost: benchmarks/diagnostics_overhead.py
    if agent in ON_POLICY:  # no warm-up or replay; the population engine trains PPO without normalisation
        overrides += ["agent.normalize=false", *(["agent.eval_freq=100000000", "tensorboard=false",
                      "checkpoint_freq=0"] if real is None else real)]  # fmt: skip
    elif real is None:
        batch = {"sac": 256, "dqn": 128, "td3": 256}[agent]
        overrides += [
            f"agent.sb3.learning_starts={batch}", f"agent.sb3.buffer_size={BENCH_BUFFER}", "agent.eval_freq=100000000",
            "tensorboard=false", "checkpoint_freq=0",
        ]  # fmt: skip
    else:
        overrides += real
    if method != "dense":
        overrides.append("sparsity.sparsity=0.9")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Timers:
    """Wall time per phase of the trainer's loop (synchronised on CUDA)."""

    def __init__(self, trainer, device: torch.device) -> None:
        self.device = device
        loop = trainer.loop  # agents.population.trainer.PopulationTrainer (on-policy: rollout.PopulationRolloutTrainer)
        update = ("train", "_train") if trainer.on_policy else ("step", "_population_step")
        self.totals = {"env": 0.0, update[0]: 0.0}
        for name, attribute, owner in (("env", "step", loop.envs), (*update, loop)):
            self._wrap(owner, attribute, name)

    def _wrap(self, owner, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            sync(self.device)
            start = time.perf_counter()
            result = original(*args, **kwargs)
            sync(self.device)
            self.totals[name] += time.perf_counter() - start
            return result

        setattr(owner, attribute, timed)


def bench_population(
    agent: str, method: str, k: int, device: str, cuda_graph: bool, seconds: float, scratch: Path, env_workers: str
) -> dict:
    from experiment.plan import plan_run
    from experiment.population import env_workers_for
    from experiment.population_records import PopulationRun

    plans = [plan_run(compose(agent, method, seed, scratch / f"{agent}_{method}_{k}_{seed}")) for seed in range(k)]
    net_arch = list(plans[0].cfg.agent.net_arch)
    workers = env_workers_for(env_workers, device, k)
    trainer = PopulationRun(plans, net_arch, scratch / f"pop_{agent}_{method}_{k}", device, cuda_graph, workers)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sb3 = plans[0].cfg.agent.sb3
    warm = int(sb3.n_steps) if trainer.on_policy else int(sb3.learning_starts) + 20  # past warm-up, graph capture
    trainer.total = warm
    trainer.learn(nan_check_freq=10**9)
    steps, start = 0, time.perf_counter()
    chunk = 50 if dev.type == "cuda" else max(5, 400 // k)
    chunk = int(sb3.n_steps) if trainer.on_policy else chunk  # whole rollouts: collection and training
    while time.perf_counter() - start < seconds:  # headline: no timers (they synchronise the device)
        trainer.total += chunk
        trainer.learn(nan_check_freq=10**9)
        steps += chunk
    sync(dev)
    headline = steps * k / (time.perf_counter() - start)
    timers = Timers(trainer, dev)
    controller_time = {"t": 0.0}
    for member in trainer.members:
        original = member.controller.step

        def timed_step(t, original=original):
            start = time.perf_counter()
            changed = original(t)
            controller_time["t"] += time.perf_counter() - start
            return changed

        member.controller.step = timed_step
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds / 2:  # where the time goes (synchronised timers)
        trainer.total += chunk
        trainer.learn(nan_check_freq=10**9)
        steps += chunk
    sync(dev)
    wall = time.perf_counter() - start
    result = {
        "engine": "population", "agent": agent, "method": method, "k": k, "device": device, "cuda_graph": trainer.cuda_graph,
        "env_workers": workers,
        "member_steps_per_s": headline, "ms_per_population_step": 1000 * k / headline,
        "share": {name: total / wall for name, total in timers.totals.items()},
        "topology_share": controller_time["t"] / wall,
        "gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
        "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip
    trainer.close()
    return result


def real_run(
    agent: str,
    method: str,
    k: int,
    device: str,
    cuda_graph: bool,
    steps: int,
    real: list[str],
    scratch: Path,
    env_workers: str,
) -> dict:
    """A run as the launcher trains it (``PopulationRun``: warm-up, evaluations, checkpoints, logs, export) for the
    first ``steps`` env steps of the configured budget; wall time per member-step and the share of evaluation and
    checkpoints."""
    from experiment.plan import plan_run
    from experiment.population import env_workers_for
    from experiment.population_records import PopulationRun

    folder = scratch / f"real_{agent}_{method}_{k}"
    plans = [plan_run(compose(agent, method, seed, folder / f"seed_{seed}", real)) for seed in range(k)]
    cfg = plans[0].cfg
    workers = env_workers_for(env_workers, device, k)
    dev = torch.device(device)
    start = time.perf_counter()
    trainer = PopulationRun(plans, list(cfg.agent.net_arch), folder / "population", device, cuda_graph, workers)
    trainer.total = min(steps, int(cfg.agent.total_timesteps))  # a slice of the configured budget
    spent = {"evaluate": 0.0, "save_checkpoint": 0.0}
    calls = dict.fromkeys(spent, 0)
    for name in spent:
        original = getattr(trainer, name)

        def timed(*args, original=original, name=name, **kwargs):
            sync(dev)
            begin = time.perf_counter()
            result = original(*args, **kwargs)
            sync(dev)
            spent[name] += time.perf_counter() - begin
            calls[name] += 1
            return result

        setattr(trainer, name, timed)
    built = time.perf_counter()
    trainer.learn(checkpoint_freq=int(cfg.checkpoint_freq), nan_check_freq=int(cfg.nan_check_freq))
    sync(dev)
    learned = time.perf_counter()
    trainer.finish()
    wall = time.perf_counter() - start
    return {
        "engine": "population real run", "agent": agent, "method": method, "k": k, "device": device,
        "cuda_graph": trainer.cuda_graph, "env_workers": workers, "env_steps": trainer.total,
        "learning_starts": int(cfg.agent.sb3.get("learning_starts", 0)), "eval_freq": int(cfg.agent.eval_freq),
        "eval_episodes": int(cfg.agent.eval_episodes), "checkpoint_freq": int(cfg.checkpoint_freq),
        "wall_s": wall, "build_s": built - start, "learn_s": learned - built, "finish_s": time.perf_counter() - learned,
        "member_steps_per_s": trainer.total * k / wall, "ms_per_member_step": 1000 * wall / (trainer.total * k),
        "evaluations": calls["evaluate"], "checkpoints": calls["save_checkpoint"],
        "evaluation_share": spent["evaluate"] / wall, "checkpoint_share": spent["save_checkpoint"] / wall,
    }  # fmt: skip


def bench_sb3(agent: str, method: str, seconds: float, scratch: Path) -> dict:
    """Plain SB3 (our SB3 path: the same agent, sparse policy and controller) in this process, one thread."""
    from omegaconf import OmegaConf

    from agents import AGENTS, attach_controller, build_model
    from envs import make_vec_env
    from experiment.plan import plan_run

    plan = plan_run(compose(agent, method, 0, scratch / f"sb3_{agent}_{method}"))
    env = make_vec_env(plan.env, 1, 0)
    agent_cfg = OmegaConf.to_container(plan.cfg.agent, resolve=True)
    model = build_model(
        plan.agent, agent_cfg, env, net_arch=agent_cfg["net_arch"], sparse=method != "dense", seed=0, device="cpu"
    )  # fmt: skip
    attach_controller(model, AGENTS.get(agent), plan.sparsity, 1_000_000, 0)
    model.learn(total_timesteps=int(agent_cfg["sb3"].get("learning_starts", 0)) + 20)  # PPO: one whole rollout
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        before = model.num_timesteps
        model.learn(total_timesteps=100, reset_num_timesteps=False)  # PPO: one whole rollout
        steps += model.num_timesteps - before
    wall = time.perf_counter() - start
    return {"engine": "sb3", "agent": agent, "method": method, "k": 1, "device": "cpu", "env_steps": steps, "wall_s": wall,
            "member_steps_per_s": steps / wall}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--agents", nargs="+", default=["sac", "dqn", "td3", "ppo"], choices=["sac", "dqn", "td3", "ppo"])
    parser.add_argument("--methods", nargs="+", default=["dense", "rigl"], choices=["dense", "static", "set", "rigl", "prune"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1, 4], help="population sizes K")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per configuration")
    parser.add_argument("--no-cuda-graph", action="store_true", help="eager updates on CUDA")
    parser.add_argument("--env-workers", default="auto", help="processes stepping the envs (auto: the launcher's default)")
    parser.add_argument("--no-sb3", action="store_true", help="skip the plain SB3 reference")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON (appended as they come)")
    parser.add_argument("--real-run", action="store_true", help="also a real run per configuration (see above)")
    parser.add_argument(
        "--real-steps", type=int, nargs=2, metavar=("SAC", "DQN"), default=[50_000, 100_000],
        help="env steps of the real runs (default: a 50k slice of SAC's (and TD3's, PPO's) 1M budget, DQN's whole 100k)",
    )  # fmt: skip
    parser.add_argument(
        "--real-override", nargs="*", default=[],
        help="config overrides of the real runs, e.g. agent.sb3.learning_starts=1000 checkpoint_freq=5000 for a short "
        "CPU slice (default: the paper's configs as they are)",
    )  # fmt: skip
    parser.add_argument(
        "--scratch",
        type=Path,
        default=None,
        help="an empty parent folder for the run directories (default: a fresh temporary folder, removed)",
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.scratch is None:  # a fresh folder each time: a second run must not find the first one's run directories
            args.scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sparse_rl_bench_")))
        measure(args)


def measure(args: argparse.Namespace) -> None:
    """Run every configuration the command line asks for and print (and optionally write) its row."""
    torch.set_num_threads(1)
    results = []

    def report(row: dict) -> None:
        results.append(row)
        if row["engine"] == "population real run":
            steady = next((r for r in results if r["engine"] == "population" and r["agent"] == row["agent"]
                           and r["method"] == row["method"] and r["k"] == row["k"]), None)  # fmt: skip
            row["steady_member_steps_per_s"] = steady["member_steps_per_s"] if steady else None
            ratio = f" = {steady['member_steps_per_s'] / row['member_steps_per_s']:.2f}x steady-state time" if steady else ""
            print(f"{'real run':>10} {row['agent']} {row['method']:>5} K={row['k']:<3} {row['device']:>4} "
                  f"{row['env_steps']} steps: {row['member_steps_per_s']:>9.0f} member-steps/s "
                  f"({row['ms_per_member_step']:.2f} ms/member-step{ratio}); evaluation {row['evaluation_share']:.1%} "
                  f"({row['evaluations']}), checkpoints {row['checkpoint_share']:.1%} ({row['checkpoints']}); "
                  f"wall {row['wall_s']:.0f} s", flush=True)  # fmt: skip
            if args.out is not None:
                args.out.write_text(json.dumps(results, indent=1))
            return
        share = " ".join(f"{k} {v:.0%}" for k, v in row.get("share", {}).items())
        extra = f" topology {row['topology_share']:.1%} | {share}" if "share" in row else ""
        memory = f" gpu {row['gpu_peak_mib']:.0f} MiB" if row.get("gpu_peak_mib") else ""
        print(f"{row['engine']:>10} {row['agent']} {row['method']:>5} K={row['k']:<3} {row['device']:>4} "
              f"w={row.get('env_workers', 0):<2} "
              f"{row['member_steps_per_s']:>9.0f} member-steps/s{extra}{memory}", flush=True)  # fmt: skip
        if args.out is not None:
            args.out.write_text(json.dumps(results, indent=1))

    for agent in args.agents:
        for method in args.methods:
            if not args.no_sb3:
                report(bench_sb3(agent, method, args.seconds, args.scratch))
            for k in args.sizes:
                report(
                    bench_population(
                        agent, method, k, args.device, not args.no_cuda_graph, args.seconds, args.scratch, args.env_workers
                    )
                )
                if args.real_run:
                    steps = {"sac": args.real_steps[0], "td3": args.real_steps[0], "ppo": args.real_steps[0],
                             "dqn": args.real_steps[1]}[agent]  # fmt: skip
                    graph = not args.no_cuda_graph
                    row = real_run(agent, method, k, args.device, graph, steps, args.real_override, args.scratch,
                                   args.env_workers)  # fmt: skip
                    report(row)


if __name__ == "__main__":
    main()
