"""A local Nezha v0 dashboard for rehearsals: it registers servers as v0.20 does, with fault knobs.

It also serves a stub `install.sh` that records how it was called and installs a fake agent the way
the real script does, and (run alone) a stand-in for the agent's gRPC port that `check` probes.
`demo`, the tests and the benchmarks use it. Run it alone with
`python -m nezha_bootstrap.testing.fake_v0 --token-file FILE`: it prints the flags to use against it.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import secrets
import socket
import ssl
import string
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from nezha_bootstrap.testing import grpc_port
from nezha_bootstrap.testing.grpc_port import GO_BAD_REQUEST, GO_H2C_FRAMES, PREFACE, is_client_hello
from nezha_bootstrap.testing.stubscripts import stub_script

FORBIDDEN_BODY = '{"code":403,"message":"访问此接口需要认证"}'
PARSE_FAILED_BODY = '{"code":400,"message":"Parse JSON failed","secret":""}'
V1_BODY = '{"error":"404 Not Found"}'
JSON_UTF8 = "application/json; charset=utf-8"  # gin's c.JSON, every JSON answer of the real v0.20.13
NOT_FOUND_HTML = "<!DOCTYPE html><html><head><title>404</title></head><body>404 page not found</body></html>"
NEVER = -62135596800  # last_active of a server that never connected
_ALNUM = string.ascii_letters + string.digits


def new_secret() -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(18))


_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_json(value: Any) -> bytes:
    """JSON as gin's c.JSON writes it: compact, UTF-8, Go's HTML-safe escapes, lone surrogates as U+FFFD."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return "".join(_GO_ESCAPES.get(ch, "\ufffd" if "\ud800" <= ch <= "\udfff" else ch) for ch in text).encode()


def stub_installer() -> bytes:
    """The stub install.sh served at /install.sh."""
    return stub_script("stub-install.sh").encode("utf-8")


@dataclass
class Server:
    id: int
    name: str
    tag: str
    note: str
    hide_for_guest: bool
    secret: str
    last_active: int = NEVER  # Unix seconds of the agent's last state report
    connected: bool = False  # an agent with this secret connected and keeps reporting

    def listed(self, real_hidden: bool = False) -> dict[str, Any]:
        """An item of /api/v1/server/list and /details. The real v0.20.13 never copies hide_for_guest
        nor display_index there (false and 0), except in /details without parameters (observed)."""
        if self.connected:
            # The real agent v0.20.5 reports every second, each report moving last_active to the dashboard's
            # now (observed, issue 17). Here each look sees one more report, so that a test never waits for
            # the clock to tick: what the tool relies on is only that the value advances.
            self.last_active = max(int(time.time()), self.last_active + 1)
        return {
            "id": self.id, "name": self.name, "tag": self.tag, "last_active": self.last_active, "ipv4": "",
            "ipv6": "", "valid_ip": "", "display_index": 0, "hide_for_guest": self.hide_for_guest and real_hidden,
        }


@dataclass
class Faults:
    """Knobs. `fail_next`: statuses (or 'drop', 'hang', 'html', 'empty', ...) for the next requests in order."""

    fail_next: list[Any] = field(default_factory=list)
    retry_after: str | None = None
    v1: str | None = None  # None, "v1.0" (HTTP 200) or "v1.5" (HTTP 404)
    too_old: bool = False  # a v0 older than v0.20.12: no register route
    lost_response: int = 0  # create the server, then drop the connection, this many times
    answer_delay: float = 0.0  # create the server, then wait this long before answering
    db_failure: bool = False
    random_faults: Callable[[str], Any] | None = None  # path -> fault or None, for benchmarks
    only_paths: tuple[str, ...] = ()  # when set, fail_next applies only to these paths


@dataclass
class AgentPort:
    """The dashboard's agent (gRPC) port as the stub agents meet it through `/_fake/agent-connect` (issue 17).

    The real v0.20.13 serves plain gRPC on its own port. `tls`: True behind a TLS proxy, False plain, None
    (the default) whatever the agent speaks; `state`: open, refused (nothing listens) or silent (nothing
    answers). An agent that does not get through never reports: its server's last_active stays."""

    tls: bool | None = None
    state: str = "open"


@dataclass
class Journal:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    client: str
    at: float = field(default_factory=time.time)  # wall-clock arrival, for timing assertions


class FakeDashboard:
    """State and behaviour of one fake v0 dashboard."""

    speaks_h2 = False  # its web port is HTTP/1 only; the agent's gRPC port is another (grpc_port.AgentPort)

    def __init__(self, token: str) -> None:
        self.tokens = {token}
        # The real v0.20.13 checks a token against the first `users` row: with none (a database nobody
        # has logged in to yet) every token is refused with the 403 body (observed).
        self.has_user = True
        self.sessions: set[str] = set()  # values of the web login's `nezha-dashboard` cookie: they may register too
        self.servers: list[Server] = []
        self.journal: list[Journal] = []
        self.faults = Faults()
        self.agent_port = AgentPort()
        self.connections: list[str] = []  # the outcome of every agent-connect call, in order
        self.files: dict[str, bytes] = {"/install.sh": stub_installer()}
        self.lock = threading.Lock()
        self._next_id = 1

    # --- what tests read ---
    def registrations(self) -> list[Journal]:
        return [j for j in self.journal if j.method == "POST" and j.path.startswith("/api/v1/server/register")]

    @property
    def script_sha256(self) -> str:
        return hashlib.sha256(self.files["/install.sh"]).hexdigest()

    def create(self, name: str, tag: str = "AutoRegister", note: str = "", hidden: bool = True) -> Server:
        with self.lock:
            server = Server(self._next_id, name, tag, note, hidden, new_secret())
            self._next_id += 1
            self.servers.append(server)
            return server

    def delete(self, server_id: int) -> None:
        """Delete a server, as the dashboard's UI does: its id is never given again (sqlite AUTOINCREMENT)."""
        with self.lock:
            self.servers = [s for s in self.servers if s.id != server_id]

    # --- request handling, pure of sockets: returns (status, content type, body) or a fault word ---
    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes, client: str) -> Any:
        parts = urlsplit(target)
        with self.lock:
            self.journal.append(Journal(method, parts.path, parts.query, dict(headers), body, client))
            fault = self._take_fault(parts.path)
        if fault is not None:
            return fault
        if parts.path in self.files:
            if method != "GET":
                return 404, "text/html", NOT_FOUND_HTML.encode()
            return 200, "text/plain; charset=utf-8", self.files[parts.path]
        if parts.path == "/_fake/agent-connect" and method == "POST":
            return self._agent_connect(body)
        if self.faults.v1 is not None:
            return (200 if self.faults.v1 == "v1.0" else 404), "application/json", V1_BODY.encode()
        if parts.path == "/api/v1/server/register/":
            query = f"?{parts.query}" if parts.query else ""
            return 307, "text/html", b"", {"Location": f"/api/v1/server/register{query}"}
        if parts.path == "/api/v1/server/register" and not self.faults.too_old:
            if method != "POST":
                return 404, "text/html", NOT_FOUND_HTML.encode()
            return self._register(parts.query, headers, body, client)
        if parts.path in ("/api/v1/server/list", "/api/v1/server/details") and method == "GET":
            if not self._authorized(headers):
                return 200, JSON_UTF8, FORBIDDEN_BODY.encode()
            return 200, JSON_UTF8, go_json({"code": 0, "message": "success", "result": self._listing(parts)})
        return 404, "text/html", NOT_FOUND_HTML.encode()

    def _listing(self, parts: Any) -> list[dict[str, Any]]:
        """list[?tag=] or details[?tag=|?id=a,b] (the tag wins); details carries host and status."""
        query = parse_qs(parts.query)
        tag, ids = query.get("tag", [""])[0], query.get("id", [""])[0]
        details = parts.path.endswith("/details")
        with self.lock:
            if tag or not details:
                chosen = [s for s in self.servers if not tag or s.tag == tag]
            elif ids:
                # v0.20.13: each word through strconv.ParseUint (a bad one is 0, no server's id), then the
                # servers in the order asked, each as often as asked, the missing ones skipped
                by_id = {s.id: s for s in self.servers}
                chosen = [by_id[n] for n in (_parse_uint(word) for word in ids.split(",")) if n in by_id]
            else:
                chosen = list(self.servers)
            items = [s.listed(real_hidden=details and not tag and not ids) for s in chosen]
        extra: dict[str, Any] = {"host": dict(EMPTY_HOST), "status": dict(EMPTY_STATUS)} if details else {}
        return [{**item, **extra} for item in items]

    def _agent_connect(self, body: bytes) -> Any:
        """What the agent port does with an agent's connection: {"secret", "tls"} -> {"outcome", "id"}."""
        try:
            value = json.loads(body)
            secret, tls = str(value["secret"]), bool(value.get("tls"))
        except (ValueError, KeyError, TypeError):
            return 400, "application/json", b'{"error":"bad hook request"}'
        with self.lock:
            port = self.agent_port
            server = next((s for s in self.servers if s.secret == secret), None)
            if port.state != "open":
                outcome = port.state
            elif port.tls is not None and tls != port.tls:
                outcome = "tls on plain" if tls else "plain on tls"
            elif server is None:
                outcome = "secret refused"
            else:
                outcome, server.connected = "connected", True
            self.connections.append(outcome)
        answer = {"outcome": outcome, "id": server.id if server and outcome == "connected" else None}
        return 200, "application/json", json.dumps(answer).encode()

    def disconnect(self, secret: str) -> None:
        """The agent of this secret stopped: its last_active stays where it was."""
        with self.lock:
            for server in self.servers:
                if server.secret == secret:
                    server.connected = False

    def _take_fault(self, path: str) -> Any:
        faults = self.faults
        if faults.random_faults is not None:
            chosen = faults.random_faults(path)
            if chosen is not None:
                return chosen
        if faults.fail_next and (not faults.only_paths or path in faults.only_paths):
            return faults.fail_next.pop(0)
        return None

    def _authorized(self, headers: dict[str, str]) -> bool:
        cookies = dict(part.strip().partition("=")[::2] for part in headers.get("cookie", "").split(";") if part)
        if cookies.get("nezha-dashboard") in self.sessions:
            return True
        return self.has_user and headers.get("authorization", "") in self.tokens

    def _register(self, query: str, headers: dict[str, str], body: bytes, client: str) -> Any:
        if not self._authorized(headers):  # auth runs before the body is parsed
            return 200, "application/json; charset=utf-8", FORBIDDEN_BODY.encode()
        simple = parse_qs(query).get("simple", [""])[0] in ("true", "1")
        form = _parse_form(body)
        if form is None:
            return 400, "application/json; charset=utf-8", PARSE_FAILED_BODY.encode()
        if self.faults.db_failure:
            if simple:
                return 500, "application/json; charset=utf-8", b'""'
            err = {"code": 500, "message": "Database error: injected", "secret": ""}
            return 500, "application/json; charset=utf-8", go_json(err)
        hidden_value = form.get("hideforguest")
        server = self.create(
            name=form.get("name") or _client_ip(headers, client),
            tag=form.get("tag") or "AutoRegister",
            note=form.get("note") or "",
            hidden=hidden_value in (None, "", "on"),
        )
        if self.faults.answer_delay:
            time.sleep(self.faults.answer_delay)
        if self.faults.lost_response > 0:
            self.faults.lost_response -= 1
            return "drop"
        if simple:
            return 200, JSON_UTF8, go_json(server.secret)
        full = {"code": 200, "message": "Server created successfully", "secret": server.secret}
        return 200, JSON_UTF8, go_json(full)


def _parse_uint(word: str) -> int:
    """Go's strconv.ParseUint(word, 10, 64) as v0.20.13 uses it: the value, or 0 when it fails."""
    if not word or not word.isascii() or not word.isdigit() or int(word) >= 2 ** 64:
        return 0
    return int(word)


# A new server's host and status in /details, as v0.20.13 answers before its agent's first report (observed).
EMPTY_HOST: dict[str, Any] = {
    "Platform": "", "PlatformVersion": "", "CPU": None, "MemTotal": 0, "DiskTotal": 0, "SwapTotal": 0, "Arch": "",
    "Virtualization": "", "BootTime": 0, "CountryCode": "", "Version": "", "GPU": None,
}
EMPTY_STATUS: dict[str, Any] = {
    "CPU": 0, "MemUsed": 0, "SwapUsed": 0, "DiskUsed": 0, "NetInTransfer": 0, "NetOutTransfer": 0, "NetInSpeed": 0,
    "NetOutSpeed": 0, "Uptime": 0, "Load1": 0, "Load5": 0, "Load15": 0, "TcpConnCount": 0, "UdpConnCount": 0,
    "ProcessCount": 0, "Temperatures": None, "GPU": 0,
}


def _parse_form(body: bytes) -> dict[str, str | None] | None:
    """Go's encoding/json into a struct: one JSON value (trailing garbage ignored), keys case-insensitive."""
    try:
        # Go skips only JSON whitespace and reads invalid UTF-8 inside strings as U+FFFD.
        value, _ = json.JSONDecoder().raw_decode(body.decode("utf-8", errors="replace").lstrip(" \t\r\n"))
    except (ValueError, RecursionError):
        return None
    if value is None:
        return {}
    if not isinstance(value, dict):
        return None
    form: dict[str, str | None] = {}
    for key, item in value.items():
        low = key.lower()
        if low not in ("name", "tag", "note", "hideforguest"):
            continue  # unknown keys are ignored: a Secret key cannot choose the secret
        if item is not None and not isinstance(item, str):
            return None  # a wrong type is a parse error
        form[low] = item
    return form


def _client_ip(headers: dict[str, str], peer: str) -> str:
    forwarded = [p.strip() for p in headers.get("x-forwarded-for", "").split(",") if p.strip()]
    if forwarded and all(_is_ip(p) for p in forwarded):
        return forwarded[0]
    return headers.get("x-real-ip") or peer


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Go's net/http sets TCP_NODELAY, so the real dashboard sends its body at once; with Nagle on, the
    # body written after the headers waits ~40 ms for the client's delayed ACK on every answer.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle(self) -> None:
        """A connection opening with a TLS ClientHello or the HTTP/2 preface gets the real one's answer
        (testing/grpc_port.py); any other is served as HTTP/1.1."""
        first = self.rfile.peek(len(PREFACE))[: len(PREFACE)]  # type: ignore[attr-defined]  # a BufferedReader
        if is_client_hello(first):
            self.wfile.write(GO_BAD_REQUEST)  # Go's net/http on a plain port, before it closes
            return
        if first.startswith(PREFACE[: len(first)]) and first.startswith(b"PRI "):
            self._preface()
            return
        super().handle()

    def _preface(self) -> None:
        self.rfile.read(len(PREFACE))
        if not getattr(self.server.fake, "speaks_h2", False):  # v0.20.13's web port: HTTP/1 only
            body = NOT_FOUND_HTML.encode()
            self.wfile.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html; charset=utf-8\r\n"
                             b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            return
        self.wfile.write(GO_H2C_FRAMES)  # v1/v2: gRPC shares the web port (unencrypted HTTP/2)
        self.wfile.flush()
        self.connection.settimeout(5)
        try:
            while self.rfile.read1(4096):  # until the client goes (it sent SETTINGS, maybe GOAWAY)
                pass
        except OSError:
            pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        outcome = self.server.fake.handle(self.command, self.path, headers, body, self.client_address[0])
        self._answer(outcome)

    def _answer(self, outcome: Any) -> None:
        if isinstance(outcome, int):
            outcome = (outcome, "text/plain", f"status {outcome}".encode())
        if outcome == "drop":
            self._drop()
            return
        if outcome == "hang":
            self.server.stopping.wait(3600)  # accept, never answer; released when the fake stops
            return
        if outcome == "html":
            outcome = (200, "text/html", b"<!DOCTYPE html><html><body>Welcome to the portal</body></html>")
        elif outcome == "empty":
            outcome = (200, "application/json", b"")
        elif outcome == "empty-string":
            outcome = (200, "application/json", b'""')
        elif outcome == "object":
            outcome = (200, "application/json", b'{"code":0,"message":"ok"}')
        elif outcome == "wrong-shape":
            outcome = (200, "application/json", b'"abc def!"')
        elif outcome == "huge":
            self._huge()
            return
        elif isinstance(outcome, tuple) and outcome and outcome[0] == "slow":
            self._slow(outcome[1])
            return
        elif isinstance(outcome, tuple) and outcome and outcome[0] == "truncated":
            self._truncated(outcome[1])
            return
        status, content_type, body, *extra = outcome
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if status == 429 or status == 503:
            retry_after = self.server.fake.faults.retry_after
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
        for name, value in (extra[0] if extra else {}).items():
            for one in value if isinstance(value, list) else [value]:  # a list: the header repeated (Set-Cookie)
                self.send_header(name, one)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drop(self) -> None:
        """Close the connection with a reset, without an answer."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        self.close_connection = True
        self.connection.close()

    def _huge(self) -> None:
        size = 10 * 1024 * 1024
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        chunk = b"a" * 65536
        try:
            for _ in range(size // len(chunk)):
                self.wfile.write(chunk)
        except OSError:
            pass  # the client stopped reading at its cap

    def _slow(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass

    def _truncated(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body) * 2))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], fake: FakeDashboard,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.fake = fake
        self.ssl_context = ssl_context
        self.stopping = threading.Event()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Serve one connection; with TLS, the handshake runs here, on the connection's own thread."""
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        try:
            request = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client refused the certificate: what the TLS tests want to see
        try:
            super().finish_request(request, client_address)
        finally:
            request.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client hanging up mid-answer is one of the faults under test, not a fake bug
        super().handle_error(request, client_address)


class Running:
    """A fake dashboard served on a thread; `url` is its base URL."""

    def __init__(self, fake: FakeDashboard, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.fake = fake
        self.httpd = _Server((host, port), fake, ssl_context)
        self.port = self.httpd.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if ssl_context else 'http'}://{shown}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(fake: FakeDashboard, host: str = "127.0.0.1", port: int = 0,
          ssl_context: ssl.SSLContext | None = None) -> Running:
    """Start `fake` on host:port (0: any free port) in a background thread; HTTPS with `ssl_context`."""
    return Running(fake, host, port, ssl_context)


def main(argv: list[str] | None = None) -> None:
    """Serve a fake dashboard in the foreground; one JSON line per request on stdout (`--journal`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8008, help="the dashboard's port (0: any free port)")
    parser.add_argument("--probe-port", type=int, default=0,
                        help="the agent's gRPC port stand-in, which `check` probes (plain, no TLS) [any free port]")
    token = parser.add_mutually_exclusive_group(required=True)
    token.add_argument("--token", help="the API token it accepts (visible in ps: prefer --token-file)")
    token.add_argument("--token-file", help="file holding the API token it accepts")
    parser.add_argument("--down-for", type=float, default=0.0, help="refuse connections for this many seconds first")
    parser.add_argument("--journal", help="append one JSON line per request to this file")
    args = parser.parse_args(argv)
    if args.down_for:
        time.sleep(args.down_for)
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as handle:
            args.token = handle.readline().strip()
    fake = FakeDashboard(args.token)
    running = serve(fake, args.host, args.port)
    with grpc_port.AgentPort(host=args.host, port=args.probe_port) as probe:
        hello = {"url": running.url, "script_url": f"{running.url}/install.sh", "script_sha256": fake.script_sha256,
                 "probe_address": urlsplit(running.url).hostname, "probe_port": probe.port}
        print(json.dumps(hello), flush=True)
        print(rehearsal_help(hello, args.token_file), file=sys.stderr, flush=True)
        seen = 0
        try:
            while True:
                time.sleep(0.2)
                with fake.lock:
                    new, seen = fake.journal[seen:], len(fake.journal)
                append_json_lines(args.journal, [journal_line(entry) for entry in new])
        except KeyboardInterrupt:
            running.stop()


def rehearsal_help(hello: dict[str, Any], token_file: str | None) -> str:
    """The flags that point nezha-bootstrap at this fake (the token by its file, never by value)."""
    token = f"--token-file {token_file}" if token_file else "(and NEZHA_TOKEN set to the token given to --token)"
    flags = (f"{token} --script-url {hello['script_url']} --script-sha256 {hello['script_sha256']} "
             f"--probe-address {hello['probe_address']} --probe-port {hello['probe_port']} --no-tls")
    return (f"fake v0 dashboard at {hello['url']}; the agent's port at {hello['probe_address']}:{hello['probe_port']}\n"
            f"check against it:\n  nezha-bootstrap check --dashboard-url {hello['url']} {flags}\n"
            "rehearse a run in a scratch directory DIR (the stub installer acts only inside it; its agent reports "
            "to the URL in NEZHA_DASHBOARD_URL):\n"
            f"  NEZHA_DASHBOARD_URL={hello['url']} nezha-bootstrap run --rehearsal --root DIR {flags}\n"
            "Ctrl-C stops it.")


def journal_line(entry: Journal) -> dict[str, Any]:
    """One request as the journal file of `main` holds it; `time` is when it arrived (wall clock)."""
    return {"method": entry.method, "path": entry.path, "query": entry.query,
            "body": entry.body.decode("utf-8", "replace"), "time": entry.at}


def append_json_lines(path: str | None, items: list[dict[str, Any]]) -> None:
    """Append one JSON line per item to `path` (nothing when there is no path or no item)."""
    if path and items:
        with open(path, "a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(item) + "\n" for item in items)


if __name__ == "__main__":
    main()
