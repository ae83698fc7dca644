"""Named studies (``python -m sparse_rl.study``): the record table, the sweeps planned, the report's verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.aggregate import Estimate
from analysis.study import (
    Ordering,
    RunKey,
    StudyError,
    harvest,
    key_of,
    read_table,
    study_from_mapping,
    verdict,
    write_report,
    write_table,
)
from experiment import study as study_mod
from tests.test_analysis import make_run

REPS = 200
ROOT = Path(__file__).resolve().parents[1]


def _study(tmp_path: Path, **changes: object):
    data = {
        "title": "tiny",
        "agent": "dqn",
        "envs": ["CartPole", "Acrobot"],
        "methods": ["dense", "a", "b", "c", "d", "e"],
        "sparsities": [0.9],
        "seeds": 5,
        "overrides": [],
        "run_root": str(tmp_path / "runs"),
        "table": str(tmp_path / "table.jsonl"),
        "report": str(tmp_path / "report" / "results.md"),
        "figures": str(tmp_path / "report" / "figures"),
        "paper": "configs/paper/graesser2022.yaml",
        "low_return": {"CartPole": 0, "Acrobot": -500},
        "equivalence_margin": 0.1,
        "steps_per_second": 100,
        "deviations": ["a deviation"],
    }
    data.update(changes)
    return study_from_mapping("tiny", data, "tiny.yaml")


PAPER = {
    "dense_returns": {"dqn": {"CartPole": {"value": 198, "approx": True, "source": "x"}}},
    "orderings": [
        {"a": "a", "b": "b", "relation": ">", "source": "held by construction"},
        {"a": "c", "b": "a", "relation": ">", "source": "broken by construction"},
        {"a": "b", "b": "d", "relation": ">", "source": "inconclusive by construction"},
        {"a": "c", "b": "e", "relation": "~", "source": "similar by construction"},
    ],
}


def _synthetic_study_runs(root: Path) -> None:
    """a ≫ b ≫ c in every seed and env; d interleaves with b (b vs d undecidable); e ties with c."""
    rng = np.random.default_rng(0)
    level = {"dense": 400.0, "a": 300.0, "b": 200.0, "c": 100.0, "d": 200.0, "e": 100.0}
    for env, offset in (("CartPole", 0.0), ("Acrobot", -450.0)):
        for method, base in level.items():
            sparsity = 0.0 if method == "dense" else 0.9
            for seed in range(5):
                noise = (seed - 2) * {"b": 1, "d": -1, "c": 0, "e": 0}.get(method, rng.uniform(-5, 5))
                returns = np.full(20, base + offset + noise) * (1 if offset == 0 else 0.1)
                make_run(root, "dqn", env, method, sparsity, seed, returns, active=1000)


def test_report_labels_held_broken_and_inconclusive_orderings(tmp_path: Path) -> None:
    study = _study(tmp_path)
    _synthetic_study_runs(Path(study.run_root))
    found = harvest(study, study.run_root, [])
    assert len(found.added) == 2 * 6 * 5 and not found.unfinished
    write_table(study.table, found.added)
    records = read_table(study.table)
    files = write_report(study, records, PAPER, study.report, study.figures, "cmd", reps=REPS)
    text = Path(study.report).read_text()
    cells = [line.split("|") for line in text.splitlines() if line.startswith("| 0.9 |")]
    rows = {c[2].strip(): c[6].strip() for c in cells if any(r in c[2] for r in (">", "≈", "≥"))}
    assert rows == {"a > b": "held", "c > a": "not held", "b > d": "inconclusive", "c ≈ e": "held"}
    assert {p.suffix for p in files} == {".png", ".md"} and len(files) >= 3
    assert "≈198" in text and "a deviation" in text and "seeds per cell: 5–5" in text


def test_report_with_one_seed_says_no_data_not_held(tmp_path: Path) -> None:
    study = _study(tmp_path, seeds=1)
    _synthetic_study_runs(Path(study.run_root))
    records = harvest(study, study.run_root, []).added
    assert {key_of(r).seed for r in records} == {0}
    write_report(study, records, PAPER, study.report, study.figures, "cmd", reps=REPS)
    assert "| no data |" in Path(study.report).read_text()


def test_records_and_report_say_which_engine_trained_each_cell(tmp_path: Path) -> None:
    study = _study(tmp_path, seeds=2, methods=["dense", "a"], envs=["CartPole"])
    root = Path(study.run_root)
    make_run(root, "dqn", "CartPole", "dense", 0.0, 0, np.ones(20))  # an SB3 summary from before it named its engine
    for seed in (0, 1):
        run = make_run(root, "dqn", "CartPole", "a", 0.9, seed, np.ones(20))
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "engine": "population" if seed else "sb3"}))
    records = harvest(study, root, []).added
    assert {(r["method"], r["seed"]): r["engine"] for r in records} == {
        ("dense", 0): "sb3",
        ("a", 0): "sb3",
        ("a", 1): "population",
    }
    write_report(study, records, PAPER, study.report, study.figures, "cmd", reps=REPS)
    rows = {line.split("|")[1].strip(): line for line in Path(study.report).read_text().splitlines() if "| 1" in line}
    assert "| population, sb3 |" in rows["a"] and "| sb3 |" in rows["dense"]


@pytest.mark.parametrize(
    ("relation", "low", "high", "expected"),
    [
        (">", 0.55, 0.9, "held"),
        (">", 0.5, 0.9, "inconclusive"),  # touching 0.5 is not above it
        (">", 0.1, 0.5, "not held"),
        (">=", 0.42, 0.7, "held"),
        (">=", 0.2, 0.45, "inconclusive"),
        (">=", 0.1, 0.35, "not held"),
        ("~", 0.45, 0.58, "held"),
        ("~", 0.3, 0.55, "inconclusive"),
        ("~", 0.65, 0.9, "not held"),
        (">", float("nan"), float("nan"), "no data"),
    ],
)
def test_verdict_from_the_ci_of_p_improvement(relation: str, low: float, high: float, expected: str) -> None:
    ordering = Ordering("a", "b", relation, "src")
    assert verdict(ordering, Estimate((low + high) / 2, low, high), margin=0.1) == expected


def test_table_round_trips_and_rejects_a_corrupt_line(tmp_path: Path) -> None:
    study = _study(tmp_path, seeds=2)
    _synthetic_study_runs(Path(study.run_root))
    records = harvest(study, study.run_root, []).added
    path = write_table(tmp_path / "t.jsonl", reversed(records))
    back = read_table(path)
    assert back == sorted(records, key=key_of)
    assert all(len(r["returns"]) == 20 and r["config_hash"] and r["run_dir"].startswith("dqn/") for r in back)
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(StudyError, match=r"t.jsonl:\d+: not a study record"):
        read_table(path)


def test_harvest_skips_recorded_and_reports_unfinished(tmp_path: Path) -> None:
    study = _study(tmp_path, seeds=2, methods=["dense", "a"])
    root = Path(study.run_root)
    make_run(root, "dqn", "CartPole", "dense", 0.0, 0, np.ones(20))
    make_run(root, "dqn", "CartPole", "a", 0.9, 0, np.ones(20))
    make_run(root, "dqn", "CartPole", "a", 0.9, 1, np.ones(20), status="running")
    make_run(root, "dqn", "CartPole", "a", 0.5, 0, np.ones(20))  # not in the grid
    found = harvest(study, root, [RunKey("dqn", "CartPole", "dense", 0.0, 0)])
    assert [key_of(r) for r in found.added] == [RunKey("dqn", "CartPole", "a", 0.9, 0)]
    assert set(found.unfinished) == {RunKey("dqn", "CartPole", "a", 0.9, 1)}
    assert found.outside == 1


def test_sweeps_cover_exactly_the_missing_runs(tmp_path: Path) -> None:
    study = _study(tmp_path, seeds=3, methods=["dense", "a", "b"])
    keys = study.run_keys()
    missing = [k for k in keys if not (k.env == "Acrobot" and k.method == "b")]  # not a full product any more
    missing = [k for k in missing if not (k.env == "CartPole" and k.method == "a" and k.seed == 1)]
    sweeps = study_mod.plan_sweeps(study, missing)
    covered = []
    for sweep in sweeps:
        opts = dict(item.split("=", 1) for item in sweep)
        assert ("sparsity.sparsity" in opts) == (opts["sparsity"] != "dense") and opts["resume"] == "auto"
        sparsity = float(opts.get("sparsity.sparsity", 0.0))
        for env in opts["env"].split(","):
            for method in opts["sparsity"].split(","):
                covered += [RunKey("dqn", env, method, sparsity, int(seed)) for seed in opts["seed"].split(",")]
    assert sorted(covered) == sorted(missing)
    assert len(sweeps) <= 4  # dense: one product; the rest split per env only where needed


def test_unknown_study_and_bad_seed_count_are_one_line_errors() -> None:
    with pytest.raises(StudyError, match="unknown study 'paper_dqn_clasic'; choose one of: paper_dqn_classic"):
        study_mod.load_study("paper_dqn_clasic")
    study = study_mod.load_study("paper_dqn_classic")
    with pytest.raises(StudyError, match="seeds must be a positive integer"):
        study_mod.parse_overrides(study, ["seeds=0"])
    args = study_mod.parse_overrides(study, ["seeds=5", "run_root=/x", "hydra/launcher=local"])
    assert (args.study.seeds, args.study.run_root, args.forwarded) == (5, "/x", ("hydra/launcher=local",))


def test_committed_study_definitions_and_table_load() -> None:
    for name in study_mod.available_studies():
        study = study_mod.load_study(name)
        paper = study_mod.load_paper(study)
        assert study.cells() and paper["orderings"]
        assert all(key_of(r) in set(study.run_keys(99)) for r in read_table(study_mod._repo_path(study.table)))


def test_study_command_trains_missing_runs_then_skips_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end at a tiny budget: two real runs are trained, recorded and reported; a rerun trains nothing."""
    (tmp_path / "study").mkdir()
    committed = study_mod.OmegaConf.load(study_mod.STUDY_DIR / "paper_dqn_classic.yaml")
    budget = ["agent.total_timesteps=400", "agent.eval_freq=200", "agent.eval_episodes=2", "agent.sb3.learning_starts=100"]
    tiny = {
        **study_mod.OmegaConf.to_container(committed),
        "envs": ["CartPole"],
        "methods": ["dense", "static"],
        "seeds": 1,
        "overrides": [*budget, "progress_bar=false", "tensorboard=false", "diagnostics.freq=0"],
        "run_root": str(tmp_path / "runs"),
        "table": str(tmp_path / "table.jsonl"),
        "report": str(tmp_path / "out" / "results.md"),
        "figures": str(tmp_path / "out" / "fig"),
        "paper": str(ROOT / "configs/paper/graesser2022.yaml"),
    }
    (tmp_path / "study" / "tiny.yaml").write_text(json.dumps(tiny))
    monkeypatch.setattr(study_mod, "STUDY_DIR", tmp_path / "study")
    monkeypatch.chdir(tmp_path)
    assert study_mod.run_study("tiny") == 0
    records = read_table(tmp_path / "table.jsonl")
    assert sorted((r["method"], r["sparsity"]) for r in records) == [("dense", 0.0), ("static", 0.9)]
    if (ROOT / ".git").exists():  # the code version names the commit that made the run
        assert all(r["code_version"].split("+")[1] for r in records), records[0]["code_version"]
    assert "No completed run yet" not in (tmp_path / "out" / "results.md").read_text()
    calls: list = []
    monkeypatch.setattr(study_mod.subprocess, "call", lambda *a, **k: calls.append(a) or 0)
    assert study_mod.run_study("tiny") == 0 and calls == []


def test_cli_unknown_study_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sparse_rl.study", "nope", f"run_root={tmp_path / 'r'}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "choose one of: paper_dqn_classic" in proc.stderr
    assert list(tmp_path.iterdir()) == []
