"""`run` and `check`: resolve the dashboard's generation once, then hand off to v0/ or v1/.

The generation comes from `--dashboard v0|v1`, else the state cached for this dashboard URL, else
the three credential-free probes (generation.py). A run with only an API token and no v1/v2
setting is a v0 run without probes: a finished v0 node's rerun keeps its promise of no request.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable

from nezha_bootstrap import state as state_mod
from nezha_bootstrap.config import (
    Config,
    display_url,
    is_access_token,
    plaintext_problem,
    same_dashboard,
    v1_config,
)
from nezha_bootstrap.errors import AnsweredAsV1, DashboardRefused, DashboardUnreachable, SettingsError
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.node import ThisNode
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter, RunResult
from nezha_bootstrap.state import State

if TYPE_CHECKING:
    import httpx  # its one home is http.py; here only for the client's type

    from nezha_bootstrap.checks import CheckResult
    from nezha_bootstrap.generation import Generation  # below, where used: a plain v0 run never probes

ClientFactory = Callable[[], "httpx.Client"]


# The installer and the agent act on the system they run on (its service manager, /etc/init.d, the
# enrollment), whatever --root says: observed, the real agent's `service install` under a root wrote the
# host's /etc/init.d/nezha-agent. Nothing under a root is run but the stubs (effects.Command.confine).
UNDER_ROOT = (
    "run --root {root}: the agent's installer and the agent act on this machine (its service manager and "
    "enrollment), not on {root}, so run refuses another root. To prepare an image, use "
    "`nezha-bootstrap install-service --root {root}` (the image registers itself at its first boot; the "
    "documentation's tutorial: A golden image); to rehearse with the fakes' stub installer and agent, add --rehearsal"
)


def needs_probe(config: Config) -> bool:
    """Whether the generation must be resolved: any v1/v2 setting, or an access token (nzp_...)."""
    return config.agent.generation != "v0" and (config.agent.active or is_access_token(config.token))


def run(config: Config, facts: Facts, paths: Paths, reporter: Reporter, *, dry_run: bool,
        rehearsal: bool = False) -> RunResult:
    """Carry out `run` (or, with `dry_run`, describe it) on whichever generation the dashboard is."""
    from nezha_bootstrap.v0 import flow as v0_flow

    if not dry_run and not rehearsal and not paths.is_host_root:
        raise SettingsError([UNDER_ROOT.format(root=paths.root)])

    this = ThisNode(config, facts, paths, reporter)
    if not needs_probe(config):
        return v0_flow.dry_run(this) if dry_run else v0_flow.run(this)
    with contextlib.closing(_Clients(config)) as clients:
        return _resolved_run(this, clients, dry_run=dry_run)


def _resolved_run(this: ThisNode, clients: _Clients, *, dry_run: bool) -> RunResult:
    """`run` once the generation must be resolved: cached, or probed with the dashboard client."""
    from nezha_bootstrap.v0 import flow as v0_flow

    config, paths, reporter = this.config, this.paths, this.reporter
    saved = state_mod.load(paths, move_aside=not dry_run) if paths.state_file.exists() else None
    if dry_run and cached_generation(config, saved) is None and config.agent.generation == "auto":
        return _unprobed_plan(this, saved)
    generation = resolve_generation(config, saved, clients.dashboard, reporter, dry_run=dry_run)
    reporter.context.update(generation=generation.value, dashboard=display_url(config.dashboard_url))
    if generation.is_v0:
        check_v0_settings(config)
        if dry_run:
            return v0_flow.dry_run(this)
        try:
            return v0_flow.run(this)
        except DashboardRefused as refused:
            generation = _probe_after_v1_answer(config, refused, clients, reporter)
        saved = state_mod.load(paths)
    return _run_v1(this, generation, saved, clients, dry_run=dry_run)


def _probe_after_v1_answer(config: Config, refused: DashboardRefused, clients: _Clients,
                           reporter: Reporter) -> Generation:
    """A v0 request answered the way only v1/v2 dashboards answer (the cached generation is stale: the
    dashboard was upgraded at the same URL): with an agent secret, probe again and go on as v1/v2."""
    if not isinstance(refused, AnsweredAsV1) or not config.agent.secret or config.agent.generation == "v0":
        raise refused
    reporter.info("the dashboard answered as v1 or newer, not as the v0 the state recorded: probing it again")
    found = probe_generation(config, clients.dashboard, reporter)
    if found.is_v0:
        raise refused
    reporter.context.update(generation=found.value)
    return found


def _run_v1(this: ThisNode, generation: Generation, saved: State | None, clients: _Clients, *,
            dry_run: bool) -> RunResult:
    from nezha_bootstrap.generation import Generation
    from nezha_bootstrap.v1 import flow as v1_flow

    token_mode = token_names_server(this.config, generation)
    check_v1_settings(this.config, generation)
    this = this.with_config(v1_config(this.config))
    if generation is Generation.V1_0 and not this.config.agent.version:
        this.reporter.warn("a v1.0.x dashboard needs an agent <= v1.0.x (agent v2 needs a dashboard >= v1.1.1); "
                      "if yours is v1.0.x, set --agent-version")
    if dry_run:
        return v1_flow.dry_run(this, generation, saved, token_mode=token_mode)
    return v1_flow.run(this, generation, client=clients.existing(), token_mode=token_mode)


class _Clients:
    """The dashboard's HTTP client, made on first use: a --dry-run that probes nothing never loads httpx."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._client: httpx.Client | None = None

    def dashboard(self) -> httpx.Client:
        if self._client is None:
            from nezha_bootstrap.http import make_client

            # urls: over plain http the trust store is not loaded (tls_context; ~50 ms of CPU a run)
            self._client = make_client(self._config.ca_bundle, urls=(self._config.dashboard_url,))
        return self._client

    def existing(self) -> httpx.Client | None:
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def cached_generation(config: Config, saved: State | None) -> Generation | None:
    """The generation the state recorded for this dashboard URL, if any."""
    from nezha_bootstrap.generation import Generation

    if saved is None or not same_dashboard(saved.dashboard_url, config.dashboard_url):
        return None
    if saved.generation:
        return Generation(saved.generation)
    return Generation.V0 if saved.secret else None  # a v0 state written before generations were recorded


def resolve_generation(config: Config, saved: State | None, client: ClientFactory, reporter: Reporter, *,
                       dry_run: bool = False) -> Generation:
    """--dashboard v0|v1, else the generation cached in the state for this URL, else the probes.

    The cache is not trusted where the settings disagree with it: settings that cannot run on v0 (an agent
    secret without a v0 API token) against a cached v0 mean the dashboard may have been upgraded at the same
    URL, and so does an agent secret given beside the token where the v0 run that cached it had none (the
    operator did what `check` says after an upgrade): probed once. --dashboard v1 overrides a cached v0.
    Unchanged settings keep the cache: a finished node's rerun sends nothing. An access token is sent only
    where the probes saw v2.1+, whatever --dashboard says (a token sent to an older dashboard is one more
    failed credential for its WAF); a dry run sends nothing, so it trusts --dashboard v1.
    """
    from nezha_bootstrap.generation import Generation

    if config.agent.generation == "v0":
        return Generation.V0
    cached = cached_generation(config, saved)
    v0_token = bool(config.token) and not is_access_token(config.token)
    if cached and cached.is_v0 and config.agent.secret and not v0_token:
        reporter.info(f"the state says {display_url(config.dashboard_url)} was v0, but the settings are for "
                      "v1/v2: probing it again (a dashboard upgraded at the same URL)")
        cached = None
    if cached and cached.is_v0 and config.agent.secret and saved is not None and not saved.agent_secret_given:
        reporter.info(f"the state says {display_url(config.dashboard_url)} was v0, and an agent secret is given "
                      "now beside the API token: probing it once (a dashboard upgraded at the same URL)")
        cached = None
    if cached and cached.is_v0 and config.agent.generation == "v1":
        cached = None
    if cached and (cached is not Generation.V1 or dry_run or not is_access_token(config.token)):
        return cached
    if config.agent.generation == "v1" and (dry_run or not is_access_token(config.token)):
        return Generation.V1
    found = probe_generation(config, client, reporter)
    if found.is_v0 and config.agent.generation == "v1":
        raise DashboardRefused(f"--dashboard v1, but {display_url(config.dashboard_url)} answers as a v0 dashboard")
    return found


def probe_generation(config: Config, client: ClientFactory, reporter: Reporter) -> Generation:
    """Send the three credential-free probes, with retries until the deadline."""
    from nezha_bootstrap.generation import detect, http_sender
    from nezha_bootstrap.retry import with_retries

    with reporter.step("detect", f"detecting the generation of {display_url(config.dashboard_url)}") as record:
        send = http_sender(client(), config.dashboard_url)
        found = with_retries(lambda left: detect(send, left), deadline=config.deadline, what="generation detection",
                             give_up=DashboardUnreachable, notify=reporter.info)
        record["generation"] = found.value
    reporter.info(f"  dashboard generation: {found.value}")
    return found


def check_v0_settings(config: Config) -> None:
    """A v0 dashboard registers with its API token: refuse settings that cannot do that."""
    if not config.token:
        raise SettingsError([
            "the dashboard is v0: it registers servers through its API token (NEZHA_TOKEN or --token-file); "
            "the agent secret is for v1/v2 dashboards",
        ])
    if is_access_token(config.token):
        raise SettingsError([
            "the dashboard is v0, and NEZHA_TOKEN holds a v2.1+ access token (nzp_...): "
            "use the v0 dashboard's API token instead",
        ])


def check_v1_settings(config: Config, generation: Generation) -> None:
    """A v1/v2 agent enrolls with the agent secret and installs directly: refuse settings that cannot."""
    if not config.agent.secret:
        raise SettingsError([
            f"the dashboard is {generation.value}: agents enroll with an agent secret (the dashboard's "
            "install command shows it); set NEZHA_AGENT_SECRET_FILE or NEZHA_AGENT_SECRET",
        ])
    if config.agent.method == "script":
        raise SettingsError([
            f"--method script installs the v0 agent; a {generation.value} dashboard needs --method direct",
        ])
    plaintext = plaintext_problem(v1_config(config))
    if plaintext:
        raise SettingsError([plaintext])


def token_names_server(config: Config, generation: Generation) -> bool:
    """Whether an access token names the server; refuses one on a dashboard without access tokens."""
    from nezha_bootstrap.generation import Generation

    if not is_access_token(config.token):
        return False
    if generation in (Generation.V0, Generation.V1_0, Generation.V1_5, Generation.V2_0):
        raise SettingsError([
            f"the dashboard is {generation.value}: access tokens (nzp_...) exist from v2.1.0, so this one cannot "
            "name the server. Drop NEZHA_TOKEN to enroll unnamed, and name it with `nezha-bootstrap reconcile`",
        ])
    return True


def _unprobed_plan(this: ThisNode, saved: State | None) -> RunResult:
    """--dry-run before the generation is known: the probes, then what each generation would do."""
    from nezha_bootstrap.generation import PROBES
    from nezha_bootstrap.v1 import flow as v1_flow

    config = this.config
    shown = display_url(config.dashboard_url)
    lines = [f"detect the generation of {shown}, without credentials:",
             *(f"  {probe.method} {shown}{probe.path}" + (f" {probe.body.decode()}" if probe.body else "")
               for probe in PROBES),
             "if it is v0: register with the API token and install the v0 agent "
             "(`--dashboard v0 --dry-run` shows that plan)"]
    if not config.agent.secret:
        lines.append("if it is v1 or newer: it needs the agent secret (NEZHA_AGENT_SECRET_FILE); stop there")
        return RunResult(outcome="dry_run", generation="auto", dashboard=shown, method=None, plan=tuple(lines))
    lines.append("if it is v1 or newer:")
    planned = v1_flow.dry_run(this.with_config(v1_config(config)), None, saved,
                              token_mode=is_access_token(config.token))
    return planned.with_plan(lines + [f"  {line}" for line in planned.plan])


def check(config: Config, facts: Facts, paths: Paths) -> list[CheckResult]:
    """`check`: the v0 checks for a v0 run, else the generation first and that generation's checks."""
    from nezha_bootstrap.http import make_client, make_download_client

    with make_client(config.ca_bundle) as client, make_download_client(config.ca_bundle) as downloads:
        return _checks(config, facts, paths, client, downloads)


def _checks(config: Config, facts: Facts, paths: Paths, client: httpx.Client,
            downloads: httpx.Client) -> list[CheckResult]:
    from nezha_bootstrap.checks import check_generation
    from nezha_bootstrap.v0 import checks as v0_checks
    from nezha_bootstrap.v1 import checks as v1_checks

    if not needs_probe(config):
        results = v0_checks.run_checks(config, client, downloads)
        return [*results, *upgraded_check(config, paths, results)]
    first, generation = check_generation(config, client)
    if generation is None:
        return [first]
    if generation.is_v0:
        return [first, *v0_checks.run_checks(config, client, downloads)]
    return [first, *v1_checks.run_checks(config, generation, facts, paths, client, downloads)]


UPGRADED = (
    "this node registered with {url} when it was a v0 dashboard; it answers as v1 or newer now: the dashboard "
    "was upgraded at the same URL, and the node's v0 agent cannot connect to it. Give the node the dashboard's "
    "agent secret (NEZHA_AGENT_SECRET_FILE) and run again: it installs a v1/v2 agent in place of the v0 one "
    "(documentation: After upgrading the dashboard)"
)


def upgraded_check(config: Config, paths: Paths, results: list[CheckResult]) -> list[CheckResult]:
    """A FAIL naming the change when a v0 answer was expected from a dashboard that now answers as v1+."""
    from nezha_bootstrap.checks import CheckResult
    from nezha_bootstrap.errors import StateError

    if not any(isinstance(result.cause, AnsweredAsV1) for result in results):
        return []
    try:
        saved = state_mod.load(paths, move_aside=False)
    except StateError:
        return []
    cached = cached_generation(config, saved)
    if cached is None or not cached.is_v0:
        return []
    return [CheckResult("generation", "FAIL", UPGRADED.format(url=display_url(config.dashboard_url)),
                        DashboardRefused.exit_code)]
