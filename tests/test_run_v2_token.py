"""`nezha-bootstrap run` with a v2.1+ access token: the node names, hides and groups its own server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme

from nezha_bootstrap.agent import AGENT_V1
from nezha_bootstrap.identity import machine_uuid
from nezha_bootstrap.testing.fake_v0 import serve
from nezha_bootstrap.testing.fake_v1 import FakeV1, V1Server, new_agent_secret, serve_v1
from nezha_bootstrap.v1.api import SCOPE_PROBE
from tests.conftest import MACHINE_ID, V1Cli, leak_scan, tls_server_context

pytestmark = pytest.mark.integration

UUID = machine_uuid(MACHINE_ID)
# The new row shows to guests under two random words until it is hidden; a guest page refreshes
# every few seconds, so naming and hiding must land well within one second of the agent's enrollment.
GUEST_POLL_SECONDS = 1.0


@pytest.fixture
def fake_v2(fake_v1: FakeV1) -> FakeV1:
    """conftest's v2.1+ fake, by the name these tests read with."""
    return fake_v1


@pytest.fixture
def v2cli(v1cli: V1Cli) -> V1Cli:
    return v1cli


def run(v2cli: V1Cli, *args: str, token: str | None = None, **env: str | None) -> tuple[int, str, str]:
    settings = {"NEZHA_TOKEN": token or v2cli.fake.add_token(), "NODE_NAME": "web-1", **env}
    outcome = v2cli(*args, **settings)
    return outcome.exit_code, outcome.stdout, outcome.stderr


def api_requests(fake: FakeV1) -> list[str]:
    """The requests that carried a credential, as 'METHOD path'."""
    return [f"{j.method} {j.path}" for j in fake.journal if "authorization" in j.headers]


def test_first_enrollment_is_named_and_hidden_before_the_first_guest_poll(v2cli: V1Cli) -> None:
    code, out, err = run(v2cli, "--json", NEZHA_NOTE="rack 4", NEZHA_PUBLIC_NOTE="eu", NEZHA_DISPLAY_INDEX="7")

    assert code == 0, err
    [server] = v2cli.fake.servers
    assert (server.uuid, server.name, server.hide_for_guest, server.note, server.public_note,
            server.display_index) == (UUID, "web-1", True, "rack 4", "eu", 7)
    [change] = v2cli.fake.changes
    assert change.at - server.created_at < GUEST_POLL_SECONDS
    assert v2cli.fake.guest_view() == []
    summary = json.loads(out)
    assert (summary["outcome"], summary["server_id"], summary["name"], summary["hide_for_guest"]) == (
        "installed", server.id, "web-1", True)
    assert "naming" not in summary and "two random words" not in err  # the token names it: no naming note
    # the token's check and scopes, the node online (its uuid listed, reporting), the PATCH of the row that look
    # saw (no look of its own: on v2.3.7 each one copies the whole fleet), the read-back
    assert api_requests(v2cli.fake) == ["GET /api/v1/server", f"PATCH {SCOPE_PROBE}", "GET /api/v1/server",
                                        "PATCH /api/v1/server/1", "GET /api/v1/server"]


def test_status_after_a_token_run_shows_the_name_the_node_gave_itself(v2cli: V1Cli) -> None:
    assert run(v2cli)[0] == 0

    lines = v2cli.invoke(["status"]).stdout.splitlines()

    assert "name: web-1" in lines and "generation: v2.1+" in lines


def test_the_default_shows_nothing_to_guests_and_a_visible_server_is_asked_for(v2cli: V1Cli) -> None:
    assert run(v2cli)[0] == 0
    assert v2cli.fake.servers[0].hide_for_guest is True

    assert run(v2cli, NEZHA_HIDE_FOR_GUEST="false")[0] == 0
    assert v2cli.fake.guest_view() == [{"id": 1, "name": "web-1", "public_note": ""}]


def test_a_rerun_with_nothing_changed_only_reads(v2cli: V1Cli) -> None:
    token = v2cli.fake.add_token()
    v2cli.fake.add_group("web")
    assert run(v2cli, token=token, NEZHA_GROUP="web")[0] == 0
    seen = len(v2cli.fake.journal)

    code, out, err = run(v2cli, "--json", token=token, NEZHA_GROUP="web")

    assert code == 0, err
    assert json.loads(out)["outcome"] == "nothing_to_do"
    assert [f"{j.method} {j.path}" for j in v2cli.fake.journal[seen:]] == [
        "GET /api/v1/server", "GET /api/v1/server-group"]
    assert len(v2cli.agent_calls()) == 1


def listed(fake: FakeV1, uuids: int) -> None:
    """`uuids` servers other machines enrolled before this one."""
    fake.servers += [V1Server(i, f"fleet-{i}", f"{i:08x}-0f41-5a6b-9c7d-1e2f3a4b5c6d", 1) for i in range(1, uuids + 1)]
    fake._next_id = uuids + 1


def whole_lists(fake: FakeV1) -> int:
    """GET /api/v1/server answered with every server: no ?id=, or none of its ids listed."""
    def whole(query: str) -> bool:
        ids = {int(i) for i in query.removeprefix("id=").replace("%2C", ",").split(",") if i.isdigit()}
        return not ids & {s.id for s in fake.servers}
    return sum(1 for j in fake.journal if j.method == "GET" and j.path == "/api/v1/server" and whole(j.query))


def test_a_first_enrollment_in_a_large_fleet_never_reads_the_whole_list(v2cli: V1Cli) -> None:
    listed(v2cli.fake, 3_000)

    code, out, err = run(v2cli, "--json")

    assert code == 0, err
    assert json.loads(out)["server_id"] == 3_001
    assert whole_lists(v2cli.fake) == 0


def test_a_rerun_in_a_large_fleet_finds_its_server_with_one_look_by_the_saved_id(v2cli: V1Cli) -> None:
    listed(v2cli.fake, 300)
    token = v2cli.fake.add_token()
    assert run(v2cli, token=token)[0] == 0
    assert v2cli.state()["server_id"] == 301
    seen = len(v2cli.fake.journal)
    state_file = v2cli.root / "var/lib/nezha-bootstrap/state.json"
    written = state_file.stat().st_ino  # each save is a new file renamed over the old

    code, out, err = run(v2cli, "--json", token=token)

    assert code == 0, err
    assert json.loads(out)["outcome"] == "nothing_to_do"
    assert state_file.stat().st_ino == written  # the id it already holds is not written again
    assert [f"{j.method} {j.path}?{j.query}" for j in v2cli.fake.journal[seen:]] == ["GET /api/v1/server?id=301"]
    assert len(v2cli.agent_calls()) == 1  # found: the agent was not restarted


def test_a_reinstall_finds_its_server_with_one_look_by_the_saved_id(v2cli: V1Cli) -> None:
    listed(v2cli.fake, 300)
    token = v2cli.fake.add_token()
    assert run(v2cli, token=token)[0] == 0
    seen = len(v2cli.fake.journal)

    code, out, err = run(v2cli, "--force", "--json", token=token)

    assert code == 0, err
    assert (json.loads(out)["outcome"], json.loads(out)["server_id"]) == ("installed", 301)
    lists = [f"{j.method} {j.path}?{j.query}" for j in v2cli.fake.journal[seen:] if j.path == "/api/v1/server"]
    assert lists[0] == "GET /api/v1/server?id=301" and whole_lists(v2cli.fake) == 0


def test_a_rerun_from_a_state_without_the_id_reads_the_whole_list_once_then_saves_the_id(v2cli: V1Cli) -> None:
    listed(v2cli.fake, 300)
    token = v2cli.fake.add_token()
    assert run(v2cli, token=token)[0] == 0
    state = v2cli.state()
    del state["server_id"]  # as the versions before it saved it
    (v2cli.root / "var/lib/nezha-bootstrap/state.json").write_text(json.dumps(state))
    seen = len(v2cli.fake.journal)

    assert run(v2cli, token=token)[0] == 0
    assert run(v2cli, token=token)[0] == 0

    assert [f"{j.method} {j.path}?{j.query}" for j in v2cli.fake.journal[seen:]] == [
        "GET /api/v1/server?", "GET /api/v1/server?id=301"]
    assert v2cli.state()["server_id"] == 301


def test_a_rerun_whose_saved_server_was_deleted_learns_it_from_one_answer_and_saves_the_new_id(v2cli: V1Cli) -> None:
    listed(v2cli.fake, 300)
    token = v2cli.fake.add_token()
    assert run(v2cli, token=token)[0] == 0
    v2cli.fake.servers = [s for s in v2cli.fake.servers if s.id != 301]  # deleted in the dashboard
    seen = len(v2cli.fake.journal)

    code, out, err = run(v2cli, "--json", token=token)

    assert code == 0, err
    lists = [f"{j.method} {j.path}?{j.query}" for j in v2cli.fake.journal[seen:] if j.path == "/api/v1/server"]
    assert lists[0] == "GET /api/v1/server?id=301"  # answered with the whole list: the id is gone
    assert "GET /api/v1/server?" not in lists  # no second, explicit whole list
    assert len(v2cli.agent_calls()) == 2  # restarted: the agent enrolled its uuid again
    assert v2cli.state()["server_id"] == json.loads(out)["server_id"] != 301


def test_a_run_over_plain_http_never_loads_the_trust_store(v2cli: V1Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("the trust store was loaded for a plain http dashboard")

    monkeypatch.setattr(ssl.SSLContext, "load_default_certs", refused)
    monkeypatch.setattr(ssl.SSLContext, "set_default_verify_paths", refused)

    code, _, err = run(v2cli)

    assert code == 0, err


def test_a_changed_name_is_applied_and_the_other_fields_kept(v2cli: V1Cli) -> None:
    assert run(v2cli, NEZHA_NOTE="rack 4")[0] == 0
    v2cli.fake.servers[0].enable_ddns = True  # set in the dashboard: a full-form PATCH must keep it

    code, out, err = run(v2cli, "--json", NODE_NAME="web-2", NEZHA_NOTE="rack 4")

    assert code == 0, err
    assert json.loads(out)["outcome"] == "updated"
    server = v2cli.fake.servers[0]
    assert (server.name, server.note, server.hide_for_guest, server.enable_ddns) == ("web-2", "rack 4", True, True)
    assert len(v2cli.fake.servers) == 1 and len(v2cli.agent_calls()) == 1


def test_a_bad_token_makes_exactly_one_request_and_installs_nothing(v2cli: V1Cli) -> None:
    code, _, err = run(v2cli, token="nzp_" + "Q" * 32)

    assert code == 3
    assert api_requests(v2cli.fake) == ["GET /api/v1/server"]
    assert "HTTP 401" in err and "WAF" in err
    assert v2cli.fake.failed_credentials == 1
    assert not (v2cli.root / "opt/nezha").exists() and v2cli.fake.servers == []


def test_a_token_without_the_inventory_scope_names_it(v2cli: V1Cli) -> None:
    code, _, err = run(v2cli, token=v2cli.fake.add_token(scopes=("nezha:server:*",)))

    assert code == 3
    assert "lacks scope nezha:inventory:read" in err
    assert api_requests(v2cli.fake) == ["GET /api/v1/server"]
    assert not (v2cli.root / "opt/nezha").exists()


@pytest.mark.parametrize("profile", ["v2.0", "v1.5-1.14"])
def test_dashboard_v1_with_an_access_token_probes_and_never_sends_the_token_to_an_older_dashboard(
    root: Path, profile: str
) -> None:
    fake = FakeV1(profile=profile)
    fake.add_release(AGENT_V1)
    with serve_v1(fake) as running:
        outcome = V1Cli(running, fake, root)("--dashboard", "v1", NEZHA_TOKEN="nzp_" + "Q" * 32)

    assert outcome.exit_code == 2
    assert "access tokens (nzp_...) exist from v2.1.0" in outcome.stderr
    assert [j for j in fake.journal if "authorization" in j.headers] == []
    assert fake.failed_credentials == 0
    assert not (root / "opt/nezha").exists()


def test_dashboard_v1_with_an_access_token_on_v2_1_names_the_server(v2cli: V1Cli) -> None:
    code, _, err = run(v2cli, "--dashboard", "v1")

    assert code == 0, err
    assert [server.name for server in v2cli.fake.servers] == ["web-1"]


def test_a_malformed_access_token_is_a_settings_problem(v2cli: V1Cli) -> None:
    code, _, err = run(v2cli, token="nzp_short")
    assert code == 2
    assert "nzp_ followed by 32 letters and digits" in err
    assert v2cli.fake.journal == []


def test_an_access_token_on_a_v2_0_dashboard_is_refused_before_installing(root: Path) -> None:
    fake = FakeV1(profile="v2.0")
    fake.add_release(AGENT_V1)
    with serve_v1(fake) as running:
        outcome = V1Cli(running, fake, root)(NEZHA_TOKEN="nzp_" + "Q" * 32)
    assert outcome.exit_code == 2
    assert "access tokens (nzp_...) exist from v2.1.0" in outcome.stderr
    assert not (root / "opt/nezha").exists()


def test_a_refused_agent_secret_stops_the_agent_before_any_naming(v2cli: V1Cli) -> None:
    code, _, err = run(v2cli, NEZHA_AGENT_SECRET=new_agent_secret(), NEZHA_ENROLL_TIMEOUT="1")

    assert code == 3
    assert [call.argv[-1] for call in v2cli.agent_calls()] == ["install", "stop"]
    assert "the dashboard refused the agent secret" in err and "code = Unauthenticated" in err
    assert v2cli.fake.servers == [] and v2cli.fake.failed_credentials == 1


def test_a_rerun_restarts_an_agent_whose_server_is_missing(v2cli: V1Cli) -> None:
    assert run(v2cli)[0] == 0
    v2cli.fake.delete_server(1)

    code, _, err = run(v2cli)

    assert code == 0, err
    assert [call.argv[-1] for call in v2cli.agent_calls()] == ["install", "restart"]
    assert "the dashboard does not list this uuid: restarting the agent" in err.splitlines()
    assert [(s.id, s.name, s.hide_for_guest) for s in v2cli.fake.servers] == [(2, "web-1", True)]


def nothing_happened(v2cli: V1Cli) -> bool:
    """No download, no file under /opt, no agent command, no enrollment, no write to the dashboard."""
    downloads = [j.path for j in v2cli.fake.journal if j.path.startswith("/releases/")]
    return (downloads, v2cli.agent_calls(), v2cli.fake.servers, v2cli.fake.connections, v2cli.fake.changes,
            (v2cli.root / "opt/nezha").exists()) == ([], [], [], [], [], False)


def test_a_token_that_may_not_write_is_refused_before_anything_is_downloaded_or_enrolled(v2cli: V1Cli) -> None:
    code, _, err = run(v2cli, token=v2cli.fake.add_token(scopes=(v2cli.fake.read_scope,)))

    assert code == 3, err
    assert "the access token lacks scope nezha:server:write" in err
    assert api_requests(v2cli.fake) == ["GET /api/v1/server", f"PATCH {SCOPE_PROBE}"]
    assert nothing_happened(v2cli)
    assert v2cli.fake.failed_credentials == 0  # a missing scope is not a failed credential for the WAF


def test_a_rerun_with_nothing_to_install_does_not_try_the_write_scope(v2cli: V1Cli) -> None:
    assert run(v2cli)[0] == 0
    v2cli.fake.journal.clear()

    assert run(v2cli)[0] == 0
    assert api_requests(v2cli.fake) == ["GET /api/v1/server"]


@pytest.mark.parametrize(("groups", "create", "code", "text"), [
    ((), False, 3, "no group called 'web'; create it in the dashboard, or pass --create-group"),
    (("web", "web"), False, 3, "2 groups are called 'web'"),
    ((), True, 0, ""),
])
def test_groups_by_name(v2cli: V1Cli, groups: tuple[str, ...], create: bool, code: int, text: str) -> None:
    for name in groups:
        v2cli.fake.add_group(name)

    result, _, err = run(v2cli, *(["--create-group"] if create else []), NEZHA_GROUP="web")

    assert result == code, err
    assert text in err
    if code == 0:
        assert [(g.name, g.servers) for g in v2cli.fake.groups] == [("web", [1])]
    else:
        assert nothing_happened(v2cli)  # found before the install: not left visible under two random words


def test_a_group_id_picks_one_of_two_groups_of_that_name(v2cli: V1Cli) -> None:
    v2cli.fake.add_group("web")
    v2cli.fake.add_group("web")

    assert run(v2cli, NEZHA_GROUP="web", NEZHA_GROUP_ID="2")[0] == 0
    assert [g.servers for g in v2cli.fake.groups] == [[], [1]]


def test_the_token_and_the_agent_secret_never_leak(v2cli: V1Cli) -> None:
    token = v2cli.fake.add_token()
    assert run(v2cli, "--json", token=token)[0] == 0
    assert run(v2cli, "-v", token=token, NODE_NAME="web-2")[0] == 0
    assert run(v2cli, token="nzp_" + "Z" * 32)[0] == 3

    secrets = (token, "nzp_" + "Z" * 32, v2cli.fake.agent_secret)
    allowed = (v2cli.root / "opt/nezha/agent/config.yml",)  # 0600, the agent's own: holds the agent secret
    assert leak_scan(v2cli, secrets, allowed) == []
    assert token not in (v2cli.root / "opt/nezha/agent/config.yml").read_text()
    assert token not in (v2cli.root / "var/lib/nezha-bootstrap/state.json").read_text()
    records = [p for p in v2cli.record_dir.rglob("*") if p.is_file()]
    assert [p for p in records if any(s.encode() in p.read_bytes() for s in secrets)] == []


def test_twenty_nodes_joining_one_group_at_once_all_end_in_it(fake_v2: FakeV1, tmp_path: Path) -> None:
    fake_v2.group_race = True
    fake_v2.add_group("fleet")
    token = fake_v2.add_token()
    with serve_v1(fake_v2) as running:
        nodes = [node_process(running.url, fake_v2, token, tmp_path / f"node{i}", i) for i in range(20)]
        results = [(node.wait(timeout=120), node) for node in nodes]

    failed = [node.stderr.read() for code, node in results if code != 0]  # type: ignore[union-attr]
    assert failed == []
    assert len(fake_v2.servers) == 20
    assert sorted(s.name for s in fake_v2.servers) == sorted(f"node-{i:02d}" for i in range(20))
    assert fake_v2.groups[0].servers == sorted(s.id for s in fake_v2.servers)
    assert sum(1 for j in fake_v2.journal if j.method == "PATCH" and "group" in j.path) > 20  # members were dropped


def node_process(url: str, fake: FakeV1, token: str, root: Path, index: int) -> subprocess.Popen[str]:
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text(f"{index:032x}\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NEZHA_", "NZ_"))},
        "NEZHA_DASHBOARD_URL": url, "NEZHA_AGENT_SECRET": fake.agent_secret, "NEZHA_TOKEN": token,
        "NEZHA_AGENT_BASE_URL": f"{url}/releases", "NEZHA_BOOTSTRAP_ROOT": str(root), "NEZHA_BOOTSTRAP_REHEARSAL": "1",
        "NEZHA_BOOTSTRAP_DEADLINE": "60", "NODE_NAME": f"node-{index:02d}", "NEZHA_GROUP": "fleet",
        "NEZHA_STUB_RECORD": str(root.parent / f"record{index}"), "NO_PROXY": "127.0.0.1",
    }
    return subprocess.Popen([sys.executable, "-m", "nezha_bootstrap", "run", "-q"], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_restarted_agent_whose_server_never_shows_is_stopped(v2cli: V1Cli) -> None:
    secret = v2cli.fake.agent_secret
    assert run(v2cli)[0] == 0
    v2cli.fake.delete_server(1)
    v2cli.fake.agent_secrets = {new_agent_secret(): 1}  # the secret was reset in the dashboard meanwhile

    code, _, err = run(v2cli, NEZHA_AGENT_SECRET=secret, NEZHA_ENROLL_TIMEOUT="1")

    assert code == 3  # the dashboard's refusal
    assert [call.argv[-1] for call in v2cli.agent_calls()] == ["install", "restart", "stop"]
    assert f"the dashboard did not list uuid {UUID} within 1 s; the agent was stopped" in err


def test_a_stop_that_fails_after_a_refused_secret_is_warned_and_the_refusal_stands(v2cli: V1Cli) -> None:
    code, _, err = run(v2cli, NEZHA_AGENT_SECRET=new_agent_secret(), NEZHA_ENROLL_TIMEOUT="1",
                       NEZHA_STUB_MODE="fail-stop")

    assert code == 3, err  # the dashboard's refusal, not the stop's failure
    assert [call.argv[-1] for call in v2cli.agent_calls()] == ["install", "stop"]
    assert "`nezha-agent service ... stop` exited with status 1; going on" in err
    assert "the dashboard refused the agent secret" in err
    assert v2cli.fake.servers == []


def test_a_rerun_with_a_cached_generation_over_plain_http_never_loads_the_trust_store(
        v2cli: V1Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    token = v2cli.fake.add_token()
    assert run(v2cli, token=token)[0] == 0  # probes the generation; the rerun reads it from the state

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("the trust store was loaded for a plain http dashboard")

    monkeypatch.setattr(ssl.SSLContext, "load_default_certs", refused)
    monkeypatch.setattr(ssl.SSLContext, "set_default_verify_paths", refused)
    code, out, err = run(v2cli, "--json", token=token)

    assert code == 0, err
    assert json.loads(out)["outcome"] == "nothing_to_do"


def test_a_private_ca_dashboard_in_token_mode_is_trusted_with_ca_bundle_and_refused_without(
        root: Path, ca: trustme.CA, tmp_path: Path) -> None:
    ca_file = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    fake = FakeV1(profile="v2.1+")
    fake.add_release(AGENT_V1)
    token = fake.add_token()
    with serve(fake, ssl_context=tls_server_context(ca)) as running:
        v2cli = V1Cli(running, fake, root)
        first = run(v2cli, "--ca-bundle", str(ca_file), token=token)
        seen = len(fake.journal)
        # The generation is cached now: the rerun's first request is the token's, on a client made for it.
        again = run(v2cli, "--json", "--ca-bundle", str(ca_file), token=token)
        read = len(fake.journal)
        untrusted = run(v2cli, token=token)

    assert running.url.startswith("https://")
    assert first[0] == 0, first[2]
    assert f"the agent connects to 127.0.0.1:{running.port} with TLS" in first[2]  # config.yml's tls: true
    assert [s.uuid for s in fake.servers] == [UUID] and fake.servers[0].name == "web-1"
    assert again[0] == 0, again[2]
    assert json.loads(again[1])["outcome"] == "nothing_to_do"
    assert [f"{j.method} {j.path}" for j in fake.journal[seen:read]] == ["GET /api/v1/server"]
    assert untrusted[0] == 3, untrusted[2]  # TLS verification refused: verification is never off
    assert "TLS verification" in untrusted[2] and "--ca-bundle" in untrusted[2]
    assert len(fake.journal) == read  # refused in the handshake: the token was never sent


def test_a_reinstall_whose_row_is_listed_is_not_online_on_the_old_agents_last_report(v2cli: V1Cli) -> None:
    token = v2cli.fake.add_token()
    assert run(v2cli, token=token)[0] == 0
    secret = v2cli.fake.agent_secret
    [server] = v2cli.fake.servers
    server.connected = False  # the old agent's last report stays the row's last_active
    v2cli.fake.agent_secrets = {new_agent_secret(): 1}  # the secret was reset: the restarted agent is refused

    code, _, err = run(v2cli, "--force", token=token, NEZHA_AGENT_SECRET=secret, NEZHA_ENROLL_TIMEOUT="1")

    assert code == 3, err  # the refusal: that report was older than this run's agent
    assert "the dashboard refused the agent secret" in err
    assert [call.argv[-1] for call in v2cli.agent_calls()] == ["install", "restart", "stop"]


def test_a_token_refused_during_the_online_wait_is_warned_about_once_and_the_wait_goes_on(
        v2cli: V1Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    token = v2cli.fake.add_token()
    answer = v2cli.fake.handle

    def revoked_once_the_agent_connects(method: str, target: str, *args: Any) -> Any:
        if v2cli.fake.connections:  # the token is revoked in the dashboard while the agent starts
            v2cli.fake.tokens.pop(token, None)
        return answer(method, target, *args)

    monkeypatch.setattr(v2cli.fake, "handle", revoked_once_the_agent_connects)
    code, _, err = run(v2cli, token=token, NEZHA_ONLINE_TIMEOUT="1")

    assert err.count("cannot read the server list to see the node online: ") == 1, err  # then not read again
    assert code == 4, err  # the other sources were looked at until the online timeout
    assert "the dashboard did not see the node online within 1 s" in err
    assert [s.uuid for s in v2cli.fake.servers] == [UUID] and v2cli.state()["installed_at"] is None


def test_a_reinstall_without_the_token_keeps_the_server_id_a_token_run_saved(v2cli: V1Cli) -> None:
    assert run(v2cli)[0] == 0
    server_id = v2cli.state()["server_id"]
    assert server_id == v2cli.fake.servers[0].id

    outcome = v2cli("--force")  # no access token: nothing reads the dashboard's list this time

    assert outcome.exit_code == 0, outcome.stderr
    assert [call.argv[-1] for call in v2cli.agent_calls()] == ["install", "restart"]
    assert v2cli.state()["server_id"] == server_id  # the same uuid keeps its row, and so its id


def test_a_token_check_answered_503_once_is_retried_and_says_so(v2cli: V1Cli) -> None:
    token = v2cli.fake.add_token()
    assert run(v2cli, token=token)[0] == 0  # the rerun's first request is the token's check (no probe)
    v2cli.fake.faults.fail_next = [503]

    code, _, err = run(v2cli, token=token)

    assert code == 0, err
    assert "; retrying in " in err and "HTTP 503" in err


def test_a_token_check_that_keeps_failing_ends_at_the_deadline_exit_4(v2cli: V1Cli) -> None:
    token = v2cli.fake.add_token()
    assert run(v2cli, token=token)[0] == 0
    v2cli.fake.faults.fail_next = [503] * 1000

    code, _, err = run(v2cli, token=token, NEZHA_BOOTSTRAP_DEADLINE="1")

    assert code == 4, err
    assert "within the 1 s deadline" in err


def test_a_run_closes_the_dashboard_client_it_made(v2cli: V1Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from nezha_bootstrap import http

    token = v2cli.fake.add_token()
    assert run(v2cli, token=token)[0] == 0  # the rerun has no probe: the flow makes the token's client itself
    made: list[Any] = []
    make_client = http.make_client

    def recorded(*args: Any, **kwargs: Any) -> Any:
        made.append(make_client(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(http, "make_client", recorded)
    code, _, err = run(v2cli, token=token)

    assert code == 0, err
    assert len(made) == 1 and made[0].is_closed



def test_the_token_s_requests_go_through_the_client_the_run_was_given(v2cli: V1Cli) -> None:
    """run.py's probe client (its connection to the dashboard) is the one the token mode uses, and stays open."""
    import httpx

    from nezha_bootstrap.config import AgentSettings, Settings, build, v1_config
    from nezha_bootstrap.facts import Facts
    from nezha_bootstrap.generation import Generation
    from nezha_bootstrap.node import ThisNode
    from nezha_bootstrap.paths import Paths
    from nezha_bootstrap.report import Reporter
    from nezha_bootstrap.v1 import flow

    settings = Settings(dashboard_url=v2cli.running.url, token=v2cli.fake.add_token(), name="web-1",
                        agent=AgentSettings(secret=v2cli.fake.agent_secret,
                                            base_url=f"{v2cli.running.url}/releases"))
    facts = Facts(hostname="web-1", primary_ipv4="192.0.2.10", machine_id=MACHINE_ID, systemd_running=False,
                  environ={"PATH": os.environ["PATH"], "NEZHA_STUB_RECORD": str(v2cli.record_dir)})
    this = ThisNode(v1_config(build(settings, facts).config), facts, Paths(v2cli.root), Reporter(verbosity=-1))
    sent: list[str] = []

    with httpx.Client(event_hooks={"request": [lambda request: sent.append(request.url.path)]}) as given:
        result = flow.run(this, Generation.V2_1, client=given, token_mode=True)

        assert (result.outcome, result.details["name"]) == ("installed", "web-1")
        assert sent[:2] == ["/api/v1/server", SCOPE_PROBE] and not given.is_closed
