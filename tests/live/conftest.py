"""The conformance suite against a live Nezha dashboard: settings from NEZHA_LIVE_*, helpers, cleanup.

Run it with `pytest tests/live` and these variables (every test skips, naming what it lacks, when they
are not set; the main `pytest` run collects the suite and skips it in a fraction of a second):

  NEZHA_LIVE_URL             the dashboard (a staging one: the suite creates and deletes servers)
  NEZHA_LIVE_GENERATION      what the probes must say: v0, v1.0-1.4, v1.5-1.14, v2.0 or v2.1+
  NEZHA_LIVE_TOKEN           the v0 API token, or a v2.1+ access token (nzp_..., scopes
                             nezha:inventory:read and nezha:server:write)
  NEZHA_LIVE_USERNAME/_PASSWORD  a v1/v2 admin login (reconcile with a login; cleanup)
  NEZHA_LIVE_AGENT_SECRET    the v1/v2 agent secret
  NEZHA_LIVE_AGENT_DIR       agent release assets as published: nezha-agent_linux_<arch>.zip and
                             checksums.txt (served to the tool from 127.0.0.1 as a release host)
  NEZHA_LIVE_AGENT_VERSION   the version those assets are [default: the tool's pinned one]
  NEZHA_LIVE_PROBE_PORT      v0: the agent's gRPC port [5555]; v1/v2: [the dashboard's port]
  NEZHA_LIVE_PROBE_TLS       1/0: the agent connects with TLS [1 for an https URL, else 0]
  NEZHA_LIVE_V0_SESSION      v0: the dashboard's session cookie value (the `users.token` of a login),
                             the only credential v0 deletes servers with; without it no v0 test creates one
  NEZHA_LIVE_V0_COOKIE_NAME  v0: the session cookie's name [nezha-dashboard]
  NEZHA_LIVE_ONLINE_TIMEOUT  seconds to wait for an installed agent to show online [60]

Tests that install the real agent (NEZHA_LIVE_AGENT_DIR) run the tool as root with `--root /` in a
private mount namespace whose /etc, /opt, /run and /var are overlays over a scratch directory, with
its own /etc/machine-id: the agent's `service install` writes there, never to the host. They need
root, `unshare`, and a host where systemd does not run (the agent's install would otherwise talk to
the host's systemd); a container or VM without systemd is the place for them.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from nezha_bootstrap.config import AGENT_V0, AGENT_V1

GENERATIONS = ("v0", "v1.0-1.4", "v1.5-1.14", "v2.0", "v2.1+")
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LiveSettings:
    """NEZHA_LIVE_*, read once at import (the shared conftest clears NEZHA_* around every test)."""

    url: str = ""
    generation: str = ""
    token: str = ""
    username: str = ""
    password: str = ""
    agent_secret: str = ""
    agent_dir: str = ""
    agent_version: str = ""
    probe_port: str = ""
    probe_tls: str = ""
    v0_session: str = ""
    v0_cookie_name: str = "nezha-dashboard"
    online_timeout: float = 60.0

    @classmethod
    def from_environ(cls, environ: dict[str, str]) -> LiveSettings:
        def get(name: str, default: str = "") -> str:
            return environ.get(f"NEZHA_LIVE_{name}", default).strip()

        return cls(
            url=get("URL").rstrip("/"), generation=get("GENERATION"), token=get("TOKEN"),
            username=get("USERNAME"), password=get("PASSWORD"), agent_secret=get("AGENT_SECRET"),
            agent_dir=get("AGENT_DIR"), agent_version=get("AGENT_VERSION"), probe_port=get("PROBE_PORT"),
            probe_tls=get("PROBE_TLS"), v0_session=get("V0_SESSION"),
            v0_cookie_name=get("V0_COOKIE_NAME", "nezha-dashboard"),
            online_timeout=float(get("ONLINE_TIMEOUT", "60")),
        )

    @property
    def is_v0(self) -> bool:
        return self.generation == "v0"

    @property
    def has_pat(self) -> bool:
        return self.generation == "v2.1+" and self.token.startswith("nzp_")

    @property
    def version(self) -> str:
        return self.agent_version or (AGENT_V0 if self.is_v0 else AGENT_V1)

    @property
    def tls(self) -> bool:
        if self.probe_tls:
            return self.probe_tls.lower() in ("1", "true", "yes")
        return self.url.startswith("https://")


SETTINGS = LiveSettings.from_environ(dict(os.environ))


def need(*names: str) -> None:
    """Skip, naming the variables, unless every NEZHA_LIVE_<name> is set."""
    missing = [f"NEZHA_LIVE_{n}" for n in names if not getattr(SETTINGS, n.lower())]
    if missing:
        pytest.skip(f"set {', '.join(missing)} to run this against a live dashboard")


def need_generation(*wanted: str) -> None:
    need("URL", "GENERATION")
    if SETTINGS.generation not in GENERATIONS:
        pytest.fail(f"NEZHA_LIVE_GENERATION must be one of {', '.join(GENERATIONS)}, not {SETTINGS.generation!r}")
    if SETTINGS.generation not in wanted:
        pytest.skip(f"not applicable to a {SETTINGS.generation} dashboard (only {', '.join(wanted)})")


def need_sandbox() -> None:
    """The real agent's install runs only in a private mount namespace of a root shell without systemd."""
    need("AGENT_DIR")
    if os.geteuid() != 0:
        pytest.skip("installing the real agent needs root (a private mount namespace with overlays)")
    if shutil.which("unshare") is None:
        pytest.skip("installing the real agent needs `unshare` (util-linux)")
    if Path("/run/systemd/system").exists():
        pytest.skip("systemd runs here: the agent's `service install` would change this host; run the "
                    "agent tests in a container or VM without systemd")


def unique(word: str) -> str:
    """A name no other run uses: live-<6 random>-<word> (what the suite deletes afterwards)."""
    alphabet = string.ascii_lowercase + string.digits
    return f"live-{''.join(secrets.choice(alphabet) for _ in range(6))}-{word}"


# --- the network guard of tests/conftest.py, widened to the live dashboard's addresses -------------

_LIVE_ADDRESSES: set[str] = set()
if SETTINGS.url:
    try:
        _host = urlsplit(SETTINGS.url).hostname or ""
        _LIVE_ADDRESSES = {str(info[4][0]) for info in socket.getaddrinfo(_host, None)}
    except OSError:
        _LIVE_ADDRESSES = set()


def _allowed(address: Any) -> bool:
    if isinstance(address, (str, bytes)):
        return True
    host = str(address[0]).split("%")[0]
    try:
        return ipaddress.ip_address(host).is_loopback or host in _LIVE_ADDRESSES
    except ValueError:
        return host == "localhost"


_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if not _allowed(address):
        raise AssertionError(f"the live suite reaches only the live dashboard and loopback, not {address!r}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def network_and_subprocess_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replaces the shared guard: loopback and NEZHA_LIVE_URL's addresses; subprocesses allowed."""
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)


# --- a release host on 127.0.0.1 serving NEZHA_LIVE_AGENT_DIR as {base}/v{version}/{asset} -----------

@dataclass
class ReleaseHost:
    base_url: str
    server: ThreadingHTTPServer

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def release_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReleaseHost]:
    need("URL", "GENERATION")
    need("AGENT_DIR")
    site = tmp_path_factory.mktemp("releases")
    (site / f"v{SETTINGS.version}").symlink_to(Path(SETTINGS.agent_dir).resolve())
    handler = partial(_QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = ReleaseHost(f"http://127.0.0.1:{server.server_address[1]}", server)
    yield host
    host.stop()


@pytest.fixture
def release_host_or_none(request: pytest.FixtureRequest) -> str | None:
    """The release host's base URL, or None without NEZHA_LIVE_AGENT_DIR."""
    if not SETTINGS.agent_dir:
        return None
    return str(request.getfixturevalue("release_host").base_url)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


# --- the tool, as a process; in a sandbox when it installs the real agent ----------------------------

@dataclass
class Ran:
    exit_code: int
    stdout: str
    stderr: str
    seconds: float


def tool(*args: str, secrets_env: dict[str, str] | None = None, sandbox: Sandbox | None = None,
         timeout: float = 240) -> Ran:
    """`python -m nezha_bootstrap ARGS` (credentials only through the environment, never argv)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("NEZHA_", "NZ_"))}
    env.update(secrets_env or {})
    env["PYTHONPATH"] = str(REPO)
    argv = [sys.executable, "-m", "nezha_bootstrap", *args]
    if sandbox is not None:
        argv = sandbox.wrap(argv)
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=str(REPO))
    return Ran(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


# The mounts of a sandbox: /etc, /opt, /run and /var as overlays whose upper layers are the sandbox's.
_SANDBOX_SH = (
    'base=$1; shift; for d in etc opt run var; do '
    'mount -t overlay overlay -o "lowerdir=/$d,upperdir=$base/$d-u,workdir=$base/$d-w" "/$d" || exit 97; done; '
    'exec "$@"'
)


@dataclass
class Sandbox:
    """A throwaway system view: overlays over /etc, /opt, /run, /var, with its own machine-id."""

    base: Path
    machine_id: str = field(default_factory=lambda: secrets.token_hex(16))

    def __post_init__(self) -> None:
        for name in ("etc", "opt", "run", "var"):
            (self.base / f"{name}-u").mkdir(parents=True, exist_ok=True)
            (self.base / f"{name}-w").mkdir(parents=True, exist_ok=True)
        (self.base / "etc-u/machine-id").write_text(self.machine_id + "\n")

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run in the agent's mount namespace when it runs (a rerun sees what it sees), else a new one."""
        pid = self.agent_pid()
        if pid is not None:
            return ["nsenter", f"--mount=/proc/{pid}/ns/mnt", "--", *argv]
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _SANDBOX_SH, "sandbox",
                str(self.base), *argv]

    def file(self, path: str) -> Path:
        """Where the sandbox's upper layer keeps `path` (written inside it)."""
        top, _, rest = path.lstrip("/").partition("/")
        if top == "var" and rest.startswith("run/"):
            top, rest = "run", rest[len("run/"):]  # /var/run is /run
        return self.base / f"{top}-u" / rest

    def agent_pid(self) -> int | None:
        """The agent the init script started (its pid file), when it still runs."""
        try:
            pid = int(self.file("/run/nezha-agent.pid").read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def agent_started(self) -> float | None:
        """Wall-clock time the agent process started (the pid file's mtime)."""
        try:
            return self.file("/run/nezha-agent.pid").stat().st_mtime
        except OSError:
            return None

    def stop_agent(self) -> None:
        pid = self.agent_pid()
        if pid is None:
            return
        os.kill(pid, 15)
        for _ in range(50):
            if self.agent_pid() is None:
                return
            time.sleep(0.1)
        os.kill(pid, 9)

    def boot(self) -> float:
        """What a reboot does to the agent: stop it, empty /run, start it as the boot would (its init script;
        a systemd host is not a sandbox). Returns the wall-clock time the agent was down from."""
        self.stop_agent()
        down = time.time()
        shutil.rmtree(self.base / "run-u")
        (self.base / "run-u").mkdir()
        script = self.file("/etc/init.d/nezha-agent")
        assert script.exists(), f"no init script to boot the agent with ({script})"
        started = subprocess.run(self.wrap(["/etc/init.d/nezha-agent", "start"]), capture_output=True, text=True,
                                 timeout=30, stdin=subprocess.DEVNULL)
        assert started.returncode == 0 and self.agent_pid() is not None, (
            f"the init script did not start the agent: {started.stdout}{started.stderr}")
        return down

    def clone(self, base: Path) -> Sandbox:
        """A copy of this system with a new machine-id (what a clone gets on its first boot)."""
        base.mkdir(parents=True, exist_ok=True)
        for name in ("etc-u", "opt-u", "var-u"):  # not run-u: a clone boots, nothing of /run survives
            # cp -a: the upper layers hold whiteouts (character devices) for what was deleted
            subprocess.run(["cp", "-a", str(self.base / name), str(base / name)], check=True)
        return Sandbox(base)


def sandbox_dir() -> Path:
    """A directory of its own for a sandbox's layers (not pytest's tmp_path: a concurrent pytest run
    prunes old basetemp directories, and the layers must outlive the agent that uses them)."""
    return Path(tempfile.mkdtemp(prefix="nezha-live-sandbox-"))


def remove_sandbox(box: Sandbox) -> None:
    box.stop_agent()
    shutil.rmtree(box.base, ignore_errors=True)


@pytest.fixture
def box() -> Iterator[Sandbox]:
    """A fresh sandbox for one test (skipped where none can be made), its agent stopped and layers removed after."""
    need_sandbox()
    made = Sandbox(sandbox_dir())
    yield made
    remove_sandbox(made)


# --- the dashboard's own API, for reading back and cleaning up ----------------------------------------

def client(cookies: dict[str, str] | None = None) -> httpx.Client:
    return httpx.Client(base_url=SETTINGS.url, timeout=15, trust_env=False, cookies=cookies)


def login() -> tuple[str, dict[str, str]]:
    """POST /api/v1/login: the JWT and the cookies (nz-jwt; v2.1+ also nz-csrf)."""
    with client() as http:
        answer = http.post("/api/v1/login", json={"username": SETTINGS.username, "password": SETTINGS.password})
        body = answer.json()
        assert body.get("success") is True, f"login refused: {body}"
        return str(body["data"]["token"]), dict(answer.cookies)


def admin_headers(write: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and cookies an admin request carries: the login when given, else the access token."""
    if SETTINGS.username and SETTINGS.password:
        jwt, cookies = login()
        headers = {"Authorization": f"Bearer {jwt}"}
        if write and "nz-csrf" in cookies:
            headers["X-CSRF-Token"] = cookies["nz-csrf"]
        return headers, cookies
    if SETTINGS.has_pat:
        return {"Authorization": f"Bearer {SETTINGS.token}"}, {}
    pytest.skip("set NEZHA_LIVE_USERNAME/NEZHA_LIVE_PASSWORD (or a v2.1+ NEZHA_LIVE_TOKEN) to read servers back")


def v1_servers() -> list[dict[str, Any]]:
    headers, cookies = admin_headers()
    with client(cookies) as http:
        body = http.get("/api/v1/server", headers=headers).json()
    assert "error" not in body, body
    return list(body.get("data") or [])


def v1_groups() -> list[dict[str, Any]]:
    headers, cookies = admin_headers()
    with client(cookies) as http:
        body = http.get("/api/v1/server-group", headers=headers).json()
    assert "error" not in body, body
    return list(body.get("data") or [])


def v1_delete(kind: str, ids: list[int]) -> None:
    """POST /api/v1/batch-delete/server (or server-group) with an admin credential."""
    if not ids:
        return
    headers, cookies = admin_headers(write=True)
    with client(cookies) as http:
        body = http.post(f"/api/v1/batch-delete/{kind}", json=ids, headers=headers).json()
    assert body.get("success") is True, f"could not delete {kind} {ids}: {body} (delete them by hand)"


def v0_servers(**query: str) -> list[dict[str, Any]]:
    with client() as http:
        body = http.get("/api/v1/server/details" if query.get("id") else "/api/v1/server/list",
                        params=query, headers={"Authorization": SETTINGS.token}).json()
    assert body.get("code") == 0, body
    return list(body.get("result") or [])


def v0_delete(server_id: int) -> None:
    """DELETE /api/server/:id with the session cookie (v0 deletes with a login only; tokens are refused)."""
    with client({SETTINGS.v0_cookie_name: SETTINGS.v0_session}) as http:
        answer = http.delete(f"/api/server/{server_id}")
    assert answer.status_code == 200 and answer.json().get("code") == 200, (
        f"could not delete v0 server {server_id}: HTTP {answer.status_code} {answer.text[:200]} (delete it by hand)")
