"""Token mode of `run` on a v2.1+ dashboard: name, note, hide and group this node's server.

With a personal access token (`nzp_...`, dashboard-v1-v2.md) beside the agent secret, the node
checks the token (GET /api/v1/server) before installing anything, waits for its uuid's row after
the agent starts, and applies the attributes at once: until then guests see the new server under
two random words. A rerun with nothing changed only reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from nezha_bootstrap.config import Config, Naming
from nezha_bootstrap.errors import DashboardRefused
from nezha_bootstrap.report import Reporter

if TYPE_CHECKING:
    from nezha_bootstrap.v1.api import ServerFinder, V2Api  # httpx loads only when a request is made

POLL_FIRST, POLL_CAP = 0.25, 3.0  # seconds between looks for the row: doubling from the first to the cap
ENROLL_CAUSES = (
    "the agent secret is wrong (copy it from the dashboard's install command of the token's user)",
    "the agent secret belongs to another user than the token's (the token only sees its user's servers)",
    "TLS or a proxy stands between the agent and the dashboard (check --tls/--no-tls, the probe address "
    "and port, and that the proxy passes gRPC)",
)


def wanted(config: Config, naming: Naming) -> dict[str, Any]:
    """The server fields this node sets: name and guest visibility always, the rest when given (pure)."""
    fields: dict[str, Any] = {"name": config.name, "hide_for_guest": config.hide_for_guest}
    if config.note is not None:
        fields["note"] = config.note
    if naming.public_note is not None:
        fields["public_note"] = naming.public_note
    if naming.display_index is not None:
        fields["display_index"] = naming.display_index
    return fields


def group_shown(naming: Naming) -> str:
    """The group as messages name it: 'web', or #3 when only its id is given."""
    return repr(naming.group) if naming.group else f"#{naming.group_id}"


def missing_group(name: str) -> str:
    """The refusal of a --group that does not exist, without --create-group."""
    return f"group: there is no group called {name!r}; create it in the dashboard, or pass --create-group"


@dataclass
class NodeNaming:
    """The token-mode steps of one run (the edge): check, wait for the row, apply, join the group."""

    api: V2Api
    config: Config
    naming: Naming
    reporter: Reporter
    uuid: str
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    changed: list[str] = field(default_factory=list)
    finder: ServerFinder = field(init=False)

    def __post_init__(self) -> None:
        from nezha_bootstrap.v1.api import ServerFinder

        self.finder = ServerFinder(self.api, self.uuid, clock=self.clock)

    def check(self, may_exist: bool = True, saved_id: int | None = None) -> dict[str, Any] | None:
        """Check the token with GET /api/v1/server (never retried on 401/403); our row, if it exists.

        `may_exist` False (this machine has not enrolled this uuid yet): a few `?id=` looks whose
        answers stay small at any fleet size (api.ServerFinder); True: the server id an earlier run
        saved (`saved_id`), one `?id=` look, else the whole list, once.
        """
        with self.reporter.step("token", "checking the access token (GET /api/v1/server)"):
            return self.finder.saved_or_whole_list(saved_id) if may_exist else self.finder.first_look()

    def preflight(self) -> None:
        """Before anything is installed: the token may change servers (nezha:server:write, proved without a
        write), and the named group exists or --create-group makes it. Never retried on 401/403."""
        with self.reporter.step("scope", "checking that the access token may change servers (nezha:server:write)"):
            self.api.prove_write_scope()
        naming = self.naming
        if naming.group or naming.group_id is not None:
            with self.reporter.step("group-check", f"checking that group {group_shown(naming)} exists"):
                if self.api.find_group(naming.group, naming.group_id) is None and not naming.create_group:
                    raise DashboardRefused(missing_group(str(naming.group)))

    def wait_for_row(self, stop_agent: Callable[[], None]) -> dict[str, Any]:
        """Poll for our uuid's row until --enroll-timeout; on timeout stop the agent and say why."""
        timeout = self.naming.enroll_timeout
        with self.reporter.step("enroll", f"waiting for the dashboard to list uuid {self.uuid} "
                                          f"(up to {timeout:g} s)"):
            end, pause = self.clock() + timeout, POLL_FIRST
            while True:
                item = self.finder.look_again()
                if item is not None:
                    return item
                if self.clock() + pause > end:
                    break
                self.sleep(pause)
                pause = min(pause * 2, POLL_CAP)
        stop_agent()
        causes = "".join(f"\n  - {cause}" for cause in ENROLL_CAUSES)
        raise DashboardRefused(
            f"the agent started, but the dashboard did not list uuid {self.uuid} within {timeout:g} s; "
            f"the agent was stopped so that it does not keep failing (the dashboard's WAF counts every "
            f"refused agent call). Likely causes:{causes}"
        )

    def apply(self, item: dict[str, Any]) -> dict[str, Any]:
        """Apply the attributes and the group; what the server is now, for the summary."""
        fields = wanted(self.config, self.naming)
        with self.reporter.step("attributes", f"setting name {self.config.name!r}, guest visibility and notes"):
            if self.api.update_server(item, fields):
                self.changed.append("attributes")
        server_id = int(item["id"])
        result: dict[str, Any] = {"server_id": server_id, "name": self.config.name,
                                  "hide_for_guest": self.config.hide_for_guest}
        if self.naming.group or self.naming.group_id is not None:
            result["group"] = self._group(server_id)
        return result

    def _group(self, server_id: int) -> dict[str, Any]:
        naming = self.naming
        with self.reporter.step("group", f"joining group {group_shown(naming)}"):
            group = self.api.find_group(naming.group, naming.group_id)
            if group is None and not naming.create_group:
                raise DashboardRefused(missing_group(str(naming.group)))
            if group is None:
                group_id = self.api.create_group(str(naming.group), [server_id])
                self.changed.append("group")
                self._warn_duplicates(str(naming.group))
            else:
                group_id = group.id
            if self.api.join_group(group_id, server_id, known=group):
                self.changed.append("group")
        return {"id": group_id, "name": naming.group or (group.name if group else "")}

    def _warn_duplicates(self, name: str) -> None:
        named = [g for g in self.api.groups() if g.name == name]
        if len(named) > 1:
            self.reporter.warn(
                f"there are now {len(named)} groups called {name!r} (ids {', '.join(str(g.id) for g in named)}): "
                "nodes created it at the same time. Create the group once beforehand and drop --create-group"
            )
