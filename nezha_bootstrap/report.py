"""Progress on stderr, the summary and `--json` on stdout; every line goes through `redact`."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, TextIO

from nezha_bootstrap.record import replaced
from nezha_bootstrap.redact import redact


class Reporter:
    """Collects steps with their durations and prints progress unless quiet.

    A plain class, not a dataclass: it is never compared or printed, and a dataclass costs ~0.6 ms of a
    run's start (its methods are compiled one by one).
    """

    def __init__(
        self,
        verbosity: int = 0,  # -1 quiet, 0 normal, 1 verbose
        as_json: bool = False,
        err: TextIO | None = None,  # sys.stderr when the reporter is made
        out: TextIO | None = None,  # sys.stdout when the reporter is made
        steps: list[dict[str, Any]] | None = None,
        warnings: list[str] | None = None,
        context: dict[str, Any] | None = None,  # merged into the --json of a failure
    ) -> None:
        self.verbosity = verbosity
        self.as_json = as_json
        self.err: TextIO = sys.stderr if err is None else err
        self.out: TextIO = sys.stdout if out is None else out
        self.steps: list[dict[str, Any]] = [] if steps is None else steps
        self.warnings: list[str] = [] if warnings is None else warnings
        self.context: dict[str, Any] = {} if context is None else context

    def info(self, message: str) -> None:
        if self.verbosity >= 0:
            self._err(message)

    def detail(self, message: str) -> None:
        """Shown with -v only (installer output, requests)."""
        if self.verbosity >= 1:
            self._err(message)

    def warn(self, message: str) -> None:
        self.warnings.append(redact(message))
        self._err(f"warning: {message}")

    def error(self, message: str) -> None:
        self._err(f"error: {message}")

    def _err(self, message: str) -> None:
        print(redact(message), file=self.err, flush=True)

    def result(self, message: str) -> None:
        """A line of a command's result on stdout (not used with --json)."""
        if not self.as_json:
            print(redact(message), file=self.out, flush=True)

    @contextmanager
    def step(self, name: str, what: str) -> Iterator[dict[str, Any]]:
        """Time one step; the yielded dict may receive extra facts for --json."""
        record: dict[str, Any] = {"step": name, "ok": False}
        self.info(f"{what} ...")
        started = time.monotonic()
        try:
            yield record
            record["ok"] = True
        finally:
            record["seconds"] = round(time.monotonic() - started, 3)
            self.steps.append(record)
            if record["ok"]:
                self.info(f"  {name}: done in {record['seconds']:.2f} s")
            else:
                self.info(f"  {name}: failed after {record['seconds']:.2f} s")

    def emit_json(self, payload: dict[str, Any]) -> None:
        if self.as_json:
            print(redact(json.dumps(payload, ensure_ascii=False, sort_keys=True)), file=self.out, flush=True)


class RunResult:
    """What `run` did, or with --dry-run would do: the flows return it, only the CLI prints it. A plain class,
    its fields Final (never compared, hashed or printed): a frozen dataclass costs ~1.5 ms of every run's start.
    """

    def __init__(
        self,
        outcome: str,  # registered_and_installed, installed, updated, nothing_to_do or dry_run
        generation: str,  # a Generation's value, or "auto" when a dry run probed nothing
        dashboard: str,  # the dashboard URL as it may be shown (no user-info)
        method: str | None,  # script or direct; None when a dry run does not know yet
        reason: str = "",
        name: str | None = None,  # v0: the registered name
        uuid: str | None = None,  # v1/v2: the agent's uuid
        plan: tuple[str, ...] = (),  # --dry-run: the plan, line by line
        notes: tuple[str, ...] = (),  # shown after the headline (on stderr)
        details: dict[str, Any] | None = None,  # further --json keys
        # Done means online (issue 17): whether the dashboard saw the node (a rerun that installed nothing: what
        # the last run that installed saw; None where no run recorded it) and seconds from the agent's start.
        online: bool | None = None,
        online_after_s: float | None = None,
    ) -> None:
        self.outcome: Final = outcome
        self.generation: Final = generation
        self.dashboard: Final = dashboard
        self.method: Final = method
        self.reason: Final = reason
        self.name: Final = name
        self.uuid: Final = uuid
        self.plan: Final = plan
        self.notes: Final = notes
        self.details: Final[dict[str, Any]] = {} if details is None else details
        self.online: Final = online
        self.online_after_s: Final = online_after_s

    def headline(self) -> list[str]:
        """The result lines for stdout: the plan of a dry run, else one line saying what happened."""
        if self.outcome == "dry_run":
            return list(self.plan)
        what = self.outcome.replace("_", " ")
        seen = f", online after {self.online_after_s:.1f} s" if self.online_after_s is not None else ""
        if self.uuid is not None:
            return [f"{what}: uuid {self.uuid} on {self.dashboard} ({self.generation}){seen}"]
        return [f"{what}: {self.name!r} on {self.dashboard}{seen}"]

    def as_json(self) -> dict[str, Any]:
        """The --json object (without exit code, steps and warnings, which the CLI adds)."""
        payload: dict[str, Any] = {"outcome": self.outcome, "generation": self.generation,
                                   "dashboard": self.dashboard, "method": self.method}
        optional = {"reason": self.reason, "name": self.name, "uuid": self.uuid, "plan": list(self.plan)}
        payload.update({key: value for key, value in optional.items() if value})
        if self.outcome != "dry_run":
            payload.update(online=self.online, online_after_s=self.online_after_s)
        payload.update(self.details)
        return payload

    def with_plan(self, lines: list[str]) -> RunResult:
        """The same result with another plan (a dry run that wraps another's)."""
        return replaced(self, plan=tuple(lines))
