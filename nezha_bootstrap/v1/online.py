"""The v2.1+ dashboard's view of this node while it comes online, with an access token: its uuid listed
and its `last_active` advancing.

The real v2.3.7 lists a new uuid as soon as the agent authenticates, with `last_active` Go's zero time
(0001-01-01T00:00:00Z) until the first state report, then the time of each report (agent v2.3.3: every
`report_delay` s, default 3); it resets it to zero when the agent's stream closes (observed, issue 17).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from nezha_bootstrap.errors import DashboardRefused, DashboardUnreachable
from nezha_bootstrap.online import NOTHING, Look, Outcome
from nezha_bootstrap.retry import Transient

if TYPE_CHECKING:
    from nezha_bootstrap.v1.api import ServerFinder, V2Api

GO_ZERO_TIME = "0001-01-01T00:00:00Z"


class V2Presence:
    """Looks for this uuid's row and for its `last_active` to change to a real time.

    `fresh` (the uuid was not listed before the install): the first real time is this agent's. Otherwise
    the first look's value is the baseline, and a different real time is the restarted agent reporting.
    The row is found without reading the whole list of a large fleet (naming.ServerFinder), then looked at
    by its id. `row` is the last one seen: the naming that follows starts from it instead of looking again
    (on v2.3.7 every look costs the dashboard a copy of the whole fleet, whatever it answers).
    """

    name = "the dashboard's server list"

    def __init__(self, api: V2Api, finder: ServerFinder, row: dict[str, Any] | None,
                 warn: Callable[[str], None]) -> None:
        self.api, self.finder, self.warn = api, finder, warn
        self.row_id: int | None = int(row["id"]) if row is not None else None
        self.row: dict[str, Any] | None = None  # the row as the last look saw it
        self.baseline: str | None = GO_ZERO_TIME if row is None else None
        self.usable = True

    def look(self) -> Look:
        if not self.usable:
            return NOTHING
        try:
            row = self.finder.look_again() if self.row_id is None else self.api.server_by_id(self.row_id)
        except (Transient, DashboardUnreachable) as failure:
            return Look(None, f"server list: {failure}")
        except DashboardRefused as refused:
            self.usable = False
            self.warn(f"cannot read the server list to see the node online: {refused}")
            return NOTHING
        if row is None or row.get("uuid") != self.finder.uuid:  # gone, or its id another server's now
            self.row = None  # the naming looks for our row again, never trusting one it may not find
            return NOTHING
        self.row_id, self.row = int(row["id"]), row
        last = _stamp(row)
        if self.baseline is None:
            self.baseline = last
            return Look(None, f"server id {self.row_id} listed (last_active {last}), waiting for a newer report")
        if last != GO_ZERO_TIME and last != self.baseline:
            return Look(Outcome.ONLINE, f"uuid {row.get('uuid')} (server id {self.row_id}) reported at {last}")
        return Look(None, f"server id {self.row_id} listed, no report yet")


def _stamp(row: dict[str, Any]) -> str:
    value = row.get("last_active")
    return value if isinstance(value, str) and value else GO_ZERO_TIME
