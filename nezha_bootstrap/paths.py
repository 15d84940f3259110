"""Every path the tool reads or writes, resolved under one root (`--root`, default `/`).

Under a root other than `/` (an image), a symbolic link is read as the image's own system would read
it, like a chroot: an absolute target starts again at the root, and `..` never climbs above it. So an
image's `/etc -> /host/etc` or `lock -> /etc/passwd` can never lead a write onto the host. Directories
are resolved through their last component; a file's last component is not followed (a link there is
replaced or removed as itself, and the writers open files with O_NOFOLLOW).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nezha_bootstrap.errors import SettingsError

MAX_LINKS = 40  # as the kernel's path walk allows


@dataclass(frozen=True)
class Paths:
    """The tool's file layout under `root`."""

    root: Path

    def under(self, absolute: str, *, follow_last: bool = False) -> Path:
        """Map an absolute path of the target system to the same path under root (see the module's text)."""
        if self.is_host_root:
            return self.root / absolute.lstrip("/")
        return inside(self.root, absolute, follow_last=follow_last)

    def directory(self, absolute: str) -> Path:
        """A directory of the target system under root, resolved through its last component."""
        return self.under(absolute, follow_last=True)

    @property
    def is_host_root(self) -> bool:
        return self.root.resolve() == Path("/")

    @property
    def state_dir(self) -> Path:
        return self.directory("/var/lib/nezha-bootstrap")

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def pending_file(self) -> Path:
        """A v0 registration under way (state.Pending)."""
        return self.state_dir / "pending.json"

    @property
    def child_file(self) -> Path:
        """The installer or agent command running now (system.run's record, system.stop_leftover)."""
        return self.state_dir / "child"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "lock"

    @property
    def script_dir(self) -> Path:
        """Private 0700 directory that holds the downloaded installer."""
        return self.directory("/var/lib/nezha-bootstrap/installer")

    @property
    def machine_id(self) -> Path:
        return self.under("/etc/machine-id", follow_last=True)  # read, or emptied in place by `seal`

    @property
    def instance_id(self) -> Path:
        """cloud-init's record of the instance it last booted as."""
        return self.under("/var/lib/cloud/data/instance-id")

    @property
    def dbus_machine_id(self) -> Path:
        return self.under("/var/lib/dbus/machine-id")

    @property
    def agent_dir(self) -> Path:
        return self.directory("/opt/nezha/agent")

    @property
    def agent_binary(self) -> Path:
        return self.agent_dir / "nezha-agent"

    @property
    def agent_unit(self) -> Path:
        return self.under("/etc/systemd/system/nezha-agent.service")

    @property
    def agent_openrc(self) -> Path:
        return self.under("/etc/init.d/nezha-agent")

    @property
    def settings_dir(self) -> Path:
        return self.directory("/etc/nezha-bootstrap")

    @property
    def settings_file(self) -> Path:
        return self.settings_dir / "env"

    @property
    def service_unit(self) -> Path:
        return self.under("/etc/systemd/system/nezha-bootstrap.service")

    @property
    def service_wants_link(self) -> Path:
        return self.under("/etc/systemd/system/multi-user.target.wants/nezha-bootstrap.service")

    @property
    def agent_wants_link(self) -> Path:
        return self.under("/etc/systemd/system/multi-user.target.wants/nezha-agent.service")

    @property
    def agent_openrc_link(self) -> Path:
        return self.under("/etc/runlevels/default/nezha-agent")


def inside(root: Path, absolute: str, *, follow_last: bool = False) -> Path:
    """`absolute` resolved under `root` as a chroot at `root` would resolve it (pure but for lstat/readlink)."""
    todo = [part for part in absolute.split("/") if part not in ("", ".")]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()  # at the root, `..` stays there
            continue
        candidate = root.joinpath(*done, part)
        try:
            is_link = stat.S_ISLNK(os.lstat(candidate).st_mode)
        except OSError:
            return root.joinpath(*done, part, *todo)  # missing: nothing below it can be a link
        if not is_link or (not todo and not follow_last):
            done.append(part)
            continue
        links += 1
        if links > MAX_LINKS:
            raise SettingsError([f"{absolute} under {root}: too many levels of symbolic links"])
        target = os.readlink(candidate)
        if target.startswith("/"):
            done = []
        todo = [p for p in target.split("/") if p not in ("", ".")] + todo
    return root.joinpath(*done)
