"""HTTPS with a private CA, host name checks, and HTTPS_PROXY / NO_PROXY through a CONNECT proxy."""

from __future__ import annotations

import selectors
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from nezha_bootstrap.testing.fake_v0 import FakeDashboard, Running, serve
from tests.conftest import TOKEN, Cli
from tests.processes import leaks

pytestmark = pytest.mark.integration


class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 that records each target and what the client sent through it.

    Bounded: at most `slots` connections at once, each with a socket timeout.
    """

    def __init__(self, slots: int = 8) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets: list[str] = []
        self.sent = bytearray()  # client -> dashboard bytes, as the proxy sees them
        self.slots = threading.BoundedSemaphore(slots)
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if not self.slots.acquire(timeout=5):
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            with self.lock:
                self.targets.append(target if method == "CONNECT" else f"{method} {target}")
            if method != "CONNECT":
                conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            host, port = target.rsplit(":", 1)
            with socket.create_connection((host.strip("[]"), int(port)), timeout=10) as upstream:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self._relay(conn, upstream)
        except OSError:
            pass
        finally:
            conn.close()
            self.slots.release()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            while True:
                ready = selector.select(timeout=10)
                if not ready:
                    return
                for key, _ in ready:
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client:
                        with self.lock:
                            self.sent.extend(data)
                    key.data.sendall(data)


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def https_dashboard(fake: FakeDashboard, ca: trustme.CA, *names: str) -> Running:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return serve(fake, ssl_context=context)


@pytest.fixture
def tls_cli(fake: FakeDashboard, root: Path, ca: trustme.CA) -> Iterator[Cli]:
    """The cli, against the fake served over HTTPS with a certificate for 127.0.0.1 from a private CA."""
    with https_dashboard(fake, ca, "127.0.0.1", "localhost") as running:
        yield Cli(running, fake, root)


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    running = ConnectProxy()
    yield running
    running.close()


def test_a_private_ca_dashboard_works_with_ca_bundle(tls_cli: Cli, ca_file: Path) -> None:
    outcome = tls_cli("run", "-v", "--ca-bundle", str(ca_file))

    assert outcome.exit_code == 0, outcome.stderr
    assert tls_cli.dashboard.url.startswith("https://")
    assert len(tls_cli.fake.servers) == 1
    paths = [j.path for j in tls_cli.fake.journal]
    assert paths[paths.index("/install.sh"):] == [  # the script came over the same TLS, then the online look
        "/install.sh", "/_fake/agent-connect", "/api/v1/server/details"]
    assert leaks(tls_cli) == []


def test_a_private_ca_dashboard_without_ca_bundle_exits_3_saying_how_to_fix_it(tls_cli: Cli) -> None:
    outcome = tls_cli("run", "-v")

    assert outcome.exit_code == 3
    assert outcome.stderr.splitlines()[-1] == (
        "error: TLS verification of 127.0.0.1 failed: unable to get local issuer certificate. If the "
        "dashboard uses a certificate from a private CA, pass its PEM file with --ca-bundle "
        "(NEZHA_CA_BUNDLE); if the host name does not match the certificate, use the name it was issued for"
    )
    assert tls_cli.fake.journal == []  # no request, so no token, crossed the unverified connection
    assert "retrying" not in outcome.stderr
    assert leaks(tls_cli) == []


@pytest.mark.parametrize(
    ("host", "mismatch"),
    [("127.0.0.1", "IP address mismatch"), ("localhost", "Hostname mismatch")],
)
def test_a_certificate_for_another_name_exits_3(
    fake: FakeDashboard, root: Path, ca: trustme.CA, ca_file: Path, host: str, mismatch: str
) -> None:
    with https_dashboard(fake, ca, "dashboard.example.test") as running:
        cli = Cli(running, fake, root)
        outcome = cli("run", "-v", "--ca-bundle", str(ca_file),
                      NEZHA_DASHBOARD_URL=f"https://{host}:{running.port}")

    assert outcome.exit_code == 3
    error = outcome.stderr.splitlines()[-1]
    assert error.startswith(f"error: TLS verification of {host} failed: ")
    assert mismatch in error and "use the name it was issued for" in error
    assert fake.journal == []
    assert leaks(cli) == []


def test_https_proxy_carries_every_request_through_one_tunnel_target(
    tls_cli: Cli, ca_file: Path, proxy: ConnectProxy
) -> None:
    outcome = tls_cli("run", "-v", "--ca-bundle", str(ca_file),
                      HTTPS_PROXY=proxy.url, NO_PROXY=None, no_proxy=None)

    assert outcome.exit_code == 0, outcome.stderr
    assert proxy.targets and set(proxy.targets) == {f"127.0.0.1:{tls_cli.dashboard.port}"}
    # list, register, the new id read by id (ids 1-16: this one; 17-48: none, the end), install.sh, the stub
    # agent's connection, the online look
    assert [(j.path, j.query) for j in tls_cli.fake.journal if j.path.startswith("/api/")] == [
        ("/api/v1/server/list", "tag=AutoRegister"), ("/api/v1/server/register", "simple=true"),
        ("/api/v1/server/details", "id=" + ",".join(map(str, range(1, 17)))),
        ("/api/v1/server/details", "id=" + ",".join(map(str, range(17, 49)))), ("/api/v1/server/details", "id=1")]
    assert len(tls_cli.fake.journal) == 7
    assert TOKEN.encode() not in proxy.sent  # the proxy saw only TLS
    assert leaks(tls_cli) == []


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "*"])
def test_no_proxy_sends_the_requests_directly(
    tls_cli: Cli, ca_file: Path, proxy: ConnectProxy, no_proxy: str
) -> None:
    outcome = tls_cli("run", "-v", "--ca-bundle", str(ca_file),
                      HTTPS_PROXY=proxy.url, NO_PROXY=no_proxy, no_proxy=None)

    assert outcome.exit_code == 0, outcome.stderr
    assert proxy.targets == []
    assert len(tls_cli.fake.servers) == 1
    assert leaks(tls_cli) == []
