"""The agent's port as the agent meets it, looked at while the node comes online (issue 17).

Both real agents log nothing about their connection unless their debug switch is on (agent v0.20.5's
`util.Println(agentConfig.Debug, ...)`, agent v2.3.3's logger enabled by `debug`; observed: no line at
all for a refused secret, a TLS mismatch or a closed port). So the run looks at the port itself, the
way the agent's gRPC client opens it: a TCP connection, then TLS (when --tls) or HTTP/2 with prior
knowledge (what grpc-go speaks in plain text), and the server's first answer. Nothing is sent but the
TLS handshake and the HTTP/2 preface: no credential crosses.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

from nezha_bootstrap.online import NOTHING, Look, Outcome

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
ANSWER_WAIT = 3.0  # seconds for the TCP connection, the handshake and the first answer each
CONFIRM_AFTER = 1.0  # a closed or silent port counts once a second probe at least this much later agrees
CONFIRMED = (Outcome.PORT_REFUSED, Outcome.PORT_SILENT)  # may pass (a dashboard restarting); TLS ones do not


def probe(host: str, port: int, tls: bool, context: Callable[[], ssl.SSLContext], timeout: float | None = None) -> Look:
    """One look at the port: a failure the agent would meet, or NOTHING when it speaks as expected.

    `context` verifies as the agent would (the system store, plus --ca-bundle); a certificate it does not
    trust still shows that the port speaks TLS."""
    timeout = timeout or ANSWER_WAIT
    address = f"{host}:{port}"
    with _connect(host, port, timeout) as opened:
        if isinstance(opened, Look):
            return opened
        if tls:
            return _tls(opened, host, address, context, timeout)
        seen = _plain(opened, address, timeout)
    if seen is not None:
        return seen
    # No HTTP/2 answer: Go's TLS server (the v1/v2 dashboards' https port) closes without a word on a
    # plain preface. Whether the port speaks TLS tells a TLS port from anything else.
    with _connect(host, port, timeout) as opened:
        if isinstance(opened, Look) or _tls(opened, host, address, context, timeout).outcome is not None:
            return NOTHING
    return Look(Outcome.PLAIN_ON_TLS, f"HTTP/2 preface to {address}: no answer, but the port speaks TLS")


@contextlib.contextmanager
def _connect(host: str, port: int, timeout: float) -> Iterator[socket.socket | Look]:
    address = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        yield Look(Outcome.PORT_REFUSED, f"connect to {address}: connection refused")
        return
    except (socket.timeout, TimeoutError):
        yield Look(Outcome.PORT_SILENT, f"connect to {address}: no answer within {timeout:g} s")
        return
    except OSError as exc:
        yield Look(Outcome.PORT_SILENT, f"connect to {address}: {exc.strerror or exc}")
        return
    with sock:
        yield sock


def _tls(sock: socket.socket, host: str, address: str, context: Callable[[], ssl.SSLContext],
         timeout: float) -> Look:
    try:
        with context().wrap_socket(sock, server_hostname=host):
            return NOTHING  # it speaks TLS with a certificate we trust: the agent's gRPC runs on top
    except ssl.SSLCertVerificationError:
        return NOTHING  # it speaks TLS; whether the agent trusts the certificate is its own log's to say
    except (socket.timeout, TimeoutError):
        return Look(Outcome.PORT_SILENT, f"TLS handshake with {address}: no answer within {timeout:g} s")
    except (ssl.SSLError, ConnectionError) as exc:
        # A plain gRPC (HTTP/2) server reads the ClientHello as a bad frame and closes, or answers in
        # clear text: OpenSSL's WRONG_VERSION_NUMBER, or an EOF in the handshake.
        return Look(Outcome.TLS_ON_PLAIN, f"TLS handshake with {address}: {_reason(exc)}")
    except OSError as exc:
        return Look(Outcome.PORT_SILENT, f"TLS handshake with {address}: {exc.strerror or exc}")


def _plain(sock: socket.socket, address: str, timeout: float) -> Look | None:
    """NOTHING for an HTTP/2 answer, a verdict, or None: no HTTP/2 answer (the caller looks further)."""
    try:
        sock.sendall(PREFACE)
        first = sock.recv(16)
    except (socket.timeout, TimeoutError):
        return Look(Outcome.PORT_SILENT, f"HTTP/2 preface to {address}: no answer within {timeout:g} s")
    except ConnectionResetError:
        first = b""
    except OSError as exc:
        return Look(Outcome.PORT_SILENT, f"HTTP/2 preface to {address}: {exc.strerror or exc}")
    if len(first) >= 4 and first[3] == 0x04:
        return NOTHING  # a SETTINGS frame: HTTP/2, what the agent's gRPC needs
    if first[:1] == b"\x15":  # a TLS alert record
        return Look(Outcome.PLAIN_ON_TLS, f"HTTP/2 preface to {address}: answered with a TLS alert")
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return str(exc) or type(exc).__name__


class AgentPort:
    """The probe as a source of the online wait. A closed or silent port counts only when a second probe, at
    least CONFIRM_AFTER s later, sees the same (a dashboard restarting at that moment is not a verdict); a
    TLS mismatch counts at once. A plain class (never compared or printed): a dataclass costs ~0.8 ms of a
    run's start."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: bool,
        context: Callable[[], ssl.SSLContext],  # made at the first TLS handshake (a plain run never loads the store)
        clock: Callable[[], float] = time.monotonic,
        look_once: Callable[[], Look] | None = None,
        # The first probe waits this long: a dashboard that lists the node at once never sees one.
        start_after: float = 0.5,
        name: str = "the agent's port",
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.context = context
        self.clock = clock
        self.look_once = look_once
        self.start_after = start_after
        self.name = name
        self._first: tuple[float, Look] | None = None
        self._next: float | None = None

    def look(self) -> Look:
        now = self.clock()
        if self._next is None:
            self._next = now + self.start_after
        if now < self._next:
            return NOTHING
        seen = self.look_once() if self.look_once else probe(self.host, self.port, self.tls, self.context)
        self._next = self.clock() + CONFIRM_AFTER
        if seen.outcome is None:
            self._first = None
            return NOTHING
        if seen.outcome not in CONFIRMED or (self._first is not None and self._first[1].outcome is seen.outcome):
            return seen
        self._first = (now, seen)
        return Look(None, seen.evidence)


def watch(host: str, port: int, tls: bool, ca_bundle: Path | None) -> AgentPort:
    """The port source of a run: trusting what the agent trusts (the system store) plus --ca-bundle."""
    import functools

    from nezha_bootstrap.http import download_context

    return AgentPort(host, port, tls, functools.lru_cache(maxsize=None)(lambda: download_context(ca_bundle)))
