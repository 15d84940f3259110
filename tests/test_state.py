"""The state file (versioned, 0600 in 0700, atomic, corrupt files kept aside) and the run lock."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from nezha_bootstrap import state as state_mod
from nezha_bootstrap.errors import LockBusy, StateError
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.state import STATE_VERSION, State

SAVED = State(
    dashboard_url="https://dash.example.com/nezha", name='web "1" 🚀', tag=None, probe_address="2001:db8::1",
    probe_port=5555, tls=True, secret="gv4eGLwyvHIR9y5E7p", machine_id="0123456789abcdef",
    registered_at="2025-01-02T03:04:05+00:00", installed_at=None,
)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(tmp_path / "root")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_state(paths: Paths, content: str) -> None:
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    paths.state_file.write_text(content)


# --- save and load ----------------------------------------------------------------------------------

def test_a_saved_state_loads_back_equal(paths: Paths) -> None:
    state_mod.save(paths, SAVED)

    assert state_mod.load(paths) == SAVED


def test_no_state_file_loads_as_none(paths: Paths) -> None:
    assert state_mod.load(paths) is None


def test_the_state_file_is_versioned_json(paths: Paths) -> None:
    state_mod.save(paths, SAVED)

    data = json.loads(paths.state_file.read_text())
    assert data["version"] == STATE_VERSION == 1
    assert (data["secret"], data["name"], data["installed_at"]) == (SAVED.secret, SAVED.name, None)


def test_the_state_file_is_0600_in_a_0700_directory(paths: Paths) -> None:
    paths.state_dir.mkdir(parents=True, mode=0o755)
    os.chmod(paths.state_dir, 0o755)  # a directory someone made too open is tightened

    state_mod.save(paths, SAVED)

    assert (mode(paths.state_file), mode(paths.state_dir)) == (0o600, 0o700)


def test_saving_again_replaces_the_file_and_leaves_no_temporary_file(paths: Paths) -> None:
    state_mod.save(paths, SAVED)
    installed = State(**{**SAVED.__dict__, "installed_at": "2025-01-02T03:05:00+00:00"})

    state_mod.save(paths, installed)

    assert sorted(p.name for p in paths.state_dir.iterdir()) == ["state.json"]
    assert state_mod.load(paths) == installed
    assert mode(paths.state_file) == 0o600


def test_a_write_that_fails_midway_keeps_the_old_state_and_no_temporary_file(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_mod.save(paths, SAVED)

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)

    with pytest.raises(StateError) as caught:
        state_mod.save(paths, State(**{**SAVED.__dict__, "installed_at": "later"}))

    assert str(caught.value) == f"cannot write the state file {paths.state_file}: the disk is full"
    assert caught.value.exit_code == 1
    monkeypatch.undo()
    assert sorted(p.name for p in paths.state_dir.iterdir()) == ["state.json"]
    assert state_mod.load(paths) == SAVED


def test_the_secret_stays_out_of_repr_and_public(paths: Paths) -> None:
    assert SAVED.secret not in repr(SAVED)
    assert "secret" not in SAVED.public()
    assert SAVED.public()["name"] == SAVED.name


# --- corrupt and future files ------------------------------------------------------------------------

def valid_data(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {"version": 1, **SAVED.__dict__}
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "it is not valid state JSON"),
        ("", "it is not valid state JSON"),
        ("[" * 100_000, "it is not valid state JSON"),
        ("[]", "it has no version number"),
        ('{"secret": "x"}', "it has no version number"),
        ('{"version": "1"}', "it has no version number"),
        ('{"version": true}', "it has no version number"),
        ('{"version": 1}', "fields are missing: dashboard_url, machine_id, name, probe_address, probe_port, "
                           "secret, tag, tls"),
        (json.dumps(valid_data(probe_port="5555")), "fields have the wrong type: probe_port"),
        (json.dumps(valid_data(secret=None, tls="yes")), "fields have the wrong type: secret, tls"),
        (json.dumps(valid_data(secret="abc\n$(reboot)")), "the node secret is not letters and digits"),
        (json.dumps(valid_data(secret="", uuid='x"\nserver: evil')), "the uuid is not one: the uuid must be 36 "
         "characters: hexadecimal digits with hyphens at positions 9, 14, 19 and 24"),
    ],
)
def test_a_corrupt_state_file_is_moved_aside_with_a_clear_error(
    paths: Paths, monkeypatch: pytest.MonkeyPatch, content: str, why: str
) -> None:
    write_state(paths, content)
    monkeypatch.setattr(time, "time", lambda: 1700000000.0)

    with pytest.raises(StateError) as caught:
        state_mod.load(paths)

    aside = paths.state_dir / "state.json.corrupt-1700000000"
    assert str(caught.value) == (
        f"the state file {paths.state_file} is unreadable ({why}); it was kept aside as {aside}. "
        "Run again: it looks in the dashboard for this node's server before registering anything (a server "
        "whose secret went with that file is never registered twice)."
    )
    assert not paths.state_file.exists()
    assert aside.read_text() == content
    assert state_mod.load(paths) is None


def test_a_state_file_from_a_newer_version_is_refused_and_left_in_place(paths: Paths) -> None:
    content = json.dumps(valid_data(version=2))
    write_state(paths, content)

    with pytest.raises(StateError) as caught:
        state_mod.load(paths)

    assert str(caught.value) == (
        f"the state file {paths.state_file} has version 2, written by a newer nezha-bootstrap (this one reads "
        "version 1); it was left as it is. Upgrade nezha-bootstrap, or move the file away to register this node again."
    )
    assert paths.state_file.read_text() == content
    assert sorted(p.name for p in paths.state_dir.iterdir()) == ["state.json"]


def test_unknown_extra_fields_are_ignored(paths: Paths) -> None:
    write_state(paths, json.dumps(valid_data(comment="hand-written note")))

    assert state_mod.load(paths) == SAVED


# --- the lock ------------------------------------------------------------------------------------------

def test_a_second_holder_waits_for_the_timeout_then_gets_lock_busy(paths: Paths) -> None:
    with state_mod.locked(paths, timeout=1):
        started = time.monotonic()
        with pytest.raises(LockBusy) as caught:
            with state_mod.locked(paths, timeout=0.3, poll=0.05):
                pytest.fail("the lock was taken twice")
        waited = time.monotonic() - started

    assert str(caught.value) == f"another nezha-bootstrap run holds {paths.lock_file}; gave up after 0.3 s"
    assert caught.value.exit_code == 6
    assert 0.3 <= waited < 2


def held_elsewhere(lock_file: Path) -> bool:
    """Whether another open file description holds the lock (flock refuses this one at once)."""
    with open(lock_file, "rb") as other:
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(other, fcntl.LOCK_UN)
        return False


def test_the_lock_is_released_after_the_with_block(paths: Paths) -> None:
    with state_mod.locked(paths, timeout=1):
        held_first = held_elsewhere(paths.lock_file)
    released = not held_elsewhere(paths.lock_file)

    with state_mod.locked(paths, timeout=0):  # timeout 0: LockBusy at once if the first still held it
        held_again = held_elsewhere(paths.lock_file)

    assert (held_first, released, held_again) == (True, True, True)


def test_the_lock_is_released_when_the_block_raises(paths: Paths) -> None:
    with pytest.raises(RuntimeError):
        with state_mod.locked(paths, timeout=1):
            raise RuntimeError("boom")

    with state_mod.locked(paths, timeout=0):
        pass


def test_the_lock_file_is_private(paths: Paths) -> None:
    with state_mod.locked(paths, timeout=1):
        assert (mode(paths.lock_file), mode(paths.state_dir)) == (0o600, 0o700)


@pytest.mark.parametrize("content", ['{"dashboard_url": "u", "name": "n", "tag": "t", "before": "123", '
                                     '"started_at": "now"}', "[]", "{broken"])
def test_an_unreadable_pending_registration_is_a_state_error_naming_what_to_do(paths: Paths, content: str) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.pending_file.write_text(content)

    with pytest.raises(StateError) as caught:
        state_mod.load_pending(paths)

    assert "look in the dashboard for a server named like this node" in str(caught.value)


def test_a_pending_registration_behind_a_link_is_not_followed(paths: Paths, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text('{"dashboard_url": "u", "name": "n", "tag": "t", "before": [], "started_at": "now"}')
    paths.state_dir.mkdir(parents=True)
    paths.pending_file.symlink_to(elsewhere)

    with pytest.raises(StateError):
        state_mod.load_pending(paths)


# --- the file as written, read back whole ----------------------------------------------------------------

def test_now_is_utc_to_the_second() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", state_mod.now())


def test_the_state_file_is_sorted_json_indented_by_two_ending_in_a_newline(paths: Paths) -> None:
    state_mod.save(paths, SAVED)

    assert paths.state_file.read_text() == json.dumps(valid_data(), indent=2, sort_keys=True) + "\n"


def test_agent_flags_load_back_as_the_tuple_that_was_saved(paths: Paths) -> None:
    saved = dataclasses.replace(SAVED, agent_flags=("--gpu", "--disable-auto-update"))
    state_mod.save(paths, saved)

    assert state_mod.load(paths) == saved


@pytest.mark.parametrize(("changes", "why"), [
    ({"agent_flags": ["--gpu", 1]}, "fields have the wrong type: agent_flags"),
    ({"agent_flags": "--gpu"}, "fields have the wrong type: agent_flags"),
    ({"uuid": None, "secret": ""}, "the node secret is not letters and digits"),
    ({"uuid": "8d3b2c6e-0f41-5a6b-9c7d-1e2f3a4b5c6d", "secret": "abc!"}, "the node secret is not letters and digits"),
    ({"version": 0}, "it has no version number"),
])
def test_a_state_read_without_moving_it_aside_names_the_problem_and_stays(
    paths: Paths, changes: dict[str, object], why: str
) -> None:
    content = json.dumps(valid_data(**changes))
    write_state(paths, content)

    with pytest.raises(StateError) as caught:
        state_mod.load(paths, move_aside=False)

    assert str(caught.value) == (
        f"the state file {paths.state_file} is unreadable ({why}); it was left as it is. "
        "`nezha-bootstrap run` keeps it aside and registers this node anew")
    assert paths.state_file.read_text() == content


def test_a_v1_enrollment_has_a_uuid_and_no_node_secret(paths: Paths) -> None:
    write_state(paths, json.dumps(valid_data(uuid="8d3b2c6e-0f41-5a6b-9c7d-1e2f3a4b5c6d", secret="")))

    loaded = state_mod.load(paths)

    assert loaded is not None and (loaded.uuid, loaded.secret) == ("8d3b2c6e-0f41-5a6b-9c7d-1e2f3a4b5c6d", "")


@pytest.mark.parametrize(("make", "why"), [
    (lambda file: file.mkdir(), "it is a directory, not a regular file"),
    (lambda file: file.symlink_to(file.parent / "elsewhere.json"),
     "it is a symbolic link, which nezha-bootstrap does not follow there; remove the link"),
])
def test_a_state_file_that_cannot_be_read_says_why(paths: Paths, make: Any, why: str) -> None:
    paths.state_dir.mkdir(parents=True)
    (paths.state_dir / "elsewhere.json").write_text(json.dumps(valid_data()))
    make(paths.state_file)

    with pytest.raises(StateError) as caught:
        state_mod.load(paths)

    assert str(caught.value) == f"cannot read the state file {paths.state_file}: {why}"


@pytest.mark.parametrize(("code", "why"), [
    (errno.ENOSPC, "the disk is full"),
    (errno.EROFS, "the directory is read-only or not writable"),
    (errno.EACCES, "the directory is read-only or not writable"),
    (errno.EPERM, "the directory is read-only or not writable"),
    (errno.EIO, "Input/output error"),
])
def test_a_failed_write_names_the_file_and_the_reason(
    paths: Paths, monkeypatch: pytest.MonkeyPatch, code: int, why: str
) -> None:
    def fail(path: Path, data: bytes) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(state_mod, "atomic_write", fail)

    with pytest.raises(StateError) as state_error:
        state_mod.save(paths, SAVED)
    with pytest.raises(StateError) as pending_error:
        state_mod.save_pending(paths, PENDING)

    assert str(state_error.value) == f"cannot write the state file {paths.state_file}: {why}"
    assert str(pending_error.value) == (
        f"cannot write the state file {paths.pending_file}: {why}; nothing was registered")


# --- the pending registration ------------------------------------------------------------------------------

PENDING = state_mod.Pending(dashboard_url="https://dash.example.com", name='web "7"', tag="edge", before=(3, 9),
                            machine_id="0123456789abcdef", started_at="2026-01-01T00:00:00+00:00")


def test_a_pending_registration_loads_back_equal_from_a_private_file(paths: Paths) -> None:
    state_mod.save_pending(paths, PENDING)

    assert state_mod.load_pending(paths) == PENDING
    assert paths.pending_file.read_text() == json.dumps(
        {"version": 1, **dataclasses.asdict(PENDING)}, sort_keys=True) + "\n"
    assert (mode(paths.pending_file), mode(paths.state_dir)) == (0o600, 0o700)


def test_no_pending_registration_loads_as_none(paths: Paths) -> None:
    assert state_mod.load_pending(paths) is None


@pytest.mark.parametrize("field", ["dashboard_url", "name", "tag", "before", "started_at"])
def test_a_pending_registration_missing_a_field_says_what_to_do_whole(paths: Paths, field: str) -> None:
    data = {"version": 1, **dataclasses.asdict(PENDING)}
    del data[field]
    paths.state_dir.mkdir(parents=True)
    paths.pending_file.write_text(json.dumps(data))

    with pytest.raises(StateError) as caught:
        state_mod.load_pending(paths)

    assert str(caught.value) == (
        f"{paths.pending_file} records a registration an earlier run did not finish, but it is unreadable; "
        "look in the dashboard for a server named like this node that never connected, delete it, then "
        "remove that file and run again")


def test_a_pending_registration_without_a_machine_id_loads_with_none(paths: Paths) -> None:
    data = {"version": 1, **dataclasses.asdict(PENDING)}
    del data["machine_id"]
    paths.state_dir.mkdir(parents=True)
    paths.pending_file.write_text(json.dumps(data))

    assert state_mod.load_pending(paths) == dataclasses.replace(PENDING, machine_id=None)


def test_clearing_the_pending_registration_removes_it_and_clearing_none_is_fine(paths: Paths) -> None:
    state_mod.save_pending(paths, PENDING)

    state_mod.clear_pending(paths)
    state_mod.clear_pending(paths)

    assert not paths.pending_file.exists()
    assert state_mod.load_pending(paths) is None


def test_a_pending_registration_that_cannot_be_removed_says_why(paths: Paths) -> None:
    paths.pending_file.mkdir(parents=True)  # a directory where the file should be

    with pytest.raises(StateError) as caught:
        state_mod.clear_pending(paths)

    assert str(caught.value) == f"cannot remove {paths.pending_file}: Is a directory"


# --- room for the state, proven before registering ----------------------------------------------------------

def test_check_room_writes_and_syncs_a_block_beside_the_state_and_leaves_nothing(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[tuple[str, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_size))
        real_fsync(fd)

    monkeypatch.setattr(state_mod.os, "fsync", fsync)

    state_mod.check_room(paths)

    [(name, size)] = synced
    assert re.fullmatch(re.escape(f"{paths.state_dir}/.state.json.") + r"[^/]+\.tmp", name)
    assert size == state_mod.ROOM_NEEDED == 4096
    assert list(paths.state_dir.iterdir()) == []
    assert mode(paths.state_dir) == 0o700


@pytest.mark.parametrize("where", ["create", "sync"])
def test_no_room_for_the_state_is_a_state_error_before_registering(
    paths: Paths, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    def full(*args: object, **kwargs: object) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "create":
        monkeypatch.setattr(state_mod.tempfile, "mkstemp", full)
    else:
        monkeypatch.setattr(state_mod.os, "fsync", full)

    with pytest.raises(StateError) as caught:
        state_mod.check_room(paths)

    assert str(caught.value) == (
        f"cannot write the state file {paths.state_file}: the disk is full; nothing was registered")
    assert list(paths.state_dir.iterdir()) == []


def test_a_failure_without_an_os_reason_is_named_by_its_words(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    def odd(*args: object) -> Any:
        raise OSError("odd failure")  # no errno, no strerror

    monkeypatch.setattr(state_mod, "atomic_write", odd)
    monkeypatch.setattr(state_mod, "read_nofollow", odd)

    with pytest.raises(StateError) as written:
        state_mod.save(paths, SAVED)
    with pytest.raises(StateError) as read:
        state_mod.load(paths)

    assert str(written.value) == f"cannot write the state file {paths.state_file}: odd failure"
    assert str(read.value) == f"cannot read the state file {paths.state_file}: odd failure"


def test_read_nofollow_gives_the_bytes_as_stored(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"\xff\xfe not UTF-8 \n")

    assert state_mod.read_nofollow(tmp_path / "f") == b"\xff\xfe not UTF-8 \n"


def test_damaged_records_kept_aside_after_the_registration_are_the_ones_to_look_for(paths: Paths) -> None:
    paths.state_dir.mkdir(parents=True)
    for name in ("state.json.corrupt-1700000000", "pending.json.corrupt-1800000000", "state.json.corrupt-x",
                 "other.json.corrupt-1800000000", "state.json", "state.json.corrupt-1600000000"):
        (paths.state_dir / name).write_text("{")

    assert state_mod.damaged_since(paths, "2023-11-14T22:13:20+00:00") == [
        paths.state_dir / "pending.json.corrupt-1800000000"]
    assert state_mod.damaged_since(paths, None) == [
        paths.state_dir / "pending.json.corrupt-1800000000", paths.state_dir / "state.json.corrupt-1600000000",
        paths.state_dir / "state.json.corrupt-1700000000"]
    assert state_mod.damaged_since(Paths(paths.root / "missing"), None) == []


# --- under a root: every writer and reader stays confined (issue 25's mutation run) --------------------------

def lock_once(paths: Paths) -> None:
    with state_mod.locked(paths, timeout=1):
        pass


@pytest.mark.parametrize("writer", [
    lambda paths: state_mod.save(paths, SAVED),
    lambda paths: state_mod.save_pending(paths, PENDING),
    lambda paths: state_mod.check_room(paths),
    lambda paths: lock_once(paths),
], ids=["save", "save_pending", "check_room", "locked"])
def test_under_a_root_the_state_directory_and_the_parents_it_needed_are_made_0700(paths: Paths, writer: Any) -> None:
    umask = os.umask(0o022)  # a plain mkdir would leave the parents 0755
    try:
        writer(paths)
    finally:
        os.umask(umask)

    made = [paths.root / "var", paths.root / "var/lib", paths.state_dir]
    assert [mode(directory) for directory in made] == [0o700, 0o700, 0o700]


@pytest.mark.parametrize(("name", "record", "read"), [
    ("state.json", valid_data(), state_mod.load),
    ("pending.json", dataclasses.asdict(PENDING), state_mod.load_pending),
])
def test_a_record_is_read_inside_the_root_even_if_its_directory_became_a_link_after_resolving(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, record: dict[str, Any], read: Any) -> None:
    host = tmp_path / "host"
    (host / "var/lib/nezha-bootstrap").mkdir(parents=True)
    (host / "var/lib/nezha-bootstrap" / name).write_text(json.dumps(record))
    paths = Paths(tmp_path / "root")
    resolved = paths.state_dir  # as a run resolves it; then /var/lib is swapped for a link to the host's
    (paths.root / "var").mkdir(parents=True)
    (paths.root / "var/lib").symlink_to(host / "var/lib")
    monkeypatch.setattr(Paths, "state_dir", property(lambda self: resolved))

    assert read(paths) is None  # the image's own (none), never the host's record


def test_an_unreadable_pending_record_kept_aside_says_so_and_is_found_as_damaged(paths: Paths) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.pending_file.write_text("{broken")

    with pytest.raises(StateError) as caught:
        state_mod.load_pending(paths, move_aside=True)

    assert str(caught.value) == (
        f"{paths.pending_file} recorded a registration an earlier run did not finish, but it is unreadable; "
        "it was kept aside, and a registration looks in the dashboard for this node's server first")
    kept = state_mod.damaged_since(paths, None)
    assert [path.name.split("-")[0] for path in kept] == ["pending.json.corrupt"]
    assert kept[0].read_text() == "{broken" and not paths.pending_file.exists()


def test_the_time_a_record_was_kept_aside_is_compared_in_utc_whatever_the_local_zone(
        paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    paths.state_dir.mkdir(parents=True)
    (paths.state_dir / "state.json.corrupt-1700000000").write_text("{")  # 2023-11-14T22:13:20 UTC
    monkeypatch.setenv("TZ", "UTC-8")  # POSIX spelling of eight hours east of UTC
    time.tzset()
    try:
        found = state_mod.damaged_since(paths, "2023-11-14T23:00:00+00:00")
    finally:
        monkeypatch.undo()
        time.tzset()

    assert found == []  # kept aside before the registration: its local time (06:13 the next day) is no matter


def test_an_unreadable_pending_record_that_cannot_be_kept_aside_says_what_to_do_by_hand(
        paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.pending_file.write_text("{broken")

    def read_only(source: object, target: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(StateError) as caught:
        state_mod.load_pending(paths, move_aside=True)

    assert str(caught.value) == (
        f"{paths.pending_file} records a registration an earlier run did not finish, but it is unreadable; look in "
        "the dashboard for a server named like this node that never connected, delete it, then remove that file "
        "and run again")
    assert paths.pending_file.read_text() == "{broken"
