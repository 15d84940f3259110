"""A dashboard upgraded from v0 to v1/v2 at the same URL: the node converges, or says what changed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nezha_bootstrap.agent import AGENT_V1
from nezha_bootstrap.identity import machine_uuid
from nezha_bootstrap.testing.fake_v0 import FakeDashboard, serve
from nezha_bootstrap.testing.fake_v1 import FakeV1, serve_v1
from tests.conftest import MACHINE_ID, TOKEN, Cli

pytestmark = pytest.mark.integration

UNIT = "etc/systemd/system/nezha-agent.service"
STATE = "var/lib/nezha-bootstrap/state.json"


@dataclass
class Upgraded:
    """A node registered with a v0 dashboard, whose URL now serves a v1/v2 dashboard."""

    cli: Cli
    v1: FakeV1

    def run(self, *args: str, **env: str | None) -> tuple[int, str, str]:
        outcome = self.cli(*args, **env)
        return outcome.exit_code, outcome.stdout, outcome.stderr

    def v1_settings(self) -> dict[str, str | None]:
        return {"NEZHA_AGENT_SECRET": self.v1.agent_secret,
                "NEZHA_AGENT_BASE_URL": f"{self.cli.dashboard.url}/releases", "NEZHA_PROBE_ADDRESS": None}


@pytest.fixture
def upgraded(root: Path) -> Iterator[Upgraded]:
    fake = FakeDashboard(TOKEN)
    with serve(fake) as running:
        cli = Cli(running, fake, root)
        first = cli("run")
        assert first.exit_code == 0, first.stderr
    v1 = FakeV1(profile="v2.1+")
    v1.add_release(AGENT_V1)
    with serve_v1(v1, port=running.port):  # the same URL, now the upgraded dashboard
        yield Upgraded(cli, v1)


def test_with_only_the_v0_token_a_finished_node_still_makes_no_request(upgraded: Upgraded) -> None:
    code, out, err = upgraded.run("run")

    assert code == 0, err
    assert "nothing to do" in err + out
    assert upgraded.v1.journal == []


def test_check_with_the_v0_token_fails_and_names_the_upgrade(upgraded: Upgraded) -> None:
    code, out, _ = upgraded.run("check")

    assert code == 3
    assert "FAIL  generation" in out
    assert "when it was a v0 dashboard; it answers as v1 or newer now: the dashboard was upgraded" in out
    assert "After upgrading the dashboard" in out


# The v1 settings: the agent secret without the v0 token (auto), or --dashboard v1 (the token may stay).
@pytest.mark.parametrize(("flags", "token"), [((), None), (("--dashboard", "v1"), TOKEN)],
                         ids=["auto", "dashboard-v1"])
def test_with_v1_settings_the_v0_agent_is_replaced_by_a_working_v1_agent(
    upgraded: Upgraded, flags: tuple[str, ...], token: str | None
) -> None:
    code, out, err = upgraded.run("run", "--json", *flags, **upgraded.v1_settings(), NEZHA_TOKEN=token)

    assert code == 0, err
    assert json.loads(out)["outcome"] == "installed"
    unit = (upgraded.cli.root / UNIT).read_text()
    assert 'ExecStart=/opt/nezha/agent/nezha-agent "-c" "/opt/nezha/agent/config.yml"' in unit
    assert " -p " not in unit and '"-p"' not in unit  # the v0 unit was replaced, not restarted
    assert [server.uuid for server in upgraded.v1.servers] == [machine_uuid(MACHINE_ID)]
    state = json.loads((upgraded.cli.root / STATE).read_text())
    assert state["generation"] == ("v1+" if flags else "v2.1+") and state["secret"] == ""

    again = upgraded.run("run", "--json", *flags, **upgraded.v1_settings(), NEZHA_TOKEN=token)
    assert again[0] == 0, again[2]
    assert json.loads(again[1])["outcome"] == "nothing_to_do"
    assert len(upgraded.v1.servers) == 1


def test_a_v0_answer_from_the_upgraded_dashboard_sends_a_node_with_both_settings_to_v1(upgraded: Upgraded) -> None:
    # The cached v0 stays trusted while the settings work on v0 (the token is there), until the dashboard
    # answers a v0 request as only v1/v2 dashboards do: here a clone (new machine-id) registers.
    (upgraded.cli.root / "etc/machine-id").write_text("fedcba9876543210fedcba9876543210\n")
    state = json.loads((upgraded.cli.root / STATE).read_text())
    (upgraded.cli.root / STATE).write_text(json.dumps({**state, "agent_secret_given": True}))  # had both before

    code, out, err = upgraded.run("run", "--json", **upgraded.v1_settings())

    assert code == 0, err
    assert "the dashboard answered as v1 or newer, not as the v0 the state recorded: probing it again" in err
    assert json.loads(out)["generation"] == "v2.1+"
    assert [server.uuid for server in upgraded.v1.servers] == [machine_uuid("fedcba9876543210fedcba9876543210")]


def test_an_agent_secret_given_beside_the_v0_token_probes_once_and_replaces_the_v0_agent(upgraded: Upgraded) -> None:
    """Issue 18 item 7: what `check` tells the operator to do (add the agent secret), with the token kept."""
    settings = {**upgraded.v1_settings(), "NEZHA_TOKEN": TOKEN}

    code, out, err = upgraded.run("run", "--json", **settings)

    assert code == 0, err
    assert "an agent secret is given now beside the API token: probing it once" in err
    assert json.loads(out)["outcome"] == "installed"
    assert '"-c" "/opt/nezha/agent/config.yml"' in (upgraded.cli.root / UNIT).read_text()
    assert [server.uuid for server in upgraded.v1.servers] == [machine_uuid(MACHINE_ID)]
    seen = len(upgraded.v1.journal)
    again = upgraded.run("run", "--json", **settings)
    assert again[0] == 0 and json.loads(again[1])["outcome"] == "nothing_to_do"
    assert len(upgraded.v1.servers) == 1 and len(upgraded.v1.journal) - seen <= 3  # the cached v2.1+: no probe


@pytest.mark.parametrize("recorded", [True, None], ids=["recorded", "state-before-the-field"])
def test_a_v0_node_whose_settings_keep_both_probes_at_most_once_then_sends_nothing(cli: Cli, recorded: bool | None,
                                                                                   ) -> None:
    both = {"NEZHA_AGENT_SECRET": "AgentSecretAgentSecret32chars000"}
    assert cli("run", **both).exit_code == 0
    if recorded is None:  # written by a version without the field
        state = json.loads((cli.root / STATE).read_text())
        del state["agent_secret_given"]
        (cli.root / STATE).write_text(json.dumps(state))
        assert cli("run", **both).exit_code == 0  # one probe: the v0 dashboard is still v0
    seen = len(cli.fake.journal)

    outcome = cli("run", **both)

    assert outcome.exit_code == 0, outcome.stderr
    assert len(cli.fake.journal) == seen and len(cli.fake.servers) == 1
