"""nezha-bootstrap as a real process: timing, signals, and what a run leaves behind."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

from tests.conftest import Cli, leak_scan

STATE_DIR = "var/lib/nezha-bootstrap"


@dataclass(frozen=True)
class Finished:
    """How one process run ended."""

    exit_code: int
    stdout: str
    stderr: str
    seconds: float


def process_env(cli: Cli, **overrides: str | None) -> dict[str, str]:
    """The test's environment plus the `cli` settings (None removes a variable)."""
    env = dict(os.environ)
    for key, value in cli.env(**overrides).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def start(cli: Cli, *args: str, prefix: tuple[str, ...] = (), **env: str | None) -> subprocess.Popen[str]:
    """Start `nezha-bootstrap ARGS` (optionally behind a wrapper such as `unshare`)."""
    argv = [*prefix, sys.executable, "-m", "nezha_bootstrap", *args]
    return subprocess.Popen(argv, env=process_env(cli, **env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], started: float, timeout: float) -> Finished:
    """Wait for `proc` at most `timeout` seconds (then kill it and fail the test)."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"nezha-bootstrap still ran after {timeout} s; stderr:\n{stderr}") from None
    return Finished(proc.returncode, stdout, stderr, time.monotonic() - started)


def run(cli: Cli, *args: str, timeout: float = 30.0, prefix: tuple[str, ...] = (), **env: str | None) -> Finished:
    """Run `nezha-bootstrap ARGS` to its end as a separate process."""
    started = time.monotonic()
    return finish(start(cli, *args, prefix=prefix, **env), started, timeout)


def run_from_first_line(cli: Cli, *args: str, timeout: float = 30.0, **env: str | None) -> Finished:
    """Like `run`, but `seconds` count from the first line on stderr (the run has begun: Python started and
    imported its modules): a bound on a run's own work must not include how long a loaded machine took to
    start the interpreter, which nothing in the tool controls."""
    proc = start(cli, *args, **env)
    watchdog = threading.Timer(timeout, proc.kill)  # a run that never writes a line cannot hold the test
    watchdog.start()
    try:
        first = proc.stderr.readline() if proc.stderr is not None else ""
        finished = finish(proc, time.monotonic(), timeout)
    finally:
        watchdog.cancel()
    return dataclasses.replace(finished, stderr=first + finished.stderr)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def leftovers(root: Path) -> list[str]:
    """Temporary files and the downloaded-installer directory a run must never leave behind."""
    return sorted(
        str(path.relative_to(root)) for path in root.rglob("*")
        if path.name.endswith(".tmp") or (path.name == "installer" and path.parent == root / STATE_DIR)
    )


def lock_is_free(root: Path) -> bool:
    """True when the run lock can be taken at once."""
    fd = os.open(root / STATE_DIR / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def stub_processes(record_dir: Path) -> list[str]:
    """Command lines of live processes started by this test's stub installer (by their environment)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.environ().get("NEZHA_STUB_RECORD") == str(record_dir) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(" ".join(proc.info["cmdline"] or []))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def leaks(cli: Cli, *runs: Finished) -> list[str]:
    """`leak_scan` over the in-process runs and files, plus the output of process runs."""
    needles = [secret for secret in [cli.env()["NEZHA_TOKEN"], *(s.secret for s in cli.fake.servers)] if secret]
    found = leak_scan(cli)
    for i, finished in enumerate(runs):
        for stream, text in (("stdout", finished.stdout), ("stderr", finished.stderr)):
            found += [f"process {i} {stream}" for needle in needles if needle in text]
    return found
