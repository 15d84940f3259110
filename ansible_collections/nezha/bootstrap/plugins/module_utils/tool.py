# Copyright: nezha-bootstrap contributors
# MIT License (see LICENSE at the repository's root)
"""Runs the nezha-bootstrap tool for the collection's modules: the zipapp or the installed command,
secrets through 0600 files (never argv), its --json result read back, its exit codes as failures.

The modules carry out the tool itself; nothing here decides what a run does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile

MIN_PYTHON = (3, 9)  # the tool's own floor (RHEL 9's python3)
DEFAULT_PYZ_DEST = "/opt/nezha-bootstrap/ansible/nezha-bootstrap.pyz"
TOOL_NAME = "nezha-bootstrap"
TOOL_DIRS = ["/opt/nezha-bootstrap/bin"]  # where install-service and the cloud-init user-data put it

TOOL_OPTIONS = dict(
    pyz=dict(type="str"),  # the action plugin replaces the controller's path with the upload's on this host
    pyz_sha256=dict(type="str"),
    pyz_dest=dict(type="path", default=DEFAULT_PYZ_DEST),
    executable=dict(type="path"),
)


def sha256_of(path):
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tool_command(module):
    """The argv prefix that starts the tool, and whether a zipapp was put in place (a change).

    pyz: the zipapp the action plugin uploaded, checked against its SHA-256 and moved to pyz_dest
    (in check mode it runs from the upload and nothing is moved); it runs with this host's python3,
    the interpreter running the module. Else `executable`, or `nezha-bootstrap` on PATH or in
    /opt/nezha-bootstrap/bin.
    """
    if module.params.get("pyz_sha256"):
        return _zipapp_command(module)
    return installed_command(module), False


def controller_command(module):
    """The argv prefix that starts the tool where the zipapp already lies (the fleet module, on the
    controller): `pyz` with this python3, after its pinned `pyz_sha256` if any is checked; else as
    installed_command."""
    pyz = module.params["pyz"]
    if not pyz:
        return installed_command(module)
    if sys.version_info[:2] < MIN_PYTHON:
        module.fail_json(msg="nezha-bootstrap needs python3 >= %d.%d; this is %s" % (MIN_PYTHON + (sys.executable,)))
    pinned = (module.params["pyz_sha256"] or "").strip().lower()
    if pinned and sha256_of(pyz) != pinned:
        module.fail_json(msg="%s has SHA-256 %s, not the pinned %s: refusing to run it" % (pyz, sha256_of(pyz), pinned))
    return _python_argv(pyz)


def installed_command(module):
    """`executable`, else `nezha-bootstrap` on PATH or in /opt/nezha-bootstrap/bin."""
    if module.params.get("executable"):
        return [module.params["executable"]]
    return [module.get_bin_path(TOOL_NAME, required=True, opt_dirs=TOOL_DIRS)]


def flag(name):
    """The tool's flag for a module option: `agent_secret_file` -> `--agent-secret-file`."""
    return "--" + name.replace("_", "-")


def _zipapp_command(module):
    if sys.version_info[:2] < MIN_PYTHON:
        module.fail_json(msg="nezha-bootstrap needs python3 >= %d.%d on the host; %s is %s: set "
                             "ansible_python_interpreter to a newer python3" % (
                                 MIN_PYTHON + (sys.executable, ".".join(map(str, sys.version_info[:3])))))
    expected = module.params["pyz_sha256"].strip().lower()
    dest = module.params["pyz_dest"]
    upload = module.params.get("pyz")
    placed = False
    if upload:
        _check_hash(module, upload, expected, "the uploaded zipapp")
        if module.check_mode:
            return _python_argv(upload), True
        directory = os.path.dirname(dest)
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o755)
        module.atomic_move(upload, dest)
        os.chmod(dest, 0o644)
        placed = True
    if not os.path.exists(dest):
        module.fail_json(msg="the zipapp %s is not on the host; give the task `pyz` (a file on the controller)" % dest)
    _check_hash(module, dest, expected, dest)
    return _python_argv(dest), placed


def _check_hash(module, path, expected, what):
    found = sha256_of(path)
    if found != expected:
        module.fail_json(msg="%s has SHA-256 %s, not the %s expected: refusing to run it" % (what, found, expected))


def _python_argv(pyz):
    # -I: the zipapp drops the host's site-packages itself; -I also ignores PYTHON* variables.
    return [sys.executable, "-I", pyz]


class SecretFiles:
    """Secrets written to 0600 files in a fresh 0700 directory, removed on exit: the tool reads
    them with --token-file and friends, so no secret is ever on a command line."""

    def __init__(self, base=None):
        self._base = base
        self._dir = None
        self.shown = {}  # path -> how a message names it: the file is gone when the task reports

    def __enter__(self):
        self._dir = tempfile.mkdtemp(prefix="nezha-bootstrap-", dir=self._base)
        return self

    def write(self, name, value, shown=None):
        path = os.path.join(self._dir, name)
        self.shown[path] = shown or "the task's %s option" % name.replace("-", "_")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(value + "\n")
        return path

    def __exit__(self, *exc_info):
        shutil.rmtree(self._dir, ignore_errors=True)


def secret_args(files, secrets):
    """`--FLAG-file PATH` for each (flag, secret) whose value is set; the file's name is the flag's."""
    argv = []
    for flag, value in secrets:
        if value:
            argv += ["--%s-file" % flag, files.write(flag, value)]
    return argv


def run_tool(module, argv, files=None):
    """Run the tool with --json; its result object (or a failure naming what went wrong)."""
    rc, stdout, stderr = module.run_command(argv, check_rc=False, environ_update={"PYTHONIOENCODING": "utf-8"})
    for path, shown in (files.shown.items() if files else ()):
        stdout, stderr = stdout.replace("--token-file " + path, shown), stderr.replace("--token-file " + path, shown)
        stdout, stderr = stdout.replace(path, shown), stderr.replace(path, shown)
    result = _last_json(stdout)
    if result is None:
        module.fail_json(msg="nezha-bootstrap printed no JSON result (exit %d): %s" % (rc, _tail(stderr) or stdout),
                         rc=rc, stderr=stderr)
    if rc != 0:
        reason = result.get("exit_reason") or "exit code %d" % rc
        error = result.get("error")
        error = "\n".join(error) if isinstance(error, list) else error  # a list of lines; one string before 0.2
        message = "nezha-bootstrap %s failed: %s (exit %d: %s)" % (argv_command(argv), error, rc, reason)
        module.fail_json(msg=message, rc=rc, exit_reason=reason, nezha=result, stderr=stderr)
    return result


def argv_command(argv):
    """The tool's command in argv (run, uninstall, reconcile)."""
    for word in argv:
        if word in ("run", "uninstall", "reconcile"):
            return word
    return "?"


def _last_json(stdout):
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def _tail(text, lines=5):
    return "\n".join(text.strip().splitlines()[-lines:])
