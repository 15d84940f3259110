"""Paths under `--root`: an image's symbolic links are read as a chroot would, never onto the host."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from nezha_bootstrap.cli import main
from nezha_bootstrap.errors import SettingsError
from nezha_bootstrap.paths import MAX_LINKS, Paths, PrivateModeFailed, _kind, inside, private_dir_under, read_under
from tests.conftest import TOKEN, Cli, Outcome, make_runner

URL = "https://nezha.example.com"


def invoke(*args: str, **env: str) -> Outcome:
    result = make_runner().invoke(main, list(args), env=env, catch_exceptions=False)
    return Outcome(result, result.stdout, result.stderr)


def snapshot(top: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every path under `top`: mode and content (a link's target), to prove nothing there changed."""
    found: dict[str, tuple[int, bytes | str | None]] = {}
    for path in [top, *sorted(top.rglob("*"))]:
        mode = path.lstat().st_mode
        content: bytes | str | None = None
        if stat.S_ISLNK(mode):
            content = os.readlink(path)
        elif stat.S_ISREG(mode):
            content = path.read_bytes()
        found[str(path)] = (mode, content)
    return found


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """Files of the host that an image's absolute links point at."""
    top = tmp_path / "host"
    for directory in ("etc/nezha-bootstrap", "etc/systemd/system/multi-user.target.wants", "opt/nezha/agent",
                      "var/lib/nezha-bootstrap"):
        (top / directory).mkdir(parents=True)
        os.chmod(top / directory, 0o755)
    (top / "machine-id").write_text("hosthosthosthosthosthosthosthost\n")
    (top / "opt/nezha/agent/nezha-agent").write_text("#!/bin/sh\n")
    (top / "opt/nezha/agent/config.yml").write_text("uuid: host\n")
    (top / "var/lib/nezha-bootstrap/state.json").write_text("{}\n")
    return top


def link(root: Path, inside_path: str, target: Path | str) -> None:
    path = root / inside_path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


# --- the resolution ---------------------------------------------------------------------------

@pytest.mark.parametrize(("links", "asked", "expected"), [
    ({"etc": "/elsewhere/etc"}, "/etc/machine-id", "elsewhere/etc/machine-id"),
    ({"etc": "../../../../usr/etc"}, "/etc/machine-id", "usr/etc/machine-id"),  # `..` stops at the root
    ({"opt/nezha": "/a", "a": "b", "b": "/c"}, "/opt/nezha/agent", "c/agent"),
    ({"var/lib": "../usr/lib"}, "/var/lib/x", "usr/lib/x"),
])
def test_links_are_resolved_inside_the_root(tmp_path: Path, links: dict[str, str], asked: str,
                                            expected: str) -> None:
    for path, target in links.items():
        link(tmp_path, path, target)

    assert inside(tmp_path, asked) == tmp_path / expected


def test_the_last_component_is_followed_only_when_asked(tmp_path: Path) -> None:
    link(tmp_path, "etc/machine-id", "/real-id")

    assert inside(tmp_path, "/etc/machine-id") == tmp_path / "etc/machine-id"
    assert inside(tmp_path, "/etc/machine-id", follow_last=True) == tmp_path / "real-id"


def test_a_link_loop_is_refused(tmp_path: Path) -> None:
    link(tmp_path, "a", "/b")
    link(tmp_path, "b", "/a")

    with pytest.raises(SettingsError, match="too many levels of symbolic links"):
        inside(tmp_path, "/a/x")


@pytest.mark.parametrize("asked", ["/etc//../x", "/etc/./../x", "/etc/.//./../x", "//etc/../x"])
def test_empty_and_dot_components_are_skipped_so_dotdot_climbs_a_real_one(tmp_path: Path, asked: str) -> None:
    (tmp_path / "etc").mkdir()

    assert inside(tmp_path, asked) == tmp_path / "x"


@pytest.mark.parametrize("target", ["etc//../y", "etc/./../y", "./etc/../y"])
def test_empty_and_dot_components_of_a_link_target_are_skipped_too(tmp_path: Path, target: str) -> None:
    (tmp_path / "etc").mkdir()
    link(tmp_path, "l", target)

    assert inside(tmp_path, "/l/z") == tmp_path / "y/z"


def chain(root: Path, hops: int) -> None:
    """Links l0 -> l1 -> ... -> l<hops-1> -> /end: `hops` links to follow from /l0 to /end."""
    (root / "end").mkdir()
    for i in range(hops):
        link(root, f"l{i}", f"/l{i + 1}" if i < hops - 1 else "/end")


def test_as_many_links_as_the_kernel_follows_are_followed(tmp_path: Path) -> None:
    chain(tmp_path, MAX_LINKS)

    assert MAX_LINKS == 40
    assert inside(tmp_path, "/l0/x") == tmp_path / "end/x"


def test_one_link_more_than_the_kernel_follows_is_refused(tmp_path: Path) -> None:
    chain(tmp_path, MAX_LINKS + 1)

    with pytest.raises(SettingsError) as refused:
        inside(tmp_path, "/l0/x")
    assert refused.value.problems == [f"/l0/x under {tmp_path}: too many levels of symbolic links"]


def test_the_host_root_is_left_to_the_kernel() -> None:
    assert Paths(Path("/")).under("/etc/machine-id") == Path("/etc/machine-id")


# --- every command that writes under --root, against an image full of hostile links -------------

def test_seal_empties_the_images_machine_id_not_the_hosts(tmp_path: Path, host: Path) -> None:
    root = tmp_path / "image"
    link(root, "/etc/machine-id", host / "machine-id")
    before = snapshot(host)

    outcome = invoke("seal", "--root", str(root))

    assert outcome.exit_code == 0, outcome.stderr
    assert snapshot(host) == before
    assert (root / str(host / "machine-id").lstrip("/")).read_bytes() == b""  # the link's target, in the image


def test_a_lock_link_in_the_image_is_refused_and_creates_nothing_on_the_host(tmp_path: Path, host: Path) -> None:
    root = tmp_path / "image"
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text("0" * 32 + "\n")
    link(root, "/var/lib/nezha-bootstrap/lock", host / "made-by-the-lock")
    before = snapshot(host)

    outcome = invoke("seal", "--root", str(root))

    assert outcome.exit_code == 1
    assert "lock" in outcome.stderr and "is a symbolic link" in outcome.stderr
    assert snapshot(host) == before
    assert not (host / "made-by-the-lock").exists()


def test_install_service_writes_the_token_inside_the_image(tmp_path: Path, host: Path) -> None:
    root = tmp_path / "image"
    link(root, "/etc/nezha-bootstrap", host / "etc/nezha-bootstrap")
    link(root, "/etc/systemd/system", host / "etc/systemd/system")
    before = snapshot(host)

    outcome = invoke("install-service", "--root", str(root), NEZHA_DASHBOARD_URL=URL, NEZHA_TOKEN=TOKEN)

    assert outcome.exit_code == 0, outcome.stderr
    assert snapshot(host) == before  # no file written, no directory made 0700 on the host
    settings = root / str(host / "etc/nezha-bootstrap/env").lstrip("/")
    assert TOKEN in settings.read_text()
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600
    assert (root / str(host / "etc/systemd/system/nezha-bootstrap.service").lstrip("/")).is_file()


def test_uninstall_removes_nothing_of_the_host(tmp_path: Path, host: Path) -> None:
    root = tmp_path / "image"
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text("0" * 32 + "\n")
    link(root, "/opt/nezha/agent", host / "opt/nezha/agent")
    link(root, "/var/lib/nezha-bootstrap", host / "var/lib/nezha-bootstrap")
    link(root, "/etc/nezha-bootstrap", host / "etc/nezha-bootstrap")
    link(root, "/etc/systemd/system/nezha-agent.service", host / "etc/systemd/system/nezha-agent.service")
    before = snapshot(host)

    outcome = invoke("uninstall", "--root", str(root), "--purge")

    assert outcome.exit_code == 0, outcome.stderr
    assert snapshot(host) == before
    assert not (root / "etc/systemd/system/nezha-agent.service").is_symlink()  # the image's own link: removed


@pytest.mark.integration
def test_run_under_a_root_keeps_state_agent_and_unit_inside_the_image(cli: Cli, host: Path) -> None:
    link(cli.root, "/var/lib/nezha-bootstrap", host / "var/lib/nezha-bootstrap")
    link(cli.root, "/opt/nezha/agent", host / "opt/nezha/agent")
    link(cli.root, "/etc/systemd/system", host / "etc/systemd/system")
    before = snapshot(host)

    outcome = cli("run")

    assert outcome.exit_code == 0, outcome.stderr
    assert snapshot(host) == before
    assert (cli.root / str(host / "var/lib/nezha-bootstrap/state.json").lstrip("/")).is_file()
    assert (cli.root / str(host / "etc/systemd/system/nezha-agent.service").lstrip("/")).is_file()


# --- reads and chmods under the root: one confined, no-follow, regular-files-only path (issue 18 item 10) --

def test_a_read_follows_links_as_a_chroot_would_never_to_the_host(tmp_path: Path, host: Path) -> None:
    root = tmp_path / "root"
    link(root, "/var/lib/cloud/data/instance-id", host / "machine-id")  # an absolute link: the host's path
    (root / str(host).lstrip("/")).mkdir(parents=True)
    (root / str(host / "machine-id").lstrip("/")).write_text("the image's own\n")

    assert read_under(root, root / "var/lib/cloud/data/instance-id") == b"the image's own\n"
    with pytest.raises(OSError) as caught:
        read_under(root, root / "var/lib/cloud/data/instance-id", follow_last=False)
    assert caught.value.errno == errno.ELOOP


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_read_refuses_what_is_not_a_regular_file_at_once(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    target = root / "etc/machine-id"
    if kind == "fifo":
        os.mkfifo(target)  # opened blocking, this would wait for a writer forever
    elif kind == "directory":
        target.mkdir()
    else:
        link(root, "/etc/machine-id", "/dev/zero")  # resolved inside the root: a missing file
        (root / "dev").mkdir()
        os.symlink("/dev/null", root / "dev/zero")  # a link to the host's device: read as the image's /dev/null

    with pytest.raises(OSError) as caught:
        read_under(root, target)

    assert isinstance(caught.value, FileNotFoundError) or "not a regular file" in str(caught.value)


@pytest.mark.parametrize(("kind", "named"), [
    ("fifo", "a pipe (FIFO)"), ("directory", "a directory"),
])
def test_a_refused_read_names_what_the_file_is(tmp_path: Path, kind: str, named: str) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    target = root / "etc/machine-id"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()

    with pytest.raises(OSError) as caught:
        read_under(root, target)

    assert (caught.value.errno, caught.value.strerror, caught.value.filename) == (
        errno.EINVAL, f"it is {named}, not a regular file", str(target))


def test_a_read_of_a_device_is_refused_and_named() -> None:
    with pytest.raises(OSError) as caught:
        read_under(Path("/"), Path("/dev/null"))

    assert (caught.value.errno, caught.value.strerror, caught.value.filename) == (
        errno.EINVAL, "it is a device, not a regular file", "/dev/null")


@pytest.mark.parametrize(("size", "cap"), [(200_000, 100_000), (100_000, 100_000), (99_999, 100_000)])
def test_a_read_gives_at_most_cap_bytes_and_the_file_from_its_start(tmp_path: Path, size: int, cap: int) -> None:
    data = bytes(i % 251 for i in range(size))
    (tmp_path / "file").write_bytes(data)

    assert read_under(tmp_path, tmp_path / "file", cap=cap) == data[:cap]


def test_a_read_through_a_link_climbing_above_the_root_stays_inside_it(tmp_path: Path) -> None:
    root = tmp_path / "image"
    (root / "outside").mkdir(parents=True)
    (root / "outside/secret").write_text("the image's")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/secret").write_text("the host's")
    link(root, "a/b/l", "../../../outside/secret")  # one `..` more than the root has above a/b

    assert read_under(root, root / "a/b/l") == b"the image's"


def test_a_read_through_a_link_loop_ends_in_eloop_naming_the_path(tmp_path: Path) -> None:
    link(tmp_path, "a", "b")
    link(tmp_path, "b", "a")
    ended: list[BaseException] = []

    def read() -> None:
        try:
            read_under(tmp_path, tmp_path / "a/x")
        except BaseException as exc:  # handed to the test thread
            ended.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)  # a loop that were followed for ever would still be running

    assert not reader.is_alive()
    assert [(type(e), e.errno, e.strerror, e.filename) for e in ended if isinstance(e, OSError)] == [
        (OSError, errno.ELOOP, "too many levels of symbolic links", str(tmp_path / "a/x"))]


def test_a_read_follows_as_many_links_as_the_kernel_and_refuses_one_more(tmp_path: Path) -> None:
    within, beyond = tmp_path / "within", tmp_path / "beyond"
    for root, hops in ((within, MAX_LINKS), (beyond, MAX_LINKS + 1)):
        root.mkdir()
        chain(root, hops)
        (root / "end/x").write_text("reached")

    assert read_under(within, within / "l0/x") == b"reached"
    with pytest.raises(OSError) as refused:
        read_under(beyond, beyond / "l0/x")
    assert refused.value.errno == errno.ELOOP


def test_a_file_where_a_directory_is_needed_is_refused_as_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "etc").write_text("a file, not a directory")

    with pytest.raises(NotADirectoryError):
        read_under(tmp_path, tmp_path / "etc/machine-id")
    with pytest.raises(NotADirectoryError):
        private_dir_under(tmp_path, tmp_path / "etc")


def test_the_directories_made_on_the_way_to_a_private_one_are_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        private_dir_under(tmp_path, tmp_path / "var/lib/nezha-bootstrap")
    finally:
        os.umask(old)

    assert [stat.S_IMODE((tmp_path / d).stat().st_mode) for d in ("var", "var/lib", "var/lib/nezha-bootstrap")] == [
        0o700, 0o700, 0o700]


def test_a_read_of_a_file_in_a_missing_directory_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_under(tmp_path, tmp_path / "var/lib/state.json")

    assert list(tmp_path.iterdir()) == []


def test_a_path_outside_the_root_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(OSError) as caught:
        read_under(tmp_path / "root", tmp_path / "elsewhere")

    assert (caught.value.errno, caught.value.strerror) == (
        errno.EXDEV, f"{tmp_path / 'elsewhere'} is not under {tmp_path / 'root'}")


def test_a_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "image").write_text("not a directory")

    with pytest.raises(NotADirectoryError):
        read_under(tmp_path / "image", tmp_path / "image")


def test_a_private_directory_is_made_through_a_link_as_its_last_component_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "data/nb").mkdir(parents=True)
    link(root, "/var/lib/nezha-bootstrap", "/data/nb")  # absolute: the image's /data/nb, not the host's

    private_dir_under(root, root / "var/lib/nezha-bootstrap")

    assert stat.S_IMODE((root / "data/nb").stat().st_mode) == 0o700
    assert (root / "var/lib/nezha-bootstrap").is_symlink()


def test_a_directory_that_cannot_be_made_private_is_told_apart_from_one_not_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(fd: int, mode: int) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setattr(os, "fchmod", read_only)

    with pytest.raises(PrivateModeFailed) as caught:
        private_dir_under(root, root / "var/lib/nezha-bootstrap")

    assert (caught.value.errno, caught.value.strerror) == (errno.EROFS, "Read-only file system")
    assert (root / "var/lib/nezha-bootstrap").is_dir()  # made; only its mode could not be set


@pytest.mark.parametrize(("mode", "named"), [
    (stat.S_IFIFO, "a pipe (FIFO)"), (stat.S_IFCHR, "a device"), (stat.S_IFBLK, "a device"),
    (stat.S_IFSOCK, "a socket"), (stat.S_IFDIR, "a directory"), (stat.S_IFLNK, "a symbolic link"),
    (0, "not a regular file"),
])
def test_each_kind_of_file_is_named_in_plain_words(mode: int, named: str) -> None:
    assert _kind(mode | 0o644) == named


def test_a_directory_swapped_for_a_link_is_never_chmoded_outside_the_root(tmp_path: Path, host: Path) -> None:
    from nezha_bootstrap.system import ensure_private_dir

    root = tmp_path / "root"
    (root / "var/lib").mkdir(parents=True)
    paths = Paths(root)
    state_dir = paths.state_dir  # resolved before the swap, as a run resolves it at its start
    (root / "var/lib").rmdir()
    link(root, "/var/lib", host / "var/lib")  # swapped during the run for a link to the host's directory

    ensure_private_dir(state_dir, root)

    assert stat.S_IMODE((host / "var/lib/nezha-bootstrap").stat().st_mode) == 0o755
    inner = root / str(host / "var/lib/nezha-bootstrap").lstrip("/")
    assert stat.S_IMODE(inner.stat().st_mode) == 0o700


@pytest.mark.integration
def test_the_images_instance_id_and_sysconfig_linked_to_host_files_are_not_read(cli: Cli, host: Path) -> None:
    (host / "instance-id").write_text("i-of-the-host\n")
    (host / "sysconfig").write_text("NZ_UUID=host-uuid\n")
    link(cli.root, "/var/lib/cloud/data/instance-id", host / "instance-id")
    link(cli.root, "/etc/sysconfig/nezha-agent", host / "sysconfig")

    outcome = cli("run")

    assert outcome.exit_code == 0, outcome.stderr
    state = json.loads((cli.root / "var/lib/nezha-bootstrap/state.json").read_text())
    assert state["instance_id"] is None
    assert "i-of-the-host" not in outcome.stderr and "NZ_UUID" not in outcome.stderr


FIFOS = ["etc/machine-id", "var/lib/cloud/data/instance-id", "var/lib/nezha-bootstrap/state.json",
         "etc/systemd/system/nezha-agent.service"]


@pytest.mark.integration
@pytest.mark.parametrize("where", FIFOS)
def test_a_fifo_in_the_image_never_hangs_run_status_or_seal(cli: Cli, where: str) -> None:
    from tests.processes import run

    assert cli("run").exit_code == 0
    fifo = cli.root / where
    fifo.unlink(missing_ok=True)
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)

    finished = [run(cli, *command, timeout=20) for command in (["status"], ["run"], ["seal", "--dry-run"])]

    assert all(done.seconds < 15 for done in finished)
    assert [done.exit_code for done in finished] == EXPECTED_AFTER_FIFO[where], [d.stderr for d in finished]
    assert not any("Traceback" in done.stderr or "internal error" in done.stderr for done in finished)


EXPECTED_AFTER_FIFO = {  # status, run, seal --dry-run
    "etc/machine-id": [0, 0, 0],  # no machine-id: the state's differs, a v0 run registers this clone anew
    "var/lib/cloud/data/instance-id": [0, 0, 0],
    "var/lib/nezha-bootstrap/state.json": [1, 1, 0],  # "it is a pipe (FIFO), not a regular file"; seal warns
    "etc/systemd/system/nezha-agent.service": [0, 0, 0],  # drift: the unit is unreadable; run reinstalls
}


@pytest.mark.parametrize("command", ["seal", "uninstall"])
def test_seal_and_uninstall_of_a_root_that_does_not_exist_are_refused(tmp_path: Path, command: str) -> None:
    outcome = invoke(command, "--root", str(tmp_path / "mnt/imgae"))

    assert outcome.exit_code == 2
    assert f"--root {tmp_path / 'mnt/imgae'} is not an existing directory" in outcome.stderr
    assert not (tmp_path / "mnt").exists()
