"""The release artifacts (packaging/build): reproducible, checksummed, and a zipapp that runs anywhere.

One build per session (into a temporary directory; downloads are cached in build/packaging-cache),
then: the x86_64 .pyz runs with `python -I` under this Python and Python 3.9 (from pyenv) with an
almost empty environment; each .pyz carries psutil for its own architecture; SHA256SUMS matches;
a second build is byte-identical; the native-code cache is private, reused, refused when unsafe,
and safe under concurrent starts; nothing is imported from the host's site-packages; the release
workflow is valid against GitHub's workflow schema.

The aarch64 .pyz is only inspected, not run: qemu-user is not assumed.
"""

from __future__ import annotations

import email
import hashlib
import importlib.util
import io
import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from nezha_bootstrap import __version__
from nezha_bootstrap.testing.fake_v0 import FakeDashboard, Running
from nezha_bootstrap.testing.stubrecord import read_calls

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "packaging" / "build"
BOOTSTRAP = REPO / "packaging" / "zipapp_main.py"
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
TOKEN = "T0kenT0kenT0kenT0kenT0kenT0ken32"
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}
HOST_ARCH = os.uname().machine
RUN_ARGS = ["run", "--dry-run", "--dashboard-url", "http://127.0.0.1:8008", "--name", "node-{ip}"]


# --- interpreters --------------------------------------------------------------------------------

def _pyenv_pythons() -> dict[tuple[int, int], Path]:
    """Newest patch release of each minor version pyenv has, by (major, minor)."""
    roots = [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")]
    if shutil.which("pyenv"):
        asked = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30)
        roots.insert(0, asked.stdout.strip() if asked.returncode == 0 else None)
    found: dict[tuple[int, int], tuple[tuple[int, ...], Path]] = {}
    for root in filter(None, roots):
        versions = Path(root) / "versions"
        if not versions.is_dir():
            continue
        for entry in versions.iterdir():
            parts = entry.name.split(".")
            python = entry / "bin" / "python"
            if len(parts) == 3 and all(p.isdigit() for p in parts) and python.exists():
                key = tuple(int(p) for p in parts)
                minor = (key[0], key[1])
                if minor not in found or found[minor][0] < key:
                    found[minor] = (key, python)
        break
    return {minor: python for minor, (_, python) in found.items()}


PYENV = _pyenv_pythons()
PY39 = PYENV.get((3, 9))
OTHER_PYTHONS = sorted(v for v in PYENV if v >= (3, 9) and v not in ((3, 9), sys.version_info[:2]))
TOO_OLD = sorted(v for v in PYENV if (3, 6) <= v < (3, 9))


# --- the build, once -----------------------------------------------------------------------------

def run_build(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, str(BUILD), "--out", str(out)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, **env})
    assert result.returncode == 0, f"packaging/build failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    started = time.monotonic()
    result = run_build(out)
    print(f"\nfirst build: {time.monotonic() - started:.1f} s\n{result.stdout}")
    return out


@pytest.fixture(scope="session")
def pyz(dist: Path) -> dict[str, Path]:
    return {arch: dist / f"nezha-bootstrap-{__version__}-{arch}.pyz" for arch in ELF_MACHINE}


@pytest.fixture(scope="session")
def native(pyz: dict[str, Path]) -> Path:
    """The zipapp for this machine (x86_64 here and in CI)."""
    if HOST_ARCH not in pyz:
        pytest.skip(f"no zipapp is built for {HOST_ARCH}")
    return pyz[HOST_ARCH]


def bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Next to nothing: PATH (the demo's stub installer runs `sh`), a home, the cache under tmp_path."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), "NEZHA_BOOTSTRAP_CACHE": str(tmp_path / "cache"), **extra}


def start(python: Path | str, archive: Path, args: list[str], env: dict[str, str],
          flags: tuple[str, ...] = ("-I",)) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), *flags, str(archive), *args], capture_output=True, text=True, env=env,
                          timeout=120, stdin=subprocess.DEVNULL, cwd=env["HOME"])


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{path.stem}_under_test", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_bootstrap() -> ModuleType:
    return _load(BOOTSTRAP)


def load_artifacts() -> ModuleType:
    return _load(REPO / "packaging" / "artifacts.py")


# --- what the build writes -----------------------------------------------------------------------

def test_dist_holds_the_five_artifacts(dist: Path) -> None:
    names = sorted(p.name for p in dist.iterdir())
    assert names == sorted([
        "SHA256SUMS", f"nezha_bootstrap-{__version__}-py3-none-any.whl", f"nezha_bootstrap-{__version__}.tar.gz",
        f"nezha-bootstrap-{__version__}-x86_64.pyz", f"nezha-bootstrap-{__version__}-aarch64.pyz",
    ])
    for path in sorted(dist.iterdir()):
        print(f"{path.name}: {path.stat().st_size:,} bytes")


def test_sha256sums_matches(dist: Path) -> None:
    lines = (dist / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split("  ", 1)  # sha256sum's text format: two spaces
        listed[name] = digest
    assert sorted(listed) == sorted(p.name for p in dist.iterdir() if p.name != "SHA256SUMS")
    for name, digest in listed.items():
        assert hashlib.sha256((dist / name).read_bytes()).hexdigest() == digest, name
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=dist, capture_output=True,
                               text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_second_build_is_byte_identical(dist: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    temp = tmp_path / "tmp"
    temp.mkdir()
    started = time.monotonic()
    run_build(again, TMPDIR=str(temp))
    print(f"second build: {time.monotonic() - started:.1f} s")
    first = {p.name: p.read_bytes() for p in dist.iterdir()}
    second = {p.name: p.read_bytes() for p in again.iterdir()}
    assert sorted(first) == sorted(second)
    differ = [name for name in first if first[name] != second[name]]
    assert not differ, f"not reproducible: {differ}"


@pytest.mark.skipif(PY39 is None or sys.version_info[:2] == (3, 9), reason="needs a Python 3.9 besides this one")
def test_python39_builder_makes_the_same_bytes(dist: Path, tmp_path: Path) -> None:
    """The release job builds on 3.11, a developer may on 3.9: same artifacts."""
    out = tmp_path / "py39"
    result = subprocess.run([str(PY39), str(BUILD), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "SHA256SUMS").read_text() == (dist / "SHA256SUMS").read_text()


def _contents(path: Path) -> Iterator[tuple[str, bytes]]:
    if path.suffix in (".whl", ".pyz"):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                yield info.filename, archive.read(info)
    elif path.name.endswith(".tar.gz"):
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                handle = archive.extractfile(member)
                yield member.name, handle.read() if handle else b""


def test_no_build_machine_paths_inside(dist: Path) -> None:
    needles = [str(REPO).encode(), str(dist).encode(), load_artifacts().TEMP_PREFIX.encode()]
    for artifact in dist.iterdir():
        if artifact.name == "SHA256SUMS":
            continue
        for name, data in _contents(artifact):
            for needle in needles:
                assert needle not in data and needle.decode() not in name, f"{artifact.name}:{name} has {needle!r}"


def test_archive_metadata_is_normalized(dist: Path) -> None:
    for artifact in dist.iterdir():
        if artifact.suffix == ".pyz":
            with zipfile.ZipFile(artifact) as archive:
                infos = archive.infolist()
            assert [i.filename for i in infos] == sorted(i.filename for i in infos)
            assert len({i.date_time for i in infos}) == 1
            assert {i.external_attr >> 16 for i in infos} <= {0o100644, 0o40755}
        elif artifact.name.endswith(".tar.gz"):
            with tarfile.open(artifact) as archive:
                members = archive.getmembers()
            assert len({m.mtime for m in members}) == 1
            assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}


def test_pyz_layout(dist: Path, pyz: dict[str, Path]) -> None:
    wheel = dist / f"nezha_bootstrap-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        project = {i.filename: archive.read(i) for i in archive.infolist() if not i.filename.endswith("RECORD")}
    for arch, path in pyz.items():
        assert path.read_bytes().startswith(b"#!/usr/bin/env python3\n")
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            assert archive.read("__main__.py") == BOOTSTRAP.read_bytes()
            for name, data in project.items():
                assert archive.read(name) == data, f"{arch}: {name} differs from the wheel's"
        for module in ("click/__init__.py", "httpx/__init__.py", "httpcore/__init__.py", "h11/__init__.py",
                       "anyio/__init__.py", "idna/__init__.py", "certifi/__init__.py", "certifi/cacert.pem",
                       "exceptiongroup/__init__.py", "typing_extensions.py", "_native/psutil/__init__.py"):
            assert module in names, f"{arch}: no {module}"
        assert not any(n.endswith(".pyc") or "__pycache__" in n for n in names)
        assert not any(n.startswith("psutil/") for n in names), "psutil must be under _native/ only"
        assert not [n for n in names if n.endswith(".so") and not n.startswith("_native/")]


@pytest.mark.parametrize("arch", sorted(ELF_MACHINE))
def test_native_code_is_for_its_architecture(pyz: dict[str, Path], arch: str) -> None:
    with zipfile.ZipFile(pyz[arch]) as archive:
        objects = [n for n in archive.namelist() if n.endswith(".so")]
        assert objects, f"{arch}: no shared object"
        for name in objects:
            header = archive.read(name)[:20]
            assert header[:4] == b"\x7fELF", name
            assert header[4] == 2 and header[5] == 1, f"{name}: not 64-bit little-endian"
            machine = int.from_bytes(header[18:20], "little")
            assert machine == ELF_MACHINE[arch], f"{name}: e_machine {machine}, want {ELF_MACHINE[arch]}"
    if arch != os.uname().machine and not shutil.which(f"qemu-{arch}"):
        print(f"qemu-{arch} not installed: the {arch} zipapp was inspected, not run")


def test_bundle_satisfies_every_requirement(pyz: dict[str, Path]) -> None:
    """Every Requires-Dist of every bundled distribution holds for Python 3.9 to 3.14."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    with zipfile.ZipFile(pyz["x86_64"]) as archive:
        metadata = [archive.read(n).decode("utf-8") for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    bundled: dict[str, Version] = {}
    requires: list[tuple[str, Requirement]] = []
    for text in metadata:
        headers = email.message_from_string(text)
        bundled[canonicalize_name(headers["Name"])] = Version(headers["Version"])
        requires += [(headers["Name"], Requirement(r)) for r in headers.get_all("Requires-Dist") or []]
    assert {"nezha-bootstrap", "httpx", "click", "psutil"} <= set(bundled)
    for minor in range(9, 15):
        env = {**default_environment(), "python_version": f"3.{minor}", "python_full_version": f"3.{minor}.0",
               "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "extra": ""}
        for owner, requirement in requires:
            if requirement.marker and not requirement.marker.evaluate(env):
                continue
            name = canonicalize_name(requirement.name)
            assert name in bundled, f"3.{minor}: {owner} needs {requirement}, not bundled"
            assert requirement.specifier.contains(bundled[name], prereleases=True), (
                f"3.{minor}: {owner} needs {requirement}, bundled {bundled[name]}")


# --- running the x86_64 zipapp -------------------------------------------------------------------

INTERPRETERS = [pytest.param(sys.executable, id=f"python{sys.version_info[0]}.{sys.version_info[1]}"),
                pytest.param(PY39, id="pyenv-python3.9", marks=[
                    pytest.mark.skipif(PY39 is None, reason="no Python 3.9 under pyenv"),
                    pytest.mark.skipif(sys.version_info[:2] == (3, 9), reason="this Python is 3.9 already")])]


@pytest.mark.parametrize("python", INTERPRETERS)
def test_pyz_runs_isolated(native: Path, tmp_path: Path, python: str) -> None:
    env = bare_env(tmp_path)

    version = start(python, native, ["--version"], env)
    assert version.returncode == 0, version.stderr
    assert __version__ in version.stdout

    help_ = start(python, native, ["--help"], env)
    assert help_.returncode == 0, help_.stderr
    assert "Usage:" in help_.stdout and "run" in help_.stdout

    run = start(python, native, [*RUN_ARGS, "--root", str(tmp_path / "root")], {**env, "NEZHA_TOKEN": TOKEN})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "http://127.0.0.1:8008" in run.stdout
    assert TOKEN not in run.stdout + run.stderr

    demo = start(python, native, ["demo"], env)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "127.0.0.1" in demo.stdout


@pytest.mark.parametrize("python", INTERPRETERS)
def test_pyz_registers_with_the_fake_dashboard_and_installs_the_agent(native: Path, tmp_path: Path, python: str,
                                                                      dashboard: Running, fake: FakeDashboard) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    env = bare_env(tmp_path, NEZHA_DASHBOARD_URL=dashboard.url, NEZHA_TOKEN=TOKEN, NODE_NAME="pyz-node",
                   NEZHA_PROBE_ADDRESS="probe.example.test", NEZHA_INSTALL_SCRIPT_URL=f"{dashboard.url}/install.sh",
                   NEZHA_INSTALL_SCRIPT_SHA256=fake.script_sha256, NEZHA_BOOTSTRAP_ROOT=str(root),
                   NEZHA_BOOTSTRAP_REHEARSAL="1",
                   NEZHA_BOOTSTRAP_DEADLINE="30", NEZHA_STUB_RECORD=str(tmp_path / "stub-record"),
                   NO_PROXY="127.0.0.1")

    first = start(python, native, ["run"], env)
    again = start(python, native, ["run"], env)

    assert first.returncode == 0, first.stdout + first.stderr
    assert [server.name for server in fake.servers] == ["pyz-node"]
    [call] = read_calls(tmp_path / "stub-record")
    assert call.argv[:4] == ["install_agent", "probe.example.test", "5555", fake.servers[0].secret]
    assert (root / "etc/systemd/system/nezha-agent.service").is_file()
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(fake.registrations()) == 1, "the second run must make no registration"
    assert TOKEN not in first.stdout + first.stderr + again.stdout + again.stderr


@pytest.mark.parametrize("version", OTHER_PYTHONS, ids=[f"python{v[0]}.{v[1]}" for v in OTHER_PYTHONS])
def test_pyz_demo_on_other_pythons(native: Path, tmp_path: Path, version: tuple[int, int]) -> None:
    demo = start(PYENV[version], native, ["demo"], bare_env(tmp_path))
    assert demo.returncode == 0, demo.stdout + demo.stderr


@pytest.mark.skipif(not TOO_OLD, reason="no Python older than 3.9 under pyenv")
def test_pyz_refuses_old_python_clearly(native: Path, tmp_path: Path) -> None:
    for version in TOO_OLD:
        result = start(PYENV[version], native, ["--version"], bare_env(tmp_path))
        assert result.returncode == 2  # settings: the first-boot unit does not restart it (issue 18 item 15)
        assert "needs Python 3.9 or newer" in result.stderr, result.stderr


# --- the native-code cache -----------------------------------------------------------------------

def _timed(python: str, archive: Path, args: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    result = start(python, archive, args, env)
    assert result.returncode == 0, result.stdout + result.stderr
    return time.monotonic() - started


def _identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, stat.S_IMODE(st.st_mode)


def test_cache_is_private_keyed_and_reused(native: Path, tmp_path: Path) -> None:
    archive = native
    env = {**bare_env(tmp_path), "NEZHA_TOKEN": TOKEN}
    cache = tmp_path / "cache"
    args = [*RUN_ARGS, "--root", str(tmp_path / "root")]

    cold = _timed(sys.executable, archive, args, env)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert [p.name for p in cache.iterdir()] == [digest]
    entry = cache / digest
    assert stat.S_IMODE(entry.stat().st_mode) == 0o700
    assert (entry / "psutil" / "__init__.py").is_file()
    assert [p.name for p in (entry / "psutil").glob("_psutil_linux*.so")]
    before = (_identity(cache), _identity(entry), _identity(entry / "psutil" / "__init__.py"))

    warm = [_timed(sys.executable, archive, args, env) for _ in range(3)]
    after = (_identity(cache), _identity(entry), _identity(entry / "psutil" / "__init__.py"))
    assert before == after, "the second start must reuse the extracted files"
    print(f"run --dry-run: cold {cold:.3f} s (extracts psutil), warm median {statistics.median(warm):.3f} s")

    # Another file (another hash) gets its own directory; the first stays as it was.
    other = tmp_path / "upgraded.pyz"
    shutil.copyfile(archive, other)
    with zipfile.ZipFile(other, "a") as extra:
        extra.writestr("nezha_bootstrap/_upgrade_marker.txt", "a different file\n")
    _timed(sys.executable, other, args, env)
    assert sorted(p.name for p in cache.iterdir()) == sorted([digest, hashlib.sha256(other.read_bytes()).hexdigest()])
    assert _identity(entry) == before[1]


def test_a_warm_start_imports_bytecode_kept_in_the_cache(native: Path, tmp_path: Path) -> None:
    """zipimport compiles every module at every start; the extracted tree keeps its .pyc files."""
    env = bare_env(tmp_path)
    tree = tmp_path / "cache" / hashlib.sha256(native.read_bytes()).hexdigest()
    tag = sys.implementation.cache_tag

    cold = start(sys.executable, native, ["--help"], env)
    assert cold.returncode == 0, cold.stderr
    compiled = {p: _identity(p) for p in tree.rglob(f"*.{tag}.pyc")}
    warm = start(sys.executable, native, ["--help"], env)
    assert warm.returncode == 0, warm.stderr

    assert tree / "nezha_bootstrap" / "__pycache__" / f"cli.{tag}.pyc" in compiled
    assert tree / "click" / "__pycache__" / f"core.{tag}.pyc" in compiled
    assert {p: _identity(p) for p in tree.rglob(f"*.{tag}.pyc")} == compiled, "the warm start recompiled"
    assert not [p for p in tree.rglob("*") if p.stat().st_mode & 0o077 and not p.is_dir()], "cache files are private"


def test_a_refused_cache_still_serves_help_from_the_zip_and_is_left_untouched(native: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)

    result = start(sys.executable, native, ["--help"], bare_env(tmp_path))

    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("command", [["status"], ["check"], ["seal"], ["uninstall"], ["demo"], RUN_ARGS],
                         ids=["status", "check", "seal", "uninstall", "demo", "run"])
def test_a_refused_cache_is_a_clear_exit_2_for_every_command(native: Path, tmp_path: Path,
                                                             command: list[str]) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    env = {**bare_env(tmp_path), "NEZHA_TOKEN": TOKEN, "NEZHA_DASHBOARD_URL": "http://127.0.0.1:9",
           "NEZHA_BOOTSTRAP_ROOT": str(tmp_path / "root")}

    result = start(sys.executable, native, command, env)

    assert result.returncode == 2, result.stdout + result.stderr
    assert f"refusing the native-code cache {cache}: it is writable by group and others" in result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("damage", ["empty", "half", "no marker"])
def test_an_incomplete_tree_in_the_cache_is_extracted_again(native: Path, tmp_path: Path, damage: str) -> None:
    env = {**bare_env(tmp_path), "NEZHA_TOKEN": TOKEN}
    tree = tmp_path / "cache" / hashlib.sha256(native.read_bytes()).hexdigest()
    assert start(sys.executable, native, ["status", "--root", str(tmp_path / "root")], env).returncode == 0
    if damage == "empty":
        shutil.rmtree(tree)
        tree.mkdir(mode=0o700)
    elif damage == "half":  # a start killed mid-extraction on a file system that kept the rename
        shutil.rmtree(tree / "psutil")
        (tree / ".complete").unlink()
    else:
        (tree / ".complete").unlink()

    result = start(sys.executable, native, ["status", "--root", str(tmp_path / "root")], env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert (tree / ".complete").is_file() and (tree / "psutil").is_dir()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [tree.name]  # nothing left aside


def test_the_marker_is_written_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boot = load_bootstrap()
    archive = tmp_path / "x.pyz"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("__main__.py", "")
        zipped.writestr("a/b.py", "x = 1\n")
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(boot.os, "open", lambda path, *a, **k: opened.append(os.path.basename(path)) or
                        real_open(path, *a, **k))
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)

    with archive.open("rb") as handle:
        boot._extract(handle, str(root), str(root / "final"))

    writes = [name for name in opened if name in ("b.py", ".complete")]
    assert writes == ["b.py", "b.py", ".complete"]  # written, fsynced, then the marker


def test_concurrent_first_starts_share_one_extraction(native: Path, tmp_path: Path) -> None:
    env = {**bare_env(tmp_path), "NEZHA_TOKEN": TOKEN}
    procs = [subprocess.Popen([sys.executable, "-I", str(native), *RUN_ARGS, "--root", str(tmp_path / f"r{i}")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=env["HOME"])
             for i in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
    names = [p.name for p in (tmp_path / "cache").iterdir()]
    assert len(names) == 1 and not names[0].startswith(".tmp-"), names


@pytest.mark.parametrize("mode, words", [(0o770, "writable by group"), (0o707, "writable by others"),
                                         (0o777, "writable by group and others")], ids=["0770", "0707", "0777"])
def test_unsafe_cache_dir_is_refused(native: Path, tmp_path: Path, mode: int, words: str) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(mode)
    env = {**bare_env(tmp_path), "NEZHA_TOKEN": TOKEN}
    result = start(sys.executable, native, [*RUN_ARGS, "--root", str(tmp_path / "root")], env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"refusing the native-code cache {cache}" in result.stderr, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert words in result.stderr and f"chmod 700 {cache}" in result.stderr
    assert list(cache.iterdir()) == [], "nothing may be written into a refused directory"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another uid needs root")
def test_cache_dir_of_another_user_is_refused(native: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, 65534, 65534)
    result = start(sys.executable, native, ["demo"], bare_env(tmp_path))
    assert result.returncode == 2
    assert "owned by uid 65534, not by uid 0" in result.stderr, result.stderr


def _can(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_uses_var_cache(native: Path, tmp_path: Path) -> None:
    """As root and without NEZHA_BOOTSTRAP_CACHE: /var/cache/nezha-bootstrap, 0700 (on a private tmpfs)."""
    if not shutil.which("unshare") or not _can(["unshare", "-m", "true"]):
        pytest.skip("no mount namespace here (unshare -m) to give /var/cache a private tmpfs")
    env = bare_env(tmp_path)
    del env["NEZHA_BOOTSTRAP_CACHE"]
    script = (f"mount --make-rprivate / && mount -t tmpfs -o mode=0755 tmpfs /var/cache && "
              f"{sys.executable} -I {native} demo >/dev/null && "
              f"stat -c '%a %u %n' /var/cache/nezha-bootstrap /var/cache/nezha-bootstrap/*")
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env,
                            timeout=120, cwd=env["HOME"])
    assert result.returncode == 0, result.stdout + result.stderr
    digest = hashlib.sha256(native.read_bytes()).hexdigest()
    assert result.stdout.splitlines() == ["700 0 /var/cache/nezha-bootstrap",
                                          f"700 0 /var/cache/nezha-bootstrap/{digest}"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start the zipapp as another user")
def test_other_user_falls_back_to_its_own_cache(native: Path) -> None:
    """uid 65534 gets $XDG_CACHE_HOME/nezha-bootstrap, else ~/.cache/nezha-bootstrap, 0700 and its own."""
    python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(p)), None)
    if not shutil.which("setpriv") or python is None:
        pytest.skip("needs setpriv and a python3 outside root's home")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if not _can([*as_nobody, python, "-c", "import sys; assert sys.version_info >= (3, 9)"]):
        pytest.skip(f"{python} cannot run as uid 65534 or is older than 3.9")
    public = Path(tempfile.mkdtemp(prefix="nezha-packaging-"))  # pytest's tmp_path is root-only
    try:
        public.chmod(0o755)
        archive = public / native.name
        shutil.copyfile(native, archive)
        archive.chmod(0o644)
        home = public / "home"
        home.mkdir()
        os.chown(home, 65534, 65534)
        for extra, expected in (({}, home / ".cache" / "nezha-bootstrap"),
                                ({"XDG_CACHE_HOME": str(home / "xdg")}, home / "xdg" / "nezha-bootstrap")):
            env = {"PATH": os.environ["PATH"], "HOME": str(home), **extra}
            result = subprocess.run([*as_nobody, python, "-I", str(archive), "demo"], capture_output=True, text=True,
                                    env=env, timeout=120, cwd=str(home))
            assert result.returncode == 0, result.stdout + result.stderr
            st = expected.stat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (65534, 0o700)
            assert [p.name for p in expected.iterdir()] == [hashlib.sha256(archive.read_bytes()).hexdigest()]
    finally:
        shutil.rmtree(public, ignore_errors=True)


def test_cache_location_policy(tmp_path: Path) -> None:
    boot = load_bootstrap()
    home = str(tmp_path / "home")
    assert boot.cache_root(0, {}) == "/var/cache/nezha-bootstrap"
    assert boot.cache_root(1000, {"XDG_CACHE_HOME": "/xdg"}, home) == "/xdg/nezha-bootstrap"
    assert boot.cache_root(1000, {"XDG_CACHE_HOME": "relative"}, home) == f"{home}/.cache/nezha-bootstrap"
    assert boot.cache_root(1000, {}, home) == f"{home}/.cache/nezha-bootstrap"
    assert boot.cache_root(0, {"NEZHA_BOOTSTRAP_CACHE": "/srv/c/"}) == "/srv/c"
    with pytest.raises(boot.CacheError, match="absolute"):
        boot.cache_root(0, {"NEZHA_BOOTSTRAP_CACHE": "c"})

    # A missing fallback directory is made 0700 down from the first missing parent.
    private = tmp_path / "home" / ".cache" / "nezha-bootstrap"
    boot.make_private_dir(str(private), os.geteuid())
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    with pytest.raises(boot.CacheError, match="owned by uid"):
        boot.check_private(str(private), os.geteuid() + 1)

    # A directory others could rename it out of: world-writable parent without the sticky bit.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(boot.CacheError, match="without the sticky bit"):
        boot.make_private_dir(str(shared / "cache"), os.geteuid())
    shared.chmod(0o1777)
    boot.make_private_dir(str(shared / "cache"), os.geteuid())


# --- nothing from the host's site-packages -------------------------------------------------------

POISON = "raise SystemExit('POISON: {name} was imported from the host site-packages')\n"
REPORT = """\
import atexit, json, os, runpy, sys
archive, report = sys.argv[1], sys.argv[2]
sys.argv = [archive] + sys.argv[3:]
def dump():
    with open(report, "w") as handle:
        json.dump({n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())}, handle)
real_exit = os._exit
def dump_and_exit(code):  # the command ends with os._exit (console.start), which runs no atexit handler
    dump()
    real_exit(code)
os._exit = dump_and_exit
atexit.register(dump)  # the zipapp's own early exits (sys.exit) still run it
runpy.run_path(archive, run_name="__main__")
"""


@pytest.fixture
def poisoned_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A venv whose site-packages shadows every bundled package and the optional ones httpx tries."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for name in ("click", "httpx", "httpcore", "h11", "anyio", "idna", "exceptiongroup", "psutil",
                 "nezha_bootstrap", "brotli", "brotlicffi", "zstandard", "h2", "socksio", "sniffio", "trio"):
        (site / name).mkdir()
        (site / name / "__init__.py").write_text(POISON.format(name=name))
    (site / "typing_extensions.py").write_text(POISON.format(name="typing_extensions"))
    # A module a .pth file imports at startup, before the zipapp gets control (as some hosts do).
    (site / "certifi").mkdir()
    (site / "certifi" / "__init__.py").write_text("HOST_COPY = True\ndef where():\n    return '/nonexistent'\n")
    (site / "preload.pth").write_text("import certifi\n")
    return python, site


@pytest.mark.parametrize("flags", [("-I",), ()], ids=["isolated", "not-isolated"])
def test_nothing_is_imported_from_host_site_packages(native: Path, tmp_path: Path,
                                                     poisoned_venv: tuple[Path, Path], flags: tuple[str, ...]) -> None:
    python, site = poisoned_venv
    env = bare_env(tmp_path)
    if not flags:
        env["PYTHONPATH"] = str(site)  # without -I, PYTHONPATH is honoured by the interpreter: not by the .pyz
    demo = start(python, native, ["demo"], env, flags)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "POISON" not in demo.stdout + demo.stderr

    harness, report = tmp_path / "harness.py", tmp_path / "modules.json"
    harness.write_text(REPORT)
    result = subprocess.run([str(python), *flags, str(harness), str(native), str(report), "demo"],
                            capture_output=True, text=True, env=env, timeout=120, cwd=env["HOME"])
    assert result.returncode == 0, result.stdout + result.stderr
    modules: dict[str, Any] = json.loads(report.read_text())
    foreign = {name: file for name, file in modules.items() if file and file.startswith(str(site))}
    assert not foreign, f"imported from the host site-packages: {foreign}"  # certifi, preloaded, was dropped
    with zipfile.ZipFile(native) as archive:
        bundled = {n.split("/")[0].removesuffix(".py") for n in archive.namelist() if not n.startswith("_native/")}
    from_zip = {n: f for n, f in modules.items() if n.split(".")[0] in bundled - {"__main__"} and f}
    assert {"nezha_bootstrap", "click", "httpx", "httpcore", "h11"} <= set(from_zip)
    tree = tmp_path / "cache" / hashlib.sha256(native.read_bytes()).hexdigest()
    wrong = {n: f for n, f in from_zip.items() if not f.startswith(f"{tree}{os.sep}")}
    assert not wrong, f"not from the zipapp's extracted tree: {wrong}"
    assert modules["psutil"].startswith(f"{tree}{os.sep}"), modules["psutil"]


# --- the release workflow ------------------------------------------------------------------------

def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.skip("check-jsonschema is not installed (pip install -e '.[test]')")
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           str(path)], capture_output=True, text=True, timeout=120)


def test_release_workflow_is_valid_against_the_schema() -> None:
    result = _check_jsonschema(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs_on: ubuntu-latest", 1))
    result = _check_jsonschema(broken)
    assert result.returncode != 0, "the schema check accepted a job without runs-on"


def test_release_workflow_does_what_the_issue_asks() -> None:
    import yaml

    workflow = yaml.safe_load(WORKFLOW.read_text())
    trigger = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert trigger == {"push": {"tags": ["v*"]}}
    jobs = workflow["jobs"]
    steps = {job: "\n".join(str(s.get("run", "")) + str(s.get("uses", "")) + str(s.get("with", ""))
                            for s in spec["steps"]) for job, spec in jobs.items()}
    assert "packaging/build" in steps["build"] and "actions/setup-python" in steps["build"]
    assert "softprops/action-gh-release" in steps["github-release"] and "dist/*" in steps["github-release"]
    assert jobs["github-release"]["permissions"] == {"contents": "write"}
    pypi = jobs["pypi"]
    assert pypi["environment"]["name"] == "pypi"
    assert pypi["permissions"] == {"id-token": "write"}
    assert "pypa/gh-action-pypi-publish" in steps["pypi"]
    assert "mv dist/*.whl dist/*.tar.gz pypi/" in steps["pypi"] and "packages-dir': 'pypi/'" in steps["pypi"]
    assert workflow["permissions"] == {"contents": "read"}
    smoke = jobs["zipapp-smoke"]
    assert smoke["strategy"]["matrix"]["python-version"] == ["3.9", "3.11"]
    assert "python packaging/smoke_zipapp.py dist/nezha-bootstrap-*-x86_64.pyz" in steps["zipapp-smoke"]
    assert jobs["github-release"]["needs"] == jobs["pypi"]["needs"] == ["build", "zipapp-smoke"]


@pytest.mark.parametrize("python", INTERPRETERS)
def test_the_release_smoke_script_passes(native: Path, python: str) -> None:
    """What the release workflow's zipapp-smoke job runs, on each interpreter."""
    done = subprocess.run([str(python), str(REPO / "packaging" / "smoke_zipapp.py"), str(native)], capture_output=True,
                          text=True, timeout=300, env={"PATH": os.environ["PATH"]})

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("\nok   ") == 5


def test_zip_writer_output_is_a_valid_zipapp(tmp_path: Path) -> None:
    """The writer packaging/build uses: prefixed zips stay readable by zipfile and zipimport."""
    artifacts = load_artifacts()
    target = tmp_path / "x.pyz"
    artifacts.write_zip(target, {"__main__.py": b"print('hello from the zip')\n"}, 0, b"#!/usr/bin/env python3\n")
    assert zipfile.ZipFile(io.BytesIO(target.read_bytes())).namelist() == ["__main__.py"]
    assert zipfile.ZipFile(target).infolist()[0].date_time == (1980, 1, 1, 0, 0, 0)
    result = subprocess.run([sys.executable, "-I", str(target)], capture_output=True, text=True, timeout=60)
    assert result.stdout == "hello from the zip\n"


# --- the offline bundle: `bundle` from the zipapp, and the bundle run as a node runs it --------------

@pytest.fixture(scope="session")
def stub_agents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_bundle import write_release

    target = tmp_path_factory.mktemp("agents")
    for version in ("0.20.5", "2.3.3"):
        write_release(target, version)
    return target


@pytest.fixture(scope="session")
def bundle_pyz(native: Path, stub_agents: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`nezha-bootstrap bundle` run from the zipapp itself (no --pyz: it extends its own file)."""
    work = tmp_path_factory.mktemp("bundle")
    output = work / "nezha-bootstrap-bundle.pyz"
    done = start(sys.executable, native, ["bundle", "--agent-dir", str(stub_agents), "--output", str(output)],
                 bare_env(work))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"sha256 {hashlib.sha256(output.read_bytes()).hexdigest()}" in done.stdout
    return output


def test_the_zipapps_bundle_command_and_packaging_build_make_the_same_bytes(
        bundle_pyz: Path, native: Path, stub_agents: Path, tmp_path: Path) -> None:
    copy = tmp_path / native.name
    shutil.copyfile(native, copy)

    [built] = load_artifacts().bundles([copy], stub_agents)

    assert built.name == native.name.replace(".pyz", "-bundle.pyz")
    assert built.read_bytes() == bundle_pyz.read_bytes()


def _node(tmp_path: Path, **extra: str) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    return root, bare_env(tmp_path, NEZHA_BOOTSTRAP_ROOT=str(root), NEZHA_BOOTSTRAP_DEADLINE="30",
                          NEZHA_STUB_RECORD=str(tmp_path / "stub-record"), NO_PROXY="127.0.0.1",
                          NEZHA_AGENT_BASE_URL="http://127.0.0.1:1/releases", NEZHA_BOOTSTRAP_REHEARSAL="1",
                          **extra)  # no release host; the stub agents, under --root


@pytest.mark.parametrize("python", INTERPRETERS)
def test_a_bundle_installs_its_v0_agent_with_no_release_host(bundle_pyz: Path, tmp_path: Path, python: str,
                                                             dashboard: Running, fake: FakeDashboard) -> None:
    root, env = _node(tmp_path, NEZHA_DASHBOARD_URL=dashboard.url, NEZHA_TOKEN=TOKEN, NODE_NAME="bundle-node",
                      NEZHA_PROBE_ADDRESS="probe.example.test")

    done = start(python, bundle_pyz, ["run"], env)

    assert done.returncode == 0, done.stdout + done.stderr
    assert [server.name for server in fake.servers] == ["bundle-node"]
    assert "taking nezha-agent v0.20.5 (nezha-agent_linux_amd64.zip) from this bundle" in done.stderr
    assert f'"-p" "{fake.servers[0].secret}"' in (root / "etc/systemd/system/nezha-agent.service").read_text()
    assert "/install.sh" not in [j.path for j in fake.journal]


def test_a_bundle_installs_its_v1_agent_with_no_release_host(bundle_pyz: Path, tmp_path: Path) -> None:
    from nezha_bootstrap.testing.fake_v1 import FakeV1, serve_v1

    fake = FakeV1(profile="v2.1+")  # serves no release
    with serve_v1(fake) as running:
        root, env = _node(tmp_path, NEZHA_DASHBOARD_URL=running.url, NEZHA_AGENT_SECRET=fake.agent_secret)
        done = start(sys.executable, bundle_pyz, ["run"], env)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "taking nezha-agent v2.3.3 (nezha-agent_linux_amd64.zip) from this bundle" in done.stderr
    assert (root / "opt/nezha/agent/config.yml").is_file()
    assert not [j.path for j in fake.journal if j.path.startswith("/releases")]
    cache = tmp_path / "cache"  # the agent zips are read from the archive, never extracted (ARCHIVE_ONLY)
    assert list(cache.rglob("manifest.json")) and list(cache.rglob("*.zip")) == []

# --- the scheduled mutation run ------------------------------------------------------------------------

MUTATION_WORKFLOW = REPO / ".github" / "workflows" / "mutation.yml"


def test_mutation_workflow_is_valid_against_the_schema() -> None:
    result = _check_jsonschema(MUTATION_WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mutation_workflow_runs_every_configured_module_on_a_schedule_and_never_on_push() -> None:
    import yaml

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the 3.9 run of the suite skips this
    workflow = yaml.safe_load(MUTATION_WORKFLOW.read_text())
    configured = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["nezha-bootstrap"]["mutation"]
    trigger = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    [job] = workflow["jobs"].values()

    assert set(trigger) == {"schedule", "workflow_dispatch"}
    assert job["strategy"]["matrix"]["module"] == list(configured)
    assert 'scripts/mutation.py "${{ matrix.module }}"' in job["steps"][-1]["run"]
    assert "--min-score 90" in job["steps"][-1]["run"]
