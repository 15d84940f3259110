"""The fakes answer as the real dashboards did: every recorded exchange, replayed in order.

tests/data/real/<version>.json holds what the real Nezha dashboards answered (built from their tags and
run on loopback; secrets replaced by placeholders such as <JWT>, <CSRF>, <PAT>, <TOKEN>, <SECRET>).
Each version's exchanges are sent, in the recorded order, to one fake of the matching profile and
version, with the fake's own credentials in the placeholders' places; a server the real answer lists
for the first time is enrolled in the fake first (by the real agent there), under its uuid and name.
Compared: the status, the Content-Type, the JSON body's shape (every key; the values that carry
meaning exactly: errors, messages, ids, names, notes, flags, members) and the cookies' names and
attributes. What the fakes do not serve (the tool never calls it) is listed in SKIPPED with the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nezha_bootstrap.testing.fake_v0 import FakeDashboard
from nezha_bootstrap.testing.fake_v1 import SITE_NAME, FakeV1, V1Group

DATA = Path(__file__).parent / "data" / "real"
V1_VERSIONS = {"v1.14.14": ("v1.5-1.14", (1, 14, 14)), "v2.0.14": ("v2.0", (2, 0, 14)),
               "v2.1.5": ("v2.1+", (2, 1, 5)), "v2.3.7": ("v2.1+", (2, 3, 7))}
V0_TOKEN, V0_SEEDED = "T0kenT0kenT0kenT0kenT0kenT0ken32", "Seed0Seed0Seed0Seed0Seed0Seed032"
V0_SESSION = "Sess1onSess1onSess1onSess1onSess1onSess1o"

# Requests the fakes do not serve, because the tool never sends them, and why the rest are left out.
SKIPPED = {
    "/api/v1/profile": "the user's profile (agent secret, password hash): the tool never reads it",
    "/api/v1/refresh-token": "JWT refresh: the tool logs in once per run",
    "/api/v1/waf": "the WAF's block list: the tool never reads it",
    "/api/v1/api-tokens with a credential": "creating and listing access tokens is the operator's, not the tool's",
    "/api/token": "v0 token minting with the session cookie: the tool gets its token from the operator",
    "logged-in setting": "the logged-in view of /api/v1/setting (version, templates): the tool probes as a guest",
    "WAF on": "WAF timing (blocked for 3, 16, 81 s): test_fake_v2_api.py checks the fake's ladder; the "
              "recordings probe it with wall-clock waits",
}
OPAQUE = {"host", "state", "geoip", "status"}  # what the agent reports: only its type is compared
EXACT_TEXT = {"error", "message", "name", "note", "public_note", "uuid", "tag", "valid_ip"}
EXACT_NUMBER = {"id", "code", "display_index", "data", "servers"}


def shape(value: Any, key: str = "") -> Any:
    """What must match: every key; exact values where they carry meaning, else the JSON type."""
    if key in OPAQUE:
        return type(value).__name__
    if isinstance(value, dict):
        return {k: shape(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v, key) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return value if key in EXACT_NUMBER else "number"
    return value if key in EXACT_TEXT else "string"


def cookie_attributes(values: list[str]) -> list[str]:
    """Set-Cookie headers as the recordings keep them: the name and the attributes, not the value."""
    return [re.sub(r"^([^=;]+)=[^;]*", r"\1", value) for value in values]


@dataclass
class Answered:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)


def answered(outcome: Any) -> Answered:
    status, content_type, body, *extra = outcome
    return Answered(status, content_type, body, extra[0] if extra else {})


def body_value(text: str | bytes) -> tuple[bool, Any]:
    try:
        return True, json.loads(text)
    except ValueError:
        return False, None


def compare(entry: dict[str, Any], got: Answered) -> None:
    real = entry["response"]
    name = entry["name"]
    assert got.status == real["status"], f"{name}: status {got.status}, real {real['status']}"
    real_type = {k.lower(): v for k, v in real["headers"].items()}.get("content-type", "")
    is_json, real_body = body_value(real["body"] or "")
    if is_json and real["body"]:
        assert got.content_type == real_type, f"{name}: Content-Type {got.content_type!r}, real {real_type!r}"
        fake_json, fake_body = body_value(got.body)
        assert fake_json, f"{name}: the fake's body is not JSON: {got.body[:200]!r}"
        assert shape(fake_body) == shape(real_body), f"{name}: body differs"
    elif real["body"]:
        assert got.content_type.split(";")[0] == real_type.split(";")[0], f"{name}: Content-Type differs"
    cookies = real["headers"].get("Set-Cookie (names and attributes only)")
    if cookies is not None:
        assert cookie_attributes(list(got.headers.get("Set-Cookie", []))) == cookies, f"{name}: cookies differ"
    realm = {k.lower(): v for k, v in real["headers"].items()}.get("www-authenticate")
    if realm is not None:
        assert realm.startswith("JWT realm=") and '"' not in realm  # the site name, unquoted
        assert got.headers.get("WWW-Authenticate") == f"JWT realm={SITE_NAME}", f"{name}: WWW-Authenticate differs"


def recorded(version: str) -> list[dict[str, Any]]:
    return list(json.loads((DATA / f"{version}.json").read_text(encoding="utf-8")))


def skip_reason(entry: dict[str, Any]) -> str | None:
    """Why an exchange is not replayed (a key of SKIPPED), or None."""
    request = entry["request"]
    path = str(request["path"]).split("?")[0]
    if "WAF on" in entry["name"]:
        return "WAF on"
    if path in ("/api/v1/profile", "/api/v1/refresh-token", "/api/v1/waf", "/api/token"):
        return path
    if path == "/api/v1/setting" and "<JWT>" in json.dumps(request["headers"]):
        return "logged-in setting"
    if path == "/api/v1/api-tokens" and request["headers"]:
        return "/api/v1/api-tokens with a credential"
    return None


# --- v1/v2 ---------------------------------------------------------------------------------------

@dataclass
class V1World:
    """A fake of one real version and the credentials standing in for the recorded placeholders."""

    fake: FakeV1
    jwt: str = ""
    csrf: str = ""
    tokens: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, version: str) -> V1World:
        profile, number = V1_VERSIONS[version]
        fake = FakeV1(profile=profile, version=number)
        fake.add_login(1, "admin", "admin")
        world = cls(fake)
        unknown = "nzp_" + "x" * 32
        if fake.has_tokens:
            write = (fake.read_scope, "nezha:server:write")
            world.tokens = {"<PAT>": fake.add_token(scopes=write), "<PAT-readonly>": fake.add_token(
                scopes=(fake.read_scope,)), "<PAT-all>": fake.add_token(scopes=("nezha:*",)), "wrong": unknown}
        else:
            world.tokens = {"<PAT>": unknown, "wrong": unknown}
        return world

    def headers(self, entry: dict[str, Any]) -> dict[str, str]:
        """The recorded request's headers with this fake's credentials in place of the placeholders."""
        name = entry["name"]
        jwt = "eyJgarbage.garbage.garbage" if "wrong JWT" in name or "garbage" in name else self.jwt
        pat = self.tokens["wrong"] if "wrong PAT" in name else self.tokens["<PAT>"]
        out = {}
        for key, value in entry["request"]["headers"].items():
            value = value.replace("<JWT>", jwt).replace("<CSRF>", self.csrf)
            for placeholder in ("<PAT-readonly>", "<PAT-all>"):
                value = value.replace(placeholder, self.tokens.get(placeholder, self.tokens["wrong"]))
            out[key.lower()] = value.replace("<PAT>", pat)
        return out

    def sync(self, entry: dict[str, Any]) -> None:
        """Bring the fake to the real state the tool met: between the harness's exchanges and the tool's
        own ("tool v2api ..."), the tool's reconcile runs (recorded apart) renamed servers and made groups."""
        ok, value = body_value(entry["response"]["body"] or "")
        items = value.get("data") if ok and isinstance(value, dict) else None
        path = entry["request"]["path"].split("?")[0]
        for item in items if isinstance(items, list) else []:
            if path == "/api/v1/server" and isinstance(item, dict) and "uuid" in item:
                server = self.fake.server(item["uuid"])
                assert server is not None
                for key in ("name", "note", "public_note", "display_index", "hide_for_guest"):
                    setattr(server, key, item.get(key, type(getattr(server, key))()))
        if path == "/api/v1/server-group" and isinstance(items, list):
            self.fake.groups = [V1Group(i["group"]["id"], i["group"]["name"], 1, list(i["servers"] or []))
                                for i in items]
            self.fake._next_group_id = max((g.id for g in self.fake.groups), default=0) + 1

    def meet(self, entry: dict[str, Any]) -> None:
        """Enroll, as the real agent did, every server the real answer lists that the fake lacks."""
        ok, value = body_value(entry["response"]["body"] or "")
        items = value.get("data") if ok and isinstance(value, dict) else None
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and "uuid" in item and self.fake.server(item["uuid"]) is None:
                self.fake.handle("POST", "/_fake/agent-connect", {}, json.dumps(
                    {"uuid": item["uuid"], "secret": self.fake.agent_secret}).encode(), "127.0.0.1")
                enrolled = self.fake.server(item["uuid"])
                assert enrolled is not None and enrolled.id == item["id"], f"{entry['name']}: ids diverged"
                enrolled.name = item["name"]  # the two random words the real one chose

    def send(self, entry: dict[str, Any]) -> Answered:
        request = entry["request"]
        body = (request["body"] or "").encode()
        got = answered(self.fake.handle(request["method"], request["path"], self.headers(entry), body, "127.0.0.1"))
        if request["path"] == "/api/v1/login" and got.status == 200 and b'"token"' in got.body:
            self.jwt = json.loads(got.body)["data"]["token"]
            for cookie in got.headers.get("Set-Cookie", []):
                if cookie.startswith("nz-csrf="):
                    self.csrf = cookie.split(";")[0].split("=", 1)[1]
        return got


def exchanges(version: str) -> Iterator[dict[str, Any]]:
    return (entry for entry in recorded(version) if "request" in entry)


@pytest.mark.parametrize("version", sorted(V1_VERSIONS))
def test_the_fake_v1_answers_every_recorded_exchange_as_the_real_dashboard(version: str) -> None:
    world = V1World.of(version)
    replayed, skipped, synced = 0, 0, set()
    for entry in exchanges(version):
        if skip_reason(entry) is not None:
            skipped += 1
            continue
        world.meet(entry)
        block = entry["name"].split(":")[0] if entry["name"].startswith("tool v2api") else ""
        first_read = (block, entry["request"]["path"])
        if block and entry["request"]["method"] == "GET" and first_read not in synced:
            world.sync(entry)  # once per list, where a run of the tool's own requests starts
            synced.add(first_read)
        compare(entry, world.send(entry))
        replayed += 1

    assert replayed >= 40, f"only {replayed} exchanges replayed ({skipped} skipped)"


# --- v0 ------------------------------------------------------------------------------------------

def v0_headers(entry: dict[str, Any]) -> dict[str, str]:
    return {key.lower(): value.replace("<TOKEN-seeded>", V0_SEEDED).replace("<TOKEN>", V0_TOKEN).replace(
        "<SESSION>", V0_SESSION) for key, value in entry["request"]["headers"].items()}


def v0_meet(fake: FakeDashboard, entry: dict[str, Any]) -> None:
    """Create in the fake the servers the real answer lists that it lacks: the tool's own runs (recorded
    apart, in tool-runs) registered them between the harness's exchanges."""
    ok, value = body_value(entry["response"]["body"] or "")
    items = value.get("result") if ok and isinstance(value, dict) else None
    known = {server.id for server in fake.servers}
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and "id" in item and item["id"] not in known:
            fake._next_id = item["id"]
            fake.create(item["name"], item["tag"], "", bool(item["hide_for_guest"]))


def test_the_fake_v0_answers_every_recorded_exchange_as_the_real_dashboard() -> None:
    fake = FakeDashboard(V0_TOKEN)
    fake.tokens.add(V0_SEEDED)
    fake.sessions.add(V0_SESSION)
    replayed = 0
    for entry in exchanges("v0.20.13"):
        if skip_reason(entry) is not None:
            continue
        fake.has_user = not entry["name"].startswith("no-user-yet")  # recorded before a users row existed
        v0_meet(fake, entry)
        request = entry["request"]
        got = fake.handle(request["method"], request["path"], v0_headers(entry), (request["body"] or "").encode(),
                          "127.0.0.1")
        compare(entry, answered(got))
        replayed += 1

    assert replayed >= 45, f"only {replayed} exchanges replayed"


def test_every_skipped_exchange_has_a_reason() -> None:
    reasons = {skip_reason(entry) for version in ("v0.20.13", *V1_VERSIONS) for entry in exchanges(version)}

    assert reasons - {None} <= set(SKIPPED)


def test_the_recordings_hold_no_secret() -> None:
    text = "".join((DATA / f"{version}.json").read_text(encoding="utf-8") for version in ("v0.20.13", *V1_VERSIONS))

    assert not re.search(r"eyJ[A-Za-z0-9_-]{8,}\.", text)  # a JWT
    assert not re.search(r"nzp_[A-Za-z0-9]{20,}", text)  # an access token
    assert not re.search(r"nz-csrf=(?!<CSRF>)", text)
    assert not re.search(r"\$2[aby]\$", text)  # a bcrypt hash
