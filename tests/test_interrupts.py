"""Stop signals (experiment/interrupts.py, issue 24): recorded, not raised; handed over once the run is saved."""

from __future__ import annotations

import os
import signal

import pytest

from experiment.interrupts import DEFAULT_SIGNALS, StopNow, StopSignals, active


def _send(signum: int) -> None:
    os.kill(os.getpid(), signum)  # delivered to the main thread before os.kill returns (CPython checks at once)


def test_a_signal_is_recorded_not_raised_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals() as stop:
        assert active() is stop and not stop.requested
        _send(signal.SIGUSR1)
        assert stop.requested and stop.name == "SIGUSR1" and stop.exit_status == 128 + signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before and active() is None


def test_the_default_set_covers_ctrl_c_kill_and_the_scheduler_signals() -> None:
    assert set(DEFAULT_SIGNALS) == {"SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2"}
    with StopSignals() as stop:
        _send(signal.SIGINT)  # no KeyboardInterrupt
    assert stop.name == "SIGINT"


def test_a_second_signal_stops_at_once() -> None:
    with StopSignals(["SIGTERM"]) as stop:
        _send(signal.SIGTERM)
        with pytest.raises(StopNow):
            _send(signal.SIGTERM)
    assert stop.name == "SIGTERM"


def test_hand_over_exits_with_128_plus_the_signal_and_one_line(capsys: pytest.CaptureFixture) -> None:
    with StopSignals(["SIGUSR2"]) as stop:
        _send(signal.SIGUSR2)
    with pytest.raises(SystemExit) as exit_info:
        stop.hand_over("run x: interrupted; continue with resume=true")
    assert exit_info.value.code == 128 + signal.SIGUSR2
    assert capsys.readouterr().err == "run x: interrupted; continue with resume=true\n"


def test_hand_over_calls_the_previous_python_handler_first() -> None:
    seen: list[int] = []

    def requeue(signum: int, frame: object) -> None:  # e.g. submitit's SIGUSR2 handler, which requeues the job
        seen.append(signum)

    old = signal.signal(signal.SIGUSR2, requeue)
    try:
        with StopSignals() as stop:
            _send(signal.SIGUSR2)
            assert seen == []  # not while training
        with pytest.raises(SystemExit):
            stop.hand_over("saved")
        assert seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_python_default_sigint_handler_is_not_handed_over_to() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with StopSignals() as stop:
        _send(signal.SIGINT)
    with pytest.raises(SystemExit) as exit_info:  # not KeyboardInterrupt
        stop.hand_over("saved")
    assert exit_info.value.code == 128 + signal.SIGINT


def test_an_ignored_signal_stays_ignored() -> None:
    old = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
            _send(signal.SIGUSR1)
        assert not stop.requested
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_unknown_signal_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown signal 'SIGFOO'"):
        StopSignals(["SIGFOO"])
    assert StopSignals(["usr1", signal.SIGTERM]).signals == (signal.SIGUSR1, signal.SIGTERM)
