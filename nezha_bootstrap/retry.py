"""Retries with exponential backoff and full jitter, bounded by one deadline per step."""

from __future__ import annotations

import random
import time
from typing import Callable, Final, Protocol, TypeVar

from nezha_bootstrap.errors import BootstrapError

T = TypeVar("T")


class Transient(Exception):
    """A failure worth retrying. `ambiguous`: the request may have been processed anyway."""

    def __init__(self, message: str, *, retry_after: float | None = None, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.ambiguous = ambiguous


class Backoff:
    """Full jitter: wait uniform(0, min(cap, base * 2**attempt)).

    The cap is small on purpose: after a dashboard comes back, a node waits at most `cap` seconds
    before its next try (issue: p95 from recovery to registered under 5 s). A plain class, its fields Final
    (never compared, hashed, replaced or printed): a frozen dataclass costs ~1 ms of every run's start.
    """

    def __init__(self, base: float = 0.5, cap: float = 4.0) -> None:
        self.base: Final = base
        self.cap: Final = cap

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.cap, self.base * (2 ** min(attempt, 30))))

    def after(self, retry_after: float | None, attempt: int, rng: random.Random) -> float:
        """The wait before the next attempt: the backoff's draw, or, when the dashboard sent a Retry-After,
        that many seconds plus the draw. Never shorter than Retry-After, and spread above it: nodes told
        the same Retry-After in the same second (a boot storm answered 429) do not all come back at once."""
        jitter = self.delay(attempt, rng)
        return jitter if retry_after is None else retry_after + jitter


DEFAULT_BACKOFF = Backoff()


# One attempt gets at most a third of a step's deadline, so a connection that hangs leaves time for
# two more attempts (at the default 300 s deadline the 30 s read timeout is the shorter bound).
ATTEMPTS_IN_DEADLINE = 3

# No attempt starts with less than this left of the step's deadline: a quarter of one attempt's share,
# and never more than 2 s. With less, an attempt mostly ends by running out of time, and its "no answer
# in time" would only hide the failure that made us retry. 2 s is ample for a dashboard that answers at
# all (a request takes milliseconds nearby, a few hundred across the world with TLS), so a long deadline
# gives up at most 2 s early, a short one in proportion (at 3 s and three attempts: 0.25 s early).
USEFUL_SHARE = 0.25
USEFUL_SECONDS = 2.0


class Notify(Protocol):
    def __call__(self, message: str) -> None: ...


def with_retries(
    attempt: Callable[[float], T],
    *,
    deadline: float,
    what: str,
    give_up: type[BootstrapError],
    notify: Notify,
    backoff: Backoff = DEFAULT_BACKOFF,
    attempts_in_deadline: int = ATTEMPTS_IN_DEADLINE,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `attempt(seconds_left)` until it returns, raises a non-Transient error, or time runs out.

    A `Retry-After` is honoured, never shortened and spread above (Backoff.after); a wait that would
    pass the deadline ends the step with `give_up` instead. `attempts_in_deadline`: one attempt gets
    at most that share of the deadline, so a connection that hangs leaves time for the next attempts.
    No attempt starts with less than a useful slice of time left (USEFUL_SHARE); giving up names the
    last failure that was not cut short by the deadline.
    """
    rng = rng or random.Random()
    end = clock() + deadline
    per_attempt = deadline / max(attempts_in_deadline, 1)
    tries = 0
    cause: Transient | None = None
    while True:
        given = min(end - clock(), per_attempt)
        try:
            return attempt(max(given, 0.001))
        except Transient as failure:
            tries += 1
            cause = cause if cause is not None and cut_short(given, per_attempt, clock(), end) else failure
            wait = backoff.after(failure.retry_after, tries - 1, rng)
            if clock() + wait + useful_slice(per_attempt) > end:
                asked = ""
                if failure.retry_after is not None:
                    asked = f"; the dashboard asked to wait {failure.retry_after:g} s (Retry-After)"
                raise give_up(
                    f"{what}: {cause.message}{asked}; gave up after {tries} attempt(s) "
                    f"within the {deadline:g} s deadline"
                ) from None
            notify(f"{what}: {failure.message}; retrying in {wait:.1f} s")
            sleep(wait)


def useful_slice(per_attempt: float) -> float:
    """The least time worth starting an attempt with (see USEFUL_SHARE)."""
    return min(per_attempt * USEFUL_SHARE, USEFUL_SECONDS)


def cut_short(given: float, per_attempt: float, now: float, end: float) -> bool:
    """Whether a failed attempt had less than its share because of the deadline and ran into it: its
    failure (mostly "no answer in time") says less than the failure before it."""
    return given < per_attempt and now >= end
