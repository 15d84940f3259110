"""Actions as data, and the one function that performs them.

A flow decides what to do as a `Plan` of `Write`, `Link`, `Command`, `Remove` and `Empty`; `--dry-run`
prints `Plan.describe()`, and `apply` carries out the same plan: atomic writes (system.atomic_write),
symlinks, removals, and commands through system.run with a scrubbed environment.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from nezha_bootstrap import system
from nezha_bootstrap.config import DEFAULT_LOCK_TIMEOUT
from nezha_bootstrap.errors import BootstrapError, InternalError, SettingsError
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter
from nezha_bootstrap.state import locked


@dataclass(frozen=True)
class Write:
    """Write a file atomically; `private_dir`: its directory is made 0700."""

    path: Path
    data: bytes = field(repr=False)
    mode: int
    private_dir: bool = False
    root: Path = Path("/")  # where `private_dir` is made the confined way (system.ensure_private_dir)

    def describe(self) -> str:
        return f"write {self.path} (mode {self.mode:04o})"

    def apply(self, reporter: Reporter) -> None:
        if self.private_dir:
            system.ensure_private_dir(self.path.parent, self.root)
        system.atomic_write(self.path, self.data, self.mode)


@dataclass(frozen=True)
class Link:
    """Point the symlink `path` at `target` (what `systemctl enable` leaves behind)."""

    path: Path
    target: str

    def describe(self) -> str:
        return f"link {self.path} -> {self.target}"

    def apply(self, reporter: Reporter) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        temporary.unlink(missing_ok=True)
        os.symlink(self.target, temporary)
        os.replace(temporary, self.path)


@dataclass(frozen=True)
class Command:
    """Run `argv` with stdin /dev/null and the one scrubbed environment (system.child_env) plus `env`.

    `name` is how messages call it (default: the argv); a failure raises `error`, or with
    `must_succeed=False` is a warning and the plan goes on.
    """

    argv: tuple[str, ...] = field(repr=False)  # may hold a v0 node secret (install.sh takes it as an argument)
    cwd: Path | None = None
    must_succeed: bool = True
    timeout: float = system.COMMAND_TIMEOUT
    error: type[BootstrapError] = InternalError
    name: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    # The environment the child's is made from (facts.Facts.environ); None: this process's (system.child_env).
    environ: Mapping[str, str] | None = field(default=None, repr=False, compare=False)
    # Where the running command is recorded (system.run): a command an earlier run left running there
    # is stopped before this one starts (paths.child_file).
    track: Path | None = None
    # The root the command is for: under one other than /, only a stub that acts inside it may run
    # (confined_problem); a real installer or agent would act on this machine instead.
    confine: Path | None = None

    def describe(self) -> str:
        return f"run: {shlex.join(self.argv)}"

    def apply(self, reporter: Reporter) -> None:
        failure = self.failure(reporter)
        if failure is None:
            return
        if self.must_succeed:
            raise self.error(failure)
        reporter.warn(f"{failure}; going on (run with -v to see its output)")

    def failure(self, reporter: Reporter) -> str | None:
        """Run the command; what went wrong, in words, or None when it succeeded."""
        name = self.name or shlex.join(self.argv)
        if self.confine is not None:
            problem = confined_problem(self.confine, self.argv)
            if problem and self.must_succeed:
                raise SettingsError([problem])
            if problem:
                return problem  # a best-effort step (the uninstall of an agent found there): not run, a warning
        if self.track is not None:
            try:
                stopped = system.stop_leftover(self.track)
            except OSError as exc:  # the record cannot be removed (a read-only or vanished state directory)
                return (f"cannot look for a command an earlier run left running ({self.track}: "
                        f"{exc.strerror or exc}); {name} was not started")
            if stopped:
                pids = ", ".join(str(pid) for pid in stopped)
                reporter.warn(f"a command an earlier run started was still running (pid {pids}); "
                              "it was stopped before this one starts")
        try:
            done = system.run(self.argv, cwd=self.cwd, env=system.child_env(self.environ, self.env),
                              timeout=self.timeout, on_line=lambda line: reporter.detail(f"  | {line}"),
                              track=self.track)
        except OSError as exc:
            return f"cannot run {name}: {exc.strerror or exc}"
        if done.timed_out:
            return f"{name} did not finish within {self.timeout:g} s; its process group was killed"
        if done.returncode:
            hint = "; run again with -v to see its output" if self.must_succeed else ""
            return f"{name} exited with status {done.returncode}{hint}"
        return None


# What every stub of nezha_bootstrap/testing/stubs carries: it takes its paths from its own location, so
# under a root it acts only inside it. The real install.sh and nezha-agent never carry it.
STUB_MARKER = b"nezha-bootstrap-stub: acts only inside the root it lies in"


def confined_problem(root: Path, argv: tuple[str, ...]) -> str | None:
    """Why `argv` must not run for `root`, or None: under / anything may; under another root only a program
    (the first argument that lies under the root: the agent binary, or install.sh after `sh`) holding
    STUB_MARKER, read the confined way."""
    from nezha_bootstrap.paths import read_under

    if root.resolve() == Path("/"):
        return None
    inside = next((Path(word) for word in argv if Path(word).is_absolute() and Path(word).is_relative_to(root)), None)
    try:
        content = read_under(root, inside, cap=1 << 16) if inside is not None else b""
    except OSError:
        content = b""
    if STUB_MARKER in content:
        return None
    return (f"refusing to run {inside or argv[0]} for --root {root}: it is not a stub of nezha_bootstrap.testing, "
            f"and a real installer or agent acts on this machine, not on {root}. Prepare images with "
            f"`nezha-bootstrap install-service --root {root}`")


@dataclass(frozen=True)
class Remove:
    """Remove a file, a symlink or a directory tree; already gone is fine."""

    path: Path

    def describe(self) -> str:
        return f"remove {self.path}"

    def apply(self, reporter: Reporter) -> None:
        if self.path.is_dir() and not self.path.is_symlink():
            shutil.rmtree(self.path)
        else:
            self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Empty:
    """Truncate a file to zero bytes (create it, mode 0444, when missing)."""

    path: Path

    def describe(self) -> str:
        return f"empty {self.path} (zero bytes)"

    def apply(self, reporter: Reporter) -> None:
        # O_NOFOLLOW: a link here is refused (ELOOP), never followed out of an image's root (paths.py);
        # O_NONBLOCK: a FIFO is refused (ENXIO without a reader) instead of waited on, and only a regular
        # file is truncated (a device never is).
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "it is not a regular file")
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class StopLeftover:
    """Stop the installer or agent command a killed run left running, recorded in `track` (system.stop_leftover):
    it still holds the old node's secret and would write its agent unit after a removal."""

    track: Path

    def describe(self) -> str:
        return f"stop the command an earlier run left running (recorded in {self.track})"

    def apply(self, reporter: Reporter) -> None:
        stopped = system.stop_leftover(self.track)
        if stopped:
            reporter.warn(f"a command an earlier run started was still running (pid "
                          f"{', '.join(str(pid) for pid in stopped)}); it was stopped first")


Action = Union[Write, Link, Command, Remove, Empty, StopLeftover]


@dataclass(frozen=True)
class Plan:
    """What a command will do, in order, and what the user should know before."""

    actions: tuple[Action, ...]
    notes: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        return [action.describe() for action in self.actions]


def apply(plan: Plan, reporter: Reporter, lock: Paths | None = None) -> None:
    """Perform the plan's actions in order; with `lock`, under the run lock of that root."""
    with run_lock(lock):
        for action in plan.actions:
            reporter.info(action.describe())
            try:
                action.apply(reporter)
            except OSError as exc:
                raise InternalError(f"cannot {action.describe()}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def run_lock(paths: Paths | None) -> Iterator[None]:
    # Only where a run may be going on (it has a state directory): never create one to lock it.
    if paths is None or not paths.state_dir.is_dir():
        yield
        return
    with locked(paths, DEFAULT_LOCK_TIMEOUT):
        yield
