"""Build the release artifacts: sdist, wheel, one zipapp per architecture, SHA256SUMS.

Run through `packaging/build` (which says why the zipapp is made this way). Standard library and
pip only, on any Python >= 3.9:

1. Copy the source tree (the files git tracks or would track: no build/, egg-info, __pycache__)
   to a temporary directory, modes 0644/0755, mtimes SOURCE_DATE_EPOCH.
2. Build the sdist with the pinned setuptools (build-constraints.txt) run in `python -I -S`, then
   rewrite it deterministically (sorted members, fixed mtime, uid/gid 0, no names in the gzip
   header); unpack it and build the wheel from it, as `python -m build` would.
3. For x86_64 and aarch64: the wheel plus every pinned runtime wheel (zipapp-constraints.txt,
   hash-checked, kept in the download cache) go into a zip with sorted entries, fixed timestamps
   and modes; psutil (native code) under `_native/`, everything else at the top level;
   packaging/zipapp_main.py as `__main__.py`.
4. With --agent-dir DIR: for each architecture DIR has agents for, the offline bundle: that zipapp plus
   the agent release zips (checked against their checksums.txt, pinned inside), written by
   nezha_bootstrap/bundle.py from the tree being built.
5. SHA256SUMS over every file in the output directory.

SOURCE_DATE_EPOCH is taken from the environment or else from the last commit's date, so two
builds of a commit are byte-identical (given the same zlib: the deflate output is zlib's).
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ZIPAPP_CONSTRAINTS = HERE / "zipapp-constraints.txt"
BUILD_CONSTRAINTS = HERE / "build-constraints.txt"
BOOTSTRAP = HERE / "zipapp_main.py"
BACKEND = "setuptools.build_meta"
ARCHES = {"x86_64": "manylinux2014_x86_64", "aarch64": "manylinux2014_aarch64"}
TARGET_PYTHON = "3.9"  # the oldest Python the zipapp supports: wheels must install there
SHEBANG = b"#!/usr/bin/env python3\n"
ZIP_EPOCH_MIN = 315532800  # 1980-01-01, the earliest time a zip entry can carry
TEMP_PREFIX = "nezha-bootstrap-build-"
ARTIFACT_PATTERNS = (r"nezha_bootstrap-.+\.whl", r"nezha_bootstrap-.+\.tar\.gz", r"nezha-bootstrap-.+\.pyz",
                     r"SHA256SUMS")

# Runs in `python -I -S` with the source tree as the working directory: only the pinned setuptools
# is importable (not the builder's site-packages, not the source tree), as in an isolated build.
HOOK = f"""\
import sys
tools, hook, out, result = sys.argv[1:5]
sys.path.insert(0, tools)
import {BACKEND} as backend
name = getattr(backend, hook)(out)
with open(result, "w") as handle:
    handle.write(name)
"""


class BuildError(Exception):
    pass


def log(message: str) -> None:
    print(f"build: {message}", flush=True)


# --- inputs ------------------------------------------------------------------------------------

def source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value:
        return int(value)
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=REPO, check=True, capture_output=True,
                             text=True).stdout.strip()
        return int(out)
    except (OSError, subprocess.CalledProcessError, ValueError) as exc:
        raise BuildError("no SOURCE_DATE_EPOCH and no git commit to take it from; set SOURCE_DATE_EPOCH") from exc


def source_files() -> list[str]:
    """Paths (relative, '/'-separated) of what git tracks, as in the work tree (an untracked file, a stray
    token file say, never lands in the sdist)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached"], cwd=REPO,
                             check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BuildError(f"{REPO} is not a git work tree (git ls-files failed): build from a checkout") from exc
    names = sorted({name for name in out.decode("utf-8").split("\0") if name})
    return [name for name in names if (REPO / name).is_file()]  # deleted but still tracked: skip


def parse_pins(path: Path) -> dict[str, tuple[str, set[str]]]:
    """`name==version --hash=sha256:...` lines (with `\\` continuations) -> {name: (version, hashes)}."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    pins: dict[str, tuple[str, set[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", words[0])
        hashes = {w.split(":", 1)[1] for w in words[1:] if w.startswith("--hash=sha256:")}
        if not match or not hashes:
            raise BuildError(f"{path.name}: every line must be `name==version --hash=sha256:...`, not {line!r}")
        pins[canonical(match.group(1))] = (match.group(2), hashes)
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheel_tags(filename: str) -> tuple[str, str, str]:
    parts = filename[:-len(".whl")].split("-")
    return canonical(parts[0]), parts[1], parts[-1]


def fetch_wheels(constraints: Path, cache: Path, arch: str | None) -> list[Path]:
    """The pinned wheels for `arch` (None: the builder's own Python), from the cache or downloaded."""
    pins = parse_pins(constraints)
    cache.mkdir(parents=True, exist_ok=True)

    def cached() -> dict[str, Path]:
        found: dict[str, Path] = {}
        for path in sorted(cache.glob("*.whl")):
            name, version, platform = wheel_tags(path.name)
            if name not in pins or pins[name][0] != version:
                continue
            if platform != "any" and (arch is None or not platform.endswith(arch)):
                continue
            if sha256(path) in pins[name][1]:
                found[name] = path
        return found

    found = cached()
    if len(found) < len(pins):
        missing = sorted(set(pins) - set(found))
        log(f"downloading {', '.join(missing)} ({arch or 'any'})")
        with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as download:
            command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                       "--no-deps", "--only-binary=:all:", "--require-hashes", "--dest", download,
                       "--requirement", str(constraints)]
            if arch:
                command += ["--platform", ARCHES[arch], "--python-version", TARGET_PYTHON,
                            "--implementation", "cp", "--abi", "abi3"]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode:
                raise BuildError(f"pip download failed:\n{result.stdout}{result.stderr}")
            for path in Path(download).glob("*.whl"):
                target = cache / path.name
                if not target.exists():  # a private name, then a rename: concurrent builds share the cache
                    partial = f"{target}.{os.getpid()}.part"
                    shutil.copyfile(path, partial)
                    os.replace(partial, target)
        found = cached()
    if len(found) < len(pins):
        raise BuildError(f"{constraints.name}: no wheel for {sorted(set(pins) - set(found))} ({arch})")
    return [found[name] for name in sorted(found)]


# --- sdist and wheel ---------------------------------------------------------------------------

def stage_source(target: Path, epoch: int) -> None:
    for name in source_files():
        source, copy = REPO / name, target / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
        copy.chmod(0o755 if source.stat().st_mode & 0o111 else 0o644)
        os.utime(copy, (epoch, epoch))
    if not (target / "pyproject.toml").is_file():
        raise BuildError("pyproject.toml is not in the source tree")
    backend = re.search(r'^build-backend\s*=\s*"([^"]+)"', (target / "pyproject.toml").read_text(), re.M)
    if not backend or backend.group(1) != BACKEND:
        raise BuildError(f"pyproject.toml's build-backend is not {BACKEND}: update packaging/ for it")


def run_hook(tools: Path, source: Path, hook: str, out: Path, epoch: int, work: Path) -> Path:
    script, result = work / "hook.py", work / "hook-result"
    script.write_text(HOOK, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["SOURCE_DATE_EPOCH"] = str(epoch)
    proc = subprocess.run([sys.executable, "-I", "-S", str(script), str(tools), hook, str(out), str(result)],
                          cwd=source, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise BuildError(f"{BACKEND}.{hook} failed:\n{proc.stdout}{proc.stderr}")
    return out / result.read_text(encoding="utf-8")


def normalize_sdist(path: Path, epoch: int) -> None:
    """Rewrite the tar.gz: sorted members, one mtime, root-owned, 0644/0755, a gzip header without a name."""
    with tarfile.open(path, "r:gz") as old:
        members = []
        for member in old.getmembers():
            if not (member.isfile() or member.isdir()):
                raise BuildError(f"{path.name}: unexpected member type for {member.name}")
            data = old.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            members.append((member, data))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as new:
        for member, data in sorted(members, key=lambda item: item[0].name):
            member.mtime = epoch
            member.uid = member.gid = 0
            member.uname = member.gname = ""
            member.mode = 0o755 if member.isdir() or member.mode & 0o111 else 0o644
            member.pax_headers = {}
            new.addfile(member, io.BytesIO(data) if data is not None else None)
    with path.open("wb") as handle, gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=epoch,
                                                  compresslevel=9) as compressed:
        compressed.write(raw.getvalue())


def unpack_tools(wheels: list[Path], target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    return target


# --- zipapp ------------------------------------------------------------------------------------

def wheel_members(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}


def console_script(members: dict[str, bytes]) -> tuple[str, str]:
    """(version, entry point) from the project's wheel."""
    version = entry = None
    for name, data in members.items():
        if name.endswith(".dist-info/METADATA"):
            match = re.search(r"^Version: (\S+)$", data.decode("utf-8"), re.M)
            version = match.group(1) if match else None
        if name.endswith(".dist-info/entry_points.txt"):
            match = re.search(r"^nezha-bootstrap\s*=\s*(\S+)\s*$", data.decode("utf-8"), re.M)
            entry = match.group(1) if match else None
    if not version or not entry:
        raise BuildError("the wheel has no Version or no `nezha-bootstrap` console script")
    return version, entry


def bootstrap_constant(name: str) -> str:
    match = re.search(rf"^{name} = (.+?)(?:  #.*)?$", BOOTSTRAP.read_text(encoding="utf-8"), re.M)
    if not match:
        raise BuildError(f"{BOOTSTRAP.name} has no {name}")
    return match.group(1)


def zipapp_members(project: dict[str, bytes], dependencies: list[Path], entry: str) -> dict[str, bytes]:
    if entry != ast.literal_eval(bootstrap_constant("ENTRY_POINT")):
        raise BuildError(f"the console script is {entry}: set ENTRY_POINT in {BOOTSTRAP} to it")
    members = {"__main__.py": BOOTSTRAP.read_bytes()}
    native: set[str] = set()
    for wheel_name, files in [("project", project)] + [(w.name, wheel_members(w)) for w in dependencies]:
        is_native = not wheel_name.endswith("-any.whl") and wheel_name != "project"
        for name, data in files.items():
            top = name.split("/", 1)[0]
            if name.endswith(("/RECORD", ".pyc")) or "/__pycache__/" in name:
                continue  # RECORD describes an installed layout that this is not; bytecode is per version
            if is_native and not top.endswith(".dist-info"):
                native.add(top.split(".", 1)[0])
                name = "_native/" + name
            if name in members:
                raise BuildError(f"{name} is in two wheels")
            members[name] = data
    declared = set(ast.literal_eval(bootstrap_constant("NATIVE")))
    if native != declared:
        raise BuildError(f"native packages are {sorted(native)}: set NATIVE in {BOOTSTRAP} to them")
    directories = {name[:i + 1] for name in members for i, char in enumerate(name) if char == "/"}
    members.update(dict.fromkeys(directories, b""))
    return members


def write_zip(path: Path, members: dict[str, bytes], epoch: int, prefix: bytes = b"") -> None:
    date_time = time.gmtime(max(epoch, ZIP_EPOCH_MIN))[:6]
    with path.open("wb") as handle:
        handle.write(prefix)
        with zipfile.ZipFile(handle, "w") as archive:
            for name in sorted(members):
                info = zipfile.ZipInfo(name, date_time=date_time)
                info.create_system = 3  # unix, so that the mode below means something
                if name.endswith("/"):
                    info.external_attr = (0o40755 << 16) | 0x10
                    archive.writestr(info, b"")
                else:
                    info.external_attr = 0o100644 << 16
                    info.compress_type = zipfile.ZIP_DEFLATED
                    archive.writestr(info, members[name], compresslevel=9)


# --- output ------------------------------------------------------------------------------------

def prepare_out(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    foreign = [p.name for p in out.iterdir()
               if not (p.is_file() and any(re.fullmatch(pattern, p.name) for pattern in ARTIFACT_PATTERNS))]
    if foreign:
        raise BuildError(f"{out} holds other files ({', '.join(sorted(foreign))}): SHA256SUMS and the release "
                         "take everything in it; empty it or choose another --out")
    for path in out.iterdir():
        path.unlink()


def write_sums(out: Path) -> Path:
    lines = [f"{sha256(path)}  {path.name}\n" for path in sorted(out.iterdir()) if path.name != "SHA256SUMS"]
    sums = out / "SHA256SUMS"
    sums.write_text("".join(lines), encoding="utf-8")
    return sums


def bundles(pyz_files: list[Path], agent_dir: Path) -> list[Path]:
    """`nezha-bootstrap-<version>-<arch>-bundle.pyz` for each architecture `agent_dir` has agents for: the zipapp
    plus the agent zips, checked against their checksums.txt, by the same code as `nezha-bootstrap bundle`."""
    sys.path.insert(0, str(REPO))  # the tree being built: its bundle writer is standard library only
    try:
        from nezha_bootstrap import bundle
        from nezha_bootstrap.agent import ARCHES as RELEASE_WORDS
        from nezha_bootstrap.errors import BootstrapError
    finally:
        sys.path.remove(str(REPO))
    made = []
    for pyz in pyz_files:
        arch = pyz.stem.rsplit("-", 1)[1]
        if not list(agent_dir.glob(f"v*/nezha-agent_linux_{RELEASE_WORDS[arch]}.zip")):
            log(f"no agents for {arch} in {agent_dir}: no bundle for it")
            continue
        target = pyz.with_name(f"{pyz.stem}-bundle.pyz")
        try:
            written = bundle.write(pyz, agent_dir, target)
        except BootstrapError as exc:
            raise BuildError(f"the {arch} bundle: {exc}") from exc
        for warning in written.warnings:
            log(f"warning: {target.name}: {warning}")
        log(f"{target.name} carries {written.bundle.summary()}")
        made.append(target)
    if not made:
        raise BuildError(f"--agent-dir {agent_dir} holds no v<version>/nezha-agent_linux_<arch>.zip for "
                         f"{', '.join(ARCHES)}")
    return made


def build(out: Path, cache: Path, agent_dir: Path | None = None) -> list[Path]:
    started = time.monotonic()
    epoch = source_date_epoch()
    os.umask(0o022)
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as temp:
        work = Path(temp)
        source, unpacked, products = work / "source", work / "unpacked", work / "products"
        for directory in (source, unpacked, products):
            directory.mkdir()
        stage_source(source, epoch)
        tools = unpack_tools(fetch_wheels(BUILD_CONSTRAINTS, cache / "wheels", None), work / "tools")

        sdist = run_hook(tools, source, "build_sdist", products, epoch, work)
        normalize_sdist(sdist, epoch)
        with tarfile.open(sdist, "r:gz") as archive:
            top = {member.name.split("/", 1)[0] for member in archive.getmembers()}
            if len(top) != 1:
                raise BuildError(f"{sdist.name} must hold one top-level directory, not {sorted(top)}")
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # 3.12+ asks for a filter
            archive.extractall(unpacked, **safe)  # our own, just-normalized file: only files and directories
        wheel = run_hook(tools, unpacked / top.pop(), "build_wheel", products, epoch, work)
        project = wheel_members(wheel)
        version, entry = console_script(project)

        pyz_files = []
        for arch in ARCHES:
            members = zipapp_members(project, fetch_wheels(ZIPAPP_CONSTRAINTS, cache / "wheels", arch), entry)
            pyz = products / f"nezha-bootstrap-{version}-{arch}.pyz"
            write_zip(pyz, members, epoch, SHEBANG)
            pyz_files.append(pyz)

        pyz_files += bundles(pyz_files, agent_dir) if agent_dir else []

        prepare_out(out)
        results = []
        for product in [wheel, sdist, *pyz_files]:
            target = out / product.name
            shutil.copyfile(product, target)
            target.chmod(0o755 if target.suffix == ".pyz" else 0o644)
            results.append(target)
    sums = write_sums(out)
    for path in results:
        log(f"{path.name}: {path.stat().st_size:,} bytes")
    log(f"{sums} written; SOURCE_DATE_EPOCH={epoch}; {time.monotonic() - started:.1f} s")
    return results + [sums]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="packaging/build", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist",
                        help="output directory (default: dist/ in the repository); emptied of earlier artifacts")
    parser.add_argument("--cache", type=Path, default=REPO / "build" / "packaging-cache",
                        help="download cache for the pinned wheels (default: build/packaging-cache/)")
    parser.add_argument("--agent-dir", type=Path,
                        help="also write nezha-bootstrap-<version>-<arch>-bundle.pyz carrying the agent release zips "
                             "of this directory (v<version>/nezha-agent_linux_<arch>.zip and checksums.txt)")
    args = parser.parse_args(argv)
    try:
        build(args.out.resolve(), args.cache.resolve(), args.agent_dir.resolve() if args.agent_dir else None)
    except BuildError as exc:
        print(f"build: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
