"""`check` on a v1/v2 dashboard: the agent secret, the uuid, the agent's gRPC port and the release."""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING

from nezha_bootstrap.agent import Release, asset_name
from nezha_bootstrap.checks import CHECK_TIMEOUT, CheckResult, check_probe, check_release, failed
from nezha_bootstrap.config import AGENT_V1, Config, is_access_token, plaintext_problem, v1_config
from nezha_bootstrap.errors import BootstrapError, DashboardRefused, SettingsError
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.generation import Generation
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.retry import Transient

if TYPE_CHECKING:
    import httpx  # its one home is http.py; here only for the client's type

    from nezha_bootstrap.v1.api import V2Api


def check_secret(config: Config, generation: Generation) -> CheckResult:
    """A v1/v2 agent enrolls with the agent secret; only that enrollment can tell a wrong one."""
    if not config.agent.secret:
        return CheckResult("secret", "FAIL", f"the dashboard is {generation.value}: agents enroll with an agent "
                           "secret; set NEZHA_AGENT_SECRET_FILE or NEZHA_AGENT_SECRET", SettingsError.exit_code)
    return CheckResult("secret", "ok", "given; not tried here (a wrong one counts towards the dashboard's WAF, "
                       "only the agent's enrollment shows it)")


def check_identity(config: Config, facts: Facts, paths: Paths) -> CheckResult:
    """The uuid the agent would enroll with: --uuid, the state's for this machine-id, or derived from it."""
    from nezha_bootstrap.state import load
    from nezha_bootstrap.v1.flow import machine_identity

    try:
        ident = machine_identity(config.agent, facts, load(paths, move_aside=False))
    except BootstrapError as exc:
        return CheckResult("identity", "FAIL", str(exc).replace("invalid settings:\n  - ", ""), exc.exit_code)
    return CheckResult("identity", "ok", f"uuid {ident.uuid} (from {ident.source})")


def check_token(config: Config, generation: Generation, client: httpx.Client) -> list[CheckResult]:
    """An access token (nzp_...) is tried as the run uses it, without writing: one read of the server list
    (nezha:inventory:read), one refused write (nezha:server:write), and a read of the groups when one is
    named. One attempt each: the WAF counts failed credentials. A bad token fails here, not after the install."""
    from nezha_bootstrap.v1.api import V2Api

    if not generation.has_access_tokens:
        return [CheckResult("token", "FAIL", f"the dashboard is {generation.value}: access tokens (nzp_...) exist "
                            "from v2.1.0; drop NEZHA_TOKEN, or name servers with `reconcile`",
                            SettingsError.exit_code)]
    assert config.token is not None  # is_access_token(config.token) holds: see run_checks
    api = V2Api(client, config.dashboard_url, config.token, deadline=CHECK_TIMEOUT)
    named = bool(config.naming.group or config.naming.group_id is not None)
    try:
        api.once("GET", "/api/v1/server", "token check", CHECK_TIMEOUT)
    except (Transient, BootstrapError) as exc:
        skipped = [CheckResult("group", "skip", "not checked: the token failed")] if named else []
        return [failed("token", exc), *skipped]
    try:
        api.write_scope_once(CHECK_TIMEOUT)
        token = CheckResult("token", "ok", "the access token lists servers and may change them "
                            "(nezha:server:write, tried without a write)")
    except (Transient, BootstrapError) as exc:
        token = failed("token", exc)
    return [token, _check_group(config, api)] if named else [token]


def _check_group(config: Config, api: V2Api) -> CheckResult:
    from nezha_bootstrap.v1.naming import group_shown, missing_group

    naming = config.naming
    try:
        group = api.find_group(naming.group, naming.group_id)
    except (Transient, BootstrapError) as exc:
        return failed("group", exc)
    if group is not None:
        return CheckResult("group", "ok", f"{group_shown(naming)} exists (id {group.id}, {len(group.members)} servers)")
    if naming.create_group:
        return CheckResult("group", "ok", f"{group_shown(naming)} does not exist yet; --create-group makes it")
    return CheckResult("group", "FAIL", missing_group(str(naming.group)), DashboardRefused.exit_code)


def run_checks(config: Config, generation: Generation, facts: Facts, paths: Paths, client: httpx.Client,
               downloads: httpx.Client) -> list[CheckResult]:
    """The v1/v2 checks in order, after the generation's: secret, token, identity, gRPC port, release."""
    config = v1_config(config)
    plaintext = plaintext_problem(config) if config.agent.secret else None
    if plaintext:
        return [CheckResult("settings", "FAIL", plaintext, SettingsError.exit_code)]
    token = check_token(config, generation, client) if is_access_token(config.token) else []
    return [check_secret(config, generation), *token, check_identity(config, facts, paths),
            check_probe(config, alpn_required=True),
            _check_release(config, downloads)]


def _check_release(config: Config, downloads: httpx.Client) -> CheckResult:
    try:
        asset = asset_name(platform.machine())
    except BootstrapError as exc:  # no agent release for this architecture
        return failed("release", exc)
    release = Release(config.agent.base_url, config.agent.version or AGENT_V1, asset, config.agent.sha256,
                      config.agent.bundle)
    return check_release(release, downloads)
