"""`run --root DIR` (DIR not /) never runs an installer or agent that acts on this machine (issue 18 item 9):
without --rehearsal it is refused before any request; with it, only the stubs of nezha_bootstrap.testing
(which act inside the root they lie in) are run, anything else is refused before it starts."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import pytest

from nezha_bootstrap.agent import AGENT_V0, AGENT_V1
from nezha_bootstrap.effects import STUB_MARKER, confined_problem
from nezha_bootstrap.testing.fake_v0 import stub_installer
from nezha_bootstrap.testing.fake_v1 import agent_zip, stub_agent
from tests.conftest import Cli, V1Cli

ASSET = "nezha-agent_linux_amd64.zip"


def acts_on_the_host(flag: Path) -> bytes:
    """A program like the real installer or agent: it acts outside any root (here: writes `flag`)."""
    return f"#!/bin/sh\necho ran >> {flag}\nexit 0\n".encode()


def test_run_under_a_root_without_rehearsal_is_refused_before_any_request(cli: Cli) -> None:
    outcome = cli("run", NEZHA_BOOTSTRAP_REHEARSAL=None)

    assert outcome.exit_code == 2
    assert f"run --root {cli.root}: the agent's installer and the agent act on this machine" in outcome.stderr
    assert f"`nezha-bootstrap install-service --root {cli.root}`" in outcome.stderr
    assert "add --rehearsal" in outcome.stderr
    assert cli.fake.journal == [] and not (cli.root / "var").exists()


def test_a_dry_run_under_a_root_needs_no_rehearsal(cli: Cli) -> None:
    outcome = cli("run", "--dry-run", NEZHA_BOOTSTRAP_REHEARSAL=None)

    assert outcome.exit_code == 0, outcome.stderr
    assert cli.fake.journal == []


@pytest.mark.integration
def test_with_rehearsal_the_stub_installer_runs_inside_the_root(cli: Cli) -> None:
    outcome = cli("run")

    assert outcome.exit_code == 0, outcome.stderr
    assert (cli.root / "etc/systemd/system/nezha-agent.service").is_file() and len(cli.calls()) == 1


@pytest.mark.integration
def test_with_rehearsal_an_installer_that_is_not_a_stub_never_runs(cli: Cli, tmp_path: Path) -> None:
    flag = tmp_path / "installer-ran"
    cli.fake.files["/install.sh"] = acts_on_the_host(flag)

    outcome = cli("run")

    assert outcome.exit_code == 2
    assert "is not a stub of nezha_bootstrap.testing, and a real installer or agent acts on this machine" in (
        outcome.stderr)
    assert not flag.exists()


@pytest.mark.integration
def test_with_rehearsal_an_agent_that_is_not_a_stub_never_runs(v1cli: V1Cli, tmp_path: Path) -> None:
    flag = tmp_path / "agent-ran"
    data = agent_zip(acts_on_the_host(flag))
    v1cli.fake.files[f"/releases/v{AGENT_V1}/{ASSET}"] = data
    v1cli.fake.files[f"/releases/v{AGENT_V1}/checksums.txt"] = f"{hashlib.sha256(data).hexdigest()}  {ASSET}\n".encode()

    outcome = v1cli()

    assert outcome.exit_code == 2, outcome.stderr
    assert "is not a stub of nezha_bootstrap.testing" in outcome.stderr
    assert not flag.exists()
    assert json.loads(v1cli.invoke(["status", "--json"]).stdout)["installed"] is False


@pytest.mark.parametrize("stub", ["stub-install.sh", "stub-agent-v0.sh", "stub-agent-v1.sh"])
def test_every_shipped_stub_carries_the_marker(stub: str) -> None:
    text = resources.files("nezha_bootstrap.testing").joinpath(f"stubs/{stub}").read_bytes()

    assert STUB_MARKER in text.split(b"\n", 2)[1]


def test_the_stubs_sharing_v0_connect_are_served_whole_with_one_copy_of_it() -> None:
    for served in (stub_installer(), stub_agent(AGENT_V0)):  # install.sh downloaded alone, nezha-agent in a zip
        assert b"# @include" not in served
        assert served.count(b"\nv0_connect() {") == 1 and served.count(b'v0_connect "$secret" "$tls"') == 1


def test_only_a_program_under_the_root_with_the_marker_may_run_there(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "opt").mkdir(parents=True)
    (root / "opt/stub").write_bytes(b"#!/bin/sh\n# " + STUB_MARKER + b"\n")
    (root / "opt/real").write_bytes(b"\x7fELF...")
    (tmp_path / "outside").write_bytes(b"#!/bin/sh\n# " + STUB_MARKER + b"\n")

    assert confined_problem(root, ("sh", str(root / "opt/stub"), "install_agent")) is None
    assert confined_problem(root, (str(root / "opt/real"), "service", "install")) is not None
    assert confined_problem(root, (str(tmp_path / "outside"), "service")) is not None  # not under the root
    assert confined_problem(Path("/"), ("/usr/bin/anything",)) is None
