"""Against a real SLURM (tests/slurm_cluster.py: munge, slurmctld, slurmd on this machine, loopback only, state in a
temporary folder): a sweep, scancel then continuation, the warning signal's requeue finishing exactly, a grid larger
than MaxArraySize submitted held and cancelled, populations as jobs (docs/design.md decision 38). Tiny budgets.

Skipped (one line) where the SLURM packages are missing or the tests do not run as root; ``.ci/run`` installs them
(``apt-get install -y slurmctld slurmd slurm-client munge``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import slurm_cluster

MAX_ARRAY_SIZE = 6  # this test cluster's MaxArraySize: array indices 0..5

if missing := slurm_cluster.missing_binaries():
    pytest.skip(
        f"SLURM not installed ({', '.join(missing)}): apt-get install -y {slurm_cluster.PACKAGES}", allow_module_level=True
    )
if os.geteuid() != 0:
    pytest.skip("the test SLURM cluster runs its daemons as root", allow_module_level=True)

DQN = [
    "agent=dqn", "env=CartPole", "agent.sb3.learning_starts=100", "agent.eval_freq=300", "agent.eval_episodes=2",
    "agent.net_arch=[16,16]", "progress_bar=false", "tensorboard=false", "sparsity.update_interval=10",
    "diagnostics.freq=0",
]  # fmt: skip
SLURM = ["hydra/launcher=slurm", "hydra.launcher.poll_s=1", "hydra.launcher.timeout_min=10", "hydra.launcher.mem_gb=1"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = slurm_cluster.start(tmp_path_factory.mktemp("slurm"), max_array_size=MAX_ARRAY_SIZE)
    yield cluster
    cluster.run("scancel", "--user", "root", check=False)
    cluster.stop()


def _cli(cluster, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=cluster.env)


def _popen(cluster, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster.env
    )


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _policy(run_dir: Path) -> dict:
    with zipfile.ZipFile(run_dir / "model.zip") as archive, archive.open("policy.pth") as f:
        return torch.load(f, weights_only=True)


def _same_run(a: Path, b: Path) -> None:
    """Bit-identical weights and evaluations."""
    pa, pb = _policy(a), _policy(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name
    with np.load(a / "evaluations.npz") as ea, np.load(b / "evaluations.npz") as eb:
        for key in ("timesteps", "results"):
            assert np.array_equal(ea[key], eb[key]), key


def _wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the sweep ended before {path} appeared: {process.communicate()}")
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout_s} s"
        time.sleep(0.2)


def _running_job(cluster) -> str:
    for _ in range(100):
        running = [j["id"] for j in cluster.jobs() if j["state"] == "RUNNING"]
        if running:
            return running[0]
        time.sleep(0.2)
    raise AssertionError(f"no running job: {cluster.jobs()}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The long tiny run trained without interruption (locally: same code path, same CPU)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(
        [sys.executable, "-m", "sparse_rl.run", *DQN, "agent.total_timesteps=1200", "checkpoint_freq=300", "seed=5",
         f"run_dir={run_dir}"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return run_dir


def test_a_sweep_runs_as_an_array_and_reports_every_job(cluster, tmp_path):
    root = tmp_path / "runs"
    sweep = ["sparse_rl.run", "-m", *SLURM, *DQN, "agent.total_timesteps=300", "sparsity=rigl", "seed=0", f"run_root={root}"]
    result = _cli(cluster, *sweep, "sparsity.sparsity=0.8,0.9,1.5")
    assert result.returncode == 1, result.stderr[-3000:]  # one job skipped on the submit host: not every job completed
    assert "sweep: 3 job(s): 2 completed, 1 skipped" in result.stderr, result.stderr[-3000:]
    assert "sparsity must be in [0, 1), got 1.5" in result.stderr
    runs = {p.parent.relative_to(root).as_posix(): _summary(p.parent) for p in root.rglob("summary.json")}
    assert sorted(runs) == ["dqn/CartPole/rigl_s0.8/seed_0", "dqn/CartPole/rigl_s0.9/seed_0"]
    assert all(summary["status"] == "completed" for summary in runs.values())
    status = _cli(cluster, "sparse_rl.grid", "status", *DQN, "sparsity=rigl", "sparsity.sparsity=0.8,0.9", "seed=0,1",
                  f"run_root={root}")  # fmt: skip
    assert status.stdout.splitlines()[-1].split() == ["total", "2", "0", "0", "0", "2"], status.stdout + status.stderr
    again = _cli(cluster, *sweep, "sparsity.sparsity=0.8,0.9")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep: 2 job(s): 2 completed" in again.stdout and "0 to submit" in again.stderr  # nothing submitted


def test_scancel_is_recorded_and_the_grid_continues_exactly(cluster, tmp_path, reference):
    root = tmp_path / "runs"
    args = ["sparse_rl.run", "-m", *SLURM, *DQN, "agent.total_timesteps=1200", "checkpoint_freq=300", "seed=5",
            f"run_root={root}"]  # fmt: skip
    run_dir = root / "dqn/CartPole/dense_s0.0/seed_5"
    sweep = _popen(cluster, *args)
    _wait_for(run_dir / "checkpoint" / "meta.json", sweep)
    cluster.run("scancel", _running_job(cluster))
    _, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 1, err[-3000:]
    assert "sweep: 1 job(s): 1 interrupted" in err, err[-3000:]
    assert _summary(run_dir)["status"] == "interrupted"
    resubmit = _cli(cluster, "sparse_rl.grid", "resubmit", *args[2:])
    assert resubmit.returncode == 0, resubmit.stderr[-3000:]
    assert _summary(run_dir)["status"] == "completed"
    _same_run(run_dir, reference)


def test_the_warning_signal_requeues_and_the_run_finishes_exactly(cluster, tmp_path, reference):
    """SLURM sends ``--signal=USR2@signal_delay_s`` before the time limit; here it is sent at once (``scancel
    --signal``), as a preemption would: the run checkpoints, submitit requeues the task, which continues."""
    root = tmp_path / "runs"
    run_dir = root / "dqn/CartPole/dense_s0.0/seed_5"
    sweep = _popen(cluster, "sparse_rl.run", "-m", *SLURM, *DQN, "agent.total_timesteps=1200", "checkpoint_freq=300",
                   "seed=5", f"run_root={root}")  # fmt: skip
    _wait_for(run_dir / "checkpoint" / "meta.json", sweep)
    job = _running_job(cluster)
    cluster.run("scancel", "--signal=USR2", job)
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err[-3000:]
    assert "sweep: 1 job(s): 1 completed" in out + err
    logs = "".join(p.read_text() for p in (root / ".submitit").rglob("*.err"))
    assert "Requeuing" in logs or "requeu" in logs.lower(), logs[-2000:]
    assert _summary(run_dir)["status"] == "completed"
    _same_run(run_dir, reference)


def test_a_grid_larger_than_max_array_size_is_submitted_in_arrays(cluster, tmp_path):
    root = tmp_path / "runs"
    grid = [
        *SLURM,
        *DQN,
        "sparsity=static,set,rigl",
        "seed=range(4)",
        f"run_root={root}",
        "hydra.launcher.wait=false",
        "+hydra.launcher.additional_parameters.hold=true",
    ]  # fmt: skip  (12 jobs, held: nothing trains)
    refused = _cli(cluster, "sparse_rl.run", "-m", *grid, f"hydra.launcher.max_array_size={MAX_ARRAY_SIZE + 1}")
    assert refused.returncode == 1 and "hydra.launcher.max_array_size must be below the cluster's MaxArraySize" in (
        refused.stderr
    ), refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    cluster.run("scancel", "--user", "root")
    result = _cli(cluster, "sparse_rl.run", "-m", *grid, f"hydra.launcher.max_array_size={MAX_ARRAY_SIZE}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sweep: 12 job(s): 12 submitted" in result.stdout + result.stderr
    held = [j for j in cluster.jobs() if j["state"] == "PENDING"]
    assert len(held) == 12 and all(j["reason"] in ("JobHeldUser", "JobHeldAdmin") for j in held), held
    arrays = {j["id"].split("_")[0] for j in held}
    assert len(arrays) == 2  # 6 + 6
    cluster.run("scancel", *arrays)
    cluster.wait_idle(60)
    assert not list(root.rglob("summary.json"))  # nothing trained


def test_a_population_runs_as_one_job(cluster, tmp_path):
    root = tmp_path / "runs"
    result = _cli(cluster, "sparse_rl.run", "-m", "hydra/launcher=population",
                  "+hydra.launcher.slurm={poll_s:1,timeout_min:10,mem_gb:2}", *DQN, "agent.total_timesteps=300",
                  "sparsity=rigl", "sparsity.sparsity=0.8,0.9,1.5", "seed=0", f"run_root={root}")  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]  # sparsity 1.5 is skipped on the submit host
    assert "sweep: 3 job(s): 2 completed, 1 skipped" in result.stderr, result.stderr[-3000:]
    assert "population of 2 submitted as SLURM job" in result.stderr
    summaries = [_summary(p.parent) for p in root.rglob("summary.json")]
    assert len(summaries) == 2 and all(s["status"] == "completed" and s["engine"] == "population" for s in summaries)
    again = _cli(cluster, "sparse_rl.run", "-m", "hydra/launcher=population", "+hydra.launcher.slurm={poll_s:1}", *DQN,
                 "agent.total_timesteps=300", "sparsity=rigl", "sparsity.sparsity=0.8,0.9", "seed=0",
                 f"run_root={root}")  # fmt: skip
    assert again.returncode == 0 and "sweep: 2 job(s): 2 completed" in again.stdout, again.stderr[-3000:]
    assert "submitted as SLURM job" not in again.stderr  # resume=auto: completed members are left untouched
