"""The small edge that touches the system: the one subprocess wrapper and the atomic writer."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Callable, Final

from nezha_bootstrap.errors import StateError
from nezha_bootstrap.paths import HOST, PrivateModeFailed, private_dir_under, read_under

COMMAND_TIMEOUT = 60.0  # an agent or systemctl command; install.sh gets the step's deadline instead
AFTER_EXIT = 1.0  # seconds of output still read after a command exits (a child of it may hold the pipe)
# Never handed to a child: NZ_* would override the agent's config (its identity), these are our
# secrets, and CN switches install.sh to the China mirror only when --mirror cn asks for it.
_PRIVATE_ENV = ("NEZHA_TOKEN", "NEZHA_AGENT_SECRET", "CN")


def child_env(environ: Mapping[str, str] | None, extra: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """The one environment every child gets: `environ` (facts.Facts.environ; None: this process's, for a
    command made without the run's facts) without NZ_* and our secrets, plus `extra`."""
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items() if not k.startswith("NZ_") and k not in _PRIVATE_ENV}
    env.update(extra)
    return env


class Completed:
    """How a command ended. A plain class, its fields Final (never compared, hashed, replaced or printed): a
    frozen dataclass costs ~1 ms of every run's start."""

    def __init__(self, returncode: int, output: str, timed_out: bool, seconds: float) -> None:
        self.returncode: Final = returncode
        self.output: Final = output
        self.timed_out: Final = timed_out
        self.seconds: Final = seconds


def run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float,
    on_line: Callable[[str], None] | None = None,
    track: Path | None = None,
) -> Completed:
    """Run `argv` (never a shell string) with stdin from /dev/null in its own process group.

    stdout and stderr are merged and handed line by line to `on_line`; at the timeout the whole
    process group is killed (install.sh starts children that would otherwise outlive it). With `track`,
    the child is recorded there while it runs (see `stop_leftover`).
    """
    started = time.monotonic()
    marker = os.urandom(8).hex()
    # No child ever inherits our secrets: without an explicit env it gets the one scrubbed environment.
    environment = dict(env) if env is not None else child_env(None)
    if track is not None:
        environment[CHILD_MARKER] = marker  # inherited by everything the command starts
        # Before the start: a kill at any moment leaves it. No fsync: a power loss ends the child too.
        atomic_write(track, f"{marker}\n".encode(), durable=False)
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    lines: list[str] = []
    timed_out = False
    try:
        timed_out = _pump(proc, lines, on_line, started + timeout)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if track is not None:
            track.unlink(missing_ok=True)
    return Completed(proc.returncode, "".join(lines), timed_out, time.monotonic() - started)


CHILD_MARKER = "NEZHA_BOOTSTRAP_CHILD"  # names the run that started a process, in its environment
LEFTOVER_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for a command an earlier run left running


def stop_leftover(track: Path) -> list[int]:
    """Stop the command an earlier run recorded in `track` and left running (that run was killed, or its
    ssh session hung up before SIGHUP was handled): install.sh keeps running in its own session with the
    secret in its argv, and a second installer beside it would fight over the same files. The record is
    a random marker the command and all it starts inherit in their environment (written before the start,
    so a kill at any moment leaves it); only processes carrying it are signalled, never a reused pid.
    Returns the pids that were stopped."""
    try:
        marker = read_under(HOST, track, follow_last=False).decode("ascii").strip()  # a FIFO: refused at once
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError):
        marker = ""
    found = _carrying(marker) if marker else []
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in _carrying(marker) if found else []:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        end = time.monotonic() + LEFTOVER_GRACE
        while found and _carrying(marker) and time.monotonic() < end:
            time.sleep(0.05)
    track.unlink(missing_ok=True)
    return found


def _carrying(marker: str) -> list[int]:
    """Live processes whose environment holds CHILD_MARKER=marker (Linux /proc; a zombie has none)."""
    wanted = f"{CHILD_MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if wanted in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _pump(proc: subprocess.Popen[bytes], lines: list[str], on_line: Callable[[str], None] | None,
          deadline: float) -> bool:
    """Copy output until the process ends or the deadline passes; True when it timed out.

    The process is done when it exits: a background child that keeps the output pipe open (install.sh
    starting something with `&`) is read from for AFTER_EXIT seconds more, then left alone.
    """
    import selectors

    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    buffer = b""
    exited: float | None = None  # when the process was first seen gone
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if exited is None and proc.poll() is not None:
                exited = now
            remaining = min(deadline, exited + AFTER_EXIT if exited is not None else deadline) - now
            if remaining <= 0 and exited is not None:
                break
            if remaining <= 0:
                _kill_group(proc)
                return True
            if not selector.select(min(remaining, 0.5)):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                _emit(raw, lines, on_line)
    if buffer:
        _emit(buffer, lines, on_line)
    remaining = deadline - time.monotonic()
    try:
        proc.wait(timeout=max(remaining, 0.01))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return True
    return False


def _emit(raw: bytes, lines: list[str], on_line: Callable[[str], None] | None) -> None:
    line = raw.decode("utf-8", errors="replace")
    lines.append(line + "\n")
    if on_line:
        on_line(line)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def ensure_private_dir(path: Path, root: Path = HOST) -> None:
    """Create `path` (and parents) and make it 0700; under another root, the confined way
    (paths.private_dir_under: a directory swapped for a link never gets a host directory chmod'ed)."""
    if root.resolve() != HOST:
        try:
            root.mkdir(parents=True, exist_ok=True)  # the root itself is the caller's; below it, confined
            private_dir_under(root, path)
        except PrivateModeFailed as exc:
            raise StateError(f"cannot make the directory {path} private (mode 0700): {exc.strerror}") from exc
        except OSError as exc:
            raise StateError(f"cannot create the private directory {path} (mode 0700): {exc.strerror}") from exc
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create the private directory {path}: {exc.strerror}") from exc
    try:
        os.chmod(path, 0o700)
    except OSError as exc:  # a read-only file system shows here first
        raise StateError(f"cannot make the directory {path} private (mode 0700): {exc.strerror}") from exc


def regular_file_problem(path: Path) -> str | None:
    """Why `path` is not a regular file (or a name for a new one), looked at without following a link."""
    import stat

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot look at it: {exc.strerror}"
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISLNK: "a symbolic link", stat.S_ISCHR: "a device", stat.S_ISBLK: "a device",
             stat.S_ISFIFO: "a pipe", stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a directory"}
    return "it is " + next((kind for test, kind in kinds.items() if test(mode)), "not a regular file")


def atomic_write(path: Path, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Write `data` to `path` atomically: temp file in the same directory, fsync, rename.

    `durable=False`: no fsync, for files that need not outlive a power loss (a script run at once
    and removed, the record of a running child): still all or nothing for every process that reads it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


class Staged:
    """A temporary file beside `path`, filled through `file` and renamed onto `path` by `commit`: a large
    file (the agent binary) is streamed to disk, never held in memory, and replaces `path` atomically."""

    def __init__(self, path: Path, mode: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # What a run killed mid-download left (up to the 128 MiB cap); runs hold the run lock, one at a time.
        for leftover in path.parent.glob(f".{path.name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, mode)
        self.path, self.temporary = path, Path(temporary)
        self.file = os.fdopen(fd, "w+b")
        self.committed = False

    def commit(self) -> None:
        """Make the content durable and rename it onto `path`."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.temporary, self.path)
        self.committed = True
        fsync_dir(self.path.parent)

    def discard(self) -> None:
        """Remove the temporary file unless committed (safe to call twice; never raises an OSError)."""
        with contextlib.suppress(OSError):  # a full disk fails the flush in close() once more
            self.file.close()
        if not self.committed:
            with contextlib.suppress(FileNotFoundError):
                self.temporary.unlink()


@contextlib.contextmanager
def staged(path: Path, mode: int) -> Iterator[Staged]:
    """A `Staged` file for `path`, removed on the way out unless committed."""
    stage = Staged(path, mode)
    try:
        yield stage
    finally:
        stage.discard()


def fsync_dir(directory: Path) -> None:
    """Make a rename or removal in `directory` durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
