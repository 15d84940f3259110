"""The v1/v2 flow on a bad day: stop signals, a state directory that cannot take the state, private CAs."""

from __future__ import annotations

import json
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from nezha_bootstrap.agent import AGENT_V0, AGENT_V1
from nezha_bootstrap.identity import machine_uuid
from nezha_bootstrap.testing.fake_v0 import FakeDashboard, Running, serve
from nezha_bootstrap.testing.fake_v1 import FakeV1
from tests.conftest import MACHINE_ID, TOKEN, Cli, V1Cli
from tests.processes import STATE_DIR, finish, leftovers, lock_is_free, run, start, stub_processes, wait_for
from tests.test_faults_process import FULL, READ_ONLY, error_line, mount_namespace  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration

SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]
UUID = machine_uuid(MACHINE_ID)
ASSET = "nezha-agent_linux_amd64.zip"


def saved(v1cli: V1Cli) -> dict[str, Any]:
    return dict(json.loads((v1cli.root / STATE_DIR / "state.json").read_text()))


def stopped_line(signum: int) -> str:
    return f"error: stopped by {signal.Signals(signum).name}; nothing was left half-done: run again to finish"


def hanging_agent(v1cli: V1Cli) -> bool:
    return any("sleep 3600" in command for command in stub_processes(v1cli.record_dir))


# --- stop signals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_during_the_agents_install_kills_it_and_the_next_run_enrolls_the_same_uuid(
        v1cli: V1Cli, signum: int) -> None:
    started = time.monotonic()
    proc = start(v1cli, "run", "-v", NEZHA_STUB_MODE="hang")  # type: ignore[arg-type]
    wait_for(lambda: hanging_agent(v1cli), what="the agent's `service install`")

    proc.send_signal(signum)
    finished = finish(proc, started, timeout=10)

    assert finished.exit_code == 128 + signum
    assert error_line(finished.stderr) == stopped_line(signum)
    assert "Traceback" not in finished.stderr
    assert stub_processes(v1cli.record_dir) == []  # its process group was killed
    assert not (v1cli.root / STATE_DIR / "state.json").exists()
    assert leftovers(v1cli.root) == [] and lock_is_free(v1cli.root)

    again = v1cli("-v")

    assert again.exit_code == 0, again.stderr
    assert [s.uuid for s in v1cli.fake.servers] == [UUID]
    assert saved(v1cli)["installed_at"] is not None
    assert v1cli.fake.agent_secret not in finished.stdout + finished.stderr


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_during_a_reinstall_leaves_it_unfinished_and_the_next_run_finishes_it(
        v1cli: V1Cli, signum: int) -> None:
    assert v1cli().exit_code == 0
    started = time.monotonic()
    proc = start(v1cli, "run", "--agent-option", "report_delay=2", NEZHA_STUB_MODE="hang")  # type: ignore[arg-type]
    wait_for(lambda: hanging_agent(v1cli), what="the agent's `service restart`")

    proc.send_signal(signum)
    finished = finish(proc, started, timeout=10)

    assert finished.exit_code == 128 + signum
    assert "report_delay: 2" in (v1cli.root / "opt/nezha/agent/config.yml").read_text()  # written, not applied
    assert saved(v1cli)["installed_at"] is None  # so the same settings next time are not taken for done

    again = v1cli("-v", "--agent-option", "report_delay=2")

    assert again.exit_code == 0, again.stderr
    assert "plan: install the agent (the agent version changed, or the install did not finish)" in again.stderr
    assert [c.argv[-1] for c in v1cli.agent_calls()] == ["install", "restart", "restart"]
    assert [s.uuid for s in v1cli.fake.servers] == [UUID]


# --- a state directory that cannot take the state --------------------------------------------------

@pytest.mark.root
@pytest.mark.parametrize(
    ("script", "error"),
    [
        pytest.param(READ_ONLY, "error: cannot make the directory {dir} private (mode 0700): Read-only file system",
                     id="read-only"),
        pytest.param(FULL, "error: cannot write the state file {dir}/state.json: the disk is full; "
                           "nothing was registered", id="full"),
    ],
)
@pytest.mark.usefixtures("mount_namespace")
def test_a_state_directory_that_cannot_take_the_state_exits_1_before_installing(
        v1cli: V1Cli, script: str, error: str) -> None:
    state_dir = v1cli.root / STATE_DIR
    state_dir.mkdir(parents=True, mode=0o700)

    finished = run(v1cli, "run", "-v", prefix=("unshare", "-m", "sh", "-c", script, str(state_dir)))  # type: ignore[arg-type]

    assert finished.exit_code == 1, finished.stderr
    assert error_line(finished.stderr) == error.format(dir=state_dir)
    assert not any(j.path.startswith("/releases/") for j in v1cli.fake.journal)  # nothing downloaded
    assert v1cli.agent_calls() == [] and v1cli.fake.servers == []
    assert not (v1cli.root / "opt/nezha").exists()


# --- private CA for the dashboard, public CA for the release host ------------------------------------

@pytest.fixture(scope="module")
def dashboard_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def public_ca() -> trustme.CA:
    """Stands in for the system store's CAs (GitHub's): trusted through SSL_CERT_FILE."""
    return trustme.CA()


def https(fake: Any, ca: trustme.CA) -> Running:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return serve(fake, ssl_context=context)


@pytest.fixture
def pems(tmp_path: Path, dashboard_ca: trustme.CA, public_ca: trustme.CA) -> tuple[Path, Path]:
    private, system = tmp_path / "private-ca.pem", tmp_path / "system-store.pem"
    dashboard_ca.cert_pem.write_to_path(str(private))
    public_ca.cert_pem.write_to_path(str(system))
    return private, system


@pytest.fixture
def release_host(public_ca: trustme.CA) -> Iterator[Running]:
    host = FakeV1()
    host.add_release(AGENT_V1)
    host.add_release(AGENT_V0)
    with https(host, public_ca) as running:
        yield running


@pytest.mark.parametrize("system_store", [True, False], ids=["store-has-its-ca", "store-lacks-its-ca"])
def test_v1_downloads_trust_the_system_store_and_the_dashboard_the_ca_bundle(
        root: Path, dashboard_ca: trustme.CA, pems: tuple[Path, Path], release_host: Running,
        system_store: bool) -> None:
    fake = FakeV1(profile="v2.1+")
    with https(fake, dashboard_ca) as dashboard:
        v1cli = V1Cli(dashboard, fake, root)
        outcome = v1cli("--ca-bundle", str(pems[0]), NEZHA_AGENT_BASE_URL=f"{release_host.url}/releases",
                        SSL_CERT_FILE=str(pems[1]) if system_store else str(pems[0]))

    if system_store:
        assert outcome.exit_code == 0, outcome.stderr
        assert [s.uuid for s in fake.servers] == [UUID]
        assert [j.path for j in release_host.fake.journal] == [
            f"/releases/v{AGENT_V1}/checksums.txt", f"/releases/v{AGENT_V1}/{ASSET}"]
    else:  # verification stays on: the release host's CA is in neither the store nor the bundle
        assert outcome.exit_code == 5
        assert "TLS verification of 127.0.0.1 failed" in error_line(outcome.stderr)
        assert release_host.fake.journal == [] and fake.servers == []


def test_v0_script_and_direct_downloads_trust_the_system_store_too(
        root: Path, dashboard_ca: trustme.CA, pems: tuple[Path, Path], release_host: Running) -> None:
    fake = FakeDashboard(TOKEN)
    with https(fake, dashboard_ca) as dashboard:
        cli = Cli(dashboard, fake, root)
        outcome = cli("run", "--ca-bundle", str(pems[0]), "--method", "direct",
                      NEZHA_AGENT_BASE_URL=f"{release_host.url}/releases", SSL_CERT_FILE=str(pems[1]))

    assert outcome.exit_code == 0, outcome.stderr
    assert len(fake.servers) == 1
    assert [j.path for j in release_host.fake.journal] == [
        f"/releases/v{AGENT_V0}/checksums.txt", f"/releases/v{AGENT_V0}/{ASSET}"]
