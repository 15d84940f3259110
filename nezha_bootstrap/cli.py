"""The click layer: options and env vars, building the Config, mapping errors to exit codes."""

from __future__ import annotations

import functools
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, NoReturn, TypeVar

import click
from click.core import ParameterSource

from nezha_bootstrap import __version__, redact
from nezha_bootstrap.config import (
    DEFAULT_DEADLINE,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_PROBE_PORT,
    DEFAULT_SCRIPT_URL,
    Settings,
    Validated,
    build,
    display_url,
)
from nezha_bootstrap.errors import EXIT_CODES, BootstrapError, SettingsError
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter

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
    """The options shared by run, check and render: one table, one env var each."""
    options = [
        _option("--dashboard-url", envvar="NEZHA_DASHBOARD_URL", help="Dashboard URL (http/https, sub-path allowed)."),
        _option("--token-file", envvar="NEZHA_TOKEN_FILE", help="File holding the API token; '-' reads stdin."),
        _option("--token", envvar="NEZHA_TOKEN", help="API token (prefer the env var: a flag shows in the process list)."),
        _option("--probe-address", envvar="NEZHA_PROBE_ADDRESS", help="Agent's server host. [default: the dashboard's host]"),
        _option("--probe-port", envvar="NEZHA_PROBE_PORT", default=str(DEFAULT_PROBE_PORT), show_default=True, help="Agent's server port."),
        _option("--tls/--no-tls", envvar="NEZHA_PROBE_TLS", default=True, show_default=True, help="Agent connects with TLS."),
        _option("--name", envvar="NODE_NAME", help="Server name; {hostname}, {ip}, {machine_id} are filled in. [default: host name]"),
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
        _option("--mirror", envvar="NEZHA_MIRROR", type=click.Choice(["cn"]), help="cn: the installer uses the China mirror."),
        _option("--deadline", envvar="NEZHA_BOOTSTRAP_DEADLINE", type=float, default=DEFAULT_DEADLINE, show_default=True,
                help="Seconds for all retries of one step together."),
        _option("--lock-timeout", envvar="NEZHA_BOOTSTRAP_LOCK_TIMEOUT", type=float, default=DEFAULT_LOCK_TIMEOUT,
                show_default=True, help="Seconds to wait for another run's lock."),
        _option("--ca-bundle", envvar="NEZHA_CA_BUNDLE", help="PEM file of a private CA. [default: system trust store]"),
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


def resolve(ctx: click.Context, params: dict[str, Any], reporter: Reporter, *, dry_run: bool = False,
            force: bool = False) -> Validated:
    """Turn click's values into a validated Config, gathering host facts (all problems at once)."""
    from nezha_bootstrap.facts import gather

    problems: list[str] = []
    token, from_flag = _read_token(ctx, params, problems)
    ca_bundle = params.get("ca_bundle")
    if ca_bundle and not Path(ca_bundle).is_file():
        problems.append(f"the CA bundle {ca_bundle} is not a readable file")
    root = params["root"]
    facts = gather(Paths(Path(root)))
    settings = Settings(
        dashboard_url=params["dashboard_url"], token=token, token_from_flag=from_flag,
        probe_address=params["probe_address"], probe_port=params["probe_port"], tls=params["tls"],
        name=params["name"], tag=params["tag"], note=params["note"], hide_for_guest=params["hide_for_guest"],
        agent_flags=tuple(params["agent_flags"]), script_url=params["script_url"],
        script_sha256=params["script_sha256"], mirror=params["mirror"], root=root,
        deadline=params["deadline"], lock_timeout=params["lock_timeout"], ca_bundle=ca_bundle,
        dry_run=dry_run, force=force,
    )
    validated = build(settings, facts, problems)
    for warning in validated.warnings:
        reporter.warn(warning)
    ctx.meta["facts"] = facts
    return validated


def _terminate(signum: int, frame: Any) -> NoReturn:
    # Turn SIGTERM into an exception so `finally` blocks remove temp files and release the lock.
    raise SystemExit(128 + signum)


def handle_errors(func: F) -> F:
    """Run a command, map BootstrapError to its exit code, never show a raw traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        reporter: Reporter = click.get_current_context().meta.setdefault("reporter", Reporter())
        signal.signal(signal.SIGTERM, _terminate)
        try:
            func(*args, **kwargs)
        except BootstrapError as exc:
            _fail(reporter, exc.exit_code, str(exc))
        except KeyboardInterrupt:
            _fail(reporter, 130, "interrupted")
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place that turns a bug into exit 1
            if reporter.verbosity > 0:
                reporter.error(traceback.format_exc())
            _fail(reporter, 1, f"internal error: {type(exc).__name__}: {exc}")

    return wrapper  # type: ignore[return-value]


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
@output_options
@click.pass_context
@handle_errors
def run(ctx: click.Context, dry_run: bool, force: bool, as_json: bool, quiet: bool, verbose: bool, **params: Any) -> None:
    """Register the node (once) and install the agent with its secret."""
    from nezha_bootstrap.bootstrap import Runner, plan_lines

    reporter = _reporter(as_json, quiet, verbose)
    validated = resolve(ctx, params, reporter, dry_run=dry_run, force=force)
    config, paths = validated.config, Paths(validated.config.root)
    if dry_run:
        lines, payload = plan_lines(config, ctx.meta["facts"], paths)
        for line in lines:
            reporter.result(line)
        reporter.emit_json({**payload, "exit_code": 0, "warnings": reporter.warnings})
        return
    runner = Runner(config, ctx.meta["facts"], paths, reporter)
    reporter.context.update(name=config.name, dashboard=display_url(config.dashboard_url), generation="v0")
    summary = runner.run()
    reporter.result(f"{summary['outcome'].replace('_', ' ')}: {config.name!r} on {summary['dashboard']}")
    reporter.emit_json({**summary, "exit_code": 0, "steps": reporter.steps, "warnings": reporter.warnings})


@main.command(epilog=EXIT_HELP)
@settings_options
@output_options
@click.pass_context
@handle_errors
def check(ctx: click.Context, as_json: bool, quiet: bool, verbose: bool, **params: Any) -> None:
    """Preflight that changes nothing: dashboard, TLS, token, probe port, installer."""
    from nezha_bootstrap.checks import run_checks

    reporter = _reporter(as_json, quiet, verbose)
    config = resolve(ctx, params, reporter).config
    results = run_checks(config)
    for result in results:
        reporter.result(f"{'ok  ' if result.ok else 'FAIL'}  {result.name:<10} {result.detail}")
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
