"""The agent's stable identity on v1/v2 dashboards: a uuid derived from /etc/machine-id (pure).

A v1/v2 dashboard keys servers by the uuid the agent sends and checks only its format
(dashboard-v1-v2.md): the same uuid is the same server, a new one is a new server. Deriving it from
the machine-id gives one server per machine, and a clone (new machine-id) its own.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

# Fixed forever: changing it would give every machine a new uuid, i.e. a duplicate server.
NAMESPACE = uuid.UUID("6f1c1f2e-5b1a-4d3c-9e57-7a2b0c4d8e91")

MACHINE_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")
# What the dashboard checks: 36 characters, hyphens at 8/13/18/23, hex elsewhere, any case.
UUID_RE = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\Z")

FIX_MACHINE_ID = (
    "create a unique one with `systemd-machine-id-setup` (or `dbus-uuidgen > /etc/machine-id`), "
    "or give the agent's uuid with --uuid"
)


def machine_id_problem(machine_id: str | None) -> str | None:
    """Why `machine_id` cannot give a stable uuid, or None when it can."""
    if machine_id is None or machine_id == "":
        return f"/etc/machine-id is missing or empty, so this machine has no stable identity; {FIX_MACHINE_ID}"
    if machine_id == "uninitialized":
        return (
            "/etc/machine-id says 'uninitialized' (systemd has not committed one yet, as on an image's "
            f"first boot before systemd-machine-id-commit); {FIX_MACHINE_ID}"
        )
    if not MACHINE_ID_RE.match(machine_id):
        return f"/etc/machine-id is malformed (it must be 32 lower-case hexadecimal digits); {FIX_MACHINE_ID}"
    return None


def uuid_problem(value: str) -> str | None:
    """Why `value` is not a uuid the dashboard accepts, or None."""
    if UUID_RE.match(value):
        return None
    return "the uuid must be 36 characters: hexadecimal digits with hyphens at positions 9, 14, 19 and 24"


def machine_uuid(machine_id: str) -> str:
    """UUIDv5 of the project namespace and the machine-id, lower case (the dashboard is case-sensitive)."""
    return str(uuid.uuid5(NAMESPACE, machine_id)).lower()


def instance_uuid(machine_id: str, instance_id: str) -> str:
    """The uuid of an unsealed clone: UUIDv5 of the project namespace and "<machine-id>/<instance-id>".

    Clones of an image captured without `seal` share the machine-id; cloud-init's instance-id is the one
    value that differs per instance, so it joins the machine-id only for such a clone (every other machine
    keeps its uuid from the machine-id alone, as before)."""
    return str(uuid.uuid5(NAMESPACE, f"{machine_id}/{instance_id}")).lower()


def unsealed_clone(saved_instance_id: str | None, instance_id: str | None) -> bool:
    """Whether the state was written on another cloud-init instance (the caller saw the same machine-id)."""
    return bool(saved_instance_id and instance_id and saved_instance_id != instance_id)


def unsealed_note(saved_instance_id: str | None, instance_id: str | None) -> str:
    """The loud warning about an image captured without `seal`."""
    return (
        f"THIS MACHINE IS AN UNSEALED CLONE: cloud-init's instance-id is {instance_id}, the state was written on "
        f"instance {saved_instance_id}, and the machine-id is the same. The image was captured without "
        "`nezha-bootstrap seal`, so its clones share the machine-id and the state; this one registers as its own "
        "server. Seal images before capturing them, and give this machine its own machine-id "
        "(systemd-machine-id-setup)"
    )


def recorded_late(saved_instance_id: str | None, instance_id: str | None) -> bool:
    """Whether a state written without cloud-init's instance-id now sees one (it is recorded now)."""
    return saved_instance_id is None and instance_id is not None


def recorded_late_note(instance_id: str | None) -> str:
    """The one warning when the instance-id is first recorded: a clone cannot be told from its image then."""
    return (
        f"the state has no cloud-init instance-id (written before cloud-init ran here); recording this one, "
        f"{instance_id}. If this machine is a clone of an image captured without `nezha-bootstrap seal`, it shares "
        "the image's server and nothing here can tell: seal images before capturing them"
    )


@dataclass(frozen=True)
class Identity:
    """The uuid this run enrolls with and where it came from."""

    uuid: str
    source: str  # "--uuid", "state" or "machine-id"


def resolve(override: str | None, machine_id: str | None, saved_machine_id: str | None,
            saved_uuid: str | None) -> Identity:
    """--uuid wins; then the uuid the state recorded for this machine-id; then the derived one.

    The caller has checked `machine_id` with machine_id_problem unless `override` is given.
    """
    if override:
        return Identity(override, "--uuid")
    if saved_uuid and machine_id and saved_machine_id == machine_id:
        return Identity(saved_uuid, "state")
    if not machine_id:
        raise ValueError("resolve() needs a machine-id when no --uuid is given")
    return Identity(machine_uuid(machine_id), "machine-id")
