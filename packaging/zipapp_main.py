"""Start nezha-bootstrap from its zipapp (this file is `__main__.py` inside the .pyz, byte for byte).

The archive holds every pure-Python package at its top level and psutil's native code under
`_native/`. On the first start the whole tree (the `_native/` members at the top level beside the
others) is extracted once into a private cache directory keyed by the archive's SHA-256, and that
directory replaces the archive on sys.path. Python then keeps its bytecode there (`__pycache__`,
written atomically by importlib), so a warm start imports compiled modules instead of compiling
every module from the zip again (zipimport never caches bytecode), and psutil's .so is on disk.

- The cache: `NEZHA_BOOTSTRAP_CACHE` if set (tests), else `/var/cache/nezha-bootstrap` for root,
  else `$XDG_CACHE_HOME/nezha-bootstrap` or `~/.cache/nezha-bootstrap`; created 0700;
- refused, with the reason, when it is not a directory owned by this uid, is group- or
  world-writable, or sits in a directory that someone else could rename it out of;
- filled in a temporary directory that is renamed into place, so two starts at once are safe, a
  second start reuses it, and an upgraded file (another hash) gets its own;
- complete only with its marker (`.complete`, written last, after every member is on disk): a tree
  without it (emptied, cut short by a full disk, made by hand) is removed and extracted again.

When the cache cannot be used, every command exits 2 with the reason before it does anything (it
is a setting to fix, like any other); only `--help` and `--version` are still served, importing
pure-Python code from the zip itself (slower, nothing written).

Before anything else the host's site-packages are dropped (sys.path, import hooks, and modules a
.pth file already loaded), so even `python3 x.pyz` without `-I` imports nothing the file does not
carry. Run it as `python3 -I x.pyz` (or `-I -S`, which also skips the host's .pth files).

Standard library only, and parseable by Python 3.6 so that an old python3 gets a clear message.
"""

import os
import sys

ENTRY_POINT = "nezha_bootstrap.console:start"  # packaging/build checks it against the wheel's console script
NATIVE = ("psutil",)  # top-level packages under _native/ (packaging/build checks this list)
NATIVE_PREFIX = "_native/"
# An offline bundle's agent release zips (nezha_bootstrap/bundle.py) stay in the archive: data read once
# from it (and checked against the hash pinned in the bundle), not code; extracting ~15 MB each would
# slow the first start (measured here: +0.9 s for two) and double the disk they take.
ARCHIVE_ONLY = ("nezha_bootstrap_bundle/", ".zip")  # (prefix, suffix) of members never extracted
CACHE_ENV = "NEZHA_BOOTSTRAP_CACHE"
SYSTEM_CACHE = "/var/cache/nezha-bootstrap"
APP = "nezha-bootstrap"
MIN_PYTHON = (3, 9)
STALE_TEMP_SECONDS = 3600
MARKER = ".complete"  # written last into an extracted tree: without it the tree is not used


class CacheError(ImportError):
    """The native-code cache cannot be used safely; the message says why and what to do."""


# --- isolation: only the standard library and this archive --------------------------------------

_IMPORT_MACHINERY = frozenset({
    "_frozen_importlib", "_frozen_importlib_external", "importlib._bootstrap",
    "importlib._bootstrap_external", "importlib.machinery", "zipimport",
})


def _stdlib_dirs():
    """The directories (and zip) the running interpreter's standard library comes from."""
    import encodings  # always loaded at startup, always from the standard library

    stdlib = os.path.dirname(os.path.dirname(os.path.abspath(encodings.__file__)))
    dirs = [stdlib]
    for entry in sys.path:
        path = os.path.abspath(entry) if entry else ""
        if os.path.basename(path) == "lib-dynload" and (
            os.path.dirname(path) == stdlib or path.startswith(os.path.join(sys.base_exec_prefix, ""))
        ):
            dirs.append(path)
        elif path.endswith(".zip") and os.path.basename(path).startswith("python") and (
            os.path.dirname(path) == os.path.dirname(stdlib)
        ):
            dirs.append(path)
    return dirs


def _within(path, dirs):
    """True when `path` is one of `dirs` or inside one, but not in a site-packages below it."""
    for top in dirs:
        if path == top:
            return True
        if path.startswith(top + os.sep):
            first = path[len(top) + 1:].split(os.sep, 1)[0]
            return first not in ("site-packages", "dist-packages")
    return False


def _origin_paths(module):
    paths = []
    file = getattr(module, "__file__", None)
    if isinstance(file, str):
        paths.append(os.path.abspath(file))
    search = getattr(module, "__path__", None)
    if search is not None and file is None:  # a namespace package: where its portions are
        try:
            paths.extend(os.path.abspath(p) for p in list(search) if isinstance(p, str))
        except Exception:  # an exotic __path__: treat the module as foreign
            paths.append("")
    return paths


def _machinery(hook):
    module = hook.__module__ if isinstance(hook, type) else getattr(hook, "__module__", None)
    if module is None:
        module = type(hook).__module__
    return module in _IMPORT_MACHINERY


def isolate(archive):
    """Leave sys.path, the import hooks and sys.modules with the standard library and `archive`."""
    allowed = _stdlib_dirs() + [archive]
    kept = [archive]
    for entry in sys.path:
        path = os.path.abspath(entry) if entry else ""
        if path and path != archive and _within(path, allowed) and path not in kept:
            kept.append(path)
    sys.path[:] = kept
    sys.meta_path[:] = [finder for finder in sys.meta_path if _machinery(finder)]
    sys.path_hooks[:] = [hook for hook in sys.path_hooks if _machinery(hook)]
    for key in list(sys.path_importer_cache):
        if key not in kept:
            del sys.path_importer_cache[key]
    for name, module in list(sys.modules.items()):
        if name == "__main__" or module is None:
            continue
        if any(not _within(path, allowed) for path in _origin_paths(module)):
            del sys.modules[name]  # loaded by a .pth file from the host's site-packages


# --- the native-code cache -----------------------------------------------------------------------

def cache_root(euid, environ, home=None):
    """Where the extraction cache lives for this user (see the module docstring)."""
    override = environ.get(CACHE_ENV)
    if override:
        if not os.path.isabs(override):
            raise CacheError(f"{APP}: {CACHE_ENV} must be an absolute path, not {override!r}")
        return os.path.normpath(override)
    if euid == 0:
        return SYSTEM_CACHE
    base = environ.get("XDG_CACHE_HOME")
    if not base or not os.path.isabs(base):  # the XDG spec: a relative value is ignored
        home = home or os.path.expanduser("~")
        if not os.path.isabs(home):
            raise CacheError(f"{APP}: no home directory for the native-code cache: set {CACHE_ENV} or XDG_CACHE_HOME")
        base = os.path.join(home, ".cache")
    return os.path.join(base, APP)


def _problem(path, st, euid, leaf):
    import stat

    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if leaf:
        if st.st_uid != euid:
            return f"it is owned by uid {st.st_uid}, not by uid {euid} that runs this"
        writable = st.st_mode & 0o022
        if writable:
            who = " and ".join(w for w, bit in (("group", 0o020), ("others", 0o002)) if writable & bit)
            return f"it is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
        return None
    if st.st_uid not in (0, euid):
        return f"its parent {path} is owned by uid {st.st_uid}, neither root nor uid {euid}"
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        return (f"its parent {path} is writable by group or others without the sticky bit "
                f"(mode {stat.S_IMODE(st.st_mode):04o})")
    return None


def check_private(path, euid):
    """Raise CacheError unless `path` is a directory only `euid` can change, in safe parents."""
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for depth in range(1, len(parts) + 1):
        current = os.sep.join(parts[:depth]) or os.sep
        try:
            reason = _problem(current, os.stat(current), euid, leaf=depth == len(parts))
        except OSError as exc:
            reason = f"cannot check {current}: {exc.strerror or exc}"
        if reason:
            raise CacheError(
                f"{APP}: refusing the native-code cache {path}: {reason}. It must be a directory owned by uid "
                f"{euid} and writable by no one else, in directories only root or uid {euid} can change: fix it "
                f"(e.g. chmod 700 {path}) or remove it, or set {CACHE_ENV} to another directory")


def make_private_dir(path, euid, parents=True):
    """Create `path` (and, with `parents`, missing parents) with mode 0700 unless it exists; check it."""
    missing = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current or not parents:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # made at the same moment by a concurrent start: checked below like any other
        except OSError as exc:
            raise CacheError(f"{APP}: cannot create the native-code cache {directory}: {exc.strerror or exc} "
                             f"(set {CACHE_ENV} to a writable directory)") from exc
    check_private(path, euid)


def _digest(handle):
    import hashlib

    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    handle.seek(0)
    return digest.hexdigest()


def _member_target(name):
    """Where a member lands in the tree (`_native/` stripped), as path parts; None for the start-up code and
    the members that stay in the archive."""
    if name == "__main__.py" or name == NATIVE_PREFIX:
        return None
    if name.startswith(ARCHIVE_ONLY[0]) and name.endswith(ARCHIVE_ONLY[1]):
        return None
    relative = name[len(NATIVE_PREFIX):] if name.startswith(NATIVE_PREFIX) else name
    parts = relative.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise CacheError(f"{APP}: the archive has a bad member name {name!r}")
    return parts


def _extract(handle, root, final):
    """Write the archive's tree to a temporary directory in `root`, then rename it to `final`."""
    import shutil
    import tempfile
    import zipfile

    _sweep(root)
    temp = tempfile.mkdtemp(prefix=".tmp-", dir=root)  # mode 0700
    try:
        written = []
        with zipfile.ZipFile(handle) as archive:
            for info in archive.infolist():
                parts = _member_target(info.filename)
                if parts is None:
                    continue
                target = os.path.join(temp, *parts)
                if info.is_dir():
                    os.makedirs(target, 0o700, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), 0o700, exist_ok=True)
                mode = 0o700 if parts[-1].endswith(".so") else 0o600
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
                with os.fdopen(fd, "wb") as out:
                    out.write(archive.read(info))
                written.append(target)
        for target in written:  # durable before the rename; one pass after all writes costs less than one each
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(os.path.join(temp, MARKER), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fsync(fd)  # the marker comes last: a tree holding it holds every member
        finally:
            os.close(fd)
        try:
            os.rename(temp, final)
        except OSError:
            if not os.path.isdir(final):  # not a concurrent start that got there first
                raise
            shutil.rmtree(temp, ignore_errors=True)
        else:
            _fsync_dir(root)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sweep(root):
    """Remove temporary directories left by starts that died mid-extraction (best effort)."""
    import shutil
    import time

    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if name.startswith(".tmp-"):
            path = os.path.join(root, name)
            try:
                if time.time() - os.lstat(path).st_mtime > STALE_TEMP_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


def cache_tree(archive, environ=None, euid=None):
    """The checked cache directory holding this archive's tree, extracting it once."""
    environ = os.environ if environ is None else environ
    euid = os.geteuid() if euid is None else euid
    root = cache_root(euid, environ)
    make_private_dir(root, euid, parents=root != SYSTEM_CACHE)  # /var/cache is the system's to make
    with open(archive, "rb") as handle:  # one open file: the hash and the extraction see the same bytes
        final = os.path.join(root, _digest(handle))
        if not os.path.isfile(os.path.join(final, MARKER)):
            try:
                _remove_incomplete(final, root)
                _extract(handle, root, final)
            except CacheError:
                raise
            except OSError as exc:
                raise CacheError(f"{APP}: cannot extract the archive into {root}: {exc}") from exc
    check_private(final, euid)
    if not os.path.isfile(os.path.join(final, MARKER)):
        raise CacheError(f"{APP}: the native-code cache {final} is incomplete after extracting it; remove it")
    return final


def _remove_incomplete(final, root):
    """Move a tree without its marker (or a file in its place) aside, then delete it."""
    import shutil
    import tempfile

    if not os.path.lexists(final):
        return
    if os.path.isdir(final) and not os.path.islink(final):
        aside = tempfile.mkdtemp(prefix=".tmp-", dir=root)
        os.rename(final, os.path.join(aside, "incomplete"))  # one rename: a concurrent start never sees half
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.unlink(final)


class NativeFinder:
    """Without the cache tree on sys.path: `import psutil` tries the cache again and raises its reason."""

    def __init__(self, archive):
        self.archive = archive
        self.directory = None

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in NATIVE:
            return None
        if self.directory is None:
            try:
                self.directory = cache_tree(self.archive)
            except CacheError as exc:
                # The CLI maps SettingsError to exit 2 with this reason, for every command that needs psutil.
                from nezha_bootstrap.errors import SettingsError

                raise SettingsError([str(exc).replace(f"{APP}: ", "", 1)]) from None
        from importlib.machinery import PathFinder

        return PathFinder.find_spec(fullname, [self.directory])

    def invalidate_caches(self):
        pass


# --- start -------------------------------------------------------------------------------------

def archive_path():
    archive = getattr(globals().get("__loader__"), "archive", None)  # zipimport's loader knows its file
    if not archive:
        archive = os.path.dirname(__file__)
    archive = os.path.abspath(archive)
    if not os.path.isfile(archive):
        sys.exit(f"{APP}: run this as the .pyz file it belongs in, not from {archive}")
    return archive


def only_help(args):
    """True when the command line asks only for help or the version (or is empty: the help)."""
    return not args or any(arg in ("-h", "--help", "--version") for arg in args)


def main():
    if sys.version_info < MIN_PYTHON:
        # Exit 2 (settings), not 1: the first-boot unit does not restart on 2 (RestartPreventExitStatus).
        sys.stderr.write(f"error: {APP} needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer; this is Python "
                         f"{sys.version.split()[0]} ({sys.executable}). Install a newer python3 (RHEL/Rocky/Alma 8: "
                         "`dnf install python39`, then run the tool with python3.9) or use an image whose python3 "
                         "is 3.9+; see the documentation: Get the tool, Python versions\n")
        sys.exit(2)
    archive = archive_path()
    isolate(archive)
    try:
        sys.path[0] = cache_tree(archive)  # isolate() left the archive first
    except CacheError as exc:
        if not only_help(sys.argv[1:]):
            sys.stderr.write(f"error: {str(exc).replace(APP + ': ', '', 1)}\n")
            sys.exit(2)  # the CLI's exit code for settings: never half a command, never a traceback
        sys.meta_path.insert(0, NativeFinder(archive))  # pure Python from the zip; psutil says why not
    module_name, _, attribute = ENTRY_POINT.partition(":")
    __import__(module_name)
    entry = sys.modules[module_name]
    for name in attribute.split("."):
        entry = getattr(entry, name)
    sys.exit(entry())


if __name__ == "__main__":
    main()
