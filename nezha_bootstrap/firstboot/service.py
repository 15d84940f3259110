"""`install-service`, `seal` and `uninstall`: each plans its actions as data (effects.Plan).

A plan only looks at the disk; `--dry-run` prints it, and effects.apply performs it.
"""

from __future__ import annotations

import os
from pathlib import Path

from nezha_bootstrap import agent
from nezha_bootstrap.config import display_url
from nezha_bootstrap.effects import Action, Command, Empty, Link, Plan, Remove, StopLeftover, Write
from nezha_bootstrap.firstboot import render, zipapp
from nezha_bootstrap.paths import Paths, read_under
from nezha_bootstrap.state import State

UNIT_TARGET = "/etc/systemd/system/" + render.UNIT_NAME  # what `systemctl enable` links to


def plan_install_service(paths: Paths, settings: str | None, *, use_systemctl: bool, pyz: bytes | None = None) -> Plan:
    """Write the unit (and the settings file unless None), then enable the unit; with `pyz`, first the
    tool: the zipapp and its launcher (absolute paths as seen inside the root, so an image works)."""
    actions: list[Action] = []
    if pyz is not None:
        actions += [Write(paths.under(zipapp.PYZ), pyz, 0o755),
                    Write(paths.under(render.TOOL), render.launcher().encode("utf-8"), 0o755)]
    actions.append(Write(paths.service_unit, render.unit().encode("utf-8"), 0o644))
    if settings is not None:
        actions.append(Write(paths.settings_file, settings.encode("utf-8"), 0o600, private_dir=True, root=paths.root))
    if use_systemctl:
        actions += [Command(("systemctl", "daemon-reload")), Command(("systemctl", "enable", render.UNIT_NAME))]
    else:
        actions.append(Link(paths.service_wants_link, UNIT_TARGET))
    return Plan(tuple(actions), tuple(_install_notes(paths, settings, pyz)))


def _install_notes(paths: Paths, settings: str | None, pyz: bytes | None) -> list[str]:
    notes = []
    tool = paths.under(render.TOOL)
    if pyz is None and not os.access(tool, os.X_OK):
        notes.append(f"{tool} does not exist: the unit runs the tool from {render.TOOL}; install it there "
                     "(--pyz FILE with the zipapp, or python3 -m venv /opt/nezha-bootstrap and its pip)")
    elif pyz is not None and (tool.parent / "python").exists():
        notes.append(f"{tool.parent.parent} holds a virtualenv: its {render.TOOL} script is replaced by the "
                     "zipapp's launcher")
    if settings is None and not paths.settings_file.exists():
        notes.append(f"there is no {paths.settings_file}: the unit is skipped until one is written "
                     "(for example by cloud-init-minimal user-data)")
    return notes


def plan_seal(paths: Paths, *, own_system: bool) -> Plan:
    """Prepare an image for capture: no agent, no state, an empty machine-id; unit and settings stay."""
    actions = _agent_removal(paths, own_system) + _state_removal(paths)
    actions.append(Empty(paths.machine_id))
    if _present(paths.dbus_machine_id):
        actions.append(Remove(paths.dbus_machine_id))
    return Plan(tuple(actions), tuple(_seal_notes(paths)))


def plan_uninstall(paths: Paths, *, own_system: bool, use_systemctl: bool, purge: bool) -> Plan:
    """Remove the agent and the state; with `purge` also the unit and the settings."""
    actions = _agent_removal(paths, own_system) + _state_removal(paths)
    notes = []
    if purge:
        if use_systemctl:
            actions.append(Command(("systemctl", "disable", render.UNIT_NAME), must_succeed=False))
        actions += [Remove(p) for p in (paths.service_wants_link, paths.service_unit, paths.settings_dir)
                    if _present(p)]
        if use_systemctl:
            actions.append(Command(("systemctl", "daemon-reload"), must_succeed=False))
    elif _present(paths.service_wants_link) and paths.settings_file.exists():
        notes.append(f"{render.UNIT_NAME} stays enabled with its settings: the next boot registers this "
                     "server again; use --purge to remove them too")
    return Plan(tuple(actions), tuple(notes))


def _agent_removal(paths: Paths, own_system: bool) -> list[Action]:
    """Stop and remove the agent: v0, v1/v2 (config.yml) and the vendor script's leftovers; first the
    installer a killed run left running, which would write the old node's unit and secret back."""
    configs = [c for c in (paths.agent_dir / "config.yml",) if c.exists()]
    leftovers = agent.vendor_leftovers(paths)
    configs += [leftover.config for leftover in leftovers]
    leftover = _present(paths.child_file)
    actions: list[Action] = [StopLeftover(paths.child_file)] if leftover else []
    # The agent's own uninstall stops and disables its service. It acts on the service manager of
    # the system it runs on, so it runs only when the root is this system's own.
    if own_system and paths.agent_binary.exists():
        uninstalls = [agent.service_argv(paths, "uninstall", config) for config in configs]
        for argv in uninstalls or [[str(paths.agent_binary), "service", "uninstall"]]:
            actions.append(Command(tuple(argv), cwd=paths.agent_dir, must_succeed=False))
    units = [leftover.unit for leftover in leftovers if leftover.unit is not None]
    files = [paths.agent_unit, paths.agent_wants_link, paths.agent_openrc, paths.agent_openrc_link, *units,
             *(paths.agent_wants_link.with_name(unit.name) for unit in units), *configs, paths.agent_binary]
    # With a killed run's installer still running, the files it is writing are removed after it stops.
    actions += [Remove(path) for path in files if leftover or _present(path)]
    return actions


def _state_removal(paths: Paths) -> list[Action]:
    return [Remove(paths.state_dir)] if _present(paths.state_dir) else []


def _seal_notes(paths: Paths) -> list[str]:
    notes = []
    if not paths.service_unit.exists():
        notes.append(f"there is no {paths.service_unit}: clones will not register themselves "
                     "(run install-service first)")
    elif not _present(paths.service_wants_link):
        notes.append(f"{render.UNIT_NAME} is not enabled: clones will not register themselves "
                     "(run install-service)")
    if not paths.settings_file.exists():
        notes.append(f"there is no {paths.settings_file}: clones register only once one is written "
                     "(for example by cloud-init-minimal user-data)")
    elif _assigns(paths.settings_file, "NEZHA_AGENT_UUID", paths.root):
        notes.append(f"{paths.settings_file} sets NEZHA_AGENT_UUID: every clone would enroll as the same server")
    sysconfig = paths.under("/etc/sysconfig/nezha-agent")
    if _assigns(sysconfig, "NZ_UUID", paths.root) or _assigns(sysconfig, "export NZ_UUID", paths.root):
        notes.append(f"{sysconfig} sets NZ_UUID, which overrides config.yml: every clone's agent would enroll as "
                     "the same server; remove that line")
    return notes


def _assigns(settings_file: Path, name: str, root: Path) -> bool:
    try:
        lines = read_under(root, settings_file).decode("utf-8", errors="replace").splitlines()
    except OSError:
        return False
    return any(line.strip().startswith(f"{name}=") for line in lines)


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()  # a link into the image dangles when seen from outside


def dashboard_note(saved: State | None) -> str:
    """What the admin must do in the dashboard: the token API cannot delete a server."""
    if saved is None:
        return "no saved state: nezha-bootstrap registered no server from this machine"
    if saved.uuid and not saved.name:
        # v1/v2 (dashboard-v1-v2.md): the dashboard named it; a deleted row comes back at the agent's next
        # call, so deleting it sticks only now that the agent is gone.
        return (f"the server with uuid {saved.uuid} stays in the dashboard {display_url(saved.dashboard_url)}: "
                "delete it there (its agent is gone, so it stays deleted)")
    ids = [f"id {saved.server_id}"] if saved.server_id is not None else []
    ids += [f"uuid {saved.uuid}"] if saved.uuid else []
    what = f"the server {saved.name!r}" + (f" ({', '.join(ids)})" if ids else "")
    return (f"{what} stays in the dashboard {display_url(saved.dashboard_url)}: delete it there "
            "(the token API cannot)")

