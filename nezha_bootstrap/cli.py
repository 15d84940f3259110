"""The click layer: one function per command, which builds the Config, calls the core and prints
its result; errors become exit codes in one place (`handle_errors`). Options live in options.py."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from click.core import ParameterSource

from nezha_bootstrap import __version__, interrupts, redact
from nezha_bootstrap.config import display_url
from nezha_bootstrap.errors import EXIT_CODES, BootstrapError, InternalError, SettingsError
from nezha_bootstrap.firstboot import KINDS as RENDER_KINDS
from nezha_bootstrap.firstboot import USER_DATA_LIMIT
from nezha_bootstrap.options import (
    INSTALL_OPTIONS,
    SET_BY_USER,
    F,
    SectionedCommand,
    agent_options,
    config_of,
    install_options,
    option,
    output_options,
    reconcile_target,
    root_option,
    settings_file,
    settings_options,
)
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter, RunResult

if TYPE_CHECKING:
    from nezha_bootstrap.effects import Plan
    from nezha_bootstrap.state import State

# This process is the command line: two modules that httpx and httpcore import, and that it never
# uses, are not loaded (a sixth of httpx's import time, measured with -X importtime): httpx's
# own command line (with pygments and rich, where installed) and anyio (async clients only; httpcore
# runs without it). A program that imports them first keeps them.
for _unused in ("httpx._main", "anyio"):
    sys.modules.setdefault(_unused, None)  # type: ignore[arg-type]  # None: "not importable"


EXIT_HELP = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES) + "."
EXIT_REASONS = dict(EXIT_CODES)  # --json of a failure names its code's meaning (the Ansible module shows it)
SEE_EXIT_CODES = "See `nezha-bootstrap --help` for the exit codes."
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


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
    # "error" is a list of lines: a settings error names each problem on a line of its own.
    reporter.emit_json({**reporter.context, "outcome": "failed", "error": redact.redact(message).splitlines(),
                        "exit_code": code, "exit_reason": EXIT_REASONS.get(code, "unknown"), "steps": reporter.steps,
                        "warnings": reporter.warnings})
    sys.exit(code)


def _reporter(as_json: bool, quiet: bool, verbose: bool) -> Reporter:
    reporter = Reporter(verbosity=-1 if quiet else (1 if verbose else 0), as_json=as_json)
    click.get_current_context().meta["reporter"] = reporter
    return reporter


@click.group(context_settings=CONTEXT, epilog=EXIT_HELP, invoke_without_command=True)
@click.version_option(__version__, prog_name="nezha-bootstrap")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Register this server with a Nezha dashboard and install its agent, once."""
    if ctx.invoked_subcommand is None:  # no command: the help, as a question answered (exit 0)
        click.echo(ctx.get_help())


@main.command(cls=SectionedCommand, epilog=SEE_EXIT_CODES)
@settings_options
@option("--dry-run", is_flag=True, help="Validate and print the plan; touch neither network nor disk.")
@option("--force", is_flag=True, help="Register again even if this node is registered.")
@option("--rehearsal", envvar="NEZHA_BOOTSTRAP_REHEARSAL", is_flag=True,
        help="Allow `run` under --root (not /) with the stub installer and agent of the fakes "
             "(nezha_bootstrap.testing), which act only inside the root; any other installer or agent is "
             "still refused. Images are prepared with install-service --root.")
@agent_options
@output_options
@click.pass_context
@handle_errors
def run(
    ctx: click.Context, /, dry_run: bool, force: bool, rehearsal: bool, as_json: bool, quiet: bool, verbose: bool,
    **params: Any
) -> None:
    """Register the node (once) and install the agent with its secret."""
    from nezha_bootstrap import run as core

    reporter = _reporter(as_json, quiet, verbose)
    config, facts = config_of(ctx, params, reporter, force=force)
    result = core.run(config, facts, Paths(config.root), reporter, dry_run=dry_run, rehearsal=rehearsal)
    _print_result(reporter, result)


def _print_result(reporter: Reporter, result: RunResult) -> None:
    for line in result.headline():
        reporter.result(line)
    for note in result.notes:
        reporter.info(f"note: {note}")
    steps = {} if result.outcome == "dry_run" else {"steps": reporter.steps}
    reporter.emit_json({**result.as_json(), "exit_code": 0, **steps, "warnings": reporter.warnings})


@main.command(cls=SectionedCommand, epilog=SEE_EXIT_CODES)
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
    from nezha_bootstrap import run as core

    reporter = _reporter(as_json, quiet, verbose)
    config, facts = config_of(ctx, params, reporter)
    results = core.check(config, facts, Paths(config.root))
    for result in results:
        reporter.result(f"{result.status:<4}  {result.name:<10} {result.detail}")  # ok, FAIL or skip
    failed = next((r for r in results if not r.ok), None)
    code = failed.exit_code if failed else 0
    reporter.emit_json({"checks": [r.as_dict() for r in results], "exit_code": code, "warnings": reporter.warnings})
    sys.exit(code)


@main.command(epilog=SEE_EXIT_CODES)
@root_option
@output_options
@click.pass_context
@handle_errors
def status(ctx: click.Context, root: str, as_json: bool, quiet: bool, verbose: bool) -> None:
    """Show the saved state (never the secret), the agent unit and the agent process."""
    from nezha_bootstrap.status import collect, shown

    reporter = _reporter(as_json, quiet, verbose)
    info = collect(Paths(Path(root)))
    for key, value in info.items():
        reporter.result(f"{key}: {shown(value)}")
    reporter.emit_json({**info, "exit_code": 0})


@main.command(epilog=SEE_EXIT_CODES)
@output_options
@click.pass_context
@handle_errors
def demo(ctx: click.Context, as_json: bool, quiet: bool, verbose: bool) -> None:
    """Run the real flow against a local fake dashboard and a stub installer, twice."""
    from nezha_bootstrap.demo import run_demo

    reporter = _reporter(as_json, quiet, verbose)
    run_demo(reporter)


@main.command("bundle", epilog=SEE_EXIT_CODES)
@option("--agent-dir", required=True, type=click.Path(file_okay=False),
        help="Agent releases in the layout of --agent-base-url: v<version>/nezha-agent_linux_<arch>.zip beside "
             "that version's checksums.txt.")
@option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The bundle to write (.pyz).")
@option("--pyz", type=click.Path(dir_okay=False),
        help="The zipapp to add the agents to. [default: the zipapp this runs from]")
@option("--arch", "arches", multiple=True,
        help="Architecture to take agents for (x86_64 or amd64, repeatable). [default: the one the zipapp runs on]")
@output_options
@click.pass_context
@handle_errors
def bundle_command(ctx: click.Context, /, agent_dir: str, output: str, pyz: str | None, arches: tuple[str, ...],
                   as_json: bool, quiet: bool, verbose: bool) -> None:
    """Write a zipapp that carries the agent release zips, for nodes that reach only the dashboard.

    Every zip is taken only if its SHA-256 matches its checksums.txt, and is pinned inside; a run from
    the bundle installs that agent (v0 dashboards with --method direct) and downloads nothing. Prints
    the bundle's SHA-256 for `render cloud-init --pyz-sha256`.
    """
    from nezha_bootstrap import bundle
    from nezha_bootstrap.firstboot.zipapp import MAX_PYZ_BYTES

    reporter = _reporter(as_json, quiet, verbose)
    base = Path(pyz) if pyz else bundle.running_zipapp()
    if base is None:
        raise SettingsError(["this is not running from a zipapp: give --pyz FILE (dist/nezha-bootstrap-<version>-"
                             "<arch>.pyz from packaging/build or the release) to add the agents to"])
    written = bundle.write(base, Path(agent_dir), Path(output), arches)
    for warning in written.warnings:
        reporter.warn(warning)
    reporter.result(f"wrote {written.path}: {written.size:,} bytes (the first-boot fetch takes up to "
                    f"{MAX_PYZ_BYTES:,})")
    reporter.result(f"carries {written.bundle.summary()}, each pinned by its SHA-256")
    reporter.result(f"sha256 {written.sha256}  (for render cloud-init --pyz-url URL --pyz-sha256 {written.sha256})")
    reporter.emit_json({"path": str(written.path), "sha256": written.sha256, "size": written.size,
                        "agents": [{"version": a.version, "asset": a.asset, "sha256": a.sha256}
                                   for a in written.bundle.agents],
                        "exit_code": 0, "warnings": reporter.warnings})


# --- first boot: render, install-service, seal, uninstall ----------------------------------------

def _write_output(text: str, output: str | None, reporter: Reporter, mode: int = 0o600) -> None:
    if output is None:
        if sys.stdout.isatty() and redact.holds_secret(text):
            # Meant for a file or a cloud API, never for a screen, its scroll-back or a session log.
            raise SettingsError([
                "the rendered text holds a secret (the API token or agent secret): "
                "write it with --output FILE (mode 0600) or redirect stdout to a file"
            ])
        # Not through the reporter: this output is meant to carry the token (user-data, settings file).
        click.echo(text, nl=False)
        return
    from nezha_bootstrap.system import atomic_write, regular_file_problem

    problem = regular_file_problem(Path(output))
    if problem:  # a device, a link or a pipe would be replaced by a 0600 file holding the token
        raise SettingsError([f"--output {output}: {problem}; give the path of a regular file"])
    try:
        atomic_write(Path(output), text.encode("utf-8"), mode=mode)
    except OSError as exc:
        raise InternalError(f"cannot write {output}: {exc.strerror or exc}") from exc
    reporter.info(f"wrote {output} (mode {mode:04o})")


@main.command("render", cls=SectionedCommand, epilog=SEE_EXIT_CODES)
@click.argument("kind", type=click.Choice(RENDER_KINDS))
@settings_options
@agent_options
@install_options
@option("--ca-file", metavar="PEM", type=click.Path(dir_okay=False),
        help="cloud-init kinds: CA certificates (PEM) of a private-CA dashboard, added to each node's trust store "
             "(cloud-init's ca_certs), which the tool, the zipapp's download and the agent use.")
@option("--comments", is_flag=True, help="Keep the explanatory comments (larger user-data).")
@option("--no-size-limit", is_flag=True,
        help=f"Write user-data over {USER_DATA_LIMIT:,} bytes (EC2's limit) for a cloud that takes more.")
@option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file (mode 0600), not stdout.")
@click.pass_context
@handle_errors
def render_command(ctx: click.Context, /, kind: str, ca_file: str | None, comments: bool, no_size_limit: bool,
                   output: str | None, **params: Any) -> None:
    """Print the unit, the settings file or cloud-init user-data, filled from the settings of `run`.

    KIND: cloud-init (installs the tool: the zipapp with --pyz-url, or pip with --package; writes
    settings and unit, starts it), cloud-init-minimal (for images with the tool and the unit: writes
    the settings), systemd (the unit) or env (the settings file). All but systemd hold the
    credential (the v0 API token, the v1/v2 agent secret or a v2.1+ access token): keep the output
    private. Comments are left out unless --comments; user-data over 16,384 bytes is refused.
    """
    from nezha_bootstrap.firstboot import render, zipapp

    reporter = _reporter(False, False, False)
    if ctx.get_parameter_source("root") is ParameterSource.COMMANDLINE:
        raise SettingsError(["render prints text and writes only --output: --root is for install-service, seal "
                             "and uninstall"])
    if ca_file and not kind.startswith("cloud-init"):
        raise SettingsError([f"--ca-file is for the cloud-init kinds (user-data); a {kind} file cannot carry a CA: "
                             "put it in the node's trust store, or give the node's path with --ca-bundle"])
    if kind == "systemd":  # the unit holds no secret: readable, as install-service writes it
        _write_output(render.unit(comments=comments), output, reporter, mode=0o644)
        return
    pyz = params.get("pyz")
    install, problems = zipapp.choose(kind, **{name: params.pop(name) for name in INSTALL_OPTIONS})
    ca = _ca_certificates(ca_file, problems) if ca_file else None
    settings = settings_file(ctx, params, reporter, problems, comments=comments)
    try:
        text = zipapp.document(kind, settings, install, comments=comments, ca=ca)
    except ValueError as exc:
        raise SettingsError([str(exc)]) from exc
    if kind.startswith("cloud-init") and not no_size_limit:
        lean = zipapp.document(kind, settings, install, comments=False, ca=ca) if comments else text
        problem = render.size_problem(text, _droppable(settings, ca, comments=len(text) - len(lean)))
        if problem:
            raise SettingsError([problem])
    if pyz:  # choose() read it: a zipapp within the cap
        reporter.info(zipapp.describe_pyz(Path(pyz)))
    _write_output(text, output, reporter)


def _ca_certificates(path: str, problems: list[str]) -> str | None:
    """The certificates of --ca-file, re-encoded; a problem when it is missing, too large or holds anything else."""
    from nezha_bootstrap.firstboot import render

    try:
        with open(path, "rb") as file:
            data = file.read(render.MAX_CA_BYTES + 1)
    except OSError as exc:
        problems.append(f"--ca-file {path}: {exc.strerror or exc}")
        return None
    if len(data) > render.MAX_CA_BYTES:
        problems.append(f"--ca-file {path}: larger than {render.MAX_CA_BYTES:,} bytes, which user-data cannot carry")
        return None
    try:
        return render.ca_certificates(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        reason = "it is not PEM text" if isinstance(exc, UnicodeDecodeError) else str(exc)
        problems.append(f"--ca-file {path}: {reason}")
        return None


def _droppable(settings: str, ca: str | None, *, comments: int) -> dict[str, int]:
    """What of the user-data the user may drop or shorten, with its bytes there: the comments, the CA, long settings."""
    from nezha_bootstrap.firstboot import render
    from nezha_bootstrap.options import run_setting_options

    flags = {str(item.envvar): item.opts[0] for item in run_setting_options() if item.envvar}
    parts = {"--comments": comments, "--ca-file": len(render.yaml_string(ca)) if ca else 0}
    for line in settings.splitlines():
        name, _, value = line.partition("=")
        if name in flags and len(value) >= 512:  # a long note, name or list of flags
            parts[f"{flags[name]}/{name}"] = len(render.yaml_string(value))
    return parts


def _root_paths(root: str, *, existing: bool = False) -> Paths:
    """The root of install-service, seal and uninstall; `existing`: it must be a directory already (seal and
    uninstall of a mistyped path would otherwise report a sealed image that does not exist)."""
    if not Path(root).is_absolute():
        raise SettingsError([f"root must be an absolute path, got {root!r}"])
    if existing and not Path(root).is_dir():
        raise SettingsError([f"--root {root} is not an existing directory: give the mounted image's root"])
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
    from nezha_bootstrap import effects
    from nezha_bootstrap.firstboot import service

    for note in plan.notes:
        reporter.warn(note)
    if dry_run:
        for line in plan.describe() or ["nothing to do"]:
            reporter.result(line)
    else:
        effects.apply(plan, reporter, lock)
        reporter.result(done)
    if name_server:
        reporter.result(service.dashboard_note(saved))
    server = None if saved is None else {"name": saved.name, "id": saved.server_id, "uuid": saved.uuid,
                                         "dashboard": display_url(saved.dashboard_url)}
    reporter.emit_json({"outcome": "dry_run" if dry_run else outcome, "actions": plan.describe(),
                        "server": server, "exit_code": 0, "warnings": reporter.warnings})


@main.command("install-service", cls=SectionedCommand, epilog=SEE_EXIT_CODES)
@settings_options
@agent_options
@option("--unit-only", is_flag=True,
         help="Write and enable the unit only; the settings file comes later (cloud-init-minimal user-data).")
@option("--pyz", envvar="NEZHA_BOOTSTRAP_PYZ", type=click.Path(dir_okay=False),
         help="Also install this zipapp as the tool: /opt/nezha-bootstrap/nezha-bootstrap.pyz and its launcher.")
@option("--dry-run", is_flag=True, help="Print what would be written and run; change nothing.")
@output_options
@click.pass_context
@handle_errors
def install_service(ctx: click.Context, /, unit_only: bool, pyz: str | None, dry_run: bool, as_json: bool, quiet: bool,
                    verbose: bool, **params: Any) -> None:
    """For image builders: write nezha-bootstrap.service and its 0600 settings file, enable the unit.

    Under --root it links the unit into multi-user.target.wants itself; `systemctl enable` is used
    only when the root is / and systemd runs. The unit starts at the next boot. --pyz also installs
    the tool: the zipapp and a launcher that name only paths inside the image.
    """
    from nezha_bootstrap.facts import systemd_running
    from nezha_bootstrap.firstboot import service, zipapp

    reporter = _reporter(as_json, quiet, verbose)
    paths = _root_paths(params["root"])
    names = ("dashboard_url", "token", "token_file", "agent_secret", "agent_secret_file")
    given = ["--" + name.replace("_", "-") for name in names if ctx.get_parameter_source(name) in SET_BY_USER]
    if unit_only and given:
        raise SettingsError([f"--unit-only writes no settings file, so {', '.join(given)} (flag or env var) would "
                             "be dropped: leave them to the user-data (`render cloud-init-minimal`), or leave out "
                             "--unit-only"])
    settings = None if unit_only else settings_file(ctx, params, reporter)
    try:
        tool = None if pyz is None else zipapp.read_pyz(Path(pyz))
    except ValueError as exc:
        raise SettingsError([str(exc)]) from exc
    plan = service.plan_install_service(paths, settings, use_systemctl=systemd_running(paths), pyz=tool)
    _carry_out(plan, reporter, dry_run=dry_run, outcome="installed",
               done="installed: nezha-bootstrap.service runs at the next boot")


@main.command(epilog=SEE_EXIT_CODES)
@root_option
@option("--dry-run", is_flag=True, help="Print what would be removed and run; change nothing.")
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
    paths = _root_paths(root, existing=True)
    saved = _saved_state(paths, reporter)
    plan = service.plan_seal(paths, own_system=paths.is_host_root)
    _carry_out(plan, reporter, dry_run=dry_run, outcome="sealed",
               done="sealed: capture the image now, before it boots again",
               lock=paths, saved=saved, name_server=saved is not None)


@main.command(epilog=SEE_EXIT_CODES)
@root_option
@option("--purge", is_flag=True, help="Also remove nezha-bootstrap.service and /etc/nezha-bootstrap.")
@option("--dry-run", is_flag=True, help="Print what would be removed and run; change nothing.")
@output_options
@click.pass_context
@handle_errors
def uninstall(ctx: click.Context, /, root: str, purge: bool, dry_run: bool, as_json: bool, quiet: bool,
              verbose: bool) -> None:
    """Remove the agent and the saved state, and name the server to delete in the dashboard."""
    from nezha_bootstrap.facts import systemd_running
    from nezha_bootstrap.firstboot import service

    reporter = _reporter(as_json, quiet, verbose)
    paths = _root_paths(root, existing=True)
    saved = _saved_state(paths, reporter)
    plan = service.plan_uninstall(paths, own_system=paths.is_host_root, use_systemctl=systemd_running(paths),
                                  purge=purge)
    _carry_out(plan, reporter, dry_run=dry_run, outcome="uninstalled", done="uninstalled", lock=paths, saved=saved,
               name_server=True)


# --- the operator's machine: reconcile a v1/v2 fleet with a manifest -----------------------------

@main.command("reconcile", epilog=SEE_EXIT_CODES)
@click.argument("manifest_path", metavar="MANIFEST")
@option("--dashboard-url", envvar="NEZHA_DASHBOARD_URL", metavar="URL", help="Dashboard URL (a v1 or v2 dashboard).")
@option("--token-file", envvar="NEZHA_TOKEN_FILE", metavar="FILE",
         help="File holding a v2.1+ access token (nzp_...); '-' reads stdin.")
@option("--token", envvar="NEZHA_TOKEN", hidden=True, help="Access token (use the env var: a flag shows in ps).")
@option("--username", envvar="NEZHA_USERNAME", metavar="USER",
        help="Log in as this user instead of a token (v1.x, v2.0, v2.1+).")
@option("--password-file", envvar="NEZHA_PASSWORD_FILE", metavar="FILE",
         help="File holding the login's password ('-': stdin). [default: asked for, not echoed]")
@option("--apply/--dry-run", "apply", default=False, show_default=True,
         help="--dry-run prints the plan and changes nothing; --apply carries it out and verifies it.")
@option("--ca-bundle", envvar="NEZHA_CA_BUNDLE", metavar="FILE",
        help="PEM file of a private CA. [default: system trust store]")
@option("--deadline", envvar="NEZHA_BOOTSTRAP_DEADLINE", default="60", show_default=True, metavar="SECONDS",
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
    from nezha_bootstrap.fleet.session import open_session
    from nezha_bootstrap.http import make_client

    reporter = _reporter(as_json, quiet, verbose)
    target = reconcile_target(ctx, params, manifest_path, username, password_file, reporter)
    url, ca_bundle = target.url, target.ca_bundle
    with make_client(ca_bundle, urls=(url,)) as client:
        session, generation = open_session(client, url, target.credentials, target.deadline, reporter.info)
        reporter.context.update(dashboard=display_url(url), generation=generation.value)
        reporter.info(f"{display_url(url)}: a {generation.value} dashboard; reading servers and groups")
        plan, failures = reconcile.run(session, target.manifest, apply=apply, notify=reporter.info)
    _report_reconcile(reporter, plan, failures, apply=apply)


def _report_reconcile(reporter: Reporter, plan: Any, failures: list[str], *, apply: bool) -> None:
    from nezha_bootstrap.errors import DashboardRefused
    from nezha_bootstrap.fleet import reconcile

    rows = plan.actions()
    lines = reconcile.table(rows)
    for line in lines:
        reporter.result(line)
    reporter.context.update(actions=rows, table=lines)  # the table too: Ansible's --diff shows it as printed
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
