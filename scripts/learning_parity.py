"""Learning parity between the two training paths: the SB3 path and the population engine, seeds × methods.

Trains the same sweep twice through the command line a user types — once with the default launcher (SB3, one
process per job, ``--jobs`` at a time) and once with ``hydra/launcher=population`` (every compatible job in one
batched computation) — then compares, per (case, method), each path's final scores (``summary.json``'s ``score``: the
mean of the last 10% of evaluations) and learning-curve means (the mean of all evaluations) across seeds: the mean with
a 95% bootstrap CI per path, and whether the two CIs overlap. A rerun with more ``--seeds`` trains only the new seeds.

    python scripts/learning_parity.py --seeds 5 --out runs/parity          # all cases, dense and RigL-90
    python scripts/learning_parity.py --cases dqn_cartpole --seeds 10 --out runs/parity

The cases are ``tests/test_learning.py``'s small budgets (docs/testing.md); results: ``OUT/parity.json`` and
``OUT/parity.md`` (docs/performance.md quotes them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.aggregate import mean_ci  # noqa: E402
from analysis.loading import load_runs  # noqa: E402
from tests.test_learning import CASES  # noqa: E402  (one source for the small-budget settings)

# the paper's two clean algorithms (issue 11), TD3 and PPO (issue 21)
CASE_AGENTS = {"dqn_cartpole": "dqn", "sac_pendulum": "sac", "td3_pendulum": "td3", "ppo_cartpole": "ppo",
               "ppo_cartpole_normalize": "ppo"}  # fmt: skip
# on both paths: ppo_cartpole is the first measured PPO rows' setting (taken before the population engine normalised,
# design 41); ppo_cartpole_normalize keeps configs/agent/ppo.yaml's agent.normalize=true (the paper's setting)
CASE_OVERRIDES = {"ppo_cartpole": ["agent.normalize=false"]}
METHODS = "dense,rigl"
SPARSITY = "0.9"  # the learning tests' sparse setting
STATISTICS = ("score", "curve")


def completed_seeds(run_root: Path) -> int:
    """How many leading seeds (0, 1, ...) have a completed run of every method under ``run_root``."""
    if not run_root.exists():
        return 0
    done = [{r.seed for r in load_runs(run_root, progress=False) if r.method == m and r.status == "completed"}
            for m in METHODS.split(",")]  # fmt: skip
    count = 0
    while all(count in seeds for seeds in done):
        count += 1
    return count


def sweep(case: str, seeds: range, run_root: Path, population: bool, jobs: int) -> float:
    """Run one case's sweep over ``seeds`` on one path; returns its wall time in seconds."""
    agent = CASE_AGENTS[case]
    overrides = [*CASES[agent][0], *CASE_OVERRIDES.get(case, [])]
    launcher = ["hydra/launcher=population"] if population else ["hydra/launcher=local", f"hydra.launcher.n_jobs={jobs}"]
    cmd = [
        sys.executable, "-m", "sparse_rl.run", "-m", *launcher, f"agent={agent}", f"sparsity={METHODS}",
        f"sparsity.sparsity={SPARSITY}", *overrides, f"seed=range({seeds.start},{seeds.stop})", f"run_root={run_root}",
        "progress_bar=false", "tensorboard=false", "checkpoint_freq=0",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start


def compare(case: str, roots: dict[str, Path], seeds: int) -> list[dict]:
    """Per method and statistic: each path's mean over seeds with a 95% bootstrap CI, and whether the CIs overlap.

    Statistics: ``score`` (the run's final score: mean of the last 10% of evaluations) and ``curve`` (the mean of
    every evaluation: the area under the learning curve, less noisy than one final evaluation).
    """
    rows = []
    values: dict[tuple[str, str, str], list[float]] = {}
    for path, root in roots.items():
        for run in load_runs(root, progress=False):
            if run.seed is None or run.seed >= seeds:
                continue
            if run.status != "completed" or run.summary_score is None:
                raise SystemExit(f"{run.path}: not completed ({run.status})")
            values.setdefault((path, str(run.method), "score"), []).append(run.summary_score)
            values.setdefault((path, str(run.method), "curve"), []).append(float(np.mean(run.returns)))
    for method in METHODS.split(","):
        for statistic in STATISTICS:
            row: dict = {"case": case, "method": method, "statistic": statistic}
            for path in roots:
                data = np.asarray(values[(path, method, statistic)])
                if len(data) != seeds:
                    raise SystemExit(f"{case}/{method}/{path}: {len(data)} runs, expected {seeds}")
                estimate = mean_ci(data)
                row[path] = {"values": data.round(2).tolist(), "mean": estimate.value, "ci": [estimate.low, estimate.high]}
            sb3, pop = row["sb3"]["ci"], row["population"]["ci"]
            row["cis_overlap"] = bool(sb3[0] <= pop[1] and pop[0] <= sb3[1])
            rows.append(row)
    return rows


def markdown(rows: list[dict], seeds: int, walls: dict[str, float]) -> str:
    lines = [
        "| case | method | statistic | SB3 path: mean [95% CI] | population: mean [95% CI] | CIs overlap |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        sb3, pop = (f"{r[p]['mean']:.1f} [{r[p]['ci'][0]:.1f}, {r[p]['ci'][1]:.1f}]" for p in ("sb3", "population"))
        lines.append(f"| {r['case']} | {r['method']} | {r['statistic']} | {sb3} | {pop} | {r['cis_overlap']} |")
    lines.append("")
    lines.append(f"{seeds} seeds per path and method; wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASE_AGENTS), choices=list(CASE_AGENTS))
    parser.add_argument("--seeds", type=int, default=5, help="seeds per path and method (issue 11: at least 5)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="parallel SB3-path processes")
    parser.add_argument("--out", type=Path, required=True, help="a new directory for both paths' runs and results")
    args = parser.parse_args()
    rows, walls = [], {}
    for case in args.cases:
        roots = {"sb3": args.out / case / "sb3", "population": args.out / case / "population"}
        for path, root in roots.items():  # a rerun trains only the seeds not yet completed (e.g. after --seeds 5 → 10)
            start = completed_seeds(root)
            if start < args.seeds:
                wall = sweep(case, range(start, args.seeds), root, path == "population", args.jobs)
                walls[f"{case}/{path} seeds {start}-{args.seeds - 1}"] = wall
        rows += compare(case, roots, args.seeds)
        text = markdown(rows, args.seeds, walls)
        (args.out / "parity.md").write_text(text + "\n")
        (args.out / "parity.json").write_text(json.dumps({"seeds": args.seeds, "rows": rows, "wall_s": walls}, indent=1))
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
