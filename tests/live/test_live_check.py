"""Live: `check` does the agent's handshake on the probe address and proves the access token; `run`
refuses a token that may not write, or a missing group, before anything is installed. Each verdict
comes within 10 s of the start (the issue's target; the measured seconds are printed with -s).

TLS both ways: where the live probe port is plain, a TLS terminator on 127.0.0.1 (a private CA, ALPN h2,
as a proxy in front of the dashboard would be) stands in for the TLS port; where it is TLS, the live
port itself is used. Access tokens with chosen scopes are made with the admin login and revoked after.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme

from nezha_bootstrap.identity import machine_uuid

from .conftest import (
    SETTINGS,
    Ran,
    Sandbox,
    client,
    login,
    need,
    need_generation,
    need_sandbox,
    remove_sandbox,
    sandbox_dir,
    tool,
    unique,
    v1_servers,
)
from .test_live_probes import check_arguments

pytestmark = pytest.mark.integration
TARGET_SECONDS = 10.0


def probe_target() -> tuple[str, int]:
    """The live probe address and port the agent would use."""
    host = urlsplit(SETTINGS.url).hostname or "127.0.0.1"
    default = "5555" if SETTINGS.is_v0 else str(urlsplit(SETTINGS.url).port or (443 if SETTINGS.tls else 80))
    return host, int(SETTINGS.probe_port or default)


def with_mode(args: list[str], tls: bool) -> list[str]:
    return [a for a in args if a not in ("--tls", "--no-tls")] + ["--tls" if tls else "--no-tls"]


def measured(name: str, ran: Ran) -> Ran:
    print(f"\n[seconds to verdict] {SETTINGS.generation} {name}: exit {ran.exit_code} in {ran.seconds:.2f} s")
    assert ran.seconds <= TARGET_SECONDS, f"{name}: {ran.seconds:.1f} s to the verdict"
    return ran


def probe_line(ran: Ran) -> str:
    return next(line for line in ran.stdout.splitlines() if line.split()[1:2] == ["probe"])


# --- a TLS terminator in front of the live (plain) gRPC port -------------------------------------------

class Terminator:
    """TLS (ALPN h2, a private CA) on 127.0.0.1, each connection piped to the live probe address."""

    def __init__(self, target: tuple[str, int], workdir: Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = workdir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert("127.0.0.1").configure_cert(self.context)
        self.context.set_alpn_protocols(["h2"])
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            tls = self.context.wrap_socket(conn, server_side=True)
            upstream = socket.create_connection(self.target, timeout=10)
        except (OSError, ssl.SSLError):
            conn.close()
            return
        threading.Thread(target=_pipe, args=(upstream, tls), daemon=True).start()
        _pipe(tls, upstream)


def _pipe(source: Any, sink: Any) -> None:
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except (OSError, ssl.SSLError):
        pass
    finally:
        for end in (source, sink):
            try:
                end.close()
            except OSError:
                pass


@pytest.fixture
def terminator(tmp_path: Path) -> Iterator[Terminator]:
    if SETTINGS.tls:
        pytest.skip("the live probe port speaks TLS itself")
    made = Terminator(probe_target(), tmp_path)
    yield made
    made.close()


# --- TLS both ways, and a closed port ------------------------------------------------------------------

def test_check_with_tls_against_the_plain_grpc_port_fails_naming_no_tls(release_host_or_none: str | None,
                                                                       tmp_path: Path) -> None:
    need_generation("v0", "v1.0-1.4", "v1.5-1.14", "v2.0", "v2.1+")
    if SETTINGS.tls:
        pytest.skip("the live probe port speaks TLS: the other way round is the next test")
    args, env = check_arguments(release_host_or_none, tmp_path)

    ran = measured("check --tls against the plain gRPC port", tool("check", *with_mode(args, True), secrets_env=env))

    assert ran.exit_code == 3, ran.stdout + ran.stderr
    host, port = probe_target()
    assert probe_line(ran).startswith(f"FAIL  probe      {host}:{port} speaks gRPC without TLS")
    assert probe_line(ran).endswith("Use --no-tls")


def test_check_without_tls_against_a_tls_port_fails_naming_tls(release_host_or_none: str | None, tmp_path: Path,
                                                              terminator: Terminator) -> None:
    need_generation("v0", "v1.0-1.4", "v1.5-1.14", "v2.0", "v2.1+")
    args, env = check_arguments(release_host_or_none, tmp_path)
    at = ["--probe-address", "127.0.0.1", "--probe-port", str(terminator.port)]

    ran = measured("check --no-tls against a TLS port", tool("check", *with_mode(args, False), *at,
                                                             secrets_env=env))

    assert ran.exit_code == 3, ran.stdout + ran.stderr
    assert "speaks TLS" in probe_line(ran) and "Use --tls" in probe_line(ran)


def test_check_with_tls_and_the_ca_bundle_through_a_tls_terminator_passes_the_probe(
        release_host_or_none: str | None, tmp_path: Path, terminator: Terminator) -> None:
    need_generation("v0", "v1.0-1.4", "v1.5-1.14", "v2.0", "v2.1+")
    args, env = check_arguments(release_host_or_none, tmp_path)
    at = ["--probe-address", "127.0.0.1", "--probe-port", str(terminator.port), "--ca-bundle", str(terminator.ca_file)]

    ran = tool("check", *with_mode(args, True), *at, secrets_env=env)

    assert probe_line(ran) == (f"ok    probe      127.0.0.1:{terminator.port} answers the HTTP/2 preface, as gRPC "
                               "needs (TLS verified, ALPN h2)"), ran.stdout + ran.stderr


def test_check_with_a_closed_probe_port_fails_as_unreachable(release_host_or_none: str | None,
                                                            tmp_path: Path) -> None:
    need_generation("v0", "v1.0-1.4", "v1.5-1.14", "v2.0", "v2.1+")
    args, env = check_arguments(release_host_or_none, tmp_path)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]

    ran = measured("check with a closed probe port", tool(
        "check", *args, "--probe-address", "127.0.0.1", "--probe-port", str(port), secrets_env=env))

    assert ran.exit_code == 4, ran.stdout + ran.stderr
    assert probe_line(ran) == f"FAIL  probe      127.0.0.1:{port} does not accept connections: Connection refused"


# --- the access token's scopes and the group ------------------------------------------------------------

@pytest.fixture
def read_only_token() -> Iterator[str]:
    """A v2.1+ access token with only nezha:inventory:read, made with the admin login and revoked after."""
    need_generation("v2.1+")
    need("USERNAME", "PASSWORD")
    jwt, cookies = login()
    headers = {"Authorization": f"Bearer {jwt}", "X-CSRF-Token": cookies.get("nz-csrf", "")}
    with client(cookies) as http:
        made = http.post("/api/v1/api-tokens", headers=headers, json={
            "name": unique("read-only"), "scopes": ["nezha:inventory:read"], "expires_in_days": 1}).json()
    assert made.get("success") is True, made
    yield str(made["data"]["token"])
    with client(cookies) as http:
        http.delete(f"/api/v1/api-tokens/{made['data']['id']}", headers=headers)


def test_check_with_a_read_only_token_fails_naming_the_write_scope(release_host_or_none: str | None,
                                                                  tmp_path: Path, read_only_token: str) -> None:
    args, env = check_arguments(release_host_or_none, tmp_path)
    env["NEZHA_TOKEN"] = read_only_token

    ran = measured("check with a read-only token", tool("check", *args, secrets_env=env))

    assert ran.exit_code == 3, ran.stdout + ran.stderr
    assert "FAIL  token      scope check: HTTP 403: the access token lacks scope nezha:server:write" in ran.stdout
    assert read_only_token not in ran.stdout + ran.stderr


def test_check_with_a_group_that_does_not_exist_fails_unless_create_group(release_host_or_none: str | None,
                                                                         tmp_path: Path) -> None:
    need_generation("v2.1+")
    need("TOKEN")
    args, env = check_arguments(release_host_or_none, tmp_path)
    group = unique("missing")

    missing = measured("check with a missing group", tool("check", *args, "--group", group, secrets_env=env))
    created = tool("check", *args, "--group", group, "--create-group", secrets_env=env)

    assert missing.exit_code == 3, missing.stdout + missing.stderr
    assert (f"FAIL  group      group: there is no group called {group!r}; create it in the dashboard, or pass "
            "--create-group") in missing.stdout
    assert created.exit_code == 0, created.stdout + created.stderr
    assert f"ok    group      {group!r} does not exist yet; --create-group makes it" in created.stdout


# --- run refuses before anything is installed -----------------------------------------------------------

@pytest.fixture
def box(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    need_generation("v2.1+")
    need("AGENT_SECRET")
    need_sandbox()
    made = Sandbox(sandbox_dir())
    yield made
    remove_sandbox(made)


def refused_run(box: Sandbox, release: str, token: str, *args: str) -> Ran:
    run_args = ["--dashboard-url", SETTINGS.url, "--agent-base-url", release, "--agent-version", SETTINGS.version,
                "--tls" if SETTINGS.tls else "--no-tls", "--name", unique("refused"), *args]
    run_args += ["--probe-port", SETTINGS.probe_port] if SETTINGS.probe_port else []
    return tool("run", "--root", "/", *run_args, secrets_env={
        "NEZHA_AGENT_SECRET": SETTINGS.agent_secret, "NEZHA_TOKEN": token}, sandbox=box)


def nothing_installed(box: Sandbox) -> bool:
    uuid = machine_uuid(box.machine_id)
    return (not box.file("/opt/nezha/agent/nezha-agent").exists() and box.agent_pid() is None
            and not any(row.get("uuid") == uuid for row in v1_servers()))


def test_run_with_a_read_only_token_refuses_before_anything_is_installed(box: Sandbox, read_only_token: str,
                                                                        request: pytest.FixtureRequest) -> None:
    release = request.getfixturevalue("release_host").base_url

    ran = measured("run with a read-only token", refused_run(box, release, read_only_token))

    assert ran.exit_code == 3, ran.stdout + ran.stderr
    assert "the access token lacks scope nezha:server:write" in ran.stderr
    assert "downloading" not in ran.stderr
    assert nothing_installed(box)


def test_run_with_a_missing_group_refuses_before_anything_is_installed(box: Sandbox,
                                                                      request: pytest.FixtureRequest) -> None:
    need("TOKEN")
    release = request.getfixturevalue("release_host").base_url
    group = unique("missing")

    ran = measured("run with a missing group", refused_run(box, release, SETTINGS.token, "--group", group))

    assert ran.exit_code == 3, ran.stdout + ran.stderr
    assert f"no group called {group!r}" in ran.stderr
    assert "downloading" not in ran.stderr
    assert nothing_installed(box)

