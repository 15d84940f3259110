"""Done means online (issue 17): `run` exits 0 only once the dashboard sees the node; every other ending of
the wait is a named verdict with its exit code, saved for `status` and redone by the next run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from nezha_bootstrap.errors import DashboardRefused, DashboardUnreachable
from nezha_bootstrap.online import NOTHING, Look, Outcome
from nezha_bootstrap.retry import Transient
from nezha_bootstrap.testing import grpc_port
from nezha_bootstrap.testing.fake_v1 import FakeV1, serve_v1
from nezha_bootstrap.v1.online import GO_ZERO_TIME, V2Presence
from tests.conftest import Cli, V1Cli, tls_server_context
from tests.test_run_v1 import UUID

pytestmark = pytest.mark.integration

def state(root: Path) -> dict[str, object]:
    return dict(json.loads((root / "var/lib/nezha-bootstrap/state.json").read_text()))


# --- v0: the server's last_active ----------------------------------------------------------------------

def test_v0_run_exits_0_once_the_dashboard_lists_the_node_reporting(cli: Cli) -> None:
    outcome = cli("run", "--json", NODE_NAME="web-1")

    assert outcome.exit_code == 0, outcome.stderr
    result = json.loads(outcome.stdout)
    assert result["online"] is True and 0 <= result["online_after_s"] < 5
    [server] = cli.fake.servers
    assert cli.fake.connections == ["connected"]
    saved = state(cli.root)
    assert (saved["online"], saved["server_id"]) == (True, server.id) and saved["online_at"] and saved["installed_at"]
    assert [step["step"] for step in result["steps"]][-1] == "online"


def test_v0_rerun_of_an_online_node_sends_nothing_and_says_what_the_last_run_saw(cli: Cli) -> None:
    assert cli("run", NODE_NAME="web-1").exit_code == 0
    before = len(cli.fake.journal)

    again = cli("run", "--json", NODE_NAME="web-1")

    assert again.exit_code == 0, again.stderr
    assert len(cli.fake.journal) == before
    assert (json.loads(again.stdout)["online"], json.loads(again.stdout)["online_after_s"]) == (True, None)


def test_v0_reinstall_waits_for_a_newer_report_than_the_old_agent_left(cli: Cli) -> None:
    assert cli("run", NODE_NAME="web-1").exit_code == 0
    (cli.root / "etc/systemd/system/nezha-agent.service").unlink()
    first_run = len(cli.fake.journal)

    again = cli("run", "--json", NODE_NAME="web-1")

    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["online"] is True
    assert len(cli.fake.registrations()) == 1
    details = [j for j in cli.fake.journal[first_run:] if j.path == "/api/v1/server/details"]
    assert details and all(j.query == f"id={cli.fake.servers[0].id}" for j in details)  # the saved id, exactly


def test_v0_a_node_that_never_reports_is_exit_4_at_the_online_timeout_and_the_rerun_installs_again(cli: Cli) -> None:
    cli.fake.agent_port.state = "silent"  # the agent's connection never gets through
    with grpc_port.AgentPort() as served:  # while the port itself answers as gRPC: nothing names a cause
        outcome = cli("run", "--json", NODE_NAME="web-1", NEZHA_PROBE_ADDRESS="127.0.0.1",
                      NEZHA_PROBE_PORT=str(served.port), NEZHA_PROBE_TLS="false", NEZHA_ONLINE_TIMEOUT="1.5")

        assert outcome.exit_code == 4, outcome.stderr
        failure = json.loads(outcome.stdout)
        assert (failure["online"], failure["online_after_s"], failure["exit_code"]) == (False, None, 4)
        assert "did not see the node online within 1.5 s" in "\n".join(failure["error"])
        saved = state(cli.root)
        assert (saved["online"], saved["installed_at"]) == (False, None)

        cli.fake.agent_port.state = "open"
        again = cli("run", NODE_NAME="web-1", NEZHA_PROBE_ADDRESS="127.0.0.1", NEZHA_PROBE_PORT=str(served.port),
                    NEZHA_PROBE_TLS="false")
    assert again.exit_code == 0, again.stderr
    assert "install only (registered earlier, the install did not finish)" in again.stderr
    assert len(cli.fake.registrations()) == 1


def test_v0_tls_against_a_plain_grpc_port_is_exit_3_naming_no_tls_and_stops_the_agent(cli: Cli) -> None:
    cli.fake.agent_port.tls = False  # v0.20.13's agent port is plain gRPC
    with grpc_port.AgentPort() as served:
        outcome = cli("run", NODE_NAME="web-1", NEZHA_PROBE_ADDRESS="127.0.0.1", NEZHA_PROBE_PORT=str(served.port))

    assert outcome.exit_code == 3, outcome.stderr
    assert (f"the agent connects to 127.0.0.1:{served.port} with TLS (--tls), but the port speaks plain gRPC"
            in outcome.stderr)
    assert "Run again with --no-tls" in outcome.stderr
    assert "stopping the agent: nezha-agent service stop" in outcome.stderr
    assert cli.fake.connections == ["tls on plain"]
    assert state(cli.root)["installed_at"] is None


def test_v0_plain_against_a_tls_port_is_exit_3_naming_tls(cli: Cli, ca: trustme.CA, tmp_path: Path) -> None:
    cli.fake.agent_port.tls = True  # a TLS proxy in front of the agent port
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with grpc_port.AgentPort(tls=tls_server_context(ca)) as served:
        outcome = cli("run", NODE_NAME="web-1", NEZHA_PROBE_ADDRESS="127.0.0.1", NEZHA_PROBE_PORT=str(served.port),
                      NEZHA_PROBE_TLS="false")

    assert outcome.exit_code == 3, outcome.stderr
    assert (f"the agent connects to 127.0.0.1:{served.port} without TLS (--no-tls), but the port speaks TLS"
            in outcome.stderr)
    assert "Run again with --tls" in outcome.stderr


def test_v0_a_closed_probe_port_is_exit_4_naming_host_and_port_and_the_agent_keeps_running(cli: Cli,
                                                                                           closed_port: int) -> None:
    cli.fake.agent_port.state = "refused"
    port = closed_port
    outcome = cli("run", NODE_NAME="web-1", NEZHA_PROBE_ADDRESS="127.0.0.1", NEZHA_PROBE_PORT=str(port))

    assert outcome.exit_code == 4, outcome.stderr
    assert f"127.0.0.1:{port} refused the agent's connection (nothing listens there)" in outcome.stderr
    assert "stopping the agent" not in outcome.stderr  # a later boot, or the dashboard coming up, may succeed


def test_v0_a_silent_probe_port_is_exit_4_naming_host_and_port(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from nezha_bootstrap import agentport

    monkeypatch.setattr(agentport, "ANSWER_WAIT", 0.3)
    cli.fake.agent_port.state = "silent"
    with grpc_port.AgentPort(silent=True) as served:
        outcome = cli("run", NODE_NAME="web-1", NEZHA_PROBE_ADDRESS="127.0.0.1", NEZHA_PROBE_PORT=str(served.port),
                      NEZHA_PROBE_TLS="false")

    assert outcome.exit_code == 4, outcome.stderr
    assert f"127.0.0.1:{served.port} did not answer the agent" in outcome.stderr


def test_v0_a_server_deleted_in_the_dashboard_refuses_the_node_secret_exit_3(cli: Cli) -> None:
    assert cli("run", NODE_NAME="web-1").exit_code == 0
    cli.fake.servers.clear()  # deleted in the dashboard: its secret is refused from now on
    (cli.root / "etc/systemd/system/nezha-agent.service").unlink()

    outcome = cli("run", NODE_NAME="web-1")

    assert outcome.exit_code == 3, outcome.stderr
    assert "the dashboard refused the node secret" in outcome.stderr and "--force" in outcome.stderr
    assert "stopping the agent" in outcome.stderr


@pytest.fixture
def releases() -> Iterator[str]:
    """A release host of the stub v0 agent (--method direct)."""
    from nezha_bootstrap.config import AGENT_V0

    host = FakeV1()
    host.add_release(AGENT_V0)
    with serve_v1(host) as running:
        yield f"{running.url}/releases"


def test_v0_the_agent_dying_is_exit_5(cli: Cli, releases: str) -> None:
    cli.fake.agent_port.state = "silent"
    with grpc_port.AgentPort() as served:
        outcome = cli("run", "--method", "direct", NODE_NAME="web-1", NEZHA_PROBE_ADDRESS="127.0.0.1",
                      NEZHA_PROBE_PORT=str(served.port), NEZHA_PROBE_TLS="false", NEZHA_STUB_MODE="dies",
                      NEZHA_AGENT_BASE_URL=releases)

    assert outcome.exit_code == 5, outcome.stderr
    assert "the agent process exited" in outcome.stderr


# --- v1/v2 with the agent secret alone: the agent's log --------------------------------------------------

def test_v1_secret_alone_is_online_when_the_agents_log_shows_its_first_report(v1cli: V1Cli) -> None:
    outcome = v1cli("--json")

    assert outcome.exit_code == 0, outcome.stderr
    result = json.loads(outcome.stdout)
    assert result["online"] is True and result["online_after_s"] < 5
    assert "debug: true" in (v1cli.root / "opt/nezha/agent/config.yml").read_text()
    assert v1cli.state()["online"] is True


def test_v1_a_wrong_agent_secret_is_exit_3_and_the_agent_is_stopped(v1cli: V1Cli) -> None:
    outcome = v1cli(NEZHA_AGENT_SECRET="wrongsecret1234567890")

    assert outcome.exit_code == 3, outcome.stderr
    assert "the dashboard refused the agent secret (the agent logged:" in outcome.stderr
    assert "code = Unauthenticated" in outcome.stderr
    assert [call.argv[-1] for call in v1cli.agent_calls()][-1] == "stop"
    assert v1cli.fake.servers == []
    assert (v1cli.state()["online"], v1cli.state()["installed_at"]) == (False, None)


def test_v1_tls_against_the_plain_dashboard_port_is_exit_3(v1cli: V1Cli) -> None:
    outcome = v1cli("--tls")

    assert outcome.exit_code == 3, outcome.stderr
    assert "with TLS (--tls), but the port speaks plain gRPC" in outcome.stderr


def test_v1_a_closed_port_is_exit_4_naming_it(v1cli: V1Cli, closed_port: int) -> None:
    port = closed_port
    outcome = v1cli("--probe-port", str(port))

    assert outcome.exit_code == 4, outcome.stderr
    assert f"127.0.0.1:{port} refused the agent's connection" in outcome.stderr


# --- v2.1+ with an access token: the uuid listed and reporting -----------------------------------------------

def test_v2_token_mode_is_online_when_the_uuid_is_listed_reporting(fake_v1: FakeV1, v1cli: V1Cli) -> None:
    token = fake_v1.add_token()
    outcome = v1cli("--json", NEZHA_TOKEN=token, NODE_NAME="web-1")

    assert outcome.exit_code == 0, outcome.stderr
    result = json.loads(outcome.stdout)
    assert result["online"] is True
    [server] = fake_v1.servers
    assert server.uuid == UUID and server.name == "web-1"


# --- status: whether the last run saw the node online, and when -------------------------------------------

def test_status_shows_whether_the_last_run_saw_the_node_online_and_when(cli: Cli) -> None:
    assert cli("run", NODE_NAME="web-1").exit_code == 0
    shown = cli("status", "--json")
    text = cli("status")

    info = json.loads(shown.stdout)
    assert info["online"] is True and info["online_at"] == info["installed_at"]
    assert "online: yes" in text.stdout.splitlines()


def test_status_after_a_verdict_says_the_node_was_not_seen_online(cli: Cli, closed_port: int) -> None:
    cli.fake.agent_port.state = "refused"
    port = closed_port
    assert cli("run", NODE_NAME="web-1", NEZHA_PROBE_ADDRESS="127.0.0.1", NEZHA_PROBE_PORT=str(port)).exit_code == 4

    info = json.loads(cli("status", "--json").stdout)
    assert (info["online"], info["online_at"], info["installed"]) == (False, None, False)


@pytest.mark.parametrize("port_kind", ["closed", "plain"])
def test_v1_without_the_agents_log_the_probe_of_its_port_gives_the_verdict(v1cli: V1Cli, closed_port: int,
                                                                           port_kind: str) -> None:
    """debug=false: the agent logs nothing, so the port probe alone names a closed port or a TLS mismatch."""
    args = ("--probe-port", str(closed_port)) if port_kind == "closed" else ("--tls",)

    outcome = v1cli("--agent-option", "debug=false", *args)

    if port_kind == "closed":
        assert outcome.exit_code == 4, outcome.stderr
        assert f"127.0.0.1:{closed_port} refused the agent's connection" in outcome.stderr
    else:
        assert outcome.exit_code == 3, outcome.stderr
        assert "with TLS (--tls), but the port speaks plain gRPC" in outcome.stderr
    assert v1cli.state()["installed_at"] is None


# --- V2Presence: the dashboard's list, looked at in-process ---------------------------------------------

class Listing:
    """The api's `server_by_id` and the finder's `look_again`, answering from a list of rows or failures."""

    uuid = UUID

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.by_id: list[int] = []
        self.searches = 0

    def _next(self) -> Any:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def server_by_id(self, server_id: int) -> Any:
        self.by_id.append(server_id)
        return self._next()

    def look_again(self) -> Any:
        self.searches += 1
        return self._next()


def presence(listing: Listing, row: dict[str, Any] | None, warned: list[str]) -> V2Presence:
    return V2Presence(listing, listing, row, warn=warned.append)  # type: ignore[arg-type]


def row(last_active: object, server_id: int = 7) -> dict[str, Any]:
    return {"id": server_id, "uuid": UUID, "last_active": last_active}


def test_a_uuid_not_listed_before_is_online_at_its_first_real_report() -> None:
    listing = Listing(None, row(GO_ZERO_TIME), row("2026-12-07T10:00:00Z"))
    warned: list[str] = []
    seen = presence(listing, None, warned)

    looks = [seen.look(), seen.look(), seen.look()]

    assert [look.outcome for look in looks] == [None, None, Outcome.ONLINE]
    assert looks[0] == NOTHING  # not listed yet
    assert looks[1].evidence == "server id 7 listed, no report yet"  # enrolled, no state report yet
    assert looks[2].evidence == f"uuid {UUID} (server id 7) reported at 2026-12-07T10:00:00Z"
    assert (listing.searches, listing.by_id) == (2, [7])  # searched until found, then looked at by its id
    assert warned == []


def test_the_row_the_wait_saw_last_is_kept_for_the_naming_and_forgotten_when_it_goes() -> None:
    other = {**row("2026-12-07T10:00:00Z"), "uuid": "f0e1d2c3-0f41-5a6b-9c7d-1e2f3a4b5c6d"}
    listing = Listing(row(GO_ZERO_TIME), None, row(GO_ZERO_TIME), other, row("2026-12-07T10:00:00Z"))
    seen = presence(listing, None, [])

    assert seen.look().outcome is None and seen.row == row(GO_ZERO_TIME)
    assert seen.look() == NOTHING and seen.row is None  # the row went (deleted during the wait)
    assert seen.look().outcome is None and seen.row == row(GO_ZERO_TIME)
    assert seen.look() == NOTHING and seen.row is None  # its id now another uuid's: never ours to rename
    look = seen.look()
    assert look.outcome is Outcome.ONLINE and seen.row == row("2026-12-07T10:00:00Z")


def test_a_uuid_found_once_is_then_looked_at_by_its_id() -> None:
    listing = Listing(row(GO_ZERO_TIME), row("2026-12-07T10:00:00Z"))
    seen = presence(listing, None, [])

    assert seen.look().outcome is None
    assert seen.look().outcome is Outcome.ONLINE
    assert (listing.searches, listing.by_id) == (1, [7])


def test_a_row_listed_before_the_install_waits_for_a_report_newer_than_the_first_look() -> None:
    old = "2026-12-07T09:00:00Z"  # the old agent's last report, from before this run
    # then the dashboard's zero time (the stream closed), a row without the field, an empty one: no report yet
    listing = Listing(row(old), row(old), row(GO_ZERO_TIME), row(None), row(""), row("2026-12-07T10:00:00Z"))
    seen = presence(listing, row(old), [])

    looks = [seen.look() for _ in range(6)]

    assert [look.outcome for look in looks] == [None, None, None, None, None, Outcome.ONLINE]
    assert looks[0].evidence == f"server id 7 listed (last_active {old}), waiting for a newer report"
    assert listing.by_id == [7] * 6 and listing.searches == 0  # by the id it had, never a search


def test_a_failing_list_read_is_retried_and_a_refused_one_warns_once_then_is_not_read_again() -> None:
    listing = Listing(Transient("HTTP 502"), DashboardUnreachable("connection refused"),
                      DashboardRefused("HTTP 403: permission denied"))
    warned: list[str] = []
    seen = presence(listing, None, warned)

    looks = [seen.look() for _ in range(4)]

    assert looks[:2] == [Look(None, "server list: HTTP 502"), Look(None, "server list: connection refused")]
    assert looks[2:] == [NOTHING, NOTHING]
    assert warned == ["cannot read the server list to see the node online: HTTP 403: permission denied"]
    assert listing.searches == 3 and listing.answers == []  # the fourth look read nothing
