"""Shared fixtures: a fake dashboard on 127.0.0.1, a test root, the CLI runner and the leak scanner."""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import trustme
from click.testing import CliRunner, Result

from nezha_bootstrap import redact
from nezha_bootstrap.agent import AGENT_V1
from nezha_bootstrap.cli import main
from nezha_bootstrap.testing.fake_v0 import FakeDashboard, Running, serve
from nezha_bootstrap.testing.fake_v1 import FakeV1, serve_v1
from nezha_bootstrap.testing.stubrecord import StubCall, read_calls

TOKEN = "T0kenT0kenT0kenT0kenT0kenT0ken32"  # 32 of [0-9A-Za-z], like a real v0 token
MACHINE_ID = "0123456789abcdef0123456789abcdef"

IN_CI = bool(os.environ.get("CI"))


# --- guards: unit tests reach neither a subprocess nor a non-loopback address -----------------

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address: Any) -> bool:
    if isinstance(address, (str, bytes)):
        return True  # AF_UNIX
    host = address[0]
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if not _is_local(address):
        raise AssertionError(f"test tried to reach a non-loopback address: {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> Any:
    if not _is_local(address):
        raise AssertionError(f"test tried to reach a non-loopback address: {address!r}")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True)
def network_and_subprocess_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    if not (request.node.get_closest_marker("integration") or request.node.get_closest_marker("root")):
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("unit test started a subprocess; mark it @pytest.mark.integration")

        monkeypatch.setattr(subprocess, "Popen", refuse)


ZIPAPP_CACHE = tempfile.mkdtemp(prefix="nezha-test-zipapp-cache-")  # 0700
atexit.register(shutil.rmtree, ZIPAPP_CACHE, True)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No setting leaks in from the developer's shell; the redaction registry starts empty."""
    for key in list(os.environ):
        if key.startswith(("NEZHA_", "NZ_")) or key in ("NODE_NAME", "CN", "HTTPS_PROXY", "HTTP_PROXY",
                                                         "https_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost,::1")
    # A zipapp a test starts (inheriting this environment) extracts into a temporary cache, never
    # into the host's /var/cache/nezha-bootstrap (tests that mean the default location say so).
    monkeypatch.setenv("NEZHA_BOOTSTRAP_CACHE", ZIPAPP_CACHE)
    redact.forget_all()
    yield
    redact.forget_all()


# --- ports ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def refusing_port(*, handover: bool = False) -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections for as long as it is held: bound, never listening.
    Held, no other process can take it; a port picked and closed at once could be taken (by another
    test process on the machine) before the test connects to it. `handover`: bound with SO_REUSEADDR,
    so a server of the test (which sets it too) can bind and listen on it while it is held."""
    with socket.socket() as sock:
        if handover:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses every connection during the test (see `refusing_port`)."""
    with refusing_port() as port:
        yield port


# --- the fake dashboard and a test root -------------------------------------------------------

@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A private CA that no trust store holds, shared by the tests that serve TLS on 127.0.0.1."""
    return trustme.CA()


def tls_server_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server's TLS context with a certificate for 127.0.0.1 issued by `ca`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def fake() -> FakeDashboard:
    return FakeDashboard(TOKEN)


@pytest.fixture
def dashboard(fake: FakeDashboard) -> Iterator[Running]:
    with serve(fake) as running:
        yield running


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A target system root with a machine-id."""
    target = tmp_path / "root"
    (target / "etc").mkdir(parents=True)
    (target / "etc/machine-id").write_text(MACHINE_ID + "\n")
    return target


def make_runner() -> CliRunner:
    """A runner with stderr kept apart (click 8.1, the last line for Python 3.9, mixes by default)."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


@dataclass
class Outcome:
    """One CLI invocation: its result and the streams, for assertions and the leak scan."""

    result: Result
    stdout: str
    stderr: str

    @property
    def exit_code(self) -> int:
        return self.result.exit_code


class CliSession:
    """Runs `nezha-bootstrap` in-process with `env()` as its environment; keeps every outcome."""

    root: Path
    outputs: list[Outcome]

    def env(self, **overrides: str | None) -> dict[str, str | None]:
        raise NotImplementedError

    @property
    def record_dir(self) -> Path:
        """Where the stub installer and stub agents record their calls (outside the root)."""
        return self.root.parent / "stub-record"

    def invoke(self, args: list[str], input: str | None = None, **env: str | None) -> Outcome:
        result = make_runner().invoke(main, args, env=self.env(**env), input=input, catch_exceptions=False)
        outcome = Outcome(result, result.stdout, result.stderr)
        self.outputs.append(outcome)
        return outcome


@dataclass
class Cli(CliSession):
    """The v0 flow: settings pointing at the fake v0 dashboard and its stub installer."""

    dashboard: Running
    fake: FakeDashboard
    root: Path
    outputs: list[Outcome] = field(default_factory=list)

    def env(self, **overrides: str | None) -> dict[str, str | None]:
        env: dict[str, str | None] = {
            "NEZHA_DASHBOARD_URL": self.dashboard.url,
            "NEZHA_TOKEN": TOKEN,
            "NEZHA_PROBE_ADDRESS": "probe.example.test",
            "NEZHA_INSTALL_SCRIPT_URL": f"{self.dashboard.url}/install.sh",
            "NEZHA_INSTALL_SCRIPT_SHA256": self.fake.script_sha256,
            "NEZHA_BOOTSTRAP_ROOT": str(self.root),
            "NEZHA_BOOTSTRAP_REHEARSAL": "1",  # run --root with the stubs (docs: Rehearse with the fakes)
            "NEZHA_BOOTSTRAP_DEADLINE": "10",
            "NEZHA_STUB_RECORD": str(self.record_dir),
        }
        env.update(overrides)
        return env

    def __call__(self, *args: str, input: str | None = None, **env: str | None) -> Outcome:
        return self.invoke(list(args), input=input, **env)

    def calls(self) -> list[StubCall]:
        return read_calls(self.record_dir)


@pytest.fixture
def cli(dashboard: Running, fake: FakeDashboard, root: Path) -> Cli:
    return Cli(dashboard, fake, root)


@dataclass
class V1Cli(CliSession):
    """`run` against a fake v1/v2 dashboard that is also the release host."""

    running: Running
    fake: FakeV1
    root: Path
    outputs: list[Outcome] = field(default_factory=list)

    def env(self, **overrides: str | None) -> dict[str, str | None]:
        env: dict[str, str | None] = {
            "NEZHA_DASHBOARD_URL": self.running.url,
            "NEZHA_AGENT_SECRET": self.fake.agent_secret,
            "NEZHA_AGENT_BASE_URL": f"{self.running.url}/releases",
            "NEZHA_BOOTSTRAP_ROOT": str(self.root),
            "NEZHA_BOOTSTRAP_REHEARSAL": "1",  # run --root with the stubs (docs: Rehearse with the fakes)
            "NEZHA_BOOTSTRAP_DEADLINE": "5",
            "NEZHA_STUB_RECORD": str(self.record_dir),
        }
        env.update(overrides)
        return env

    def __call__(self, *args: str, **env: str | None) -> Outcome:
        return self.invoke(["run", *args], **env)

    def agent_calls(self) -> list[StubCall]:
        return read_calls(self.record_dir / "agent")

    def state(self) -> dict[str, object]:
        return dict(json.loads((self.root / "var/lib/nezha-bootstrap/state.json").read_text()))


@pytest.fixture
def fake_v1() -> FakeV1:
    """A fake v2.1+ dashboard that is also the release host of AGENT_V1 (a module may override it)."""
    fake = FakeV1(profile="v2.1+")
    fake.add_release(AGENT_V1)
    return fake


@pytest.fixture
def v1cli(fake_v1: FakeV1, root: Path) -> Iterator[V1Cli]:
    """`run` against `fake_v1`, served on 127.0.0.1."""
    with serve_v1(fake_v1) as running:
        yield V1Cli(running, fake_v1, root)


# --- the leak scan ----------------------------------------------------------------------------

def secrets_of(fake: Any) -> list[str]:
    """The v0 token and every v0 node secret (v1/v2 servers have none: their agent secret is passed as extra)."""
    return [TOKEN] + [server.secret for server in fake.servers if hasattr(server, "secret")]


class Scanned(Protocol):
    """What leak_scan reads: the runs' outputs, the root, the fake (Cli, or test_run_v1's V1Cli)."""

    outputs: list[Outcome]
    root: Path
    fake: Any


def leak_scan(cli: Scanned, extra_secrets: tuple[str, ...] = (), allowed_files: tuple[Path, ...] = ()) -> list[str]:
    """Places outside the 0600 state file, the agent unit and `allowed_files` that hold a secret."""
    needles = secrets_of(cli.fake) + list(extra_secrets)
    found = []
    for i, outcome in enumerate(cli.outputs):
        for stream, text in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
            found += [f"run {i} {stream}" for needle in needles if needle in text]
    allowed = {cli.root / "var/lib/nezha-bootstrap/state.json", cli.root / "etc/systemd/system/nezha-agent.service",
               *allowed_files}
    for path in cli.root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path not in allowed:
            data = path.read_bytes()
            found += [str(path) for needle in needles if needle.encode() in data]
    return found


@pytest.fixture
def random_token() -> str:
    return secrets.token_hex(16)
