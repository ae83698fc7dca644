"""One writer per run directory: an exclusive lock that a killed process cannot leave stale.

``hold_run_dir(run_dir)`` takes a POSIX record lock (``fcntl.lockf``) on ``run_dir/.lock`` and writes the
holder (host, pid, start time) into that file. What it relies on:

- **The kernel drops the lock when its process dies**, however it dies (``kill -9`` included): there is no
  stale lock to clean up and no timeout to guess. A POSIX lock belongs to the process, so children forked
  by the holder (env workers) do not keep it alive after the holder is killed.
- **Shared cluster file systems** must implement POSIX locks across hosts: NFSv4 (and NFSv3 with
  ``lockd``/``statd``) do, as do GPFS/Spectrum Scale and BeeGFS; Lustre does when mounted with ``flock``
  (with ``localflock`` the lock only excludes processes on the same node). If the holder's *host* crashes,
  the server frees its locks when the client's lease expires (NFSv4: about 90 s) or when it reboots (NFSv3).
  A file system without locks (``ENOLCK``/``EOPNOTSUPP``) is an error, never a silent pass.
- **One process may hold many run directories at once** (a population of members). Inside a process the
  held directories are tracked here, so holding the same directory twice is refused like another holder.
  POSIX locks are released when *any* descriptor of the file closes in the holder, so this module is the
  only code that opens lock files, and it never opens one its own process holds.

The lock file stays in the run directory (an empty-looking dotfile). Nothing here imports torch.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import os
import shutil
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"
STAGING_PREFIX = ".checkpoint."  # checkpoint staging folders (experiment.checkpoint.write_checkpoint)
TMP_SUFFIX = ".tmp"  # atomic-write temporaries (experiment.layout)
_BUSY = (errno.EACCES, errno.EAGAIN)

_held: dict[Path, int] = {}  # run directories this process holds -> lock file descriptor
_held_guard = threading.Lock()


class RunDirLocked(Exception):
    """Another process (or this one, elsewhere) holds the run directory; the message names the holder."""


class LocksUnsupported(OSError):
    """The run directory's file system cannot lock files; the message names the file and the error."""


def _key(run_dir: Path) -> Path:
    return Path(os.path.realpath(run_dir))


def _holder_text() -> str:
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return f"host {socket.gethostname()}, pid {os.getpid()}, since {started}"


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "a process that is still starting"


def is_held(run_dir: Path) -> bool:
    """Whether this process holds ``run_dir`` (through :func:`hold_run_dir`)."""
    with _held_guard:
        return _key(run_dir) in _held


@contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` (created if missing) exclusively for the ``with`` block.

    Raises :class:`RunDirLocked` at once (no waiting) if another process, or this one, holds it, and
    :class:`LocksUnsupported` if its file system cannot lock. Many directories at once::

        with contextlib.ExitStack() as stack:
            for run_dir in member_dirs:
                stack.enter_context(hold_run_dir(run_dir))
                cleanup_stale_staging(run_dir)
    """
    run_dir = Path(run_dir)
    key = _key(run_dir)
    with _held_guard:
        if key in _held:
            raise RunDirLocked(f"{run_dir} is in use by this process ({_holder_text().split(', since')[0]})")
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno in _BUSY:
                    raise RunDirLocked(f"{run_dir} is in use by another process: {_read_holder(fd)}") from None
                raise LocksUnsupported(
                    error.errno, f"cannot lock {path} ({error.strerror}): its file system must support POSIX locks"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, (_holder_text() + "\n").encode(), 0)
            os.fsync(fd)  # other hosts of a shared file system read the holder after their lock attempt fails
        except BaseException:
            os.close(fd)
            raise
        _held[key] = fd
    try:
        yield
    finally:
        with _held_guard:
            del _held[key]
            try:
                os.ftruncate(fd, 0)  # no holder any more
            except OSError:
                pass
            os.close(fd)  # releases the lock


def holder_of(run_dir: Path) -> RunDirLocked | None:
    """The refusal naming the process that holds ``run_dir`` now, or ``None`` if none does (or locks are unsupported).

    Probes by taking the lock for an instant, only where a run has started (``run_dir/.lock`` exists): a refused
    process names the live writer instead of describing the directory that writer is changing.
    """
    if not (Path(run_dir) / LOCK_FILE).exists():
        return None
    try:
        with hold_run_dir(run_dir):
            return None
    except RunDirLocked as error:
        return error
    except LocksUnsupported:
        return None


def stale_staging(run_dir: Path) -> list[Path]:
    """Leftovers of interrupted writes in ``run_dir``: checkpoint staging folders and atomic-write temporaries."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.glob(STAGING_PREFIX + "*") if p.is_dir()]
    for folder in (run_dir, run_dir / ".hydra"):
        found += [p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file()]
    return sorted(found)


def cleanup_stale_staging(run_dir: Path, owners: Sequence[Path] | None = None) -> list[Path]:
    """Remove :func:`stale_staging` leftovers of ``run_dir``; returns what was removed.

    Only the holder may call it (it raises ``RuntimeError`` otherwise): while this process holds the run
    directory no other writer is alive in it, so every staging folder there belongs to a dead writer. A folder
    that only the holder of other directories writes (a population's checkpoint folder, written by the process
    holding all its members' run directories) passes those as ``owners``.
    """
    for owner in [run_dir] if owners is None else owners:
        if not is_held(owner):
            which = "the run directory" if owners is None else f"its owner {owner}"
            raise RuntimeError(f"cleanup_stale_staging({run_dir}) needs {which} held (hold_run_dir)")
    removed = stale_staging(run_dir)
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed
