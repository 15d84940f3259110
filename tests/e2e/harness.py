"""Machinery of the first-boot tests: a cached Debian rootfs, a wheelhouse, a netns, the fake, a guest.

Facts relied on are in ../shared/reference/first-boot-e2e.md: debootstrap minbase with this package
list, `systemd-nspawn -b --register=no --keep-unit` started through `nsenter --net=` (never
`ip netns exec`, which remounts /sys), the guest's PID 1 being nspawn's child, and
`systemctl is-system-running --wait` through `nsenter -t PID1 -a`.
Every wait has a deadline and every process and namespace has a finalizer, so nothing hangs CI.

Knobs (read when this module is imported): NEZHA_E2E_CACHE (the rootfs cache, default
/var/cache/nezha-bootstrap-e2e), NEZHA_E2E_WORK (per-test clones and logs, default
/var/tmp/nezha-bootstrap-e2e), NEZHA_E2E_MIRROR (instead of the host's apt sources),
NEZHA_E2E_KEEP=1 (keep each lab's directory: consoles, dashboard journal, upper layers).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from nezha_bootstrap.testing.fake_v0 import stub_installer
from nezha_bootstrap.testing.stubrecord import StubCall, read_calls

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
GUEST_PYTHON = "3.11"  # bookworm's python3: the wheelhouse is built for it, not for the host's Python
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "cloud-init",
    "python3-cffi-backend",  # without it debootstrap fails on cloud-init's python3-cryptography
    "python3", "python3-venv", "iproute2",
)
PREP_VERSION = 1  # bump when `_prepare_base` changes, so cached rootfs are rebuilt
HOST_ENV = dict(os.environ)  # taken at import, before fixtures trim NEZHA_* and proxies (pip, debootstrap need them)
CACHE_DIR = Path(HOST_ENV.get("NEZHA_E2E_CACHE", "/var/cache/nezha-bootstrap-e2e"))
WORK_DIR = Path(HOST_ENV.get("NEZHA_E2E_WORK", "/var/tmp/nezha-bootstrap-e2e"))
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GUEST_WHEELHOUSE = "/opt/nezha-wheelhouse"
SERVICE = "nezha-bootstrap.service"
AGENT = "nezha-agent.service"
DASHBOARD_PORT = 8008  # free by construction: the netns is ours alone
DASHBOARD_URL = f"http://127.0.0.1:{DASHBOARD_PORT}"

DEBOOTSTRAP_TIMEOUT = 900.0
PIP_TIMEOUT = 600.0
COMMAND_TIMEOUT = 120.0
BOOT_TIMEOUT = 180.0
SETTLE_TIMEOUT = 240.0
STOP_TIMEOUT = 30.0


class HarnessError(Exception):
    """The machinery itself failed (not the behaviour under test)."""


def agent_settings(agent_secret: str, **extra: str) -> dict[str, str]:
    """The environment that points the tool at a lab's fake v1/v2 dashboard and its release host."""
    return {
        "NEZHA_DASHBOARD_URL": DASHBOARD_URL,
        "NEZHA_AGENT_SECRET": agent_secret,
        "NEZHA_AGENT_BASE_URL": f"{DASHBOARD_URL}/releases",
        **extra,
    }


def tool_settings(token: str, **extra: str) -> dict[str, str]:
    """The environment that points the tool at the fake dashboard of a lab and at its stub installer."""
    return {
        "NEZHA_DASHBOARD_URL": DASHBOARD_URL,
        "NEZHA_TOKEN": token,
        "NEZHA_INSTALL_SCRIPT_URL": f"{DASHBOARD_URL}/install.sh",
        "NEZHA_INSTALL_SCRIPT_SHA256": hashlib.sha256(stub_installer()).hexdigest(),
        **extra,
    }


# --- running host commands --------------------------------------------------------------------

def run(argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT, env: Mapping[str, str] | None = None,
        check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout; on failure raise with its output, so a broken step explains itself."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input,
                              env=dict(env) if env is not None else None,
                              stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{argv[0]} timed out after {timeout:g} s: {_text(exc.stdout)}{_text(exc.stderr)}") from None
    if check and done.returncode != 0:
        raise HarnessError(f"{' '.join(argv[:4])} ... exited {done.returncode}:\n{_tail(done.stdout + done.stderr)}")
    return done


def _text(data: Any) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data or ""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.25) -> T:
    """Call `probe()` until it returns something truthy; raise after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= end:
            raise HarnessError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- what the host must offer -----------------------------------------------------------------

def missing_requirements() -> list[str]:
    """Why the first-boot tests cannot run here; empty when they can."""
    missing = []
    if os.geteuid() != 0:
        missing.append("not root")
    for tool in ("debootstrap", "systemd-nspawn", "ip", "nsenter", "cp"):
        if shutil.which(tool) is None:
            missing.append(f"{tool} not installed")
    if not missing and not _netns_works():
        missing.append("cannot create a network namespace (ip netns add)")
    return missing


def _netns_works() -> bool:
    try:
        with Netns():
            return True
    except HarnessError:
        return False


# --- the cached base rootfs -------------------------------------------------------------------

def apt_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The host's mirror of Debian `SUITE` (NEZHA_E2E_MIRROR overrides): deb822 `.sources` first, then `.list`."""
    override = HOST_ENV.get("NEZHA_E2E_MIRROR")
    if override:
        return override
    entries = [*_deb822_entries(etc_apt), *_one_line_entries(etc_apt)]
    usable = [(uri, suites) for uri, suites in entries if uri.startswith(("http://", "https://", "file:/"))]
    for uri, suites in usable:
        if SUITE in suites:
            return uri
    for uri, _ in usable:
        if uri.rstrip("/").endswith("/debian"):  # a Debian archive mirror of another release serves SUITE too
            return uri
    raise HarnessError(f"no mirror of Debian {SUITE} in {etc_apt}/sources.list(.d); set NEZHA_E2E_MIRROR")


def _deb822_entries(etc_apt: Path) -> list[tuple[str, list[str]]]:
    entries = []
    for sources in sorted((etc_apt / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", sources.read_text(encoding="utf-8")):
            fields = {}
            for line in stanza.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith(("#", " ")):
                    fields[key.strip().lower()] = value.split()
            entries += [(uri, fields.get("suites", [])) for uri in fields.get("uris", [])]
    return entries


def _one_line_entries(etc_apt: Path) -> list[tuple[str, list[str]]]:
    entries = []
    for listing in [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*.list"))]:
        if listing.is_file():
            for line in listing.read_text(encoding="utf-8").splitlines():
                words = re.sub(r"\[[^\]]*\]", " ", line).split()  # drop `[arch=... signed-by=...]`
                if len(words) >= 3 and words[0] == "deb":
                    entries.append((words[1], [words[2]]))
    return entries


def rootfs_key() -> str:
    """Cache key: the suite, the variant, the package list and the preparation steps' version."""
    recipe = json.dumps({"suite": SUITE, "variant": "minbase", "packages": PACKAGES, "prep": PREP_VERSION})
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def base_rootfs(cache_dir: Path = CACHE_DIR) -> Path:
    """A prepared bookworm rootfs in the cache, built once (under a lock) and reused by every run."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{SUITE}-{rootfs_key()}"
    with open(cache_dir / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            _build_rootfs(target)
    return target


def _build_rootfs(target: Path) -> None:
    building = target.with_name(f"{target.name}.building-{os.getpid()}")
    remove_tree(building)
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(building), apt_mirror()]
    try:
        run(argv, timeout=DEBOOTSTRAP_TIMEOUT, env=HOST_ENV)
        _prepare_base(building)
    except BaseException:
        remove_tree(building)
        raise
    building.rename(target)  # atomic: a half-built rootfs is never taken for a cached one


def _prepare_base(root: Path) -> None:
    """What every test image shares: no timers that would wake apt, cloud-init off unless a test seeds it."""
    units = root / "etc/systemd/system"
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
                  "fstrim.timer"):
        link = units / timer
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    (root / "etc/cloud/cloud-init.disabled").touch()


class Clone:
    """A private, writable rootfs on top of read-only layers, so tests never touch the cache.

    An overlay mount (the upper directory takes every write; instant, no copy) where the kernel
    allows it, else a full `cp -a --reflink=auto` copy of the single layer.
    """

    def __init__(self, layers: Sequence[Path], directory: Path) -> None:
        self.layers = tuple(layers)
        self.directory = directory
        self.root = directory / "root"
        self.upper = directory / "upper"
        self.mounted = False  # overlay mounted (else a plain copy)
        directory.mkdir(parents=True, exist_ok=True)
        self.root.mkdir()
        try:
            if not self._mount_overlay():
                self._copy()
        except BaseException:
            remove_tree(directory)
            raise

    def _mount_overlay(self) -> bool:
        (self.directory / "work").mkdir()
        self.upper.mkdir()
        options = (f"lowerdir={':'.join(str(p) for p in self.layers)},upperdir={self.upper},"
                   f"workdir={self.directory / 'work'}")
        done = run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)], check=False, timeout=30)
        self.mounted = done.returncode == 0
        return self.mounted

    def _copy(self) -> None:
        if len(self.layers) != 1:
            raise HarnessError("cannot copy a stack of overlay layers without overlayfs")
        self.root.rmdir()
        run(["cp", "-a", "--reflink=auto", str(self.layers[0]), str(self.root)], timeout=300)

    def frozen(self) -> tuple[Path, ...]:
        """Stop writing to this clone; return the layers that clones of it stand on."""
        if self.mounted:
            self.unmount()
            return (self.upper, *self.layers)
        return (self.root,)

    def unmount(self) -> None:
        if self.mounted:
            done = run(["umount", str(self.root)], check=False, timeout=30)
            if done.returncode != 0:
                run(["umount", "-l", str(self.root)], timeout=30)
            self.mounted = False

    def close(self) -> None:
        self.unmount()
        remove_tree(self.directory)


def remove_tree(path: Path) -> None:
    """Remove a rootfs copy without crossing into anything mounted below it."""
    if path.exists() or path.is_symlink():
        run(["rm", "-rf", "--one-file-system", str(path)], timeout=300)


def work_dir(label: str) -> Path:
    """A fresh directory for one test's rootfs, logs and journal (removed by the caller's finalizer)."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    path = WORK_DIR / f"{label}-{os.getpid()}-{secrets.token_hex(3)}"
    path.mkdir()
    return path


# --- the wheelhouse for the guest's Python ----------------------------------------------------

@dataclass(frozen=True)
class Wheelhouse:
    directory: Path
    wheel: Path  # nezha-bootstrap's own wheel

    def guest_wheel(self) -> str:
        """The path of our wheel once the wheelhouse is copied into a guest."""
        return f"{GUEST_WHEELHOUSE}/{self.wheel.name}"


def build_wheelhouse(dest: Path, python: str = sys.executable) -> Wheelhouse:
    """Wheels for the guest: our own (pure Python) and binary wheels of our dependencies for CPython 3.11."""
    dest.mkdir(parents=True, exist_ok=True)
    source = _source_copy(dest.parent / "source")
    run([python, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), str(source)], timeout=PIP_TIMEOUT,
        env=HOST_ENV)
    wheel = next(dest.glob("nezha_bootstrap-*.whl"))
    abis = [f"--abi={abi}" for abi in (f"cp{GUEST_PYTHON.replace('.', '')}", "abi3", "none")]
    run([python, "-m", "pip", "download", "-q", "-d", str(dest), "--only-binary=:all:",
         f"--python-version={GUEST_PYTHON}", "--implementation=cp", *abis, *_guest_platforms(), str(wheel)],
        timeout=PIP_TIMEOUT, env=HOST_ENV)
    return Wheelhouse(dest, wheel)


def _guest_platforms() -> list[str]:
    """pip platform tags the guest accepts: glibc 2.36 (bookworm) on the host's architecture (same kernel)."""
    arch = platform.machine()
    tags = [f"manylinux_2_{minor}_{arch}" for minor in (36, 35, 34, 31, 28, 27, 26, 24, 17, 12, 5)]
    tags += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}", "any"]
    return [f"--platform={tag}" for tag in tags]


def _source_copy(dest: Path) -> Path:
    """Build from a copy: an in-tree build would leave build/ and egg-info in the shared working tree."""
    remove_tree(dest)
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "nezha_bootstrap", dest / "nezha_bootstrap",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


# --- preparing an image -----------------------------------------------------------------------

def add_wheelhouse(root: Path, wheelhouse: Wheelhouse) -> None:
    """Copy the wheels into the image (pip there needs `--no-index --find-links`: no route to any index)."""
    shutil.copytree(wheelhouse.directory, root / GUEST_WHEELHOUSE.lstrip("/"), dirs_exist_ok=True)


def set_identity(root: Path, hostname: str, machine_id: str | None) -> None:
    """Give a clone its own host name and machine-id ("" leaves it empty: systemd then makes one at boot)."""
    (root / "etc/hostname").write_text(hostname + "\n")
    if machine_id is not None:
        (root / "etc/machine-id").write_text(machine_id + "\n" if machine_id else "")
        (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)


def seed_nocloud(root: Path, user_data: str, instance_id: str) -> None:
    """A NoCloud seed and the settings a container needs (locale off: cc_locale fails on minbase)."""
    seed = root / "var/lib/cloud/seed/nocloud"
    seed.mkdir(parents=True, exist_ok=True)
    (seed / "meta-data").write_text(f"instance-id: {instance_id}\nlocal-hostname: {instance_id}\n")
    (seed / "user-data").write_text(user_data)
    os.chmod(seed / "user-data", 0o600)
    (root / "etc/cloud/cloud.cfg.d/99-e2e.cfg").write_text(
        "datasource_list: [ NoCloud, None ]\n"
        "network: {config: disabled}\n"
        'locale: "off"\n'
        'growpart: {mode: "off"}\n'
        "resize_rootfs: false\n"
    )
    (root / "etc/cloud/cloud-init.disabled").unlink(missing_ok=True)


def run_in_image(root: Path, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 input: str | None = None, timeout: float = PIP_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a command inside the image without booting it (a chroot with /proc and /dev), with no network."""
    settings = [f"--setenv={key}={value}" for key, value in (env or {}).items()]
    return run(["systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit", "--private-network",
                "--pipe", *settings, "--", *argv], timeout=timeout, input=input)


# --- a private network namespace with only loopback ------------------------------------------

class Netns:
    """`ip netns add` with lo up; deleted on exit whatever happened."""

    def __init__(self) -> None:
        self.name = f"nzb-e2e-{os.getpid()}-{secrets.token_hex(3)}"
        self.path = f"/run/netns/{self.name}"

    def __enter__(self) -> Netns:
        run(["ip", "netns", "add", self.name], timeout=30)
        try:
            run(["nsenter", f"--net={self.path}", "ip", "link", "set", "lo", "up"], timeout=30)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        run(["ip", "netns", "delete", self.name], timeout=30, check=False)

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net={self.path}", *argv]


# --- processes with a finalizer ---------------------------------------------------------------

def start(argv: Sequence[str], stdout: IO[Any] | int, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a process in its own session so that `stop` can reach everything it started."""
    return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
                            start_new_session=True, env=dict(env) if env is not None else None)


def stop(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM (nspawn then shuts its guest down), wait, then SIGKILL its process group: idempotent, bounded."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the leader still runs, so the group is still ours
        proc.wait(10)


# --- the fake dashboard inside the namespace --------------------------------------------------

@dataclass
class Request:
    method: str
    path: str
    query: str
    body: str
    time: float

    @property
    def is_registration(self) -> bool:
        return self.method == "POST" and self.path.rstrip("/") == "/api/v1/server/register"

    def sent_name(self) -> str | None:
        value = json.loads(self.body or "null")
        return value.get("Name") if isinstance(value, dict) else None


@dataclass
class Enrollment:
    """One agent-connect call at a fake v1/v2 dashboard: the uuid, and whether it made a server."""

    uuid: str
    outcome: str  # "created", "known", or the refusal
    server_id: int | None
    server_name: str | None
    time: float


class FakeDashboardProcess:
    """`python -m nezha_bootstrap.testing.fake_v0` run inside the netns, journaling every request to a file."""

    module = "nezha_bootstrap.testing.fake_v0"

    def __init__(self, netns: Netns, token: str, directory: Path, down_for: float = 0.0) -> None:
        self.journal = directory / "dashboard-journal.jsonl"
        self.log = directory / "dashboard.log"
        self.journal.touch()
        argv = [sys.executable, "-m", self.module, "--port", str(DASHBOARD_PORT), "--journal", str(self.journal),
                *self._options(token, directory, down_for)]
        self._stdout = open(self.log, "wb")
        self.proc = start(netns.command(argv), self._stdout, env=_python_env())
        if not down_for:
            self.wait_up(timeout=30)

    def _options(self, token: str, directory: Path, down_for: float) -> list[str]:
        return ["--token", token, *(["--down-for", str(down_for)] if down_for else [])]

    def wait_up(self, timeout: float) -> None:
        """Wait for the JSON line it prints once it listens."""
        def listening() -> bool:
            if self.proc.poll() is not None:
                raise HarnessError(f"the fake dashboard exited: {self.log.read_text(errors='replace')}")
            return '"url"' in self.log.read_text(errors="replace")
        wait_for("the fake dashboard to listen", listening, timeout, interval=0.1)

    def enrollments(self, since: float = 0.0) -> list[Enrollment]:
        """Agent enrollments (a v0 dashboard has none: it registers servers through its API)."""
        return []

    def requests(self, since: float = 0.0) -> list[Request]:
        """Requests journaled so far (the fake flushes its journal every 0.2 s)."""
        entries = [json.loads(line) for line in self.journal.read_text(encoding="utf-8").splitlines() if line]
        requests = [Request(e["method"], e["path"], e["query"], e["body"], e["time"]) for e in entries]
        return [r for r in requests if r.time >= since]

    def close(self) -> None:
        stop(self.proc)
        self._stdout.close()


class FakeV1Process(FakeDashboardProcess):
    """`python -m nezha_bootstrap.testing.fake_v1`: a v1/v2 dashboard and the agent's release host (`/releases`);
    agents enroll at its agent-connect hook, each call journaled to `enrollments.jsonl`."""

    module = "nezha_bootstrap.testing.fake_v1"

    def __init__(self, netns: Netns, agent_secret: str, directory: Path, profile: str = "v2.1+") -> None:
        self.profile = profile
        self.enrollments_file = directory / "enrollments.jsonl"
        self.enrollments_file.touch()
        super().__init__(netns, agent_secret, directory)

    def _options(self, token: str, directory: Path, down_for: float) -> list[str]:
        secret_file = directory / "agent-secret"  # never in argv
        secret_file.write_text(token + "\n")
        secret_file.chmod(0o600)
        return ["--profile", self.profile, "--agent-secret-file", str(secret_file),
                "--enrollments", str(self.enrollments_file)]

    def enrollments(self, since: float = 0.0) -> list[Enrollment]:
        """Agent-connect calls journaled so far (flushed every 0.2 s), from `since` on."""
        lines = self.enrollments_file.read_text(encoding="utf-8").splitlines()
        found = [Enrollment(**json.loads(line)) for line in lines if line]
        return [e for e in found if e.time >= since]


def _python_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEZHA_", "NODE_NAME"))}
    env["PYTHONPATH"] = str(REPO)  # the fake comes from this tree even if the package is installed elsewhere
    return env


# --- a booted guest ---------------------------------------------------------------------------

class Guest:
    """One boot of a rootfs: `systemd-nspawn -b` started through `nsenter --net=` into the netns."""

    def __init__(self, root: Path, netns: Netns, machine: str, console: Path) -> None:
        self.root = root
        self.machine = machine
        self.console = console
        self._console_file = open(console, "wb")
        argv = ["systemd-nspawn", "-D", str(root), "-b", "--register=no", "--keep-unit", "--console=read-only",
                "-M", machine]
        self.started_at = time.time()
        self.proc = start(netns.command(argv), self._console_file)
        self.pid1 = 0

    def wait_booted(self, timeout: float = BOOT_TIMEOUT) -> str:
        """Wait for PID 1, then for `systemctl is-system-running --wait`; return running or degraded."""
        end = time.monotonic() + timeout
        self.pid1 = wait_for("the guest's PID 1", self._find_pid1, timeout, interval=0.05)
        return wait_for("the guest to finish booting", lambda: self._system_state(end), timeout)

    def _find_pid1(self) -> int:
        if self.proc.poll() is not None:
            raise HarnessError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.console_text()}")
        # nspawn's first children are forks of itself that exit or exec; PID 1 is the one that exec'd init.
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            nspawn = os.readlink(f"/proc/{self.proc.pid}/exe")
            for word in children.read_text().split():
                if os.readlink(f"/proc/{word}/exe") != nspawn:
                    return int(word)
        return 0

    def _system_state(self, end: float) -> str | None:
        left = max(end - time.monotonic(), 1.0)
        done = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=left)
        state = done.stdout.strip()
        return state if state in ("running", "degraded") else None

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in the guest (all its namespaces, its own root) with a clean environment."""
        if not self.pid1:
            raise HarnessError("the guest has not booted")
        return run(["nsenter", "-t", str(self.pid1), "-a", *argv], check=check, timeout=timeout, input=input,
                   env={"PATH": GUEST_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"})

    def unit(self, name: str) -> dict[str, str]:
        """A few properties of a unit, as `systemctl show` reports them."""
        done = self.run(["systemctl", "show", name, "-p", "ActiveState,SubState,Result,UnitFileState,NRestarts,"
                         "ExecMainStatus,ConditionResult"])
        return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)

    def wait_settled(self, name: str, timeout: float = SETTLE_TIMEOUT) -> dict[str, str]:
        """Wait until a oneshot unit has finished for good: active (exited), failed, or skipped by a condition."""
        def settled() -> dict[str, str] | None:
            props = self.unit(name)
            if props["ActiveState"] in ("active", "failed"):
                return props
            if props["ActiveState"] == "inactive" and props.get("ConditionResult") == "no":
                return props
            return None
        return wait_for(f"{name} to settle", settled, timeout, interval=0.5)

    def read(self, path: str) -> str:
        return self.run(["cat", path]).stdout

    def diagnosis(self) -> str:
        """What a failed wait needs to be understood: pending jobs, failed units, the console's end."""
        parts = []
        if self.pid1:
            for argv in (["systemctl", "list-jobs", "--no-pager"], ["systemctl", "--failed", "--no-pager"]):
                with contextlib.suppress(HarnessError):
                    done = self.run(argv, check=False, timeout=10)
                    parts.append(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}")
        parts.append(f"console ({self.console}):\n{_tail(self.console_text(), 60)}")
        return "\n".join(parts)

    def console_text(self) -> str:
        return self.console.read_text(errors="replace")

    def close(self) -> None:
        """SIGTERM to nspawn shuts the guest down cleanly; escalate if it does not."""
        stop(self.proc)
        self._console_file.close()


@contextlib.contextmanager
def booted(root: Path, netns: Netns, machine: str, console: Path) -> Iterator[Guest]:
    """A booted guest, shut down on exit whatever happened."""
    guest = Guest(root, netns, machine, console)
    try:
        try:
            guest.wait_booted()
        except HarnessError as exc:
            raise HarnessError(f"{exc}\n{guest.diagnosis()}") from None
        yield guest
    finally:
        guest.close()


# --- what one boot left behind ----------------------------------------------------------------

@dataclass
class BootRecord:
    """Everything a test asserts on, collected while the guest ran and just after it stopped."""

    started_at: float
    system_state: str  # running, or degraded when a unit failed (`failed` lists them)
    failed: str
    machine_id: str
    service: dict[str, str]
    agent: dict[str, str]
    service_log: str
    journal: str
    requests: list[Request] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    console: str = ""
    enrollments: list[Enrollment] = field(default_factory=list)

    def registrations(self) -> list[Request]:
        return [r for r in self.requests if r.is_registration]

    def seconds_to_registration(self) -> float | None:
        found = self.registrations()
        return found[0].time - self.started_at if found else None

    def tool_requests(self) -> list[Request]:
        """The requests nezha-bootstrap sent (the agent's agent-connect calls left out)."""
        return [r for r in self.requests if not r.path.startswith("/_fake/")]

    def seconds_to_enrollment(self) -> float | None:
        """From the boot's start to the agent's first call that made a server."""
        found = [e for e in self.enrollments if e.outcome == "created"]
        return found[0].time - self.started_at if found else None


def boot_and_record(root: Path, netns: Netns, fake: FakeDashboardProcess, machine: str, console: Path,
                    commands: Mapping[str, Sequence[str]] | None = None) -> BootRecord:
    """Boot the rootfs once, wait for nezha-bootstrap.service to finish, collect the evidence, shut down.

    `commands`: more guest commands whose output (stdout and stderr) the record keeps by name.
    """
    with booted(root, netns, machine, console) as guest:
        try:
            service = guest.wait_settled(SERVICE)
        except HarnessError as exc:
            log = guest.run(["journalctl", "-b", "-u", SERVICE, "--no-pager", "-o", "cat"], check=False).stdout
            raise HarnessError(f"{exc}\n{SERVICE} log:\n{_tail(log)}\n{guest.diagnosis()}") from None
        time.sleep(0.5)  # the fake flushes its journal every 0.2 s
        record = BootRecord(
            started_at=guest.started_at,
            system_state=guest.run(["systemctl", "is-system-running"], check=False).stdout.strip(),
            failed=guest.run(["systemctl", "--failed", "--plain", "--no-legend", "--no-pager"]).stdout,
            machine_id=guest.read("/etc/machine-id").strip(),
            service=service,
            agent=guest.unit(AGENT),
            service_log=guest.run(["journalctl", "-b", "-u", SERVICE, "--no-pager", "-o", "cat"]).stdout,
            journal=guest.run(["journalctl", "-b", "--no-pager", "-a", "-o", "verbose"]).stdout,
            requests=fake.requests(since=guest.started_at),
            enrollments=fake.enrollments(since=guest.started_at),
        )
        for name, argv in (commands or {}).items():
            done = guest.run(argv, check=False)
            record.outputs[name] = done.stdout + done.stderr
    record.console = guest.console_text()
    return record


def state_file(root: Path) -> Path:
    return root / "var/lib/nezha-bootstrap/state.json"


def stub_calls(root: Path) -> list[StubCall]:
    """What the stub installer recorded in the guest (NEZHA_STUB_RECORD unset: <root>/var/lib/nezha-stub)."""
    return read_calls(root / "var/lib/nezha-stub")


def mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def holders(needle: str, texts: Mapping[str, str], root: Path, trees: Sequence[str]) -> list[str]:
    """Where `needle` shows up: among named texts and in every file under the given guest trees."""
    found = [name for name, text in texts.items() if needle in text]
    data = needle.encode()
    for tree in trees:
        for path in sorted((root / tree.lstrip("/")).rglob("*")):
            if path.is_file() and not path.is_symlink() and data in path.read_bytes():
                found.append("/" + str(path.relative_to(root)))
    return found


# --- one scenario's world ---------------------------------------------------------------------

class Lab:
    """A work directory, a netns, the fake dashboard in it and the clones booted there; `close` undoes all."""

    def __init__(self, label: str, token: str) -> None:
        self.token = token
        self.directory = work_dir(label)
        self._stack = contextlib.ExitStack()
        self.netns = Netns()
        self._stack.callback(self._remove_directory)
        self._stack.enter_context(self.netns)
        self._fake: FakeDashboardProcess | None = None
        self._boots = 0

    @property
    def fake(self) -> FakeDashboardProcess:
        if self._fake is None:
            raise HarnessError("the lab's dashboard was not started (Lab.serve)")
        return self._fake

    def serve(self, down_for: float = 0.0) -> FakeDashboardProcess:
        """Start the fake dashboard in the netns; with `down_for` it refuses connections that long first."""
        self._fake = FakeDashboardProcess(self.netns, self.token, self.directory, down_for)
        self._stack.callback(self._fake.close)
        return self._fake

    def serve_v1(self, profile: str = "v2.1+") -> FakeDashboardProcess:
        """Start a fake v1/v2 dashboard and release host in the netns; the lab's token is its agent secret."""
        self._fake = FakeV1Process(self.netns, self.token, self.directory, profile)
        self._stack.callback(self._fake.close)
        return self._fake

    def clone(self, layers: Sequence[Path], name: str) -> Clone:
        clone = Clone(layers, self.directory / name)
        self._stack.callback(clone.close)
        return clone

    def boot(self, clone: Clone, machine: str, commands: Mapping[str, Sequence[str]] | None = None) -> BootRecord:
        self._boots += 1
        console = self.directory / f"console-{self._boots}-{machine}.log"
        return boot_and_record(clone.root, self.netns, self.fake, machine, console, commands)

    def close(self) -> None:
        self._stack.close()

    def _remove_directory(self) -> None:
        if HOST_ENV.get("NEZHA_E2E_KEEP"):
            print(f"kept {self.directory} (NEZHA_E2E_KEEP)", file=sys.stderr)
            return
        remove_tree(self.directory)


# --- the zipapp and a plain file server inside the netns ----------------------------------------

FILES_PORT = 8009  # beside the fake dashboard: where the zipapp user-data downloads the tool from
FILES_URL = f"http://127.0.0.1:{FILES_PORT}"


def build_zipapp(dest: Path) -> Path:
    """packaging/build into `dest` (pinned downloads cached in build/packaging-cache); the host's .pyz."""
    run([sys.executable, str(REPO / "packaging" / "build"), "--out", str(dest)], timeout=PIP_TIMEOUT, env=HOST_ENV)
    [pyz] = dest.glob(f"nezha-bootstrap-*-{platform.machine()}.pyz")
    return pyz


class FileServer:
    """`python3 -m http.server` on FILES_PORT in the netns, serving `directory`; it starts listening
    only after `down_for` seconds (connections are refused until then). Requests go to its log."""

    def __init__(self, netns: Netns, directory: Path, log: Path, down_for: float = 0.0) -> None:
        self.log = log
        self._out = open(log, "wb")
        serve = [sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(directory),
                 str(FILES_PORT)]
        argv = ["sh", "-c", f'sleep {down_for:g} && exec "$@"', "serve", *serve] if down_for else serve
        self.proc = start(netns.command(argv), self._out)
        if not down_for:
            wait_for("the file server to listen", lambda: "Serving HTTP" in self.text(), 30, interval=0.1)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def requests(self) -> list[str]:
        """The request lines served so far ("GET /x.pyz HTTP/1.1"), in order."""
        return re.findall(r'"([A-Z]+ \S+ HTTP/[0-9.]+)"', self.text())

    def close(self) -> None:
        stop(self.proc)
        self._out.close()


def serve_files(lab: Lab, directory: Path, down_for: float = 0.0) -> FileServer:
    """A FileServer in the lab's netns, stopped when the lab closes."""
    server = FileServer(lab.netns, directory, lab.directory / "files.log", down_for)
    lab._stack.callback(server.close)
    return server
