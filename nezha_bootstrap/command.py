"""`Command`: an action that runs a program (effects.Action), in a module of its own so that a run, which
runs only commands, never builds the other actions' classes (~0.6 ms each at start; effects.py imports
it back)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from nezha_bootstrap import system
from nezha_bootstrap.errors import BootstrapError, InternalError, SettingsError
from nezha_bootstrap.record import Record
from nezha_bootstrap.report import Reporter


class Command(Record):
    """Run `argv` with stdin /dev/null and the one scrubbed environment (system.child_env) plus `env`.

    `name` is how messages call it (default: the argv); a failure raises `error`, or with
    `must_succeed=False` is a warning and the plan goes on.
    """

    compared = ("argv", "cwd", "must_succeed", "timeout", "error", "name", "env", "track", "confine")
    shown = ("cwd", "must_succeed", "timeout", "error", "name", "env", "track", "confine")  # argv: a secret

    def __init__(
        self,
        argv: tuple[str, ...],  # may hold a v0 node secret (install.sh takes it as an argument)
        cwd: Path | None = None,
        must_succeed: bool = True,
        timeout: float = system.COMMAND_TIMEOUT,
        error: type[BootstrapError] = InternalError,
        name: str | None = None,
        env: tuple[tuple[str, str], ...] = (),
        # The environment the child's is made from (facts.Facts.environ); None: this process's (system.child_env).
        environ: Mapping[str, str] | None = None,
        # Where the running command is recorded (system.run): a command an earlier run left running there
        # is stopped before this one starts (paths.child_file).
        track: Path | None = None,
        # The root the command is for: under one other than /, only a stub that acts inside it may run
        # (confined_problem); a real installer or agent would act on this machine instead.
        confine: Path | None = None,
    ) -> None:
        self.argv: Final = argv
        self.cwd: Final = cwd
        self.must_succeed: Final = must_succeed
        self.timeout: Final = timeout
        self.error: Final = error
        self.name: Final = name
        self.env: Final = env
        self.environ: Final = environ
        self.track: Final = track
        self.confine: Final = confine

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
