"""Every path the tool reads or writes, resolved under one root (`--root`, default `/`).

Under a root other than `/` (an image), a symbolic link is read as the image's own system would read
it, like a chroot: an absolute target starts again at the root, and `..` never climbs above it. So an
image's `/etc -> /host/etc` or `lock -> /etc/passwd` can never lead a write onto the host. Directories
are resolved through their last component; a file's last component is not followed (a link there is
replaced or removed as itself, and the writers open files with O_NOFOLLOW).
"""

from __future__ import annotations

import errno
import functools
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
            return self.root / absolute.lstrip("/")  # pragma: no mutate - Path("/") / "/etc" is "/etc" either way
        return inside(self.root, absolute, follow_last=follow_last)

    def directory(self, absolute: str) -> Path:
        """A directory of the target system under root, resolved through its last component."""
        return self.under(absolute, follow_last=True)

    @functools.cached_property  # asked for every path (~40 a run): one resolve of the root is enough
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


READ_CAP = 1 << 20  # every file read here is a few hundred bytes to a few KiB (state, unit, config, ids)
READ_CHUNK = 1 << 16  # only how many reads a long file takes
HOST = Path("/")


def read_under(root: Path, path: Path, *, follow_last: bool = True, cap: int = READ_CAP) -> bytes:
    """The bytes of `path` (a path under `root`), read the one confined way: reached from a descriptor of
    `root` one component at a time, each link resolved as a chroot at `root` would (never out of it, even if
    a directory is swapped for a link meanwhile), opened O_NOFOLLOW|O_NONBLOCK and checked with fstat to be a
    regular file (a FIFO, device, socket or directory is refused at once, never waited on). With
    `follow_last=False` a link as the last component is refused (ELOOP). At most `cap` bytes."""
    fd = open_under(root, path, follow_last=follow_last)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, f"it is {_kind(info.st_mode)}, not a regular file", str(path))
        chunks, size = [], 0
        while size < cap:  # pragma: no mutate - `<=` only adds a read of 0 bytes at the cap, which ends it too
            chunk = os.read(fd, min(cap - size, READ_CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def private_dir_under(root: Path, path: Path) -> None:
    """Create the directory `path` under `root` (and its parents, 0700) the confined way, then make it 0700
    through its own descriptor: a directory swapped for a link is never chmod'ed outside the root."""
    fd = open_under(root, path, create=True, directory=True)
    try:
        os.fchmod(fd, 0o700)
    except OSError as exc:  # a read-only file system shows here first: said apart from a failed create
        raise PrivateModeFailed(exc.errno, exc.strerror) from exc
    finally:
        os.close(fd)


class PrivateModeFailed(OSError):
    """The directory exists (or was made) under the root, but could not be made 0700."""


def open_under(root: Path, path: Path, *, follow_last: bool = True, create: bool = False,
               directory: bool = False) -> int:
    """A descriptor of `path` under `root`, reached component by component from a descriptor of `root`
    (O_NOFOLLOW each; links resolved by hand, an absolute target starting again at `root`, `..` never above
    it). `create`: missing directories are made (0700); `directory`: the last component must be one."""
    try:
        todo = list(path.relative_to(root).parts)  # pathlib has dropped empty and "." parts already
    except ValueError:
        raise OSError(errno.EXDEV, f"{path} is not under {root}") from None
    stack = [os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    links = 0
    try:
        while todo:
            part = todo.pop(0)
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            last = not todo
            want_dir = directory or not last
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_DIRECTORY if want_dir else 0)
            try:
                stack.append(_open_at(part, flags, stack[-1], create and want_dir))
                continue
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                target = _link_target(part, stack[-1], exc)
                if last and not follow_last:
                    raise
            links += 1
            if links > MAX_LINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", str(path))
            if target.startswith("/"):
                while len(stack) > 1:
                    os.close(stack.pop())
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)


def _open_at(part: str, flags: int, dir_fd: int, create: bool) -> int:
    try:
        return os.open(part, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
    try:
        os.mkdir(part, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        pass  # made meanwhile by someone else: opened below as whatever it is
    return os.open(part, flags, dir_fd=dir_fd)


def _link_target(part: str, dir_fd: int, failure: OSError) -> str:
    """The target of the link `part`, or `failure` again when it is not a link (a file where a directory
    was expected)."""
    try:
        return os.readlink(part, dir_fd=dir_fd)
    except OSError:
        raise failure from None


def _kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a pipe (FIFO)", stat.S_ISCHR: "a device", stat.S_ISBLK: "a device",
             stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a directory", stat.S_ISLNK: "a symbolic link"}
    return next((kind for test, kind in kinds.items() if test(mode)), "not a regular file")
