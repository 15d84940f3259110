"""The probe address as the agent meets it: TCP, TLS or not, the HTTP/2 preface, and one verdict per case.

The fakes answer as the real v0.20.13 and v2.3.7 did (tests/data/real/preface.json, replayed first);
the hostile server stands in for what no dashboard is: an HTTP/1-only proxy, a silent port, a banner.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from nezha_bootstrap.handshake import Attempt, Verdict, attempt, classify, judge, probe, status_line
from nezha_bootstrap.testing.fake_v0 import FakeDashboard, Running, serve
from nezha_bootstrap.testing.fake_v1 import FakeV1
from nezha_bootstrap.testing.grpc_port import AgentPort, h2_server_context
from tests.conftest import tls_server_context
from tests.hostile import HostileServer, Route

PREFACE_DATA = Path(__file__).parent / "data" / "real" / "preface.json"
QUICK = 1.0  # seconds a try may take here: every answer on loopback comes within milliseconds


def server_context(ca: trustme.CA, alpn: bool = True) -> ssl.SSLContext:
    context = tls_server_context(ca)
    return h2_server_context(context) if alpn else context


def client_context(ca: trustme.CA | None) -> ssl.SSLContext:
    """What check_probe builds: verification on, the CA bundle's trust, ALPN h2 only."""
    context = ssl.create_default_context()
    if ca is not None:
        ca.configure_trust(context)
    context.set_alpn_protocols(["h2"])
    return context


def verdict_on(port: int, tls: bool, ca: trustme.CA | None, alpn_required: bool = False,
               seconds: float = QUICK) -> Verdict:
    context = client_context(ca)
    return probe("127.0.0.1", port, "127.0.0.1", context if tls else None, context, seconds, alpn_required)


# --- the fakes answer as the real dashboards did ------------------------------------------------------

def real_exchanges() -> list[dict[str, Any]]:
    return list(json.loads(PREFACE_DATA.read_text(encoding="utf-8"))["exchanges"])


def frames(data: bytes) -> list[bytes]:
    """HTTP/2 frames, each with its 9-byte header."""
    found, at = [], 0
    while at + 9 <= len(data):
        end = at + 9 + int.from_bytes(data[at:at + 3], "big")
        found.append(data[at:end])
        at = end
    return found


@pytest.fixture
def fake_port(request: pytest.FixtureRequest, ca: trustme.CA) -> Iterator[int]:
    """The fake standing in for one real port of the recording."""
    version, port = request.param
    if "agent port" in port:
        with AgentPort() as agent:
            yield agent.port
        return
    fake: Any = FakeDashboard("t") if version == "v0.20.13" else FakeV1()
    context = server_context(ca) if "TLS" in port else None
    with Running(fake, ssl_context=context) as running:
        yield running.port


@pytest.mark.parametrize("fake_port", sorted({(e["version"], e["port"]) for e in real_exchanges()}),
                         indirect=True, ids=lambda key: f"{key[0]} {key[1]}")
@pytest.mark.parametrize("sent", ["preface", "client hello"])
def test_the_fakes_answer_the_preface_and_the_client_hello_as_the_real_ports_did(
        request: pytest.FixtureRequest, fake_port: int, sent: str, ca: trustme.CA) -> None:
    version, port = request.node.callspec.params["fake_port"]
    [real] = [e for e in real_exchanges() if (e["version"], e["port"], e["sent"]) == (version, port, sent)]
    real_answer = bytes.fromhex(real["answer_hex"])

    seen = attempt("127.0.0.1", fake_port, client_context(ca) if sent == "client hello" else None, "127.0.0.1", QUICK)

    assert classify(seen.answer, seen.kind == "closed") == classify(real_answer, real.get("closed", False))
    assert seen.alpn == real.get("alpn")
    if classify(real_answer, False) == "h2":  # the first frame as the real one; the rest (an ACK, a WINDOW_UPDATE)
        assert frames(seen.answer)[0] == frames(real_answer)[0]  # come when they come: its place varies (observed)
        assert set(frames(seen.answer)) <= set(frames(real_answer))
    else:
        assert status_line(seen.answer) == status_line(real_answer)


def test_the_recording_holds_the_answers_check_relies_on() -> None:
    kinds = {(e["version"], e["port"].split(" (")[0], e["sent"]): classify(bytes.fromhex(e["answer_hex"]),
                                                                           e.get("closed", False))
             for e in real_exchanges()}

    assert kinds == {
        ("v0.20.13", "agent port", "preface"): "h2", ("v0.20.13", "agent port", "client hello"): "h2",
        ("v0.20.13", "web port", "preface"): "http1", ("v0.20.13", "web port", "client hello"): "http1",
        ("v2.3.7", "listen_port", "preface"): "h2", ("v2.3.7", "listen_port", "client hello"): "http1",
        ("v2.3.7", "https.listen_port", "preface"): "closed", ("v2.3.7", "https.listen_port", "client hello"): "h2",
    }


# --- one verdict per case --------------------------------------------------------------------------

def test_a_plain_grpc_port_without_tls_passes(ca: trustme.CA) -> None:
    with AgentPort() as port:
        verdict = verdict_on(port.port, tls=False, ca=ca)

    assert verdict == Verdict(True, f"127.0.0.1:{port.port} answers the HTTP/2 preface, as gRPC needs (without TLS)")
    assert port.prefaces == 1


def test_a_tls_port_with_alpn_h2_and_a_trusted_certificate_passes(ca: trustme.CA) -> None:
    with AgentPort(tls=server_context(ca)) as port:
        verdict = verdict_on(port.port, tls=True, ca=ca, alpn_required=True)

    assert verdict.ok and verdict.detail.endswith("(TLS verified, ALPN h2)")


@pytest.mark.parametrize("server", ["grpc-go (v0.20.13)", "Go h2c (v2.3.7)"])
def test_tls_against_a_plain_grpc_port_says_use_no_tls(server: str, ca: trustme.CA) -> None:
    with AgentPort() if server.startswith("grpc") else Running(FakeV1()) as running:
        verdict = verdict_on(running.port, tls=True, ca=ca)

    assert verdict == Verdict(False, f"127.0.0.1:{running.port} speaks gRPC without TLS, and the agent would connect "
                                     "with TLS (--tls): it could never connect. Use --no-tls", 3)


@pytest.mark.parametrize("server", ["TLS proxy before grpc-go", "Go HTTPS (v2.3.7)"])
def test_no_tls_against_a_tls_port_says_use_tls(server: str, ca: trustme.CA) -> None:
    context = server_context(ca)
    with AgentPort(tls=context) if server.startswith("TLS") else Running(FakeV1(), ssl_context=context) as running:
        verdict = verdict_on(running.port, tls=False, ca=ca)

    assert verdict == Verdict(False, f"127.0.0.1:{running.port} speaks TLS (HTTP/2 inside), and the agent would "
                                     "connect without TLS (--no-tls): it could never connect. Use --tls", 3)


def test_no_tls_against_a_tls_port_of_an_untrusted_ca_says_use_tls_and_the_ca_bundle(ca: trustme.CA) -> None:
    with AgentPort(tls=server_context(trustme.CA())) as port:
        verdict = verdict_on(port.port, tls=False, ca=ca)

    assert (verdict.ok, verdict.exit_code) == (False, 3)
    assert "speaks TLS" in verdict.detail and "Use --tls" in verdict.detail and "--ca-bundle" in verdict.detail


def test_a_certificate_that_does_not_verify_names_the_ca_bundle(ca: trustme.CA) -> None:
    with AgentPort(tls=server_context(trustme.CA())) as port:
        verdict = verdict_on(port.port, tls=True, ca=ca)

    assert (verdict.ok, verdict.exit_code) == (False, 3)
    assert verdict.detail.startswith(f"TLS verification of 127.0.0.1:{port.port} failed: ")
    assert "--ca-bundle" in verdict.detail


@pytest.mark.parametrize("tls", [False, True])
def test_an_http1_only_server_fails_naming_what_it_answered(tls: bool, ca: trustme.CA) -> None:
    with HostileServer(Route("ok"), tls=server_context(ca, alpn=False) if tls else None) as server:
        verdict = verdict_on(server.port, tls=tls, ca=ca)

    mode = "--tls" if tls else "--no-tls"
    assert verdict == Verdict(False, f"127.0.0.1:{server.port} answers HTTP/1.x ('HTTP/1.1 200 OK') to the HTTP/2 "
                                     f"preface ({mode}): gRPC needs HTTP/2 end to end. A proxy or CDN that passes "
                                     "only HTTP/1.1, or the dashboard's web port instead of its gRPC port?", 3)


def test_the_v0_web_port_given_as_the_probe_port_is_named_an_http1_port(ca: trustme.CA) -> None:
    with serve(FakeDashboard("t")) as running:
        plain, tls = verdict_on(running.port, tls=False, ca=ca), verdict_on(running.port, tls=True, ca=ca)

    assert "answers HTTP/1.x ('HTTP/1.1 404 Not Found')" in plain.detail and plain.exit_code == 3
    assert tls.detail == (f"127.0.0.1:{running.port} speaks plain HTTP ('HTTP/1.1 400 Bad Request'), not TLS "
                          "(--tls), and does not take gRPC without TLS either: is it the dashboard's gRPC port?")


@pytest.mark.parametrize("tls", [False, True])
def test_a_silent_port_fails_as_unreachable_within_the_time(tls: bool, ca: trustme.CA) -> None:
    with HostileServer(Route("silent")) as server:
        started = time.monotonic()
        verdict = verdict_on(server.port, tls=tls, ca=ca, seconds=0.5)
        took = time.monotonic() - started

    step = "the TLS handshake" if tls else "the HTTP/2 preface"
    mode = "--tls" if tls else "--no-tls"
    assert verdict == Verdict(False, f"127.0.0.1:{server.port} accepts connections but did not answer {step} "
                                     f"within 0.5 s ({mode}; a firewall dropping packets, or a service that is "
                                     "not gRPC)", 4)
    assert took < 0.5 + 2.0  # the time given, plus scheduling on a loaded host


def test_a_closed_port_fails_as_unreachable(ca: trustme.CA, closed_port: int) -> None:
    port = closed_port

    assert verdict_on(port, tls=True, ca=ca) == Verdict(
        False, f"127.0.0.1:{port} does not accept connections: Connection refused", 4)


def test_a_port_that_hangs_up_on_either_mode_fails_as_unreachable(ca: trustme.CA) -> None:
    with HostileServer(Route("eof_handshake"), tls=server_context(ca)) as server:
        verdict = verdict_on(server.port, tls=True, ca=ca)

    assert verdict == Verdict(False, f"127.0.0.1:{server.port} closed the connection without answering the TLS "
                                     "handshake (--tls): a proxy without a running backend, or a port that is not "
                                     "gRPC", 4)
    assert server.connections == 2  # the configured try, then one without TLS


def test_a_service_that_is_not_http_is_named_by_its_first_bytes(ca: trustme.CA) -> None:
    with HostileServer(Route("banner", body=b"SSH-2.0-OpenSSH_9.6\r\n")) as server:
        verdict = verdict_on(server.port, tls=False, ca=ca)

    assert verdict == Verdict(False, f"127.0.0.1:{server.port} answered the HTTP/2 preface with bytes that are not "
                                     "HTTP/2 (b'SSH-2.0-OpenSSH_9.6\\r\\n', --no-tls): not a gRPC port?", 3)


def test_tls_without_alpn_fails_where_the_agent_requires_it_and_passes_where_it_does_not(ca: trustme.CA) -> None:
    with AgentPort(tls=server_context(ca, alpn=False)) as port:
        v1_agent = verdict_on(port.port, tls=True, ca=ca, alpn_required=True)
        v0_agent = verdict_on(port.port, tls=True, ca=ca, alpn_required=False)

    assert (v1_agent.ok, v1_agent.exit_code) == (False, 3)
    assert "selects no ALPN protocol" in v1_agent.detail and "missing selected ALPN property" in v1_agent.detail
    assert v0_agent.ok and v0_agent.detail.endswith("(TLS verified, no ALPN)")


def test_a_tls_server_that_refuses_h2_is_an_http1_only_proxy() -> None:
    # OpenSSL's word for a server's no_application_protocol alert; a Python test server cannot send it.
    refused = Attempt("no_h2", "tls", error="TLSV1_ALERT_NO_APPLICATION_PROTOCOL")

    verdict = judge(refused, None, "dash.example:443", tls=True, seconds=5)

    assert verdict == Verdict(False, "dash.example:443 does TLS but refuses HTTP/2 (ALPN h2): gRPC cannot pass. A "
                                     "proxy or CDN that speaks only HTTP/1.1? Point the agent at one that passes "
                                     "gRPC", 3)


@pytest.mark.parametrize(("data", "eof", "kind"), [
    (b"", True, "closed"),
    (b"", False, "silent"),
    (b"HTTP/1.0 400 Bad request version", False, "http1"),
    (b"\x15\x03\x03\x00\x02\x02\x46", True, "tls"),
    (bytes.fromhex("000006040000000000000500004000"), False, "h2"),
    (bytes.fromhex("000008070000000000" + "00" * 8), False, "other"),  # GOAWAY first: no server preface
    (b"SSH-2.0-OpenSSH", False, "other"),
])
def test_the_first_bytes_are_classified(data: bytes, eof: bool, kind: str) -> None:
    assert classify(data, eof) == kind
