"""Stop signals become `Stopped`, held inside `deferred()` until the guarded work is done."""

from __future__ import annotations

import os
import signal

import pytest

from nezha_bootstrap import interrupts
from nezha_bootstrap.errors import DashboardRefused
from nezha_bootstrap.interrupts import Stopped


def send(signum: int) -> None:
    os.kill(os.getpid(), signum)  # the handler runs in this (main) thread before kill returns


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_raises_stopped_with_the_shell_exit_code(signum: int) -> None:
    with pytest.raises(Stopped) as caught, interrupts.handled():
        send(signum)

    assert (caught.value.exit_code, str(caught.value)) == (128 + signum, f"stopped by {signal.Signals(signum).name}")


def test_the_previous_handlers_come_back_after_the_command() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    with interrupts.handled():
        pass

    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_signal_inside_deferred_waits_for_the_block_to_finish() -> None:
    done = []
    with pytest.raises(Stopped) as caught, interrupts.handled():
        with interrupts.deferred():
            send(signal.SIGTERM)
            done.append("saved")

    assert done == ["saved"]
    assert caught.value.unanswered is False


def test_a_block_that_fails_after_the_signal_stops_marked_unanswered() -> None:
    with pytest.raises(Stopped) as caught, interrupts.handled():
        with interrupts.deferred():
            send(signal.SIGTERM)
            raise TimeoutError("no answer")

    assert caught.value.unanswered is True
    assert isinstance(caught.value.__cause__, TimeoutError)


def test_a_second_signal_stops_at_once() -> None:
    done = []
    with pytest.raises(Stopped), interrupts.handled():
        with interrupts.deferred():
            send(signal.SIGTERM)
            send(signal.SIGTERM)
            done.append("never")

    assert done == []


def test_a_bootstrap_error_in_the_block_wins_over_the_held_signal() -> None:
    with pytest.raises(DashboardRefused), interrupts.handled():
        with interrupts.deferred():
            send(signal.SIGINT)
            raise DashboardRefused("orphan server 7")


def test_no_signal_no_stop() -> None:
    with interrupts.handled():
        with interrupts.deferred():
            value = "saved"

    assert value == "saved"
