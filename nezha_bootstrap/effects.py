"""Actions as data, and the one function that performs them.

A flow decides what to do as a `Plan` of `Write`, `Link`, `Command`, `Remove` and `Empty`; `--dry-run`
prints `Plan.describe()`, and `apply` carries out the same plan: atomic writes (system.atomic_write),
symlinks, removals, and commands through system.run with a scrubbed environment.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from nezha_bootstrap import system
from nezha_bootstrap.command import STUB_MARKER as STUB_MARKER
from nezha_bootstrap.command import Command as Command
from nezha_bootstrap.command import confined_problem as confined_problem
from nezha_bootstrap.config import DEFAULT_LOCK_TIMEOUT
from nezha_bootstrap.errors import InternalError
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
