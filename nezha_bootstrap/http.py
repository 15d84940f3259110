"""The one home of httpx: clients, TLS, one capped request, downloads and the checks every answer shares.

Every request of the tool goes through `fetch`: no redirects for credentialed clients, a size cap,
one deadline, and network failures translated where they enter (Transient or DashboardRefused).
"""

from __future__ import annotations

import email.utils
import json
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from nezha_bootstrap import __version__
from nezha_bootstrap.config import display_url
from nezha_bootstrap.errors import BootstrapError, DashboardRefused, InstallerFailed
from nezha_bootstrap.retry import Notify, Transient, with_retries

USER_AGENT = f"nezha-bootstrap/{__version__}"
ANSWER_CAP = 64 * 1024  # a register answer is ~20 bytes; a list of thousands of servers fits easily
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
REAL_IP_ERROR = "real ip header not found"  # every v0-v2 answer when the real-IP header is required but absent


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
    return httpx.Client(
        verify=tls_context(ca_bundle, urls),
        trust_env=True,  # HTTPS_PROXY / NO_PROXY
        follow_redirects=False,  # a redirect would turn the POST into a GET or carry the token away
        headers={"User-Agent": USER_AGENT},
        timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
        transport=transport,
        event_hooks={"response": [_set_location_aside]},
    )


def make_download_client(ca_bundle: Path | None = None, transport: httpx.BaseTransport | None = None,
                         urls: tuple[str, ...] = ()) -> httpx.Client:
    """The client for release and script downloads: verified TLS trusting the system store AND
    `ca_bundle`, env proxies, redirects followed (release hosts redirect to storage).

    It never carries a credential, so following a redirect cannot send one elsewhere; what it
    downloads is checked against a SHA-256 before use. A private-CA dashboard (`--ca-bundle`) and
    the public release host (GitHub) are both reachable with one setting.
    """
    return httpx.Client(
        verify=download_context(ca_bundle, urls),
        trust_env=True,
        follow_redirects=True,
        headers={"User-Agent": USER_AGENT},
        timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
        transport=transport,
    )


_LOCATION_ASIDE = "x-nezha-bootstrap-location"


def _set_location_aside(response: httpx.Response) -> None:
    # httpx parses a redirect's Location even when it follows nothing, and a malformed one (a bad
    # port, a broken IPv6 literal) becomes a transport error, retried as if the network failed.
    # Kept under another name, it reaches the classifier, which refuses the redirect and names it.
    location = response.headers.get("location")
    if location is not None:
        del response.headers["location"]
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
    return ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)


def download_context(ca_bundle: Path | None, urls: tuple[str, ...] = ()) -> ssl.SSLContext:
    """Verification on, trusting the system store plus `ca_bundle` (a mirror may use the private CA).

    Plain http URLs only: nothing is loaded, as in `tls_context` (an https request would fail loudly).
    """
    if urls and all(url.lower().startswith("http://") for url in urls):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context = ssl.create_default_context()
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


def download(client: httpx.Client, url: str, *, cap: int, deadline: float, notify: Notify, what: str,
             follow_redirects: bool = False, missing: str = "") -> bytes:
    """GET a file with retries and a size cap; every failure is InstallerFailed.

    `missing` is added to the message of an HTTP 404 (what the absence probably means).
    """
    shown = display_url(url)

    def attempt(seconds_left: float) -> bytes:
        answer = fetch(client, "GET", url, seconds_left=seconds_left, cap=cap, ambiguous=False,
                       follow_redirects=follow_redirects)
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
          ambiguous: bool, **kwargs: Any) -> Answer:
    """Send one request and read at most `cap` bytes; network failures become Transient or refusals."""
    timeout = httpx.Timeout(min(READ_TIMEOUT, seconds_left), connect=min(CONNECT_TIMEOUT, seconds_left))
    try:
        with client.stream(method, url, timeout=timeout, **kwargs) as response:
            body, truncated = _read_capped(response.iter_bytes(), cap, time.monotonic() + seconds_left)
            return Answer(
                status=response.status_code,
                content_type=response.headers.get("content-type", ""),
                body=body,
                truncated=truncated,
                retry_after=response.headers.get("retry-after"),
                location=response.headers.get(_LOCATION_ASIDE, response.headers.get("location")),
            )
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError, httpx.PoolTimeout) as exc:
        _raise_if_tls(exc, url)
        raise Transient(f"cannot connect to {host_of(url)}: {_reason(exc)}") from exc
    except httpx.TimeoutException as exc:
        raise Transient(f"no answer from {host_of(url)} in time", ambiguous=ambiguous) from exc
    except httpx.TransportError as exc:
        raise Transient(f"the connection to {host_of(url)} broke: {_reason(exc)}", ambiguous=ambiguous) from exc


def _read_capped(chunks: Iterator[bytes], cap: int, deadline: float) -> tuple[bytes, bool]:
    """Read until the end, `cap` bytes, or the deadline (a body trickling in must not hold us)."""
    buffer = bytearray()
    for chunk in chunks:
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the answer arrived too slowly")
        buffer.extend(chunk)
        if len(buffer) > cap:
            return bytes(buffer[:cap]), True
    return bytes(buffer), False


def host_of(url: str) -> str:
    return httpx.URL(url).host or url


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _raise_if_tls(exc: Exception, url: str) -> None:
    chain = _causes(exc)
    # httpx wraps ssl's error twice; the innermost one carries the short verify_message.
    verify = next((c for c in chain if isinstance(c, ssl.SSLCertVerificationError)), None)
    if verify is not None or any("CERTIFICATE_VERIFY_FAILED" in str(c) for c in chain):
        detail = getattr(verify, "verify_message", None) or _reason(exc)
        raise DashboardRefused(
            f"TLS verification of {host_of(url)} failed: {detail}. If the dashboard uses a "
            "certificate from a private CA, pass its PEM file with --ca-bundle (NEZHA_CA_BUNDLE); "
            "if the host name does not match the certificate, use the name it was issued for"
        ) from exc
    if any(isinstance(c, ssl.SSLError) for c in chain):
        raise DashboardRefused(f"TLS handshake with {host_of(url)} failed: {_reason(exc)}") from exc


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
    current = datetime.now(timezone.utc).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


def json_body(body: bytes) -> tuple[bool, Any]:
    """(True, value) when `body` is JSON, else (False, None): never raises, whatever a server sends."""
    try:
        return True, json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
        return False, None


def looks_html(answer: Answer) -> bool:
    head = answer.body.lstrip()[:64].lower()
    return "html" in answer.content_type.lower() or head.startswith((b"<!doctype", b"<html", b"<"))


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
