"""A population member's ``progress.csv`` rows carry what the SB3 path's rows carry (SB3's logger semantics: a dump
writes every value recorded since the previous one, so an evaluation row has the ``train/`` values of the training
since the last row, and a rollout row after such an evaluation has none)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from agents.diagnostics_callback import STEP_KEY
from experiment.plan import plan_run
from experiment.population import plan_member
from experiment.population_records import PopulationRun
from experiment.sb3 import train
from tests.agent_helpers import tiny_run

# depend on the episodes each path happened to finish, not on what SB3 recorded when
EPISODE_KEYS = ("rollout/ep_rew_mean", "rollout/ep_len_mean", "time/episodes", "time/fps", "time/time_elapsed")


def _row_keys(run_dir: Path, evaluations_only: bool) -> list[tuple[int, frozenset[str]]]:
    """Per row: its env step and the keys it has a value for (episode-dependent keys left out)."""
    with open(run_dir / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    return [
        (int(float(row["time/total_timesteps"])), frozenset(k for k, v in row.items() if v != "" and k not in EPISODE_KEYS))
        for row in rows
        if not evaluations_only or row.get("eval/mean_reward") or row.get(STEP_KEY)
    ]


@pytest.mark.parametrize(
    ("agent", "method", "diagnostics"),
    [("dqn", "rigl", False), ("sac", "static", False), ("td3", "rigl", False), ("ppo", "rigl", False),
     ("dqn", "rigl", True), ("ppo", "rigl", True)],
)  # fmt: skip
def test_a_members_progress_rows_have_the_sb3_paths_keys(agent, method, diagnostics, tmp_path):
    """Evaluation rows of every agent (SB3: ``EvalCallback``'s dump) and, for PPO, every row: PPO's rollouts are 64
    steps and evaluations every 100, so the evaluation at 100 takes the first ``train()``'s values and the rollout
    row at 128 has none (it failed before: evaluation rows had no ``train/`` values, rollout rows always had them).
    With diagnostics every 4 gradient steps, their rows (dumps of their own) take the pending values too."""
    extra = ("checkpoint_freq=0", *(("diagnostics.freq=4", "diagnostics.batch_size=16") if diagnostics else ()))
    train(plan_run(tiny_run(agent, method, tmp_path / "sb3", *extra)))
    run = PopulationRun(
        [plan_member(tiny_run(agent, method, tmp_path / "pop", *extra))], [32, 32], tmp_path / "p", "cpu", False
    )
    run.learn()
    run.finish()
    evaluations_only = agent != "ppo"  # off-policy rollout rows come every few episodes: a path's own episodes
    sb3, population = (_row_keys(tmp_path / name, evaluations_only) for name in ("sb3", "pop"))
    assert len(sb3) >= 3 and any(any(k.startswith("train/") for k in keys) for _, keys in sb3)
    if diagnostics:  # their rows, with training values the rows before them had not taken
        assert sum(STEP_KEY in keys and any(k.startswith("train/") for k in keys) for _, keys in sb3) >= 2
    assert population == sb3
