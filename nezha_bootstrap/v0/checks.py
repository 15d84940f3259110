"""`check` on a v0 dashboard: reachable, TLS, the token, the probe port, the installer or the agent release."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nezha_bootstrap.checks import CHECK_TIMEOUT, CheckResult, check_probe, check_release, failed
from nezha_bootstrap.config import Config, display_url
from nezha_bootstrap.errors import BootstrapError, DashboardRefused, InstallerFailed, SettingsError, TLSRefused
from nezha_bootstrap.retry import Transient
from nezha_bootstrap.v0.direct import v0_release

if TYPE_CHECKING:
    import httpx  # its one home is http.py; here only for the client's type

UNLIKELY_TAG = "nezha-bootstrap-check-0f3c9e"  # lists nothing, creates nothing


def check_dashboard(config: Config, client: httpx.Client) -> list[CheckResult]:
    """Reachable, TLS valid, token accepted, v0 generation: one GET of an unlikely tag."""
    from nezha_bootstrap.v0.api import Dashboard

    shown = display_url(config.dashboard_url)
    if not config.token:
        return [CheckResult("token", "FAIL", "a v0 dashboard registers servers with its API token: set NEZHA_TOKEN "
                            "or --token-file", SettingsError.exit_code)]
    try:
        Dashboard(client, config.dashboard_url, config.token, config.token_source).servers(UNLIKELY_TAG, CHECK_TIMEOUT)
    except Transient as exc:
        return [failed("dashboard", exc), CheckResult("token", "skip", "not checked: dashboard unreachable")]
    except DashboardRefused as exc:
        tls = isinstance(exc, TLSRefused)
        first = failed("dashboard", exc) if tls else CheckResult("dashboard", "ok", f"{shown} answers")
        second = CheckResult("token", "skip", "not checked: TLS failed") if tls else failed("token", exc)
        return [first, second]
    scheme = "TLS verified" if config.dashboard_url.startswith("https:") else "plain http"
    return [
        CheckResult("dashboard", "ok", f"{shown} answers ({scheme})"),
        CheckResult("token", "ok", "accepted; the dashboard is v0 with the token API"),
    ]


def check_installer(config: Config, client: httpx.Client) -> CheckResult:
    """The install script downloads and has the pinned hash."""
    from nezha_bootstrap.v0.script import download_script

    try:
        download_script(client, config, CHECK_TIMEOUT, notify=lambda message: None)  # as `run` downloads it
    except Transient as exc:
        return CheckResult("installer", "FAIL", f"downloading {display_url(config.script_url)}: {exc}",
                           InstallerFailed.exit_code)
    except BootstrapError as exc:
        return failed("installer", InstallerFailed(str(exc)) if not isinstance(exc, InstallerFailed) else exc)
    hashed = "hash matches" if config.script_sha256 else "no hash pinned"
    return CheckResult("installer", "ok", f"{display_url(config.script_url)} downloads, {hashed}")


def run_checks(config: Config, client: httpx.Client, downloads: httpx.Client) -> list[CheckResult]:
    """The v0 checks in order; `client` is the dashboard's httpx client, `downloads` the one of downloads
    (the system store and --ca-bundle, as `run` downloads)."""
    first = [*check_dashboard(config, client), check_probe(config)]
    release = v0_release(config)
    return [*first, check_release(release, downloads) if release else check_installer(config, downloads)]
