"""Backoff with full jitter, Retry-After honoured, and one deadline per step, on a fake clock."""

from __future__ import annotations

import random
from typing import Callable

import pytest

from nezha_bootstrap.errors import BootstrapError, DashboardRefused, DashboardUnreachable, InstallerFailed
from nezha_bootstrap.retry import Backoff, Transient, with_retries


class FakeTime:
    """A monotonic clock that only moves when something sleeps (or an attempt says it took time)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Fraction(random.Random):
    """uniform(a, b) answers the same fraction of the way from a to b every time, and records (a, b)."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return a + (b - a) * self.fraction


class Waits(random.Random):
    """uniform(a, b) answers the given waits in order (the backoff's draws, chosen by the test)."""

    def __init__(self, *waits: float) -> None:
        super().__init__(0)
        self.waits = list(waits)

    def uniform(self, a: float, b: float) -> float:
        return self.waits.pop(0)


class RunsOut(Transient):
    """A failure that comes only when the attempt's whole time is spent: a timeout."""

    def __init__(self, host: str = "d") -> None:
        super().__init__(f"no answer from {host} in time", ambiguous=True)


class Script:
    """An attempt that raises the given failures in order, then returns 'done'; records seconds_left.
    A RunsOut failure moves the clock by the whole of the attempt's seconds_left first."""

    def __init__(self, *failures: BaseException, takes: float = 0.0, time: FakeTime | None = None) -> None:
        self.failures = list(failures)
        self.seconds_left: list[float] = []
        self.takes = takes
        self.time = time

    def __call__(self, seconds_left: float) -> str:
        self.seconds_left.append(seconds_left)
        if self.time is not None:
            self.time.now += self.takes
            if self.failures and isinstance(self.failures[0], RunsOut):
                self.time.now += seconds_left
        if self.failures:
            raise self.failures.pop(0)
        return "done"


def run(attempt: Callable[[float], str], time: FakeTime, *, deadline: float = 30, fraction: float = 1.0,
        give_up: type[BootstrapError] = DashboardUnreachable, notes: list[str] | None = None,
        attempts_in_deadline: int = 1, rng: random.Random | None = None) -> str:
    return with_retries(
        attempt, deadline=deadline, what="register", give_up=give_up,
        notify=lambda message: (notes if notes is not None else []).append(message), rng=rng or Fraction(fraction),
        clock=time.clock, sleep=time.sleep, attempts_in_deadline=attempts_in_deadline,
    )


def always(failure: Transient, times: int = 1000) -> list[Transient]:
    return [failure] * times


# --- the backoff ------------------------------------------------------------------------------------

def test_full_jitter_draws_between_zero_and_the_capped_exponential() -> None:
    rng = Fraction(0.5)
    backoff = Backoff(base=0.5, cap=4.0)

    delays = [backoff.delay(attempt, rng) for attempt in (0, 1, 2, 3, 4, 1000)]

    assert rng.bounds == [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0), (0.0, 4.0), (0.0, 4.0), (0.0, 4.0)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


def test_full_jitter_spreads_over_the_whole_range() -> None:
    rng = random.Random(7)
    backoff = Backoff(base=0.5, cap=4.0)

    delays = [backoff.delay(2, rng) for _ in range(2000)]

    assert all(0.0 <= d <= 2.0 for d in delays)
    assert min(delays) < 0.05 and max(delays) > 1.95


# --- retrying --------------------------------------------------------------------------------------------

def test_a_first_success_returns_at_once_with_the_whole_deadline() -> None:
    time = FakeTime()
    attempt = Script()

    assert run(attempt, time) == "done"
    assert (attempt.seconds_left, time.slept) == ([30.0], [])


def test_transient_failures_are_retried_with_growing_waits() -> None:
    time = FakeTime()
    notes: list[str] = []
    attempt = Script(Transient("HTTP 503"), Transient("HTTP 503"), Transient("cannot connect to d: refused"))

    assert run(attempt, time, notes=notes) == "done"
    assert time.slept == [0.5, 1.0, 2.0]
    assert attempt.seconds_left == [30.0, 29.5, 28.5, 26.5]
    assert notes == [
        "register: HTTP 503; retrying in 0.5 s",
        "register: HTTP 503; retrying in 1.0 s",
        "register: cannot connect to d: refused; retrying in 2.0 s",
    ]


@pytest.mark.parametrize(("retry_after", "fraction", "waited"), [(7.0, 1.0, 7.5), (0.1, 1.0, 0.6), (3.0, 0.0, 3.0),
                                                                (3.0, 0.5, 3.25)])
def test_retry_after_is_honoured_and_never_shortened(retry_after: float, fraction: float, waited: float) -> None:
    time = FakeTime()

    assert run(Script(Transient("HTTP 429", retry_after=retry_after)), time, fraction=fraction) == "done"
    assert time.slept == [waited]


def test_the_jitter_above_a_retry_after_grows_with_the_attempts_up_to_the_cap() -> None:
    time = FakeTime()
    notes: list[str] = []
    attempt = Script(*always(Transient("HTTP 429", retry_after=1.0), times=5))

    assert run(attempt, time, deadline=60, notes=notes) == "done"
    assert time.slept == [1.5, 2.0, 3.0, 5.0, 5.0]  # 1 s asked, plus the backoff's window (0.5, 1, 2, 4, 4)
    assert notes[0] == "register: HTTP 429; retrying in 1.5 s"


def test_nodes_told_the_same_retry_after_come_back_spread_above_it_never_before() -> None:
    backoff = Backoff(base=0.5, cap=4.0)
    rng = random.Random(19)

    waits = [backoff.after(2.0, 3, rng) for _ in range(2000)]  # 2,000 nodes answered 429 with Retry-After: 2

    assert all(2.0 <= wait <= 6.0 for wait in waits)
    assert min(waits) < 2.05 and max(waits) > 5.95
    assert max(sum(1 for w in waits if second <= w < second + 0.5) for second in (2.0, 2.5, 3.0, 3.5, 4.0, 4.5,
                                                                              5.0, 5.5)) < 2000 / 8 * 1.3


@pytest.mark.parametrize("give_up", [DashboardUnreachable, InstallerFailed])
def test_it_gives_up_with_the_given_error_before_passing_the_deadline(give_up: type[BootstrapError]) -> None:
    time = FakeTime()
    attempt = Script(*always(Transient("HTTP 503")))

    with pytest.raises(give_up) as caught:
        run(attempt, time, deadline=10, give_up=give_up)

    # waits of 0.5, 1, 2 and 4 s fit in 10 s; the fifth (4 s more) would end past it.
    assert str(caught.value) == "register: HTTP 503; gave up after 5 attempt(s) within the 10 s deadline"
    assert time.slept == [0.5, 1.0, 2.0, 4.0]
    assert time.now < 1010.0
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_retry_after_beyond_the_deadline_gives_up_at_once_and_says_so() -> None:
    time = FakeTime()

    with pytest.raises(DashboardUnreachable) as caught:
        run(Script(*always(Transient("HTTP 429 (too many requests)", retry_after=60.0))), time, deadline=30)

    assert str(caught.value) == (
        "register: HTTP 429 (too many requests); the dashboard asked to wait 60 s (Retry-After); "
        "gave up after 1 attempt(s) within the 30 s deadline"
    )
    assert time.slept == []


def test_time_spent_inside_attempts_counts_against_the_deadline() -> None:
    time = FakeTime()
    attempt = Script(*always(Transient("no answer from d in time", ambiguous=True)), takes=4.0, time=time)

    with pytest.raises(DashboardUnreachable) as caught:
        run(attempt, time, deadline=10, fraction=0.0)

    assert str(caught.value) == (
        "register: no answer from d in time; gave up after 3 attempt(s) within the 10 s deadline"
    )
    assert attempt.seconds_left == [10.0, 6.0, 2.0]


def test_one_attempt_gets_only_its_share_of_the_deadline_when_asked() -> None:
    time = FakeTime()
    attempt = Script(Transient("no answer"), takes=10.0, time=time)

    assert run(attempt, time, deadline=30, fraction=0.0, attempts_in_deadline=3) == "done"
    assert attempt.seconds_left == [10.0, 10.0]


@pytest.mark.parametrize("error", [DashboardRefused("register: the dashboard refused the API token"), KeyError("bug")])
def test_anything_but_a_transient_failure_ends_at_once(error: Exception) -> None:
    time = FakeTime()
    attempt = Script(error, Transient("never reached"))

    with pytest.raises(type(error)) as caught:
        run(attempt, time)

    assert caught.value is error
    assert (len(attempt.seconds_left), time.slept) == (1, [])


# --- the end of the deadline ------------------------------------------------------------------------------
# The CI failure these guard: three truncated bodies, waits of 0.4, 0.7 and 1.9 s in a 3 s deadline, a
# fourth attempt started with hundredths of a second left, timed out, and the error named the timeout.

BROKE = "the connection to d broke: peer closed connection without sending complete message body"


@pytest.mark.parametrize(("deadline", "waits", "useful"), [
    (3, (0.5, 0.75, 1.5), 0.25),   # a quarter of the 1 s share
    (300, (4.0, 4.0, 290.0), 2.0),  # a quarter of the 100 s share is 25 s: at most 2 s
])
def test_an_attempt_starts_with_a_useful_slice_of_time_left(deadline: float, waits: tuple[float, ...],
                                                            useful: float) -> None:
    time = FakeTime()
    attempt = Script(*always(Transient(BROKE), 3), time=time)

    assert run(attempt, time, deadline=deadline, attempts_in_deadline=3, rng=Waits(*waits)) == "done"
    assert attempt.seconds_left[-1] == useful


@pytest.mark.parametrize(("deadline", "waits"), [(3, (0.5, 0.75, 1.625)), (300, (4.0, 4.0, 290.5))])
def test_no_attempt_starts_with_less_than_a_useful_slice_left(deadline: float, waits: tuple[float, ...]) -> None:
    time = FakeTime()
    attempt = Script(*always(Transient(BROKE)), time=time)

    with pytest.raises(DashboardUnreachable) as caught:
        run(attempt, time, deadline=deadline, attempts_in_deadline=3, rng=Waits(*waits))

    assert str(caught.value) == f"register: {BROKE}; gave up after 3 attempt(s) within the {deadline} s deadline"
    assert len(attempt.seconds_left) == 3
    assert time.slept == list(waits[:2])  # the third wait is not waited: nothing useful could follow it


def test_a_last_attempt_cut_short_by_the_deadline_does_not_hide_the_failure_before_it() -> None:
    time = FakeTime()
    attempt = Script(Transient(BROKE), Transient("HTTP 503"), Transient(BROKE), RunsOut(), time=time)

    with pytest.raises(DashboardUnreachable) as caught:
        run(attempt, time, deadline=3, attempts_in_deadline=3, rng=Waits(0.5, 0.75, 1.5, 0.0))

    assert str(caught.value) == f"register: {BROKE}; gave up after 4 attempt(s) within the 3 s deadline"
    assert (attempt.seconds_left[-1], time.now) == (0.25, 1003.0)


def test_a_last_attempt_that_had_its_whole_share_names_its_own_timeout() -> None:
    time = FakeTime()
    attempt = Script(Transient("cannot connect to d: refused"), RunsOut(), time=time)

    with pytest.raises(DashboardUnreachable) as caught:
        run(attempt, time, deadline=3, attempts_in_deadline=3, rng=Waits(2.0, 0.0))

    assert str(caught.value) == "register: no answer from d in time; gave up after 2 attempt(s) within the 3 s deadline"
    assert (attempt.seconds_left, time.now) == ([1.0, 1.0], 1003.0)


def test_a_short_last_attempt_that_fails_before_the_deadline_names_its_own_failure() -> None:
    time = FakeTime()
    attempt = Script(RunsOut(), Transient("HTTP 503"), time=time)

    with pytest.raises(DashboardUnreachable) as caught:
        run(attempt, time, deadline=3, attempts_in_deadline=3, rng=Waits(1.5, 0.5))

    assert str(caught.value) == "register: HTTP 503; gave up after 2 attempt(s) within the 3 s deadline"
    assert attempt.seconds_left == [1.0, 0.5]


def test_only_the_timeouts_at_the_deadline_give_way_when_all_failures_are_timeouts() -> None:
    time = FakeTime()
    attempt = Script(*always(RunsOut(), 10), time=time)

    with pytest.raises(DashboardUnreachable) as caught:
        run(attempt, time, deadline=3, attempts_in_deadline=3, rng=Waits(0.25, 0.25, 0.0))

    assert str(caught.value) == "register: no answer from d in time; gave up after 3 attempt(s) within the 3 s deadline"
    assert attempt.seconds_left == [1.0, 1.0, 0.5]
