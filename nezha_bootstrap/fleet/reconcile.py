"""`reconcile`: bring a v1/v2 fleet's names, notes, visibility and groups to what a manifest says.

`make_plan` is pure: (servers, groups, manifest) -> Plan, the data `--dry-run` prints and `--json`
carries. `apply_plan` is the edge: it PATCHes each server with the full form (the dashboard resets
every field a PATCH leaves out, dashboard-v1-v2.md), replaces group member lists with read-back and
jittered retry (a concurrent replace-all can drop a member), and `verify` plans again from a fresh
read: nothing left to do means everything holds.
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from nezha_bootstrap.errors import DashboardRefused, SettingsError
from nezha_bootstrap.fleet.manifest import Entry, GroupRef, Manifest
from nezha_bootstrap.v1.api import FORM_DEFAULTS, Group, TokenRefused

FIELDS = ("name", "note", "public_note", "hide_for_guest", "display_index")
# PATCH /api/v1/server/:id resets any of its eight fields left out (v1.api.FORM_DEFAULTS): the DDNS ones
# are carried over as read.
DDNS_DEFAULTS: dict[str, Any] = {key: FORM_DEFAULTS[key] for key in ("enable_ddns", "ddns_profiles",
                                                                     "override_ddns_domains")}


@dataclass(frozen=True)
class Server:
    """One item of GET /api/v1/server, as the PATCH form needs it (absent fields are empty/false)."""

    id: int
    uuid: str
    name: str
    note: str = ""
    public_note: str = ""
    hide_for_guest: bool = False
    display_index: int = 0
    ddns: dict[str, Any] = field(default_factory=lambda: dict(DDNS_DEFAULTS))

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> Server:
        """A server from the dashboard's list; DashboardRefused naming the field when an item is malformed."""
        ddns = {key: item.get(key) or default for key, default in DDNS_DEFAULTS.items()}
        server_id = _whole(item, "id", None)
        return cls(id=server_id, uuid=str(item.get("uuid", "")), name=str(item.get("name") or ""),
                   note=str(item.get("note") or ""), public_note=str(item.get("public_note") or ""),
                   hide_for_guest=bool(item.get("hide_for_guest")),
                   display_index=_whole(item, "display_index", server_id), ddns=ddns)

    def form(self, **changes: Any) -> dict[str, Any]:
        """The full PATCH body: every field as it is, overlaid with `changes`."""
        body = {name: getattr(self, name) for name in FIELDS}
        body.update(self.ddns)
        body.update(changes)
        return body

    def label(self) -> str:
        return f"#{self.id} {printable(self.name) or '(no name)'}"


def _whole(item: dict[str, Any], key: str, server_id: int | None) -> int:
    value = item.get(key)
    if value is None and key == "display_index":
        return 0  # absent on older dashboards: the form's default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    which = "a server" if server_id is None else f"server #{server_id}"
    what = f"no {key}" if value is None else f"{key} {printable(repr(value))[:80]}, not a whole number"
    raise DashboardRefused(f"the dashboard's server list is malformed: {which} has {what}; nothing was changed")


def printable(text: str) -> str:
    """Dashboard text as it may reach a terminal: control and format characters (ESC, BEL, bidi
    overrides, newlines) escaped as \\x1b, \\u202e, \\n."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


@dataclass(frozen=True)
class ServerChange:
    """Fields of one server to set; each is (field, from, to)."""

    server: Server
    changes: tuple[tuple[str, Any, Any], ...]


@dataclass(frozen=True)
class GroupChange:
    """Servers to add to and remove from one group; `group_id` None: the group is created."""

    group_id: int | None
    name: str
    add: frozenset[int]
    remove: frozenset[int]


@dataclass(frozen=True)
class Plan:
    """What reconcile would change, and what it cannot match."""

    servers: tuple[ServerChange, ...]
    groups: tuple[GroupChange, ...]
    missing: tuple[Entry, ...]  # manifest entries with no server (yet)
    unmanaged: tuple[Server, ...]  # servers the manifest does not name
    known: dict[int, Server] = field(default_factory=dict)  # every server read, by id (for the table)

    @property
    def writes(self) -> int:
        """The number of requests apply would send that change something."""
        return len(self.servers) + len(self.groups)

    def actions(self) -> list[dict[str, Any]]:
        """The plan as rows: what the table prints and --json carries."""
        rows: list[dict[str, Any]] = []
        for change in self.servers:
            for name, old, new in change.changes:
                rows.append(_row(_ACTION[name](new), change.server, old, new))
        for group in self.groups:
            target = group.name if group.group_id is None else f"{group.name} (#{group.group_id})"
            for action, ids in (("join group", group.add), ("leave group", group.remove)):
                suffix = " (new)" if group.group_id is None else ""
                rows.extend(_row(action + suffix, self.known[i], None, target) for i in sorted(ids))
        for entry in self.missing:
            rows.append({"action": "no server yet", "server_id": None, "uuid": entry.uuid, "server": None,
                         "from": None, "to": entry.name or entry.label})
        rows.extend(_row("not in manifest", server, None, None) for server in self.unmanaged)
        return rows


def _row(action: str, server: Server, old: Any, new: Any) -> dict[str, Any]:
    return {"action": action, "server_id": server.id, "uuid": server.uuid, "server": server.name,
            "from": old, "to": new}


_ACTION: dict[str, Callable[[Any], str]] = {
    "name": lambda new: "rename",
    "note": lambda new: "set note",
    "public_note": lambda new: "set public note",
    "hide_for_guest": lambda new: "hide from guests" if new else "show to guests",
    "display_index": lambda new: "set display index",
}


# --- the plan (pure) ------------------------------------------------------------------------------

def make_plan(servers: list[Server], groups: list[Group], manifest: Manifest) -> Plan:
    """Compare the dashboard with the manifest; SettingsError when a group reference cannot be resolved."""
    wanted = manifest.by_uuid()
    by_uuid = {server.uuid: server for server in servers}  # exact: the dashboard's uuid key is case-sensitive
    matched = [(by_uuid[entry.uuid], entry) for entry in manifest.entries if entry.uuid in by_uuid]
    changes = (_server_change(server, entry) for server, entry in matched)
    return Plan(
        servers=tuple(change for change in changes if change.changes),
        groups=_group_changes(matched, groups, manifest),
        missing=tuple(entry for entry in manifest.entries if entry.uuid not in by_uuid),
        unmanaged=tuple(server for server in servers if server.uuid not in wanted),
        known={server.id: server for server in servers},
    )


def _server_change(server: Server, entry: Entry) -> ServerChange:
    changes = []
    for name in FIELDS:
        new, old = getattr(entry, name), getattr(server, name)
        if new is not None and new != old:
            changes.append((name, old, new))
    return ServerChange(server, tuple(changes))


def _group_changes(matched: list[tuple[Server, Entry]], groups: list[Group], manifest: Manifest
                   ) -> tuple[GroupChange, ...]:
    """Each server in exactly the managed groups its entry names; other members are left alone.

    Managed groups are the ones some entry names. An entry without `group` leaves its server's
    memberships as they are.
    """
    keys = _resolve_groups(groups, manifest)
    targets = {entry.uuid: {keys[ref] for ref in entry.groups} for _, entry in matched if entry.groups is not None}
    managed = set().union(*targets.values()) if targets else set()
    changes = []
    for group in groups:
        if group.id not in managed:
            continue
        add = {s.id for s, e in matched if e.uuid in targets and group.id in targets[e.uuid]} - group.members
        remove = {s.id for s, e in matched if e.uuid in targets and group.id not in targets[e.uuid]} & group.members
        if add or remove:
            changes.append(GroupChange(group.id, group.name, frozenset(add), frozenset(remove)))
    for name in sorted(key for key in managed if isinstance(key, str)):
        add = {s.id for s, e in matched if e.uuid in targets and name in targets[e.uuid]}
        if add:  # a group only entries without a server name is made once one of them appears
            changes.append(GroupChange(None, name, frozenset(add), frozenset()))
    return tuple(changes)


def _resolve_groups(groups: list[Group], manifest: Manifest) -> dict[GroupRef, Any]:
    """Each group reference of the manifest -> an existing group's id, or its name when it is to be made."""
    ids = {group.id for group in groups}
    resolved: dict[GroupRef, Any] = {}
    problems: list[str] = []
    for entry in manifest.entries:
        for ref in entry.groups or ():
            if ref in resolved:
                continue
            if isinstance(ref, int):
                resolved[ref] = ref
                if ref not in ids:
                    problems.append(f"{entry.label}: there is no group with id {ref} on the dashboard")
                continue
            same = sorted(group.id for group in groups if group.name == ref)
            resolved[ref] = same[0] if len(same) == 1 else ref
            if len(same) > 1:
                problems.append(
                    f"{entry.label}: {len(same)} groups are called {ref!r} (ids {', '.join(map(str, same))}); "
                    "name the group by its id in the manifest"
                )
    if problems:
        raise SettingsError(list(dict.fromkeys(problems)))
    return resolved


# --- apply and verify (the edge) ------------------------------------------------------------------

class Api(Protocol):
    """The dashboard calls reconcile makes; each raises DashboardRefused or Transient-derived errors."""

    def servers(self) -> list[Server]: ...

    def groups(self) -> list[Group]: ...

    def patch_server(self, server_id: int, form: dict[str, Any]) -> None: ...

    def create_group(self, name: str, members: list[int]) -> None: ...

    def patch_group(self, group_id: int, name: str, members: list[int]) -> None: ...


@dataclass
class Applier:
    """Carries out a plan with `api`; collects what could not be done instead of stopping at the first."""

    api: Api
    notify: Callable[[str], None]
    group_attempts: int = 8
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep
    failures: list[str] = field(default_factory=list)

    def apply(self, plan: Plan) -> None:
        for change in plan.servers:
            self._guarded(f"server {change.server.label()}", functools.partial(self._patch_server, change))
        for group in plan.groups:
            self._guarded(f"group {group.name!r}", functools.partial(self._group, group))

    def _guarded(self, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except TokenRefused:
            raise  # the credential stopped working: every further request would count at the WAF
        except DashboardRefused as exc:
            self.failures.append(f"{what}: {exc}")

    def _patch_server(self, change: ServerChange) -> None:
        form = change.server.form(**{name: new for name, _, new in change.changes})
        self.api.patch_server(change.server.id, form)
        self.notify(f"updated {change.server.label()}: {', '.join(name for name, _, _ in change.changes)}")

    def _group(self, change: GroupChange) -> None:
        if change.group_id is None:
            # Never retried: names are not unique, so a second POST would make a second group.
            self.api.create_group(change.name, sorted(change.add))
            self.notify(f"created group {change.name!r} with {len(change.add)} server(s)")
            return
        for attempt in range(self.group_attempts):
            if self._group_holds_after_write(change):
                self.notify(f"group {change.name!r} (#{change.group_id}): +{len(change.add)} -{len(change.remove)}")
                return
            wait = self.rng.uniform(0.0, min(2.0, 0.1 * 2 ** attempt))  # full jitter: concurrent writers spread
            self.notify(f"group {change.name!r}: a concurrent change replaced the member list; retrying")
            self.sleep(wait)
        raise DashboardRefused(
            f"the member list did not hold after {self.group_attempts} attempts (other clients keep replacing it)"
        )

    def _group_holds_after_write(self, change: GroupChange) -> bool:
        """Read, overlay our additions and removals, replace the list, read back."""
        current = self._group_now(change)
        wanted = (current.members - change.remove) | change.add
        if wanted != current.members:
            self.api.patch_group(current.id, current.name, sorted(wanted))
            current = self._group_now(change)
        return change.add <= current.members and not (change.remove & current.members)

    def _group_now(self, change: GroupChange) -> Group:
        group = next((g for g in self.api.groups() if g.id == change.group_id), None)
        if group is None:
            raise DashboardRefused(f"group #{change.group_id} no longer exists")
        return group


def verify(api: Api, manifest: Manifest) -> list[str]:
    """Plan again from a fresh read: every change still to do is one that did not hold."""
    again = make_plan(api.servers(), api.groups(), manifest)
    return [f"{row['action']} {_who(row)} did not hold (the dashboard shows {row['from']!r})"
            if row["from"] is not None else f"{row['action']} {_who(row)} -> {_cell(row['to'])} did not hold"
            for row in again.actions() if row["action"] not in ("no server yet", "not in manifest")]


def _who(row: dict[str, Any]) -> str:
    return f"#{row['server_id']} {printable(row['server'] or '')}".strip()


def run(api: Api, manifest: Manifest, *, apply: bool, notify: Callable[[str], None]) -> tuple[Plan, list[str]]:
    """Plan; with `apply`, carry the plan out and verify it. Returns the plan and what did not hold."""
    plan = make_plan(api.servers(), api.groups(), manifest)
    if not apply or plan.writes == 0:
        return plan, []  # nothing to write: a second apply only reads
    applier = Applier(api, notify)
    applier.apply(plan)
    return plan, applier.failures + verify(api, manifest)


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The plan's rows as an aligned text table (ACTION, SERVER, UUID, FROM, TO)."""
    if not rows:
        return ["nothing to change: the dashboard matches the manifest"]
    cells = [("ACTION", "SERVER", "UUID", "FROM", "TO")]
    for row in rows:
        server = "-" if row["server_id"] is None else _who(row)
        cells.append((row["action"], server, printable(str(row["uuid"])), _cell(row["from"]), _cell(row["to"])))
    widths = [max(len(line[i]) for line in cells) for i in range(4)]
    return ["  ".join([*(value.ljust(width) for value, width in zip(line, widths)), line[4]]).rstrip()
            for line in cells]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "hidden" if value else "shown"
    text = str(value)
    if text == "":
        return "(empty)"
    # Quoted when the bare text would mislead: edged with spaces, or a note's newlines and tabs.
    return repr(text) if text != text.strip() or not text.isprintable() else text
