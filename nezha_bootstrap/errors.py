"""The error tree: every failure the tool reports, each with its documented exit code."""

from __future__ import annotations

from typing import ClassVar


class BootstrapError(Exception):
    """Base class; `exit_code` is what the process exits with."""

    exit_code: ClassVar[int] = 1


class InternalError(BootstrapError):
    """A bug, or the local system failing under us (state file, disk)."""

    exit_code = 1


class SettingsError(BootstrapError):
    """Invalid flags or environment; carries every problem found."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid settings:\n" + "\n".join(f"  - {p}" for p in self.problems))


class DashboardRefused(BootstrapError):
    """The dashboard answered and said no (token, generation, bad request, TLS, orphan)."""

    exit_code = 3


class AnsweredAsV1(DashboardRefused):
    """A v0 request was answered the way only v1/v2 dashboards answer (the v0 register API is not there)."""


class TLSRefused(DashboardRefused):
    """TLS verification or the TLS handshake failed for good (not a handshake cut short)."""


class DashboardUnreachable(BootstrapError):
    """The dashboard stayed unreachable or failing until the deadline."""

    exit_code = 4


class InstallerFailed(BootstrapError):
    """Downloading, checking, running or verifying the installer failed."""

    exit_code = 5


class LockBusy(BootstrapError):
    """Another run holds the lock."""

    exit_code = 6


class StateError(InternalError):
    """The state file cannot be read or written."""


EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "done, or nothing to do"),
    (1, "internal error, or the local system failed (state file, disk)"),
    (2, "usage error or invalid settings"),
    (3, "the dashboard refused (token, v1+ dashboard, bad request, TLS verification, orphan server), or "
        "refused the installed agent's secret or TLS setting (--tls/--no-tls; the agent is stopped)"),
    (4, "the dashboard stayed unreachable or failing until the deadline, or the agent's probe host:port "
        "refused or never answered, or the node did not show online within --online-timeout"),
    (5, "the install failed (download, hash, exit status, verification, a local write), or the agent exited"),
    (6, "another run holds the lock"),
    (129, "stopped by SIGHUP (the terminal or ssh session closed); nothing partial is left behind"),
    (130, "stopped by SIGINT (Ctrl-C); nothing partial is left behind"),
    (143, "stopped by SIGTERM; nothing partial is left behind"),
)
