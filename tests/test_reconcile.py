"""`reconcile`: the manifest, the plan as data, apply and verify against the fake v1/v2 dashboard, credentials."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nezha_bootstrap.cli import main
from nezha_bootstrap.errors import DashboardRefused, SettingsError
from nezha_bootstrap.fleet.manifest import Entry, Manifest, parse, toml_loads, validate
from nezha_bootstrap.fleet.reconcile import Applier, GroupChange, Server, make_plan, run
from nezha_bootstrap.fleet.session import Session
from nezha_bootstrap.http import make_client
from nezha_bootstrap.identity import machine_uuid
from nezha_bootstrap.testing.fake_v0 import Running
from nezha_bootstrap.testing.fake_v1 import FakeV1, serve_v1
from nezha_bootstrap.v1.api import Group, TokenRefused, V2Api
from tests.conftest import Outcome, make_runner

MID_A = "0123456789abcdef0123456789abcdef"
MID_B = "fedcba9876543210fedcba9876543210"
UUID_C = "8d3b2c6e-0f41-5a6b-9c7d-1e2f3a4b5c6d"
UUID_D = "11111111-2222-3333-4444-555555555555"
UUID_X = "99999999-8888-7777-6666-555555555555"


def problems_of(value: Any) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        validate(value, "m.json")
    return caught.value.problems


# --- the manifest ------------------------------------------------------------------------------

def test_a_machine_id_key_derives_the_uuid_identity_py_gives_the_node() -> None:
    manifest = validate({"servers": [{"machine_id": MID_A, "name": "web-1"}]})
    assert manifest.entries == (Entry(uuid=machine_uuid(MID_A), label=f"machine_id {MID_A}", name="web-1"),)


def test_defaults_apply_to_every_entry_and_an_entry_overrides_them() -> None:
    manifest = validate({
        "defaults": {"hide_for_guest": True, "group": "web"},
        "servers": [{"uuid": UUID_C}, {"uuid": UUID_D, "hide_for_guest": False, "group": ["db", 7]}],
    })
    assert [(e.hide_for_guest, e.groups) for e in manifest.entries] == [(True, ("web",)), (False, ("db", 7))]


def test_every_problem_of_the_manifest_is_reported_together() -> None:
    assert problems_of({
        "servers": [
            {"uuid": "not-a-uuid", "name": "a"},
            {"machine_id": "UNINITIALIZED"},
            {"uuid": UUID_C, "machine_id": MID_A},
            {"uuid": UUID_D, "name": "", "note": 3, "hide_for_guest": "yes", "display_index": True,
             "group": [0], "colour": "red"},
            "web-3",
        ],
        "fleet": 1,
    }) == [
        "m.json: unknown top-level key 'fleet' (expected 'servers' and optionally 'defaults')",
        "m.json: servers[0]: the uuid must be 36 characters: hexadecimal digits with hyphens at positions "
        "9, 14, 19 and 24",
        "m.json: servers[1]: the machine_id must be 32 lower-case hexadecimal digits, as in /etc/machine-id",
        "m.json: servers[2]: give exactly one of 'uuid' and 'machine_id'",
        "m.json: servers[3]: unknown key 'colour' (one of uuid, machine_id, name, note, public_note, "
        "hide_for_guest, display_index, group)",
        f"m.json: servers[3] (uuid {UUID_D}): name must be a non-empty string",
        f"m.json: servers[3] (uuid {UUID_D}): note must be a string",
        f"m.json: servers[3] (uuid {UUID_D}): hide_for_guest must be true or false",
        f"m.json: servers[3] (uuid {UUID_D}): display_index must be an integer (a 32-bit one)",
        f"m.json: servers[3] (uuid {UUID_D}): group must be a group name, a group id (a positive integer), "
        "or a non-empty list of them",
        "m.json: servers[4] must be a table/object",
    ]


def test_two_entries_for_one_server_are_refused_even_when_one_names_the_machine_id() -> None:
    assert problems_of({"servers": [{"machine_id": MID_A}, {"uuid": machine_uuid(MID_A)}]}) == [
        f"m.json: machine_id {MID_A} and uuid {machine_uuid(MID_A)} are the same server "
        f"(uuid {machine_uuid(MID_A)}); keep one entry"
    ]


@pytest.mark.parametrize("value", [[], {"servers": {}}, {"servers": [{"uuid": UUID_C, "name": "a\nb"}]},
                                   {"defaults": {"uuid": UUID_C}, "servers": []}])
def test_malformed_manifests_are_refused(value: Any) -> None:
    with pytest.raises(SettingsError):
        validate(value)


@pytest.mark.skipif(toml_loads() is None, reason="needs tomllib (3.11+) or tomli")
def test_toml_and_json_give_the_same_manifest() -> None:
    toml = f'[defaults]\nhide_for_guest = true\n\n[[servers]]\nmachine_id = "{MID_A}"\nname = "web-1"\ngroup = 3\n'
    as_json = json.dumps({"defaults": {"hide_for_guest": True},
                          "servers": [{"machine_id": MID_A, "name": "web-1", "group": 3}]})
    assert parse(toml, "toml") == parse(as_json, "json")


def test_toml_without_a_reader_says_to_use_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("nezha_bootstrap.fleet.manifest.toml_loads", lambda: None)
    with pytest.raises(SettingsError) as caught:
        parse("[[servers]]\n", "toml", "fleet.toml")
    assert caught.value.problems == [
        "fleet.toml: reading TOML needs Python 3.11 or newer (or the tomli package); "
        "write the manifest as JSON (same keys) or install tomli"
    ]


@pytest.mark.parametrize(("text", "fmt", "start"), [("{", "json", "m is not valid JSON"),
                                                    ("servers = [", "toml", "m is not valid TOML")])
def test_unparsable_manifests_name_the_format(text: str, fmt: str, start: str) -> None:
    if fmt == "toml" and toml_loads() is None:
        pytest.skip("needs tomllib")
    with pytest.raises(SettingsError) as caught:
        parse(text, fmt, "m")
    assert caught.value.problems[0].startswith(start)


# --- the plan: pure ------------------------------------------------------------------------------

def fleet() -> tuple[list[Server], list[Group], Manifest]:
    """A mixed fleet: a rename, a hide, a note, a regroup, a server already right, one unmanaged, one missing."""
    servers = [
        Server(1, machine_uuid(MID_A), "calm-lark"),
        Server(2, UUID_C, "db-1", note="old", hide_for_guest=True),
        Server(3, UUID_D, "cache-1", hide_for_guest=True),
        Server(4, UUID_X, "lucky-otter"),
    ]
    groups = [Group(10, "web", frozenset({4})), Group(11, "db", frozenset({1})), Group(12, "misc", frozenset({1}))]
    manifest = validate({
        "defaults": {"hide_for_guest": True},
        "servers": [
            {"machine_id": MID_A, "name": "web-1", "group": "web"},
            {"uuid": UUID_C, "note": "primary", "public_note": "db", "display_index": 5, "group": 11},
            {"uuid": UUID_D, "name": "cache-1"},
            {"machine_id": MID_B, "name": "web-2", "group": "web"},
        ],
    })
    return servers, groups, manifest


def test_the_plan_of_a_mixed_fleet_names_every_change_and_every_mismatch() -> None:
    plan = make_plan(*fleet())
    a, c = machine_uuid(MID_A), UUID_C

    def row(action: str, sid: int | None, uuid: str, server: str | None, old: Any, new: Any) -> dict[str, Any]:
        return {"action": action, "server_id": sid, "uuid": uuid, "server": server, "from": old, "to": new}

    assert plan.actions() == [
        row("rename", 1, a, "calm-lark", "calm-lark", "web-1"),
        row("hide from guests", 1, a, "calm-lark", False, True),
        row("set note", 2, c, "db-1", "old", "primary"),
        row("set public note", 2, c, "db-1", "", "db"),
        row("set display index", 2, c, "db-1", 0, 5),
        row("join group", 1, a, "calm-lark", None, "web (#10)"),
        row("join group", 2, c, "db-1", None, "db (#11)"),
        row("leave group", 1, a, "calm-lark", None, "db (#11)"),
        row("no server yet", None, machine_uuid(MID_B), None, None, "web-2"),
        row("not in manifest", 4, UUID_X, "lucky-otter", None, None),
    ]
    assert plan.groups == (GroupChange(10, "web", frozenset({1}), frozenset()),
                           GroupChange(11, "db", frozenset({2}), frozenset({1})))
    assert plan.writes == 4  # two servers, two groups; server 3 is already as the manifest says


def test_groups_the_manifest_does_not_name_are_left_alone() -> None:
    plan = make_plan(*fleet())
    assert all(change.group_id != 12 for change in plan.groups)  # server 1 stays in "misc"


def test_a_group_that_does_not_exist_is_created_with_its_members() -> None:
    servers = [Server(1, UUID_C, "a"), Server(2, UUID_D, "b")]
    manifest = validate({"servers": [{"uuid": UUID_C, "group": "edge"}, {"uuid": UUID_D, "group": "edge"}]})
    plan = make_plan(servers, [], manifest)
    assert plan.groups == (GroupChange(None, "edge", frozenset({1, 2}), frozenset()),)
    assert [r["action"] for r in plan.actions()] == ["join group (new)", "join group (new)"]


def test_an_ambiguous_group_name_or_an_unknown_id_is_a_manifest_problem() -> None:
    groups = [Group(10, "web", frozenset()), Group(13, "web", frozenset())]
    manifest = validate({"servers": [{"uuid": UUID_C, "group": "web"}, {"uuid": UUID_D, "group": 99}]})
    with pytest.raises(SettingsError) as caught:
        make_plan([Server(1, UUID_C, "a")], groups, manifest)
    assert caught.value.problems == [
        f"uuid {UUID_C}: 2 groups are called 'web' (ids 10, 13); name the group by its id in the manifest",
        f"uuid {UUID_D}: there is no group with id 99 on the dashboard",
    ]


def test_a_fleet_that_matches_the_manifest_plans_nothing() -> None:
    servers = [Server(1, UUID_C, "web-1", hide_for_guest=True)]
    manifest = validate({"servers": [{"uuid": UUID_C, "name": "web-1", "hide_for_guest": True, "group": 10}]})
    plan = make_plan(servers, [Group(10, "web", frozenset({1}))], manifest)
    assert (plan.actions(), plan.writes) == ([], 0)


def test_the_uuid_is_matched_exactly_as_the_dashboard_keys_it() -> None:
    plan = make_plan([Server(1, UUID_C.upper(), "a")], [], validate({"servers": [{"uuid": UUID_C, "name": "b"}]}))
    assert [r["action"] for r in plan.actions()] == ["no server yet", "not in manifest"]


def test_the_patch_form_carries_all_eight_fields() -> None:
    server = Server.from_api({"id": 3, "uuid": UUID_C, "name": "a", "display_index": 2, "enable_ddns": True,
                              "ddns_profiles": [4]})
    assert server.form(name="b") == {
        "name": "b", "note": "", "public_note": "", "hide_for_guest": False, "display_index": 2,
        "enable_ddns": True, "ddns_profiles": [4], "override_ddns_domains": {},
    }


def manifest_file(tmp_path: Path, value: Any, suffix: str = ".json") -> Path:
    path = tmp_path / f"fleet{suffix}"
    path.write_text(json.dumps(value))
    return path


# --- the group write: replace-all, read back, retry ---------------------------------------------

class MemoryApi:
    """A reconcile.Api in memory whose first group write is undone by a concurrent client's stale write."""

    def __init__(self, servers: list[Server], groups: list[Group], race: int = 1) -> None:
        self.servers_ = {s.id: s for s in servers}
        self.groups_ = {g.id: g for g in groups}
        self.race = race
        self.writes: list[tuple[str, int]] = []

    def servers(self) -> list[Server]:
        return list(self.servers_.values())

    def groups(self) -> list[Group]:
        return list(self.groups_.values())

    def patch_server(self, server_id: int, form: dict[str, Any]) -> None:
        self.writes.append(("server", server_id))
        old = self.servers_[server_id]
        self.servers_[server_id] = Server(server_id, old.uuid, form["name"], form["note"], form["public_note"],
                                          form["hide_for_guest"], form["display_index"])

    def create_group(self, name: str, members: list[int]) -> None:
        self.writes.append(("create", len(self.groups_)))
        new_id = max(self.groups_, default=0) + 1
        self.groups_[new_id] = Group(new_id, name, frozenset(members))

    def patch_group(self, group_id: int, name: str, members: list[int]) -> None:
        self.writes.append(("group", group_id))
        before = self.groups_[group_id]
        self.groups_[group_id] = Group(group_id, name, frozenset(members))
        if self.race:  # another client's PATCH from a read before ours lands after it
            self.race -= 1
            self.groups_[group_id] = Group(group_id, name, before.members | {99})


def test_a_membership_lost_to_a_concurrent_replace_is_written_again_after_a_jittered_pause() -> None:
    api = MemoryApi([Server(1, UUID_C, "a")], [Group(10, "web", frozenset({5}))], race=2)
    pauses: list[float] = []
    applier = Applier(api, notify=lambda message: None, sleep=pauses.append)

    applier.apply(make_plan(api.servers(), api.groups(), validate({"servers": [{"uuid": UUID_C, "group": 10}]})))

    assert api.groups_[10].members == {1, 5, 99}  # ours, the one before, and the concurrent client's
    assert api.writes == [("group", 10)] * 3 and len(pauses) == 2 and applier.failures == []


def test_a_membership_that_never_holds_is_a_failure_not_an_endless_loop() -> None:
    api = MemoryApi([Server(1, UUID_C, "a")], [Group(10, "web", frozenset())], race=100)
    applier = Applier(api, notify=lambda message: None, sleep=lambda seconds: None, group_attempts=3)

    applier.apply(make_plan(api.servers(), api.groups(), validate({"servers": [{"uuid": UUID_C, "group": 10}]})))

    assert applier.failures == ["group 'web': the member list did not hold after 3 attempts "
                                "(other clients keep replacing it)"]


def test_apply_then_verify_in_memory_leaves_nothing_to_do() -> None:
    servers, groups, manifest = fleet()
    api = MemoryApi(servers, groups, race=0)
    plan, failures = run(api, manifest, apply=True, notify=lambda message: None)
    assert failures == [] and plan.writes == 4
    assert make_plan(api.servers(), api.groups(), manifest).writes == 0


# --- the command against the fake v1/v2 dashboard -------------------------------------------------

PASSWORD = "correct horse battery staple"
CREDENTIALED = ("authorization", "cookie")


@dataclass
class Fleet:
    """A fake dashboard with a mixed fleet, served on 127.0.0.1, and a manifest file for it."""

    fake: FakeV1
    running: Running
    manifest: Path
    outputs: list[Outcome] = field(default_factory=list)

    def __call__(self, *args: str, input: str | None = None, **env: str) -> Outcome:
        result = make_runner().invoke(main, ["reconcile", str(self.manifest), *args], input=input,
                                      env={"NEZHA_DASHBOARD_URL": self.running.url, "NEZHA_BOOTSTRAP_DEADLINE": "5",
                                           **env}, catch_exceptions=False)
        outcome = Outcome(result, result.stdout, result.stderr)
        self.outputs.append(outcome)
        return outcome

    def credentialed(self, since: int = 0) -> list[tuple[str, str]]:
        """Requests that carried a credential (or a login), after the `since`-th journal entry."""
        return [(j.method, j.path) for j in self.fake.journal[since:]
                if j.path == "/api/v1/login" or any(h in j.headers for h in CREDENTIALED)]

    def writes(self, since: int = 0) -> list[tuple[str, str]]:
        return [(j.method, j.path) for j in self.fake.journal[since:] if j.method in ("PATCH", "POST")
                and j.path.startswith("/api/v1/") and j.path != "/api/v1/login"
                and j.path != "/api/v1/server/register"]


def enroll(fake: FakeV1, uuid: str) -> int:
    status, _, body = fake.handle("POST", "/_fake/agent-connect", {},
                                  json.dumps({"uuid": uuid, "secret": fake.agent_secret}).encode(), "127.0.0.1")[:3]
    assert status == 200
    return int(json.loads(body)["id"])


MANIFEST = {
    "defaults": {"hide_for_guest": True},
    "servers": [
        {"machine_id": MID_A, "name": "web-1", "group": "web", "public_note": "frontend"},
        {"uuid": UUID_C, "name": "db-1", "note": "primary", "group": "db", "display_index": 5},
        {"uuid": UUID_D, "name": "cache-1", "hide_for_guest": False},
        {"machine_id": MID_B, "name": "web-2", "group": "web"},
    ],
}


@pytest.fixture(params=["v2.1+"])
def fleet_at(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    fake = FakeV1(profile=request.param)
    for uuid in (machine_uuid(MID_A), UUID_C, UUID_D, UUID_X):
        enroll(fake, uuid)
    fake.add_group("web", (4,))
    fake.add_group("db", (1,))
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(MANIFEST))
    with serve_v1(fake) as running:
        yield Fleet(fake, running, path)


def as_dashboard_has_them(fake: FakeV1) -> list[tuple[Any, ...]]:
    return [(s.id, s.name, s.note, s.public_note, s.hide_for_guest, s.display_index) for s in fake.servers]


EXPECTED = [
    (1, "web-1", "", "frontend", True, 0),
    (2, "db-1", "primary", "", True, 5),
    (3, "cache-1", "", "", False, 0),
]


def test_the_dry_run_shows_the_plan_and_writes_nothing(fleet_at: Fleet) -> None:
    token = fleet_at.fake.add_token()
    names = [s.name for s in fleet_at.fake.servers]

    outcome = fleet_at(NEZHA_TOKEN=token)

    assert outcome.exit_code == 0, outcome.stderr
    assert fleet_at.writes() == [] and [s.name for s in fleet_at.fake.servers] == names
    lines = outcome.stdout.splitlines()
    assert lines[0].split() == ["ACTION", "SERVER", "UUID", "FROM", "TO"]
    actions = [line.split("  ")[0] for line in lines[1:-1]]
    assert actions == ["rename", "set public note", "hide from guests", "rename", "set note", "hide from guests",
                       "set display index", "rename", "join group", "join group", "leave group", "no server yet",
                       "not in manifest"]
    assert lines[-1] == "dry run: 5 write(s) planned; run with --apply to carry them out"


def test_apply_changes_the_fleet_verifies_it_and_a_second_apply_only_reads(fleet_at: Fleet) -> None:
    token = fleet_at.fake.add_token()

    first = fleet_at("--apply", NEZHA_TOKEN=token)

    assert first.exit_code == 0, first.stderr
    assert as_dashboard_has_them(fleet_at.fake)[:3] == EXPECTED
    assert fleet_at.fake.servers[3].name not in ("web-1", "db-1", "cache-1")  # unmanaged: untouched
    assert {g.name: g.servers for g in fleet_at.fake.groups} == {"web": [1, 4], "db": [2]}
    assert first.stdout.splitlines()[-1] == "applied and verified 5 write(s)"
    mark = len(fleet_at.fake.journal)

    second = fleet_at("--apply", "--json", NEZHA_TOKEN=token)

    assert second.exit_code == 0, second.stderr
    assert fleet_at.writes(mark) == []
    summary = json.loads(second.stdout)
    assert (summary["outcome"], summary["writes"], summary["generation"]) == ("unchanged", 0, "v2.1+")
    assert [row["action"] for row in summary["actions"]] == ["no server yet", "not in manifest"]


def test_a_server_that_appears_later_is_named_and_grouped_by_the_next_apply(fleet_at: Fleet) -> None:
    token = fleet_at.fake.add_token()
    fleet_at("--apply", NEZHA_TOKEN=token)
    late = enroll(fleet_at.fake, machine_uuid(MID_B))

    assert fleet_at("--apply", NEZHA_TOKEN=token).exit_code == 0

    assert fleet_at.fake.server(machine_uuid(MID_B)).name == "web-2"  # type: ignore[union-attr]
    assert late in next(g.servers for g in fleet_at.fake.groups if g.name == "web")


def test_a_group_the_dashboard_lacks_is_created(fleet_at: Fleet) -> None:
    fleet_at.manifest.write_text(json.dumps({"servers": [{"uuid": UUID_D, "group": "cache"}]}))

    assert fleet_at("--apply", NEZHA_TOKEN=fleet_at.fake.add_token()).exit_code == 0

    assert [(g.name, g.servers) for g in fleet_at.fake.groups if g.name == "cache"] == [("cache", [3])]


@pytest.mark.parametrize("fleet_at", ["v1.0-1.4", "v1.5-1.14", "v2.0", "v2.1+"], indirect=True)
def test_a_password_login_works_on_every_generation(fleet_at: Fleet, tmp_path: Path) -> None:
    fleet_at.fake.add_login(1, "admin", PASSWORD)
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")

    outcome = fleet_at("--apply", "--username", "admin", "--password-file", str(password_file))

    assert outcome.exit_code == 0, outcome.stderr
    assert as_dashboard_has_them(fleet_at.fake)[:3] == EXPECTED
    assert [j.path for j in fleet_at.fake.journal if j.path == "/api/v1/login"] == ["/api/v1/login"]


def test_on_v2_1_a_login_sends_the_csrf_value_with_every_write(fleet_at: Fleet) -> None:
    fleet_at.fake.add_login(1, "admin", PASSWORD)

    outcome = fleet_at("--apply", "--username", "admin", input=PASSWORD + "\n")

    assert outcome.exit_code == 0, outcome.stderr
    [(_, csrf)] = fleet_at.fake.sessions.values()
    writes = [j for j in fleet_at.fake.journal if j.method == "PATCH" or j.path == "/api/v1/server-group"
              and j.method == "POST"]
    assert writes and all(j.headers.get("x-csrf-token") == csrf for j in writes)
    # Piped in (not a terminal): read as a plain line, with no prompt and no warning that it cannot be hidden.
    assert "Password for admin" not in outcome.stderr and "Warning" not in outcome.stderr
    assert PASSWORD not in outcome.stderr and PASSWORD not in outcome.stdout


def test_a_token_on_a_dashboard_without_tokens_is_refused_before_any_credential_is_sent(tmp_path: Path) -> None:
    fake = FakeV1(profile="v2.0")
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(MANIFEST))
    with serve_v1(fake) as running:
        outcome = Fleet(fake, running, path)(NEZHA_TOKEN="nzp_" + "a" * 32)
    assert outcome.exit_code == 3
    assert "the dashboard is v2.0: access tokens exist from v2.1.0 on; log in with --username" in outcome.stderr
    assert Fleet(fake, running, path).credentialed() == []


def test_a_bad_token_makes_exactly_one_request_and_says_why_it_stops(fleet_at: Fleet) -> None:
    outcome = fleet_at("--apply", NEZHA_TOKEN="nzp_" + "B" * 32)

    assert outcome.exit_code == 3
    assert fleet_at.credentialed() == [("GET", "/api/v1/server")]
    assert fleet_at.fake.failed_credentials == 1
    assert "HTTP 401" in outcome.stderr and "WAF" in outcome.stderr


def test_a_wrong_password_makes_exactly_one_login_request(fleet_at: Fleet) -> None:
    fleet_at.fake.add_login(1, "admin", PASSWORD)

    outcome = fleet_at("--apply", "--username", "admin", input="not the password\n")

    assert outcome.exit_code == 3
    assert fleet_at.credentialed() == [("POST", "/api/v1/login")]
    assert fleet_at.fake.failed_credentials == 1
    assert "wrong username or password" in outcome.stderr


@pytest.mark.parametrize("password", ["wrong", "username", "password"])
def test_a_wrong_password_that_is_a_word_of_the_message_is_neither_masked_nor_pointed_at(
    fleet_at: Fleet, password: str
) -> None:
    fleet_at.fake.add_login(1, "admin", PASSWORD)

    outcome = fleet_at("--apply", "--username", "admin", input=f"{password}\n")

    assert outcome.exit_code == 3
    assert "error: login: wrong username or password. Not retrying" in outcome.stderr
    assert "***" not in outcome.stderr  # a mask inside the sentence would show which word it was


def test_a_token_without_the_inventory_scope_names_it(fleet_at: Fleet) -> None:
    token = fleet_at.fake.add_token(scopes=("nezha:server:write",))

    outcome = fleet_at(NEZHA_TOKEN=token)

    assert outcome.exit_code == 3
    assert "lacks scope nezha:inventory:read" in outcome.stderr
    assert fleet_at.credentialed() == [("GET", "/api/v1/server")]


def test_an_invalid_manifest_and_settings_are_reported_together_before_any_request(fleet_at: Fleet) -> None:
    fleet_at.manifest.write_text(json.dumps({"servers": [{"uuid": "nope"}, {"machine_id": MID_A, "name": 5}]}))

    outcome = fleet_at("--username", "admin", NEZHA_TOKEN="v0-token", NEZHA_BOOTSTRAP_DEADLINE="never")

    assert outcome.exit_code == 2
    assert outcome.stderr.count("\n  - ") == 4, outcome.stderr
    for text in ("servers[0]: the uuid must be 36 characters", f"servers[1] (machine_id {MID_A}): name must be",
                 "the deadline must be a number", "give either an access token"):
        assert text in outcome.stderr
    assert [j.path for j in fleet_at.fake.journal if not j.path.startswith("/_fake/")] == []


def test_token_password_jwt_and_csrf_never_show(fleet_at: Fleet, tmp_path: Path) -> None:
    token = fleet_at.fake.add_token()
    fleet_at.fake.add_login(1, "admin", PASSWORD)
    fleet_at.fake.faults.fail_next.extend([(500, "application/json", f'{{"echo":"{token}"}}'.encode())])
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")

    fleet_at("-v", "--token-file", str(token_file))
    fleet_at("--apply", "--json", NEZHA_TOKEN=token)
    fleet_at("--apply", "-v", "--json", "--username", "admin", input=PASSWORD + "\n")
    fleet_at("--json", "--username", "admin", input="wrong " + PASSWORD + "\n")
    fleet_at("--json", NEZHA_TOKEN="nzp_" + "C" * 32)

    jwts = list(fleet_at.fake.sessions)
    needles = [token, PASSWORD, *jwts, *(csrf for _, csrf in fleet_at.fake.sessions.values())]
    assert jwts and len(fleet_at.outputs) == 5
    leaks = [(i, needle[:6]) for i, outcome in enumerate(fleet_at.outputs) for needle in needles
             if needle in outcome.stdout or needle in outcome.stderr]
    assert leaks == []


class RefusingApi(MemoryApi):
    """Refuses writes to one server, as a dashboard answers `permission denied` with HTTP 200."""

    def patch_server(self, server_id: int, form: dict[str, Any]) -> None:
        if server_id == 2:
            raise DashboardRefused("server update: the dashboard refused: permission denied")
        super().patch_server(server_id, form)


def test_a_refused_write_is_reported_the_others_are_applied_and_verify_names_what_did_not_hold() -> None:
    servers, groups, manifest = fleet()
    api = RefusingApi(servers, groups, race=0)

    _, failures = run(api, manifest, apply=True, notify=lambda message: None)

    assert api.servers_[1].name == "web-1" and api.servers_[2].note == "old"
    assert failures == [
        "server #2 db-1: server update: the dashboard refused: permission denied",
        "set note #2 db-1 did not hold (the dashboard shows 'old')",
        "set public note #2 db-1 did not hold (the dashboard shows '')",
        "set display index #2 db-1 did not hold (the dashboard shows 0)",
    ]


def test_a_refused_credential_mid_apply_stops_at_once() -> None:
    class Expired(MemoryApi):
        def patch_server(self, server_id: int, form: dict[str, Any]) -> None:
            self.writes.append(("server", server_id))
            raise TokenRefused("server update: HTTP 401")

    servers, groups, manifest = fleet()
    api = Expired(servers, groups, race=0)
    with pytest.raises(TokenRefused):
        run(api, manifest, apply=True, notify=lambda message: None)
    assert api.writes == [("server", 1)]  # nothing more: each further request would count at the WAF


def test_the_docs_document_reconcile_and_each_of_its_env_vars() -> None:
    from tests.test_cli import env_vars_in_help
    from tests.test_docs import DOCS, reference_section

    assert "--apply" in (DOCS / "tutorials/reconcile.md").read_text(encoding="utf-8")
    reference = reference_section("reconcile")
    assert sorted(var for var in env_vars_in_help("reconcile") if f"`{var}`" not in reference) == []


def test_two_operators_adding_to_one_group_at_once_both_end_in_it_with_the_race_switch_on() -> None:
    fake = FakeV1(profile="v2.1+", group_race=True)
    ids = [enroll(fake, uuid) for uuid in (UUID_C, UUID_D)]
    fake.add_group("web")
    token = fake.add_token()
    results: dict[str, Any] = {}

    def operator(uuid: str, url: str) -> None:
        with make_client(urls=(url,)) as client:
            session = Session(V2Api(client, url, token, deadline=10))
            manifest = validate({"servers": [{"uuid": uuid, "group": "web"}]})
            results[uuid] = run(session, manifest, apply=True, notify=lambda message: None)[1]

    with serve_v1(fake) as running:
        threads = [threading.Thread(target=operator, args=(uuid, running.url)) for uuid in (UUID_C, UUID_D)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    assert results == {UUID_C: [], UUID_D: []}
    assert [g.servers for g in fake.groups] == [ids]
    # The switch made one PATCH drop the other's member; read back, it was written again.
    assert len([j for j in fake.journal if j.method == "PATCH"]) >= 3


@pytest.mark.integration
def test_a_password_piped_to_the_command_is_read_without_pythons_getpass_warning(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    fake = FakeV1(profile="v2.0")
    fake.add_login(1, "admin", PASSWORD)
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(MANIFEST))
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEZHA")}
    with serve_v1(fake) as running:
        done = subprocess.run([sys.executable, "-m", "nezha_bootstrap", "reconcile", str(path), "--username", "admin"],
                              input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
                              env={**env, "NEZHA_DASHBOARD_URL": running.url, "NEZHA_BOOTSTRAP_DEADLINE": "5"})

    assert done.returncode == 0, done.stderr
    assert "GetPassWarning" not in done.stderr and "Password for" not in done.stderr
    assert fake.sessions  # the piped password logged in
    assert PASSWORD not in done.stdout + done.stderr


def test_the_table_says_empty_rather_than_quoting_nothing() -> None:
    from nezha_bootstrap.fleet.reconcile import table

    rows = [{"action": "set note", "server_id": 2, "uuid": "u-2", "server": "db-1", "from": "", "to": "primary"},
            {"action": "set note", "server_id": 3, "uuid": "u-3", "server": "cache-1", "from": " x", "to": ""}]

    lines = table(rows)
    assert lines[1].endswith("(empty)  primary") and lines[2].endswith("' x'     (empty)")
    assert "''" not in "\n".join(lines)
