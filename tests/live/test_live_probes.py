"""Live: the three credential-free probes classify the dashboard as declared, and `check` says the truth."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from nezha_bootstrap.generation import detect, http_sender
from nezha_bootstrap.http import make_client

from .conftest import GENERATIONS, SETTINGS, need, need_generation, tool

pytestmark = pytest.mark.integration


def test_the_probes_classify_the_dashboard_as_declared() -> None:
    need_generation(*GENERATIONS)
    with make_client() as http:
        found = detect(http_sender(http, SETTINGS.url), 30.0)

    assert found.value == SETTINGS.generation


def test_check_names_the_generation_and_passes_with_the_given_credentials(release_host_or_none: str | None,
                                                                         tmp_path: Path) -> None:
    need_generation(*GENERATIONS)
    args, env = check_arguments(release_host_or_none, tmp_path)

    ran = tool("check", *args, secrets_env=env)

    assert ran.exit_code == 0, ran.stdout + ran.stderr
    assert f"generation {SETTINGS.generation}" in ran.stdout + ran.stderr


def test_check_with_a_wrong_token_says_refused(release_host_or_none: str | None, tmp_path: Path) -> None:
    need_generation("v0")
    need("TOKEN")
    args, env = check_arguments(release_host_or_none, tmp_path)
    env["NEZHA_TOKEN"] = "WRONGwrongWRONGwrongWRONGwrong12"

    ran = tool("check", *args, secrets_env=env)

    assert ran.exit_code == 3, ran.stdout + ran.stderr
    assert "refused the API token" in ran.stdout + ran.stderr


def check_arguments(release: str | None, root: Path) -> tuple[list[str], dict[str, str]]:
    """`check`'s settings for this dashboard: v0 token and the direct method; v1/v2 agent secret."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
    args = ["--root", str(root), "--dashboard-url", SETTINGS.url, "--name", "live-check"]
    args += ["--tls" if SETTINGS.tls else "--no-tls"]
    env: dict[str, str] = {}
    if SETTINGS.is_v0:
        need("TOKEN")
        env["NEZHA_TOKEN"] = SETTINGS.token
        args += ["--probe-port", SETTINGS.probe_port or "5555"]
    else:
        need("AGENT_SECRET")
        env["NEZHA_AGENT_SECRET"] = SETTINGS.agent_secret
        if SETTINGS.has_pat:
            env["NEZHA_TOKEN"] = SETTINGS.token
        if SETTINGS.probe_port:
            args += ["--probe-port", SETTINGS.probe_port]
    if release is None:
        if not SETTINGS.is_v0:
            pytest.skip("set NEZHA_LIVE_AGENT_DIR: `check` downloads the agent release")
        pytest.skip("set NEZHA_LIVE_AGENT_DIR: v0 `check` downloads the installer or the agent release")
    args += ["--method", "direct", "--agent-base-url", release, "--agent-version", SETTINGS.version]
    return args, env
