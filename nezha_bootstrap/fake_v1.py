"""A local v1/v2 dashboard and agent release host, answering as dashboard-v1-v2.md describes.

Generation profiles reproduce the detection table; `/_fake/agent-connect` stands in for the agent's
gRPC enrollment and applies its rules; `/releases/v<X>/...` serves agent zips whose `nezha-agent` is
templates/stub-agent-v1.sh, with their checksums.txt. Served with fake_dashboard's HTTP server.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import threading
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from nezha_bootstrap.fake_dashboard import NOT_FOUND_HTML, Faults, Journal, Running, serve
from nezha_bootstrap.identity import UUID_RE

PROFILES = ("v1.0-1.4", "v1.5-1.14", "v2.0", "v2.1+")
# The newest release of each profile's range: the ownership check exists from v2.0.10.
PROFILE_VERSIONS = {"v1.0-1.4": (1, 4, 0), "v1.5-1.14": (1, 14, 0), "v2.0": (2, 0, 10), "v2.1+": (2, 3, 1)}
NOT_FOUND_JSON = '{"error":"404 Not Found"}'
REAL_IP_JSON = '{"error":"real ip header not found"}'
ARCHES = ("amd64", "arm64", "386", "arm", "s390x", "riscv64", "mips", "mipsle", "loong64")
_WORDS_A = ("calm", "brave", "quick", "silent", "bright", "gentle", "lucky", "misty", "proud", "witty")
_WORDS_B = ("lark", "otter", "maple", "heron", "fox", "pine", "comet", "river", "finch", "cedar")


def new_agent_secret() -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(32))


def stub_agent(version: str) -> bytes:
    """The stub v1 agent, printing `version` for -v."""
    text = resources.files("nezha_bootstrap").joinpath("templates/stub-agent-v1.sh").read_text(encoding="utf-8")
    return text.replace("@VERSION@", version).encode("utf-8")


def agent_zip(binary: bytes) -> bytes:
    """A release zip holding only `nezha-agent`, executable."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("nezha-agent", date_time=(2026, 8, 1, 0, 0, 0))
        info.external_attr = 0o100755 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, binary)
    return buffer.getvalue()


@dataclass
class V1Server:
    id: int
    name: str
    uuid: str
    owner: int
    hide_for_guest: bool = False  # an enrolled server is visible to guests


@dataclass(frozen=True)
class Connection:
    """One agent-connect call and what the dashboard did with it."""

    uuid: str
    outcome: str  # "created", "known", or the refusal
    server_id: int | None = None


@dataclass
class FakeV1:
    """State and behaviour of one fake v1/v2 dashboard and its release host."""

    profile: str = "v2.1+"
    agent_secrets: dict[str, int] = field(default_factory=lambda: {new_agent_secret(): 1})
    real_ip_header: str | None = None  # when set, requests without this header are refused
    servers: list[V1Server] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    journal: list[Journal] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    failed_credentials: int = 0  # what the WAF counts
    faults: Faults = field(default_factory=Faults)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _next_id: int = 1

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; one of {', '.join(PROFILES)}")

    @property
    def agent_secret(self) -> str:
        """The first user's agent secret."""
        return next(iter(self.agent_secrets))

    def add_user(self) -> str:
        """A second user with its own agent secret (v1.4.0+)."""
        secret = new_agent_secret()
        self.agent_secrets[secret] = max(self.agent_secrets.values()) + 1
        return secret

    def add_release(self, version: str, arches: tuple[str, ...] = ARCHES) -> None:
        """Serve /releases/v<version>/nezha-agent_linux_<arch>.zip and its checksums.txt."""
        lines = []
        for arch in arches:
            asset = f"nezha-agent_linux_{arch}.zip"
            data = agent_zip(stub_agent(version))
            self.files[f"/releases/v{version}/{asset}"] = data
            lines.append(f"{hashlib.sha256(data).hexdigest()} {asset}\n")
        self.files[f"/releases/v{version}/checksums.txt"] = "".join(lines).encode()

    def delete_server(self, server_id: int) -> None:
        with self.lock:
            self.servers = [s for s in self.servers if s.id != server_id]

    # --- request handling, pure of sockets (same contract as fake_dashboard.FakeDashboard) ---
    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes, client: str) -> Any:
        path = urlsplit(target).path
        with self.lock:
            self.journal.append(Journal(method, path, urlsplit(target).query, dict(headers), body, client))
            fault = self.faults.fail_next.pop(0) if self.faults.fail_next else None
        if fault is not None:
            return fault
        if path in self.files and method == "GET":
            return 200, "application/octet-stream", self.files[path]
        if path.startswith("/releases/"):
            return 404, "text/plain", b"Not Found"
        if self.real_ip_header and self.real_ip_header.lower() not in headers:
            return 200, "application/json", REAL_IP_JSON.encode()
        if path == "/_fake/agent-connect" and method == "POST":
            return self._connect(body)
        return self._api(method, path)

    def _api(self, method: str, path: str) -> Any:
        if path == "/api/v1/setting" and method == "GET":
            return 200, "application/json", json.dumps({"success": True, "data": self._setting()}).encode()
        if path == "/api/v1/api-tokens" and self.profile == "v2.1+":
            return (200, "application/json", b'{"error":"ApiErrorUnauthorized"}',
                    {"WWW-Authenticate": 'JWT realm="nezha"'})
        if path.startswith("/api/"):
            return (200 if self.profile == "v1.0-1.4" else 404), "application/json", NOT_FOUND_JSON.encode()
        return 404, "text/html", NOT_FOUND_HTML.encode()

    def _setting(self) -> dict[str, Any]:
        flat = {"site_name": "Nezha", "language": "en_US", "custom_code": ""}
        if self.profile == "v1.0-1.4":
            return flat
        data: dict[str, Any] = {"config": flat, "version": ".".join(map(str, PROFILE_VERSIONS[self.profile]))}
        if self.profile in ("v2.0", "v2.1+"):
            data["tsdb_enabled"] = False
        return data

    def _connect(self, body: bytes) -> Any:
        try:
            value = json.loads(body)
            uuid, secret = str(value["uuid"]), str(value["secret"])
        except (ValueError, KeyError, TypeError):
            return 400, "application/json", b'{"error":"bad hook request"}'
        with self.lock:
            outcome, server_id = self._enroll(uuid, secret)
            self.connections.append(Connection(uuid, outcome, server_id))
        if server_id is None:
            return 403, "application/json", json.dumps({"error": outcome}).encode()
        return 200, "application/json", json.dumps({"outcome": outcome, "id": server_id}).encode()

    def _enroll(self, uuid: str, secret: str) -> tuple[str, int | None]:
        """The dashboard's rules for an agent's call (caller holds the lock)."""
        owner = self.agent_secrets.get(secret)
        if owner is None:
            self.failed_credentials += 1
            return "wrong agent secret", None
        if not UUID_RE.match(uuid):
            self.failed_credentials += 1
            return "malformed uuid", None
        known = next((s for s in self.servers if s.uuid == uuid), None)
        if known is not None:
            if known.owner != owner and PROFILE_VERSIONS[self.profile] >= (2, 0, 10):
                return "does not belong to the agent secret owner", None
            return "known", known.id
        server = V1Server(self._next_id, _two_words(), uuid, owner)
        self._next_id += 1
        self.servers.append(server)
        return "created", server.id


def _two_words() -> str:
    return f"{secrets.choice(_WORDS_A)}-{secrets.choice(_WORDS_B)}"


def serve_v1(fake: FakeV1, host: str = "127.0.0.1", port: int = 0) -> Running:
    """Start `fake` on host:port in a background thread (fake_dashboard's server, duck-typed)."""
    return serve(fake, host, port)  # type: ignore[arg-type]  # FakeV1 has the handle/faults FakeDashboard has
