"""Grids (experiment/grid.py, docs/design.md decision 38): fast composition equals Hydra's, resume=auto, a sweep's
outcomes and exit status, a grid's state read from run directories, submit-host checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

import experiment.schema  # noqa: F401  (run_schema)
from experiment.grid import (
    SweepComposer,
    check_sweep_jobs,
    grid_table,
    job_outcome,
    job_return,
    record_ended,
    run_state,
    sweep_job_configs,
    sweep_report,
    task_config,
)
from experiment.plan import JobFailed, JobSkipped, UsageError, plan_run
from experiment.sb3 import run_job
from tests.agent_helpers import CONFIGS, crash_after_checkpoint, tiny_run

SAMPLE_JOBS = [
    ["env=Hopper", "sparsity=rigl", "sparsity.sparsity=0.9", "seed=3"],
    ["env=Humanoid", "sparsity=dense_matched", "sparsity.sparsity=0.99", "seed=0"],
    ["env=HalfCheetah", "sparsity=prune", "sparsity.sparsity=0.5", "seed=9"],
    ["env=Hopper", "sparsity=rigl", "sparsity.sparsity=0.5", "seed=4"],  # same group choices as the first
]


@pytest.fixture
def sac_grid():
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        master = compose("config", ["+experiment=paper_sac_mujoco", "run_root=/tmp/grid"], return_hydra_config=True)
        yield GlobalHydra.instance().config_loader(), master


def _without_runtime(cfg) -> dict:
    container = OmegaConf.to_container(cfg, resolve=False)
    container["hydra"]["runtime"].pop("cwd")  # the process's, equal anyway
    return container


def test_fast_composition_equals_hydras(sac_grid):
    loader, master = sac_grid
    composer = SweepComposer(loader, master)
    for overrides in SAMPLE_JOBS:
        ours, hydras = composer.compose(overrides), loader.load_sweep_config(master, overrides)
        assert _without_runtime(ours) == _without_runtime(hydras), overrides
        expected = OmegaConf.to_container(task_config(hydras), resolve=True)
        assert composer.compose_task(overrides) == expected, overrides
    assert len(composer._bases) == 3  # one composition per group combination


def test_bad_value_overrides_are_refused_as_hydra_refuses_them(sac_grid):
    loader, master = sac_grid
    composer = SweepComposer(loader, master)
    with pytest.raises(Exception, match="seed"):
        composer.compose_task(["env=Hopper", "sparsity=rigl", "seed=abc"])
    with pytest.raises(Exception, match="sparsty"):
        composer.compose_task(["env=Hopper", "sparsity=rigl", "sparsity.sparsty=0.5"])


def test_sweep_job_configs_expand_an_experiments_params():
    cfgs = sweep_job_configs(["+experiment=paper_dqn_classic", "run_root=/tmp/g", "seed=0,1"])
    assert len(cfgs) == 3 * 5 * 8 * 2  # envs x methods x sparsities x the overriding seeds
    assert {str(c.run_dir).split("/")[4] for c in cfgs} == {"CartPole", "Acrobot", "MountainCar"}  # /tmp/g/dqn/ENV


# ---------------------------------------------------------------------------------------------------- outcomes
def test_outcomes_and_exit_status():
    rets = [
        job_return(["seed=0"], None, "completed", 1.0),
        job_return(["seed=1"], None, "submitted", "12_1"),
        job_return(["seed=2"], None, "running", "held"),
    ]
    assert sweep_report(rets).exit_status == 0
    rets += [job_return(["seed=3"], None, "skipped", "runs/x: bad"), job_return(["seed=4"], None, "interrupted", "y")]
    report = sweep_report(rets)
    assert report.exit_status == 1
    assert report.line == "sweep: 5 job(s): 1 completed, 1 skipped, 1 interrupted, 1 submitted, 1 running"
    assert report.problems == ["  skipped: runs/x: bad", "  interrupted: y"]
    hydra_failed = JobReturn(overrides=["seed=5"])  # what Hydra's launchers return for an exception
    hydra_failed.status, hydra_failed.return_value = JobStatus.FAILED, JobFailed("runs/z: boom")
    assert job_outcome(hydra_failed) == "failed"
    hydra_failed.return_value = JobSkipped("runs/z: bad")
    assert job_outcome(hydra_failed) == "skipped"


# ---------------------------------------------------------------------------------------------------- resume=auto
TINY = ["checkpoint_freq=100", "sparsity.update_interval=5"]


def test_resume_auto_starts_continues_exactly_and_leaves_a_completed_run(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    run_job(tiny_run("dqn", "rigl", straight, *TINY, "resume=auto"), multirun=False)  # nothing there: starts
    resumed = tmp_path / "resumed"
    with crash_after_checkpoint(monkeypatch):
        run_job(tiny_run("dqn", "rigl", resumed, *TINY, "resume=auto"), multirun=False)
    assert run_state(resumed) == "failed"  # the crash is recorded; resume=auto continues it all the same
    run_job(tiny_run("dqn", "rigl", resumed, *TINY, "resume=auto"), multirun=False)  # continues
    for run in (straight, resumed):
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert _policy(straight).keys() == _policy(resumed).keys()
    for name, value in _policy(straight).items():
        assert torch.equal(value, _policy(resumed)[name]), name
    before = (resumed / "summary.json").read_text()
    score = run_job(tiny_run("dqn", "rigl", resumed, *TINY, "resume=auto"), multirun=True)  # completed: untouched
    assert score == json.loads(before)["score"] and (resumed / "summary.json").read_text() == before


def _policy(run: Path) -> dict:
    import zipfile

    with zipfile.ZipFile(run / "model.zip") as archive, archive.open("policy.pth") as f:
        return torch.load(f, weights_only=True)


def test_resume_must_be_false_true_or_auto(tmp_path):
    with pytest.raises(UsageError, match="resume='sometimes' is not a valid choice; valid choices: false, true, auto"):
        plan_run(tiny_run("dqn", "dense", tmp_path / "r", "resume=sometimes"))


def test_a_skipped_or_failed_sweep_job_raises_for_its_launcher(tmp_path):
    with pytest.raises(JobSkipped, match="resume=true but"):
        run_job(tiny_run("dqn", "dense", tmp_path / "none", "resume=true"), multirun=True)


# ---------------------------------------------------------------------------------------------------- run states
def _summary(run: Path, status: str) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "summary.json").write_text(json.dumps({"status": status, "score": 1.0}))


def _hold(run: Path) -> subprocess.Popen:
    """Another process holding ``run``'s lock (POSIX locks are per process)."""
    code = (
        "import sys, time; from pathlib import Path; from experiment.lock import hold_run_dir\n"
        f"with hold_run_dir(Path({str(run)!r})):\n    print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_run_states(tmp_path):
    _summary(tmp_path / "done", "completed")
    _summary(tmp_path / "failed", "failed")
    _summary(tmp_path / "killed", "running")  # nobody holds it: it was killed
    _summary(tmp_path / "stopped", "interrupted")
    _summary(tmp_path / "live", "running")
    holder = _hold(tmp_path / "live")
    try:
        states = {p.name: run_state(p) for p in tmp_path.iterdir()}
    finally:
        holder.kill()
        holder.wait()
    assert states == {
        "done": "completed", "failed": "failed", "killed": "interrupted", "stopped": "interrupted", "live": "running"
    }  # fmt: skip
    assert run_state(tmp_path / "never") == "not started"


def test_a_job_that_ended_without_a_result_is_recorded(tmp_path):
    _summary(tmp_path / "oom", "running")
    assert record_ended(tmp_path / "oom", "OUT_OF_MEMORY", "12_3") == "failed"
    summary = json.loads((tmp_path / "oom" / "summary.json").read_text())
    assert summary["status"] == "failed" and "12_3 ended OUT_OF_MEMORY" in summary["error"]
    _summary(tmp_path / "cancelled", "running")
    assert record_ended(tmp_path / "cancelled", "CANCELLED by 0", "12_4") == "interrupted"
    _summary(tmp_path / "done", "completed")
    assert record_ended(tmp_path / "done", "CANCELLED", "12_5") is None  # the run's own record stands
    assert record_ended(tmp_path / "never", "CANCELLED", "12_6") is None and not (tmp_path / "never").exists()


def test_grid_status_counts_per_setting(tmp_path):
    cfgs = sweep_job_configs(["agent=dqn", "env=CartPole", "sparsity=dense,rigl", "seed=0,1", f"run_root={tmp_path}"])
    _summary(Path(str(cfgs[0].run_dir)), "completed")
    _summary(Path(str(cfgs[1].run_dir)), "failed")
    table, _ = grid_table(cfgs)
    assert table[("dqn", "CartPole", "dense_s0.0")] == {"completed": 1, "failed": 1}
    assert table[("dqn", "CartPole", "rigl_s0.9")] == {"not started": 2}
    out = subprocess.run(
        [sys.executable, "-m", "sparse_rl.grid", "status", "agent=dqn", "env=CartPole", "sparsity=dense,rigl",
         "seed=0,1", f"run_root={tmp_path}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.splitlines()[-1].split() == ["total", "1", "0", "0", "1", "2"]


# ---------------------------------------------------------------------------------------------------- submit host
def _configs(tmp_path: Path, *extra: str, base: tuple[str, ...] = ("agent=dqn", "env=CartPole")) -> list[dict]:
    return [
        OmegaConf.to_container(cfg, resolve=True)
        for cfg in sweep_job_configs([*base, f"run_root={tmp_path}", "resume=auto", *extra])
    ]


def test_submit_host_checks(tmp_path):
    configs = _configs(tmp_path, "sparsity=rigl", "sparsity.sparsity=0.5,1.5", "seed=0,1,2")
    _summary(Path(configs[0]["run_dir"]), "completed")
    checked = {index: (outcome, value) for index, outcome, value in check_sweep_jobs(configs)}
    assert checked[0] == ("completed", 1.0)
    assert [i for i in checked if checked[i][0] == "skipped"] == [3, 4, 5]  # sparsity 1.5, every seed
    assert "sparsity must be in [0, 1), got 1.5" in checked[5][1]
    assert 1 not in checked and 2 not in checked  # to submit
    duplicate = configs[1:2] * 2
    assert check_sweep_jobs(duplicate)[0][1] == "skipped" and "another job of this sweep" in check_sweep_jobs(duplicate)[0][2]


def test_submit_host_check_plans_once_per_setting(tmp_path, monkeypatch):
    """The paper's DQN grid: 1,200 jobs, planned once per setting (120), not once per seed (the speed, measured in the
    README's cluster section, comes from this and from composing once per config-group combination)."""
    import experiment.plan

    calls = []
    original = experiment.plan.plan_run
    configs = _configs(tmp_path, "+experiment=paper_dqn_classic", base=())  # env=CartPole would override its envs
    monkeypatch.setattr(experiment.plan, "plan_run", lambda cfg, *a, **k: calls.append(1) or original(cfg, *a, **k))
    assert check_sweep_jobs(configs) == []
    assert len(configs) == 1200 and len(calls) == 120


# ---------------------------------------------------------------------------------------------------- populations
def test_a_population_is_found_from_its_members_records_however_run_root_is_spelled(tmp_path, monkeypatch):
    from experiment.population import POPULATIONS_DIR, recorded_population_dir, usable_cpus
    from experiment.population_records import _relative_to_root

    first = tmp_path / "first" / "runs"
    members = [first / "dqn" / "CartPole" / "rigl_s0.9" / f"seed_{s}" for s in (0, 1)]
    folder = first / POPULATIONS_DIR / "dqn_CartPole_0123456789ab"
    folder.mkdir(parents=True)
    for run_dir in members:
        run_dir.mkdir(parents=True)
        (run_dir / "population.json").write_text(json.dumps({"population_dir": str(folder)}))
    moved = tmp_path / "moved" / "runs"
    (tmp_path / "moved").mkdir()
    first.rename(moved)  # the whole run_root, populations included
    monkeypatch.chdir(tmp_path)
    spelled = Path("moved/./runs")
    found = recorded_population_dir([spelled / m.relative_to(first) for m in members], spelled)
    assert found is not None and found.resolve() == (moved / POPULATIONS_DIR / folder.name).resolve()
    assert [_relative_to_root(m) for m in members] == [_relative_to_root(spelled / m.relative_to(first)) for m in members]
    (moved / members[1].relative_to(first) / "population.json").write_text(json.dumps({"population_dir": "other"}))
    assert recorded_population_dir([spelled / m.relative_to(first) for m in members], spelled) is None  # disagree
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert usable_cpus() == 1
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert usable_cpus() == len(os.sched_getaffinity(0))


def test_drop_checkpoints_keeps_what_analysis_and_evaluate_read(tmp_path, capsys):
    from experiment.grid import main

    overrides = ["agent=dqn", "env=CartPole", "sparsity=rigl", "seed=0,1", f"run_root={tmp_path}"]
    done, stopped = (Path(str(c.run_dir)) for c in sweep_job_configs(overrides))
    for run_dir, status in ((done, "completed"), (stopped, "interrupted")):
        _summary(run_dir, status)
        (run_dir / "checkpoint").mkdir()
        (run_dir / "checkpoint" / "replay_buffer.npz").write_bytes(b"0" * 4096)
        (run_dir / "model.zip").write_bytes(b"model")
    assert main(["drop-checkpoints", *overrides]) == 0
    assert "removed 1 checkpoint folder(s)" in capsys.readouterr().out
    assert not (done / "checkpoint").exists() and (done / "model.zip").exists() and (done / "summary.json").exists()
    assert (stopped / "checkpoint" / "replay_buffer.npz").exists()  # it continues from there
