"""Hostile input at the command line: names and tags arrive exactly as given, or are refused (exit 2)
before anything is sent; addresses a shell could misread never reach install.sh; URL passwords are
never printed."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nezha_bootstrap.testing.fake_v0 import FakeDashboard, Running
from tests.conftest import MACHINE_ID, TOKEN, Cli
from tests.processes import leaks

pytestmark = pytest.mark.integration

STATE = "var/lib/nezha-bootstrap/state.json"
LONG_NAME = "n" * 9_990 + "-é🚀\"'<>&"  # 10,000 characters

HOSTILE_NAMES = [
    pytest.param('say "hi" \'there\' \\ \\" end', id="quotes and backslashes"),
    pytest.param("<script>alert(1)</script> &amp; \u2028 \u2029", id="what Go escapes in JSON"),
    pytest.param("👩‍💻 узел «один» ﷽ \u200f", id="emoji, scripts, bidi mark"),
    pytest.param("  padded  ", id="spaces kept, not trimmed"),
    pytest.param('{"Name":"other","Secret":"x"}', id="a JSON object"),
    pytest.param("$(reboot); `id` | rm -rf / #", id="shell words"),
    pytest.param(LONG_NAME, id="10000 characters"),
]


def fresh_cli(dashboard: Running, fake: FakeDashboard) -> Cli:
    """A new root per hypothesis example (function-scoped fixtures are shared by all examples)."""
    root = Path(tempfile.mkdtemp(prefix="hostile-")) / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text(MACHINE_ID + "\n")
    fake.servers.clear()
    fake.journal.clear()
    fake.faults.fail_next = []
    return Cli(dashboard, fake, root)


# --- names and tags -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_name_reaches_the_dashboard_and_the_state_exactly(cli: Cli, name: str) -> None:
    outcome = cli("run", "-v", NODE_NAME=name)

    assert outcome.exit_code == 0, outcome.stderr
    [register] = cli.fake.registrations()
    assert json.loads(register.body.decode("utf-8"))["Name"] == name
    assert [server.name for server in cli.fake.servers] == [name]
    assert json.loads((cli.root / STATE).read_text())["name"] == name
    assert leaks(cli) == []


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_lost_answer_is_detected_whatever_the_name(cli: Cli, name: str) -> None:
    # The orphan check compares names from the list's JSON (Go-escaped) with the name sent.
    cli.fake.faults.lost_response = 1

    outcome = cli("run", "-v", NODE_NAME=name)

    assert outcome.exit_code == 3
    [orphan] = cli.fake.servers
    assert f"(id {orphan.id})" in outcome.stderr
    assert len(cli.fake.registrations()) == 1
    assert leaks(cli) == []


@pytest.mark.parametrize(
    "tag", ["a&b=c", "x #y", "1+1 %20 ?", "🚀 prod/eu", "<&>", "t" * 2000],
)
def test_a_hostile_tag_is_encoded_in_the_list_query_so_a_lost_answer_is_still_caught(cli: Cli, tag: str) -> None:
    cli.fake.faults.lost_response = 1

    outcome = cli("run", "-v", NEZHA_TAG=tag)

    assert outcome.exit_code == 3
    [orphan] = cli.fake.servers
    assert orphan.tag == tag
    assert f"(id {orphan.id})" in outcome.stderr
    assert leaks(cli) == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=80,
).filter(lambda text: text.strip() and "{" not in text))
def test_any_name_without_control_characters_arrives_exactly(
    dashboard: Running, fake: FakeDashboard, name: str
) -> None:
    cli = fresh_cli(dashboard, fake)

    outcome = cli("run", NODE_NAME=name)

    assert outcome.exit_code == 0, outcome.stderr
    assert [server.name for server in fake.servers] == [name]
    assert outcome.stdout.startswith(f"registered and installed: {name!r} on {dashboard.url}, online after ")


@pytest.mark.parametrize("name", ["two\nlines", "carriage\rreturn", "tab\there", "colour \x1b[31mred", "bell\x07"])
def test_a_name_with_a_control_character_exits_2_before_anything_is_sent(cli: Cli, name: str) -> None:
    outcome = cli("run", "-v", NODE_NAME=name)

    assert outcome.exit_code == 2
    assert "the node name must not contain control characters" in outcome.stderr
    assert cli.fake.journal == [] and cli.calls() == []
    assert not (cli.root / "var").exists()


# --- probe addresses ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "address",
    ["probe.example.test;reboot", "$(id).example.test", "`id`", "probe example test", "probe.example.test --insecure",
     "-s", "--tls", "a|b", "a&&b", "x'y", 'x"y', "[::1];id", "probe.example.test\n", "∞.example.test"],
)
def test_a_probe_address_a_shell_could_misread_exits_2_and_reaches_nothing(cli: Cli, address: str) -> None:
    outcome = cli("run", "-v", NEZHA_PROBE_ADDRESS=address)

    assert outcome.exit_code == 2
    assert f"the probe address {address!r} must be a host name, an IPv4 or an IPv6 address" in outcome.stderr
    assert cli.fake.journal == [] and cli.calls() == []
    assert not (cli.root / "var").exists()
    assert leaks(cli) == []


# --- credentials in the dashboard URL ------------------------------------------------------------

PASSWORD = "Hunter2Hunter2"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://admin:{pw}@127.0.0.1:{port}", "http://***@127.0.0.1:{port}"),
        ("http://{pw}@127.0.0.1:{port}/sub", "http://***@127.0.0.1:{port}/sub"),
        ("http://u:{pw}@127.0.0.1:99999", "http://***@127.0.0.1:99999"),
        ("http://u:{pw}@[::1", "http://***@[::1"),
        ("http://u:a/{pw}@127.0.0.1:{port}", "http://***@127.0.0.1:{port}"),
        ("http://u:a?{pw}@127.0.0.1:{port}", "http://***@127.0.0.1:{port}"),
    ],
)
@pytest.mark.parametrize("output", [("-v",), ("--json",)])
def test_credentials_in_the_dashboard_url_exit_2_and_are_never_printed(
    cli: Cli, url: str, shown: str, output: tuple[str, ...]
) -> None:
    port = cli.dashboard.port

    outcome = cli("run", *output, NEZHA_DASHBOARD_URL=url.format(pw=PASSWORD, port=port))

    assert outcome.exit_code == 2, outcome.stderr
    assert PASSWORD not in outcome.stdout + outcome.stderr
    assert repr(shown.format(port=port)) in outcome.stderr
    assert "internal error" not in outcome.stderr
    assert cli.fake.journal == []
    if output == ("--json",):
        assert json.loads(outcome.stdout)["exit_code"] == 2


# --- every setting at once, at the command line --------------------------------------------------

_text = st.text(max_size=40)
_urlish = st.builds(lambda scheme, userinfo, rest: f"{scheme}{userinfo}{rest}",
                    st.sampled_from(["http://", "https://", "ftp://", "http:", ""]),
                    st.sampled_from(["", f"u:{PASSWORD}@", f"{PASSWORD}@", f"u:x/{PASSWORD}@"]),
                    _text)
_env_text = _text.filter(lambda t: "\x00" not in t and not any("\ud800" <= c <= "\udfff" for c in t))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    url=_urlish.filter(lambda t: "\x00" not in t and not any("\ud800" <= c <= "\udfff" for c in t)),
    probe=_env_text, name=_env_text, tag=_env_text, port=_env_text,
)
def test_any_settings_give_a_plan_or_exit_2_never_a_crash_or_a_password(
    dashboard: Running, fake: FakeDashboard, url: str, probe: str, name: str, tag: str, port: str
) -> None:
    cli = fresh_cli(dashboard, fake)
    env: dict[str, Any] = {"NEZHA_DASHBOARD_URL": url, "NEZHA_PROBE_ADDRESS": probe, "NODE_NAME": name,
                           "NEZHA_TAG": tag, "NEZHA_PROBE_PORT": port}

    outcome = cli("run", "--dry-run", "--json", **env)

    assert outcome.exit_code in (0, 2), outcome.stderr
    assert "Traceback" not in outcome.stderr and "internal error" not in outcome.stderr
    assert PASSWORD not in outcome.stdout + outcome.stderr
    assert json.loads(outcome.stdout)["exit_code"] == outcome.exit_code
    assert TOKEN not in outcome.stdout + outcome.stderr
    assert fake.journal == []
