"""The click layer: options and env vars, building the Config, mapping errors to exit codes."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, TypeVar

import click
from click.core import ParameterSource

from nezha_bootstrap import __version__, interrupts, redact
from nezha_bootstrap.config import (
    AGENT_V0,
    AGENT_V1,
    DEFAULT_AGENT_BASE_URL,
    DEFAULT_DEADLINE,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_PROBE_PORT,
    DEFAULT_SCRIPT_URL,
    Settings,
    Validated,
    build,
    display_url,
)
from nezha_bootstrap.errors import EXIT_CODES, BootstrapError, InternalError, SettingsError
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.firstboot.render import KINDS as RENDER_KINDS
from nezha_bootstrap.report import Reporter

if TYPE_CHECKING:
    from nezha_bootstrap.v1.flow import AgentConfig
    from nezha_bootstrap.v1.naming import Naming
    from nezha_bootstrap.firstboot.service import Plan
    from nezha_bootstrap.state import State

F = TypeVar("F", bound=Callable[..., Any])

EXIT_HELP = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES) + "."
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _option(*decls: str, **kwargs: Any) -> Callable[[F], F]:
    kwargs.setdefault("show_envvar", True)
    return click.option(*decls, **kwargs)


def output_options(func: F) -> F:
    for decorator in reversed([
        _option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout."),
        _option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr."),
        _option("-v", "--verbose", is_flag=True, help="Also show the installer's output (redacted)."),
    ]):
        func = decorator(func)
    return func


def root_option(func: F) -> F:
    return _option("--root", envvar="NEZHA_BOOTSTRAP_ROOT", default="/", show_default=True,
                   help="Resolve every path the tool reads or writes under this directory.")(func)


def settings_options(func: F) -> F:
    """The options shared by run, check and render: one table, one env var each.

    Values are taken as text and checked by config.build, so a bad one is reported together with
    every other problem instead of stopping click's parsing at the first.
    """
    options = [
        _option("--dashboard-url", envvar="NEZHA_DASHBOARD_URL",
                help="Dashboard URL (http/https, sub-path allowed)."),
        _option("--token-file", envvar="NEZHA_TOKEN_FILE", help="File holding the API token; '-' reads stdin."),
        _option("--token", envvar="NEZHA_TOKEN",
                help="API token (prefer the env var: a flag shows in the process list)."),
        _option("--probe-address", envvar="NEZHA_PROBE_ADDRESS",
                help="Agent's server host. [default: the dashboard's host]"),
        _option("--probe-port", envvar="NEZHA_PROBE_PORT", default=str(DEFAULT_PROBE_PORT), show_default=True,
                help="Agent's server port."),
        _option("--tls/--no-tls", envvar="NEZHA_PROBE_TLS", default=True, show_default=True,
                help="Agent connects with TLS."),
        _option("--name", envvar="NODE_NAME",
                help="Server name; {hostname}, {ip}, {machine_id} are filled in. [default: host name]"),
        _option("--tag", envvar="NEZHA_TAG", help="Server tag (unset: the dashboard's AutoRegister)."),
        _option("--note", envvar="NEZHA_NOTE", help="Server note (unset: empty)."),
        _option("--hide-for-guest/--show-for-guest", envvar="NEZHA_HIDE_FOR_GUEST", default=True, show_default=True,
                help="Hide the server from guests."),
        _option("--agent-flag", "agent_flags", envvar="NEZHA_AGENT_FLAGS", multiple=True,
                help="Extra agent flag (repeatable; env: space-separated)."),
        _option("--script-url", envvar="NEZHA_INSTALL_SCRIPT_URL", default=DEFAULT_SCRIPT_URL, show_default=True,
                help="install.sh to run (the commit-pinned v0 script)."),
        _option("--script-sha256", envvar="NEZHA_INSTALL_SCRIPT_SHA256",
                help="SHA-256 of the script. [default: the pinned hash for the default URL]"),
        _option("--mirror", envvar="NEZHA_MIRROR", metavar="cn", help="cn: the installer uses the China mirror."),
        _option("--deadline", envvar="NEZHA_BOOTSTRAP_DEADLINE", type=str, metavar="SECONDS",
                default=DEFAULT_DEADLINE, show_default=True, help="Seconds for all retries of one step together."),
        _option("--lock-timeout", envvar="NEZHA_BOOTSTRAP_LOCK_TIMEOUT", type=str, metavar="SECONDS",
                default=DEFAULT_LOCK_TIMEOUT, show_default=True, help="Seconds to wait for another run's lock."),
        _option("--ca-bundle", envvar="NEZHA_CA_BUNDLE",
                help="PEM file of a private CA. [default: system trust store]"),
    ]
    for decorator in reversed(options):
        func = decorator(func)
    return root_option(func)


def _read_token(ctx: click.Context, params: dict[str, Any], problems: list[str]) -> tuple[str | None, bool]:
    token_file = params.pop("token_file")
    token = params.pop("token")
    from_flag = ctx.get_parameter_source("token") is ParameterSource.COMMANDLINE
    if token_file and from_flag:
        problems.append("give either --token or --token-file, not both")
    if token_file:
        try:
            if token_file == "-":
                token = sys.stdin.readline().strip()
            else:
                token = Path(token_file).read_text(encoding="utf-8").strip()
            from_flag = False
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"cannot read the token file {token_file}: {getattr(exc, 'strerror', None) or exc}")
            token = None
    redact.register(token)
    return token, from_flag


def agent_options(func: F) -> F:
    """The v1/v2 options of `run` (dashboard-v1-v2.md): agent secret, install method, release, identity."""
    options = [
        _option("--dashboard", "generation", envvar="NEZHA_DASHBOARD_GENERATION", default="auto", show_default=True,
                type=click.Choice(["auto", "v0", "v1"]), help="Dashboard generation; auto probes it (no credentials)."),
        _option("--agent-secret-file", envvar="NEZHA_AGENT_SECRET_FILE",
                help="File holding the v1/v2 agent secret; '-' reads stdin."),
        _option("--agent-secret", envvar="NEZHA_AGENT_SECRET",
                help="v1/v2 agent secret (prefer the env var or the file: a flag shows in the process list)."),
        _option("--method", envvar="NEZHA_INSTALL_METHOD", type=click.Choice(["script", "direct"]),
                help="script: install.sh (v0 only); direct: the pinned agent release. [default: by generation]"),
        _option("--agent-base-url", envvar="NEZHA_AGENT_BASE_URL", default=DEFAULT_AGENT_BASE_URL, show_default=True,
                help="Release base: {base}/v{version}/{asset} and {base}/v{version}/checksums.txt."),
        _option("--agent-version", envvar="NEZHA_AGENT_VERSION",
                help=f"Agent release. [default: {AGENT_V1} for v1.1.1+ dashboards, {AGENT_V0} for v0]"),
        _option("--agent-sha256", envvar="NEZHA_AGENT_SHA256", help="Pinned SHA-256 of the agent zip."),
        _option("--agent-option", "agent_options", envvar="NEZHA_AGENT_OPTIONS", multiple=True,
                help="Agent config KEY=VALUE (repeatable; env: space-separated), e.g. report_delay=2."),
        _option("--uuid", envvar="NEZHA_AGENT_UUID", help="Agent uuid. [default: UUIDv5 of /etc/machine-id]"),
        _option("--adopt", is_flag=True, envvar="NEZHA_ADOPT",
                help="Uninstall agents the vendor script left (config-*.yml) and report their uuids."),
        _option("--allow-plaintext", is_flag=True, envvar="NEZHA_ALLOW_PLAINTEXT",
                help="Allow --no-tls to a public address (the agent secret crosses in clear text)."),
        # Token mode (v2.1+, NEZHA_TOKEN=nzp_...): the access token names the server (naming.py).
        _option("--public-note", envvar="NEZHA_PUBLIC_NOTE", help="v2.1+ token mode: the server's public note."),
        _option("--display-index", envvar="NEZHA_DISPLAY_INDEX", help="v2.1+ token mode: sort weight (higher first)."),
        _option("--group", envvar="NEZHA_GROUP", help="v2.1+ token mode: join the server group of this name."),
        _option("--group-id", envvar="NEZHA_GROUP_ID", help="v2.1+ token mode: the group's id (names may repeat)."),
        _option("--create-group", is_flag=True, envvar="NEZHA_CREATE_GROUP",
                help="v2.1+ token mode: create the --group when it does not exist."),
        _option("--enroll-timeout", envvar="NEZHA_ENROLL_TIMEOUT", default="120", show_default=True, metavar="SECONDS",
                help="v2.1+ token mode: how long to wait for the dashboard to list the new server."),
    ]
    for decorator in reversed(options):
        func = decorator(func)
    return func


def _naming(params: dict[str, Any], problems: list[str]) -> Naming:
    """Pop the token-mode options from `params` and validate them (problems are collected)."""
    from nezha_bootstrap.v1.naming import NamingSettings, validate

    raw = NamingSettings(
        public_note=params.pop("public_note"), display_index=params.pop("display_index"), group=params.pop("group"),
        group_id=params.pop("group_id"), create_group=params.pop("create_group"),
        enroll_timeout=params.pop("enroll_timeout"),
    )
    return validate(raw, problems)


def _agent_config(ctx: click.Context, params: dict[str, Any], problems: list[str], reporter: Reporter) -> AgentConfig:
    """Pop the v1/v2 options from `params`, read the secret file, validate (problems are collected)."""
    from nezha_bootstrap.v1.flow import AgentSettings, validate

    secret_file, secret = params.pop("agent_secret_file"), params.pop("agent_secret")
    from_flag = ctx.get_parameter_source("agent_secret") is ParameterSource.COMMANDLINE
    if secret_file:
        try:
            text = sys.stdin.readline() if secret_file == "-" else Path(secret_file).read_text(encoding="utf-8")
            secret, from_flag = text.strip(), False
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"cannot read the agent secret file {secret_file}: {getattr(exc, 'strerror', None) or exc}")
    redact.register(secret)
    raw = AgentSettings(
        generation=params.pop("generation"), secret=secret, secret_from_flag=from_flag, method=params.pop("method"),
        base_url=params.pop("agent_base_url"), version=params.pop("agent_version"), sha256=params.pop("agent_sha256"),
        uuid=params.pop("uuid"), adopt=params.pop("adopt"), allow_plaintext=params.pop("allow_plaintext"),
        options=tuple(params.pop("agent_options")),
        probe_port_given=ctx.get_parameter_source("probe_port") is not ParameterSource.DEFAULT,
        tls_given=ctx.get_parameter_source("tls") is not ParameterSource.DEFAULT,
    )
    warnings: list[str] = []
    settings = validate(raw, problems, warnings)
    for warning in warnings:
        reporter.warn(warning)
    return settings


def resolve(ctx: click.Context, params: dict[str, Any], reporter: Reporter, *, dry_run: bool = False,
            force: bool = False, token_optional: bool = False, problems: list[str] | None = None,
            elsewhere: bool = False) -> Validated:
    """Turn click's values into a validated Config, gathering host facts (all problems at once).

    `elsewhere`: the settings are for other machines (render, install-service for an image), so the
    name is checked against stand-in facts and the CA bundle is not looked for here.
    """
    from nezha_bootstrap.facts import STAND_IN, gather

    problems = list(problems or [])
    token, from_flag = _read_token(ctx, params, problems)
    ca_bundle = params.get("ca_bundle")
    if ca_bundle and not elsewhere and not Path(ca_bundle).is_file():
        problems.append(f"the CA bundle {ca_bundle} is not a readable file")
    root = params["root"]
    if elsewhere:
        facts = STAND_IN
    else:
        facts = gather(Paths(Path(root)), want_ip="{ip}" in (params["name"] or ""))  # only {ip} needs psutil
    settings = Settings(
        dashboard_url=params["dashboard_url"], token=token, token_from_flag=from_flag,
        probe_address=params["probe_address"], probe_port=params["probe_port"], tls=params["tls"],
        name=params["name"], tag=params["tag"], note=params["note"], hide_for_guest=params["hide_for_guest"],
        agent_flags=tuple(params["agent_flags"]), script_url=params["script_url"],
        script_sha256=params["script_sha256"], mirror=params["mirror"], root=root,
        deadline=params["deadline"], lock_timeout=params["lock_timeout"], ca_bundle=ca_bundle,
        dry_run=dry_run, force=force, token_optional=token_optional,
    )
    validated = build(settings, facts, problems)
    for warning in validated.warnings:
        reporter.warn(warning)
    ctx.meta["facts"] = facts
    return validated


def handle_errors(func: F) -> F:
    """Run a command, map BootstrapError to its exit code, never show a raw traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        meta = click.get_current_context().meta
        meta.setdefault("reporter", Reporter())
        try:
            with interrupts.handled():  # SIGTERM/SIGINT raise Stopped: `finally` blocks clean up
                func(*args, **kwargs)
        except interrupts.Stopped as stop:
            _fail(meta["reporter"], stop.exit_code, _stopped_message(stop))
        except BootstrapError as exc:
            # The command replaces the default reporter with one for its --json/-q/-v: use that one.
            _fail(meta["reporter"], exc.exit_code, str(exc))
        except KeyboardInterrupt:
            _fail(meta["reporter"], 130, "interrupted")
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:
            reporter: Reporter = meta["reporter"]
            if reporter.verbosity > 0:
                import traceback  # only for this rare case: it costs `--help` ~10 ms

                reporter.error(traceback.format_exc())
            _fail(reporter, 1, f"internal error: {type(exc).__name__}: {exc}")

    return wrapper  # type: ignore[return-value]


def _stopped_message(stop: interrupts.Stopped) -> str:
    if stop.unanswered:
        return (
            f"{stop} after the register request got no answer; if the dashboard made the server anyway, "
            "its secret never arrived: delete it there. Run again to finish"
        )
    return f"{stop}; nothing was left half-done: run again to finish"


def _fail(reporter: Reporter, code: int, message: str) -> NoReturn:
    reporter.error(message)
    reporter.emit_json({**reporter.context, "outcome": "failed", "error": redact.redact(message),
                        "exit_code": code, "steps": reporter.steps, "warnings": reporter.warnings})
    sys.exit(code)


def _reporter(as_json: bool, quiet: bool, verbose: bool) -> Reporter:
    reporter = Reporter(verbosity=-1 if quiet else (1 if verbose else 0), as_json=as_json)
    click.get_current_context().meta["reporter"] = reporter
    return reporter


@click.group(context_settings=CONTEXT, epilog=EXIT_HELP)
@click.version_option(__version__, prog_name="nezha-bootstrap")
def main() -> None:
    """Register this server with a Nezha dashboard and install its agent, once."""


@main.command(epilog=EXIT_HELP)
@settings_options
@_option("--dry-run", is_flag=True, help="Validate and print the plan; touch neither network nor disk.")
@_option("--force", is_flag=True, help="Register again even if this node is registered.")
@agent_options
@output_options
@click.pass_context
@handle_errors
def run(
    ctx: click.Context, /, dry_run: bool, force: bool, as_json: bool, quiet: bool, verbose: bool, **params: Any
) -> None:
    """Register the node (once) and install the agent with its secret."""
    from nezha_bootstrap.v0.flow import Runner, plan_lines

    reporter = _reporter(as_json, quiet, verbose)
    problems: list[str] = []
    agent = _agent_config(ctx, params, problems, reporter)
    naming = _naming(params, problems)
    validated = resolve(ctx, params, reporter, dry_run=dry_run, force=force,
                        token_optional=bool(agent.secret) or agent.generation == "v1", problems=problems)
    config, paths = validated.config, Paths(validated.config.root)
    if agent.active or config.token.startswith("nzp_"):  # an access token is for v2.1+: the agent flow
        from nezha_bootstrap.v1.flow import run_agent_flow

        summary = run_agent_flow(config, agent, ctx.meta["facts"], paths, reporter, dry_run=dry_run, naming=naming)
        if summary is not None:  # None: the dashboard is v0, the script flow below goes on
            reporter.emit_json({**summary, "exit_code": 0, "steps": reporter.steps, "warnings": reporter.warnings})
            return
    direct = _v0_release(agent)  # --method direct: the v0 agent's own `service install`, not install.sh
    if dry_run:
        lines, payload = plan_lines(config, ctx.meta["facts"], paths, direct=direct)
        for line in lines:
            reporter.result(line)
        reporter.emit_json({**payload, "exit_code": 0, "warnings": reporter.warnings})
        return
    runner = Runner(config, ctx.meta["facts"], paths, reporter, direct=direct)
    reporter.context.update(name=config.name, dashboard=display_url(config.dashboard_url), generation="v0")
    summary = runner.run()
    reporter.result(f"{summary['outcome'].replace('_', ' ')}: {config.name!r} on {summary['dashboard']}")
    reporter.emit_json({**summary, "exit_code": 0, "steps": reporter.steps, "warnings": reporter.warnings})


def _v0_release(agent: AgentConfig) -> Any:
    if agent.method != "direct":
        return None
    from nezha_bootstrap.v1.flow import v0_release

    return v0_release(agent)


@main.command(epilog=EXIT_HELP)
@settings_options
@agent_options
@output_options
@click.pass_context
@handle_errors
def check(ctx: click.Context, /, as_json: bool, quiet: bool, verbose: bool, **params: Any) -> None:
    """Preflight that changes nothing: dashboard, TLS, token, probe port, installer.

    With v1/v2 settings (an agent secret, --dashboard v1 or --method direct): the generation, the
    agent secret, the uuid, the agent's gRPC port and the release (download and SHA-256).
    """
    from nezha_bootstrap.checks import run_agent_checks, run_checks

    reporter = _reporter(as_json, quiet, verbose)
    problems: list[str] = []
    agent = _agent_config(ctx, params, problems, reporter)
    config = resolve(ctx, params, reporter, problems=problems,
                     token_optional=bool(agent.secret) or agent.generation == "v1").config
    if agent.active:
        results = run_agent_checks(config, agent, ctx.meta["facts"], Paths(config.root))
    else:
        results = run_checks(config)
    for result in results:
        reporter.result(f"{result.status:<4}  {result.name:<10} {result.detail}")  # ok, FAIL or skip
    failed = next((r for r in results if not r.ok), None)
    code = failed.exit_code if failed else 0
    reporter.emit_json({"checks": [r.as_dict() for r in results], "exit_code": code, "warnings": reporter.warnings})
    sys.exit(code)


@main.command(epilog=EXIT_HELP)
@root_option
@output_options
@click.pass_context
@handle_errors
def status(ctx: click.Context, root: str, as_json: bool, quiet: bool, verbose: bool) -> None:
    """Show the saved state (never the secret), the agent unit and the agent process."""
    from nezha_bootstrap.status import collect

    reporter = _reporter(as_json, quiet, verbose)
    info = collect(Paths(Path(root)))
    for key, value in info.items():
        reporter.result(f"{key}: {value}")
    reporter.emit_json({**info, "exit_code": 0})


@main.command(epilog=EXIT_HELP)
@output_options
@click.pass_context
@handle_errors
def demo(ctx: click.Context, as_json: bool, quiet: bool, verbose: bool) -> None:
    """Run the real flow against a local fake dashboard and a stub installer, twice."""
    from nezha_bootstrap.demo import run_demo

    reporter = _reporter(as_json, quiet, verbose)
    run_demo(reporter)


# --- first boot: render, install-service, seal, uninstall ----------------------------------------

# Never written to the settings file: the root is where this command works, and secrets are
# written by value (NEZHA_TOKEN, NEZHA_AGENT_SECRET), not as a path to a file on this machine.
_NOT_SETTINGS = frozenset({"root", "token", "token_file", "agent_secret", "agent_secret_file"})
_SET_BY_USER = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _run_setting_options() -> list[click.Parameter]:
    """The options `run` takes its settings from (settings_options and agent_options), in order."""
    return click.command()(agent_options(settings_options(lambda **_: None))).params


def _setting_text(value: Any) -> str:
    """A click value as its environment variable spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return " ".join(str(item) for item in value)  # multiple=True options: space-separated
    return str(value)


def _settings_file(ctx: click.Context, params: dict[str, Any], reporter: Reporter, problems: list[str]) -> str:
    """Validate the settings as `run` would, for other machines; return the settings file's text.

    Only the settings the user set (flag or env var) are written, as given: a name such as
    "{hostname}" is filled on each server, and defaults stay those of the version installed there.
    """
    from nezha_bootstrap.firstboot import render

    agent = _agent_config(ctx, params, problems, reporter)
    _naming(params, problems)
    config = resolve(ctx, params, reporter, token_optional=bool(agent.secret) or agent.generation == "v1",
                     problems=problems, elsewhere=True).config
    for warning in (render.timeout_warning(config.deadline, config.lock_timeout),
                    "--uuid is written to the settings file: every server using it enrolls as the same server"
                    if agent.uuid else None):
        if warning:
            reporter.warn(warning)
    assignments = [(str(option.envvar), _setting_text(ctx.params[option.name])) for option in _run_setting_options()
                   if option.name not in _NOT_SETTINGS and option.name and option.envvar
                   and ctx.get_parameter_source(option.name) in _SET_BY_USER]
    secrets = [(name, value) for name, value in (("NEZHA_TOKEN", config.token), ("NEZHA_AGENT_SECRET", agent.secret))
               if value]
    after_url = next((i + 1 for i, (name, _) in enumerate(assignments) if name == "NEZHA_DASHBOARD_URL"), 0)
    try:
        return render.env_file(assignments[:after_url] + secrets + assignments[after_url:])
    except ValueError as exc:
        raise SettingsError([str(exc)]) from exc


def _write_output(text: str, output: str | None, reporter: Reporter) -> None:
    if output is None:
        if sys.stdout.isatty() and redact.redact(text) != text:
            # Meant for a file or a cloud API, never for a screen, its scroll-back or a session log.
            raise SettingsError([
                "the rendered text holds a secret (the API token or agent secret): "
                "write it with --output FILE (mode 0600) or redirect stdout to a file"
            ])
        # Not through the reporter: this output is meant to carry the token (user-data, settings file).
        click.echo(text, nl=False)
        return
    from nezha_bootstrap.system import atomic_write

    try:
        atomic_write(Path(output), text.encode("utf-8"), mode=0o600)
    except OSError as exc:
        raise InternalError(f"cannot write {output}: {exc.strerror or exc}") from exc
    reporter.info(f"wrote {output} (mode 0600)")


@main.command("render", epilog=EXIT_HELP)
@click.argument("kind", type=click.Choice(RENDER_KINDS))
@settings_options
@agent_options
@_option("--package", envvar="NEZHA_BOOTSTRAP_PACKAGE",
         help="cloud-init: what pip installs into /opt/nezha-bootstrap: an index name "
              "(nezha-bootstrap==X.Y), a wheel URL or a path on the server.")
@_option("--pip-option", "pip_options", envvar="NEZHA_BOOTSTRAP_PIP_OPTIONS", multiple=True,
         help="cloud-init: one more `pip install` argument, e.g. --index-url=URL (repeatable; env: space-separated).")
@_option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file (mode 0600), not stdout.")
@click.pass_context
@handle_errors
def render_command(ctx: click.Context, /, kind: str, package: str | None, pip_options: tuple[str, ...],
                   output: str | None, **params: Any) -> None:
    """Print the unit, the settings file or cloud-init user-data, filled from the settings of `run`.

    KIND: cloud-init (installs the tool, writes settings and unit, starts it), cloud-init-minimal
    (for images with the tool and the unit: writes the settings), systemd (the unit) or env (the
    settings file). All but systemd hold the API token: keep the output private.
    """
    from nezha_bootstrap.firstboot import render

    reporter = _reporter(False, False, False)
    if kind == "systemd":
        _write_output(render.unit(), output, reporter)
        return
    if kind == "cloud-init":
        problems = render.install_problems(package, pip_options)
    else:
        problems = ["--package and --pip-option are for `render cloud-init` only"] if package or pip_options else []
    settings = _settings_file(ctx, params, reporter, problems)
    try:
        if kind == "env":
            text = settings
        elif kind == "cloud-init-minimal":
            text = render.cloud_init_minimal(settings)
        else:
            text = render.cloud_init(settings, [*pip_options, str(package)])
    except ValueError as exc:
        raise SettingsError([str(exc)]) from exc
    _write_output(text, output, reporter)


def _root_paths(root: str) -> Paths:
    if not Path(root).is_absolute():
        raise SettingsError([f"root must be an absolute path, got {root!r}"])
    return Paths(Path(root))


def _saved_state(paths: Paths, reporter: Reporter) -> State | None:
    """The saved state for naming the server, or None; an unreadable file is a warning here."""
    from nezha_bootstrap.errors import StateError
    from nezha_bootstrap.state import load

    try:
        return load(paths, move_aside=False)
    except StateError as exc:
        reporter.warn(f"{exc}; look for this machine's server in the dashboard")
        return None


def _carry_out(plan: Plan, reporter: Reporter, *, dry_run: bool, outcome: str, done: str, lock: Paths | None = None,
               saved: State | None = None, name_server: bool = False) -> None:
    """Print the plan (--dry-run) or apply it; then the server to delete in the dashboard, and --json."""
    from nezha_bootstrap.firstboot import service
    from nezha_bootstrap.config import display_url

    for note in plan.notes:
        reporter.warn(note)
    if dry_run:
        for line in plan.describe() or ["nothing to do"]:
            reporter.result(line)
    else:
        service.apply(plan, reporter, lock)
        reporter.result(done)
    if name_server:
        reporter.result(service.dashboard_note(saved))
    server = None if saved is None else {"name": saved.name, "uuid": saved.uuid,
                                         "dashboard": display_url(saved.dashboard_url)}
    reporter.emit_json({"outcome": "dry_run" if dry_run else outcome, "actions": plan.describe(),
                        "server": server, "exit_code": 0, "warnings": reporter.warnings})


@main.command("install-service", epilog=EXIT_HELP)
@settings_options
@agent_options
@_option("--unit-only", is_flag=True,
         help="Write and enable the unit only; the settings file comes later (cloud-init-minimal user-data).")
@_option("--dry-run", is_flag=True, help="Print what would be written and run; change nothing.")
@output_options
@click.pass_context
@handle_errors
def install_service(ctx: click.Context, /, unit_only: bool, dry_run: bool, as_json: bool, quiet: bool, verbose: bool,
                    **params: Any) -> None:
    """For image builders: write nezha-bootstrap.service and its 0600 settings file, enable the unit.

    Under --root it links the unit into multi-user.target.wants itself; `systemctl enable` is used
    only when the root is / and systemd runs. The unit starts at the next boot.
    """
    from nezha_bootstrap.firstboot import service
    from nezha_bootstrap.facts import systemd_running

    reporter = _reporter(as_json, quiet, verbose)
    paths = _root_paths(params["root"])
    settings = None if unit_only else _settings_file(ctx, params, reporter, [])
    plan = service.plan_install_service(paths, settings, use_systemctl=systemd_running(paths))
    _carry_out(plan, reporter, dry_run=dry_run, outcome="installed",
               done="installed: nezha-bootstrap.service runs at the next boot")


@main.command(epilog=EXIT_HELP)
@root_option
@_option("--dry-run", is_flag=True, help="Print what would be removed and run; change nothing.")
@output_options
@click.pass_context
@handle_errors
def seal(ctx: click.Context, /, root: str, dry_run: bool, as_json: bool, quiet: bool, verbose: bool) -> None:
    """Prepare this system (or --root) for capture as an image that registers each clone.

    Uninstalls the agent, removes the saved state, empties /etc/machine-id and removes
    /var/lib/dbus/machine-id; keeps nezha-bootstrap.service and its settings file.
    """
    from nezha_bootstrap.firstboot import service

    reporter = _reporter(as_json, quiet, verbose)
    paths = _root_paths(root)
    saved = _saved_state(paths, reporter)
    plan = service.plan_seal(paths, own_system=paths.is_host_root)
    _carry_out(plan, reporter, dry_run=dry_run, outcome="sealed",
               done="sealed: capture the image now, before it boots again",
               lock=paths, saved=saved, name_server=saved is not None)


@main.command(epilog=EXIT_HELP)
@root_option
@_option("--purge", is_flag=True, help="Also remove nezha-bootstrap.service and /etc/nezha-bootstrap.")
@_option("--dry-run", is_flag=True, help="Print what would be removed and run; change nothing.")
@output_options
@click.pass_context
@handle_errors
def uninstall(ctx: click.Context, /, root: str, purge: bool, dry_run: bool, as_json: bool, quiet: bool,
              verbose: bool) -> None:
    """Remove the agent and the saved state, and name the server to delete in the dashboard."""
    from nezha_bootstrap.firstboot import service
    from nezha_bootstrap.facts import systemd_running

    reporter = _reporter(as_json, quiet, verbose)
    paths = _root_paths(root)
    saved = _saved_state(paths, reporter)
    plan = service.plan_uninstall(paths, own_system=paths.is_host_root, use_systemctl=systemd_running(paths),
                                  purge=purge)
    _carry_out(plan, reporter, dry_run=dry_run, outcome="uninstalled", done="uninstalled", lock=paths, saved=saved,
               name_server=True)


# --- the operator's machine: reconcile a v1/v2 fleet with a manifest -----------------------------

def _read_password(username: str | None, password_file: str | None, problems: list[str]) -> str | None:
    """The login's password from its file (never from a flag or the environment); None: ask for it."""
    if not password_file:
        return None
    if not username:
        problems.append("--password-file is for a login: give --username too")
        return None
    try:
        text = sys.stdin.readline() if password_file == "-" else Path(password_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"cannot read the password file {password_file}: {getattr(exc, 'strerror', None) or exc}")
        return None
    password = text.splitlines()[0] if text else ""  # the first line, as written; spaces may be part of it
    redact.register(password)
    return password


@main.command("reconcile", epilog=EXIT_HELP)
@click.argument("manifest_path", metavar="MANIFEST")
@_option("--dashboard-url", envvar="NEZHA_DASHBOARD_URL", help="Dashboard URL (a v1 or v2 dashboard).")
@_option("--token-file", envvar="NEZHA_TOKEN_FILE",
         help="File holding a v2.1+ access token (nzp_...); '-' reads stdin.")
@_option("--token", envvar="NEZHA_TOKEN", hidden=True, help="Access token (use the env var: a flag shows in ps).")
@_option("--username", envvar="NEZHA_USERNAME", help="Log in as this user instead of a token (v1.x, v2.0, v2.1+).")
@_option("--password-file", envvar="NEZHA_PASSWORD_FILE",
         help="File holding the login's password ('-': stdin). [default: asked for, not echoed]")
@_option("--apply/--dry-run", "apply", default=False, show_default=True,
         help="--dry-run prints the plan and changes nothing; --apply carries it out and verifies it.")
@_option("--ca-bundle", envvar="NEZHA_CA_BUNDLE", help="PEM file of a private CA. [default: system trust store]")
@_option("--deadline", envvar="NEZHA_BOOTSTRAP_DEADLINE", default="60", show_default=True, metavar="SECONDS",
         help="Seconds of retries for one request (network failures, 5xx); refusals are never retried.")
@output_options
@click.pass_context
@handle_errors
def reconcile_command(ctx: click.Context, /, manifest_path: str, username: str | None, password_file: str | None,
                      apply: bool, as_json: bool, quiet: bool, verbose: bool, **params: Any) -> None:
    """Name, note, hide and group the servers of a v1/v2 dashboard as MANIFEST says.

    MANIFEST is a .json or .toml file (TOML needs Python 3.11+ or tomli): a `servers` list whose
    entries name a server by `uuid` or by the `machine_id` its uuid derives from, with any of name,
    note, public_note, hide_for_guest, display_index and group; optional `defaults` for every entry.
    Credentials: an access token (NEZHA_TOKEN or --token-file; v2.1+), or --username with the password
    from --password-file or a prompt. Nothing is stored.
    """
    from nezha_bootstrap.fleet import reconcile
    from nezha_bootstrap.v0.api import make_client
    from nezha_bootstrap.fleet.manifest import load
    from nezha_bootstrap.fleet.session import Credentials, check_target, credential_problems, open_session

    reporter = _reporter(as_json, quiet, verbose)
    problems: list[str] = []
    token, from_flag = _read_token(ctx, params, problems)
    if from_flag:
        reporter.warn("--token shows in the process list; prefer NEZHA_TOKEN or --token-file")
    password = _read_password(username, password_file, problems)
    warnings: list[str] = []
    url, deadline = check_target(params["dashboard_url"], params["deadline"], problems, warnings)
    ca_bundle = Path(params["ca_bundle"]) if params["ca_bundle"] else None
    if ca_bundle is not None and not ca_bundle.is_file():
        problems.append(f"the CA bundle {ca_bundle} is not a readable file")
    try:
        manifest = load(Path(manifest_path))
    except SettingsError as exc:
        problems.extend(exc.problems)
    if username and password is None and not problems:
        password = click.prompt(f"Password for {username}", hide_input=True, err=True, default="", show_default=False)
        redact.register(password)
    problems.extend(credential_problems(Credentials(token, username, password)))
    if problems:
        raise SettingsError(problems)
    for warning in warnings:
        reporter.warn(warning)
    with make_client(ca_bundle, urls=(url,)) as client:
        session, generation = open_session(client, url, Credentials(token, username, password), deadline,
                                           reporter.info)
        reporter.context.update(dashboard=display_url(url), generation=generation.value)
        reporter.info(f"{display_url(url)}: a {generation.value} dashboard; reading servers and groups")
        plan, failures = reconcile.run(session, manifest, apply=apply, notify=reporter.info)
    _report_reconcile(reporter, plan, failures, apply=apply)


def _report_reconcile(reporter: Reporter, plan: Any, failures: list[str], *, apply: bool) -> None:
    from nezha_bootstrap.fleet import reconcile
    from nezha_bootstrap.errors import DashboardRefused

    rows = plan.actions()
    for line in reconcile.table(rows):
        reporter.result(line)
    reporter.context["actions"] = rows
    if failures:
        raise DashboardRefused(f"{len(failures)} change(s) did not apply or did not hold:\n"
                               + "\n".join(f"  - {failure}" for failure in failures))
    if not apply:
        outcome = "dry_run"
        reporter.result(f"dry run: {plan.writes} write(s) planned; run with --apply to carry them out")
    else:
        outcome = "applied" if plan.writes else "unchanged"
        reporter.result(f"applied and verified {plan.writes} write(s)" if plan.writes else "nothing to apply")
    reporter.emit_json({**reporter.context, "outcome": outcome, "writes": plan.writes, "failures": [],
                        "exit_code": 0, "warnings": reporter.warnings})
