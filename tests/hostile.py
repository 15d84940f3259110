"""A hostile HTTP server on raw sockets (127.0.0.1 only), for tests and benchmarks.

Each connection is answered as the mode of its request path says (`routes`, else `mode`): headers or
a body trickling in, `100 Continue` for ever, encoded bombs, a TLS handshake cut by EOF or a reset,
redirects (a `gzip, gzip` bomb or an endless chunked body in a 302 too), silence, or a plain answer
(over TLS with any certificate, expired ones included). `banner` sends the route's body on accept,
before reading anything (an SSH or SMTP server on a wrong port). `sent` counts the body bytes sent.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

MODES = ("ok", "slow_ok", "header_trickle", "continue", "body_trickle", "silent", "bomb",
         "eof_handshake", "reset_handshake", "redirect", "banner", "redirect_bomb", "redirect_endless")
TRICKLE_MODES = ("header_trickle", "continue", "body_trickle", "silent")


def gzip_layer(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks` gzip-compressed, as a stream."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip header and trailer
    for chunk in chunks:
        out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()


def zeros(size: int, step: int = 1 << 20) -> Iterator[bytes]:
    block = bytes(step)
    for start in range(0, size, step):
        yield block[: min(step, size - start)]


def bomb(decoded_size: int, layers: int = 2) -> bytes:
    """`decoded_size` zero bytes gzipped `layers` times (`Content-Encoding: gzip, gzip` for 2)."""
    stream: Iterator[bytes] = zeros(decoded_size)
    for _ in range(layers):
        stream = gzip_layer(stream)
    return b"".join(stream)


@dataclass
class Route:
    """How to answer: `mode`, and for some modes a body, a Location, a Content-Encoding or a delay."""

    mode: str
    body: bytes = b"ok"
    location: str = ""
    encoding: str = "gzip, gzip"
    delay: float = 0.0


@dataclass
class HostileServer:
    """Serve `routes` (path -> Route; `default` for other paths) on 127.0.0.1; TLS with `tls`."""

    default: Route
    routes: dict[str, Route] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None
    interval: float = 0.2  # seconds between trickled bytes and between `100 Continue`s
    requests: list[bytes] = field(default_factory=list)  # the request heads received
    connections: int = 0
    sent: int = 0  # body bytes of the endless modes that went out
    stop: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileServer:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.listener.settimeout(0.2)
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in list(self.threads):
            thread.join(timeout=5)
        self.listener.close()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            if self.default.mode == "banner":
                conn.sendall(self.default.body)
                self._sleep(5)
                return
            if self.tls is not None and self._handshake_mode():
                self._cut_handshake(conn, self.default.mode)
                return
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            head = self._read_head(conn)
            path = head.split(b" ", 2)[1].decode("latin-1") if head.count(b" ") >= 2 else "/"
            route = self.routes.get(path.split("?")[0], self.default)
            self._answer(conn, route)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def _handshake_mode(self) -> bool:
        return self.default.mode in ("eof_handshake", "reset_handshake")

    def _cut_handshake(self, conn: socket.socket, mode: str) -> None:
        conn.recv(4096)  # the ClientHello
        if mode == "reset_handshake":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST

    def _read_head(self, conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0]
        self.requests.append(head)
        return head

    def _answer(self, conn: socket.socket, route: Route) -> None:
        mode = route.mode
        if mode in ("ok", "slow_ok"):
            self._sleep(route.delay)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (len(route.body), route.body))
        elif mode == "redirect":
            conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: {route.location}\r\nContent-Length: 0\r\n"
                         "Connection: close\r\n\r\n".encode())
        elif mode == "redirect_bomb":
            conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s"
                         % (route.location.encode(), route.encoding.encode(), len(route.body), route.body))
        elif mode == "redirect_endless":
            conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: {route.location}\r\nTransfer-Encoding: chunked\r\n"
                         "Connection: close\r\n\r\n".encode())
            self._endless(conn)
        elif mode == "bomb":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: %s\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (route.encoding.encode(), len(route.body), route.body))
        elif mode == "header_trickle":
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            self._trickle(conn, b"a")
        elif mode == "continue":
            self._trickle(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        elif mode == "body_trickle":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
            self._trickle(conn, b"a")
        elif mode == "silent":
            self._sleep(3600)

    def _endless(self, conn: socket.socket) -> None:
        chunk = b"%x\r\n%s\r\n" % (1 << 16, bytes(1 << 16))
        while not self.stop.is_set():
            conn.sendall(chunk)
            self.sent += 1 << 16

    def _trickle(self, conn: socket.socket, piece: bytes) -> None:
        while not self.stop.is_set():
            conn.sendall(piece)
            self._sleep(self.interval)

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)


def elapsed(start: float) -> float:
    return time.monotonic() - start
