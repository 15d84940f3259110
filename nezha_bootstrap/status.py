"""`status`: what the saved state, the agent unit and the process table say (never the secret)."""

from __future__ import annotations

from typing import Any

from nezha_bootstrap import state as state_mod
from nezha_bootstrap.config import bracketed, display_url
from nezha_bootstrap.facts import agent_processes
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.state import State


def collect(paths: Paths) -> dict[str, Any]:
    """The facts `status` prints, as one flat dict."""
    saved = state_mod.load(paths, move_aside=False)
    info: dict[str, Any] = {"state_file": str(paths.state_file), "registered": saved is not None}
    if saved is not None:
        public = saved.public()
        public["dashboard_url"] = display_url(public["dashboard_url"])
        if public.get("generation") is None and saved.secret:
            public["generation"] = "v0"  # v0 runs register with the API token; older states did not record it
        info.update(public)
    info["installed"] = bool(saved and saved.installed_at)
    if saved is not None and saved.installed_at:
        info["drift"] = drift(paths, saved)  # what the next run repairs (v0: with the saved secret)
    info["agent_unit"] = str(paths.agent_unit) if paths.agent_unit.exists() else (
        str(paths.agent_openrc) if paths.agent_openrc.exists() else None)
    info.update(_agent_layout(paths))
    pids = agent_processes(paths.root)  # under another root, only its own agents (never the host's)
    info["agent_running"] = bool(pids)
    info["agent_pids"] = pids
    return info


def drift(paths: Paths, saved: State) -> list[str]:
    """How the agent on disk differs from what the state says was installed (what the next `run` repairs)."""
    from nezha_bootstrap import agent

    return agent.installed_drift(paths, saved.secret, saved.uuid, f"{bracketed(saved.probe_address)}:"
                                 f"{saved.probe_port}", saved.tls, saved.agent_flags)


def _agent_layout(paths: Paths) -> dict[str, Any]:
    """The v1/v2 layout, only where present: config.yml (path and uuid) and the vendor script's leftovers."""
    from nezha_bootstrap.agent import config_uuid, vendor_leftovers

    info: dict[str, Any] = {}
    config = paths.agent_dir / "config.yml"
    if config.exists():
        info["agent_config"] = str(config)
        info["agent_config_uuid"] = config_uuid(config, paths.root)
    leftovers = vendor_leftovers(paths)
    if leftovers:
        info["vendor_leftovers"] = [{"config": str(item.config), "uuid": item.uuid} for item in leftovers]
    return info


def shown(value: Any) -> str:
    """A value as `status` prints it for a person: words, not Python's None/True/False."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(shown(item) for item in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{key} {shown(item)}" for key, item in value.items())
    return str(value)
