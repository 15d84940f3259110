"""http.py's promises read back: the https -> http redirect refusal in any spelling, and each size cap."""

from __future__ import annotations

import re
import socket
import ssl
import tempfile
import threading
import time
from typing import Any

import httpcore
import httpx
import pytest

from nezha_bootstrap import http
from nezha_bootstrap.errors import DashboardRefused, InstallerFailed, TLSRefused
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
        threads.append((threading.current_thread().name, host, port))
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
    assert threads == [("resolve dash.test", "dash.test", 443)]


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
    monkeypatch.setattr(http, "resolve_within", lambda host, port, seconds: given.append(seconds) or ["192.0.2.1"])
    made = http.BoundedBackend()
    made.backend = Inner()  # type: ignore[assignment]

    with http.within(time.monotonic() + 100):
        made.connect_tcp("dash.test", 443, 500.0)
        made.connect_tcp("dash.test", 443, 5.0)
    made.connect_tcp("dash.test", 443, None)

    assert 90 < given[0] <= 100 and given[1:] == [5.0, None]


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
