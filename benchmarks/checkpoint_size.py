"""Replay-buffer checkpoint size and save/load time: SB3's pickle of the whole buffer vs the filled part as npz.

    python benchmarks/checkpoint_size.py                       # SAC HalfCheetah, 3k and 100k env steps
    python benchmarks/checkpoint_size.py --env Pendulum --steps 3000

The buffer is filled by SB3's own collection loop with the run's config (``configs/agent/sac.yaml``: 1M
capacity) and ``learning_starts`` past the budget: no gradient steps, since a checkpoint's size and save
time do not depend on the weights. Results go to stdout as a markdown table (docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import sparse_rl.run  # noqa: F401  (registers the schema)
from agents import AGENTS, build_model
from envs import EnvSpec, make_vec_env
from experiment.replay_io import load_replay_buffer, save_replay_buffer

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


def measure(env: str, steps: int) -> dict[str, float]:
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("config", [f"env={env}", "agent=sac", f"agent.sb3.learning_starts={steps + 1}"])
    agent = AGENTS.get("sac")
    venv = make_vec_env(EnvSpec.from_config(cfg.env), 1, 0)
    agent_cfg = OmegaConf.to_container(cfg.agent, resolve=True)
    model = build_model(agent, agent_cfg, venv, net_arch=agent_cfg["net_arch"], sparse=False, seed=0, device="cpu")
    model.learn(steps, progress_bar=False)
    out: dict[str, float] = {"capacity": model.replay_buffer.buffer_size, "filled": model.replay_buffer.pos}
    with tempfile.TemporaryDirectory() as tmp:
        pkl, npz = Path(tmp) / "replay_buffer.pkl", Path(tmp) / "replay_buffer.npz"
        start = time.perf_counter()
        model.save_replay_buffer(pkl)
        out["pickle_s"], out["pickle_mb"] = time.perf_counter() - start, pkl.stat().st_size / 1e6
        start = time.perf_counter()
        save_replay_buffer(model.replay_buffer, npz)
        out["npz_s"], out["npz_mb"] = time.perf_counter() - start, npz.stat().st_size / 1e6
        start = time.perf_counter()
        load_replay_buffer(model.replay_buffer, npz)
        out["npz_load_s"] = time.perf_counter() - start
        model.save(Path(tmp) / "model.zip")
        out["model_mb"] = (Path(tmp) / "model.zip").stat().st_size / 1e6
    venv.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="HalfCheetah")
    parser.add_argument("--steps", type=int, nargs="+", default=[3000, 100_000])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"SAC {args.env}, {os.cpu_count()} CPUs; sizes in MB, times in s")
    print("| env steps | pickle (SB3) MB | pickle save s | npz MB | npz save s | npz load s | model.zip MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for steps in args.steps:
        r = measure(args.env, steps)
        print(
            f"| {steps:,} | {r['pickle_mb']:.1f} | {r['pickle_s']:.2f} | {r['npz_mb']:.2f} | {r['npz_s']:.3f} "
            f"| {r['npz_load_s']:.3f} | {r['model_mb']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
