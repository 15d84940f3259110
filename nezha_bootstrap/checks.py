"""`check`: a preflight that changes nothing. The result type and the checks every generation shares."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nezha_bootstrap.config import Config
from nezha_bootstrap.errors import BootstrapError, DashboardUnreachable, InstallerFailed, SettingsError
from nezha_bootstrap.retry import Transient

if TYPE_CHECKING:
    import httpx  # its one home is http.py; here only for the client's type

    from nezha_bootstrap.agent import Release
    from nezha_bootstrap.generation import Generation

CHECK_TIMEOUT = 10.0
PROBE_TIMEOUT = 5.0  # connect, TLS and the preface's answer: a real gRPC server answers in one round trip


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "ok", "FAIL" or "skip"
    detail: str
    exit_code: int = 0
    cause: BaseException | None = field(default=None, compare=False, repr=False)  # what failed it, to decide on

    @property
    def ok(self) -> bool:
        return self.status != "FAIL"

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status, "detail": self.detail, "exit_code": self.exit_code}


def failed(name: str, exc: BootstrapError | Transient) -> CheckResult:
    """A FAIL result carrying the exit code of `exc` (a network failure: that of DashboardUnreachable)."""
    code = exc.exit_code if isinstance(exc, BootstrapError) else DashboardUnreachable.exit_code
    return CheckResult(name, "FAIL", str(exc), code, cause=exc)


def check_probe(config: Config, alpn_required: bool = False) -> CheckResult:
    """The agent's first exchange on the probe address: TCP, TLS as configured (the CA bundle's trust,
    ALPN h2), then the HTTP/2 preface. A TLS mismatch, an HTTP/1-only proxy or CDN, or a wrong, closed or
    silent port fails here; otherwise the agent would be installed and never come online. `alpn_required`:
    the agent refuses TLS without ALPN h2 (the v1/v2 agent: see handshake.judge)."""
    from nezha_bootstrap.handshake import probe
    from nezha_bootstrap.http import tls_context

    context = _alpn_h2(tls_context(config.ca_bundle))  # also for trying TLS where --no-tls met TLS
    verdict = probe(config.probe_address, config.probe_port, config.probe_address,
                    context if config.tls else None, context, PROBE_TIMEOUT, alpn_required)
    return CheckResult("probe", "ok" if verdict.ok else "FAIL", verdict.detail, verdict.exit_code)


def _alpn_h2(context: ssl.SSLContext) -> ssl.SSLContext:
    context.set_alpn_protocols(["h2"])  # what the gRPC agent offers, and all it accepts
    return context


def check_generation(config: Config, client: httpx.Client) -> tuple[CheckResult, Generation | None]:
    """Which generation answers: the three credential-free probes once (or --dashboard as given)."""
    from nezha_bootstrap.generation import Generation, detect, http_sender

    if config.agent.generation == "v0":
        return CheckResult("generation", "skip", "v0, as --dashboard says (not probed)"), Generation.V0
    if config.agent.generation == "v1":
        return CheckResult("generation", "skip", "v1 or newer, as --dashboard says (not probed)"), Generation.V1
    try:
        found = detect(http_sender(client, config.dashboard_url), CHECK_TIMEOUT)
    except (Transient, BootstrapError) as exc:
        return failed("generation", exc), None
    return CheckResult("generation", "ok", f"{found.value} (three requests without credentials)"), found


def check_release(release: Release, client: httpx.Client) -> CheckResult:
    """checksums.txt and the agent zip download, the zip's SHA-256 matches, it holds nezha-agent (from a bundle:
    the zip it carries, against the hash pinned in it, and what the bundle carries)."""
    import os

    from nezha_bootstrap.agent import fetch_binary

    try:  # as `run` downloads and extracts it; the binary is read through (its CRC checked) and dropped
        with open(os.devnull, "wb") as dropped:
            fetch_binary(client, release, CHECK_TIMEOUT, lambda message: None, dropped)
    except Transient as exc:
        return CheckResult("release", "FAIL", f"downloading v{release.version}: {exc}", InstallerFailed.exit_code)
    except BootstrapError as exc:
        if isinstance(exc, SettingsError):  # a bundle without this agent: exit 2, as `run` stops
            return CheckResult("release", "FAIL", "; ".join(exc.problems), exc.exit_code)
        return failed("release", InstallerFailed(str(exc)) if not isinstance(exc, InstallerFailed) else exc)
    pinned = " and the pinned hash" if release.pinned_sha256 else ""
    if release.bundled is not None:
        carries = release.bundled.summary()
        return CheckResult("release", "ok", f"v{release.version} {release.asset} is in this bundle; its SHA-256 "
                           f"matches the one pinned at bundling{pinned} (the bundle carries {carries})")
    return CheckResult("release", "ok", f"v{release.version} {release.asset} downloads; its SHA-256 matches "
                       f"checksums.txt{pinned}")
