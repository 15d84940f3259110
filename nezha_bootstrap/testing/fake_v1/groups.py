"""Server groups: GET/POST /api/v1/server-group and PATCH /api/v1/server-group/:id, and the race switch
(`group_race`, described in the package's docstring)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from nezha_bootstrap.testing.fake_v1.records import V1Group, V1Server, visible
from nezha_bootstrap.testing.fake_v1.wire import GUEST, Request, json_answer, json_object


@dataclass(eq=False)  # identity, not field equality: a waiting read is found and removed by `in`/remove
class RaceSlot:
    """A group read held by the race switch, waiting for a partner read."""

    paired: threading.Event = field(default_factory=threading.Event)
    # Filled by the partner, under the lock, before it sets `paired`: the one snapshot both reads answer.
    groups: tuple[V1Group, ...] = ()


class Groups:
    """The group routes of FakeV1."""

    lock: threading.Lock
    servers: list[V1Server]
    admins: set[int]
    groups: list[V1Group]
    group_race: bool
    race_window: float
    _next_group_id: int
    _race_waiting: list[RaceSlot]

    def add_group(self, name: str, servers: tuple[int, ...] = (), owner: int = 1) -> V1Group:
        """A server group, as the UI would create it."""
        with self.lock:
            group = V1Group(self._next_group_id, name, owner, sorted(set(servers)))
            self._next_group_id += 1
            self.groups.append(group)
            return group

    def _list_groups(self, request: Request, user: int) -> Any:
        if self.group_race:
            groups = self._pair_up()
        else:
            with self.lock:
                groups = self._groups_snapshot()
        if user == GUEST:  # only groups with a server guests see, and only those servers (observed source)
            with self.lock:
                shown = {s.id for s in self.servers if not s.hide_for_guest}
            groups = tuple(V1Group(g.id, g.name, g.owner, [i for i in g.servers if i in shown], g.created_at)
                           for g in groups if shown & set(g.servers))
        items = [g.listed() for g in groups if user in (*self.admins, GUEST) or g.owner == user]
        return json_answer({"success": True, "data": items} if items else {"success": True})

    def _groups_snapshot(self) -> tuple[V1Group, ...]:
        """Copies of the groups as they are now (caller holds the lock); later PATCHes do not reach them."""
        return tuple(V1Group(g.id, g.name, g.owner, list(g.servers), g.created_at) for g in self.groups)

    def _pair_up(self) -> tuple[V1Group, ...]:
        """Hold this read until a second one arrives (or race_window passes); both answer one snapshot.

        The second read takes the snapshot for both before it wakes the first. Were the first to read
        only once it runs again, the second's client could have read, PATCHed and added its member by
        then, the first would see that member and keep it, and the promised lost update would not happen.
        """
        with self.lock:
            if self._race_waiting:
                waiting = self._race_waiting.pop(0)
                waiting.groups = self._groups_snapshot()
                waiting.paired.set()
                return waiting.groups
            slot = RaceSlot()
            self._race_waiting.append(slot)
        slot.paired.wait(self.race_window)
        with self.lock:
            # Still listed: nobody came in time, read alone. Not listed: a partner came (perhaps just
            # after the wait timed out) and has already filled `groups` under this lock.
            if slot in self._race_waiting:
                self._race_waiting.remove(slot)
                slot.groups = self._groups_snapshot()
        return slot.groups

    def _create_group(self, request: Request, user: int) -> Any:
        form = json_object(request.body)
        if form is None or not isinstance(form.get("name", ""), str):
            return json_answer({"error": "invalid request body"})
        with self.lock:
            problem = self._members_problem(form.get("servers"), user)
            if problem:
                return json_answer({"error": problem})
            group = V1Group(self._next_group_id, form.get("name", ""), user, sorted(set(form.get("servers") or [])))
            self._next_group_id += 1
            self.groups.append(group)
        return json_answer({"success": True, "data": group.id})

    def _patch_group(self, request: Request, user: int) -> Any:
        group_id = int(request.path.rsplit("/", 1)[1])
        form = json_object(request.body)
        if form is None or not isinstance(form.get("name", ""), str):
            return json_answer({"error": "invalid request body"})
        with self.lock:
            group = next((g for g in self.groups if g.id == group_id), None)
            if group is None:
                return json_answer({"error": f"group id {group_id} does not exist"})
            if user not in self.admins and group.owner != user:
                return json_answer({"error": "permission denied"})
            problem = self._members_problem(form.get("servers"), user)
            if problem:
                return json_answer({"error": problem})
            # Replace-all of both fields (observed): an omitted name becomes "", omitted servers none.
            group.name, group.servers = form.get("name", ""), sorted(set(form.get("servers") or []))
        return json_answer({"success": True})

    def _members_problem(self, members: Any, user: int) -> str | None:
        if members is None:
            return None
        if not isinstance(members, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in members):
            return "invalid request body"
        mine = {s.id for s in visible(self.servers, self.admins, user)}
        return "have invalid server id" if any(i not in mine for i in members) else None  # the real text

