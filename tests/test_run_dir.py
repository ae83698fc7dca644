"""One writer per run directory, what a run directory may be continued from, and every checkpoint file checked."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiment.lock import RunDirLocked, cleanup_stale_staging, hold_run_dir, is_held
from experiment.plan import UsageError, plan_run
from experiment.sb3 import _train_held, train
from tests.agent_helpers import tiny_run
from tests.test_reliability import interrupted

HOLDER = """
import sys, time
from pathlib import Path
from experiment.lock import hold_run_dir
with hold_run_dir(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def start_holder(run_dir: Path) -> subprocess.Popen:
    """Another process holding ``run_dir``."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_a_held_run_dir_is_refused_naming_the_holder_and_kill9_leaves_no_stale_lock(tmp_path):
    run_dir = tmp_path / "run"
    holder = start_holder(run_dir)
    try:
        with pytest.raises(
            RunDirLocked, match=rf"^{run_dir} is in use by another process: host \S+, pid {holder.pid}, since "
        ):
            with hold_run_dir(run_dir):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no cleanup code runs in the holder
        holder.wait()
    with hold_run_dir(run_dir):  # the kernel dropped the dead holder's lock
        assert is_held(run_dir)
    assert not is_held(run_dir)


def test_one_process_holds_many_run_dirs_but_each_once(tmp_path):
    dirs = [tmp_path / f"member_{i}" for i in range(5)]
    with hold_run_dir(dirs[0]), hold_run_dir(dirs[1]), hold_run_dir(dirs[2]), hold_run_dir(dirs[3]), hold_run_dir(dirs[4]):
        assert all(is_held(d) for d in dirs)
        with pytest.raises(RunDirLocked, match=f"pid {os.getpid()}"):
            with hold_run_dir(tmp_path / "member_2" / ".." / "member_2"):  # the same directory, spelled differently
                pass
        assert is_held(dirs[2])  # the refused attempt released nothing
    assert not any(is_held(d) for d in dirs)


def test_stale_staging_is_removed_only_by_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".checkpoint.x1y2").mkdir(parents=True)
    (run_dir / ".checkpoint.x1y2" / "model.zip").write_bytes(b"half")
    (run_dir / ".summary.json.abc.tmp").write_text("{")
    (run_dir / "checkpoint").mkdir()
    (run_dir / "checkpoint" / "meta.json").write_text("{}")
    with pytest.raises(RuntimeError, match="needs the run directory held"):
        cleanup_stale_staging(run_dir)
    with hold_run_dir(run_dir):
        removed = cleanup_stale_staging(run_dir)
    assert sorted(p.name for p in removed) == [".checkpoint.x1y2", ".summary.json.abc.tmp"]
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "checkpoint"]


def test_a_second_process_is_refused_with_one_line_and_the_run_dir_is_unchanged(tmp_path):
    run_dir = tmp_path / "run"
    train(plan_run(tiny_run("dqn", "static", run_dir, "checkpoint_freq=100")))
    interrupted(run_dir)
    before = tree_digest(run_dir)
    holder = start_holder(run_dir)  # stands for a live training process
    try:
        result = subprocess.run(
            [sys.executable, "-m", "sparse_rl.run", "agent=dqn", "env=CartPole", "sparsity=static", "agent.net_arch=[32,32]",
             "agent.total_timesteps=300", f"run_dir={run_dir}", "resume=true", "progress_bar=false"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {run_dir} is in use by another process: host "), lines
    assert f"pid {holder.pid}" in lines[0]
    after = tree_digest(run_dir)
    after.pop(".lock")
    assert after == before


def test_a_kill_during_a_checkpoint_write_leaves_nothing_after_the_next_start(tmp_path):
    run_dir = tmp_path / "run"
    train(plan_run(tiny_run("dqn", "static", run_dir, "checkpoint_freq=100")))
    interrupted(run_dir)
    staging = run_dir / ".checkpoint.k9k9"
    shutil.copytree(run_dir / "checkpoint", staging)  # a write killed before its swap
    (staging / "model.zip").write_bytes(b"PK")
    with hold_run_dir(run_dir):
        _train_held(plan_run(tiny_run("dqn", "static", run_dir, "checkpoint_freq=100", "resume=true")), multirun=False)
    assert not staging.exists()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".checkpoint.")]


# ---------------------------------------------------------------- a run that stopped before its first checkpoint
def progress_steps(run_dir: Path) -> list[str]:
    lines = (run_dir / "progress.csv").read_text().splitlines()
    column = lines[0].split(",").index("time/total_timesteps")
    return [line.split(",")[column] for line in lines[1:]]


def test_a_run_interrupted_before_its_first_checkpoint_restarts_with_resume_true(tmp_path):
    run_dir, reference = tmp_path / "run", tmp_path / "reference"
    train(plan_run(tiny_run("dqn", "static", reference, "checkpoint_freq=0")))
    train(plan_run(tiny_run("dqn", "static", run_dir, "checkpoint_freq=0")))
    shutil.rmtree(run_dir / "checkpoint")  # as if killed before its first checkpoint: logs, no checkpoint
    interrupted(run_dir)
    (run_dir / "model.zip").unlink()
    with pytest.raises(
        UsageError, match=r"stopped before its first checkpoint .status running.; pass resume=true to start it"
    ):
        plan_run(tiny_run("dqn", "static", run_dir))
    summary = train(plan_run(tiny_run("dqn", "static", run_dir, "resume=true")))
    assert summary["status"] == "completed" and summary["num_timesteps"] == 300
    assert progress_steps(run_dir) == progress_steps(reference)  # the old rows were replaced, not appended to
    with np.load(run_dir / "evaluations.npz") as a, np.load(reference / "evaluations.npz") as b:
        np.testing.assert_array_equal(a["results"], b["results"])


# ---------------------------------------------------------------- every checkpoint file
@pytest.fixture(scope="module")
def sac_checkpoint(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("sac") / "run"
    train(plan_run(tiny_run("sac", "rigl", run_dir, "checkpoint_freq=200")))
    interrupted(run_dir)
    return run_dir


CHECKPOINT_FILES = ["meta.json", "model.zip", "controller.pt", "replay_buffer.npz", "training_state.json", "last_obs.npz",
                    "torch_rng.pt"]  # fmt: skip


def test_a_checkpoint_holds_no_pickle_and_only_the_filled_replay_rows(sac_checkpoint):
    names = sorted(p.name for p in (sac_checkpoint / "checkpoint").iterdir())
    assert names == sorted(CHECKPOINT_FILES)
    with np.load(sac_checkpoint / "checkpoint" / "replay_buffer.npz", allow_pickle=False) as data:
        assert len(data["observations"]) == 300  # of a 1,000-transition buffer


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_every_checkpoint_file_is_checked_with_one_line_naming_it(name, damage, sac_checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(sac_checkpoint, run_dir)
    path = run_dir / "checkpoint" / name
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut by a crash mid-copy
    before = tree_digest(run_dir)
    with pytest.raises(UsageError) as error:
        plan_run(tiny_run("sac", "rigl", run_dir, "checkpoint_freq=200", "resume=true"))
    message = str(error.value)
    assert "\n" not in message and name in message, message
    assert ("corrupt" if damage == "truncated" else "lacks") in message
    assert tree_digest(run_dir) == before


def test_a_pickled_replay_buffer_is_never_loaded(sac_checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(sac_checkpoint, run_dir)
    (run_dir / "checkpoint" / "replay_buffer.pkl").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(UsageError, match=r"replay_buffer.pkl is a pickle .written by an earlier version.; it is never loaded"):
        plan_run(tiny_run("sac", "rigl", run_dir, "checkpoint_freq=200", "resume=true"))
    with pytest.raises(UsageError, match=r"replay buffer of 1000 x 1 envs, this config gives 500 x 1"):
        plan_run(tiny_run("sac", "rigl", sac_checkpoint, "checkpoint_freq=200", "resume=true", "agent.sb3.buffer_size=500"))


@pytest.mark.parametrize(
    "algo, kwargs, steps",
    [("SAC", {}, 150),  # wrapped around: full, pos 50
     ("SAC", {}, 60),  # partly filled
     ("DQN", {"optimize_memory_usage": True, "replay_buffer_kwargs": {"handle_timeout_termination": False}}, 60)],
)  # fmt: skip
def test_replay_buffer_round_trip_is_exact(algo, kwargs, steps, tmp_path):
    import stable_baselines3

    from experiment.replay_io import load_replay_buffer, save_replay_buffer

    env = "Pendulum-v1" if algo == "SAC" else "CartPole-v1"
    make = getattr(stable_baselines3, algo)
    model = make("MlpPolicy", env, buffer_size=100, learning_starts=10_000, seed=0, **kwargs)
    model.learn(steps)
    save_replay_buffer(model.replay_buffer, tmp_path / "replay_buffer.npz")
    fresh = make("MlpPolicy", env, buffer_size=100, learning_starts=10_000, seed=1, **kwargs)
    load_replay_buffer(fresh.replay_buffer, tmp_path / "replay_buffer.npz")
    ours, theirs = fresh.replay_buffer, model.replay_buffer
    assert (ours.pos, ours.full) == (theirs.pos, theirs.full) == ((steps % 100, True) if steps > 100 else (steps, False))
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        if getattr(theirs, name, None) is not None:
            np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name), err_msg=name)


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resuming_a_checkpoint_unpickles_nothing_from_model_zip(tmp_path):
    import base64
    import pickle
    import zipfile

    run_dir = tmp_path / "run"
    train(plan_run(tiny_run("dqn", "static", run_dir, "checkpoint_freq=100", "agent.total_timesteps=300")))
    interrupted(run_dir)
    model = run_dir / "checkpoint" / "model.zip"
    with zipfile.ZipFile(model) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(members["data"])
    payload = base64.b64encode(pickle.dumps(Payload(tmp_path / "pwned"))).decode()
    data["ep_info_buffer"] = {":type:": "<class 'collections.deque'>", ":serialized:": payload}  # SB3's format
    members["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(model, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    summary = train(plan_run(tiny_run("dqn", "static", run_dir, "checkpoint_freq=100", "resume=true")))
    assert summary["status"] == "completed"
    assert not (tmp_path / "pwned").exists()
