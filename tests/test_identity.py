"""The stable uuid: UUIDv5 of the project namespace and /etc/machine-id, and what overrides it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from nezha_bootstrap.facts import read_instance_id
from nezha_bootstrap.identity import (
    NAMESPACE,
    Identity,
    instance_uuid,
    machine_id_problem,
    machine_uuid,
    resolve,
    unsealed_clone,
    unsealed_note,
    uuid_problem,
)

MID = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


def test_the_uuid_is_uuidv5_of_the_fixed_namespace_in_lower_case() -> None:
    assert NAMESPACE == uuid.UUID("6f1c1f2e-5b1a-4d3c-9e57-7a2b0c4d8e91")  # changing it duplicates every server
    derived = machine_uuid(MID)
    assert derived == str(uuid.uuid5(NAMESPACE, MID))
    assert derived == derived.lower()
    assert uuid.UUID(derived).version == 5


def test_the_same_machine_id_gives_the_same_uuid_and_another_gives_another() -> None:
    assert machine_uuid(MID) == machine_uuid(MID)
    assert machine_uuid(OTHER) != machine_uuid(MID)


@pytest.mark.parametrize(("machine_id", "says"), [
    (None, "missing or empty"),
    ("", "missing or empty"),
    ("uninitialized", "'uninitialized'"),
    ("0123", "malformed"),
    ("0123456789ABCDEF0123456789ABCDEF", "malformed"),
    ("0123456789abcdef0123456789abcdeg", "malformed"),
])
def test_unusable_machine_ids_are_refused_with_a_fix(machine_id: str | None, says: str) -> None:
    problem = machine_id_problem(machine_id)
    assert problem is not None and says in problem
    assert "systemd-machine-id-setup" in problem and "--uuid" in problem


def test_a_good_machine_id_has_no_problem() -> None:
    assert machine_id_problem(MID) is None


@pytest.mark.parametrize(("value", "ok"), [
    ("8d3b2c6e-0f41-5a6b-9c7d-1e2f3a4b5c6d", True),
    ("8D3B2C6E-0F41-5A6B-9C7D-1E2F3A4B5C6D", True),  # the dashboard accepts upper case (a different server)
    ("8d3b2c6e0f415a6b9c7d1e2f3a4b5c6d", False),
    ("8d3b2c6e-0f41-5a6b-9c7d-1e2f3a4b5c6", False),
    ("8d3b2c6e-0f41-5a6b-9c7d-1e2f3a4b5c6z", False),
    ("8d3b2c6e-0f41-5a6b-9c7d-1e2f3a4b5c6d\n", False),
])
def test_uuid_format_is_what_the_dashboard_checks(value: str, ok: bool) -> None:
    assert (uuid_problem(value) is None) is ok


@pytest.mark.parametrize(("override", "machine_id", "saved_mid", "saved_uuid", "expected"), [
    ("11111111-2222-3333-4444-555555555555", MID, MID, "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
     Identity("11111111-2222-3333-4444-555555555555", "--uuid")),
    (None, MID, MID, "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", Identity("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", "state")),
    (None, OTHER, MID, "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", Identity(machine_uuid(OTHER), "machine-id")),
    (None, MID, None, None, Identity(machine_uuid(MID), "machine-id")),
])
def test_resolve_prefers_override_then_this_machines_record_then_derivation(
        override: str | None, machine_id: str, saved_mid: str | None, saved_uuid: str | None,
        expected: Identity) -> None:
    assert resolve(override, machine_id, saved_mid, saved_uuid) == expected


def test_an_unsealed_clones_uuid_differs_per_instance_and_from_the_machines() -> None:
    uuids = {machine_uuid(MID), instance_uuid(MID, "i-1"), instance_uuid(MID, "i-2")}

    assert len(uuids) == 3
    assert instance_uuid(MID, "i-1") == str(uuid.uuid5(NAMESPACE, f"{MID}/i-1"))  # docs: Unsealed clones
    assert all(uuid_problem(value) is None and value == value.lower() for value in uuids)


@pytest.mark.parametrize(("saved", "now", "clone"), [
    ("i-1", "i-2", True),
    ("i-1", "i-1", False),
    (None, "i-2", False),  # a state from before instance-ids were kept: nothing to compare
    ("i-1", None, False),  # cloud-init gone or not run: nothing to compare
])
def test_an_unsealed_clone_is_another_instance_id(saved: str | None, now: str | None, clone: bool) -> None:
    assert unsealed_clone(saved, now) is clone


@pytest.mark.parametrize(("content", "expected"), [
    ("i-0abc123\n", "i-0abc123"),
    ("iid-datasource-none\n", None),  # cloud-init found no datasource: no instance to tell apart
    ("", None),
    ("bad\x1bid", None),
])
def test_the_instance_id_is_read_from_cloud_inits_record(tmp_path: Path, content: str, expected: str | None) -> None:
    path = tmp_path / "instance-id"
    path.write_text(content)

    assert read_instance_id(path) == expected
    assert read_instance_id(tmp_path / "missing") is None


# --- the messages, whole: an operator acts on exactly these words ------------------------------------------

FIX = ("create a unique one with `systemd-machine-id-setup` (or `dbus-uuidgen > /etc/machine-id`), "
       "or give the agent's uuid with --uuid")


@pytest.mark.parametrize(("machine_id", "message"), [
    (None, f"/etc/machine-id is missing or empty, so this machine has no stable identity; {FIX}"),
    ("uninitialized", "/etc/machine-id says 'uninitialized' (systemd has not committed one yet, as on an image's "
                      f"first boot before systemd-machine-id-commit); {FIX}"),
    ("0123", f"/etc/machine-id is malformed (it must be 32 lower-case hexadecimal digits); {FIX}"),
])
def test_each_machine_id_problem_reads_whole(machine_id: str | None, message: str) -> None:
    assert machine_id_problem(machine_id) == message


def test_the_uuid_problem_reads_whole() -> None:
    assert uuid_problem("8d3b2c6e0f415a6b9c7d1e2f3a4b5c6d") == (
        "the uuid must be 36 characters: hexadecimal digits with hyphens at positions 9, 14, 19 and 24")


def test_the_unsealed_clone_warning_names_both_instances_and_what_to_do() -> None:
    assert unsealed_note("i-saved", "i-now") == (
        "THIS MACHINE IS AN UNSEALED CLONE: cloud-init's instance-id is i-now, the state was written on "
        "instance i-saved, and the machine-id is the same. The image was captured without "
        "`nezha-bootstrap seal`, so its clones share the machine-id and the state; this one registers as its own "
        "server. Seal images before capturing them, and give this machine its own machine-id "
        "(systemd-machine-id-setup)")


def test_resolve_without_a_machine_id_or_an_override_is_a_programming_error_said_so() -> None:
    with pytest.raises(ValueError) as error:
        resolve(None, None, None, None)

    assert str(error.value) == "resolve() needs a machine-id when no --uuid is given"
