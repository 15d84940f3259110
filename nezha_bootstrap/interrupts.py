"""SIGTERM, SIGINT and SIGHUP: stop at a safe point, never between the dashboard's answer and its save.

A stop signal raises `Stopped` in the main thread, so `finally` blocks remove temporary files, kill
the installer's process group and release the lock. Inside `deferred()` (from a complete register
answer to its saved secret: a local write, never a network wait) the signal waits for the block to
end, so an answer that arrived is never lost to a stop. A second signal stops at once. Nothing else
holds a signal back: every network wait is interruptible (name resolution runs in a helper thread).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from nezha_bootstrap.errors import BootstrapError

# SIGHUP: the ssh session of a one-off run dropped. Stopping cleanly kills the installer's process group
# (it would run on in its own session, the secret in its argv) and removes the installer copy.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stopped(BaseException):
    """A stop signal arrived. A BaseException, like KeyboardInterrupt: no `except Exception` swallows it."""

    def __init__(self, signum: int, unanswered: bool = False) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        self.unanswered = unanswered  # it waited for a request that then failed: an answer may be lost
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class _Guard:
    depth = 0
    pending: int | None = None


_guard = _Guard()


def _on_signal(signum: int, frame: Any) -> None:
    if _guard.depth and _guard.pending is None:
        _guard.pending = signum
        return
    raise Stopped(signum)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Turn stop signals into `Stopped` while a command runs; the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (a command run from a thread: tests, benchmarks)
        return
    previous = {signum: signal.signal(signum, _on_signal) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _guard.depth, _guard.pending = 0, None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a stop signal until the block ends, then stop (unless the block failed for good)."""
    _guard.depth += 1
    try:
        yield
    except BootstrapError:
        # The run ends with this error, whose message says more than "stopped" would.
        _guard.depth -= 1
        if _guard.depth == 0:
            _guard.pending = None
        raise
    except Stopped:
        _guard.depth -= 1  # a second signal: stop now
        _guard.pending = None
        raise
    except BaseException as exc:
        _guard.depth -= 1
        _stop_if_pending(cause=exc)
        raise
    _guard.depth -= 1
    _stop_if_pending(cause=None)


def _stop_if_pending(cause: BaseException | None) -> None:
    if _guard.depth == 0 and _guard.pending is not None:
        signum, _guard.pending = _guard.pending, None
        raise Stopped(signum, unanswered=cause is not None) from cause
