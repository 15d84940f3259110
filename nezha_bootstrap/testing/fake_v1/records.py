"""The rows a fake v1/v2 dashboard keeps: servers, groups, access tokens, writes and agent calls."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

_WORDS_A = ("calm", "brave", "quick", "silent", "bright", "gentle", "lucky", "misty", "proud", "witty")
_WORDS_B = ("lark", "otter", "maple", "heron", "fox", "pine", "comet", "river", "finch", "cedar")
GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def new_agent_secret() -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(32))


def two_words() -> str:
    """The name a v1/v2 dashboard gives a server its agent enrolled."""
    return f"{secrets.choice(_WORDS_A)}-{secrets.choice(_WORDS_B)}"


@dataclass
class V1Server:
    id: int
    name: str
    uuid: str
    owner: int
    hide_for_guest: bool = False  # an enrolled server is visible to guests
    note: str = ""
    public_note: str = ""
    display_index: int = 0
    enable_ddns: bool = False
    ddns_profiles: list[int] = field(default_factory=list)
    override_ddns_domains: dict[str, list[str]] = field(default_factory=dict)
    created_at: float = 0.0
    last_active: float | None = None  # wall-clock time of the agent's last report (the connect hook)
    connected: bool = False  # its agent connected and keeps reporting (every look sees a newer report)

    def listed(self, with_owner: bool = True) -> dict[str, Any]:
        """The item of GET /api/v1/server: empty and false fields are omitted, as Go's omitempty does.

        Keys in the real dashboards' order; `owner` observed on v2.0.14, v2.1.5 and v2.3.7, not v1.14.14;
        host/state/geoip are what the agent reported (kept minimal here); last_active is Go's zero time
        until the agent reports."""
        if self.connected:  # the real agent v2.3.3 reports every report_delay s, each moving last_active
            self.last_active = max(time.time(), (self.last_active or 0) + 0.001)
        stamp = rfc3339(self.created_at)
        item: dict[str, Any] = {"id": self.id, "created_at": stamp, "updated_at": stamp, "name": self.name,
                                "uuid": self.uuid}
        optional = {"note": self.note, "public_note": self.public_note, "display_index": self.display_index,
                    "hide_for_guest": self.hide_for_guest, "enable_ddns": self.enable_ddns,
                    "ddns_profiles": self.ddns_profiles, "override_ddns_domains": self.override_ddns_domains}
        item.update({key: value for key, value in optional.items() if value or key == "display_index"})
        item.update({"host": {"version": ""} if self.last_active else {}, "state": {}, "geoip": {"ip": {}},
                     "last_active": rfc3339(self.last_active) if self.last_active else GO_ZERO_TIME})
        if with_owner:
            item["owner"] = {"id": 0}
        return item


@dataclass
class V1Group:
    id: int
    name: str
    owner: int
    servers: list[int] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)

    def listed(self) -> dict[str, Any]:
        """The item of GET /api/v1/server-group (no user_id in the real answer)."""
        stamp = rfc3339(self.created_at)
        return {"group": {"id": self.id, "created_at": stamp, "updated_at": stamp, "name": self.name},
                "servers": list(self.servers) or None}


def rfc3339(when: float) -> str:
    """A wall-clock time as Go's time.Time marshals it (UTC, nanoseconds)."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
    return f"{whole}.{int((when % 1) * 1e9):09d}Z"



@dataclass(frozen=True)
class Token:
    """A personal access token: its owner, scopes and expiry (clock time, None: never)."""

    value: str
    user: int
    scopes: tuple[str, ...]
    expires_at: float | None = None


@dataclass(frozen=True)
class Change:
    """One server write: when, which server, the fields as written."""

    at: float
    server_id: int
    fields: dict[str, Any]


@dataclass(frozen=True)
class Connection:
    """One agent-connect call and what the dashboard did with it."""

    uuid: str
    outcome: str  # "created", "known", or the refusal
    server_id: int | None = None
    at: float = field(default_factory=time.time, compare=False)  # wall-clock arrival, for the first-boot timing




def visible(servers: list[V1Server], admins: set[int], user: int) -> list[V1Server]:
    """The servers `user` sees: all of them for an admin, else the ones its agent secret enrolled."""
    return [s for s in servers if user in admins or s.owner == user]
