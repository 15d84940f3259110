"""http.py's promises read back: the https -> http redirect refusal in any spelling, and each size cap."""

from __future__ import annotations

import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import httpcore
import httpx
import pytest
import trustme

from nezha_bootstrap import __version__, http
from nezha_bootstrap.errors import DashboardRefused, InstallerFailed, SettingsError, TLSRefused
from nezha_bootstrap.retry import Transient

RELEASE = "https://release.test/v1/nezha-agent_linux_amd64.zip"


def nothing(message: str) -> None:
    """A notify that drops retry messages."""


class Hosts:
    """A MockTransport for several hosts: each path answers once with what `answers` says; requests kept."""

    def __init__(self, answers: dict[str, httpx.Response]) -> None:
        self.answers = answers
        self.requests: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        return self.answers.get(str(request.url), httpx.Response(404))


def download_client(hosts: Hosts) -> httpx.Client:
    return http.make_download_client(transport=httpx.MockTransport(hosts))


@pytest.mark.parametrize("location", [
    "http://plain.test/agent.zip", "HTTP://plain.test/agent.zip", "Http://plain.test/agent.zip",
    "hTTp://plain.test/agent.zip", "  http://plain.test/agent.zip", "\thttp://plain.test/agent.zip",
    " HTTP://plain.test/agent.zip ",
])
def test_an_https_download_redirected_to_plain_http_in_any_spelling_is_refused_unfollowed(location: str) -> None:
    hosts = Hosts({RELEASE: httpx.Response(302, headers={"location": location})})

    with download_client(hosts) as client, pytest.raises(InstallerFailed) as refused:
        http.download(client, RELEASE, cap=1024, deadline=2, notify=nothing, what="download the zip",
                      follow_redirects=True)

    assert "redirected to plain http" in str(refused.value)
    assert "not followed" in str(refused.value)
    assert hosts.requests == [RELEASE]


@pytest.mark.parametrize("url", ["HTTPS://release.test/v1/nezha-agent_linux_amd64.zip",
                                 "Https://release.test/v1/nezha-agent_linux_amd64.zip"])
def test_a_download_whose_https_url_is_spelled_in_capitals_is_still_refused_a_plain_http_redirect(url: str) -> None:
    hosts = Hosts({RELEASE: httpx.Response(302, headers={"location": "http://plain.test/agent.zip"})})

    with download_client(hosts) as client, pytest.raises(InstallerFailed) as refused:
        http.download(client, url, cap=1024, deadline=2, notify=nothing, what="download the zip",
                      follow_redirects=True)

    assert "redirected to plain http" in str(refused.value)
    assert hosts.requests == [RELEASE]


@pytest.mark.parametrize("location", ["https://storage.test/agent.zip", "HTTPS://storage.test/agent.zip",
                                      "/elsewhere/agent.zip", "//storage.test/agent.zip"])
def test_an_https_download_redirected_to_https_is_followed(location: str) -> None:
    target = str(httpx.URL(RELEASE).join(location.strip()))
    hosts = Hosts({RELEASE: httpx.Response(302, headers={"location": location}),
                   target: httpx.Response(200, content=b"zip bytes")})

    with download_client(hosts) as client:
        body = http.download(client, RELEASE, cap=1024, deadline=2, notify=nothing, what="download the zip",
                             follow_redirects=True)

    assert body == b"zip bytes"
    assert hosts.requests == [RELEASE, target]


def test_a_plain_http_download_may_redirect_to_plain_http() -> None:
    """Only a downgrade is refused: a plain-http source is used only with its SHA-256 pinned anyway."""
    source, target = "http://mirror.test/a.zip", "http://storage.test/a.zip"
    hosts = Hosts({source: httpx.Response(302, headers={"location": target}),
                   target: httpx.Response(200, content=b"zip bytes")})

    with download_client(hosts) as client:
        body = http.download(client, source, cap=1024, deadline=2, notify=nothing, what="download the zip",
                             follow_redirects=True)

    assert body == b"zip bytes"


@pytest.mark.parametrize(("size", "refused"), [(1023, False), (1024, False), (1025, True), (10_000, True)])
def test_a_download_over_its_cap_is_refused_and_one_at_the_cap_is_kept(size: int, refused: bool) -> None:
    hosts = Hosts({RELEASE: httpx.Response(200, content=b"z" * size)})

    with download_client(hosts) as client:
        if refused:
            with pytest.raises(InstallerFailed) as error:
                http.download(client, RELEASE, cap=1024, deadline=2, notify=nothing, what="download the zip")
            assert str(error.value) == (
                "download the zip: https://release.test/v1/nezha-agent_linux_amd64.zip is larger than 1024 bytes; "
                "refusing it")
        else:
            assert http.download(client, RELEASE, cap=1024, deadline=2, notify=nothing,
                                 what="download the zip") == b"z" * size


def test_a_download_into_a_file_over_its_cap_is_refused() -> None:
    hosts = Hosts({RELEASE: httpx.Response(200, content=b"z" * 5000)})

    with download_client(hosts) as client, tempfile.TemporaryFile() as into:
        with pytest.raises(InstallerFailed, match="is larger than 1024 bytes; refusing it"):
            http.download(client, RELEASE, cap=1024, deadline=2, notify=nothing, what="download the zip", into=into)


# --- one wall-clock budget per request: the bounded backend's parts, read back (issue 25's mutation run) -------

class Inner:
    """A stand-in for httpcore's stream and backend: records each call and the timeout it was given."""

    def __init__(self, refuse: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.refuse = refuse

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.calls.append(("read", max_bytes, timeout))
        return b"data"

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.calls.append(("write", buffer, timeout))

    def close(self) -> None:
        self.calls.append(("close",))

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        self.calls.append(("start_tls", ssl_context, server_hostname, timeout))
        return "tls stream"

    def get_extra_info(self, info: str) -> Any:
        self.calls.append(("get_extra_info", info))
        return "extra"

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> Any:
        self.calls.append(("connect_tcp", host, port, timeout, local_address, socket_options))
        if host in self.refuse:
            raise httpcore.ConnectError(f"{host} refused")
        return f"stream to {host}"

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
        self.calls.append(("connect_unix_socket", path, timeout, socket_options))
        return "unix stream"

    def sleep(self, seconds: float) -> None:
        self.calls.append(("sleep", seconds))


def test_without_a_budget_a_timeout_is_left_as_it_is() -> None:
    assert (http._clip(5.0, TimeoutError), http._clip(None, TimeoutError)) == (5.0, None)


def test_a_budget_shortens_a_timeout_to_what_is_left_and_never_lengthens_it() -> None:
    with http.within(time.monotonic() + 100):
        assert http._clip(5.0, TimeoutError) == 5.0
        assert 90 < http._clip(500.0, TimeoutError) <= 100  # type: ignore[operator]
        assert 90 < http._clip(None, TimeoutError) <= 100  # type: ignore[operator]
        with http.within(time.monotonic() + 1000):  # an inner, later deadline does not extend the outer one
            assert http._clip(None, TimeoutError) <= 100  # type: ignore[operator]
        with http.within(time.monotonic() - 1):
            with pytest.raises(httpcore.ReadTimeout, match="^the time for this request ran out$"):
                http._clip(5.0, httpcore.ReadTimeout)
        assert http._clip(None, TimeoutError) is not None  # the outer budget is back
    assert http._clip(None, TimeoutError) is None


def test_a_budget_that_ends_exactly_now_has_nothing_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "monotonic", lambda: 50.0)
    with http.within(50.0), pytest.raises(TimeoutError):
        http._clip(5.0, TimeoutError)


def test_resolve_gives_each_address_once_in_the_resolvers_order(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []

    def getaddrinfo(host: str, port: int, type: int) -> list[tuple[Any, ...]]:
        asked.append((host, port, type))
        return [(0, 0, 0, "", ("2001:db8::1", port, 0, 0)), (0, 0, 0, "", ("192.0.2.1", port)),
                (0, 0, 0, "", ("2001:db8::1", port, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    assert http.resolve("dash.test", 443) == ["2001:db8::1", "192.0.2.1"]
    assert asked == [("dash.test", 443, socket.SOCK_STREAM)]


def test_an_address_is_not_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(host: str, port: int) -> list[str]:
        raise AssertionError("an address needs no resolver")

    monkeypatch.setattr(http, "resolve", never)

    assert http.resolve_within("2001:db8::1", 443, 1.0) == ["2001:db8::1"]
    assert http.resolve_within("192.0.2.1", 443, 1.0) == ["192.0.2.1"]


@pytest.mark.parametrize(("answer", "message"), [
    (["192.0.2.1", "192.0.2.2"], None),
    (OSError("Name or service not known"), "cannot resolve dash.test: Name or service not known"),
    ([], "cannot resolve dash.test: no address"),
])
def test_a_name_is_resolved_in_a_helper_thread(monkeypatch: pytest.MonkeyPatch, answer: Any,
                                               message: str | None) -> None:
    threads = []

    def resolver(host: str, port: int) -> list[str]:
        thread = threading.current_thread()
        threads.append((thread.name, thread.daemon, host, port))  # a daemon: a hung resolver never holds the exit
        if isinstance(answer, Exception):
            raise answer
        return list(answer)

    monkeypatch.setattr(http, "resolve", resolver)

    if message is None:
        assert http.resolve_within("dash.test", 443, 30.0) == answer
    else:
        with pytest.raises(httpcore.ConnectError) as failed:
            http.resolve_within("dash.test", 443, 30.0)
        assert str(failed.value) == message
    assert threads == [("resolve dash.test", True, "dash.test", 443)]


def test_a_name_that_does_not_resolve_in_time_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def silent(host: str, port: int) -> list[str]:
        release.wait(30)
        return ["192.0.2.1"]

    monkeypatch.setattr(http, "resolve", silent)
    try:
        with pytest.raises(httpcore.ConnectTimeout) as late:
            http.resolve_within("dash.test", 443, 0.2)
    finally:
        release.set()  # the resolver never answers before this: the timeout is certain

    assert str(late.value) == "the name dash.test did not resolve within 0.2 s"


def test_a_bounded_stream_passes_each_call_on_with_its_timeout() -> None:
    inner = Inner()
    stream = http.BoundedStream(inner)  # type: ignore[arg-type]

    assert stream.read(10, 5.0) == b"data"
    assert stream.write(b"x", 6.0) is None
    tls = stream.start_tls("context", "dash.test", 7.0)  # type: ignore[arg-type]
    assert stream.get_extra_info("ssl_object") == "extra"
    stream.close()

    assert isinstance(tls, http.BoundedStream) and tls.stream == "tls stream"
    assert inner.calls == [("read", 10, 5.0), ("write", b"x", 6.0), ("start_tls", "context", "dash.test", 7.0),
                           ("get_extra_info", "ssl_object"), ("close",)]


@pytest.mark.parametrize(("step", "error"), [
    (lambda stream: stream.read(10, 5.0), httpcore.ReadTimeout),
    (lambda stream: stream.write(b"x", 5.0), httpcore.WriteTimeout),
    (lambda stream: stream.start_tls("context", "dash.test", 5.0), httpcore.ConnectTimeout),
])
def test_a_bounded_stream_step_after_the_budget_is_a_timeout_of_its_kind(step: Any, error: type[Exception]) -> None:
    inner = Inner()
    with http.within(time.monotonic() - 1), pytest.raises(error):
        step(http.BoundedStream(inner))  # type: ignore[arg-type]
    assert inner.calls == []


def backend(monkeypatch: pytest.MonkeyPatch, inner: Inner, addresses: list[str]) -> http.BoundedBackend:
    monkeypatch.setattr(http, "resolve", lambda host, port: list(addresses))
    made = http.BoundedBackend()
    made.backend = inner  # type: ignore[assignment]
    return made


def test_the_backend_connects_to_each_resolved_address_until_one_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    inner = Inner(refuse=("2001:db8::1",))

    stream = backend(monkeypatch, inner, ["2001:db8::1", "192.0.2.1", "192.0.2.2"]).connect_tcp(
        "dash.test", 443, 5.0, "192.0.2.9", ["option"])

    assert isinstance(stream, http.BoundedStream) and stream.stream == "stream to 192.0.2.1"
    assert inner.calls == [("connect_tcp", "2001:db8::1", 443, 5.0, "192.0.2.9", ["option"]),
                           ("connect_tcp", "192.0.2.1", 443, 5.0, "192.0.2.9", ["option"])]


def test_the_backend_raises_the_last_refusal_when_no_address_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    inner = Inner(refuse=("192.0.2.1", "192.0.2.2"))

    with pytest.raises(httpcore.ConnectError, match="^192.0.2.2 refused$"):
        backend(monkeypatch, inner, ["192.0.2.1", "192.0.2.2"]).connect_tcp("dash.test", 443, 5.0)


def test_the_backends_resolution_and_connect_keep_to_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    inner = Inner()
    made = backend(monkeypatch, inner, ["192.0.2.1"])
    with http.within(time.monotonic() + 100):
        made.connect_tcp("dash.test", 443, 500.0)
        made.connect_unix_socket("/run/x.sock", 500.0, ["option"])
    with http.within(time.monotonic() - 1), pytest.raises(httpcore.ConnectTimeout):
        made.connect_tcp("dash.test", 443, 5.0)
    made.sleep(0.5)

    [(_, host, port, timeout, local, options), (_, path, unix_timeout, unix_options), sleep] = inner.calls
    assert (host, port, local, options) == ("192.0.2.1", 443, None, None) and 90 < timeout <= 100
    assert (path, unix_options, sleep) == ("/run/x.sock", ["option"], ("sleep", 0.5)) and 90 < unix_timeout <= 100


def test_a_name_resolution_gets_what_is_left_of_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    given = []
    monkeypatch.setattr(http, "resolve_within",
                        lambda host, port, seconds: given.append((host, port, seconds)) or ["192.0.2.1"])
    made = http.BoundedBackend()
    made.backend = Inner()  # type: ignore[assignment]

    with http.within(time.monotonic() + 100):
        made.connect_tcp("dash.test", 443, 500.0)
        made.connect_tcp("dash.test", 443, 5.0)
    made.connect_tcp("dash.test", 443, None)

    [(host, port, seconds), *rest] = given
    assert (host, port) == ("dash.test", 443) and 90 < seconds <= 100
    assert rest == [("dash.test", 443, 5.0), ("dash.test", 443, None)]


def test_a_new_bounded_backend_wraps_httpcores_own() -> None:
    assert isinstance(http.BoundedBackend().backend, httpcore.SyncBackend)


# --- what a TLS failure means (issue 25's mutation run) ------------------------------------------------------

def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    error.verify_code, error.verify_message = code, message
    return error


def ssl_error(reason: str, text: str) -> ssl.SSLError:
    """An ssl.SSLError as the ssl module raises it: with OpenSSL's reason (one built by hand has none)."""
    error = ssl.SSLError(1, text)
    error.reason = reason
    return error


def wrapped(error: BaseException) -> httpx.ConnectError:
    """As httpx raises it: its own error, caused by httpcore's, caused by ssl's."""
    try:
        try:
            raise error
        except BaseException as inner:
            raise httpcore.ConnectError(str(inner)) from inner
    except httpcore.ConnectError as middle:
        outer = httpx.ConnectError(str(middle))
        outer.__cause__ = middle
        return outer


@pytest.mark.parametrize(("code", "said"), [(10, "has expired"), (9, "is not valid yet")])
def test_a_certificate_out_of_its_dates_blames_the_clock_and_is_retried(code: int, said: str) -> None:
    with pytest.raises(Transient) as caught:
        http._raise_if_tls(wrapped(verify_error(code, f"certificate {said}")),
                           "https://dash.test/api")

    assert re.fullmatch(
        rf"the TLS certificate of dash\.test {said} by this machine's clock \(local time "
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+\); the clock looks wrong \(not synced with NTP yet\?\)",
        caught.value.message)


def test_a_certificate_refused_for_another_reason_is_refused_for_good_with_its_words() -> None:
    with pytest.raises(DashboardRefused) as caught:
        http._raise_if_tls(wrapped(verify_error(62, "Hostname mismatch, certificate is not valid for 'dash.test'.")),
                           "https://dash.test/api")

    assert str(caught.value) == (
        "TLS verification of dash.test failed: Hostname mismatch, certificate is not valid for 'dash.test'.. If the "
        "dashboard uses a certificate from a private CA, pass its PEM file with --ca-bundle (NEZHA_CA_BUNDLE); "
        "if the host name does not match the certificate, use the name it was issued for")


@pytest.mark.parametrize("cut", [
    ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
    ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed"),
    ConnectionResetError(104, "Connection reset by peer"),
    ssl_error("UNEXPECTED_EOF_WHILE_READING", "[SSL: UNEXPECTED_EOF_WHILE_READING] unexpected eof while reading"),
])
def test_a_handshake_cut_short_is_left_to_the_caller_to_retry(cut: BaseException) -> None:
    assert http._raise_if_tls(wrapped(cut), "https://dash.test/api") is None


def test_an_ssl_error_without_openssl_reason_is_refused_not_a_crash() -> None:
    # ssl.SSLError built without OpenSSL's reason (by hand, or by some CPython paths) has no .reason
    with pytest.raises(TLSRefused, match=r"^TLS handshake with dash\.test failed: .*handshake went wrong"):
        http._raise_if_tls(wrapped(ssl.SSLError("handshake went wrong")), "https://dash.test/api")


def test_another_handshake_failure_is_refused_with_its_reason() -> None:
    failure = ssl_error("TLSV1_ALERT_PROTOCOL_VERSION",
                        "[SSL: TLSV1_ALERT_PROTOCOL_VERSION] tlsv1 alert protocol version")

    with pytest.raises(DashboardRefused) as caught:
        http._raise_if_tls(wrapped(failure), "https://dash.test/api")

    assert str(caught.value) == ("TLS handshake with dash.test failed: [SSL: TLSV1_ALERT_PROTOCOL_VERSION] tlsv1 "
                                 "alert protocol version")


@pytest.mark.parametrize(("url", "named"), [
    ("https://dash.test/api", "dash.test:443"),
    ("http://dash.test/api", "dash.test:80"),
    ("https://dash.test:8443", "dash.test:8443"),
    ("https://[2001:db8::1]/api", "[2001:db8::1]:443"),
    ("http://[2001:db8::1]:8008", "[2001:db8::1]:8008"),
])
def test_host_port_names_where_a_connection_goes(url: str, named: str) -> None:
    assert http.host_port(url) == named


def test_a_verify_failure_known_only_by_its_reason_is_refused_for_good() -> None:
    failure = ssl_error("CERTIFICATE_VERIFY_FAILED",
                        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate")

    with pytest.raises(DashboardRefused) as caught:
        http._raise_if_tls(wrapped(failure), "https://dash.test/api")

    assert str(caught.value).startswith(
        "TLS verification of dash.test failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
        "failed: self-signed certificate. If the dashboard uses a certificate from a private CA")


def test_a_plain_http_answer_to_a_tls_hello_says_so() -> None:
    failure = ssl_error("WRONG_VERSION_NUMBER", "[SSL: WRONG_VERSION_NUMBER] wrong version number")

    with pytest.raises(DashboardRefused) as caught:
        http._raise_if_tls(wrapped(failure), "https://dash.test:8008/api")

    assert str(caught.value) == ("dash.test:8008 speaks plain HTTP, not TLS: the dashboard URL says https. Use "
                                 "http:// in --dashboard-url, or the port that serves TLS")


@pytest.mark.parametrize(("content_type", "body", "html"), [
    ("Text/HTML; charset=utf-8", b'{"success": true}', True),
    ("application/json", b" \r\n\t<!DOCTYPE html><html>", True),
    ("application/json", b"<HTML><body>502 Bad Gateway</body></HTML>", True),
    ("", b"<", True),
    ("application/json", b'{"error": "<html>"}', False),
    ("text/plain", b"upstream error <html>", False),
])
def test_an_answer_looks_like_html_by_its_type_or_its_first_character(content_type: str, body: bytes,
                                                                      html: bool) -> None:
    assert http.looks_html(http.Answer(502, content_type, body)) is html


def test_the_causes_of_an_error_follow_both_the_cause_and_the_context_once_each() -> None:
    first = ValueError("first")
    second = OSError("second")
    second.__context__ = first  # raised while handling the first
    third = RuntimeError("third")
    third.__cause__ = second  # raised from the second
    first.__context__ = third  # a loop: each error is listed once

    assert http._causes(third) == [third, second, first]


# --- the two clients: verified TLS, env proxies, no redirects, the documented timeouts (issue 25's run) -------

HTTP_ONLY = ("http://127.0.0.1:8008", "HTTP://mirror.test/install.sh")
HTTPS = ("https://github.com/nezhahq/agent/releases/download/v2.3.3/checksums.txt",)
SYSTEM_CAS = ssl.create_default_context().cert_store_stats()["x509_ca"]
CLIENTS = [http.make_client, http.make_download_client]


def pool_context(client: httpx.Client) -> ssl.SSLContext:
    """The TLS context the client's connections are made with."""
    return client._transport._pool._ssl_context  # type: ignore[attr-defined,no-any-return]


def verified(context: ssl.SSLContext) -> tuple[ssl.VerifyMode, bool]:
    return context.verify_mode, context.check_hostname


@pytest.fixture
def private_ca(tmp_path: Path) -> Path:
    bundle = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    return bundle


def test_the_system_store_holds_certificates() -> None:
    """The tests below tell the system store from a private CA by the count of certificates loaded."""
    assert SYSTEM_CAS > 1


@pytest.mark.parametrize("make", CLIENTS)
def test_each_client_uses_env_proxies_follows_no_redirect_and_waits_the_documented_times(make: Any) -> None:
    with make() as client:
        assert (client.trust_env, client.follow_redirects) == (True, False)
        assert client.timeout == httpx.Timeout(30.0, connect=10.0)
        assert client.event_hooks == {"request": [], "response": [http._set_location_aside]}


@pytest.mark.parametrize("make", CLIENTS)
def test_each_client_says_no_redirects_and_env_proxies_itself_never_leaning_on_httpxs_defaults(
        make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx changed its redirect default once (0.20): the clients state both settings, whatever the default."""
    given: list[dict[str, Any]] = []
    real = httpx.Client

    def recording(**settings: Any) -> httpx.Client:
        given.append(settings)
        return real(**settings)

    monkeypatch.setattr(httpx, "Client", recording)
    with make():
        pass

    [settings] = given
    assert (settings["trust_env"], settings["follow_redirects"]) == (True, False)


@pytest.mark.parametrize("make", CLIENTS)
def test_each_client_names_itself_and_accepts_only_the_identity_encoding(make: Any) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    with make(transport=httpx.MockTransport(handler)) as client:
        client.get("http://dash.test/x")

    assert (seen[0].headers["user-agent"], seen[0].headers["accept-encoding"]) == (
        f"nezha-bootstrap/{__version__}", "identity")


@pytest.mark.parametrize("make", CLIENTS)
def test_each_clients_connections_go_through_the_bounded_backend_proxies_included(
        make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:21100")

    with make() as client:
        transports = [client._transport, *client._mounts.values()]  # a NO_PROXY host's mount is None
        backends = [type(transport._pool._network_backend) for transport in transports if transport is not None]

    assert len(backends) >= 2 and set(backends) == {http.BoundedBackend}


def test_the_dashboard_client_trusts_the_ca_bundle_alone_when_given_one(private_ca: Path) -> None:
    with http.make_client(private_ca, urls=HTTPS) as client:
        context = pool_context(client)

    assert verified(context) == (ssl.CERT_REQUIRED, True)
    assert context.cert_store_stats()["x509_ca"] == 1


@pytest.mark.parametrize(("urls", "cas"), [(HTTPS, SYSTEM_CAS), (HTTP_ONLY, 0), ((), SYSTEM_CAS)])
def test_the_dashboard_client_reads_the_system_store_only_when_a_url_may_need_it(
        urls: tuple[str, ...], cas: int) -> None:
    with http.make_client(urls=urls) as client:
        context = pool_context(client)

    assert verified(context) == (ssl.CERT_REQUIRED, True)  # an https request to a plain-http client fails
    assert context.cert_store_stats()["x509_ca"] == cas


@pytest.mark.parametrize(("urls", "cas"), [(HTTPS, SYSTEM_CAS + 1), ((), SYSTEM_CAS + 1), (HTTP_ONLY, 0)])
def test_the_download_client_trusts_the_system_store_and_the_ca_bundle_when_a_url_may_need_them(
        private_ca: Path, urls: tuple[str, ...], cas: int) -> None:
    with http.make_download_client(private_ca, urls=urls) as client:
        context = pool_context(client)

    assert verified(context) == (ssl.CERT_REQUIRED, True)
    assert context.cert_store_stats()["x509_ca"] == cas


def test_a_download_context_for_plain_http_urls_in_any_case_loads_nothing_and_still_verifies() -> None:
    context = http.download_context(None, HTTP_ONLY)

    assert verified(context) == (ssl.CERT_REQUIRED, True)
    assert context.cert_store_stats()["x509_ca"] == 0


NOT_PEM = r"is not a PEM file of certificates \(\[X509: NO_CERTIFICATE_OR_CRL_FOUND\] .*\)"


@pytest.mark.parametrize("context", [http.tls_context, http.download_context])
def test_a_ca_bundle_that_holds_no_certificate_is_a_settings_error_naming_it(
        context: Any, tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate\n")

    with pytest.raises(SettingsError) as refused:
        context(bundle, HTTPS)

    [problem] = refused.value.problems
    assert re.fullmatch(rf"the CA bundle {re.escape(str(bundle))} {NOT_PEM}", problem)
    assert refused.value.exit_code == 2


@pytest.mark.parametrize("context", [http.tls_context, http.download_context])
def test_a_ca_bundle_that_is_missing_is_a_settings_error_naming_it(context: Any, tmp_path: Path) -> None:
    bundle = tmp_path / "missing.pem"

    with pytest.raises(SettingsError) as refused:
        context(bundle, HTTPS)

    assert refused.value.problems == [f"the CA bundle {bundle} is not a readable file"]


def test_ca_bundle_problem_says_what_is_wrong_with_the_file_or_nothing(private_ca: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.pem").write_text("")

    assert http.ca_bundle_problem(private_ca) is None
    assert http.ca_bundle_problem(tmp_path) == f"the CA bundle {tmp_path} is not a readable file"
    assert re.fullmatch(rf"the CA bundle {re.escape(str(tmp_path / 'empty.pem'))} {NOT_PEM}",
                        http.ca_bundle_problem(tmp_path / "empty.pem") or "")


def test_a_client_made_elsewhere_still_has_its_redirects_location_read() -> None:
    """A client without the hook that sets Location aside (httpx's own) keeps it where httpx puts it."""
    answer = httpx.Response(302, headers={"Location": "https://other.test/x"})

    with httpx.Client(transport=httpx.MockTransport(lambda request: answer)) as client:
        got = http.fetch(client, "GET", "https://dash.test/x", seconds_left=10, cap=100, ambiguous=False)

    assert (got.status, got.location) == (302, "https://other.test/x")


def test_a_malformed_location_reaches_the_caller_unparsed_not_as_a_network_error() -> None:
    answer = httpx.Response(302, headers={"Location": "https://dash.test:99999999/x"})

    with http.make_client(transport=httpx.MockTransport(lambda request: answer)) as client:
        got = http.fetch(client, "GET", "https://dash.test/x", seconds_left=10, cap=100, ambiguous=False)

    assert (got.status, got.location) == (302, "https://dash.test:99999999/x")


# --- download: retries, refusals with their words, the file it writes (issue 25's run) ------------------------

class Answers:
    """A MockTransport answering each request with the next of `answers`; (method, url) of each kept."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, str(request.url)))
        return self.answers.pop(0)


def downloading(answers: Answers, **options: Any) -> bytes:
    # 30 s: each attempt gets 10 s, never run out on a loaded machine; a Retry-After of an hour is past it
    options = {"cap": 1024, "deadline": 30, "notify": nothing, "what": "download the zip", **options}
    with http.make_download_client(transport=httpx.MockTransport(answers)) as client:
        return http.download(client, RELEASE, **options)


def test_a_download_gets_the_file_and_returns_its_bytes() -> None:
    answers = Answers(httpx.Response(200, content=b"zip bytes"))

    assert downloading(answers) == b"zip bytes"
    assert answers.requests == [("GET", RELEASE)]


def test_a_download_into_a_file_writes_only_the_last_attempts_body_and_says_why_it_retried() -> None:
    answers = Answers(httpx.Response(503, content=b"busy, come back later"), httpx.Response(200, content=b"zip bytes"))
    notes: list[str] = []

    with tempfile.TemporaryFile() as into:
        got = downloading(answers, into=into, notify=notes.append)
        into.seek(0)
        written = into.read()

    assert (got, written) == (b"", b"zip bytes")
    assert len(answers.requests) == 2
    [note] = notes
    assert re.fullmatch(r"download the zip: HTTP 503; retrying in \d+\.\d s", note)


def test_a_download_does_not_follow_a_redirect_unless_told() -> None:
    answers = Answers(httpx.Response(302, headers={"Location": "https://storage.test/a.zip"}))

    with pytest.raises(InstallerFailed) as refused:
        downloading(answers)

    assert str(refused.value) == f"downloading {RELEASE}: HTTP 302"
    assert answers.requests == [("GET", RELEASE)]


@pytest.mark.parametrize(("status", "options", "message"), [
    (404, {"missing": " (no such release?)"}, "HTTP 404 (no such release?)"),
    (404, {}, "HTTP 404"),
    (403, {"missing": " (no such release?)"}, "HTTP 403"),
    (405, {"missing": " (no such release?)"}, "HTTP 405"),
    (400, {}, "HTTP 400"),
])
def test_an_http_refusal_fails_at_once_with_its_status_and_a_404_says_what_its_absence_means(
        status: int, options: dict[str, str], message: str) -> None:
    answers = Answers(httpx.Response(status))

    with pytest.raises(InstallerFailed) as refused:
        downloading(answers, **options)

    assert str(refused.value) == f"downloading {RELEASE}: {message}"
    assert refused.value.exit_code == 5
    assert len(answers.requests) == 1


@pytest.mark.parametrize("status", [429, 500, 503])
def test_429_and_5xx_are_retried_and_a_retry_after_past_the_deadline_gives_up_at_once(status: int) -> None:
    answers = Answers(httpx.Response(status, headers={"Retry-After": "3600"}))

    with pytest.raises(InstallerFailed) as gave_up:
        downloading(answers)

    assert str(gave_up.value) == (
        f"download the zip: HTTP {status}; the dashboard asked to wait 3600 s (Retry-After); "
        "gave up after 1 attempt(s) within the 30 s deadline")
    assert len(answers.requests) == 1


def test_a_refused_redirect_of_a_download_is_an_installer_failure_saying_why() -> None:
    answers = Answers(httpx.Response(302, headers={"Location": "http://plain.test/agent.zip"}))

    with pytest.raises(InstallerFailed) as refused:
        downloading(answers, follow_redirects=True)

    assert str(refused.value) == (
        f"downloading {RELEASE}: {RELEASE} redirected to plain http (http://plain.test/agent.zip); not followed: "
        "nothing fetched over plain http is used unless its SHA-256 was pinned")
    assert refused.value.exit_code == 5


# --- fetch: redirects followed hop by hop, each inside the one budget (issue 25's run) -------------------------

def hops(count: int) -> Callable[[httpx.Request], httpx.Response]:
    """/hop/0 redirects to /hop/1 and so on; /hop/`count` answers 200: `count` redirects in all."""
    def handler(request: httpx.Request) -> httpx.Response:
        step = int(request.url.path.rsplit("/", 1)[1])
        if step < count:
            return httpx.Response(302, headers={"Location": f"/hop/{step + 1}"})
        return httpx.Response(200, content=b"the end")

    return handler


def test_twenty_redirects_are_followed() -> None:
    with http.make_download_client(transport=httpx.MockTransport(hops(20))) as client:
        got = http.fetch(client, "GET", "https://release.test/hop/0", seconds_left=10, cap=100, ambiguous=False,
                         follow_redirects=True)

    assert (got.status, got.body) == (200, b"the end")


def test_a_twenty_first_redirect_is_refused_as_a_loop() -> None:
    with http.make_download_client(transport=httpx.MockTransport(hops(21))) as client, \
            pytest.raises(DashboardRefused) as refused:
        http.fetch(client, "GET", "https://release.test/hop/0", seconds_left=10, cap=100, ambiguous=False,
                   follow_redirects=True)

    assert str(refused.value) == "release.test redirected more than 20 times; not followed further (a redirect loop?)"


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """time.monotonic stands still at the value in the list (tests move it by hand)."""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    return now


@pytest.mark.parametrize(("seconds_left", "timeouts"), [
    (5.0, {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}),
    (20.0, {"connect": 10.0, "read": 20.0, "write": 20.0, "pool": 20.0}),
    (100.0, {"connect": 10.0, "read": 30.0, "write": 30.0, "pool": 30.0}),
])
def test_a_request_runs_inside_its_budget_with_httpx_timeouts_no_longer_than_documented(
        frozen: list[float], seconds_left: float, timeouts: dict[str, float]) -> None:
    seen: list[tuple[Any, float | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.extensions["timeout"], http._clip(None, TimeoutError)))
        return httpx.Response(200)

    with http.make_client(transport=httpx.MockTransport(handler)) as client:
        http.fetch(client, "GET", "https://dash.test/x", seconds_left=seconds_left, cap=100, ambiguous=False)

    assert seen == [(timeouts, seconds_left)]  # the budget: what the bounded backend clips every step to
    assert http._clip(None, TimeoutError) is None  # and only while the request runs


@pytest.mark.parametrize("location", ["http://[::1", "https://dash.test:abc/x"])
def test_a_redirect_to_an_invalid_url_is_refused_saying_so(location: str) -> None:
    with pytest.raises(DashboardRefused) as refused:
        http.next_hop("https://release.test/a.zip", location)

    assert re.fullmatch(r"release\.test redirected to an invalid URL \(Invalid port: '[^']+'\); not followed",
                        str(refused.value))


def test_a_redirect_to_another_protocol_is_refused_naming_it() -> None:
    with pytest.raises(DashboardRefused) as refused:
        http.next_hop("https://release.test/a.zip", "ftp://mirror.test/a.zip")

    assert str(refused.value) == ("release.test redirected to ftp://mirror.test/a.zip: unsupported protocol 'ftp'; "
                                  "not followed")


def test_a_redirect_to_a_url_without_a_host_is_refused_saying_so() -> None:
    with pytest.raises(DashboardRefused) as refused:
        http.next_hop("http://mirror.test/a.zip", "https:///a.zip")

    assert str(refused.value) == "mirror.test redirected to https:/a.zip, a URL without a host; not followed"


# --- one answer as read: its encoding, its caps, the errors of a transport (issue 25's run) --------------------

def answered(response: httpx.Response, **options: Any) -> http.Answer:
    options = {"seconds_left": 10, "cap": 100, "ambiguous": False, **options}
    with http.make_client(transport=httpx.MockTransport(lambda request: response)) as client:
        return http.fetch(client, "GET", "https://dash.test/x", **options)


@pytest.mark.parametrize("encoding", ["identity", "Identity", " IDENTITY ", ""])
def test_an_answer_in_the_identity_encoding_is_read(encoding: str) -> None:
    got = answered(httpx.Response(200, content=b"{}", headers={"Content-Encoding": encoding}))

    assert got.body == b"{}"


@pytest.mark.parametrize(("encoding", "shown"), [
    ("gzip", "'gzip'"), ("identity, gzip", "'identity, gzip'"), ("x" * 100, repr("x" * 60)),
])
def test_an_answer_in_another_encoding_is_refused_unread(encoding: str, shown: str) -> None:
    with pytest.raises(DashboardRefused) as refused:
        answered(httpx.Response(200, content=b"\x1f\x8b", headers={"Content-Encoding": encoding}))

    assert str(refused.value) == (
        f"dash.test answered with Content-Encoding {shown} although only identity was accepted; refusing it "
        "(a compressed answer can expand to gigabytes). A proxy in between?")


@pytest.mark.parametrize("status", [300, 302, 308, 399])
def test_a_redirects_body_is_read_to_its_own_small_cap_never_into_the_sink_and_never_called_truncated(
        status: int) -> None:
    sunk: list[bytes] = []

    got = answered(httpx.Response(status, content=b"r" * 10_000), sink=sunk.append)

    assert (got.status, got.body, got.truncated, sunk) == (status, b"r" * http.REDIRECT_BODY_CAP, False, [])


@pytest.mark.parametrize("status", [200, 299, 400, 404])
def test_any_other_body_goes_to_the_sink_and_past_the_cap_is_called_truncated(status: int) -> None:
    sunk: list[bytes] = []

    got = answered(httpx.Response(status, content=b"a" * 10_000), sink=sunk.append)

    assert (got.status, got.body, got.truncated, b"".join(sunk)) == (status, b"", True, b"a" * 10_000)


@pytest.mark.parametrize(("error", "message"), [
    (httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."),
     "dash.test: Request URL has an unsupported protocol 'ftp://'."),
    (httpx.DecodingError("Error -3 while decompressing data"),
     "the answer of dash.test could not be decoded: Error -3 while decompressing data"),
])
def test_a_transport_error_no_retry_can_mend_is_refused_naming_the_host(error: Exception, message: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with http.make_client(transport=httpx.MockTransport(handler)) as client, \
            pytest.raises(DashboardRefused) as refused:
        http.fetch(client, "GET", "https://dash.test/x", seconds_left=10, cap=100, ambiguous=False)

    assert str(refused.value) == message


def test_the_cap_counts_every_chunk_read(frozen: list[float]) -> None:
    sunk: list[bytes] = []

    assert http._read_capped([b"aaa", b"bbb", b"ccc"], 5, 1001.0) == (b"aaabb", True)
    assert http._read_capped([b"aaa", b"bbb", b"ccc"], 5, 1001.0, sunk.append) == (b"", True)
    assert sunk == [b"aaa", b"bbb"]  # at most one chunk past the cap
    assert http._read_capped([b"aaa", b"bb"], 5, 1001.0) == (b"aaabb", False)


def test_a_body_is_read_up_to_its_deadline_and_not_a_chunk_after(frozen: list[float]) -> None:
    assert http._read_capped([b"aaa"], 100, 1000.0) == (b"aaa", False)  # at the deadline exactly: in time
    with pytest.raises(httpx.ReadTimeout) as late:
        http._read_capped([b"aaa"], 100, 999.0)
    assert str(late.value) == "the answer arrived too slowly"


# --- the budget's edges (issue 25's run) ----------------------------------------------------------------------

def test_a_thread_that_never_had_a_budget_leaves_timeouts_as_they_are() -> None:
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.extend([http._clip(5.0, TimeoutError),
                                                         http._clip(None, TimeoutError)]))
    thread.start()
    thread.join()

    assert got == [5.0, None]


def test_half_a_second_left_is_half_a_second(frozen: list[float]) -> None:
    with http.within(1000.5):
        assert http._clip(5.0, TimeoutError) == 0.5


def test_a_connect_after_a_resolution_that_used_up_the_budget_is_a_connect_timeout(
        monkeypatch: pytest.MonkeyPatch, frozen: list[float]) -> None:
    def slow(host: str, port: int, seconds: float) -> list[str]:
        frozen[0] += seconds  # the resolver took all the time it was given
        return ["192.0.2.1"]

    monkeypatch.setattr(http, "resolve_within", slow)
    made = http.BoundedBackend()
    made.backend = inner = Inner()  # type: ignore[assignment]

    with http.within(1005.0), pytest.raises(httpcore.ConnectTimeout, match="^the time for this request ran out$"):
        made.connect_tcp("dash.test", 443, 10.0)
    assert inner.calls == []


def test_a_name_with_no_address_is_a_connect_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "resolve_within", lambda host, port, seconds: [])

    with pytest.raises(httpcore.ConnectError, match="^no address for dash.test$"):
        http.BoundedBackend().connect_tcp("dash.test", 443, 5.0)


def test_a_unix_socket_connect_keeps_its_shorter_timeout_and_to_the_budget() -> None:
    made = http.BoundedBackend()
    made.backend = inner = Inner()  # type: ignore[assignment]

    with http.within(time.monotonic() + 100):
        made.connect_unix_socket("/run/x.sock", 5.0)
    with http.within(time.monotonic() - 1), pytest.raises(httpcore.ConnectTimeout):
        made.connect_unix_socket("/run/x.sock", 5.0)

    assert inner.calls == [("connect_unix_socket", "/run/x.sock", 5.0, None)]


# --- small readers (issue 25's run) ---------------------------------------------------------------------------

def test_the_reason_of_an_error_is_its_first_line_cut_at_200_characters_or_its_type() -> None:
    assert http._reason(ValueError()) == "ValueError"
    assert http._reason(ValueError("first line\nsecond line")) == "first line"
    assert http._reason(ValueError("x" * 300)) == "x" * 200


def test_only_an_ssl_error_has_an_openssl_reason() -> None:
    other = OSError("not from ssl")
    other.reason = "CERTIFICATE_VERIFY_FAILED"  # type: ignore[attr-defined]

    assert http._ssl_reason(other) is None
    assert http._ssl_reason(ssl_error("WRONG_VERSION_NUMBER", "wrong version number")) == "WRONG_VERSION_NUMBER"


@pytest.fixture
def tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The local time zone nine hours ahead of UTC (a POSIX TZ string: no tzdata needed)."""
    monkeypatch.setenv("TZ", "JST-9")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


TEN_TO_TEN_UTC = 1796637540.0  # 2026-12-07 09:59:00 UTC


@pytest.mark.parametrize("value", [
    "Mon, 07 Dec 2026 10:00:00 GMT",
    "Mon, 07 Dec 2026 12:00:00 +0200",  # an offset is kept, not taken as UTC
    "Mon, 07 Dec 2026 10:00:00 -0000",  # no zone at all (a naive date): UTC, not the local time
])
def test_a_retry_after_date_in_any_zone_is_the_seconds_until_then(tokyo: None, value: str) -> None:
    assert http.retry_after_seconds(value, now=TEN_TO_TEN_UTC) == 60.0


def test_a_retry_after_date_is_counted_from_the_clock_when_no_time_is_given() -> None:
    in_an_hour = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3600))

    assert 3500 < http.retry_after_seconds(in_an_hour) <= 3600  # type: ignore[operator]


@pytest.mark.parametrize("status", [300, 301, 399])
def test_every_3xx_answer_is_a_refused_redirect(status: int) -> None:
    with pytest.raises(DashboardRefused) as refused:
        http.check_status("register", status)

    assert str(refused.value).startswith(
        f"register: the dashboard answered HTTP {status} and tried to send the request to (no Location header); "
        "it was not followed")
