"""Every path the tool reads or writes, resolved under one root (`--root`, default `/`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """The tool's file layout under `root`."""

    root: Path

    def under(self, absolute: str) -> Path:
        """Map an absolute path of the target system to the same path under root."""
        return self.root / absolute.lstrip("/")

    @property
    def is_host_root(self) -> bool:
        return self.root.resolve() == Path("/")

    @property
    def state_dir(self) -> Path:
        return self.under("/var/lib/nezha-bootstrap")

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
        return self.state_dir / "installer"

    @property
    def machine_id(self) -> Path:
        return self.under("/etc/machine-id")

    @property
    def instance_id(self) -> Path:
        """cloud-init's record of the instance it last booted as."""
        return self.under("/var/lib/cloud/data/instance-id")

    @property
    def dbus_machine_id(self) -> Path:
        return self.under("/var/lib/dbus/machine-id")

    @property
    def agent_dir(self) -> Path:
        return self.under("/opt/nezha/agent")

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
        return self.under("/etc/nezha-bootstrap")

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
