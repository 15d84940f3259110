"""Which generation of Nezha dashboard answers at a URL, from three requests without credentials.

The probes and the answers they tell apart are the table in dashboard-v1-v2.md ("Telling the
generation apart without credentials"); none of them sends a credential, so none can count
towards the dashboard's WAF.

Observed on the real dashboards (tests/data/real; tests/live repeats the probes against a live one):
v0.20.13 answers the settings probe with a themed HTML 404 and the register probe with HTTP 200
`{"code":403,...}`; v1.14.14 has `data.config` without `tsdb_enabled`; v2.0.14 adds `tsdb_enabled`
and answers /api/v1/api-tokens with a JSON 404; v2.1.5 and v2.3.7 answer it with HTTP 200
`{"error":"ApiErrorUnauthorized"}` and `WWW-Authenticate: JWT realm=<site name>`. The guest settings
carry no `version`, so the probes never rely on one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from nezha_bootstrap.errors import DashboardRefused

if TYPE_CHECKING:
    import httpx  # its one home is http.py; here only for the client's type

PROBE_CAP = 64 * 1024


class Generation(enum.Enum):
    """A dashboard generation as the probes can tell it; the value is what output and state show."""

    V0 = "v0"
    V1_0 = "v1.0-1.4"
    V1_5 = "v1.5-1.14"
    V2_0 = "v2.0"
    V2_1 = "v2.1+"
    V1 = "v1+"  # --dashboard v1: not probed, so only "v1 or newer" is known

    @property
    def is_v0(self) -> bool:
        return self is Generation.V0

    @property
    def has_access_tokens(self) -> bool:
        """Personal access tokens (and so naming a server) exist from v2.1.0."""
        return self is Generation.V2_1


@dataclass(frozen=True)
class Probe:
    """One credential-free request of the detection table."""

    name: str
    method: str
    path: str
    body: bytes | None = None


PROBES = (
    Probe("setting", "GET", "/api/v1/setting"),
    Probe("register", "POST", "/api/v1/server/register", b"{}"),
    Probe("api-tokens", "GET", "/api/v1/api-tokens"),
)


@dataclass(frozen=True)
class Reply:
    """What a probe got back: the status and the (capped) body."""

    status: int
    body: bytes


REAL_IP_MESSAGE = (
    "the dashboard expects a real-IP header from its reverse proxy and was reached around that "
    "proxy (every answer is \"real ip header not found\"); use the proxied URL"
)
TOO_OLD_MESSAGE = (
    "the dashboard is v0 older than v0.20.12: it has no register API, and this tool needs it. "
    "Upgrade the dashboard to v0.20.12 or newer (the last v0 is v0.20.13)"
)


def _json(body: bytes) -> Any:
    from nezha_bootstrap.http import json_body  # here: a --dry-run that probes nothing never loads httpx

    return json_body(body)[1]


def _error_is(reply: Reply, text: str) -> bool:
    value = _json(reply.body)
    return isinstance(value, dict) and value.get("error") == text


def classify(replies: dict[str, Reply]) -> Generation:
    """The generation the three replies show, or DashboardRefused saying what answered instead."""
    from nezha_bootstrap.http import REAL_IP_ERROR

    if any(_error_is(reply, REAL_IP_ERROR) for reply in replies.values()):
        raise DashboardRefused(REAL_IP_MESSAGE)
    setting = replies["setting"]
    if setting.status == 404 and _json(setting.body) is None:
        return _classify_v0(replies["register"])
    value = _json(setting.body)
    if setting.status != 200 or not isinstance(value, dict) or value.get("success") is not True:
        raise DashboardRefused(_unknown("GET /api/v1/setting", setting))
    data = value.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        return Generation.V1_0  # v1.0-1.4 answer a flat settings object
    if "tsdb_enabled" not in data:
        return Generation.V1_5
    tokens = replies["api-tokens"]
    if tokens.status == 200 and _error_is(tokens, "ApiErrorUnauthorized"):
        return Generation.V2_1
    if tokens.status == 404:
        return Generation.V2_0
    raise DashboardRefused(_unknown("GET /api/v1/api-tokens", tokens))


def _classify_v0(register: Reply) -> Generation:
    value = _json(register.body)
    if register.status == 200 and isinstance(value, dict) and value.get("code") == 403:
        return Generation.V0
    if register.status == 404 and value is None:
        raise DashboardRefused(TOO_OLD_MESSAGE)
    raise DashboardRefused(_unknown("POST /api/v1/server/register", register))


def _unknown(request: str, reply: Reply) -> str:
    return (
        f"generation detection: {request} answered HTTP {reply.status}, which no Nezha dashboard "
        "answers; the URL does not point at a dashboard (a proxy, a portal, another site?). "
        "Check the dashboard URL, or name the generation with --dashboard v0|v1"
    )


Send = Callable[[Probe, float], Reply]


def detect(send: Send, seconds_left: float) -> Generation:
    """Send the three probes through `send` and classify; 5xx and 429 are Transient (retry)."""
    from nezha_bootstrap.http import check_status

    replies: dict[str, Reply] = {}
    for probe in PROBES:
        reply = send(probe, seconds_left)
        check_status(f"generation detection: {probe.method} {probe.path}", reply.status)
        replies[probe.name] = reply
    return classify(replies)


def http_sender(client: httpx.Client, base_url: str) -> Send:
    """A `send` that performs a probe with the shared client through http.fetch."""
    from nezha_bootstrap.http import fetch

    def send(probe: Probe, seconds_left: float) -> Reply:
        kwargs: dict[str, Any] = {}
        if probe.body is not None:
            kwargs = {"content": probe.body, "headers": {"Content-Type": "application/json"}}
        answer = fetch(client, probe.method, f"{base_url}{probe.path}", seconds_left=seconds_left,
                       cap=PROBE_CAP, ambiguous=False, **kwargs)
        return Reply(answer.status, answer.body)

    return send
