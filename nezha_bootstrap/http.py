"""The one home of httpx: clients, TLS, one capped request, downloads and the checks every answer shares.

Every request of the tool goes through `fetch`: no redirects for credentialed clients, a size cap
on the bytes as read (identity encoding only: a compressed answer could expand without bound), one
wall-clock budget for name resolution, connect, TLS, headers, 1xx answers and body, and network
failures translated where they enter (Transient, DashboardRefused or, for a CA bundle, SettingsError).
"""

from __future__ import annotations

import contextlib
import email.utils
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable

import httpcore
import httpx

from nezha_bootstrap import __version__, redact
from nezha_bootstrap.config import display_url
from nezha_bootstrap.errors import BootstrapError, DashboardRefused, InstallerFailed, SettingsError, TLSRefused
from nezha_bootstrap.retry import Notify, Transient, with_retries

USER_AGENT = f"nezha-bootstrap/{__version__}"
ANSWER_CAP = 64 * 1024  # a register answer is ~20 bytes; a list of thousands of servers fits easily
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
REAL_IP_ERROR = "real ip header not found"  # every v0-v2 answer when the real-IP header is required but absent
# Identity only: httpx decodes gzip/deflate/br/zstd whole chunks at a time, so 1.8 KB of `gzip, gzip`
# becomes gigabytes before any cap could count them. An answer in another encoding is refused.
HEADERS = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
# X509_V_ERR_CERT_NOT_YET_VALID and X509_V_ERR_CERT_HAS_EXPIRED: what a clock behind (a fresh VM
# before NTP syncs) or far ahead makes of a good certificate.
_CLOCK_CODES = {9: "is not valid yet", 10: "has expired"}
# What OpenSSL says when the server's first bytes are no TLS record (an HTTP/1 answer to the ClientHello):
# WRONG_VERSION_NUMBER on OpenSSL 1.1-3.1 (observed: 3.0.19 against v0.20.13 and v2.3.7), the others on
# older and newer ones. ssl.SSLError.reason carries it; its text varies.
PLAIN_REASONS = {"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG"}
# OpenSSL 3's reason for an EOF mid-handshake (Python 3.10+ raises it as SSLEOFError, 3.9 as SSLError)
CUT_REASONS = {"UNEXPECTED_EOF_WHILE_READING"}


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as read: status, the headers we use, and at most `cap` bytes of body."""

    status: int
    content_type: str
    body: bytes
    truncated: bool = False
    retry_after: str | None = None
    location: str | None = None


def make_client(ca_bundle: Path | None = None, transport: httpx.BaseTransport | None = None,
                urls: tuple[str, ...] = ()) -> httpx.Client:
    """The one HTTP client factory: verified TLS (system store or a private CA), env proxies, no redirects.

    `urls`: every URL the client will be used for, when known (see `tls_context`).
    """
    return bounded(httpx.Client(
        verify=tls_context(ca_bundle, urls),
        trust_env=True,  # HTTPS_PROXY / NO_PROXY
        follow_redirects=False,  # a redirect would turn the POST into a GET or carry the token away
        headers=HEADERS,
        timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
        transport=transport,
        event_hooks={"response": [_set_location_aside]},
    ))


def make_download_client(ca_bundle: Path | None = None, transport: httpx.BaseTransport | None = None,
                         urls: tuple[str, ...] = ()) -> httpx.Client:
    """The client for release and script downloads: verified TLS trusting the system store AND
    `ca_bundle`, env proxies. A private-CA dashboard (`--ca-bundle`) and the public release host
    (GitHub) are both reachable with one setting.

    Redirects are followed by `fetch` (release hosts redirect to storage), never by httpx: httpx reads
    and decodes every 3xx body before following it, ahead of any cap, encoding check or deadline
    (a 1.8 KB `gzip, gzip` body became 2 GiB). This client never carries a credential, and what it
    downloads is checked against a SHA-256 before use.
    """
    return bounded(httpx.Client(
        verify=download_context(ca_bundle, urls),
        trust_env=True,
        follow_redirects=False,  # `fetch(follow_redirects=True)` follows them, hop by hop
        headers=HEADERS,
        timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
        transport=transport,
        event_hooks={"response": [_set_location_aside]},
    ))


_LOCATION_ASIDE = "x-nezha-bootstrap-location"
# Header names and the method as constants: httpx compares header names in any case and upper-cases a
# method, so a change of their case in place would be an equivalent mutant (CONTRIBUTING.md).
_LOCATION = "location"
_CONTENT_ENCODING = "content-encoding"
_CONTENT_TYPE = "content-type"
_RETRY_AFTER = "retry-after"
_GET = "GET"


def _set_location_aside(response: httpx.Response) -> None:
    # httpx parses a redirect's Location even when it follows nothing, and a malformed one (a bad
    # port, a broken IPv6 literal) becomes a transport error, retried as if the network failed.
    # Kept under another name, it reaches the classifier, which refuses the redirect and names it.
    location = response.headers.get(_LOCATION)
    if location is not None:
        del response.headers[_LOCATION]
        response.headers[_LOCATION_ASIDE] = location


def tls_context(ca_bundle: Path | None, urls: tuple[str, ...] = ()) -> ssl.SSLContext:
    """Verification on, trusting the system store or `ca_bundle`.

    When every URL is plain http the trust store is not loaded (OpenSSL 3 takes ~50 ms to parse
    it): the context still requires a verified certificate and the host name, so an https request
    would fail verification loudly, never pass unchecked. A proxy's TLS never uses this context
    (httpcore gives proxies their own), and redirects are not followed.
    """
    if urls and ca_bundle is None and all(url.lower().startswith("http://") for url in urls):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    if ca_bundle is None:
        return ssl.create_default_context()
    with _ca_bundle_errors(ca_bundle):
        return ssl.create_default_context(cafile=str(ca_bundle))


def download_context(ca_bundle: Path | None, urls: tuple[str, ...] = ()) -> ssl.SSLContext:
    """Verification on, trusting the system store plus `ca_bundle` (a mirror may use the private CA).

    Plain http URLs only: nothing is loaded, as in `tls_context` (an https request would fail loudly).
    """
    if urls and all(url.lower().startswith("http://") for url in urls):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context = ssl.create_default_context()
    if ca_bundle is not None:
        with _ca_bundle_errors(ca_bundle):
            context.load_verify_locations(cafile=str(ca_bundle))
    return context


def ca_bundle_problem(path: Path) -> str | None:
    """What is wrong with a --ca-bundle file (missing, unreadable, not PEM certificates), or None."""
    if not path.is_file():
        return f"the CA bundle {path} is not a readable file"
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError) as exc:
        return f"the CA bundle {path} is not a PEM file of certificates ({_reason(exc)})"
    return None


@contextlib.contextmanager
def _ca_bundle_errors(path: Path) -> Iterator[None]:
    # ssl says "[X509: NO_CERTIFICATE_OR_CRL_FOUND]" for a file that is not PEM: a settings problem.
    try:
        yield
    except (ssl.SSLError, OSError, ValueError) as exc:
        problem = ca_bundle_problem(path) or f"the CA bundle {path} cannot be used: {_reason(exc)}"
        raise SettingsError([problem]) from exc


def download(client: httpx.Client, url: str, *, cap: int, deadline: float, notify: Notify, what: str,
             follow_redirects: bool = False, missing: str = "", into: BinaryIO | None = None) -> bytes:
    """GET a file with retries and a size cap; every failure is InstallerFailed.

    `missing` is added to the message of an HTTP 404 (what the absence probably means). With `into`
    the body goes to that file (emptied before each attempt) instead of memory, and b"" is returned.
    """
    shown = display_url(url)

    def attempt(seconds_left: float) -> bytes:
        if into is not None:
            into.seek(0)
            into.truncate()
        answer = fetch(client, _GET, url, seconds_left=seconds_left, cap=cap,
                       ambiguous=False,  # pragma: no mutate - with_retries never reads it, and a GET may be repeated
                       follow_redirects=follow_redirects, sink=into.write if into is not None else None)
        if answer.status == 429 or answer.status >= 500:
            raise Transient(f"HTTP {answer.status}", retry_after=retry_after_seconds(answer.retry_after))
        if answer.status != 200:
            hint = missing if answer.status == 404 else ""
            raise InstallerFailed(f"downloading {shown}: HTTP {answer.status}{hint}")
        if answer.truncated:
            raise InstallerFailed(f"{what}: {shown} is larger than {cap} bytes; refusing it")
        return answer.body

    try:
        return with_retries(attempt, deadline=deadline, what=what, give_up=InstallerFailed, notify=notify)
    except InstallerFailed:
        raise
    except BootstrapError as exc:  # TLS verification, or a redirect refused
        raise InstallerFailed(f"downloading {shown}: {exc}") from exc


def fetch(client: httpx.Client, method: str, url: str, *, seconds_left: float, cap: int,
          ambiguous: bool, sink: Callable[[bytes], Any] | None = None, follow_redirects: bool = False,
          **kwargs: Any) -> Answer:
    """Send one request and read at most `cap` bytes, all within `seconds_left` of wall-clock time.

    Name resolution, connect, TLS, headers, 1xx answers and the body share that one budget (see
    `BoundedBackend`); network failures become Transient or refusals. With `sink` the body is handed
    to it chunk by chunk instead of kept (a release zip need not sit in memory). With
    `follow_redirects` up to MAX_REDIRECTS redirects are followed here, every hop inside the same
    budget (see `next_hop`).
    """
    deadline = time.monotonic() + seconds_left
    with within(deadline):
        for _ in range(MAX_REDIRECTS + 1):
            answer = _fetch_one(client, method, url, deadline=deadline, cap=cap, ambiguous=ambiguous,
                                sink=sink, **kwargs)
            if not (follow_redirects and answer.status in REDIRECT_CODES and answer.location):
                return answer
            url = next_hop(url, answer.location)
    raise DashboardRefused(f"{host_of(url)} redirected more than {MAX_REDIRECTS} times; "
                           "not followed further (a redirect loop?)")


MAX_REDIRECTS = 20
REDIRECT_CODES = (301, 302, 303, 307, 308)
REDIRECT_BODY_CAP = 4096  # what is read of a 3xx answer: nothing in it is used but its Location


def next_hop(url: str, location: str) -> str:
    """The URL a redirect from `url` to `location` leads to; refused unless http(s), never https -> http."""
    try:
        target = httpx.URL(url).join(location.strip())
    except (httpx.InvalidURL, ValueError) as exc:
        raise DashboardRefused(f"{host_of(url)} redirected to an invalid URL ({_reason(exc)}); not followed") from exc
    if target.scheme not in ("http", "https"):
        raise DashboardRefused(f"{host_of(url)} redirected to {display_url(str(target))}: unsupported protocol "
                               f"{target.scheme!r}; not followed")
    if not target.host:
        raise DashboardRefused(f"{host_of(url)} redirected to {display_url(str(target))}, a URL without a host; "
                               "not followed")
    if url.lower().startswith("https:") and target.scheme == "http":
        raise DashboardRefused(
            f"{display_url(url)} redirected to plain http ({display_url(str(target))}); not followed: "
            "nothing fetched over plain http is used unless its SHA-256 was pinned"
        )
    return str(target)


def _fetch_one(client: httpx.Client, method: str, url: str, *, deadline: float, cap: int, ambiguous: bool,
               sink: Callable[[bytes], Any] | None, **kwargs: Any) -> Answer:
    """One request of `fetch`: a 3xx answer's body is read up to REDIRECT_BODY_CAP, never into `sink`."""
    left = max(0.0, deadline - time.monotonic())
    timeout = httpx.Timeout(min(READ_TIMEOUT, left), connect=min(CONNECT_TIMEOUT, left))
    try:
        with client.stream(method, url, timeout=timeout, **kwargs) as response:
            _check_encoding(response.headers.get(_CONTENT_ENCODING, ""), url)
            redirect = 300 <= response.status_code < 400
            # identity only (checked above): iter_bytes decodes nothing, the cap counts what arrives
            body, truncated = _read_capped(response.iter_bytes(), REDIRECT_BODY_CAP if redirect else cap,
                                           deadline, None if redirect else sink)
            return Answer(
                status=response.status_code,
                content_type=response.headers.get(_CONTENT_TYPE, ""),
                body=body,
                truncated=truncated and not redirect,
                retry_after=response.headers.get(_RETRY_AFTER),
                location=response.headers.get(_LOCATION_ASIDE, response.headers.get(_LOCATION)),
            )
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError, httpx.PoolTimeout) as exc:
        _raise_if_tls(exc, url)
        raise Transient(f"cannot connect to {host_port(url)}: {_reason(exc)}") from exc
    except httpx.TimeoutException as exc:
        raise Transient(f"no answer from {host_of(url)} in time", ambiguous=ambiguous) from exc
    except httpx.UnsupportedProtocol as exc:  # no retry will help
        raise DashboardRefused(f"{host_of(url)}: {_reason(exc)}") from exc
    except httpx.TransportError as exc:
        raise Transient(f"the connection to {host_of(url)} broke: {_reason(exc)}", ambiguous=ambiguous) from exc
    except httpx.DecodingError as exc:
        raise DashboardRefused(f"the answer of {host_of(url)} could not be decoded: {_reason(exc)}") from exc


def _check_encoding(encoding: str, url: str) -> None:
    if encoding.strip().lower() not in ("", "identity"):
        raise DashboardRefused(
            f"{host_of(url)} answered with Content-Encoding {encoding[:60]!r} although only identity was "
            "accepted; refusing it (a compressed answer can expand to gigabytes). A proxy in between?"
        )


def _read_capped(chunks: Iterable[bytes], cap: int, deadline: float,
                 sink: Callable[[bytes], Any] | None = None) -> tuple[bytes, bool]:
    """Read until the end, `cap` bytes, or the deadline (a body trickling in must not hold us)."""
    buffer = bytearray()
    size = 0
    for chunk in chunks:
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the answer arrived too slowly")
        if sink is None:
            buffer.extend(chunk)
        else:
            sink(chunk)  # at most one chunk past the cap, and a truncated download is refused
        size += len(chunk)
        if size > cap:
            return bytes(buffer[:cap]), True
    return bytes(buffer), False


# --- one wall-clock budget per request ------------------------------------------------------------

_budget = threading.local()  # .deadline: the monotonic time the request this thread makes must end by


@contextlib.contextmanager
def within(deadline: float) -> Iterator[None]:
    """Every network operation of this thread, in the block, ends by `deadline` (monotonic)."""
    previous = getattr(_budget, "deadline", None)
    _budget.deadline = deadline if previous is None else min(previous, deadline)
    try:
        yield
    finally:
        _budget.deadline = previous


def _clip(timeout: float | None, error: type[Exception]) -> float | None:
    """`timeout` shortened to what is left of this thread's budget; `error` once nothing is left."""
    deadline: float | None = getattr(_budget, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the time for this request ran out")
    return left if timeout is None else min(timeout, left)


def resolve(host: str, port: int) -> list[str]:
    """The addresses of `host` from the system resolver (tests replace this function in-process)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve_within(host: str, port: int, seconds: float | None) -> list[str]:
    """`resolve` in a helper thread, given up after `seconds`: getaddrinfo has no timeout of its own,
    and waiting on an Event leaves the main thread free to take a stop signal."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return [host]
    found: dict[str, Any] = {}
    done = threading.Event()

    def look() -> None:
        try:
            found["addresses"] = resolve(host, port)
        except OSError as exc:
            found["error"] = exc
        finally:
            done.set()

    threading.Thread(target=look, name=f"resolve {host}", daemon=True).start()
    if not done.wait(seconds):
        raise httpcore.ConnectTimeout(f"the name {host} did not resolve within {seconds:.1f} s")
    if not found.get("addresses"):  # an error leaves none
        raise httpcore.ConnectError(f"cannot resolve {host}: {found.get('error', 'no address')}")
    return list(found["addresses"])


class BoundedStream(httpcore.NetworkStream):
    """A connection whose every read, write and handshake ends within the budget of the request
    (httpx's timeouts are per read: a server sending a byte a second would hold it for ever)."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self.stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.stream.read(max_bytes, _clip(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.stream.write(buffer, _clip(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        # CPython bounds a whole handshake by the socket's timeout, not each read of it.
        return BoundedStream(self.stream.start_tls(ssl_context, server_hostname,
                                                   _clip(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self.stream.get_extra_info(info)


class BoundedBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, with name resolution and every later step inside the request's budget.

    It connects to the resolved address; TLS still checks (and SNI still names) the URL's host,
    which httpcore passes to `start_tls` itself.
    """

    def __init__(self) -> None:
        self.backend = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        failure: Exception | None = None  # pragma: no mutate - "" is as false as None
        for address in resolve_within(host, port, _clip(timeout, httpcore.ConnectTimeout)):
            try:
                return BoundedStream(self.backend.connect_tcp(
                    address, port, _clip(timeout, httpcore.ConnectTimeout), local_address, socket_options))
            except httpcore.ConnectError as exc:  # the next address may answer (IPv6, then IPv4)
                failure = exc
        raise failure or httpcore.ConnectError(f"no address for {host}")

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return BoundedStream(self.backend.connect_unix_socket(
            path, _clip(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self.backend.sleep(seconds)


def bounded(client: httpx.Client) -> httpx.Client:
    """Give every connection pool of `client` the BoundedBackend; returns `client`.

    httpx has no parameter for httpcore's network backend, so it is set on the pools httpx made: the
    client's own and one per proxy from the environment (tests/test_hostile_network.py checks both).
    A transport passed in (httpx.MockTransport in tests) has no pool and is left as it is.
    """
    transports = [client._transport, *client._mounts.values()]  # private: no public way, see above
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        if pool is not None:
            pool._network_backend = BoundedBackend()
    return client


def host_of(url: str) -> str:
    return httpx.URL(url).host or url


def host_port(url: str) -> str:
    """HOST:PORT that a connection to `url` goes to (IPv6 in brackets), for messages."""
    parsed = httpx.URL(url)
    host = parsed.host or url
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: Exception) -> str:
    text = redact.redact(str(exc) or type(exc).__name__)  # masked whole, then cut: no half secret survives
    return text.splitlines()[0][:200]


def _raise_if_tls(exc: Exception, url: str) -> None:
    """Refuse for good what TLS verification rejects; a handshake cut short or a clock that looks wrong
    is Transient (a dashboard restarting, a load balancer draining, a VM before NTP syncs)."""
    chain = _causes(exc)
    # httpx wraps ssl's error twice; the innermost one carries the short verify_message.
    verify = next((c for c in chain if isinstance(c, ssl.SSLCertVerificationError)), None)
    code = getattr(verify, "verify_code", None)  # absent on one built by hand
    if verify is not None and code in _CLOCK_CODES:
        local = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        raise Transient(
            f"the TLS certificate of {host_of(url)} {_CLOCK_CODES[code]} by this machine's clock "
            f"(local time {local}); the clock looks wrong (not synced with NTP yet?)"
        ) from exc
    if verify is None and any(_handshake_cut(c) for c in chain):
        return  # the caller raises Transient
    if verify is not None or any(_ssl_reason(c) == "CERTIFICATE_VERIFY_FAILED" for c in chain):
        detail = getattr(verify, "verify_message", None) or _reason(exc)
        raise TLSRefused(
            f"TLS verification of {host_of(url)} failed: {detail}. If the dashboard uses a "
            "certificate from a private CA, pass its PEM file with --ca-bundle (NEZHA_CA_BUNDLE); "
            "if the host name does not match the certificate, use the name it was issued for"
        ) from exc
    if any(_ssl_reason(c) in PLAIN_REASONS for c in chain):
        raise TLSRefused(
            f"{host_port(url)} speaks plain HTTP, not TLS: the dashboard URL says https. Use http:// in "
            "--dashboard-url, or the port that serves TLS"
        ) from exc
    if any(isinstance(c, ssl.SSLError) for c in chain):
        raise TLSRefused(f"TLS handshake with {host_of(url)} failed: {_reason(exc)}") from exc


def _handshake_cut(error: BaseException) -> bool:
    # EOF or a reset in the middle of the handshake: the peer went away, it did not refuse us.
    if isinstance(error, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError)):
        return True
    return _ssl_reason(error) in CUT_REASONS


def _ssl_reason(error: BaseException) -> str | None:
    """OpenSSL's reason of an ssl.SSLError (None for another error, or an SSLError built without one)."""
    return getattr(error, "reason", None) if isinstance(error, ssl.SSLError) else None


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Parse Retry-After as seconds or as an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is true too
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def json_body(body: bytes) -> tuple[bool, Any]:
    """(True, value) when `body` is JSON, else (False, None): never raises, whatever a server sends."""
    try:
        return True, json.loads(body.decode())  # UTF-8: bytes.decode's only default
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
        return False, None


def looks_html(answer: Answer) -> bool:
    # b"<" covers "<!doctype" and "<html" in any case: a JSON answer never starts with it
    return "html" in answer.content_type.lower() or answer.body.lstrip().startswith(b"<")


def check_status(what: str, status: int, *, location: str | None = None, retry_after: str | None = None) -> None:
    """Raise for what no endpoint accepts: a redirect (refused, named), 429 and 5xx (Transient)."""
    if 300 <= status < 400:
        target = display_url(location) if location else "(no Location header)"
        raise DashboardRefused(
            f"{what}: the dashboard answered HTTP {status} and tried to send the request to {target}; "
            "it was not followed (a redirect turns the POST into a GET and may carry the token to "
            "another host). Set the dashboard URL to the address it redirects to"
        )
    if status == 429 or status >= 500:
        ambiguous = status in (502, 504)  # a proxy may have passed the request on before failing
        raise Transient(f"HTTP {status}" + (" (too many requests)" if status == 429 else ""),
                        retry_after=retry_after_seconds(retry_after), ambiguous=ambiguous)


def check_answer(answer: Answer, what: str, cap: int) -> Any:
    """The shared checks of a dashboard answer; return its JSON value (None when it is not JSON).

    Redirects, 429 and 5xx as in `check_status`; an answer over `cap` and the real-IP refusal are
    DashboardRefused.
    """
    check_status(what, answer.status, location=answer.location, retry_after=answer.retry_after)
    if answer.truncated:
        raise DashboardRefused(
            f"{what}: the answer (HTTP {answer.status}) is larger than {cap} bytes; "
            "this is not the dashboard's answer (a proxy or portal?); only the first bytes were read"
        )
    _, value = json_body(answer.body)
    if isinstance(value, dict) and value.get("error") == REAL_IP_ERROR:
        raise DashboardRefused(
            f"{what}: the dashboard expects a real-IP header from its reverse proxy and was reached "
            "around that proxy; use the proxied URL"
        )
    return value
