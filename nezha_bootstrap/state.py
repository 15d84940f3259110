"""The versioned state file and the run lock, both under <root>/var/lib/nezha-bootstrap."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nezha_bootstrap.config import SECRET_RE
from nezha_bootstrap.errors import LockBusy, StateError
from nezha_bootstrap.identity import uuid_problem
from nezha_bootstrap.paths import HOST, Paths, read_under
from nezha_bootstrap.system import atomic_write, ensure_private_dir, fsync_dir

STATE_VERSION = 1


@dataclass(frozen=True)
class State:
    """What a previous run left behind. `secret` is the node secret: the file is 0600."""

    dashboard_url: str
    name: str
    tag: str | None
    probe_address: str
    probe_port: int
    tls: bool
    secret: str = dataclasses.field(repr=False)
    machine_id: str | None
    registered_at: str | None = None
    installed_at: str | None = None
    # v1/v2 (v1/flow.py): the probed generation, and the uuid this machine-id enrolled with.
    generation: str | None = None
    uuid: str | None = None
    method: str | None = None
    agent_version: str | None = None
    # What the install put in place beyond the probe address, port and TLS (None: not recorded by the
    # version that installed it): a difference from the settings reinstalls with the saved secret.
    agent_flags: tuple[str, ...] | None = None
    # cloud-init's instance-id when the node registered: a new one under the same machine-id is an image
    # captured without `seal` and booted as another instance (facts.read_instance_id).
    instance_id: str | None = None
    # Whether a v0 run had an agent secret in its settings (no value, only that one was given): a secret that
    # appears beside a cached v0 means the operator moved on to a v1/v2 dashboard, and is probed once.
    agent_secret_given: bool | None = None
    # Done means online (issue 17): whether the last run that installed the agent saw the dashboard list the
    # node as reporting, and when (None: not recorded by the version that installed it).
    online: bool | None = None
    online_at: str | None = None
    # v0: the id the dashboard gave the registered server (its list after the register call): the same server
    # found under another URL of the dashboard (localhost for 127.0.0.1, a new name) is adopted, not registered.
    server_id: int | None = None

    def public(self) -> dict[str, Any]:
        """The state without the secret, for `status` and `--json`."""
        data = dataclasses.asdict(self)
        data.pop("secret")
        data.pop("agent_secret_given")  # bookkeeping of run.resolve_generation, not a fact about the node
        return data


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def load(paths: Paths, *, move_aside: bool = True) -> State | None:
    """Read the state file; None when there is none. A corrupt file is moved aside (unless told not to:
    --dry-run and `status` change nothing)."""
    try:
        raw = read_nofollow(paths.state_file, paths.root)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read the state file {paths.state_file}: {_open_problem(exc)}") from exc
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
        raise StateError(_corrupt(paths, "it is not valid state JSON", move_aside)) from exc
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(version, int) or not _has_type(version, (int,)) or version < 1:
        raise StateError(_corrupt(paths, "it has no version number", move_aside))
    if version > STATE_VERSION:
        raise StateError(
            f"the state file {paths.state_file} has version {version}, written by a newer "
            f"nezha-bootstrap (this one reads version {STATE_VERSION}); it was left as it is. "
            "Upgrade nezha-bootstrap, or move the file away to register this node again."
        )
    problem = _field_problem(data)
    if problem:
        raise StateError(_corrupt(paths, problem, move_aside))
    values = {k: data[k] for k in _FIELD_TYPES if k in data}
    if values.get("agent_flags") is not None:
        values["agent_flags"] = tuple(values["agent_flags"])
    return State(**values)


_TEXT_OR_NONE = (str, type(None))
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "dashboard_url": (str,), "name": (str,), "tag": _TEXT_OR_NONE, "probe_address": (str,),
    "probe_port": (int,), "tls": (bool,), "secret": (str,), "machine_id": _TEXT_OR_NONE,
    "registered_at": _TEXT_OR_NONE, "installed_at": _TEXT_OR_NONE,
    "generation": _TEXT_OR_NONE, "uuid": _TEXT_OR_NONE, "method": _TEXT_OR_NONE, "agent_version": _TEXT_OR_NONE,
    "agent_flags": (list, type(None)), "instance_id": _TEXT_OR_NONE, "agent_secret_given": (bool, type(None)),
    "server_id": (int, type(None)), "online": (bool, type(None)), "online_at": _TEXT_OR_NONE,
}


def _has_type(value: Any, types: tuple[type, ...]) -> bool:
    # JSON true/false load as bool, a subclass of int: a port or a version of `true` is wrong.
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _field_problem(data: dict[str, Any]) -> str | None:
    """Why `data` is not a state this version wrote (a hand edit, a bad disk), or None."""
    required = {f.name for f in dataclasses.fields(State) if f.default is dataclasses.MISSING}
    missing = sorted(required - data.keys())
    if missing:
        return f"fields are missing: {', '.join(missing)}"
    wrong = sorted(k for k, types in _FIELD_TYPES.items() if k in data and not _has_type(data[k], types))
    if isinstance(data.get("agent_flags"), list) and not all(isinstance(f, str) for f in data["agent_flags"]):
        wrong.append("agent_flags")
    if wrong:
        return f"fields have the wrong type: {', '.join(wrong)}"
    if data.get("uuid") is not None and uuid_problem(data["uuid"]):  # it goes into config.yml as it is
        return f"the uuid is not one: {uuid_problem(data['uuid'])}"
    if data.get("uuid") is not None and data["secret"] == "":
        return None  # a v1/v2 enrollment: no node secret (the agent secret lives in config.yml)
    if not SECRET_RE.match(data["secret"]):
        return "the node secret is not letters and digits"
    return None


def _corrupt(paths: Paths, why: str, move_aside: bool) -> str:
    if not move_aside:
        return (
            f"the state file {paths.state_file} is unreadable ({why}); it was left as it is. "
            "`nezha-bootstrap run` keeps it aside and registers this node anew"
        )
    aside = paths.state_file.with_name(f"state.json.corrupt-{int(time.time())}")
    try:
        os.replace(paths.state_file, aside)
    except OSError as exc:
        return f"the state file {paths.state_file} is unreadable ({why}) and could not be moved aside: {exc.strerror}"
    return (
        f"the state file {paths.state_file} is unreadable ({why}); it was kept aside as {aside}. "
        "Run again: it looks in the dashboard for this node's server before registering anything (a server "
        "whose secret went with that file is never registered twice)."
    )


def save(paths: Paths, state: State) -> None:
    """Write the state atomically, 0600 in a 0700 directory."""
    ensure_private_dir(paths.state_dir, paths.root)
    data = {"version": STATE_VERSION, **dataclasses.asdict(state)}
    try:
        atomic_write(paths.state_file, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise StateError(_write_problem(paths.state_file, exc)) from exc


@dataclass(frozen=True)
class Pending:
    """A v0 registration under way: saved (fsync) before the register POST, removed once its secret is
    saved. A run killed in between (SIGKILL, power loss) leaves it, and the next run looks for the server
    it may have made before registering anything (dashboard-v0-register.md: the token API cannot read a
    secret back, so a server whose answer was lost can only be found by its name and deleted)."""

    dashboard_url: str
    name: str
    tag: str
    before: tuple[int, ...]  # ids of the servers so named under the tag just before the POST
    machine_id: str | None
    started_at: str


def save_pending(paths: Paths, pending: Pending) -> None:
    """Record the registration about to be sent, durably (atomic write, file and directory fsync)."""
    ensure_private_dir(paths.state_dir, paths.root)
    data = {"version": STATE_VERSION, **dataclasses.asdict(pending)}
    try:
        atomic_write(paths.pending_file, (json.dumps(data, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise StateError(_write_problem(paths.pending_file, exc) + "; nothing was registered") from exc


def load_pending(paths: Paths, *, move_aside: bool = False) -> Pending | None:
    """The registration an earlier run left under way, or None. An unreadable one is a StateError; with
    `move_aside` it is first kept aside as pending.json.corrupt-<time>, where `damaged_since` finds it."""
    try:
        data = json.loads(read_nofollow(paths.pending_file, paths.root))
        if not isinstance(data.get("before"), list):
            raise TypeError("before is not a list")  # pragma: no mutate - the StateError below replaces it
        pending = Pending(dashboard_url=str(data["dashboard_url"]), name=str(data["name"]), tag=str(data["tag"]),
                          before=tuple(int(i) for i in data["before"]), machine_id=data.get("machine_id"),
                          started_at=str(data["started_at"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError) as exc:
        # OverflowError: a number such as 1e999 in `before` (JSON's infinity cannot be an int).
        if move_aside and _kept_aside(paths.pending_file):
            raise StateError(
                f"{paths.pending_file} recorded a registration an earlier run did not finish, but it is unreadable; "
                "it was kept aside, and a registration looks in the dashboard for this node's server first"
            ) from exc
        raise StateError(
            f"{paths.pending_file} records a registration an earlier run did not finish, but it is unreadable; "
            "look in the dashboard for a server named like this node that never connected, delete it, then "
            "remove that file and run again"
        ) from exc
    return pending


def _kept_aside(path: Path) -> bool:
    """Rename a damaged record to <name>.corrupt-<time> beside it; False when that is impossible."""
    try:
        os.replace(path, path.with_name(f"{path.name}.corrupt-{int(time.time())}"))
    except OSError:
        return False
    fsync_dir(path.parent)
    return True


def damaged_since(paths: Paths, registered_at: str | None) -> list[Path]:
    """The state or pending records kept aside as damaged after `registered_at` (any, when None): each may
    have held the secret of a server the dashboard has, so a registration must look for it first."""
    try:
        names = sorted(os.listdir(paths.state_dir))
    except OSError:
        return []
    found = []
    for name in names:
        # the pragma hides the line's other mutants too: "XX.corrupt-XX" and `= None` fail test_state (by hand)
        stem, _, stamp = name.rpartition(".corrupt-")  # pragma: no mutate - partition skips the same names
        if stem not in ("state.json", "pending.json") or not stamp.isdigit():
            continue
        when = datetime.fromtimestamp(int(stamp), timezone.utc).isoformat()
        if registered_at is None or when > registered_at:
            found.append(paths.state_dir / name)
    return found


def clear_pending(paths: Paths) -> None:
    """Forget the registration under way (its secret is saved, or it is known to have made nothing)."""
    try:
        os.unlink(paths.pending_file)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StateError(f"cannot remove {paths.pending_file}: {exc.strerror}") from exc
    fsync_dir(paths.state_dir)


ROOM_NEEDED = 4096  # a state file is under 1 KiB; one block more covers the rename's new entry


def check_room(paths: Paths) -> None:
    """Prove a state file can be written now (a read-only or full disk fails here, not after registering)."""
    ensure_private_dir(paths.state_dir, paths.root)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{paths.state_file.name}.", suffix=".tmp", dir=paths.state_dir)
    except OSError as exc:
        raise StateError(_write_problem(paths.state_file, exc) + "; nothing was registered") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(bytes(ROOM_NEEDED))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise StateError(_write_problem(paths.state_file, exc) + "; nothing was registered") from exc
    finally:
        os.unlink(tmp)


def read_nofollow(path: Path, root: Path = HOST) -> bytes:
    """The bytes of `path`, read confined to `root` (paths.read_under), never through a symbolic link as its
    last component (ELOOP then) and only from a regular file (a FIFO is refused, never waited on)."""
    # the pragma hides the line's other mutants too: follow_last=True and the keyword dropped fail
    # test_state (applied by hand)
    return read_under(root, path, follow_last=False)  # pragma: no mutate - None is as false as False


def _open_problem(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link, which nezha-bootstrap does not follow there; remove the link"
    return exc.strerror or str(exc)


def _write_problem(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        why = "the disk is full"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "the directory is read-only or not writable"
    else:
        why = exc.strerror or str(exc)
    return f"cannot write the state file {path}: {why}"


@contextlib.contextmanager
def locked(paths: Paths, timeout: float, poll: float = 0.1) -> Iterator[None]:
    """Hold the exclusive run lock; wait up to `timeout` seconds, then raise LockBusy."""
    ensure_private_dir(paths.state_dir, paths.root)
    try:
        fd = os.open(paths.lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateError(f"cannot open the lock file {paths.lock_file}: {_open_problem(exc)}") from exc
        raise StateError(_write_problem(paths.lock_file, exc).replace("state file", "lock file")) from exc
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockBusy(
                        f"another nezha-bootstrap run holds {paths.lock_file}; gave up after {timeout:g} s"
                    ) from None
                time.sleep(poll)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
