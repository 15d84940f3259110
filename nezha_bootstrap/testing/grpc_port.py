"""What the real dashboards' ports answer to the HTTP/2 preface, and a fake agent port that answers so.

Observed on loopback against the real v0.20.13 and v2.3.7 (tests/data/real/preface.json has every
exchange; nezha_bootstrap/handshake.py explains what `check` makes of them):
- v0.20.13's agent port (grpc-go, plain): on accept, before reading, SETTINGS (MAX_FRAME_SIZE 16384);
  after the client's preface, a SETTINGS ACK. A bogus preface (a TLS ClientHello) closes the connection.
- v2.3.7's port (Go net/http with unencrypted HTTP/2): after the preface, SETTINGS, a SETTINGS ACK and
  a WINDOW_UPDATE; to a ClientHello it answers with the Go 400 below, as v0.20.13's web port does.
- v0.20.13's web port (an HTTP/1 server): `HTTP/1.1 404 Not Found` and its HTML page, then it closes.
- v2.3.7's HTTPS port: ALPN h2, then the same frames as its plain port; to a plain preface: nothing,
  the connection closes (Go's TLS server drops a first record that is not TLS).
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass, field

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GRPC_GO_SETTINGS = bytes.fromhex("000006040000000000000500004000")  # v0.20.13's agent port, on accept
SETTINGS_ACK = bytes.fromhex("000000040100000000")
GO_H2C_FRAMES = bytes.fromhex(  # v2.3.7 after the preface: SETTINGS, an ACK of ours, WINDOW_UPDATE
    "00001e0400000000000005001000000003000000fa000600100140000100001000000400100000"
    "000000040100000000"
    "000004080000000000000f0001"
)
GO_BAD_REQUEST = (  # Go's net/http to a TLS ClientHello on a plain port (v0.20.13's web port, v2.3.7)
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
    b"400 Bad Request"
)


def is_client_hello(first: bytes) -> bool:
    """A TLS handshake record: what a client with TLS sends first."""
    return first[:2] == b"\x16\x03"


@dataclass
class AgentPort:
    """A v0 dashboard's agent gRPC port as grpc-go serves it (plain), or behind TLS with `tls` (a proxy
    that terminates TLS in front of it). Counts the connections and the good prefaces. `silent`: a port
    that accepts (and completes the TLS handshake with `tls`) but never answers, as a firewall holding
    the connection or a service that is not gRPC does; it holds each connection until the port stops."""

    tls: ssl.SSLContext | None = None
    host: str = "127.0.0.1"
    silent: bool = False
    connections: int = 0
    prefaces: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    def __enter__(self) -> AgentPort:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.listener = socket.create_server((self.host, self.port), family=family)  # port 0: any free one
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.listener.close()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)  # a plain preface fails here: closed
            if self.silent:
                self._hold(conn)
                return
            conn.sendall(GRPC_GO_SETTINGS)
            got = b""
            while len(got) < len(PREFACE):
                chunk = conn.recv(len(PREFACE) - len(got))
                if not chunk:
                    return
                got += chunk
            if got != PREFACE:
                return  # grpc-go: "received bogus greeting from client", and it closes
            self.prefaces += 1
            conn.sendall(SETTINGS_ACK)
            while not self.stop.is_set() and conn.recv(4096):
                pass
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def _hold(self, conn: socket.socket) -> None:
        """Read whatever comes and answer nothing, until the client closes or the port stops."""
        conn.settimeout(0.1)
        while not self.stop.is_set():
            try:
                if not conn.recv(4096):
                    return
            except socket.timeout:
                continue


def h2_server_context(context: ssl.SSLContext) -> ssl.SSLContext:
    """`context` offering ALPN h2 and http/1.1, as Go's TLS server and a gRPC-capable proxy do."""
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context
