"""`nezha-bootstrap run` against fake v1/v2 dashboards: one server per machine, forever."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from nezha_bootstrap import identity
from nezha_bootstrap.agent import AGENT_V1, Release
from nezha_bootstrap.config import AgentSettings, Settings, build, v1_config
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.identity import machine_uuid
from nezha_bootstrap.node import ThisNode
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter
from nezha_bootstrap.system import CHILD_MARKER
from nezha_bootstrap.v1.flow import NAMING_NOTE, Plan, dry_run, plan_enrollment
from tests.conftest import MACHINE_ID, Cli, V1Cli

pytestmark = pytest.mark.integration

OTHER_MACHINE_ID = "fedcba9876543210fedcba9876543210"
UUID = machine_uuid(MACHINE_ID)


def config_yml(root: Path) -> str:
    return (root / "opt/nezha/agent/config.yml").read_text()


def test_fresh_enrollment_makes_one_server_with_the_machine_uuid(v1cli: V1Cli) -> None:
    outcome = v1cli("--json")

    assert outcome.exit_code == 0, outcome.stderr
    [server] = v1cli.fake.servers
    assert server.uuid == UUID
    summary = json.loads(outcome.stdout)
    assert (summary["outcome"], summary["generation"], summary["uuid"]) == ("installed", "v2.1+", UUID)
    assert (summary["method"], summary["reason"]) == ("direct", "not enrolled from this machine yet")
    assert "naming" in summary
    port = v1cli.running.port
    assert config_yml(v1cli.root) == (
        f'server: "127.0.0.1:{port}"\nclient_secret: "{v1cli.fake.agent_secret}"\nuuid: "{UUID}"\ntls: false\n'
        "disable_command_execute: true\ndisable_force_update: true\ndisable_auto_update: true\ndebug: true\n"
    )
    assert stat.S_IMODE((v1cli.root / "opt/nezha/agent/config.yml").stat().st_mode) == 0o600
    [call] = v1cli.agent_calls()
    assert call.argv == ["service", "-c", str(v1cli.root / "opt/nezha/agent/config.yml"), "install"]
    assert (call.stdin, call.cwd.strip()) == ("/dev/null", str(v1cli.root / "opt/nezha/agent"))
    assert not any(key.startswith("NZ_") for key in call.env) and "NEZHA_AGENT_SECRET" not in call.env
    assert call.env.get(CHILD_MARKER)  # recorded: a later run stops it if this one is killed while it runs
    unit = (v1cli.root / "etc/systemd/system/nezha-agent.service").read_text()
    assert 'ExecStart=/opt/nezha/agent/nezha-agent "-c" "/opt/nezha/agent/config.yml"' in unit
    state = v1cli.state()
    assert (state["generation"], state["uuid"], state["machine_id"], state["secret"]) == (
        "v2.1+", UUID, MACHINE_ID, "")


def test_a_host_without_systemd_enrolls_with_the_init_script_the_agent_writes(v1cli: V1Cli) -> None:
    # The real agent v2.3.3 writes /etc/init.d/nezha-agent (SysV) where systemd does not run (observed).
    first = v1cli("--json", NEZHA_STUB_INIT="sysv")
    again = v1cli("--json", NEZHA_STUB_INIT="sysv")

    assert first.exit_code == 0, first.stderr
    assert json.loads(first.stdout)["outcome"] == "installed"
    assert f"verifying {v1cli.root}/etc/init.d/nezha-agent ..." in first.stderr.splitlines()  # the unit it wrote
    assert 'cmd="/opt/nezha/agent/nezha-agent "-c" "/opt/nezha/agent/config.yml""' in (
        v1cli.root / "etc/init.d/nezha-agent").read_text()
    assert not (v1cli.root / "etc/systemd/system/nezha-agent.service").exists()
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["outcome"] == "nothing_to_do"
    assert [s.uuid for s in v1cli.fake.servers] == [UUID]
    assert len(v1cli.agent_calls()) == 1


def test_without_an_access_token_the_run_says_how_to_name_the_server(v1cli: V1Cli) -> None:
    outcome = v1cli()

    assert outcome.exit_code == 0, outcome.stderr
    assert NAMING_NOTE in outcome.stderr
    assert "two random words" in NAMING_NOTE and "NEZHA_TOKEN" in NAMING_NOTE


def test_a_rerun_changes_nothing_and_sends_nothing(v1cli: V1Cli) -> None:
    assert v1cli().exit_code == 0
    seen = len(v1cli.fake.journal)

    outcome = v1cli()

    assert outcome.exit_code == 0, outcome.stderr
    assert "nothing to do" in outcome.stderr
    assert len(v1cli.fake.journal) == seen
    assert len(v1cli.fake.servers) == 1 and len(v1cli.agent_calls()) == 1


def test_deleting_opt_nezha_and_rerunning_brings_back_the_same_server(v1cli: V1Cli) -> None:
    assert v1cli().exit_code == 0
    shutil.rmtree(v1cli.root / "opt/nezha")

    outcome = v1cli()

    assert outcome.exit_code == 0, outcome.stderr
    assert [s.uuid for s in v1cli.fake.servers] == [UUID]
    assert [c.outcome for c in v1cli.fake.connections] == ["created", "known"]
    assert v1cli.agent_calls()[-1].argv[-1] == "restart"  # the unit survived: `install` would fail


def test_a_server_deleted_in_the_dashboard_comes_back_with_the_same_uuid(v1cli: V1Cli) -> None:
    assert v1cli().exit_code == 0
    [first] = v1cli.fake.servers
    v1cli.fake.delete_server(first.id)
    shutil.rmtree(v1cli.root / "opt/nezha")

    assert v1cli().exit_code == 0

    [again] = v1cli.fake.servers
    assert again.uuid == UUID and again.id != first.id


def test_a_new_machine_id_makes_a_second_server(v1cli: V1Cli) -> None:
    assert v1cli().exit_code == 0
    (v1cli.root / "etc/machine-id").write_text(OTHER_MACHINE_ID + "\n")

    outcome = v1cli()

    assert outcome.exit_code == 0, outcome.stderr
    assert [s.uuid for s in v1cli.fake.servers] == [UUID, machine_uuid(OTHER_MACHINE_ID)]
    assert v1cli.state()["machine_id"] == OTHER_MACHINE_ID


def test_nz_uuid_in_the_environment_is_ignored(v1cli: V1Cli) -> None:
    outcome = v1cli(NZ_UUID="11111111-2222-3333-4444-555555555555", NZ_CLIENT_SECRET="x" * 32)

    assert outcome.exit_code == 0, outcome.stderr
    assert [s.uuid for s in v1cli.fake.servers] == [UUID]
    assert "NZ_CLIENT_SECRET, NZ_UUID set in this environment: ignored" in outcome.stderr


def test_uuid_override_enrolls_under_that_uuid(v1cli: V1Cli) -> None:
    chosen = "11111111-2222-3333-4444-555555555555"
    assert v1cli("--uuid", chosen).exit_code == 0
    assert [s.uuid for s in v1cli.fake.servers] == [chosen]


@pytest.mark.parametrize("machine_id", ["", "uninitialized\n", "not-a-machine-id\n"])
def test_an_unusable_machine_id_is_refused_before_anything_is_installed(v1cli: V1Cli, machine_id: str) -> None:
    (v1cli.root / "etc/machine-id").write_text(machine_id)

    outcome = v1cli()

    assert outcome.exit_code == 2
    assert "systemd-machine-id-setup" in outcome.stderr
    assert v1cli.fake.servers == [] and not (v1cli.root / "opt/nezha").exists()


def test_a_checksum_mismatch_is_refused(v1cli: V1Cli) -> None:
    path = f"/releases/v{AGENT_V1}/nezha-agent_linux_amd64.zip"
    v1cli.fake.files[path] = v1cli.fake.files[path] + b"tampered"

    outcome = v1cli()

    assert outcome.exit_code == 5
    assert "checksums.txt says" in outcome.stderr
    assert not (v1cli.root / "opt/nezha/agent/nezha-agent").exists()
    assert v1cli.fake.servers == []


def test_a_pinned_hash_that_differs_is_refused(v1cli: V1Cli) -> None:
    outcome = v1cli("--agent-sha256", "0" * 64)

    assert outcome.exit_code == 5
    assert "--agent-sha256 pins" in outcome.stderr


def test_a_missing_asset_is_refused(v1cli: V1Cli) -> None:
    outcome = v1cli("--agent-version", "9.9.9")

    assert outcome.exit_code == 5
    assert "HTTP 404" in outcome.stderr and "v9.9.9" in outcome.stderr
    assert v1cli.fake.servers == []


def test_vendor_leftovers_are_reported_without_adopt(v1cli: V1Cli) -> None:
    leftover_uuid = plant_vendor_leftover(v1cli)

    outcome = v1cli()

    assert outcome.exit_code == 0, outcome.stderr
    [unit] = (v1cli.root / "etc/systemd/system").glob("nezha-agent-*.service")
    assert (f"the vendor script left a second agent: config-ab12cd.yml (uuid {leftover_uuid}, {unit.name}), a "
            "duplicate server; run with --adopt to uninstall it") in outcome.stderr
    assert (v1cli.root / "opt/nezha/agent/config-ab12cd.yml").exists()


def test_adopt_uninstalls_vendor_leftovers_and_reports_their_uuids(v1cli: V1Cli) -> None:
    leftover_uuid = plant_vendor_leftover(v1cli)

    outcome = v1cli("--adopt", "--json")

    assert outcome.exit_code == 0, outcome.stderr
    assert json.loads(outcome.stdout)["adopted_uuids"] == [leftover_uuid]
    assert not (v1cli.root / "opt/nezha/agent/config-ab12cd.yml").exists()
    assert list((v1cli.root / "etc/systemd/system").glob("nezha-agent-*.service")) == []
    assert [c.argv[-1] for c in v1cli.agent_calls()][-2:] == ["uninstall", "install"]


def test_adopt_keeps_a_leftover_whose_agent_cannot_be_uninstalled_and_says_so(v1cli: V1Cli) -> None:
    leftover_uuid = plant_vendor_leftover(v1cli)
    [unit] = (v1cli.root / "etc/systemd/system").glob("nezha-agent-*.service")

    outcome = v1cli("--adopt", "--json", NEZHA_STUB_MODE="fail-uninstall")

    assert outcome.exit_code == 0, outcome.stderr  # this node's own agent is installed all the same
    assert "`nezha-agent service ... uninstall` exited with status 1; going on" in outcome.stderr
    assert (f"could not uninstall the vendor script's second agent config-ab12cd.yml ({unit.name} is still "
            f"there): kept, a duplicate server (uuid {leftover_uuid}); see the output with -v") in outcome.stderr
    assert "its agent is uninstalled" not in outcome.stderr
    assert "adopted_uuids" not in json.loads(outcome.stdout)  # none adopted
    assert (v1cli.root / "opt/nezha/agent/config-ab12cd.yml").exists() and unit.exists()  # its agent still runs
    assert [c.argv[-1] for c in v1cli.agent_calls()] == ["uninstall", "install"]
    assert [s.uuid for s in v1cli.fake.servers] == [UUID]


def test_adopt_goes_on_past_a_leftover_it_must_keep_and_names_one_without_a_uuid(v1cli: V1Cli) -> None:
    kept_uuid = plant_vendor_leftover(v1cli)  # config-ab12cd.yml and its unit: its uninstall fails below
    (v1cli.root / "opt/nezha/agent/config-zz.yml").write_text('server: "x:1"\nclient_secret: "s"\n')  # no unit

    outcome = v1cli("--adopt", "--json", NEZHA_STUB_MODE="fail-uninstall")

    assert outcome.exit_code == 0, outcome.stderr
    assert f"kept, a duplicate server (uuid {kept_uuid})" in outcome.stderr
    assert json.loads(outcome.stdout)["adopted_uuids"] == ["(no uuid)"]
    assert (v1cli.root / "opt/nezha/agent/config-ab12cd.yml").exists()
    assert not (v1cli.root / "opt/nezha/agent/config-zz.yml").exists()


def plant_vendor_leftover(v1cli: V1Cli) -> str:
    """What a rerun of the vendor script leaves: a second config and its hashed unit."""
    import hashlib

    leftover_uuid = "deadbeef-0000-4000-8000-000000000001"
    agent_dir = v1cli.root / "opt/nezha/agent"
    agent_dir.mkdir(parents=True)
    (agent_dir / "config-ab12cd.yml").write_text(f'server: "x:1"\nclient_secret: "s"\nuuid: {leftover_uuid}\n')
    name = hashlib.md5(b"/opt/nezha/agent/config-ab12cd.yml").hexdigest()[:7]
    units = v1cli.root / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / f"nezha-agent-{name}.service").write_text(
        '[Service]\nExecStart=/opt/nezha/agent/nezha-agent "-c" "/opt/nezha/agent/config-ab12cd.yml"\n')
    return leftover_uuid


def test_the_agent_secret_never_leaks(v1cli: V1Cli) -> None:
    assert v1cli("--json").exit_code == 0
    assert v1cli("-v").exit_code == 0
    secret = v1cli.fake.agent_secret
    found = [f"run {i}" for i, o in enumerate(v1cli.outputs) if secret in o.stdout + o.stderr]
    allowed = {v1cli.root / "opt/nezha/agent/config.yml"}
    found += [str(p) for p in v1cli.root.rglob("*")
              if p.is_file() and p not in allowed and secret.encode() in p.read_bytes()]
    found += [str(p) for p in v1cli.record_dir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert found == []


def test_dashboard_v1_skips_the_probes(v1cli: V1Cli) -> None:
    outcome = v1cli("--dashboard", "v1", "--json")

    assert outcome.exit_code == 0, outcome.stderr
    assert json.loads(outcome.stdout)["generation"] == "v1+"
    assert not any(j.path.startswith("/api/") for j in v1cli.fake.journal)


@pytest.mark.parametrize("address", ["203.0.113.7", "probe.example.test"])
def test_no_tls_to_a_public_address_needs_allow_plaintext(v1cli: V1Cli, address: str) -> None:
    outcome = v1cli("--no-tls", NEZHA_PROBE_ADDRESS=address)

    assert outcome.exit_code == 2
    assert "--allow-plaintext" in outcome.stderr
    assert v1cli.fake.servers == [] and not (v1cli.root / "opt/nezha").exists()


def test_a_v1_dashboard_without_an_agent_secret_says_what_to_set(v1cli: V1Cli) -> None:
    outcome = v1cli("--dashboard", "v1", NEZHA_AGENT_SECRET=None)

    assert outcome.exit_code == 2
    assert "NEZHA_AGENT_SECRET_FILE" in outcome.stderr


def test_the_agent_secret_file_is_read(v1cli: V1Cli, tmp_path: Path) -> None:
    secret_file = tmp_path / "agent-secret"
    secret_file.write_text(v1cli.fake.agent_secret + "\n")

    outcome = v1cli(NEZHA_AGENT_SECRET=None, NEZHA_AGENT_SECRET_FILE=str(secret_file))

    assert outcome.exit_code == 0, outcome.stderr
    assert len(v1cli.fake.servers) == 1


def test_an_agent_secret_flag_warns_about_the_process_list(v1cli: V1Cli) -> None:
    outcome = v1cli("--agent-secret", v1cli.fake.agent_secret, NEZHA_AGENT_SECRET=None)

    assert outcome.exit_code == 0, outcome.stderr
    assert "--agent-secret puts the secret in the process list" in outcome.stderr
    assert v1cli.fake.agent_secret not in outcome.stderr


def test_a_v0_dashboard_found_by_auto_goes_on_with_the_script_flow(cli: Cli) -> None:
    outcome = cli("run", NEZHA_AGENT_SECRET="A" * 32)

    assert outcome.exit_code == 0, outcome.stderr
    assert "dashboard generation: v0" in outcome.stderr
    assert len(cli.fake.servers) == 1 and len(cli.calls()) == 1
    # the probe (no credential), then the register call
    assert [r.headers.get("authorization") is None for r in cli.fake.registrations()] == [True, False]
    seen = len(cli.fake.journal)
    assert cli("run", NEZHA_AGENT_SECRET="A" * 32).exit_code == 0
    assert len(cli.fake.journal) == seen  # the generation is cached: no probe on a rerun


def test_a_v0_dashboard_with_only_an_agent_secret_asks_for_the_token(cli: Cli) -> None:
    outcome = cli("run", NEZHA_TOKEN=None, NEZHA_AGENT_SECRET="A" * 32)

    assert outcome.exit_code == 2
    assert "the dashboard is v0" in outcome.stderr and "NEZHA_TOKEN" in outcome.stderr
    assert cli.fake.servers == []


def test_status_shows_the_v1_layout_and_never_the_secret(v1cli: V1Cli) -> None:
    assert v1cli().exit_code == 0
    result = v1cli.invoke(["status", "--json"])

    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    expected = {"generation": "v2.1+", "uuid": UUID, "method": "direct", "agent_version": AGENT_V1,
                "agent_config": str(v1cli.root / "opt/nezha/agent/config.yml"), "agent_config_uuid": UUID}
    assert {key: report.get(key) for key in expected} == expected
    assert v1cli.fake.agent_secret not in result.stdout


# --- --dry-run: the whole plan, nothing sent, nothing written --------------------------------------

def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"" for p in sorted(root.rglob("*"))}


def test_dry_run_before_detection_prints_the_probes_and_the_v1_plan_and_sends_nothing(v1cli: V1Cli) -> None:
    before = tree(v1cli.root)

    outcome = v1cli("--dry-run")

    assert outcome.exit_code == 0, outcome.stderr
    url, agent_dir = v1cli.running.url, v1cli.root / "opt/nezha/agent"
    port = v1cli.running.port
    assert outcome.stdout.splitlines() == [
        f"detect the generation of {url}, without credentials:",
        f"  GET {url}/api/v1/setting",
        f"  POST {url}/api/v1/server/register {{}}",
        f"  GET {url}/api/v1/api-tokens",
        "if it is v0: register with the API token and install the v0 agent "
        "(`--dashboard v0 --dry-run` shows that plan)",
        "if it is v1 or newer:",
        "  plan: install the agent (not enrolled from this machine yet)",
        f"  uuid {UUID} (from machine-id)",
        f"  download {url}/releases/v{AGENT_V1}/checksums.txt (at most 65536 bytes)",
        f"  download {url}/releases/v{AGENT_V1}/nezha-agent_linux_amd64.zip "
        "(at most 67108864 bytes, redirects followed)",
        "  check its SHA-256 against checksums.txt; extract nezha-agent (0755)",
        f"  write {agent_dir}/nezha-agent (0755)",
        f"  write {agent_dir}/config.yml (0600):",
        f'    server: "127.0.0.1:{port}"',
        '    client_secret: "<agent secret>"',
        f'    uuid: "{UUID}"',
        "    tls: false",
        "    disable_command_execute: true",
        "    disable_force_update: true",
        "    disable_auto_update: true",
        "    debug: true",
        f"  run: {agent_dir}/nezha-agent service -c {agent_dir}/config.yml install",
        f"    cwd {agent_dir}, stdin /dev/null, environment without NZ_*, NEZHA_TOKEN and NEZHA_AGENT_SECRET",
        f"  verify {v1cli.root}/etc/systemd/system/nezha-agent.service or {v1cli.root}/etc/init.d/nezha-agent: "
        "it runs the agent with -c /opt/nezha/agent/config.yml; config.yml as written",
        f"  write {v1cli.root}/var/lib/nezha-bootstrap/state.json (0600): generation, uuid, machine-id (no secret)",
    ]
    assert (v1cli.fake.journal, tree(v1cli.root)) == ([], before)
    assert v1cli.fake.agent_secret not in outcome.stdout + outcome.stderr


@pytest.mark.parametrize("dashboard", ["auto", "v1", "v2"])
def test_dry_run_with_an_access_token_shows_the_naming_steps_whatever_dashboard_says(
    v1cli: V1Cli, dashboard: str
) -> None:
    token = v1cli.fake.add_token()

    outcome = v1cli("--dry-run", "--dashboard", dashboard, NEZHA_TOKEN=token, NEZHA_GROUP="web")

    assert outcome.exit_code == 0, outcome.stderr
    [line] = [line for line in outcome.stdout.splitlines() if "with the access token" in line]
    assert "set name, notes, guest visibility and display index" in line and "join the group" in line
    assert v1cli.fake.journal == [] and token not in outcome.stdout + outcome.stderr


def test_dry_run_json_of_a_named_generation_carries_the_masked_config(v1cli: V1Cli) -> None:
    plant_vendor_leftover(v1cli)

    outcome = v1cli("--dry-run", "--json", "--dashboard", "v1", "--adopt")

    assert outcome.exit_code == 0, outcome.stderr
    plan = json.loads(outcome.stdout)
    assert {k: plan[k] for k in ("outcome", "generation", "action", "uuid")} == {
        "outcome": "dry_run", "generation": "v1+", "action": "install", "uuid": UUID}
    assert 'client_secret: "<agent secret>"\n' in plan["config_yml"]
    assert plan["plan"][-1] == ("uninstall the vendor script's second agent config-ab12cd.yml "
                                "(uuid deadbeef-0000-4000-8000-000000000001): a duplicate server, to delete in the "
                                "dashboard")
    assert v1cli.fake.journal == []
    assert v1cli.fake.agent_secret not in outcome.stdout + outcome.stderr


def test_dry_run_after_enrolling_uses_the_cached_generation_and_says_nothing_to_do(v1cli: V1Cli) -> None:
    assert v1cli().exit_code == 0
    seen = len(v1cli.fake.journal)

    outcome = v1cli("--dry-run")

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.splitlines() == [
        "generation: v2.1+", "plan: nothing to do (enrolled and installed)", f"uuid {UUID} (from state)"]
    assert len(v1cli.fake.journal) == seen


def test_dry_run_refuses_an_unusable_machine_id_as_run_does(v1cli: V1Cli) -> None:
    (v1cli.root / "etc/machine-id").write_text("uninitialized\n")

    outcome = v1cli("--dry-run", "--dashboard", "v1")

    assert outcome.exit_code == 2
    assert "systemd-machine-id-setup" in outcome.stderr


def test_the_release_download_follows_a_redirect_to_storage(v1cli: V1Cli) -> None:
    """GitHub answers a release asset with a redirect to its storage host."""
    zip_path = f"/releases/v{AGENT_V1}/nezha-agent_linux_amd64.zip"
    v1cli.fake.files["/storage/agent.zip"] = v1cli.fake.files[zip_path]
    redirect = (302, "text/plain", b"", {"Location": f"{v1cli.running.url}/storage/agent.zip"})
    v1cli.fake.faults.fail_next = [None, redirect]  # checksums.txt as is, then the zip redirected

    outcome = v1cli("--dashboard", "v1")

    assert outcome.exit_code == 0, outcome.stderr
    assert [j.path for j in v1cli.fake.journal][:3] == [
        f"/releases/v{AGENT_V1}/checksums.txt", zip_path, "/storage/agent.zip"]
    assert [s.uuid for s in v1cli.fake.servers] == [UUID]


def test_an_http_dashboard_url_with_a_public_probe_address_says_why_tls_is_off(v1cli: V1Cli) -> None:
    outcome = v1cli(NEZHA_PROBE_ADDRESS="203.0.113.7")

    assert outcome.exit_code == 2
    assert ("the agent would connect to 203.0.113.7 without TLS (the dashboard URL is http and no --tls was "
            "given), sending the agent secret in clear text") in outcome.stderr
    assert v1cli.fake.journal[3:] == [] and v1cli.fake.servers == []  # the probes, nothing more


# --- the plan's lines for each kind of unit, and the vendor script's leftovers ------------------------

def a_plan(action: str) -> Plan:
    release = Release("https://rel.test", AGENT_V1, "nezha-agent_linux_amd64.zip")
    return Plan(True, "--force", UUID, "machine-id", 'uuid: "x"\n', release, action, 'uuid: "x"\n')


@pytest.mark.parametrize(("action", "runs"), [("install", "install"), ("restart", "restart"), ("replace", "install")])
def test_the_plan_says_which_service_command_runs_and_uninstalls_a_v0_agent_first(tmp_path: Path, action: str,
                                                                                  runs: str) -> None:
    paths = Paths(tmp_path)
    binary, config = paths.agent_dir / "nezha-agent", paths.agent_dir / "config.yml"

    lines = a_plan(action).describe(paths, systemd=True)

    uninstall = [line for line in lines if line.startswith("uninstall the v0 agent")]
    assert uninstall == ([f"uninstall the v0 agent: {binary} service uninstall"] if action == "replace" else [])
    assert f"run: {binary} service -c {config} {runs}" in lines
    assert (f"verify {paths.agent_unit}: ExecStart runs the agent with -c /opt/nezha/agent/config.yml; "
            "config.yml as written; systemctl is-active nezha-agent") in lines


def test_a_rerun_keeps_the_vendor_scripts_second_agent_and_says_so_in_full(v1cli: V1Cli) -> None:
    assert v1cli().exit_code == 0
    leftover_uuid = "deadbeef-0000-4000-8000-000000000002"
    (v1cli.root / "opt/nezha/agent/config-ef34ab.yml").write_text(f'server: "x:1"\nuuid: {leftover_uuid}\n')

    plan = json.loads(v1cli("--dry-run", "--json", "--adopt").stdout)  # --adopt acts only with an install
    outcome = v1cli("--adopt")

    assert plan["plan"][-1] == (f"keep (no --adopt) the vendor script's second agent config-ef34ab.yml "
                                f"(uuid {leftover_uuid}): a duplicate server, to delete in the dashboard")
    assert outcome.exit_code == 0, outcome.stderr
    assert (f"the vendor script left a second agent: config-ef34ab.yml (uuid {leftover_uuid}, no unit), a duplicate "
            "server; run with --adopt to uninstall it") in outcome.stderr
    assert (v1cli.root / "opt/nezha/agent/config-ef34ab.yml").exists()


def test_a_dry_run_json_says_what_it_would_do_and_why(v1cli: V1Cli) -> None:
    before = json.loads(v1cli("--dry-run", "--json").stdout)
    assert v1cli().exit_code == 0
    dry = v1cli("--dry-run", "--json", NZ_UUID="11111111-2222-3333-4444-555555555555")
    after = json.loads(dry.stdout)

    url = v1cli.running.url
    assert {k: before[k] for k in ("generation", "dashboard", "method", "action", "reason")} == {
        "generation": "auto", "dashboard": url, "method": "direct", "action": "install",
        "reason": "not enrolled from this machine yet"}
    assert {k: after[k] for k in ("generation", "dashboard", "method", "action", "reason")} == {
        "generation": "v2.1+", "dashboard": url, "method": "direct", "action": "nothing",
        "reason": "enrolled and installed"}
    assert after["plan"][:2] == ["generation: v2.1+", "plan: nothing to do (enrolled and installed)"]
    assert "NZ_UUID set in this environment: ignored (the agent's commands run without NZ_*)" in dry.stderr


def test_an_install_never_seen_online_is_saved_unfinished_and_the_next_run_installs_again(v1cli: V1Cli) -> None:
    outcome = v1cli("--json", NEZHA_AGENT_SECRET="wrongsecret1234567890")  # the dashboard refuses it

    assert outcome.exit_code == 3, outcome.stderr
    result = json.loads(outcome.stdout)
    assert (result["online"], result["online_after_s"], result["uuid"]) == (False, None, UUID)
    state = v1cli.state()
    assert {k: state[k] for k in ("uuid", "generation", "agent_version", "online", "installed_at", "online_at")} == {
        "uuid": UUID, "generation": "v2.1+", "agent_version": AGENT_V1, "online": False, "installed_at": None,
        "online_at": None}

    rerun = v1cli(NEZHA_AGENT_SECRET="wrongsecret1234567890")
    assert rerun.exit_code == 3, rerun.stderr
    assert "plan: install the agent (the agent version changed, or the install did not finish)" in rerun.stderr

    assert v1cli().exit_code == 0  # the right secret
    assert (v1cli.state()["online"], v1cli.state()["registered_at"]) == (True, state["registered_at"])


def test_a_reinstall_never_seen_online_keeps_when_its_uuid_enrolled_and_its_server_id(v1cli: V1Cli) -> None:
    assert v1cli().exit_code == 0
    state_file = v1cli.root / "var/lib/nezha-bootstrap/state.json"
    earlier = {**v1cli.state(), "registered_at": "2026-01-02T03:04:05+00:00", "server_id": 7}
    state_file.write_text(json.dumps(earlier))

    outcome = v1cli(NEZHA_AGENT_SECRET="wrongsecret1234567890")  # a new secret: installed again, then refused

    assert outcome.exit_code == 3, outcome.stderr
    after = v1cli.state()
    assert (after["uuid"], after["registered_at"], after["server_id"], after["online"], after["installed_at"]) == (
        UUID, "2026-01-02T03:04:05+00:00", 7, False, None)


def test_after_enrolling_each_change_says_why_it_installs_again_or_why_not(v1cli: V1Cli) -> None:
    assert v1cli().exit_code == 0

    def plan(*args: str, **env: str) -> tuple[str, str]:
        outcome = v1cli("--dry-run", "--json", *args, **env)
        assert outcome.exit_code == 0, outcome.stderr
        shown = json.loads(outcome.stdout)
        return shown["action"], shown["reason"]

    assert plan() == ("nothing", "enrolled and installed")
    assert plan("--force") == ("install", "--force")
    assert plan("--agent-option", "report_delay=3") == ("install", "config.yml differs from the settings")
    url = v1cli.running.url
    other = url.replace("127.0.0.1", "localhost")
    assert plan(NEZHA_DASHBOARD_URL=other, NEZHA_PROBE_ADDRESS="127.0.0.1") == (
        "nothing", f"enrolled through {url}, and the agent's config is the same: its uuid is this server on any URL "
                   "of the dashboard (the new URL is recorded)")
    state_file = v1cli.root / "var/lib/nezha-bootstrap/state.json"
    state_file.write_text(json.dumps({**v1cli.state(), "generation": "v1"}))  # cached before an upgrade to v2.1+
    outcome = v1cli("--json", NEZHA_DASHBOARD_URL=other, NEZHA_PROBE_ADDRESS="127.0.0.1")
    assert outcome.exit_code == 0, outcome.stderr
    assert json.loads(outcome.stdout)["outcome"] == "nothing_to_do"
    assert (v1cli.state()["dashboard_url"], v1cli.state()["generation"]) == (other, "v2.1+")  # both recorded
    (v1cli.root / "etc/machine-id").write_text(OTHER_MACHINE_ID + "\n")
    assert plan() == ("install", "the machine-id changed: this clone enrolls under its own uuid")


@pytest.mark.parametrize("init", ["systemd", "sysv"])
def test_a_reinstall_under_another_uuid_restarts_the_agent_and_names_the_server_it_leaves(v1cli: V1Cli,
                                                                                       init: str) -> None:
    env = {"NEZHA_STUB_INIT": "sysv"} if init == "sysv" else {}
    assert v1cli(**env).exit_code == 0
    chosen = "11111111-2222-3333-4444-555555555555"

    outcome = v1cli("--uuid", chosen, **env)

    assert outcome.exit_code == 0, outcome.stderr
    assert (f"config.yml held uuid {UUID}; it now holds {chosen}. The dashboard keeps a server for {UUID}: delete "
            "it there once its agent is gone") in outcome.stderr
    assert [call.argv[-1] for call in v1cli.agent_calls()] == ["install", "restart"]
    assert [s.uuid for s in v1cli.fake.servers] == [UUID, chosen]


def test_a_v0_agents_unit_is_replaced_not_restarted(v1cli: V1Cli) -> None:
    """A dashboard upgraded from v0: a restart would keep the unit's `-s HOST:PORT -p SECRET` command."""
    units = v1cli.root / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / "nezha-agent.service").write_text(
        '[Service]\nExecStart=/opt/nezha/agent/nezha-agent "-s" "dash.test:5555" "-p" "v0-node-secret"\n')

    plan = json.loads(v1cli("--dry-run", "--json").stdout)["plan"]
    outcome = v1cli()

    agent_dir = v1cli.root / "opt/nezha/agent"
    assert f"  uninstall the v0 agent: {agent_dir}/nezha-agent service uninstall" in plan
    assert f"  run: {agent_dir}/nezha-agent service -c {agent_dir}/config.yml install" in plan
    assert outcome.exit_code == 0, outcome.stderr
    assert [call.argv[-1] for call in v1cli.agent_calls()] == ["uninstall", "install"]
    assert 'ExecStart=/opt/nezha/agent/nezha-agent "-c" "/opt/nezha/agent/config.yml"' in (
        units / "nezha-agent.service").read_text()


def test_the_state_of_an_enrollment_holds_what_a_rerun_needs_and_no_secret(v1cli: V1Cli) -> None:
    assert v1cli("--name", "web-1").exit_code == 0  # without an access token the dashboard names it

    state = v1cli.state()
    stamps = {k: state.pop(k) for k in ("registered_at", "installed_at", "online_at")}
    assert {k: v for k, v in state.items() if v not in (None, False, "")} == {
        "dashboard_url": v1cli.running.url, "probe_address": "127.0.0.1", "probe_port": v1cli.running.port,
        "machine_id": MACHINE_ID, "generation": "v2.1+", "uuid": UUID, "method": "direct", "agent_version": AGENT_V1,
        "online": True, "version": 1}
    assert (state["name"], state["tag"], state["tls"], state["secret"], state["server_id"]) == (
        "", None, False, "", None)
    assert stamps["registered_at"] == stamps["installed_at"] == stamps["online_at"] is not None


def test_an_instance_id_seen_after_enrolling_is_recorded_once_then_a_new_one_is_a_clone(v1cli: V1Cli) -> None:
    assert v1cli().exit_code == 0
    iid = v1cli.root / "var/lib/cloud/data/instance-id"
    iid.parent.mkdir(parents=True)
    iid.write_text("i-0aaa\n")

    state_file = v1cli.root / "var/lib/nezha-bootstrap/state.json"
    late = v1cli("--json")
    written = state_file.stat().st_ino  # each save is a new file renamed over the old
    again = v1cli()
    assert state_file.stat().st_ino == written  # recorded once: not written again
    iid.write_text("i-0bbb\n")  # an image captured without `seal`, booted as another instance
    clone = v1cli("--json")

    assert late.exit_code == 0, late.stderr
    assert json.loads(late.stdout)["outcome"] == "nothing_to_do"
    assert "the state has no cloud-init instance-id (written before cloud-init ran here); recording this one, " \
           "i-0aaa." in late.stderr
    assert again.exit_code == 0 and "instance-id" not in again.stderr
    assert clone.exit_code == 0, clone.stderr
    assert json.loads(clone.stdout)["reason"] == ("cloud-init's instance-id changed under the same machine-id: this "
                                                  "clone enrolls under its own uuid")
    [first, second] = v1cli.fake.servers
    assert first.uuid == UUID and second.uuid == json.loads(clone.stdout)["uuid"] != UUID
    assert v1cli.state()["instance_id"] == "i-0bbb"
    warning = "warning: " + identity.unsealed_note("i-0aaa", "i-0bbb")
    assert warning in clone.stderr.splitlines() and "UNSEALED" not in late.stderr + again.stderr


def test_where_systemd_runs_the_plan_verifies_the_unit_and_that_it_is_active(tmp_path: Path) -> None:
    settings = Settings(dashboard_url="https://dash.example.com", agent=AgentSettings(secret="S3cretS3cretS3cret"))
    facts = Facts(hostname="web-1", primary_ipv4="192.0.2.10", machine_id=MACHINE_ID, systemd_running=True)
    this = ThisNode(v1_config(build(settings, facts).config), facts, Paths(tmp_path), Reporter(verbosity=-1))

    planned = dry_run(this, None, None, token_mode=False)

    assert [line for line in planned.plan if line.startswith("verify")] == [
        f"verify {tmp_path}/etc/systemd/system/nezha-agent.service: ExecStart runs the agent with -c "
        "/opt/nezha/agent/config.yml; config.yml as written; systemctl is-active nezha-agent"]


# --- the agent's own `service` commands failing (the stub's NEZHA_STUB_MODE=fail-ACTION) ---------------

def going_on(action: str) -> str:
    """The warning of a best-effort `service` command that failed: the run goes on."""
    return f"`nezha-agent service ... {action}` exited with status 1; going on"


def test_a_failing_service_install_is_exit_5_with_nothing_enrolled_and_the_next_run_installs(v1cli: V1Cli) -> None:
    failed = v1cli("--json", NEZHA_STUB_MODE="fail-install")

    assert failed.exit_code == 5, failed.stderr
    assert ("`nezha-agent service ... install` exited with status 1; run again with -v to see its output"
            in failed.stderr)
    assert json.loads(failed.stdout)["exit_code"] == 5
    assert v1cli.fake.servers == [] and v1cli.fake.connections == []
    assert not (v1cli.root / "etc/systemd/system/nezha-agent.service").exists()
    assert not (v1cli.root / "var/lib/nezha-bootstrap/state.json").exists()  # nothing taken for done
    again = v1cli("--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["outcome"] == "installed"
    assert [call.argv[-1] for call in v1cli.agent_calls()] == ["install", "install"]
    assert [s.uuid for s in v1cli.fake.servers] == [UUID]


def plant_v0_unit(v1cli: V1Cli) -> Path:
    units = v1cli.root / "etc/systemd/system"
    units.mkdir(parents=True)
    unit = units / "nezha-agent.service"
    unit.write_text('[Service]\nExecStart=/opt/nezha/agent/nezha-agent "-s" "dash.test:5555" "-p" "v0-node-secret"\n')
    return unit


def test_a_v0_agent_that_cannot_uninstall_itself_is_warned_and_the_new_agent_removes_its_unit(v1cli: V1Cli) -> None:
    unit = plant_v0_unit(v1cli)
    old = v1cli.root / "opt/nezha/agent/nezha-agent"
    old.parent.mkdir(parents=True)
    asked = v1cli.root.parent / "old-agent-argv"
    old.write_text("#!/bin/sh\n# nezha-bootstrap-stub: acts only inside the root it lies in (its paths come from its "
                   f"own location)\nprintf '%s\\n' \"$@\" > {asked}\necho 'old agent: cannot uninstall'\nexit 1\n")
    old.chmod(0o755)

    outcome = v1cli()

    assert outcome.exit_code == 0, outcome.stderr
    assert asked.read_text().splitlines() == ["service", "uninstall"]  # the v0 agent's own words: no -c
    assert "replacing the v0 agent: nezha-agent service uninstall" in outcome.stderr.splitlines()
    assert going_on("uninstall") in outcome.stderr
    assert [call.argv[-1] for call in v1cli.agent_calls()] == ["uninstall", "install"]  # the new binary's
    assert 'ExecStart=/opt/nezha/agent/nezha-agent "-c" "/opt/nezha/agent/config.yml"' in unit.read_text()
    assert [s.uuid for s in v1cli.fake.servers] == [UUID]


def test_under_a_root_an_old_agent_binary_that_is_not_a_stub_is_never_run(v1cli: V1Cli) -> None:
    unit = plant_v0_unit(v1cli)
    old = v1cli.root / "opt/nezha/agent/nezha-agent"
    old.parent.mkdir(parents=True)
    ran = v1cli.root.parent / "the-old-binary-ran"
    old.write_text(f"#!/bin/sh\ntouch {ran}\n")  # a real agent would act on this machine, not the root
    old.chmod(0o755)

    outcome = v1cli()

    assert outcome.exit_code == 0, outcome.stderr
    assert not ran.exists()
    assert f"refusing to run {old} for --root {v1cli.root}: it is not a stub" in outcome.stderr  # a warning
    assert [call.argv[-1] for call in v1cli.agent_calls()] == ["uninstall", "install"]  # the new binary's
    assert 'ExecStart=/opt/nezha/agent/nezha-agent "-c" "/opt/nezha/agent/config.yml"' in unit.read_text()


def test_a_v0_unit_the_new_agent_cannot_uninstall_is_warned_then_its_install_fails_exit_5(v1cli: V1Cli) -> None:
    unit = plant_v0_unit(v1cli)
    before = unit.read_text()

    outcome = v1cli(NEZHA_STUB_MODE="fail-uninstall")

    assert outcome.exit_code == 5, outcome.stderr
    assert going_on("uninstall") in outcome.stderr  # tolerated: the install below says what is wrong
    assert "`nezha-agent service ... install` exited with status 1" in outcome.stderr  # "Init already exists"
    assert [call.argv[-1] for call in v1cli.agent_calls()] == ["uninstall", "install"]
    assert unit.read_text() == before and v1cli.fake.servers == []


def test_the_result_names_the_dashboard_it_enrolled_with(v1cli: V1Cli) -> None:
    outcome = v1cli("--json")

    assert outcome.exit_code == 0, outcome.stderr
    assert json.loads(outcome.stdout)["dashboard"] == v1cli.running.url


def test_the_agents_commands_get_the_environment_the_run_started_with(v1cli: V1Cli) -> None:
    """Facts.environ, read once at the start, is what every child's environment is made from."""
    from nezha_bootstrap.generation import Generation
    from nezha_bootstrap.v1 import flow

    environ = {"PATH": os.environ["PATH"], "NEZHA_STUB_RECORD": str(v1cli.record_dir), "SEEN_AT_START": "yes"}
    settings = Settings(dashboard_url=v1cli.running.url, agent=AgentSettings(
        secret=v1cli.fake.agent_secret, base_url=f"{v1cli.running.url}/releases"))
    facts = Facts(hostname="web-1", primary_ipv4="192.0.2.10", machine_id=MACHINE_ID, systemd_running=False,
                  environ=environ)
    this = ThisNode(v1_config(build(settings, facts).config), facts, Paths(v1cli.root), Reporter(verbosity=-1))

    with httpx.Client() as given:  # the caller's (run.py's probe client): used, never closed by the flow
        runner = flow.V1Runner(this.config, facts, this.paths, this.reporter, Generation.V2_1, client=given)
        result = runner.run()

        assert result.outcome == "installed"
        assert runner.client is given and not given.is_closed
    [call] = v1cli.agent_calls()  # recorded where the run's environment, not this process's, says
    assert call.env["SEEN_AT_START"] == "yes" and "SEEN_AT_START" not in os.environ


def test_an_install_is_timed_in_named_steps_and_leaves_the_binary_0755(v1cli: V1Cli) -> None:
    outcome = v1cli("--json")

    assert outcome.exit_code == 0, outcome.stderr
    steps = json.loads(outcome.stdout)["steps"]
    assert [(step["step"], step["ok"]) for step in steps] == [
        ("detect", True), ("download", True), ("install", True), ("verify", True), ("online", True)]
    agent_dir = v1cli.root / "opt/nezha/agent"
    lines = outcome.stderr.splitlines()
    assert f"downloading nezha-agent v{AGENT_V1} (nezha-agent_linux_amd64.zip) ..." in lines
    assert "nezha-agent service -c /opt/nezha/agent/config.yml install ..." in lines
    assert f"verifying {v1cli.root}/etc/systemd/system/nezha-agent.service ..." in lines
    assert stat.S_IMODE((agent_dir / "nezha-agent").stat().st_mode) == 0o755


def test_a_service_install_that_claims_success_without_a_unit_is_exit_5_naming_what_is_missing(v1cli: V1Cli) -> None:
    outcome = v1cli("--json", NEZHA_STUB_MODE="nounit")

    assert outcome.exit_code == 5, outcome.stderr
    units = f"{v1cli.root}/etc/systemd/system/nezha-agent.service or {v1cli.root}/etc/init.d/nezha-agent"
    assert json.loads(outcome.stdout)["error"] == [
        f"the agent install is not as asked: no agent unit ({units}) was written"]
    assert v1cli.fake.servers == [] and not (v1cli.root / "var/lib/nezha-bootstrap/state.json").exists()


def test_a_reinstall_that_fails_marks_the_node_unfinished_so_the_next_run_installs_again(v1cli: V1Cli) -> None:
    assert v1cli().exit_code == 0
    assert v1cli.state()["installed_at"] is not None

    failed = v1cli("--force", NEZHA_STUB_MODE="fail-restart")

    assert failed.exit_code == 5, failed.stderr
    assert v1cli.state()["installed_at"] is None  # marked before the agent was touched
    again = v1cli()
    assert again.exit_code == 0, again.stderr
    assert "plan: install the agent (the agent version changed, or the install did not finish)" in again.stderr
    assert [call.argv[-1] for call in v1cli.agent_calls()] == ["install", "restart", "restart"]



# --- the install's local steps, in-process: what a failure names, and a leftover already gone ---------------

def v1_runner(v1cli: V1Cli, *, adopt: bool = False, systemd: bool = False, bundle: Any = None) -> Any:
    from nezha_bootstrap.generation import Generation
    from nezha_bootstrap.v1 import flow

    settings = Settings(dashboard_url=v1cli.running.url, agent=AgentSettings(
        secret=v1cli.fake.agent_secret, base_url=f"{v1cli.running.url}/releases", adopt=adopt, bundle=bundle))
    facts = Facts(hostname="web-1", primary_ipv4="192.0.2.10", machine_id=MACHINE_ID, systemd_running=systemd,
                  environ={"PATH": os.environ["PATH"], "NEZHA_STUB_RECORD": str(v1cli.record_dir)})
    this = ThisNode(v1_config(build(settings, facts).config), facts, Paths(v1cli.root), Reporter(verbosity=-1))
    return flow.V1Runner(this.config, facts, this.paths, this.reporter, Generation.V2_1)


@pytest.mark.parametrize(("blocker", "kind", "error"), [
    ("opt/nezha", "file", "cannot create the directory {root}/opt/nezha/agent: "),
    ("opt/nezha/agent/nezha-agent", "dir", "cannot write {root}/opt/nezha/agent/nezha-agent: "),
    ("opt/nezha/agent/config.yml", "dir", "cannot write {root}/opt/nezha/agent/config.yml: "),
])
def test_an_install_step_that_cannot_write_names_its_path(v1cli: V1Cli, blocker: str, kind: str, error: str) -> None:
    from nezha_bootstrap.errors import InstallerFailed

    path = v1cli.root / blocker
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("in the way\n") if kind == "file" else (path / "in-the-way").mkdir(parents=True)
    runner = v1_runner(v1cli)

    with pytest.raises(InstallerFailed) as failed:
        runner.run()

    assert str(failed.value).startswith(error.format(root=v1cli.root))


def test_a_binary_that_cannot_be_staged_names_its_path(v1cli: V1Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from nezha_bootstrap import system
    from nezha_bootstrap.errors import InstallerFailed

    def no_space(path: Path, mode: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(system, "Staged", no_space)
    runner = v1_runner(v1cli)

    with pytest.raises(InstallerFailed) as failed:
        runner.run()

    assert str(failed.value) == f"cannot write {v1cli.root}/opt/nezha/agent/nezha-agent: No space left on device"


class Stop(Exception):
    """Raised by a stand-in to end a run where the test has seen what it needs."""


def test_the_state_directory_is_made_private_within_the_root_before_the_agent_s_commands_run(
        v1cli: V1Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from nezha_bootstrap import system
    from nezha_bootstrap.paths import private_dir_under

    runner = v1_runner(v1cli)
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o755)
    v1cli.root.chmod(0o755)
    runner.paths.state_dir.parent.mkdir(parents=True, exist_ok=True)
    runner.paths.state_dir.symlink_to(outside)  # a link in the image: Paths follows it within the root
    seen: list[tuple[int, int, int]] = []

    def service(argv: list[str], quiet_failure: bool = False) -> None:
        inside = v1cli.root / outside.relative_to("/")  # where the link points, taken within the root
        seen.append((stat.S_IMODE(v1cli.root.stat().st_mode), stat.S_IMODE(outside.stat().st_mode),
                     stat.S_IMODE(inside.stat().st_mode)))
        raise Stop

    confined: list[tuple[Path, Path]] = []
    monkeypatch.setattr(runner, "_service", service)

    def confine(root: Path, path: Path) -> None:
        confined.append((root, path))
        private_dir_under(root, path)

    monkeypatch.setattr(system, "private_dir_under", confine)

    with pytest.raises(Stop):
        runner._install(plan_enrollment(None, runner.config, runner.facts, runner.paths, runner.machine))

    assert seen == [(0o755, 0o755, 0o700)]  # the root and the host's directory untouched
    # made the confined way (a link swapped in between two steps is never followed out of the root)
    assert (v1cli.root, runner.paths.state_dir) in confined


def test_adopting_a_leftover_whose_config_went_with_its_uninstall_is_no_failure(
        v1cli: V1Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from nezha_bootstrap import agent

    config = v1cli.root / "opt/nezha/agent/config-gone.yml"
    monkeypatch.setattr(agent, "vendor_leftovers", lambda paths: [agent.Leftover(config, "0f41-gone", None)])
    runner = v1_runner(v1cli, adopt=True)

    assert runner._leftovers() == ["0f41-gone"]


def test_a_leftover_config_that_cannot_be_removed_fails_naming_it(v1cli: V1Cli) -> None:
    from nezha_bootstrap.errors import InstallerFailed

    config = v1cli.root / "opt/nezha/agent/config-ab12cd.yml"
    (config / "in-the-way").mkdir(parents=True)  # a directory by that name: unlink fails
    runner = v1_runner(v1cli, adopt=True)

    with pytest.raises(InstallerFailed) as failed:
        runner._leftovers()

    assert str(failed.value).startswith(f"cannot remove {config}: ")


@pytest.mark.parametrize("systemd", [True, False])
def test_where_systemd_runs_the_install_waits_for_the_unit_to_be_active(
        v1cli: V1Cli, monkeypatch: pytest.MonkeyPatch, systemd: bool) -> None:
    from nezha_bootstrap import agent

    asked: list[object] = []
    monkeypatch.setattr(agent, "wait_active", asked.append)
    monkeypatch.setattr(agent, "unit_problems", lambda paths, expected: [])
    runner: Any = v1_runner(v1cli, systemd=systemd)

    runner._install(plan_enrollment(None, runner.config, runner.facts, runner.paths, runner.machine))

    assert asked == ([agent.is_active] if systemd else [])


def test_a_run_made_in_process_masks_its_agent_secret_as_the_cli_does(v1cli: V1Cli) -> None:
    """A caller that builds its Config without the CLI (a library user, the demo) gets the same redaction."""
    from nezha_bootstrap import redact

    runner = v1_runner(v1cli)
    secret = v1cli.fake.agent_secret
    assert not redact.holds_secret(secret)  # the CLI's options never ran here

    assert runner.run().outcome == "installed"

    assert redact.holds_secret(secret) and secret not in redact.redact(f"config.yml: client_secret: {secret}")


def test_a_bundled_agent_is_checked_before_anything_changes_and_only_when_installing(
        v1cli: V1Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from nezha_bootstrap import agent

    bundle = object()  # the bundle this tool runs from (bundle.carried()); test_bundle checks real ones
    checked: list[Any] = []

    def check_bundled(release: Any) -> None:
        checked.append(release)
        raise Stop

    monkeypatch.setattr(agent, "check_bundled", check_bundled)

    with pytest.raises(Stop):
        v1_runner(v1cli, bundle=bundle).run()

    [release] = checked
    assert (release.bundled, release.version) == (bundle, AGENT_V1)
    assert not (v1cli.root / "opt/nezha/agent").exists() and v1cli.fake.servers == []  # before anything changes
    assert v1cli().exit_code == 0  # enrolled (without a bundle)
    assert v1_runner(v1cli, bundle=bundle).run().outcome == "nothing_to_do"  # nothing to install: nothing checked
    assert len(checked) == 1


def test_each_run_says_its_plan_and_where_its_uuid_came_from(v1cli: V1Cli) -> None:
    first, again, forced = v1cli("-v"), v1cli("-v"), v1cli("-v", "--force")

    assert first.exit_code == again.exit_code == forced.exit_code == 0, first.stderr + again.stderr + forced.stderr
    assert "config.yml held uuid" not in first.stderr + forced.stderr  # none before; the same one again
    assert ["plan: install the agent (not enrolled from this machine yet)", f"  uuid {UUID} (from machine-id)"] == [
        line for line in first.stderr.splitlines() if line.startswith(("plan: ", "  uuid "))]
    assert ["plan: nothing to do (enrolled and installed)", f"  uuid {UUID} (from state)"] == [
        line for line in again.stderr.splitlines() if line.startswith(("plan: ", "  uuid "))]


@pytest.mark.parametrize("systemd", [True, False])
def test_the_agent_is_watched_from_before_it_starts_the_journal_only_where_systemd_runs(
        v1cli: V1Cli, monkeypatch: pytest.MonkeyPatch, systemd: bool) -> None:
    import time

    from nezha_bootstrap import online

    asked: list[tuple[Any, ...]] = []

    def sources(*args: Any) -> None:
        asked.append(args)
        raise Stop

    monkeypatch.setattr(online, "system_sources", sources)
    runner = v1_runner(v1cli, systemd=systemd)
    before = time.time()

    with pytest.raises(Stop):
        runner.run()

    [(paths, journal, since)] = asked
    assert (paths, journal) == (runner.paths, systemd) and before <= since <= time.time()
    assert not (v1cli.root / "opt/nezha/agent").exists()  # before the install


@pytest.mark.parametrize("online", [True, None])  # None: a state written before the online verdict existed
def test_a_run_with_nothing_to_do_reports_the_node_online_as_the_last_install_saw_it(v1cli: V1Cli,
                                                                                   online: bool | None) -> None:
    assert v1cli().exit_code == 0
    state_file = v1cli.root / "var/lib/nezha-bootstrap/state.json"
    state_file.write_text(json.dumps({**v1cli.state(), "online": online}))

    outcome = v1cli("--json")

    assert outcome.exit_code == 0, outcome.stderr
    result = json.loads(outcome.stdout)
    assert (result["outcome"], result["online"]) == ("nothing_to_do", online)


def test_the_uuid_config_yml_held_is_read_within_the_root_through_a_link(v1cli: V1Cli, tmp_path: Path) -> None:
    """A config.yml that is a link (an image's) is followed inside the root, never to the host's file."""
    target = tmp_path / "elsewhere.yml"  # an absolute path that exists on the host and, differently, in the image
    target.write_text('uuid: "99999999-0000-4000-8000-000000000000"\n')
    in_image = v1cli.root / target.relative_to("/")
    in_image.parent.mkdir(parents=True)
    in_image.write_text(f'server: "x:1"\nclient_secret: "s"\nuuid: "{UUID}"\n')
    agent_dir = v1cli.root / "opt/nezha/agent"
    agent_dir.mkdir(parents=True)
    (agent_dir / "config.yml").symlink_to(target)
    chosen = "11111111-2222-3333-4444-555555555555"

    outcome = v1cli("--uuid", chosen)

    assert outcome.exit_code == 0, outcome.stderr
    assert f"config.yml held uuid {UUID}; it now holds {chosen}." in outcome.stderr
    assert "99999999" not in outcome.stderr


def test_the_agent_download_says_its_retries_and_names_a_binary_it_cannot_write(
        v1cli: V1Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from nezha_bootstrap import agent
    from nezha_bootstrap.errors import InstallerFailed

    told: list[str] = []
    runner = v1_runner(v1cli)
    runner.reporter.info = told.append
    plan = plan_enrollment(None, runner.config, runner.facts, runner.paths, runner.machine)

    def retrying(client: Any, release: Any, deadline: float, notify: Any, file: Any) -> None:
        notify("download: HTTP 503, trying again in 1 s")

    monkeypatch.setattr(agent, "fetch_binary", retrying)
    runner._download(plan.release, Staging())
    assert told == ["download: HTTP 503, trying again in 1 s"]

    def full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(agent, "fetch_binary", full)
    with pytest.raises(InstallerFailed) as failed:
        runner._download(plan.release, Staging())
    assert str(failed.value) == f"cannot write {runner.paths.agent_binary}: No space left on device"


class Staging:
    """The staged binary's file, for a download that goes nowhere."""

    def __init__(self) -> None:
        import io

        self.file = io.BytesIO()


def test_an_install_not_as_asked_names_every_problem(v1cli: V1Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from nezha_bootstrap import agent
    from nezha_bootstrap.errors import InstallerFailed

    monkeypatch.setattr(agent, "unit_problems", lambda paths, expected: ["no unit", "config.yml differs"])
    runner = v1_runner(v1cli)

    with pytest.raises(InstallerFailed) as failed:
        runner._install(plan_enrollment(None, runner.config, runner.facts, runner.paths, runner.machine))

    assert str(failed.value) == "the agent install is not as asked: no unit; config.yml differs"
