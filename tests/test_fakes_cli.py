"""The fakes as operators run them for a dry rehearsal: `python -m nezha_bootstrap.testing.fake_v0|fake_v1`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

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
