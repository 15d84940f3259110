"""The agent's first exchange with its server, tried by `check`: TCP, TLS or not, then the HTTP/2 preface.

gRPC speaks HTTP/2. A client opens with the preface `PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n` and a SETTINGS
frame; a server's first frame is its SETTINGS (RFC 9113, 3.4). What the real dashboards answered, on
loopback (the bytes are in tests/data/real/preface.json; the fakes answer the same):
- v0.20.13's agent port (grpc-go, plain): SETTINGS and a SETTINGS ACK; grpc-go writes its SETTINGS on
  accept, before reading, so a TLS ClientHello gets them too and OpenSSL says WRONG_VERSION_NUMBER.
- v2.3.7's port (Go net/http, HTTP/1 and unencrypted HTTP/2 on one port): SETTINGS, WINDOW_UPDATE, ACK;
  to a ClientHello it answers `HTTP/1.1 400 Bad Request` (so does the v0.20.13 web port).
- v2.3.7's HTTPS port: ALPN h2, then SETTINGS; the plain preface gets no answer: the connection closes.
- v0.20.13's web port: `HTTP/1.1 404 Not Found` (an HTTP/1 server).
The module reads raw bytes under TLS through a memory BIO, so a handshake that fails still shows what the
port sent (HTTP/1, a plain SETTINGS frame), and a message can say what the port speaks.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame on stream 0
SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"
GOAWAY = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + bytes(8)  # last stream 0, NO_ERROR: a polite goodbye
SETTINGS_TYPE = 0x04
FRAME_HEADER = 9
ENOUGH = 256  # bytes read before judging an answer that is not a frame (an HTTP/1 status line fits)
NO_H2_REASONS = ("TLSV1_ALERT_NO_APPLICATION_PROTOCOL", "NO_APPLICATION_PROTOCOL")


@dataclass(frozen=True)
class Attempt:
    """What one try saw. `kind` is one of:

    h2 (SETTINGS first: HTTP/2), http1 (an HTTP/1.x answer), tls (a TLS record where plain was sent),
    closed (EOF, nothing sent), silent (nothing within the time), other (bytes that are none of these),
    refused, unreachable (no route, no name, connect timeout), verify (the certificate did not verify),
    no_h2 (TLS refused ALPN h2), tls_failed (another TLS failure). At stage tls, `answer` holds what the
    port sent instead of a TLS handshake (`kind` says what those bytes are); at preface, the answer read.
    """

    kind: str
    stage: str  # where it ended: connect, tls (the port answered the ClientHello so) or preface
    answer: bytes = b""
    alpn: str | None = None
    error: str = ""


def classify(data: bytes, eof: bool) -> str:
    """What the first bytes of an answer are (pure): h2, http1, tls, closed, silent or other."""
    if not data:
        return "closed" if eof else "silent"
    if data.startswith(b"HTTP/"):
        return "http1"
    if len(data) >= 3 and data[0] in (0x15, 0x16) and data[1] == 0x03:  # TLS alert / handshake record
        return "tls"
    if len(data) >= FRAME_HEADER and data[3] == SETTINGS_TYPE and data[5:9] == b"\x00\x00\x00\x00":
        return "h2"
    return "other"


def decided(data: bytes) -> bool:
    """Whether enough of an answer arrived to judge it (an HTTP/1 answer: its status line)."""
    if len(data) >= ENOUGH:
        return True
    if data.startswith(b"HTTP/"[: len(data)]):
        return b"\r\n" in data
    return len(data) >= FRAME_HEADER


def status_line(data: bytes) -> str:
    """The first line of an answer, printable, for messages."""
    line = data.split(b"\r\n", 1)[0][:80]
    return "".join(chr(b) if 32 <= b < 127 else "." for b in line)


def attempt(host: str, port: int, context: ssl.SSLContext | None, server_name: str, seconds: float) -> Attempt:
    """Connect to host:port, do TLS with `context` (ALPN h2), send the preface, read the answer: what it saw."""
    deadline = time.monotonic() + seconds
    try:
        sock = socket.create_connection((host, port), timeout=seconds)
    except ConnectionRefusedError:
        return Attempt("refused", "connect", error="Connection refused")
    except socket.timeout:
        return Attempt("unreachable", "connect", error=f"no connection within {seconds:g} s")
    except OSError as exc:
        return Attempt("unreachable", "connect", error=exc.strerror or type(exc).__name__)
    with sock:
        return _exchange(_Channel(sock, deadline), context, server_name)


def _exchange(channel: _Channel, context: ssl.SSLContext | None, server_name: str) -> Attempt:
    alpn = None
    if context is not None:
        failed = channel.start_tls(context, server_name)
        if failed is not None:
            return failed
        alpn = channel.alpn()
    try:
        channel.send(PREFACE + SETTINGS_FRAME)
        data, eof = channel.read_answer()
    except socket.timeout:
        return Attempt("silent", "preface", alpn=alpn)
    except (OSError, ssl.SSLError) as exc:
        return Attempt("closed", "preface", alpn=alpn, error=getattr(exc, "reason", None) or exc.strerror or str(exc))
    kind = classify(data, eof)
    if kind == "h2":
        channel.goodbye()
    return Attempt(kind, "preface", data, alpn=alpn)


class _Channel:
    """A socket with one deadline for every read and write; TLS through memory BIOs once started."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.tls: ssl.SSLObject | None = None
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("the time ran out")
        return left

    def _recv(self) -> bytes:
        self.sock.settimeout(self._left())
        return self.sock.recv(4096)

    def _flush(self) -> None:
        pending = self.outgoing.read()
        if pending:
            self.sock.settimeout(self._left())
            self.sock.sendall(pending)

    def start_tls(self, context: ssl.SSLContext, server_name: str) -> Attempt | None:
        """The TLS handshake; None when it completed, else what the port did instead."""
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_name)
        raw = b""
        while True:
            try:
                self.tls.do_handshake()
                self._flush()
                return None
            except ssl.SSLWantReadError:
                try:
                    self._flush()
                    chunk = self._recv()
                except socket.timeout:
                    return Attempt(classify(raw, eof=False), "tls", raw)
                except OSError as exc:
                    return Attempt("closed", "tls", raw, error=exc.strerror or type(exc).__name__)
                if not chunk:
                    return Attempt(classify(raw, eof=True), "tls", raw)
                raw += chunk
                self.incoming.write(chunk)
            except ssl.SSLCertVerificationError as exc:
                return Attempt("verify", "tls", error=str(exc.verify_message or exc.reason))
            except ssl.SSLError as exc:
                return self._tls_refused(exc, raw)

    def _tls_refused(self, exc: ssl.SSLError, raw: bytes) -> Attempt:
        reason = str(exc.reason or exc)
        if reason in NO_H2_REASONS:
            return Attempt("no_h2", "tls", raw, error=reason)
        kind = classify(raw, eof=True)
        if kind in ("h2", "http1", "other"):  # bytes that are no TLS record: the port speaks plain
            return Attempt(kind, "tls", raw, error=reason)
        return Attempt("tls_failed", "tls", raw, error=reason)

    def alpn(self) -> str | None:
        return self.tls.selected_alpn_protocol() if self.tls is not None else None

    def send(self, data: bytes) -> None:
        if self.tls is None:
            self.sock.settimeout(self._left())
            self.sock.sendall(data)
            return
        self.tls.write(data)
        self._flush()

    def read_answer(self) -> tuple[bytes, bool]:
        """Bytes until the answer can be judged, EOF, or the deadline: (data, eof)."""
        data = b""
        while not decided(data):
            try:
                chunk = self._read()
            except socket.timeout:
                return data, False
            if not chunk:
                return data, True
            data += chunk
        return data, False

    def _read(self) -> bytes:
        if self.tls is None:
            return self._recv()
        while True:
            try:
                return self.tls.read(4096)
            except ssl.SSLWantReadError:
                chunk = self._recv()
                if not chunk:
                    return b""
                self.incoming.write(chunk)
            except ssl.SSLZeroReturnError:
                return b""

    def goodbye(self) -> None:
        """Acknowledge the server's SETTINGS and say GOAWAY: the server logs a clean close, not an error."""
        try:
            self.send(SETTINGS_ACK + GOAWAY)
        except (OSError, ssl.SSLError):
            pass


# --- the verdict: what the agent would meet there, and what to change -------------------------------

@dataclass(frozen=True)
class Verdict:
    """`check`'s word on the probe address: ok, and the exit code (0, 3 refused, 4 unreachable) of a failure."""

    ok: bool
    detail: str
    exit_code: int = 0


REFUSED, UNREACHABLE = 3, 4  # errors.DashboardRefused and DashboardUnreachable: a setting, or maybe later
# Answers that may come from a port speaking the other mode: Go's TLS server closes on a plain preface
# (v2.3.7's HTTPS port), OpenSSL-based ones send an alert or an HTTP/1 400; Go's h2c port answers a
# ClientHello with HTTP/1 400 (v2.3.7's plain port).
PLAIN_SUSPECTS = ("http1", "tls", "closed", "other")
TLS_SUSPECTS = ("http1", "closed", "other")


def needs_other_mode(first: Attempt, tls: bool) -> bool:
    """Whether a try in the other mode (TLS for plain, plain for TLS) can tell a mismatch from a wrong port."""
    if tls:
        return first.kind in TLS_SUSPECTS and first.stage == "tls"
    return first.kind in PLAIN_SUSPECTS


def judge(first: Attempt, other: Attempt | None, target: str, tls: bool, seconds: float,
          alpn_required: bool = False) -> Verdict:
    """The verdict from the configured try and, where one was made, the try in the other mode (pure).

    `alpn_required`: the agent refuses a TLS server that selects no ALPN protocol (grpc-go 1.67 and later:
    "credentials: cannot check peer: missing selected ALPN property"; agent v2.3.3 is built with grpc-go
    1.83, agent v0.20.5 with 1.64.1, which does not check).
    """
    if first.kind == "h2" and first.stage == "preface" and tls and first.alpn != "h2" and alpn_required:
        return Verdict(False, f"{target} completes TLS but selects no ALPN protocol (not h2): the agent refuses "
                              "such a server (\"missing selected ALPN property\"). Enable HTTP/2 (ALPN h2) on the "
                              "TLS endpoint in front of the dashboard", REFUSED)
    if first.kind == "h2" and first.stage == "preface":
        how = ("TLS verified, ALPN h2" if first.alpn == "h2" else "TLS verified, no ALPN") if tls else "without TLS"
        return Verdict(True, f"{target} answers the HTTP/2 preface, as gRPC needs ({how})")
    if first.kind == "h2" or (tls and other is not None and other.kind == "h2"):
        return Verdict(False, f"{target} speaks gRPC without TLS, and the agent would connect with TLS (--tls): "
                              "it could never connect. Use --no-tls", REFUSED)
    if not tls and other is not None and other.kind == "h2" and other.stage == "preface":
        return Verdict(False, f"{target} speaks TLS (HTTP/2 inside), and the agent would connect without TLS "
                              "(--no-tls): it could never connect. Use --tls", REFUSED)
    if not tls and other is not None and other.kind == "verify":
        return Verdict(False, f"{target} speaks TLS, and the agent would connect without it (--no-tls). Use --tls; "
                              f"its certificate does not verify here ({other.error}): if it is from a private CA, "
                              "pass its PEM file with --ca-bundle", REFUSED)
    return _failure(first, target, tls, seconds)


def _failure(first: Attempt, target: str, tls: bool, seconds: float) -> Verdict:
    kind, mode = first.kind, "--tls" if tls else "--no-tls"
    step = "the TLS handshake" if first.stage == "tls" else "the HTTP/2 preface"
    if kind == "refused":
        return Verdict(False, f"{target} does not accept connections: {first.error}", UNREACHABLE)
    if kind == "unreachable":
        return Verdict(False, f"{target} cannot be reached: {first.error}", UNREACHABLE)
    if kind == "silent":
        return Verdict(False, f"{target} accepts connections but did not answer {step} within {seconds:g} s "
                              f"({mode}; a firewall dropping packets, or a service that is not gRPC)", UNREACHABLE)
    if kind == "closed":
        return Verdict(False, f"{target} closed the connection without answering {step} ({mode}): a proxy "
                              "without a running backend, or a port that is not gRPC", UNREACHABLE)
    if kind == "verify":
        return Verdict(False, f"TLS verification of {target} failed: {first.error}. If the certificate is from "
                              "a private CA, pass its PEM file with --ca-bundle (NEZHA_CA_BUNDLE); if the host name "
                              "does not match it, use the name it was issued for (--probe-address)", REFUSED)
    if kind == "no_h2":
        return Verdict(False, f"{target} does TLS but refuses HTTP/2 (ALPN h2): gRPC cannot pass. A proxy or CDN "
                              "that speaks only HTTP/1.1? Point the agent at one that passes gRPC", REFUSED)
    if kind == "http1" and first.stage == "tls":
        return Verdict(False, f"{target} speaks plain HTTP ({status_line(first.answer)!r}), not TLS (--tls), and "
                              "does not take gRPC without TLS either: is it the dashboard's gRPC port?", REFUSED)
    if kind == "http1":
        return Verdict(False, f"{target} answers HTTP/1.x ({status_line(first.answer)!r}) to the HTTP/2 preface "
                              f"({mode}): gRPC needs HTTP/2 end to end. A proxy or CDN that passes only "
                              "HTTP/1.1, or the dashboard's web port instead of its gRPC port?", REFUSED)
    if kind == "tls":
        return Verdict(False, f"{target} answers with TLS records, and the agent would connect without TLS "
                              "(--no-tls); a TLS handshake with it failed too. Use --tls (and --ca-bundle if its "
                              "certificate is from a private CA)", REFUSED)
    if kind == "tls_failed":
        return Verdict(False, f"TLS handshake with {target} failed: {first.error}", REFUSED)
    return Verdict(False, f"{target} answered {step} with bytes that are not HTTP/2 ({first.answer[:24]!r}, "
                          f"{mode}): not a gRPC port?", REFUSED)


def probe(host: str, port: int, server_name: str, context: ssl.SSLContext | None,
          other_context: ssl.SSLContext, seconds: float, alpn_required: bool = False) -> Verdict:
    """Try the probe address as configured (TLS with `context`, else plain); where the answer may mean
    the other mode, try that too (TLS with `other_context`). The agent's outlook there, as a verdict."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    tls = context is not None
    first = attempt(host, port, context, server_name, seconds)
    other = None
    if needs_other_mode(first, tls):
        other = attempt(host, port, None if tls else other_context, server_name, min(seconds, OTHER_SECONDS))
    return judge(first, other, target, tls, seconds, alpn_required)


OTHER_SECONDS = 3.0  # the second try follows an answer (not silence): the port is there and quick
