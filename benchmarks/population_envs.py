"""Population env-and-act loop alone (no update): member-env-steps/s against a plain loop of gymnasium envs, one run.

    python benchmarks/population_envs.py                            # DQN CartPole and SAC HalfCheetah, K = 16 and 64
    python benchmarks/population_envs.py --agents dqn --sizes 16 64 --seconds 3 --out envs.json

For each (agent, env, K), side by side in one process on one thread (rounds alternate, the best round counts):

- ``plain``: K ``gymnasium.make`` envs stepped one after another in a Python loop (``step``, ``reset`` at episode
  ends), actions drawn beforehand: the reference, no acting.
- ``batched env``: the population engine's envs (``agents.population.member_envs.MemberEnvs``, i.e.
  ``envs.batched``) stepped with the same kind of actions, no acting.
- ``batched env+act``: the same, acting through the population agent's deterministic forward of all members per step
  (``eval_actions``; exploration draws belong to the training loop, which ``benchmarks/population.py`` measures).
- ``vecenv env`` / ``vecenv env+act``: what the engine did before (``env_workers=0``): one SB3
  ``make_vec_env(spec, 1, seed)`` per member stepped one by one, without and with the same acting.

Ratios are member-env-steps/s over ``plain`` (issue 20's target: batched env-and-act >= 0.7x). On a CPU the paper's
networks make acting memory-bound (DQN 512-512: K weight matrices of 1 MB read per step), so ``env+act`` there
measures the forward more than the envs; ``--device cuda`` acts on a GPU as a real run does, and ``--net-arch 64 64``
shows the loop with a forward that is not memory-bound.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENVS = {"dqn": "CartPole", "sac": "HalfCheetah"}
ROUNDS = 3  # alternating rounds per configuration; the best of each kind counts (a shared machine's noise)
ACTION_BANK = 512  # pre-drawn action rows per env, cycled


def _population(agent: str, k: int, scratch: Path, threads: int, device: str, net_arch: list[int] | None):
    """A ``PopulationRun`` of K dense members with the paper's agent settings (a tiny replay: nothing is stored)."""
    from omegaconf import open_dict

    from benchmarks.population import compose
    from experiment.plan import plan_run
    from experiment.population_records import PopulationRun

    plans = []
    for seed in range(k):
        cfg = compose(agent, "dense", seed, scratch / f"{agent}_{k}_{seed}")
        with open_dict(cfg):
            cfg.agent.sb3.buffer_size = int(cfg.agent.sb3.batch_size)
            if net_arch is not None:
                cfg.agent.net_arch = net_arch
        plans.append(plan_run(cfg))
    return PopulationRun(plans, list(plans[0].cfg.agent.net_arch), scratch / f"pop_{agent}_{k}", device, False, threads)


def _actions(space, k: int, rng: np.random.Generator) -> np.ndarray:
    """``[ACTION_BANK, K, ·]`` uniform actions in env units."""
    if hasattr(space, "n"):
        return rng.integers(space.n, size=(ACTION_BANK, k))
    return rng.uniform(space.low, space.high, size=(ACTION_BANK, k, *space.shape)).astype(space.dtype)


def _timed(step, seconds: float, k: int) -> float:
    """Member-env-steps/s of calling ``step(t)`` for ``seconds``."""
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            step(steps)
            steps += 1
    return steps * k / (time.perf_counter() - start)


def bench(agent: str, k: int, seconds: float, scratch: Path, threads: int, device: str, net_arch: list[int] | None) -> dict:
    """Every loop's member-env-steps/s for one (agent, K), in alternating rounds."""
    import gymnasium as gym

    from envs import make_single_env, make_vec_env

    run = _population(agent, k, scratch, threads, device, net_arch)
    spec, policy = run.loop.envs.spec, run.agent.eval_actions
    batched = run.loop.envs
    bank = _actions(batched.action_space, k, np.random.default_rng(0))

    plain_envs = [make_single_env(spec) for _ in range(k)]
    for seed, env in enumerate(plain_envs):
        env.reset(seed=seed)

    def plain(t: int) -> None:
        row = bank[t % ACTION_BANK]
        for i, env in enumerate(plain_envs):
            _, _, terminated, truncated, _ = env.step(row[i])
            if terminated or truncated:
                env.reset()

    state = {"obs": batched.reset()}

    def batched_env(t: int) -> None:
        batched.step(bank[t % ACTION_BANK])

    def batched_env_act(t: int) -> None:
        state["obs"] = batched.step(policy(state["obs"])).next_obs

    vec_envs = [make_vec_env(spec, 1, seed) for seed in range(k)]
    vec_obs = {"obs": np.concatenate([env.reset() for env in vec_envs]).astype(np.float32)}

    def vecenv_env(t: int, actions: np.ndarray | None = None) -> None:  # the engine's previous path (env_workers=0)
        actions = bank[t % ACTION_BANK] if actions is None else actions
        for i, env in enumerate(vec_envs):
            obs, _, _, _ = env.step(actions[i : i + 1])
            vec_obs["obs"][i] = obs[0].reshape(-1)

    def vecenv_env_act(t: int) -> None:
        vecenv_env(t, policy(vec_obs["obs"]))

    loops = {"plain": plain, "batched env": batched_env, "vecenv env": vecenv_env, "batched env+act": batched_env_act,
             "vecenv env+act": vecenv_env_act}  # fmt: skip
    best = dict.fromkeys(loops, 0.0)
    with torch.inference_mode():
        for _, (name, loop) in itertools.product(range(ROUNDS), loops.items()):
            best[name] = max(best[name], _timed(loop, seconds / ROUNDS, k))
    for env in [*plain_envs, *vec_envs]:
        env.close()
    run.close()
    backend = type(batched.envs).__name__
    return {"agent": agent, "env": spec.name, "k": k, "backend": backend, "threads": threads, "act_device": device,
            "net_arch": list(run.net_arch), "gymnasium": gym.__version__,
            "member_steps_per_s": best, "ratio_to_plain": {name: v / best["plain"] for name, v in best.items()}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", nargs="+", default=["dqn", "sac"], choices=sorted(ENVS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[16, 64], help="population sizes K")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per loop (over all rounds)")
    parser.add_argument("--threads", type=int, default=0, help="env_workers: threads stepping non-classic envs")
    parser.add_argument("--device", default="cpu", help="where the agent acts (cpu or cuda); the envs are on the CPU")
    parser.add_argument("--net-arch", nargs="+", type=int, default=None, help="hidden widths (default: the paper's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sparse_rl_envbench_") as scratch:
        for agent, k in itertools.product(args.agents, args.sizes):
            row = bench(agent, k, args.seconds, Path(scratch), args.threads, args.device, args.net_arch)
            rows.append(row)
            rates = "  ".join(
                f"{name} {rate:>8.0f} ({row['ratio_to_plain'][name]:.2f}x)" for name, rate in row["member_steps_per_s"].items()
            )
            print(f"{row['env']:>12} {agent} K={k:<3} [{row['backend']}, act on {args.device}, net {row['net_arch']}] "
                  f"member-env-steps/s: {rates}", flush=True)  # fmt: skip
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
