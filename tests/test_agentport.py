"""agentport.py: the agent's port looked at as the agent's gRPC client opens it, on 127.0.0.1."""

from __future__ import annotations

import ssl

import pytest
import trustme

from nezha_bootstrap import agentport
from nezha_bootstrap.online import NOTHING, Look, Outcome
from nezha_bootstrap.testing import grpc_port
from tests.conftest import tls_server_context


def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def test_a_plain_grpc_port_answers_the_http2_preface() -> None:
    with grpc_port.AgentPort() as served:
        assert agentport.probe("127.0.0.1", served.port, tls=False, context=ssl.create_default_context) == NOTHING


def test_a_tls_port_with_a_trusted_certificate_is_what_tls_expects(ca: trustme.CA) -> None:
    with grpc_port.AgentPort(tls=tls_server_context(ca)) as served:
        assert agentport.probe("127.0.0.1", served.port, tls=True, context=lambda: client_tls(ca)) == NOTHING


def test_tls_against_a_plain_port_is_a_tls_mismatch() -> None:
    with grpc_port.AgentPort() as served:
        look = agentport.probe("127.0.0.1", served.port, tls=True, context=ssl.create_default_context, timeout=2)
    assert look.outcome is Outcome.TLS_ON_PLAIN, look


def test_plain_against_a_tls_port_is_a_tls_mismatch(ca: trustme.CA) -> None:
    with grpc_port.AgentPort(tls=tls_server_context(ca)) as served:
        look = agentport.probe("127.0.0.1", served.port, tls=False, context=ssl.create_default_context, timeout=2)
    assert look.outcome is Outcome.PLAIN_ON_TLS, look


def test_a_closed_port_is_refused(closed_port: int) -> None:
    port = closed_port
    assert agentport.probe("127.0.0.1", port, tls=False, context=ssl.create_default_context) == Look(
        Outcome.PORT_REFUSED, f"connect to 127.0.0.1:{port}: connection refused")


@pytest.mark.parametrize("tls", [False, True])
def test_a_port_that_accepts_and_never_answers_is_silent(tls: bool) -> None:
    with grpc_port.AgentPort(silent=True) as served:
        look = agentport.probe("127.0.0.1", served.port, tls=tls, context=ssl.create_default_context, timeout=0.3)
    assert look.outcome is Outcome.PORT_SILENT, look


def test_the_first_probe_waits_so_that_a_quick_dashboard_never_sees_one() -> None:
    now = [0.0]
    probes: list[str] = []
    port = agentport.AgentPort("h", 1, False, ssl.create_default_context, clock=lambda: now[0],
                               look_once=lambda: probes.append("probe") or NOTHING)
    assert port.look() == NOTHING and probes == []
    now[0] += port.start_after
    assert port.look() == NOTHING and probes == ["probe"]


def test_a_tls_mismatch_counts_at_once() -> None:
    seen = Look(Outcome.TLS_ON_PLAIN, "wrong version number")
    port = agentport.AgentPort("h", 1, True, ssl.create_default_context, look_once=lambda: seen, start_after=0)
    assert port.look() == seen


def test_a_failure_counts_only_when_a_later_probe_agrees() -> None:
    now = [0.0]
    looks = [Look(Outcome.PORT_REFUSED, "refused"), NOTHING, Look(Outcome.PORT_REFUSED, "refused"),
             Look(Outcome.PORT_REFUSED, "refused")]
    port = agentport.AgentPort("h", 1, False, ssl.create_default_context, clock=lambda: now[0],
                               look_once=lambda: looks.pop(0), start_after=0)
    assert port.look() == Look(None, "refused")  # first sighting: not yet a verdict
    assert port.look() == NOTHING  # too soon to probe again
    now[0] += agentport.CONFIRM_AFTER
    assert port.look() == NOTHING  # the port answered this time: start over
    now[0] += agentport.CONFIRM_AFTER
    assert port.look() == Look(None, "refused")
    now[0] += agentport.CONFIRM_AFTER
    assert port.look() == Look(Outcome.PORT_REFUSED, "refused")
