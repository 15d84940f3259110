"""online.py: the wait for the node to show online, the verdicts and their exit codes, the system's sources."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from nezha_bootstrap import online
from nezha_bootstrap.online import Look, Outcome, Target

REAL_LOGS = Path(__file__).parent / "data/real/agent-logs.json"
TARGET = Target("dash.example.test", 5555, tls=True)


class Scripted:
    """A source that answers its looks in order (then nothing), counting them."""

    name = "scripted"

    def __init__(self, *looks: Look) -> None:
        self.looks = list(looks)
        self.count = 0

    def look(self) -> Look:
        self.count += 1
        return self.looks.pop(0) if self.looks else online.NOTHING


class Clock:
    """A clock that moves only when the waiter sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def waiter(*sources: online.Source, timeout: float = 10.0) -> tuple[online.Waiter, Clock]:
    clock = Clock()
    return online.Waiter(list(sources), TARGET, timeout, clock=clock, sleep=clock.sleep), clock


def test_the_wait_ends_at_the_first_online_look_and_says_after_how_long() -> None:
    source = Scripted(online.NOTHING, online.NOTHING, Look(Outcome.ONLINE, "server id 3 reported"))
    wait, clock = waiter(source)
    seen = wait.wait()
    assert seen == online.Online(seconds=1.0, by="scripted", evidence="server id 3 reported")
    assert source.count == 3


@pytest.mark.parametrize(("outcome", "error", "code", "words"), [
    (Outcome.SECRET_REFUSED, online.SecretRefused, 3, "the dashboard refused the agent secret"),
    (Outcome.TLS_ON_PLAIN, online.TlsMismatch, 3, "with TLS (--tls)"),
    (Outcome.PLAIN_ON_TLS, online.TlsMismatch, 3, "without TLS (--no-tls)"),
    (Outcome.TLS_UNTRUSTED, online.TlsMismatch, 3, "does not trust its certificate"),
    (Outcome.PORT_REFUSED, online.AgentUnreachable, 4, "dash.example.test:5555 refused"),
    (Outcome.PORT_SILENT, online.AgentUnreachable, 4, "dash.example.test:5555 did not answer"),
    (Outcome.AGENT_DIED, online.AgentDied, 5, "the agent process exited"),
])
def test_each_failure_look_is_its_verdict_with_its_exit_code(outcome: Outcome, error: type, code: int,
                                                            words: str) -> None:
    wait, _ = waiter(Scripted(online.NOTHING, Look(outcome, "the line")))
    with pytest.raises(error) as raised:
        wait.wait()
    assert raised.value.exit_code == code
    assert words in str(raised.value)
    assert "(the line)" in str(raised.value)


def test_an_ipv6_probe_address_is_named_in_brackets() -> None:
    verdict = online.verdict(Look(Outcome.PORT_REFUSED), Target("2001:db8::1", 443, tls=False))
    assert "[2001:db8::1]:443 refused" in str(verdict)


def test_the_node_secret_of_v0_is_named_as_such_with_what_to_do() -> None:
    verdict = online.verdict(Look(Outcome.SECRET_REFUSED), Target("h", 1, True, secret_kind="node secret"))
    assert "refused the node secret" in str(verdict) and "--force" in str(verdict)


def test_nothing_decisive_until_the_timeout_is_exit_4_naming_what_was_looked_at() -> None:
    source = Scripted(*[Look(None, "uuid listed, no report yet")] * 100)
    wait, clock = waiter(source, timeout=3.0)
    with pytest.raises(online.AgentUnreachable) as raised:
        wait.wait()
    assert raised.value.exit_code == 4
    assert clock.now == pytest.approx(3.0)
    assert "within 3 s (looked at: scripted); last seen: uuid listed, no report yet" in str(raised.value)
    assert "--online-timeout" in str(raised.value)


def test_sources_are_looked_at_in_order_and_the_first_decisive_one_wins() -> None:
    dashboard = Scripted(Look(Outcome.ONLINE, "listed"))
    log = Scripted(Look(Outcome.PORT_REFUSED, "refused"))
    wait, _ = waiter(dashboard, log)
    assert wait.wait().by == "scripted"
    assert log.count == 0


def test_a_verdict_that_must_not_retry_stops_the_agent_and_others_do_not() -> None:
    stopped: list[str] = []
    steps: list[dict[str, object]] = []

    def step(name: str, what: str) -> object:
        import contextlib

        @contextlib.contextmanager
        def timed() -> object:
            record: dict[str, object] = {"step": name}
            steps.append(record)
            yield record

        return timed()

    for outcome, stops in [(Outcome.SECRET_REFUSED, True), (Outcome.TLS_ON_PLAIN, True),
                           (Outcome.PLAIN_ON_TLS, True), (Outcome.TLS_UNTRUSTED, True), (Outcome.PORT_REFUSED, False),
                           (Outcome.PORT_SILENT, False), (Outcome.AGENT_DIED, False)]:
        stopped.clear()
        wait, _ = waiter(Scripted(Look(outcome)))
        with pytest.raises(online.NotOnline):
            online.await_online(wait, step, lambda: stopped.append("stop"))  # type: ignore[arg-type]
        assert stopped == (["stop"] if stops else []), outcome


# --- the agents' log lines, as the real agents wrote them ---------------------------------------------

EXPECTED = {"wrong secret": Outcome.SECRET_REFUSED, "tls on a plain port": Outcome.TLS_ON_PLAIN,
            "plain on a tls port": Outcome.PLAIN_ON_TLS, "refused port": Outcome.PORT_REFUSED,
            "silent port": Outcome.PORT_SILENT, "untrusted certificate": Outcome.TLS_UNTRUSTED}


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
@pytest.mark.parametrize("agent", ["v0.20.5", "v2.3.3"])
def test_the_real_agents_log_of_each_failure_is_classified_as_that_failure(agent: str, scenario: str) -> None:
    data = json.loads(REAL_LOGS.read_text(encoding="utf-8"))
    lines = data["agents"][agent][scenario]["lines"]
    assert online.classify_lines(lines).outcome is EXPECTED[scenario], lines


@pytest.mark.parametrize("agent", ["v0.20.5", "v2.3.3"])
def test_nothing_the_real_agents_log_when_they_connect_reads_as_a_failure(agent: str) -> None:
    data = json.loads(REAL_LOGS.read_text(encoding="utf-8"))
    assert online.classify_lines(data["agents"][agent]["success"]["lines"]) == online.NOTHING


def test_without_their_debug_switch_the_real_agents_log_nothing() -> None:
    data = json.loads(REAL_LOGS.read_text(encoding="utf-8"))
    assert data["agents"]["v0.20.5"]["wrong secret without debug"]["lines"] == []
    assert data["agents"]["v2.3.3"]["success without debug"]["lines"] == []


def test_a_later_line_overrides_an_earlier_one() -> None:
    lines = ["dial tcp 127.0.0.1:1: connect: connection refused", "code = Unauthenticated desc = x"]
    assert online.classify_lines(lines) == Look(Outcome.SECRET_REFUSED,
                                                "the agent logged: code = Unauthenticated desc = x")


# --- the system's sources --------------------------------------------------------------------------

def test_the_log_files_are_read_from_where_they_ended_before_the_agent_started(tmp_path: Path) -> None:
    log, err = tmp_path / "nezha-agent.log", tmp_path / "nezha-agent.err"
    err.write_text("old: rpc error: code = Unauthenticated desc = an earlier agent\n")
    source = online.FileLog([log, err])
    assert source.look() == online.NOTHING
    with err.open("a") as handle:
        handle.write("new: dial tcp 127.0.0.1:5555: connect: connection refused\n")
    assert source.look().outcome is Outcome.PORT_REFUSED


def test_a_log_file_truncated_since_is_read_whole(tmp_path: Path) -> None:
    err = tmp_path / "nezha-agent.err"
    err.write_text("x" * 1000 + "\n")
    source = online.FileLog([err])
    err.write_text("rpc error: code = Unauthenticated\n")
    assert source.look().outcome is Outcome.SECRET_REFUSED


def test_the_journal_is_read_from_the_start_of_the_wait_only() -> None:
    asked: list[Sequence[str]] = []
    journal = ("1700000009.900000 host nezha-agent[7]: rpc error: code = Unauthenticated (the old agent)\n"
               "1700000010.200000 host nezha-agent[8]: dial tcp 10.0.0.1:5555: connect: connection refused\n")

    def run(argv: Sequence[str]) -> str:
        asked.append(argv)
        return journal

    look = online.JournalLog(1700000010.0, run).look()
    assert look == Look(Outcome.PORT_REFUSED,
                        "the agent logged: dial tcp 10.0.0.1:5555: connect: connection refused")
    assert list(asked[0]) == ["journalctl", "-u", "nezha-agent", "--since", "@1700000009", "-o", "short-unix",
                              "--no-pager", "-q"]


@pytest.mark.parametrize(("shown", "outcome"), [
    ("ActiveState=active\nSubState=running\nExecMainStatus=0\n", None),
    ("ActiveState=activating\nSubState=auto-restart\nExecMainStatus=1\n", Outcome.AGENT_DIED),
    ("ActiveState=failed\nSubState=failed\nExecMainStatus=2\n", Outcome.AGENT_DIED),
])
def test_systemd_says_when_the_agent_exited(shown: str, outcome: Outcome | None) -> None:
    assert online.UnitProcess(lambda argv: shown).look().outcome is outcome


def test_the_pid_file_says_when_the_agent_is_gone(tmp_path: Path) -> None:
    pid_file = tmp_path / "nezha-agent.pid"
    source = online.PidFile(pid_file, online.pid_alive)
    assert source.look() == online.NOTHING  # no pid file: nothing known
    pid_file.write_text(f"{os.getpid()}\n")
    assert source.look() == online.NOTHING
    pid_file.write_text("999999999\n")
    assert source.look().outcome is Outcome.AGENT_DIED
