"""Decisions made by an error's type, never by its text: a reworded message changes no behaviour."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from nezha_bootstrap import run as run_mod
from nezha_bootstrap import state as state_mod
from nezha_bootstrap.checks import failed
from nezha_bootstrap.config import AgentSettings, Config, Settings, build
from nezha_bootstrap.errors import AnsweredAsV1, DashboardRefused, TLSRefused
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.generation import Generation
from nezha_bootstrap.http import _handshake_cut
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter
from nezha_bootstrap.state import State
from nezha_bootstrap.v0 import checks as v0_checks
from nezha_bootstrap.v0.api import V1_MESSAGE, Dashboard

FACTS = Facts(hostname="web-1", primary_ipv4="192.0.2.10", machine_id="0123456789abcdef0123456789abcdef",
              systemd_running=False)
TOKEN = "t0ken-for-decisions"


def config_of(**agent: Any) -> Config:
    settings = Settings(dashboard_url="https://dash.example.com", token=TOKEN, agent=AgentSettings(**agent))
    return build(settings, FACTS).config


# --- a v0 request answered as v1: run probes again only for AnsweredAsV1 ----------------------------

class Probed(Exception):
    """probe_generation was called: the refusal was taken for a v1 answer."""


@pytest.fixture()
def probe(monkeypatch: pytest.MonkeyPatch) -> None:
    def probed(*args: object) -> Generation:
        raise Probed
    monkeypatch.setattr(run_mod, "probe_generation", probed)


def probe_after_v1_answer(refused: DashboardRefused) -> Generation:
    config = config_of(secret="s3cretAgent42")
    return run_mod._probe_after_v1_answer(config, refused, run_mod._Clients(config), Reporter(verbosity=-1))


@pytest.mark.parametrize("message", [V1_MESSAGE, "the dashboard says so in other words"])
def test_an_answered_as_v1_refusal_probes_again_whatever_its_words(probe: None, message: str) -> None:
    with pytest.raises(Probed):
        probe_after_v1_answer(AnsweredAsV1(message))


def test_another_refusal_quoting_the_v1_words_is_raised_as_it_is(probe: None) -> None:
    refused = DashboardRefused(f"register: {V1_MESSAGE}")
    with pytest.raises(DashboardRefused) as caught:
        probe_after_v1_answer(refused)
    assert caught.value is refused


# --- check, v0: a TLS refusal fails the dashboard line, any other refusal the token line ---------------

def v0_check_lines(monkeypatch: pytest.MonkeyPatch, refusal: DashboardRefused) -> list[tuple[str, str]]:
    def servers(*args: object) -> object:
        raise refusal
    monkeypatch.setattr(Dashboard, "servers", servers)
    return [(result.name, result.status) for result in v0_checks.check_dashboard(config_of(), None)]  # type: ignore[arg-type]


@pytest.mark.parametrize("message", ["TLS handshake with dash.example.com failed", "the handshake failed"])
def test_a_tls_refusal_fails_the_dashboard_and_skips_the_token(monkeypatch: pytest.MonkeyPatch, message: str) -> None:
    assert v0_check_lines(monkeypatch, TLSRefused(message)) == [("dashboard", "FAIL"), ("token", "skip")]


def test_a_token_refusal_naming_tls_fails_the_token_only(monkeypatch: pytest.MonkeyPatch) -> None:
    refusal = DashboardRefused("the dashboard refused the API token (its TLS proxy said: HTTP 403)")
    assert v0_check_lines(monkeypatch, refusal) == [("dashboard", "ok"), ("token", "FAIL")]


# --- check after an upgrade: the v1 answer is found by its type ----------------------------------------

def test_the_upgraded_check_looks_for_the_v1_answer_by_type(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "root")
    state_mod.save(paths, State(dashboard_url="https://dash.example.com", name="web-1", tag=None,
                                probe_address="dash.example.com", probe_port=5555, tls=True, secret="v0NodeSecret1",
                                machine_id=None, generation="v0"))
    reworded = [failed("token", AnsweredAsV1("token: answered as a newer dashboard"))]
    quoted = [failed("token", DashboardRefused(f"token: {V1_MESSAGE}"))]

    assert [r.name for r in run_mod.upgraded_check(config_of(), paths, reworded)] == ["generation"]
    assert run_mod.upgraded_check(config_of(), paths, quoted) == []


# --- a TLS handshake cut short: read from ssl.SSLError.reason ------------------------------------------

def ssl_error(reason: str, text: str) -> ssl.SSLError:
    error = ssl.SSLError(1, text)
    error.reason = reason
    return error


def test_a_handshake_cut_is_told_by_the_reason_not_the_text() -> None:
    assert _handshake_cut(ssl_error("UNEXPECTED_EOF_WHILE_READING", "EOF occurred in violation of protocol"))
    assert not _handshake_cut(ssl_error("SSLV3_ALERT_HANDSHAKE_FAILURE", "UNEXPECTED_EOF in the text alone"))
    assert _handshake_cut(ssl.SSLEOFError(8, "anything"))
