"""Stop a training run cleanly on a signal: checkpoint, record ``status: interrupted``, say how to continue.

Ctrl-C (SIGINT), ``kill`` (SIGTERM) and a scheduler's warning signal (SLURM ``--signal=USR1@90``; submitit uses
SIGUSR2) all mean "stop soon". Raising ``KeyboardInterrupt`` in the middle of a training step loses the work since
the last checkpoint and prints a long traceback, so both training paths wrap training in :class:`StopSignals`,
whose handler only records the request; the loops poll it between steps (docs/design.md decision 36).

The API (``experiment/sb3.py`` and ``experiment/population.py`` use it; the cluster launchers build on it)::

    with StopSignals() as stop:              # installs the handlers; restores the previous ones on exit
        for step in loop:
            ...                              # one whole step: never interrupted half-way
            if stop.requested:               # cheap: an attribute read
                save_checkpoint(step)
                break
    if stop.requested:
        record_status("interrupted", step)   # summary.json: the run's recorded state is true
        stop.hand_over(f"interrupted by {stop.name} at env step {step}; continue with ... resume=true")

- ``StopSignals(signals)``: which signals to catch, names or numbers (default :data:`DEFAULT_SIGNALS`: SIGINT,
  SIGTERM, SIGUSR1, SIGUSR2). A signal whose disposition is ``SIG_IGN`` when the block starts (``nohup``, a
  background job of a non-interactive shell) stays ignored, as Python itself does for SIGINT. Outside the main
  thread (where Python cannot install handlers) nothing is installed and ``requested`` stays false.
- ``stop.requested`` / ``stop.signum`` / ``stop.name``: the first signal received (``None`` before one).
- A **second** signal while a stop is pending raises :class:`StopNow` in the main thread at once (press Ctrl-C twice
  to stop without waiting for the checkpoint); the paths catch it, record ``interrupted`` at their last checkpoint
  and hand over as for the first.
- ``stop.hand_over(message)``: call it once the run is saved and recorded. It prints ``message`` (one line, on
  stderr); then, if the handler installed before this block was a Python callable (e.g. submitit's SIGUSR2
  ``checkpoint_and_try_requeue``, which requeues the job), it calls that handler with the signal, and otherwise (or
  if that handler returns) it exits with status ``128 + signum`` (the shell's convention for "killed by a
  signal") via ``SystemExit``: no traceback. Python's own SIGINT handler (``signal.default_int_handler``, which
  raises ``KeyboardInterrupt``) does not count as a handler to hand over to.
- :func:`active` returns the innermost running :class:`StopSignals` (or ``None``), for code that polls without
  having the object passed to it.

Nothing here imports torch, SB3 or Hydra.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterable
from types import FrameType, TracebackType
from typing import Any

DEFAULT_SIGNALS: tuple[str, ...] = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")
SIGNAL_EXIT_BASE = 128  # exit status of a process stopped by signal N: 128 + N (POSIX shells)

_stack: list[StopSignals] = []


class StopNow(BaseException):
    """A second stop signal arrived while the first was being honoured: stop at once (no new checkpoint).

    A ``BaseException`` like ``KeyboardInterrupt``, so ``except Exception`` blocks do not swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"second {signal_name(signum)}: stopping at once")
        self.signum = signum


def signal_name(signum: int) -> str:
    """``SIGINT`` for 2, and so on (the number as text if the platform has no name for it)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _signum(sig: str | int) -> int:
    if isinstance(sig, int):
        return sig
    name = sig.upper() if sig.upper().startswith("SIG") else f"SIG{sig.upper()}"
    try:
        return int(signal.Signals[name])
    except KeyError:
        valid = ", ".join(DEFAULT_SIGNALS)
        raise ValueError(f"unknown signal {sig!r}; e.g. {valid}") from None


def active() -> StopSignals | None:
    """The innermost :class:`StopSignals` block running in this process, or ``None``."""
    return _stack[-1] if _stack else None


class StopSignals:
    """Record stop signals instead of raising; see the module docstring for the protocol."""

    def __init__(self, signals: Iterable[str | int] = DEFAULT_SIGNALS) -> None:
        self.signals = tuple(dict.fromkeys(_signum(s) for s in signals))
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._installed = False

    # ----------------------------------------------------------------- state
    @property
    def requested(self) -> bool:
        """Whether a stop signal has arrived."""
        return self.signum is not None

    @property
    def name(self) -> str | None:
        """The signal's name (``SIGINT``), ``None`` before one arrived."""
        return None if self.signum is None else signal_name(self.signum)

    @property
    def exit_status(self) -> int:
        """``128 + signum``: what :meth:`hand_over` exits with."""
        if self.signum is None:
            raise RuntimeError("no stop signal was received")
        return SIGNAL_EXIT_BASE + self.signum

    def request(self, signum: int) -> None:
        """Record a stop as the handler does (tests and callers that stop a run themselves)."""
        if self.signum is None:
            self.signum = signum

    # ----------------------------------------------------------------- the handler
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise StopNow(signum)
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                previous = signal.getsignal(signum)
                if previous == signal.SIG_IGN:
                    continue
                self._previous[signum] = previous
                signal.signal(signum, self._handle)
            self._installed = True
        _stack.append(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        self.restore()

    def restore(self) -> None:
        """Put the handlers found at the start back (idempotent; ``__exit__`` calls it)."""
        if self in _stack:
            _stack.remove(self)
        if not self._installed:
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._installed = False

    # ----------------------------------------------------------------- after the run is saved and recorded
    def previous_handler(self) -> Any:
        """The Python handler this block replaced for the received signal, if it is one to hand over to."""
        previous = self._previous.get(self.signum) if self.signum is not None else None
        if callable(previous) and previous is not signal.default_int_handler:
            return previous
        return None

    def hand_over(self, message: str, frame: FrameType | None = None) -> None:
        """Print ``message``; call the previous Python handler, else exit with ``128 + signum`` (no traceback)."""
        if self.signum is None:
            raise RuntimeError("hand_over() without a stop signal")
        print(message, file=sys.stderr, flush=True)
        handler = self.previous_handler()
        self.restore()
        if handler is not None:
            handler(self.signum, frame)
        raise SystemExit(self.exit_status)
