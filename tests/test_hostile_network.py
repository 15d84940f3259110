"""Hostile networks: every step bounded, every byte capped, nothing executed that came over plain http.

Against tests/hostile.py (raw sockets on 127.0.0.1): trickles, `100 Continue` floods, encoded bombs,
handshakes cut short, redirects and certificates outside their validity.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import signal
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from nezha_bootstrap import agent, http, system
from nezha_bootstrap.cli import main
from nezha_bootstrap.config import AgentSettings, Settings, build
from nezha_bootstrap.errors import DashboardRefused, InstallerFailed, SettingsError
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.fleet import reconcile
from nezha_bootstrap.fleet.manifest import parse
from nezha_bootstrap.generation import Reply, classify
from nezha_bootstrap.retry import Transient
from tests.conftest import MACHINE_ID, TOKEN, Cli, make_runner
from tests.hostile import TRICKLE_MODES, HostileServer, Route, bomb, elapsed

pytestmark = pytest.mark.integration
SLACK = 2.0  # the documented bound: a budget or deadline plus 2 s at most (scheduling on a loaded machine)
SHA = "a" * 64
FACTS = Facts(hostname="node-1", primary_ipv4="192.0.2.10", machine_id=MACHINE_ID, systemd_running=False)


def nothing(message: str) -> None:
    pass


def serve(mode: str, **route: Any) -> HostileServer:
    return HostileServer(Route(mode, **route))


def cli_run(root: Path, url: str, *args: str, **env: str) -> tuple[int, str, float]:
    """`nezha-bootstrap run --dashboard v0` in-process against `url`: exit code, stderr, seconds."""
    settings = {"NEZHA_DASHBOARD_URL": url, "NEZHA_TOKEN": TOKEN, "NEZHA_PROBE_ADDRESS": "probe.example.test",
                "NEZHA_BOOTSTRAP_ROOT": str(root), "NEZHA_BOOTSTRAP_REHEARSAL": "1", "NEZHA_INSTALL_SCRIPT_SHA256": SHA,
                **env}
    started = time.monotonic()
    result = make_runner().invoke(main, ["run", "--dashboard", "v0", *args],
                                  env=settings, catch_exceptions=False)
    return result.exit_code, result.stderr, elapsed(started)


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def tls_context(ca: trustme.CA, *names: str, not_before: datetime.datetime | None = None,
                not_after: datetime.datetime | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("127.0.0.1",)), not_before=not_before, not_after=not_after).configure_cert(context)
    return context


# --- 1. one wall-clock budget per attempt -----------------------------------------------------------

@pytest.mark.parametrize("mode", TRICKLE_MODES)
def test_one_request_ends_within_its_budget_whatever_the_server_trickles(mode: str) -> None:
    with serve(mode) as server, http.make_client() as client:
        started = time.monotonic()
        with pytest.raises(Transient) as failure:
            http.fetch(client, "POST", f"{server.url}/api", seconds_left=1.5, cap=1000, ambiguous=True, content=b"{}")

    assert elapsed(started) < 1.5 + SLACK
    assert failure.value.ambiguous  # a POST that got no answer may have been processed


def blocking_resolver(release: threading.Event) -> Any:
    def resolve(host: str, port: int) -> list[str]:
        release.wait(30)  # a resolver that never answers (until the test ends)
        return ["127.0.0.1"]

    return resolve


@pytest.fixture
def silent_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    release = threading.Event()
    monkeypatch.setattr(http, "resolve", blocking_resolver(release))
    yield
    release.set()


def test_a_resolver_that_never_answers_counts_against_the_budget(silent_resolver: None) -> None:
    with http.make_client() as client:
        started = time.monotonic()
        with pytest.raises(Transient, match="the name dashboard.test did not resolve within"):
            http.fetch(client, "GET", "http://dashboard.test:8008/", seconds_left=1.0, cap=1000, ambiguous=False)

    assert elapsed(started) < 1.0 + SLACK


def test_the_connection_goes_to_the_resolved_address_with_the_url_host_for_tls_and_host(
    ca: trustme.CA, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up: list[str] = []
    monkeypatch.setattr(http, "resolve", lambda host, port: looked_up.append(host) or ["127.0.0.1"])
    server = HostileServer(Route("ok", body=b"hello"), tls=tls_context(ca, "dashboard.test"))
    with server, http.make_client(ca_file) as client:
        url = f"https://dashboard.test:{server.port}/x"
        answer = http.fetch(client, "GET", url, seconds_left=5, cap=1000, ambiguous=False)

    assert (answer.status, answer.body, looked_up) == (200, b"hello", ["dashboard.test"])
    assert f"host: dashboard.test:{server.port}".encode() in server.requests[0].lower()
    assert b"accept-encoding: identity" in server.requests[0].lower()


def test_every_connection_pool_of_a_client_is_bounded_proxies_from_the_environment_too(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.delenv("no_proxy", raising=False)  # a host it names would be mounted without a pool
    for client in (http.make_client(), http.make_download_client()):
        pools = [getattr(t, "_pool", None) for t in (client._transport, *client._mounts.values())]
        assert len(pools) >= 2 and all(isinstance(p._network_backend, http.BoundedBackend) for p in pools)


@pytest.mark.parametrize("mode", TRICKLE_MODES)
def test_a_v0_run_against_a_trickling_dashboard_ends_within_its_deadline_exit_4(root: Path, mode: str) -> None:
    with serve(mode) as server:
        code, stderr, seconds = cli_run(root, server.url, "--deadline", "3")

    assert code == 4, stderr
    assert seconds < 3 + 2
    assert "Traceback" not in stderr


def test_a_v0_run_with_a_silent_resolver_ends_within_its_deadline_exit_4(root: Path, silent_resolver: None) -> None:
    code, stderr, seconds = cli_run(root, "http://dashboard.test:8008", "--deadline", "3")

    assert code == 4, stderr
    assert "did not resolve" in stderr
    assert seconds < 3 + 2


class SigtermIn(threading.Timer):
    """SIGTERM to this process after `seconds`; `sent_at` is when it went (a loaded machine may send it late)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds, self.send)
        self.sent_at = float("inf")
        self.start()

    def send(self) -> None:
        self.sent_at = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)

    def to_exit(self) -> float:
        """Seconds from the signal to now (the run's end)."""
        return time.monotonic() - self.sent_at


@pytest.mark.parametrize("where", ["header_trickle", "continue", "silent", "resolver"])
def test_sigterm_ends_a_run_within_2_s_wherever_it_waits(
    root: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    if where == "resolver":
        monkeypatch.setattr(http, "resolve", blocking_resolver(release))
    # Outside the run a SIGTERM must not end pytest: the run puts this handler back when it ends.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        with serve("silent" if where == "resolver" else where) as server:
            url = "http://dashboard.test:8008" if where == "resolver" else server.url
            timer = SigtermIn(1.0)
            code, stderr, _ = cli_run(root, url, "--deadline", "60")
            to_exit = timer.to_exit()
            timer.cancel()
            timer.join()  # a signal on its way lands while the test's handler is still in place
    finally:
        signal.signal(signal.SIGTERM, previous)
        release.set()

    assert code == 143, stderr
    assert to_exit < 2  # the documented bound: a SIGTERM ends the run within 2 s
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr


# --- 2. caps count what arrives: encodings other than identity are refused ----------------------------

@pytest.mark.parametrize("encoding", ["gzip, gzip", "gzip", "deflate", "br", "zstd", "GZIP"])
def test_an_encoded_answer_is_refused_before_any_byte_is_decoded(encoding: str) -> None:
    with serve("bomb", body=bomb(16 << 20), encoding=encoding) as server, http.make_client() as client:
        with pytest.raises(DashboardRefused, match="Content-Encoding .* although only identity was accepted"):
            http.fetch(client, "GET", f"{server.url}/x", seconds_left=5, cap=64 * 1024, ambiguous=False)

    assert b"accept-encoding: identity" in server.requests[0].lower()


def test_a_register_answer_bomb_ends_the_run_with_exit_3(root: Path) -> None:
    with serve("bomb", body=bomb(64 << 20)) as server:
        code, stderr, _ = cli_run(root, server.url, "--deadline", "5")

    assert code == 3, stderr
    assert "Content-Encoding 'gzip, gzip'" in stderr


def test_a_checksums_bomb_fails_the_download_exit_5_style() -> None:
    with serve("bomb", body=bomb(64 << 20)) as server, http.make_download_client() as client:
        release = agent.Release(server.url, "1.0.0", "nezha-agent_linux_amd64.zip")
        with pytest.raises(InstallerFailed, match="Content-Encoding"):
            agent.fetch_binary(client, release, 5, nothing, io.BytesIO())


# --- 3. nothing from plain http runs unless pinned ---------------------------------------------------

def settings_problems(**fields: Any) -> list[str]:
    try:
        build(Settings(dashboard_url="https://dash.example", token=TOKEN, **fields), FACTS)
    except SettingsError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        ({"script_url": "http://mirror.example/install.sh"}, True),
        ({"script_url": "http://mirror.example/install.sh", "script_sha256": SHA}, False),
        ({"script_url": "https://mirror.example/install.sh"}, False),
        ({"script_url": "http://127.0.0.1:8008/install.sh"}, False),  # loopback: nothing crosses a network
        ({"agent": AgentSettings(base_url="http://mirror.example/releases")}, True),
        ({"agent": AgentSettings(base_url="http://mirror.example/releases", sha256=SHA)}, False),
        ({"agent": AgentSettings(base_url="https://mirror.example/releases")}, False),
        ({"agent": AgentSettings(base_url="http://127.0.0.1:8008/releases")}, False),
    ],
)
def test_an_http_source_of_what_runs_as_root_is_refused_unless_its_hash_is_pinned(
    fields: dict[str, Any], refused: bool
) -> None:
    problems = settings_problems(**fields)

    assert any("is plain http" in p and "pin the SHA-256" in p for p in problems) is refused, problems


def test_an_https_release_redirecting_to_http_is_not_followed(ca: trustme.CA, ca_file: Path) -> None:
    with serve("ok", body=b"a" * 64 + b"  nezha-agent_linux_amd64.zip\n") as plain:
        https = HostileServer(Route("redirect", location=f"{plain.url}/checksums.txt"), tls=tls_context(ca))
        with https, http.make_download_client(ca_file) as client:
            release = agent.Release(https.url, "1.0.0", "nezha-agent_linux_amd64.zip")
            with pytest.raises(InstallerFailed, match="redirected to plain http .* not followed"):
                agent.fetch_binary(client, release, 5, nothing, io.BytesIO())

    assert plain.requests == []


def test_an_https_to_https_redirect_is_still_followed(ca: trustme.CA, ca_file: Path) -> None:
    target = HostileServer(Route("ok", body=b"payload"), tls=tls_context(ca))
    with target:
        source = HostileServer(Route("redirect", location=f"{target.url}/file"), tls=tls_context(ca))
        with source, http.make_download_client(ca_file) as client:
            got = http.download(client, f"{source.url}/file", cap=100, deadline=5, notify=nothing, what="get",
                                follow_redirects=True)

    assert got == b"payload"


# --- 4. transient TLS is transient ----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["eof_handshake", "reset_handshake"])
def test_a_handshake_cut_short_is_transient(ca: trustme.CA, ca_file: Path, mode: str) -> None:
    server = HostileServer(Route(mode), tls=tls_context(ca))
    with server, http.make_client(ca_file) as client:
        with pytest.raises(Transient, match="cannot connect to 127.0.0.1"):
            http.fetch(client, "GET", f"{server.url}/", seconds_left=3, cap=100, ambiguous=False)


def test_a_dashboard_cutting_handshakes_gives_exit_4_so_the_unit_restarts(
    root: Path, ca: trustme.CA, ca_file: Path
) -> None:
    with HostileServer(Route("eof_handshake"), tls=tls_context(ca)) as server:
        code, stderr, _ = cli_run(root, server.url, "--deadline", "2", "--ca-bundle", str(ca_file))

    assert code == 4, stderr
    assert server.connections >= 2  # retried


NOW = datetime.datetime.now(datetime.timezone.utc)


@pytest.mark.parametrize(
    ("not_before", "not_after", "words"),
    [
        (NOW + datetime.timedelta(days=1), NOW + datetime.timedelta(days=30), "is not valid yet"),
        (NOW - datetime.timedelta(days=30), NOW - datetime.timedelta(days=1), "has expired"),
    ],
)
def test_a_certificate_outside_its_validity_is_transient_and_blames_the_clock(
    ca: trustme.CA, ca_file: Path, not_before: datetime.datetime, not_after: datetime.datetime, words: str
) -> None:
    server = HostileServer(Route("ok"), tls=tls_context(ca, not_before=not_before, not_after=not_after))
    with server, http.make_client(ca_file) as client:
        days = {time.strftime("%Y-%m-%d")}
        with pytest.raises(Transient) as failure:
            http.fetch(client, "GET", f"{server.url}/", seconds_left=3, cap=100, ambiguous=False)
        days.add(time.strftime("%Y-%m-%d"))  # the run may have passed midnight

    assert words in failure.value.message
    assert "the clock looks wrong" in failure.value.message
    assert any(day in failure.value.message for day in days)  # the local time is shown


def test_a_certificate_from_an_unknown_ca_is_still_refused_exit_3(root: Path, ca: trustme.CA) -> None:
    with HostileServer(Route("ok"), tls=tls_context(ca)) as server:
        code, stderr, _ = cli_run(root, server.url, "--deadline", "2")

    assert code == 3, stderr
    assert "--ca-bundle" in stderr


def test_the_unit_waits_for_the_clock_to_sync() -> None:
    unit = Path(__file__).resolve().parent.parent / "nezha_bootstrap/firstboot/templates/nezha-bootstrap.service"
    text = unit.read_text()
    after = next(line for line in text.splitlines() if line.startswith("After="))
    assert "time-sync.target" in after.split("=", 1)[1].split()


# --- 5. foreign failures end in documented exit codes -------------------------------------------------

def test_endless_redirects_of_a_download_are_an_installer_failure() -> None:
    with serve("redirect", location="/again") as server, http.make_download_client() as client:
        with pytest.raises(InstallerFailed, match="redirected more than 20 times"):
            http.download(client, f"{server.url}/again", cap=100, deadline=5, notify=nothing, what="get",
                          follow_redirects=True)


def test_a_redirect_to_another_protocol_is_refused_at_once() -> None:
    with serve("redirect", location="ftp://127.0.0.1/agent.zip") as server, http.make_download_client() as client:
        started = time.monotonic()
        with pytest.raises(InstallerFailed, match="unsupported protocol"):
            http.download(client, f"{server.url}/x", cap=100, deadline=5, notify=nothing, what="get",
                          follow_redirects=True)

    assert elapsed(started) < 1  # not retried until the deadline
    assert server.connections == 1


def test_a_decoding_error_is_a_refusal() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.DecodingError("broken", request=request)

    client = http.make_client(transport=httpx.MockTransport(handler))
    with pytest.raises(DashboardRefused, match="could not be decoded"):
        http.fetch(client, "GET", "http://127.0.0.1:1/", seconds_left=1, cap=10, ambiguous=False)


def test_deeply_nested_json_from_a_probe_is_a_refusal() -> None:
    nested = Reply(200, b"[" * 200_000)

    with pytest.raises(DashboardRefused, match="which no Nezha dashboard answers"):
        classify({"setting": nested, "register": nested, "api-tokens": nested})


@pytest.mark.parametrize("fmt, text", [("json", "[" * 200_000), ("toml", "a = " + "[" * 200_000)])
def test_a_deeply_nested_manifest_is_a_settings_error(fmt: str, text: str) -> None:
    pytest.importorskip("tomllib" if fmt == "toml" else "json")
    with pytest.raises(SettingsError, match="nested too deeply"):
        parse(text, fmt)


def test_a_ca_bundle_that_is_not_pem_is_a_settings_error_exit_2(root: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("this is not a certificate\n")

    code, stderr, _ = cli_run(root, "https://dash.example.test", "--ca-bundle", str(bundle))

    assert code == 2, stderr
    assert f"the CA bundle {bundle} is not a PEM file of certificates" in stderr
    with pytest.raises(SettingsError):
        http.make_client(bundle)


# --- 6. one deadline per step ---------------------------------------------------------------------

def test_the_release_download_shares_one_deadline_between_checksums_and_zip() -> None:
    checksums = Route("slow_ok", body=b"a" * 64 + b"  nezha-agent_linux_amd64.zip\n", delay=1.2)
    server = HostileServer(Route("body_trickle"), routes={"/v1.0.0/checksums.txt": checksums})
    with server, http.make_download_client() as client:
        release = agent.Release(server.url, "1.0.0", "nezha-agent_linux_amd64.zip")
        started = time.monotonic()
        with pytest.raises(InstallerFailed):
            agent.fetch_binary(client, release, 2.5, nothing, io.BytesIO())

    assert elapsed(started) < 2.5 + SLACK


def release_zip(binary: bytes) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("nezha-agent", binary)
    return buffer.getvalue()


def test_the_release_zip_goes_to_a_file_and_only_the_binary_to_memory(tmp_path: Path) -> None:
    import hashlib

    zipped = release_zip(b"#!/bin/sh\necho agent\n")
    sums = hashlib.sha256(zipped).hexdigest().encode() + b"  nezha-agent_linux_amd64.zip\n"
    server = HostileServer(Route("ok", body=zipped), routes={"/v1.0.0/checksums.txt": Route("ok", body=sums)})
    with server, http.make_download_client() as client, (tmp_path / "zip").open("w+b") as into:
        release = agent.Release(server.url, "1.0.0", "nezha-agent_linux_amd64.zip")
        binary = io.BytesIO()
        size = agent.fetch_binary(client, release, 5, nothing, binary)
        kept = http.download(client, f"{server.url}/x.zip", cap=len(zipped), deadline=5, notify=nothing,
                             what="get", into=into)
        into.seek(0)
        on_disk = into.read()

    assert (binary.getvalue(), size, kept, on_disk) == (b"#!/bin/sh\necho agent\n", 21, b"", zipped)


# --- 7. the installer is done when it exits -----------------------------------------------------------

def test_a_command_is_done_when_it_exits_even_if_a_child_keeps_its_output_open() -> None:
    done = system.run(["sh", "-c", "sleep 6 & echo installed; exit 0"], timeout=20)

    assert (done.returncode, done.timed_out, done.output) == (0, False, "installed\n")
    assert done.seconds < system.AFTER_EXIT + 1.5


# --- 8. one scrubbed environment for every child ------------------------------------------------------

def test_the_child_environment_has_no_secret_and_no_nz_variable() -> None:
    environ = {"PATH": "/bin", "NEZHA_TOKEN": "t", "NEZHA_AGENT_SECRET": "s", "NZ_UUID": "u", "NZ_SERVER": "x",
               "CN": "1", "LANG": "C"}

    assert system.child_env(environ, (("CN", "1"),)) == {"PATH": "/bin", "LANG": "C", "CN": "1"}


def test_install_sh_gets_neither_the_agent_secret_nor_nz_variables(cli: Cli) -> None:
    outcome = cli("run", "--dashboard", "v0", NEZHA_AGENT_SECRET="AgentSecret0123", NZ_UUID="u-1", NZ_SERVER="x:1",
                  NEZHA_TOKEN_EXTRA="kept")

    assert outcome.exit_code == 0, outcome.stderr
    [call] = cli.calls()
    assert call.argv[:1] == ["install_agent"]
    assert not {"NEZHA_AGENT_SECRET", "NEZHA_TOKEN", "NZ_UUID", "NZ_SERVER", "CN"} & set(call.env)
    assert call.env["NEZHA_TOKEN_EXTRA"] == "kept"  # only the named secrets and NZ_* go


# --- 9. dashboard data is data ------------------------------------------------------------------------

def test_control_characters_from_the_dashboard_are_escaped_in_the_table() -> None:
    server = reconcile.Server.from_api({"id": 7, "uuid": "u\x1b[2J", "name": "web\x1b]0;owned\x07\u202e"})
    rows = [{"action": "rename", "server_id": 7, "uuid": server.uuid, "server": server.name,
             "from": server.name, "to": "web-1"}]

    lines = reconcile.table(rows)

    assert all(ch.isprintable() for line in lines for ch in line)
    assert "web\\x1b]0;owned\\x07\\u202e" in lines[1]
    assert server.label() == "#7 web\\x1b]0;owned\\x07\\u202e"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"id": 7, "display_index": "first"}, "server #7 has display_index 'first', not a whole number"),
        ({"id": 7, "display_index": 1.5}, "server #7 has display_index 1.5, not a whole number"),
        ({"id": "7\x1b", "display_index": 1}, "a server has id '7\\x1b', not a whole number"),
        ({"name": "web", "display_index": 1}, "a server has no id; nothing was changed"),
    ],
)
def test_malformed_dashboard_data_is_reported_clearly(item: dict[str, Any], message: str) -> None:
    with pytest.raises(DashboardRefused) as refused:
        reconcile.Server.from_api(item)

    assert message in str(refused.value)


# --- 10. issue 18: redirects are followed by us, the agent binary is streamed, names are not loopback ---

def traced_peak_mib(action: Any) -> float:
    """The peak of Python allocations (MiB) while `action()` runs: what a decoded bomb would fill."""
    import tracemalloc

    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1] / (1 << 20)
    finally:
        tracemalloc.stop()


def release_of(server: HostileServer) -> agent.Release:
    return agent.Release(server.url, "1.0.0", "nezha-agent_linux_amd64.zip")


@pytest.mark.parametrize("where", ["checksums.txt", "nezha-agent_linux_amd64.zip"])
def test_a_redirect_with_a_gzip_bomb_body_is_refused_before_any_byte_is_decoded(where: str) -> None:
    zipped = release_zip(b"agent")
    sums = hashlib.sha256(zipped).hexdigest().encode() + b"  nezha-agent_linux_amd64.zip\n"
    routes = {"/v1.0.0/checksums.txt": Route("ok", body=sums),
              "/v1.0.0/nezha-agent_linux_amd64.zip": Route("ok", body=zipped),
              f"/v1.0.0/{where}": Route("redirect_bomb", body=bomb(64 << 20), location="/storage")}
    with HostileServer(Route("ok"), routes=routes) as server, http.make_download_client() as client:
        started = time.monotonic()

        def fetch() -> None:
            with pytest.raises(InstallerFailed, match="Content-Encoding 'gzip, gzip'"):
                agent.fetch_binary(client, release_of(server), 10, nothing, io.BytesIO())

        peak = traced_peak_mib(fetch)

    assert elapsed(started) < 2  # refused at once, not at the deadline
    assert peak < 8  # before: the body was decoded whole (64 MiB here)
    assert all(b"/storage" not in request for request in server.requests)  # never followed


def test_an_endless_redirect_body_is_left_after_4_kib_and_the_redirect_followed() -> None:
    routes = {"/file": Route("redirect_endless", location="/storage/file"),
              "/storage/file": Route("ok", body=b"x" * 100)}
    with HostileServer(Route("ok"), routes=routes) as server, http.make_download_client() as client, \
            tempfile.TemporaryFile() as into:
        started = time.monotonic()
        peak = traced_peak_mib(lambda: http.download(client, f"{server.url}/file", cap=1000, deadline=10,
                                                     notify=nothing, what="get", follow_redirects=True, into=into))
        into.seek(0)
        kept = into.read()

    assert kept == b"x" * 100  # nothing of the 302's body went to the file
    assert elapsed(started) < 2
    assert peak < 8


def test_a_loop_of_endless_redirects_ends_after_20_hops_well_within_the_deadline() -> None:
    with serve("redirect_endless", location="/again") as server, http.make_download_client() as client:
        started = time.monotonic()
        with pytest.raises(InstallerFailed, match="redirected more than 20 times"):
            http.download(client, f"{server.url}/again", cap=100, deadline=10, notify=nothing, what="get",
                          follow_redirects=True)

    assert elapsed(started) < 5
    assert server.connections == 21


def test_every_redirect_hop_shares_the_one_deadline_of_the_step() -> None:
    hops = {f"/{i}": Route("redirect", location=f"/{i + 1}") for i in range(5)}
    hops["/5"] = Route("body_trickle")  # the end of the chain trickles
    with HostileServer(Route("ok"), routes=hops) as server, http.make_download_client() as client:
        started = time.monotonic()
        with pytest.raises(InstallerFailed):
            http.download(client, f"{server.url}/0", cap=10**6, deadline=1.5, notify=nothing, what="get",
                          follow_redirects=True)

    assert elapsed(started) < 1.5 + SLACK


def test_a_redirect_is_never_followed_by_a_client_that_was_not_asked_to() -> None:
    with serve("redirect_endless", location="/storage") as server, http.make_download_client() as client:
        answer = http.fetch(client, "GET", f"{server.url}/x", seconds_left=5, cap=10**6, ambiguous=False)

    assert (answer.status, answer.location, len(answer.body)) == (302, "/storage", http.REDIRECT_BODY_CAP)
    assert server.connections == 1


def test_sigterm_stays_fast_while_a_redirect_trickles(root: Path) -> None:
    listing, secret = Route("ok", body=b'{"code": 200, "result": []}'), Route("ok", body=b"Secret0123456789ab")
    routes = {"/api/v1/server/list": listing, "/api/v1/server/register": secret,
              f"/releases/v{agent.AGENT_V0}/checksums.txt": Route("redirect_endless", location="/slow"),
              "/slow": Route("body_trickle")}
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        with HostileServer(Route("ok"), routes=routes) as server:
            timer = SigtermIn(1.0)
            code, stderr, _ = cli_run(root, server.url, "--deadline", "60", "--method", "direct",
                                      NEZHA_AGENT_BASE_URL=f"{server.url}/releases")
            to_exit = timer.to_exit()
            timer.cancel()
            timer.join()  # a signal on its way lands while the test's handler is still in place
    finally:
        signal.signal(signal.SIGTERM, previous)

    assert code == 143, stderr
    assert to_exit < 2  # the documented bound: a SIGTERM ends the run within 2 s
    assert any(b"GET /slow" in request for request in server.requests)  # it was in the redirected download


def member_zip(size: int) -> bytes:
    """A release zip whose `nezha-agent` is `size` zero bytes, deflated (127 MiB is ~130 KB)."""
    import zipfile

    buffer = io.BytesIO()
    info = zipfile.ZipInfo("nezha-agent")
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(buffer, "w") as archive, archive.open(info, "w", force_zip64=True) as member:
        for chunk in iter_zeros(size):
            member.write(chunk)
    return buffer.getvalue()


def iter_zeros(size: int) -> Iterator[bytes]:
    block = bytes(1 << 20)
    for start in range(0, size, 1 << 20):
        yield block[: min(1 << 20, size - start)]


def serve_release(zipped: bytes) -> HostileServer:
    sums = hashlib.sha256(zipped).hexdigest().encode() + b"  nezha-agent_linux_amd64.zip\n"
    return HostileServer(Route("ok", body=zipped), routes={"/v1.0.0/checksums.txt": Route("ok", body=sums)})


@pytest.mark.slow
def test_a_127_mib_member_of_a_checksum_valid_zip_streams_to_the_file_not_memory(tmp_path: Path) -> None:
    zipped = member_zip(127 << 20)
    with serve_release(zipped) as server, http.make_download_client() as client, \
            system.staged(tmp_path / "nezha-agent", 0o755) as binary:
        peak = traced_peak_mib(lambda: agent.fetch_binary(client, release_of(server), 20, nothing, binary.file))
        binary.commit()

    assert peak < 16  # before: 127 MiB read whole (284 MiB peak RSS for the run)
    assert (tmp_path / "nezha-agent").stat().st_size == 127 << 20
    assert [path.name for path in tmp_path.iterdir()] == ["nezha-agent"]  # the temporary file became it


@pytest.mark.slow
def test_a_member_over_the_cap_is_refused_and_its_partial_file_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent, "BINARY_CAP", 4 << 20)
    zipped = member_zip((4 << 20) + 1)
    with serve_release(zipped) as server, http.make_download_client() as client:
        with pytest.raises(InstallerFailed, match="over the 4194304 cap"), \
                system.staged(tmp_path / "nezha-agent", 0o755) as binary:
            agent.fetch_binary(client, release_of(server), 20, nothing, binary.file)

    assert list(tmp_path.iterdir()) == []


def test_a_member_whose_header_understates_its_size_is_stopped_at_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "BINARY_CAP", 1 << 20)
    zipped = member_zip(3 << 20)
    # The central directory says 1 MiB (the cap); the data holds 3 MiB.
    lying = zipped.replace((3 << 20).to_bytes(8, "little"), (1 << 20).to_bytes(8, "little"))
    assert lying != zipped
    with pytest.raises(InstallerFailed):
        agent.extract_binary(lying, io.BytesIO())


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "localhost.", "evil.localhost", "127.0.0.1.nip.io",
                                  "127.example.test", "[::ffff:127.0.0.1]x"])
def test_a_loopback_looking_name_is_no_exemption_from_the_pinned_hash(host: str) -> None:
    script = settings_problems(script_url=f"http://{host}:8008/install.sh")
    release = settings_problems(agent=AgentSettings(base_url=f"http://{host}:8008/releases"))

    assert any("is plain http" in p and "pin the SHA-256" in p for p in script), script
    assert any("is plain http" in p and "pin the SHA-256" in p for p in release), release


@pytest.mark.parametrize("url", ["http://127.0.0.1:8008", "http://127.1.2.3:8008", "http://[::1]:8008"])
def test_only_a_loopback_ip_literal_is_exempt(url: str) -> None:
    assert settings_problems(script_url=f"{url}/install.sh") == []
    assert settings_problems(agent=AgentSettings(base_url=f"{url}/releases")) == []


def test_a_staged_file_replaces_its_path_at_commit_and_sweeps_what_a_killed_run_left(tmp_path: Path) -> None:
    (tmp_path / "nezha-agent").write_bytes(b"old")
    (tmp_path / ".nezha-agent.k1ll3d.tmp").write_bytes(b"half of a binary")

    with system.staged(tmp_path / "nezha-agent", 0o755) as binary:
        binary.file.write(b"new")
        assert (tmp_path / "nezha-agent").read_bytes() == b"old"  # until the old agent is uninstalled
        binary.commit()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["nezha-agent"]
    assert (tmp_path / "nezha-agent").read_bytes() == b"new"
    assert (tmp_path / "nezha-agent").stat().st_mode & 0o777 == 0o755
