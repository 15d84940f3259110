"""Done means online (issue 17): after the agent is (re)installed, wait until the dashboard sees the node.

Three kinds of signal, whichever the credentials and the host allow, are looked at in turn every
POLL seconds until --online-timeout:
- the dashboard's view (v0 with its API token: the server's `last_active` advancing; v2.1+ with an
  access token: the uuid listed and its `last_active` advancing), in v0/ and v1/;
- the agent's own log: the journal where systemd runs, else the file its SysV/OpenRC script writes;
- the agent's process: systemd's unit state, else the init script's pid file.
The first decisive look ends the wait: online, or a named verdict with its exit code. This module is
the decision and the waiting; the sources that read the system are at its end, the dashboards' in
v0/online.py and v1/online.py.
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable, Final, Protocol

from nezha_bootstrap.config import bracketed
from nezha_bootstrap.errors import BootstrapError, DashboardRefused, DashboardUnreachable, InstallerFailed
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.record import Record

POLL = 0.5  # seconds between looks: the v0 agent reports every 1 s, the v2 agent every 1-4 s


class Outcome(enum.Enum):
    """What one look can decide."""

    ONLINE = "online"
    SECRET_REFUSED = "secret refused"
    TLS_ON_PLAIN = "TLS against a plain port"
    PLAIN_ON_TLS = "plain against a TLS port"
    TLS_UNTRUSTED = "certificate not trusted"
    PORT_REFUSED = "port refused"
    PORT_SILENT = "port silent"
    AGENT_DIED = "agent died"


class Look(Record):
    """One source's answer: an outcome (None: nothing decisive yet) and what showed it."""

    compared = shown = ("outcome", "evidence")

    def __init__(self, outcome: Outcome | None = None, evidence: str = "") -> None:
        self.outcome: Final = outcome
        self.evidence: Final = evidence


NOTHING = Look()


class Source(Protocol):
    """Something that can be looked at repeatedly while the agent starts."""

    name: str

    def look(self) -> Look: ...


# --- the agent's log lines (observed on the real agents, issue 17) ----------------------------------
# Both agents log only with their debug switch (v0.20.5: -d; v2.3.3: `debug: true`); without it neither
# wrote one line in any scenario. With it they write to stderr, e.g. (v2.3.3 against a real v2.3.7):
#   I: 14:27:52 NEZHA@2026-12-07 14:27:52>> Connection to 127.0.0.1:18001 established
#   I: 14:27:52 NEZHA@2026-12-07 14:27:52>> 上报系统信息失败: rpc error: code = Unauthenticated desc = 客户端认证失败
# and then retry every 10 s. The failing call's error, as grpc-go words it, names the cause; observed with
# agent v0.20.5 against a real v0.20.13 and v2.3.3 against a real v2.3.7 (tests/data/real/agent-logs.json):
#   wrong secret      code = Unauthenticated desc = 客户端认证失败                       (both, within 0.1 s)
#   TLS, plain port   transport: authentication handshake failed: tls: first record does not look like a
#                     TLS handshake                                                   (both, within 0.5 s)
#   plain, TLS port   connection error: desc = "error reading server preface: EOF"   (both, within 0.4 s)
#   untrusted cert    tls: failed to verify certificate: x509: certificate signed by unknown authority
#   refused port      dial tcp 127.0.0.1:18999: connect: connection refused          (both, within 1.6 s)
#   silent port       code = DeadlineExceeded ... context deadline exceeded          (v0.20.5 after 5 s,
#                                                                                      v2.3.3 after 10 s)
# The first pattern that matches a line names it.
# Patterns as text, compiled by `re` on a first log line (and cached there): a run whose agent comes online
# never reads its log, and compiling them at import cost ~1 ms of every run's start.
LOG_SIGNS: tuple[tuple[str, Outcome], ...] = (
    (r"code = Unauthenticated", Outcome.SECRET_REFUSED),
    (r"first record does not look like a TLS handshake", Outcome.TLS_ON_PLAIN),
    (r"x509: |failed to verify certificate", Outcome.TLS_UNTRUSTED),
    (r"error reading server preface|http2: frame too large", Outcome.PLAIN_ON_TLS),
    (r"connect: connection refused", Outcome.PORT_REFUSED),
    (r"i/o timeout|context deadline exceeded|code = DeadlineExceeded", Outcome.PORT_SILENT),
)


def classify_line(line: str) -> Outcome | None:
    """The failure a line of the agent's log shows, or None (no line of either agent says "online")."""
    for sign, outcome in LOG_SIGNS:
        if re.search(sign, line):
            return outcome
    return None


def classify_lines(lines: Sequence[str]) -> Look:
    """The latest decisive line wins: a refusal followed by a success is a success."""
    found = NOTHING
    for line in lines:
        outcome = classify_line(line)
        if outcome is not None:
            found = Look(outcome, f"the agent logged: {line.strip()}")
    return found


# --- the verdicts -------------------------------------------------------------------------------------

class Target:
    """Where the agent connects, and how: named in the verdicts. A plain class (never compared, replaced or
    printed): a frozen dataclass costs ~1 ms of a run's start."""

    def __init__(self, host: str, port: int, tls: bool, secret_kind: str = "agent secret") -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.secret_kind = secret_kind  # v0: the node secret the dashboard gave at registration

    @property
    def address(self) -> str:
        return f"{bracketed(self.host)}:{self.port}"


class NotOnline(BootstrapError):
    """Mixin marker: the agent is installed, but the dashboard does not see the node."""


class SecretRefused(DashboardRefused, NotOnline):
    """The dashboard refused the agent's secret (exit 3; the agent is stopped)."""


class TlsMismatch(DashboardRefused, NotOnline):
    """The agent's TLS setting does not match the port (exit 3; the agent is stopped)."""


class AgentUnreachable(DashboardUnreachable, NotOnline):
    """The probe address refused or never answered, or nothing was seen in time (exit 4)."""


class AgentDied(InstallerFailed, NotOnline):
    """The agent process exited (exit 5)."""


STOP_AGENT = (SecretRefused, TlsMismatch)  # verdicts after which the agent must not keep retrying


def verdict(look: Look, target: Target) -> NotOnline:
    """The error a decisive failure look stands for, naming the cause and what to do."""
    seen = f" ({look.evidence})" if look.evidence else ""  # a log line, or what the port probe met
    outcome = look.outcome
    if outcome is Outcome.SECRET_REFUSED:
        return SecretRefused(
            f"the dashboard refused the {target.secret_kind}{seen}; the agent was stopped so that it does "
            f"not keep retrying (the dashboard's WAF counts every refused call). Check the {target.secret_kind}"
            + (": copy it from the dashboard's install command" if target.secret_kind == "agent secret"
               else ": the server may have been deleted in the dashboard; run again with --force to register anew")
        )
    if outcome is Outcome.TLS_ON_PLAIN:
        return TlsMismatch(
            f"the agent connects to {target.address} with TLS (--tls), but the port speaks plain gRPC{seen}; "
            "the agent was stopped. Run again with --no-tls, or point "
            "--probe-address/--probe-port at the TLS port"
        )
    if outcome is Outcome.TLS_UNTRUSTED:
        return TlsMismatch(
            f"the agent connects to {target.address} with TLS (--tls), but does not trust its certificate{seen}; "
            "the agent was stopped. It trusts the system's CAs: give the port a certificate from one, or "
            "(v1/v2) accept it with --agent-option insecure_tls=true"
        )
    if outcome is Outcome.PLAIN_ON_TLS:
        return TlsMismatch(
            f"the agent connects to {target.address} without TLS (--no-tls), but the port speaks TLS{seen}; "
            "the agent was stopped. Run again with --tls"
        )
    if outcome is Outcome.PORT_REFUSED:
        return AgentUnreachable(
            f"{target.address} refused the agent's connection (nothing listens there){seen}; check "
            "--probe-address and --probe-port (a later boot may succeed once the dashboard listens)"
        )
    if outcome is Outcome.PORT_SILENT:
        return AgentUnreachable(
            f"{target.address} did not answer the agent (a firewall dropping it, a wrong address, or a proxy "
            f"or CDN that does not pass gRPC){seen}; check --probe-address and --probe-port"
        )
    if outcome is Outcome.AGENT_DIED:
        return AgentDied(f"the agent process exited{seen or ' right after it started'}; see its log "
                         "(`journalctl -u nezha-agent`, or /var/log/nezha-agent.err)")
    raise ValueError(f"not a failure: {outcome}")


class Online(Record):
    """The node was seen online: after how many seconds, and by which signal."""

    compared = shown = ("seconds", "by", "evidence")

    def __init__(self, seconds: float, by: str, evidence: str = "") -> None:
        self.seconds: Final = seconds
        self.by: Final = by
        self.evidence: Final = evidence


class Waiter:
    """Looks at every source in turn until one decides or the timeout passes. A plain class (never compared
    or printed): a dataclass costs ~0.5 ms of a run's start."""

    def __init__(
        self,
        sources: Sequence[Source],
        target: Target,
        timeout: float,
        poll: float = POLL,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        last: list[Look] | None = None,
    ) -> None:
        self.sources = sources
        self.target = target
        self.timeout = timeout
        self.poll = poll
        self.clock = clock
        self.sleep = sleep
        self.last: list[Look] = [] if last is None else last

    def wait(self) -> Online:
        """Online, or raise the verdict (NotOnline) of the first failure seen, or of the timeout."""
        started = self.clock()
        while True:
            for source in self.sources:
                look = source.look()
                if look.outcome is Outcome.ONLINE:
                    return Online(round(self.clock() - started, 3), source.name, look.evidence)
                if look.outcome is not None:
                    raise verdict(look, self.target)
                if look.evidence:
                    self.last.append(look)
            left = started + self.timeout - self.clock()
            if left <= 0:
                raise self._timed_out()
            self.sleep(min(self.poll, left))

    def _timed_out(self) -> AgentUnreachable:
        seen = f"; last seen: {self.last[-1].evidence}" if self.last else ""
        names = ", ".join(source.name for source in self.sources) or "no signal"
        return AgentUnreachable(
            f"the agent runs, but the dashboard did not see the node online within {self.timeout:g} s "
            f"(looked at: {names}){seen}. Check that {self.target.address} reaches the dashboard's agent port "
            "(--probe-address, --probe-port, --tls/--no-tls), or raise --online-timeout"
        )


# --- the system's sources: the agent's log and its process ------------------------------------------

Run = Callable[[Sequence[str]], str]  # a command's output (system.run's, merged), for tests to replace


class FileLog:
    """The log files the agent's SysV or OpenRC script appends to, read from where they ended before the
    agent was (re)started (the nezhahq/service SysV template: `$cmd >> /var/log/$name.log 2>> .../$name.err`;
    the agent started by it logs to its stderr, so to the .err file)."""

    name = "the agent's log"

    def __init__(self, files: Sequence[Path], confined: Callable[[Path, int], bytes] | None = None) -> None:
        self.files = list(files)
        self.offsets = {path: _size(path) for path in self.files}
        self.confined = confined  # under another root: paths.read_under's confined read (a cap of bytes)

    def lines(self) -> list[str]:
        """Every line written since the agent was (re)started."""
        lines: list[str] = []
        for path in self.files:
            start = self.offsets[path]
            if _size(path) < start:
                start = 0  # rotated or truncated: read it whole
            try:
                lines += self._read(path, start).decode("utf-8", errors="replace").splitlines()
            except OSError:
                continue
        return lines

    def _read(self, path: Path, start: int) -> bytes:
        if self.confined is not None:
            return self.confined(path, start + LOG_CAP)[start:]
        with path.open("rb") as handle:
            handle.seek(start)
            return handle.read(LOG_CAP)

    def look(self) -> Look:
        return classify_lines(self.lines())


LOG_CAP = 1 << 20  # bytes of the log read at one look: a connecting agent writes a few lines


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class JournalLog:
    """The agent unit's journal since `since` (wall-clock seconds), as `journalctl -o short-unix` prints it
    (under systemd the agent logs to syslog, which journald keeps with the unit's name)."""

    name = "the agent's journal"

    def __init__(self, since: float, run: Run, unit: str = "nezha-agent") -> None:
        self.since, self.run, self.unit = since, run, unit

    def lines(self) -> list[str]:
        """Every line the unit logged since `since`."""
        text = self.run(["journalctl", "-u", self.unit, "--since", f"@{int(self.since) - 1}", "-o", "short-unix",
                         "--no-pager", "-q"])
        lines = []
        for line in text.splitlines():
            stamp, _, rest = line.partition(" ")
            try:
                if float(stamp) < self.since:
                    continue
            except ValueError:
                continue
            lines.append(rest.split(": ", 1)[-1])  # "host nezha-agent[pid]: message"
        return lines

    def look(self) -> Look:
        return classify_lines(self.lines())


class LogLines(Protocol):
    """A log source that also hands over its lines."""

    name: str

    def lines(self) -> list[str]: ...

    def look(self) -> Look: ...


# Agent v2.3.3 with `debug` logs "Connection to HOST:PORT established" when it sets up its gRPC client
# (before any call, so also when the call then fails), and "正在更新本地缓存IP信息" ("updating the cached IP
# address") when it fetches its IP for the dashboard: reportState does that only once its first state
# report went through (cmd/agent/main.go, reportState after `initialized`). Observed against a real v2.3.7:
# 0.9 s after the start when the secret was right; never with a wrong secret, a TLS mismatch or a closed
# or silent port. (Agent v0.20.5 logs that line in every case, and no "Connection to" line: not a signal.)
CONNECTED = r"Connection to \S+ established"  # text, compiled on first use as LOG_SIGNS are
REPORTED = r"正在更新本地缓存IP信息"
CALL_FAILED = (r"与面板建立连接失败|上报系统信息失败|请求任务失败|上报状态信息失败|Try to reconnect"
               r"|Error to close connection")


class Reported:
    """Online without a dashboard credential (v1/v2 with the agent secret alone): after the agent's last
    "Connection to ... established", its IP update followed with no failed call in between."""

    name = "the agent's log"

    def __init__(self, log: LogLines) -> None:
        self.log = log

    def look(self) -> Look:
        lines = self.log.lines()
        connects = [i for i, line in enumerate(lines) if re.search(CONNECTED, line)]
        if not connects:
            return NOTHING
        since = lines[connects[-1]:]
        for line in since:
            if re.search(CALL_FAILED, line):
                return NOTHING
            if re.search(REPORTED, line):
                return Look(Outcome.ONLINE, f"{since[0].strip()}, and its first state report went through")
        return Look(None, since[0].strip())


class UnitProcess:
    """systemd's view of the agent unit: an agent that exited is waiting to restart, or failed."""

    name = "the agent's unit"

    def __init__(self, run: Run, unit: str = "nezha-agent") -> None:
        self.run, self.unit = run, unit

    def look(self) -> Look:
        text = self.run(["systemctl", "show", self.unit, "-p", "ActiveState", "-p", "SubState",
                         "-p", "ExecMainStatus"])
        values = dict(line.partition("=")[::2] for line in text.splitlines())
        if values.get("SubState") == "auto-restart" or values.get("ActiveState") == "failed":
            return Look(Outcome.AGENT_DIED, f"exit status {values.get('ExecMainStatus', '?')}, "
                                            f"unit {values.get('ActiveState')}/{values.get('SubState')}")
        return NOTHING


class PidFile:
    """The pid file of the SysV/OpenRC script, written since `since` (a stale one is an earlier agent's):
    the agent it names no longer runs."""

    name = "the agent's process"

    def __init__(self, path: Path, alive: Callable[[int], bool], since: float = 0.0,
                 read: Callable[[Path], bytes] = Path.read_bytes) -> None:
        self.path, self.alive, self.since, self.read = path, alive, since, read

    def look(self) -> Look:
        try:
            if self.path.stat().st_mtime < self.since - 1:
                return NOTHING
            pid = int(self.read(self.path).decode("ascii", errors="replace").strip())
        except (OSError, ValueError):
            return NOTHING
        return NOTHING if self.alive(pid) else Look(Outcome.AGENT_DIED, f"pid {pid} of {self.path} is gone")


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid exists (and is not a zombie)."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[:1] != ["Z"]
    except OSError:
        return True


class Watched:
    """The agent's log and process as this host keeps them, captured before the agent is (re)started. A plain
    class (never compared, replaced or printed), as Target."""

    def __init__(self, log: JournalLog | FileLog, process: Source) -> None:
        self.log = log
        self.process = process

    @property
    def sources(self) -> list[Source]:
        return [self.log, self.process]


def system_sources(paths: Paths, systemd: bool, since: float, run: Run | None = None) -> Watched:
    """The journal and systemd's unit state where systemd runs, else the SysV/OpenRC log files and pid file."""
    if systemd:
        runner = run or _run_quiet
        return Watched(JournalLog(since, runner), UnitProcess(runner))
    logs = [paths.under("/var/log/nezha-agent.log"), paths.under("/var/log/nezha-agent.err")]
    pid_file = paths.under("/var/run/nezha-agent.pid")
    if paths.is_host_root:
        return Watched(FileLog(logs), PidFile(pid_file, pid_alive, since))
    from nezha_bootstrap.paths import read_under  # under another root: every read the one confined way

    return Watched(FileLog(logs, lambda path, cap: read_under(paths.root, path, cap=cap)),
                   PidFile(pid_file, pid_alive, since, lambda path: read_under(paths.root, path)))


def _run_quiet(argv: Sequence[str]) -> str:
    from nezha_bootstrap import system

    try:
        return system.run(argv, timeout=10).output
    except OSError:
        return ""


def await_online(waiter: Waiter, step: Callable[[str, str], AbstractContextManager[dict[str, Any]]],
                 stop_agent: Callable[[], None]) -> Online:
    """Wait as one timed step of the run; stop the agent after a verdict it must not retry against."""
    what = (f"waiting for the dashboard to see the node online (up to {waiter.timeout:g} s; "
            f"the agent connects to {waiter.target.address} {'with' if waiter.target.tls else 'without'} TLS)")
    with step("online", what) as record:
        try:
            seen = waiter.wait()
        except STOP_AGENT:
            stop_agent()
            raise
        record.update(by=seen.by, seconds_to_online=seen.seconds)
    return seen
