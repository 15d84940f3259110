"""The versioned state file and the run lock, both under <root>/var/lib/nezha-bootstrap."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from nezha_bootstrap.errors import LockBusy, StateError
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.system import atomic_write, ensure_private_dir

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

    def public(self) -> dict[str, Any]:
        """The state without the secret, for `status` and `--json`."""
        data = dataclasses.asdict(self)
        data.pop("secret")
        return data


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def load(paths: Paths) -> State | None:
    """Read the state file; None when there is none. A corrupt file is moved aside."""
    try:
        raw = paths.state_file.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read the state file {paths.state_file}: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
        version = data["version"] if isinstance(data, dict) else None
    except (ValueError, KeyError) as exc:
        raise StateError(_corrupt(paths, "it is not valid state JSON")) from exc
    if not isinstance(version, int):
        raise StateError(_corrupt(paths, "it has no version number"))
    if version > STATE_VERSION:
        raise StateError(
            f"the state file {paths.state_file} has version {version}, written by a newer "
            f"nezha-bootstrap (this one reads version {STATE_VERSION}); it was left as it is. "
            "Upgrade nezha-bootstrap, or move the file away to register this node again."
        )
    fields = {f.name for f in dataclasses.fields(State)}
    try:
        return State(**{k: v for k, v in data.items() if k in fields})
    except TypeError as exc:
        raise StateError(_corrupt(paths, "fields are missing")) from exc


def _corrupt(paths: Paths, why: str) -> str:
    aside = paths.state_file.with_name(f"state.json.corrupt-{int(time.time())}")
    try:
        os.replace(paths.state_file, aside)
    except OSError as exc:
        return f"the state file {paths.state_file} is unreadable ({why}) and could not be moved aside: {exc.strerror}"
    return (
        f"the state file {paths.state_file} is unreadable ({why}); it was kept aside as {aside}. "
        "Run again to register this node anew (the dashboard keeps any server made before)."
    )


def save(paths: Paths, state: State) -> None:
    """Write the state atomically, 0600 in a 0700 directory."""
    ensure_private_dir(paths.state_dir)
    data = {"version": STATE_VERSION, **dataclasses.asdict(state)}
    try:
        atomic_write(paths.state_file, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise StateError(_write_problem(paths.state_file, exc)) from exc


def remove(paths: Paths) -> bool:
    """Delete the state file; True when there was one."""
    try:
        paths.state_file.unlink()
        return True
    except FileNotFoundError:
        return False


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
    ensure_private_dir(paths.state_dir)
    try:
        fd = os.open(paths.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
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
