"""Host facts: host name, primary IPv4, machine-id, systemd, the agent process (the only psutil user)."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from nezha_bootstrap.paths import HOST, Paths, read_under
from nezha_bootstrap.record import Record


class Facts(Record):
    """What the tool learns from the host before it decides anything."""

    compared = shown = ("hostname", "primary_ipv4", "machine_id", "systemd_running", "instance_id")

    def __init__(
        self,
        hostname: str,
        primary_ipv4: str | None,
        machine_id: str | None,
        systemd_running: bool,
        instance_id: str | None = None,  # cloud-init's, where cloud-init ran (read_instance_id)
        # The environment the run started with: what its children's is made from (system.child_env drops our
        # secrets and NZ_*), and the NZ_* that agent.override_warnings names. Never shown or compared: it holds
        # the tokens.
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.hostname: Final = hostname
        self.primary_ipv4: Final = primary_ipv4
        self.machine_id: Final = machine_id
        self.systemd_running: Final = systemd_running
        self.instance_id: Final = instance_id
        self.environ: Final[Mapping[str, str]] = {} if environ is None else environ


def gather(paths: Paths, want_ip: bool = True) -> Facts:
    """Read the host facts under `paths.root` (machine-id) and from the running system.

    `want_ip=False` skips the address lookup (primary_ipv4 is None) and with it psutil's import,
    for a run whose name has no {ip}. The process environment is read here, once, with the rest.
    """
    return Facts(
        hostname=socket.gethostname(),
        primary_ipv4=primary_ipv4() if want_ip else None,
        machine_id=read_machine_id(paths.machine_id, paths.root),
        systemd_running=systemd_running(paths),
        instance_id=read_instance_id(paths.instance_id, paths.root),
        environ=dict(os.environ),
    )


def systemd_running(paths: Paths) -> bool:
    """True when `paths.root` is this host's root and systemd is its service manager."""
    return paths.is_host_root and Path("/run/systemd/system").is_dir()


# Facts of the machine that settings are written for when it is not this one (`render`,
# `install-service` for an image): the name's placeholders are filled there at each boot, so here
# they only need some value to validate against. 192.0.2.1 is TEST-NET-1 (RFC 5737).
STAND_IN = Facts(hostname="localhost", primary_ipv4="192.0.2.1", machine_id="0" * 32, systemd_running=False)


def read_machine_id(path: Path, root: Path = HOST) -> str | None:
    """Return the stripped content of /etc/machine-id, or None when missing, empty or not a regular file
    (read confined to `root`: paths.read_under)."""
    try:
        value = read_under(root, path).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return value or None


def read_instance_id(path: Path, root: Path = HOST) -> str | None:
    """cloud-init's instance-id (/var/lib/cloud/data/instance-id): one per instance a cloud boots, so a
    new one under an unchanged machine-id is an image captured without `seal`. None without cloud-init."""
    try:
        value = read_under(root, path).decode("utf-8", errors="replace").strip()
    except OSError:
        return None
    # cloud-init writes "iid-datasource-none" when no datasource answered: not an instance's identity.
    usable = value.isprintable() and len(value) <= 256 and value != "iid-datasource-none"
    return value if value and usable else None


def primary_ipv4() -> str | None:
    """The first global-looking IPv4 address of an interface that is up, else any non-loopback one."""
    import psutil  # loaded here: only commands that need host facts pay for it

    stats = psutil.net_if_stats()
    candidates: list[ipaddress.IPv4Address] = []
    for name, addrs in psutil.net_if_addrs().items():
        if name in stats and not stats[name].isup:
            continue
        for addr in addrs:
            if addr.family != socket.AF_INET:
                continue
            ip = ipaddress.IPv4Address(addr.address)
            if not ip.is_loopback and not ip.is_link_local:
                candidates.append(ip)
    if not candidates:
        return None
    candidates.sort(key=lambda ip: (ip.is_private, int(ip)))
    return str(candidates[0])


def agent_processes(root: Path = Path("/")) -> list[int]:
    """PIDs of running `nezha-agent` processes that belong to `root`: all of them for `/`; under another
    root (an image, a container's tree) only those whose root directory is it or whose program lies
    under it, never the host's own agent."""
    import psutil

    top = os.path.realpath(root)
    pids = []
    for proc in psutil.process_iter(["name", "exe", "cmdline"]):
        info = proc.info
        argv = [word for word in (info.get("cmdline") or [])[:2] if word]
        programs = [info.get("exe") or "", *argv]
        if "nezha-agent" not in {info.get("name") or "", *(os.path.basename(p) for p in programs)}:
            continue
        if top == "/" or _belongs(proc.pid, programs, top):
            pids.append(proc.pid)
    return pids


def _belongs(pid: int, programs: list[str], top: str) -> bool:
    """Whether a process runs inside `top` (its root directory) or runs a program under it."""
    try:
        if os.path.realpath(os.readlink(f"/proc/{pid}/root")) == top:
            return True
    except OSError:
        pass  # another user's process: its root is not ours to read; its program path still tells
    inside = top + os.sep
    return any(os.path.isabs(p) and os.path.realpath(p).startswith(inside) for p in programs)
