"""The v0 dashboard's view of this node while it comes online: its server's `last_active` advancing.

The real v0.20.13 lists `last_active` in Unix seconds, Go's zero time (-62135596800) until the agent's
first state report, then the time of each report; agent v0.20.5 reports every second (observed, issue 17).
There is no `online` field: its own theme counts a server online while now - last_active <= 10 s.
"""

from __future__ import annotations

from typing import Any, Callable

from nezha_bootstrap.errors import DashboardRefused
from nezha_bootstrap.online import NOTHING, Look, Outcome
from nezha_bootstrap.retry import Transient
from nezha_bootstrap.v0.api import Dashboard

NEVER = -62135596800  # last_active before the first report: Go's time.Time{}.Unix()
LOOK_SECONDS = 5.0  # one look's budget: the wait goes on after a slow or failed one


class V0Presence:
    """Looks for this node's server in the list under its tag, and for its `last_active` to advance.

    `fresh` (the server was registered by this run, with `before` the ids so named just before): any report
    is this agent's. Otherwise the first look's value is the baseline: the old agent was stopped before the
    new one started, so a later value is the new agent reporting.
    """

    name = "the dashboard's server list"

    def __init__(self, dashboard: Dashboard, name: str, tag: str, server_id: int | None,
                 before: set[int] | None, warn: Callable[[str], None]) -> None:
        self.dashboard, self.server_name, self.tag, self.warn = dashboard, name, tag, warn
        self.server_id, self.before = server_id, before
        self.baseline: int | None = NEVER if before is not None else None
        self.known = server_id is not None  # saved by an earlier run: it must still be there
        self.usable = True

    def look(self) -> Look:
        if not self.usable:
            return NOTHING
        try:
            if self.server_id is not None:
                mine = self.dashboard.server(self.server_id, LOOK_SECONDS)
            else:
                mine = self._mine(self.dashboard.servers(self.tag, LOOK_SECONDS))
        except Transient as failure:
            return Look(None, f"server list: {failure}")
        except DashboardRefused as refused:
            self.usable = False  # the agent's port and process still decide
            self.warn(f"cannot read the server list to see the node online: {refused}")
            return NOTHING
        if mine is None and self.known:
            # The v0 dashboard checks the agent's secret against its servers: a deleted server's is refused.
            return Look(Outcome.SECRET_REFUSED, f"server id {self.server_id} is no longer in the dashboard "
                                                "(deleted there), so its node secret is refused")
        if mine is None:
            return NOTHING
        last = mine.get("last_active")
        if not isinstance(last, int) or isinstance(last, bool):
            return NOTHING
        if self.baseline is None:
            self.baseline = last
            return Look(None, f"server id {self.server_id}: last_active {last}, waiting for a newer report")
        if last > self.baseline:
            return Look(Outcome.ONLINE, f"server id {self.server_id} reported (last_active {last})")
        return Look(None, f"server id {self.server_id}: no report yet")

    def _mine(self, servers: list[dict[str, Any]]) -> dict[str, Any] | None:
        """This node's server: the saved id; else the one named so that is new since the registration;
        else the only one so named (several: the log alone decides)."""
        if self.server_id is None:
            named = [s for s in servers if s.get("name") == self.server_name and isinstance(s.get("id"), int)]
            if self.before is not None:
                named = [s for s in named if s["id"] not in self.before]
            if len(named) == 1 or (self.before is not None and named):
                self.server_id = max(int(s["id"]) for s in named)
        return next((s for s in servers if s.get("id") == self.server_id and self.server_id is not None), None)
