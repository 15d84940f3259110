"""The run's environment is a fact, gathered once: children get it scrubbed, warnings read it, no one prints it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from nezha_bootstrap.config import AgentSettings, Settings, build, v1_config
from nezha_bootstrap.effects import Command
from nezha_bootstrap.facts import Facts, gather
from nezha_bootstrap.node import ThisNode
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter
from nezha_bootstrap.v1 import flow as v1_flow

FACTS = Facts(hostname="web-1", primary_ipv4="192.0.2.10", machine_id="0123456789abcdef0123456789abcdef",
              systemd_running=False)
TOKEN = "T0kenT0kenT0kenT0kenT0kenT0ken32"


def test_gather_reads_the_environment_once_and_never_shows_it(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setenv("NEZHA_TOKEN", TOKEN)
    facts = gather(Paths(tmp_path), want_ip=False)
    monkeypatch.setenv("NEZHA_TOKEN", "changed-after-gathering")

    assert facts.environ["NEZHA_TOKEN"] == TOKEN
    assert TOKEN not in repr(facts)
    assert facts == facts.replace(environ={})  # a fact about this process, not about the host


@pytest.mark.integration
def test_a_command_gets_the_gathered_environment_scrubbed_not_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARK", "from-this-process")
    environ = {"PATH": "/usr/bin:/bin", "MARK": "gathered", "NEZHA_TOKEN": TOKEN, "NZ_UUID": "u-1"}
    err = io.StringIO()

    Command(("sh", "-c", 'echo "$MARK|${NEZHA_TOKEN:-none}|${NZ_UUID:-none}"'), environ=environ).apply(
        Reporter(verbosity=1, err=err))

    assert "  | gathered|none|none" in err.getvalue().splitlines()


def test_the_v1_plan_warns_about_the_nz_variables_the_facts_hold(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.setenv("NZ_SERVER", "from-this-process:1")
    settings = Settings(dashboard_url="https://dash.example.com", agent=AgentSettings(secret="S3cretS3cretS3cret"))
    config = v1_config(build(settings, FACTS).config)
    reporter = Reporter(verbosity=-1)

    facts = FACTS.replace(environ={"NZ_UUID": "u-1"})
    v1_flow.dry_run(ThisNode(config, facts, Paths(tmp_path), reporter), None, None, token_mode=False)

    [warning] = reporter.warnings
    assert "NZ_UUID" in warning and "NZ_SERVER" not in warning
