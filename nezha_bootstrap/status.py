"""`status`: what the saved state, the agent unit and the process table say (never the secret)."""

from __future__ import annotations

from typing import Any

from nezha_bootstrap import state as state_mod
from nezha_bootstrap.config import display_url
from nezha_bootstrap.facts import agent_processes
from nezha_bootstrap.paths import Paths


def collect(paths: Paths) -> dict[str, Any]:
    """The facts `status` prints, as one flat dict."""
    saved = state_mod.load(paths)
    info: dict[str, Any] = {"state_file": str(paths.state_file), "registered": saved is not None}
    if saved is not None:
        public = saved.public()
        public["dashboard_url"] = display_url(public["dashboard_url"])
        info.update(public)
    info["installed"] = bool(saved and saved.installed_at)
    info["agent_unit"] = str(paths.agent_unit) if paths.agent_unit.exists() else (
        str(paths.agent_openrc) if paths.agent_openrc.exists() else None)
    pids = agent_processes()
    info["agent_running"] = bool(pids)
    info["agent_pids"] = pids
    return info
