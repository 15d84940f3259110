"""`seal`, `uninstall` and `status` on the v1/v2 layout: config.yml holds the uuid and the agent secret."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from nezha_bootstrap import effects
from nezha_bootstrap.cli import main
from nezha_bootstrap.firstboot import service
from nezha_bootstrap.identity import machine_uuid
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter
from tests.conftest import MACHINE_ID, Outcome, V1Cli, make_runner
from tests.test_run_v1 import OTHER_MACHINE_ID

pytestmark = pytest.mark.integration

UUID = machine_uuid(MACHINE_ID)


def command(v1cli: V1Cli, *args: str) -> Outcome:
    result = make_runner().invoke(main, list(args), env={"NEZHA_BOOTSTRAP_ROOT": str(v1cli.root),
                                                         "NEZHA_BOOTSTRAP_REHEARSAL": "1",
                                                         "NEZHA_STUB_RECORD": str(v1cli.record_dir)},
                                  catch_exceptions=False)
    return Outcome(result, result.stdout, result.stderr)


def holding(root: Path, secret: str) -> list[str]:
    return [str(p.relative_to(root)) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes()]


def test_seal_removes_config_yml_so_a_clone_enrolls_under_its_own_uuid(v1cli: V1Cli) -> None:
    assert v1cli().exit_code == 0
    paths = Paths(v1cli.root)

    outcome = command(v1cli, "seal")

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.splitlines()[-1] == (
        f"the server with uuid {UUID} stays in the dashboard {v1cli.running.url}: delete it there (its agent is "
        "gone, so it stays deleted)")
    for gone in (paths.agent_dir / "config.yml", paths.agent_binary, paths.agent_unit, paths.state_dir):
        assert not gone.exists(), gone
    assert paths.machine_id.read_bytes() == b""
    assert holding(v1cli.root, v1cli.fake.agent_secret) == []  # the image carries no agent secret

    paths.machine_id.write_text(OTHER_MACHINE_ID + "\n")  # the clone's first boot
    clone = v1cli()

    assert clone.exit_code == 0, clone.stderr
    assert [s.uuid for s in v1cli.fake.servers] == [UUID, machine_uuid(OTHER_MACHINE_ID)]
    assert [c.argv[-1] for c in v1cli.agent_calls()] == ["install", "install"]


def test_uninstall_lets_the_agent_uninstall_itself_by_its_config_then_removes_it(
        v1cli: V1Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    assert v1cli().exit_code == 0
    monkeypatch.setenv("NEZHA_STUB_RECORD", str(v1cli.record_dir))
    paths = Paths(v1cli.root)
    err = io.StringIO()

    plan = service.plan_uninstall(paths, own_system=True, use_systemctl=False, purge=False)
    effects.apply(plan, Reporter(verbosity=1, err=err), lock=paths)

    config = paths.agent_dir / "config.yml"
    assert plan.describe()[0] == f"run: {paths.agent_binary} service -c {config} uninstall"
    assert v1cli.agent_calls()[-1].argv == ["service", "-c", str(config), "uninstall"]
    assert "stub nezha-agent: uninstalled nezha-agent" in err.getvalue()
    assert not config.exists() and not paths.agent_binary.exists() and not paths.state_dir.exists()
    assert holding(v1cli.root, v1cli.fake.agent_secret) == []


def test_uninstall_command_names_the_uuid_to_delete(v1cli: V1Cli) -> None:
    assert v1cli().exit_code == 0

    outcome = command(v1cli, "uninstall", "--json")

    assert outcome.exit_code == 0, outcome.stderr
    report = json.loads(outcome.stdout)
    assert (report["outcome"], report["server"]) == (
        "uninstalled", {"name": "", "id": None, "uuid": UUID, "dashboard": v1cli.running.url})
    assert f"remove {v1cli.root}/opt/nezha/agent/config.yml" in report["actions"]


@pytest.mark.parametrize("line", ["NZ_UUID=11111111-2222-3333-4444-555555555555",
                                  "export NZ_UUID=11111111-2222-3333-4444-555555555555"])
def test_seal_warns_about_a_sysconfig_uuid_every_clone_would_share(root: Path, line: str) -> None:
    sysconfig = root / "etc/sysconfig/nezha-agent"
    sysconfig.parent.mkdir(parents=True)
    sysconfig.write_text(line + "\n")

    notes = service.plan_seal(Paths(root), own_system=False).notes

    assert any(note.startswith(f"{sysconfig} sets NZ_UUID, which overrides config.yml") for note in notes)


def test_status_after_seal_shows_nothing_of_the_v1_agent(v1cli: V1Cli) -> None:
    assert v1cli().exit_code == 0
    assert command(v1cli, "seal").exit_code == 0

    report = json.loads(command(v1cli, "status", "--json").stdout)

    assert (report["registered"], report["installed"], report["agent_unit"]) == (False, False, None)
    assert "agent_config" not in report and "uuid" not in report
