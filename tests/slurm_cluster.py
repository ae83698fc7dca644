"""A throwaway single-node SLURM for tests and the README's cluster check: munge, slurmctld and slurmd with every
file (config, state, spool, logs, sockets) under one folder, listening on loopback ports only.

    python -m tests.slurm_cluster start /tmp/cluster    # prints `export SLURM_CONF=...` for a shell
    python -m tests.slurm_cluster stop /tmp/cluster

Needs the Debian/Ubuntu packages ``slurmctld slurmd slurm-client munge`` (``.ci/run`` installs them) and root (the
daemons run as the current user; slurmd starts job steps as the submitting user). ``tests/test_slurm.py`` uses it
as a fixture. Configuration keys: https://slurm.schedmd.com/slurm.conf.html (22.05).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGES = "slurmctld slurmd slurm-client munge"  # Debian/Ubuntu
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
NODE_CPUS = 8  # more than this machine has: jobs share cores (SlurmdParameters=config_overrides lets slurmd accept it)
NODE_MEMORY_MB = 64000
MAX_ARRAY_SIZE = 1001  # SLURM's default MaxArraySize: array indices 0..1000 (slurm.conf.html#OPT_MaxArraySize)
START_TIMEOUT_S = 30


def missing_binaries() -> list[str]:
    """The daemons and client commands this cluster needs that are not installed."""
    found = {name: shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") for name in DAEMONS + CLIENTS}
    return [name for name, path in found.items() if path is None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """A running test cluster; ``env`` holds what a client needs (``SLURM_CONF``)."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True) -> str:
        """A SLURM client command against this cluster; returns its stdout."""
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job SLURM still knows (pending, running, recently finished): id, array task, state, reason."""
        out = self.run("squeue", "-h", "-a", "-t", "all", "-r", "-o", "%i|%T|%r|%j")
        rows = [line.split("|") for line in out.splitlines() if line.strip()]
        return [{"id": r[0], "state": r[1], "reason": r[2], "name": r[3]} for r in rows]

    def wait_idle(self, timeout_s: float = 300) -> None:
        """Until no job is pending or running."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not any(j["state"] in {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING"} for j in self.jobs()):
                return
            time.sleep(1)
        raise TimeoutError(f"jobs still queued after {timeout_s} s: {self.jobs()}")

    def stop(self) -> None:
        stop(self.root)


def _write_config(root: Path, max_array_size: int) -> None:
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    host = socket.gethostname()
    (root / "state").mkdir(parents=True, exist_ok=True)
    (root / "spool").mkdir(exist_ok=True)
    lines = {
        "ClusterName": "sparserltest",
        "SlurmctldHost": f"{host}(127.0.0.1)",
        "SlurmctldPort": str(_free_port()),
        "SlurmdPort": str(_free_port()),
        "SlurmUser": user,
        "SlurmdUser": user,
        "AuthType": "auth/munge",
        "AuthInfo": f"socket={root / 'munge.socket'}",
        "CredType": "cred/munge",
        "StateSaveLocation": str(root / "state"),
        "SlurmdSpoolDir": str(root / "spool"),
        "SlurmctldPidFile": str(root / "slurmctld.pid"),
        "SlurmdPidFile": str(root / "slurmd.pid"),
        "SlurmctldLogFile": str(root / "slurmctld.log"),
        "SlurmdLogFile": str(root / "slurmd.log"),
        "ProctrackType": "proctrack/linuxproc",  # no cgroups needed
        "TaskPlugin": "task/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_CPU",
        "SchedulerType": "sched/builtin",
        "SchedulerParameters": "sched_interval=1",  # start pending jobs within a second (default 60 s)
        "JobRequeue": "1",
        "ReturnToService": "2",
        "SlurmdParameters": "config_overrides",
        "MaxArraySize": str(max_array_size),
        "MinJobAge": "300",  # finished jobs stay visible to squeue for 5 minutes
        "KillWait": "5",
        "InactiveLimit": "0",
        "MpiDefault": "none",
        "AccountingStorageType": "accounting_storage/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "JobCompType": "jobcomp/none",
    }
    text = "\n".join(f"{key}={value}" for key, value in lines.items())
    text += f"\nNodeName={host} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} State=UNKNOWN\n"
    text += f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES\n"
    (root / "slurm.conf").write_text(text)


def start(root: Path, max_array_size: int = MAX_ARRAY_SIZE) -> Cluster:
    """Start munge, slurmctld and slurmd with everything under ``root``; wait until the node is idle."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if missing := missing_binaries():
        raise RuntimeError(f"SLURM is not installed (missing {', '.join(missing)}): apt-get install -y {PACKAGES}")
    _write_config(root, max_array_size)
    key = root / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    sbin = "/usr/sbin/"
    subprocess.run(
        [sbin + "munged", "--force", f"--socket={root / 'munge.socket'}", f"--key-file={key}",
         f"--log-file={root / 'munged.log'}", f"--pid-file={root / 'munged.pid'}", f"--seed-file={root / 'munged.seed'}"],
        check=True,
    )  # fmt: skip
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    subprocess.run([sbin + "slurmctld", "-c", "-f", str(root / "slurm.conf")], check=True, env=env)
    subprocess.run([sbin + "slurmd", "-f", str(root / "slurm.conf")], check=True, env=env)
    cluster = Cluster(root)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        state = cluster.run("sinfo", "-h", "-o", "%t", check=False).strip()
        if state in {"idle", "mix", "alloc"}:
            return cluster
        time.sleep(0.5)
    stop(root)
    raise RuntimeError(f"the test cluster did not come up in {START_TIMEOUT_S} s; see {root}/slurmctld.log, slurmd.log")


def stop(root: Path) -> None:
    """Stop the daemons started by :func:`start` under ``root`` (by their pid files), slurmd first."""
    for name in ("slurmd", "slurmctld", "munged"):
        pid_file = Path(root) / f"{name}.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in {"start", "stop"}:
        print("usage: python -m tests.slurm_cluster start|stop FOLDER", file=sys.stderr)
        return 2
    if argv[0] == "start":
        cluster = start(Path(argv[1]))
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        stop(Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
