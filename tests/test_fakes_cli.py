"""The fakes as operators run them for a dry rehearsal: `python -m nezha_bootstrap.testing.fake_v0|fake_v1`."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "nezha_bootstrap" / "testing"
TOKEN = "nzp_" + "R" * 32
PASSWORD = "rehearsal pass"


@contextmanager
def fake(module: str, *args: str) -> Iterator[str]:
    """Start a fake in the foreground on a free loopback port; yield its URL."""
    proc = subprocess.Popen([sys.executable, "-m", f"nezha_bootstrap.testing.{module}", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        yield str(json.loads(line)["url"])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "NO_PROXY": "127.0.0.1", **env}
    return subprocess.run([sys.executable, "-m", "nezha_bootstrap", *args], capture_output=True, text=True,
                          timeout=60, env=environ, stdin=subprocess.DEVNULL)


def secret_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.mark.parametrize("module", ["fake_v0", "fake_v1"])
def test_each_fake_explains_itself_with_help(module: str) -> None:
    done = subprocess.run([sys.executable, "-m", f"nezha_bootstrap.testing.{module}", "--help"],
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0 and "--port" in done.stdout and "--token-file" in done.stdout
    named = re.findall(r"[\w./-]+\.(?:md|sh|py|json|txt)\b", done.stdout)
    assert [name for name in named if not (REPO / name).exists() and not (PACKAGE / name).exists()] == []


@contextmanager
def fake_v0_alone(*args: str) -> Iterator[tuple[dict[str, object], str]]:
    """The v0 fake as an operator starts it: its first line (JSON) and what it prints for a person."""
    proc = subprocess.Popen([sys.executable, "-m", "nezha_bootstrap.testing.fake_v0", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        hello = json.loads(proc.stdout.readline())
        told = "".join(proc.stderr.readline() for _ in range(6))
        yield hello, told
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def printed_command(told: str, command: str) -> tuple[dict[str, str], list[str]]:
    """The environment and the arguments of the printed `nezha-bootstrap COMMAND` line."""
    [line] = [line for line in told.splitlines() if f"nezha-bootstrap {command} " in line]
    words = shlex.split(line)
    env = dict(word.split("=", 1) for word in words[:words.index("nezha-bootstrap")])
    return env, words[words.index("nezha-bootstrap") + 1:]


def test_the_v0_fake_prints_the_flags_with_which_check_passes_and_a_rehearsal_runs(tmp_path: Path) -> None:
    token = secret_file(tmp_path, "token", "T0kenT0kenT0kenT0kenT0kenT0ken32")

    with fake_v0_alone("--token-file", token) as (hello, told):
        env, args = printed_command(told, "check")
        checked = cli(*args, **env)
        env, args = printed_command(told, "run")
        root = tmp_path / "root"
        root.mkdir()
        ran = cli(*[str(root) if arg == "DIR" else arg for arg in args], **env)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert [line.split()[:2] for line in checked.stdout.splitlines()] == [
        ["ok", "dashboard"], ["ok", "token"], ["ok", "probe"], ["ok", "installer"]]
    assert f"--probe-port {hello['probe_port']}" in told and f"--script-sha256 {hello['script_sha256']}" in told
    assert ran.returncode == 0, ran.stderr
    assert "registered and installed" in ran.stdout + ran.stderr


def test_the_v0_fake_never_prints_a_token_given_by_value() -> None:
    token = "T0kenT0kenT0kenT0kenT0kenT0ken32"

    with fake_v0_alone("--token", token) as (hello, told):
        pass

    assert token not in told and token not in json.dumps(hello)
    assert "NEZHA_TOKEN set to the token given to --token" in told


def test_the_v0_fake_takes_its_token_from_a_file_and_check_passes_with_it(tmp_path: Path) -> None:
    token = secret_file(tmp_path, "token", "T0kenT0kenT0kenT0kenT0kenT0ken32")

    with fake("fake_v0", "--token-file", token) as url:
        done = cli("check", "--dashboard-url", url, "--token-file", token, "--probe-port", "1")

    assert "ok    token" in done.stdout, done.stderr


@pytest.mark.parametrize("credentials", ["token", "login"])
def test_reconcile_can_be_rehearsed_against_the_v1_fake(tmp_path: Path, credentials: str) -> None:
    token, password = secret_file(tmp_path, "token", TOKEN), secret_file(tmp_path, "password", PASSWORD)
    manifest = tmp_path / "fleet.json"
    manifest.write_text(json.dumps({"servers": [{"machine_id": "0" * 32, "name": "web-1"}]}))
    args = {"token": ("--token-file", token), "login": ("--username", "ops", "--password-file", password)}

    with fake("fake_v1", "--token-file", token, "--username", "ops", "--password-file", password) as url:
        done = cli("reconcile", str(manifest), "--dashboard-url", url, *args[credentials])

    assert done.returncode == 0, done.stderr
    assert "dry run" in done.stdout
    assert TOKEN not in done.stdout + done.stderr and PASSWORD not in done.stdout + done.stderr
