"""`render` never writes a secret to a terminal: user-data and settings files are for files."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest

from tests.conftest import TOKEN

pytestmark = pytest.mark.integration


def _render_to_terminal(kind: str, **overrides: str | None) -> tuple[int, str]:
    leader, follower = pty.openpty()
    env = {**os.environ, "NEZHA_DASHBOARD_URL": "https://nezha.example.test", "NEZHA_TOKEN": TOKEN}
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "nezha_bootstrap", "render", kind],
            stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.PIPE, env=env, timeout=60,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
        return proc.returncode, b"".join(chunks).decode(errors="replace") + proc.stderr.decode(errors="replace")
    finally:
        os.close(leader)


@pytest.mark.parametrize("kind", ["env", "cloud-init-minimal"])
def test_a_rendered_secret_is_refused_on_a_terminal(kind: str) -> None:
    code, shown = _render_to_terminal(kind)

    assert code == 2
    assert "--output FILE" in shown
    assert TOKEN not in shown


def test_the_unit_holds_no_secret_and_prints_on_a_terminal() -> None:
    code, shown = _render_to_terminal("systemd")

    assert code == 0
    assert "[Service]" in shown


@pytest.mark.parametrize("secret", [
    pytest.param("Agent5ecretAgent5ecret  ", id="trailing spaces"),
    pytest.param("Agent5ecretAgent5ecret\n", id="trailing newline"),
    pytest.param("\tAgent5ecretAgent5ecret", id="leading tab"),
])
@pytest.mark.parametrize("kind", ["env", "cloud-init-minimal"])
def test_an_agent_secret_in_any_spelling_is_refused_on_a_terminal(kind: str, secret: str) -> None:
    code, shown = _render_to_terminal(kind, NEZHA_TOKEN=None, NEZHA_AGENT_SECRET=secret)

    assert code == 2
    assert "--output FILE" in shown
    assert secret.strip() not in shown
