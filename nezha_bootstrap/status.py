"""`status`: what the saved state, the agent unit and the process table say (never the secret)."""

from __future__ import annotations

from typing import Any

from nezha_bootstrap import state as state_mod
from nezha_bootstrap.config import display_url
from nezha_bootstrap.facts import agent_processes
from nezha_bootstrap.paths import Paths


def collect(paths: Paths) -> dict[str, Any]:
    """The facts `status` prints, as one flat dict."""
    saved = state_mod.load(paths, move_aside=False)
    info: dict[str, Any] = {"state_file": str(paths.state_file), "registered": saved is not None}
    if saved is not None:
        public = saved.public()
        public["dashboard_url"] = display_url(public["dashboard_url"])
        info.update(public)
    info["installed"] = bool(saved and saved.installed_at)
    info["agent_unit"] = str(paths.agent_unit) if paths.agent_unit.exists() else (
        str(paths.agent_openrc) if paths.agent_openrc.exists() else None)
    info.update(_agent_layout(paths))
    pids = agent_processes()
    info["agent_running"] = bool(pids)
    info["agent_pids"] = pids
    return info


def _agent_layout(paths: Paths) -> dict[str, Any]:
    """The v1/v2 layout, only where present: config.yml (path and uuid) and the vendor script's leftovers."""
    from nezha_bootstrap.agent import config_uuid, vendor_leftovers

    info: dict[str, Any] = {}
    config = paths.agent_dir / "config.yml"
    if config.exists():
        info["agent_config"] = str(config)
        info["agent_config_uuid"] = config_uuid(config)
    leftovers = vendor_leftovers(paths)
    if leftovers:
        info["vendor_leftovers"] = [{"config": str(item.config), "uuid": item.uuid} for item in leftovers]
    return info
