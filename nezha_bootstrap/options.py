"""The click option tables, and click's values turned into one validated Config (with cli.py, the only click user).

Every option has its environment variable (`show_envvar`, so `--help` documents it). Values are
taken as text and checked by config.build, so a bad one is reported together with every other
problem instead of stopping click's parsing at the first.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import click
from click.core import ParameterSource

from nezha_bootstrap import redact
from nezha_bootstrap.config import (
    AGENT_V0,
    AGENT_V1,
    DEFAULT_AGENT_BASE_URL,
    DEFAULT_DEADLINE,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_ONLINE_TIMEOUT,
    DEFAULT_PROBE_PORT,
    DEFAULT_SCRIPT_URL,
    AgentSettings,
    Config,
    NamingSettings,
    Settings,
    build,
)
from nezha_bootstrap.errors import SettingsError
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter

if TYPE_CHECKING:
    from nezha_bootstrap.bundle import Bundle
    from nezha_bootstrap.fleet.session import ReconcileTarget  # there: `run` does not load its class

F = TypeVar("F", bound=Callable[..., Any])

# Never written to the settings file: the root is where this command works, and secrets are
# written by value (NEZHA_TOKEN, NEZHA_AGENT_SECRET), not as a path to a file on this machine.
NOT_SETTINGS = frozenset({"root", "token", "token_file", "agent_secret", "agent_secret_file"})
SET_BY_USER = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


# The sections of `--help` for the commands that take the settings of `run`, in order; each option
# parameter is in one (tests/test_cli.py checks that every option of those commands is placed).
SECTIONS: dict[str, tuple[str, ...]] = {
    "Connection": ("dashboard_url", "generation", "ca_bundle", "probe_address", "probe_port", "tls",
                   "allow_plaintext"),
    "Credentials": ("token", "token_file", "agent_secret", "agent_secret_file"),
    "Server": ("name", "tag", "note", "hide_for_guest"),
    "Naming on v2.1+ (with an access token)": ("public_note", "display_index", "group", "group_id", "create_group",
                                               "enroll_timeout"),
    "Agent": ("method", "agent_base_url", "agent_version", "agent_sha256", "agent_options", "agent_flags", "uuid",
              "adopt", "script_url", "script_sha256", "mirror"),
    "First boot": ("pyz_url", "pyz_sha256", "pyz", "package", "pip_options", "ca_file", "comments", "no_size_limit",
                   "unit_only", "output"),
    "Behaviour": ("dry_run", "force", "rehearsal", "deadline", "lock_timeout", "online_timeout", "root", "as_json",
                  "quiet", "verbose", "help"),
}


class SectionedCommand(click.Command):
    """A command whose --help lists its options in the SECTIONS above (click's own formatter)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records: dict[str, list[tuple[int, tuple[str, str]]]] = {title: [] for title in SECTIONS}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and isinstance(param, click.Option):
                title = section_of(param.name)
                names = SECTIONS[title]
                records[title].append((names.index(param.name) if param.name in names else len(names), record))
        for title, rows in records.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl([record for _, record in sorted(rows, key=lambda row: row[0])])


def section_of(name: str | None) -> str:
    """The --help section of an option parameter; an option not placed yet goes under Behaviour."""
    return next((title for title, names in SECTIONS.items() if name in names), "Behaviour")


def option(*decls: str, **kwargs: Any) -> Callable[[F], F]:
    """click.option with the environment variable shown in --help."""
    kwargs.setdefault("show_envvar", True)
    return click.option(*decls, **kwargs)


def _apply(func: F, options: list[Callable[[F], F]]) -> F:
    for decorator in reversed(options):
        func = decorator(func)
    return func


def output_options(func: F) -> F:
    return _apply(func, [
        option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout."),
        option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr."),
        option("-v", "--verbose", is_flag=True,
               help="Also show details: the commands run and their output (redacted)."),
    ])


def root_option(func: F) -> F:
    return option("--root", envvar="NEZHA_BOOTSTRAP_ROOT", default="/", show_default=True, metavar="DIR",
                  help="Resolve every path the tool reads or writes under this directory.")(func)


def settings_options(func: F) -> F:
    """The options shared by run, check and render: one table, one env var each."""
    func = _apply(func, [
        option("--dashboard-url", envvar="NEZHA_DASHBOARD_URL", metavar="URL",
               help="Dashboard URL (http/https, sub-path allowed)."),
        option("--token-file", envvar="NEZHA_TOKEN_FILE", metavar="FILE",
               help="File holding the token (v0 API token, or v2.1+ access token); '-' reads stdin."),
        option("--token", envvar="NEZHA_TOKEN", metavar="TOKEN",
               help="v0: the API token; v2.1+: an access token (nzp_...) instead of the agent secret (prefer the "
                    "env var: a flag shows in the process list)."),
        option("--probe-address", envvar="NEZHA_PROBE_ADDRESS", metavar="HOST",
               help="Agent's server host. [default: the dashboard's host]"),
        option("--probe-port", envvar="NEZHA_PROBE_PORT", default=str(DEFAULT_PROBE_PORT), show_default=True,
               metavar="PORT", help="Agent's server port."),
        option("--tls/--no-tls", envvar="NEZHA_PROBE_TLS", default=True, show_default=True,
               help="Agent connects with TLS."),
        option("--name", envvar="NODE_NAME",
               help="Server name; {hostname}, {ip}, {machine_id} are filled in. [default: host name]"),
        option("--tag", envvar="NEZHA_TAG", metavar="TAG", help="Server tag (unset: the dashboard's AutoRegister)."),
        option("--note", envvar="NEZHA_NOTE", help="Server note (unset: empty)."),
        option("--hide-for-guest/--show-for-guest", envvar="NEZHA_HIDE_FOR_GUEST", default=True, show_default=True,
               help="Hide the server from guests."),
        option("--agent-flag", "agent_flags", envvar="NEZHA_AGENT_FLAGS", multiple=True, metavar="FLAG",
               help="Extra agent flag (repeatable; env: space-separated)."),
        option("--script-url", envvar="NEZHA_INSTALL_SCRIPT_URL", default=DEFAULT_SCRIPT_URL, show_default=True,
               metavar="URL",
               help="install.sh to run (the commit-pinned v0 script)."),
        option("--script-sha256", envvar="NEZHA_INSTALL_SCRIPT_SHA256", metavar="HEX",
               help="SHA-256 of the script. [default: the pinned hash for the default URL]"),
        option("--mirror", envvar="NEZHA_MIRROR", metavar="cn", help="cn: the installer uses the China mirror."),
        option("--deadline", envvar="NEZHA_BOOTSTRAP_DEADLINE", type=str, metavar="SECONDS",
               default=DEFAULT_DEADLINE, show_default=True, help="Seconds for all retries of one step together."),
        option("--lock-timeout", envvar="NEZHA_BOOTSTRAP_LOCK_TIMEOUT", type=str, metavar="SECONDS",
               default=DEFAULT_LOCK_TIMEOUT, show_default=True, help="Seconds to wait for another run's lock."),
        option("--online-timeout", envvar="NEZHA_ONLINE_TIMEOUT", type=str, metavar="SECONDS",
               default=DEFAULT_ONLINE_TIMEOUT, show_default=True,
               help="Seconds to wait, after installing the agent, for the dashboard to see the node online."),
        option("--ca-bundle", envvar="NEZHA_CA_BUNDLE", metavar="FILE",
               help="PEM file of a private CA. [default: system trust store]"),
    ])
    return root_option(func)


def agent_options(func: F) -> F:
    """The v1/v2 options of `run` (dashboard-v1-v2.md): agent secret, install method, release, identity, naming."""
    return _apply(func, [
        option("--dashboard", "generation", envvar="NEZHA_DASHBOARD_GENERATION", default="auto", show_default=True,
               type=click.Choice(["auto", "v0", "v1", "v2"]),
               help="Dashboard generation; auto probes it (no credentials); v1 and v2 mean the same: v1 or newer."),
        option("--agent-secret-file", envvar="NEZHA_AGENT_SECRET_FILE", metavar="FILE",
               help="File holding the v1/v2 agent secret; '-' reads stdin."),
        option("--agent-secret", envvar="NEZHA_AGENT_SECRET", metavar="SECRET",
               help="v1/v2 agent secret (prefer the env var or the file: a flag shows in the process list)."),
        option("--method", envvar="NEZHA_INSTALL_METHOD", type=click.Choice(["script", "direct"]),
               help="script: install.sh (v0 only); direct: the pinned agent release. [default: by generation]"),
        option("--agent-base-url", envvar="NEZHA_AGENT_BASE_URL", default=DEFAULT_AGENT_BASE_URL, show_default=True,
               metavar="URL",
               help="Release base: {base}/v{version}/{asset} and {base}/v{version}/checksums.txt."),
        option("--agent-version", envvar="NEZHA_AGENT_VERSION", metavar="VERSION",
               help=f"Agent release. [default: {AGENT_V1} for v1.1.1+ dashboards, {AGENT_V0} for v0]"),
        option("--agent-sha256", envvar="NEZHA_AGENT_SHA256", metavar="HEX", help="Pinned SHA-256 of the agent zip."),
        option("--agent-option", "agent_options", envvar="NEZHA_AGENT_OPTIONS", multiple=True, metavar="KEY=VALUE",
               help="Agent config KEY=VALUE (repeatable; env: space-separated), e.g. report_delay=2."),
        option("--uuid", envvar="NEZHA_AGENT_UUID", metavar="UUID",
               help="Agent uuid. [default: UUIDv5 of /etc/machine-id]"),
        option("--adopt", is_flag=True, envvar="NEZHA_ADOPT",
               help="Uninstall agents the vendor script left (config-*.yml) and report their uuids."),
        option("--allow-plaintext", is_flag=True, envvar="NEZHA_ALLOW_PLAINTEXT",
               help="Allow --no-tls to a public address (the agent secret crosses in clear text)."),
        # Token mode (v2.1+, NEZHA_TOKEN=nzp_...): the access token names the server (v1/naming.py).
        option("--public-note", envvar="NEZHA_PUBLIC_NOTE", help="v2.1+ token mode: the server's public note."),
        option("--display-index", envvar="NEZHA_DISPLAY_INDEX", metavar="INTEGER",
               help=f"v2.1+ token mode: sort weight, {-(2 ** 31)} to {2 ** 31 - 1} (higher first)."),
        option("--group", envvar="NEZHA_GROUP", metavar="NAME",
               help="v2.1+ token mode: join the server group of this name."),
        option("--group-id", envvar="NEZHA_GROUP_ID", metavar="ID",
               help="v2.1+ token mode: the group's id (names may repeat)."),
        option("--create-group", is_flag=True, envvar="NEZHA_CREATE_GROUP",
               help="v2.1+ token mode: create the --group when it does not exist."),
        option("--enroll-timeout", envvar="NEZHA_ENROLL_TIMEOUT", default="120", show_default=True, metavar="SECONDS",
               help="v2.1+ token mode: how long to wait for the dashboard to list the new server."),
    ])


INSTALL_OPTIONS = ("pyz_url", "pyz_sha256", "pyz", "package", "pip_options")  # parameter names of install_options


def install_options(func: F) -> F:
    """How `render cloud-init` puts the tool on each node: the zipapp (recommended) or pip."""
    return _apply(func, [
        option("--pyz-url", envvar="NEZHA_BOOTSTRAP_PYZ_URL", metavar="URL",
               help="cloud-init: where each node downloads the zipapp (https, or http: the hash is pinned)."),
        option("--pyz-sha256", envvar="NEZHA_BOOTSTRAP_PYZ_SHA256", metavar="HEX",
               help="cloud-init: the zipapp's SHA-256 (its line in SHA256SUMS); nodes refuse any other file."),
        option("--pyz", envvar="NEZHA_BOOTSTRAP_PYZ", type=click.Path(dir_okay=False),
               help="cloud-init: a local copy of the zipapp, whose SHA-256 is pinned (instead of --pyz-sha256)."),
        option("--package", envvar="NEZHA_BOOTSTRAP_PACKAGE", metavar="SPEC",
               help="cloud-init with pip instead: what pip installs into a venv in /opt/nezha-bootstrap: an index "
                    "name (nezha-bootstrap==X.Y), a wheel URL or a path on the server."),
        option("--pip-option", "pip_options", envvar="NEZHA_BOOTSTRAP_PIP_OPTIONS", multiple=True, metavar="OPTION",
               help="cloud-init with pip: one more `pip install` argument, e.g. --index-url=URL "
                    "(repeatable; env: space-separated)."),
    ])


def read_secret(path: str, what: str, problems: list[str], *, first_line: bool = False) -> str | None:
    """A secret from its file ('-': one line of stdin), registered for redaction; a problem when unreadable.

    `first_line`: the first line as written (a password may hold spaces); else the text stripped.
    """
    try:
        text = sys.stdin.readline() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"cannot read the {what} file {path}: {getattr(exc, 'strerror', None) or exc}")
        return None
    value = (text.splitlines()[0] if text else "") if first_line else text.strip()
    redact.register(value)
    return value


def loose_secret_file(path: str | None, what: str) -> str | None:
    """A warning when a secret's file can be read by its group or others (the secret is used all the same)."""
    if not path or path == "-":
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # reading it reports the problem
    if not stat.S_ISREG(mode) or not mode & 0o044:
        return None
    return (f"the {what} file {path} can be read by its group or others (mode {stat.S_IMODE(mode):04o}): "
            f"chmod 600 {path}")


def secret_file_warnings(params: dict[str, Any], reporter: Reporter) -> None:
    """Warn about secret files others can read (before `params` gives them up)."""
    for name, what in (("token_file", "token"), ("agent_secret_file", "agent secret"), ("password_file", "password")):
        warning = loose_secret_file(params.get(name), what)
        if warning:
            reporter.warn(warning)


def read_password(username: str | None, password_file: str | None, problems: list[str]) -> str | None:
    """The login's password from its file (never from a flag or the environment); None: ask for it."""
    if not password_file:
        return None
    if not username:
        problems.append("--password-file is for a login: give --username too")
        return None
    return read_secret(password_file, "password", problems, first_line=True)


def ask_password(username: str) -> str:
    """The login's password: asked for, not echoed, on a terminal; read as one plain line from a pipe
    (getpass would warn there that it cannot hide what nobody sees)."""
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    return str(click.prompt(f"Password for {username}", hide_input=True, err=True, default="", show_default=False))


def _from_flag(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE


def read_token(ctx: click.Context, params: dict[str, Any], problems: list[str]) -> tuple[str | None, str | None]:
    """Pop --token/--token-file: the token (None: none given, or its file unreadable) and where it came from."""
    token_file, token = params.pop("token_file"), params.pop("token")
    source = "--token" if _from_flag(ctx, "token") else ("NEZHA_TOKEN" if token else None)
    if token_file and source == "--token":
        problems.append("give either --token or --token-file, not both")
    if token_file:
        token, source = read_secret(token_file, "token", problems), f"--token-file {token_file}"
    redact.register(token)
    return token, source


def _carried() -> Bundle | None:
    """The agents of the bundle this runs from (None: not one). The bundle module loads only inside a
    bundle: a plain run pays one lookup for its package, not the module's import (start-up, issue 19)."""
    import importlib.util

    if importlib.util.find_spec("nezha_bootstrap_bundle") is None:  # bundle.PACKAGE
        return None
    from nezha_bootstrap.bundle import carried

    return carried()


def _agent_settings(ctx: click.Context, params: dict[str, Any], problems: list[str]) -> AgentSettings:
    secret_file, secret = params.pop("agent_secret_file"), params.pop("agent_secret")
    from_flag = _from_flag(ctx, "agent_secret")
    if secret_file:
        secret, from_flag = read_secret(secret_file, "agent secret", problems), False
    redact.register(secret)
    return AgentSettings(
        generation=params.pop("generation"), secret=secret, secret_from_flag=from_flag, method=params.pop("method"),
        base_url=params.pop("agent_base_url"), version=params.pop("agent_version"), sha256=params.pop("agent_sha256"),
        uuid=params.pop("uuid"), adopt=params.pop("adopt"), allow_plaintext=params.pop("allow_plaintext"),
        options=tuple(params.pop("agent_options")),
        probe_port_given=ctx.get_parameter_source("probe_port") is not ParameterSource.DEFAULT,
        tls_given=ctx.get_parameter_source("tls") is not ParameterSource.DEFAULT,
        bundle=_carried(),
    )


def _naming_settings(params: dict[str, Any]) -> NamingSettings:
    return NamingSettings(
        public_note=params.pop("public_note"), display_index=params.pop("display_index"), group=params.pop("group"),
        group_id=params.pop("group_id"), create_group=params.pop("create_group"),
        enroll_timeout=params.pop("enroll_timeout"),
    )


def settings_of(ctx: click.Context, params: dict[str, Any], problems: list[str], *, force: bool = False) -> Settings:
    """Pop the settings options from `params` (reading the secret files) into raw Settings."""
    token, source = read_token(ctx, params, problems)
    agent = _agent_settings(ctx, params, problems)
    return Settings(
        dashboard_url=params.pop("dashboard_url"), token=token, token_source=source,
        probe_address=params.pop("probe_address"), probe_port=params.pop("probe_port"), tls=params.pop("tls"),
        name=params.pop("name"), tag=params.pop("tag"), note=params.pop("note"),
        hide_for_guest=params.pop("hide_for_guest"), agent_flags=tuple(params.pop("agent_flags")),
        script_url=params.pop("script_url"), script_sha256=params.pop("script_sha256"), mirror=params.pop("mirror"),
        root=params.pop("root"), deadline=params.pop("deadline"), lock_timeout=params.pop("lock_timeout"),
        online_timeout=params.pop("online_timeout"),
        ca_bundle=params.pop("ca_bundle"), force=force, agent=agent, naming=_naming_settings(params),
    )


def config_of(ctx: click.Context, params: dict[str, Any], reporter: Reporter, *, force: bool = False,
              elsewhere: bool = False, problems: list[str] | None = None) -> tuple[Config, Facts]:
    """click's values as one validated Config and the host facts (every problem reported at once).

    `elsewhere`: the settings are for other machines (render, install-service for an image), so the
    name is checked against stand-in facts and the CA bundle is not looked for here.
    """
    from nezha_bootstrap.facts import STAND_IN, gather

    problems = list(problems or [])
    secret_file_warnings(params, reporter)
    if params.get("token_file") == "-" and params.get("agent_secret_file") == "-":
        problems.append("--token-file - and --agent-secret-file - both read stdin: give one of them a file")
    settings = settings_of(ctx, params, problems, force=force)
    if settings.ca_bundle and not elsewhere:
        from nezha_bootstrap.http import ca_bundle_problem  # only with --ca-bundle: it loads httpx

        problems.extend(filter(None, [ca_bundle_problem(Path(settings.ca_bundle))]))
    if elsewhere:
        facts = STAND_IN
    else:  # only {ip} needs psutil
        facts = gather(Paths(Path(settings.root)), want_ip="{ip}" in (settings.name or ""))
    validated = build(settings, facts, problems)
    for warning in validated.warnings:
        reporter.warn(warning)
    return validated.config, facts


def settings_file(ctx: click.Context, params: dict[str, Any], reporter: Reporter,
                  problems: list[str] | None = None, *, comments: bool = True) -> str:
    """Validate the settings as `run` would, for other machines; return the settings file's text.

    Only the settings the user set (flag or env var) are written, as given: a name such as
    "{hostname}" is filled on each server, and defaults stay those of the version installed there.
    """
    from nezha_bootstrap.firstboot import render

    config, _ = config_of(ctx, params, reporter, elsewhere=True, problems=problems)
    for warning in (render.timeout_warning(config.deadline, config.lock_timeout, config.online_timeout),
                    "--uuid is written to the settings file: every server using it enrolls as the same server"
                    if config.agent.uuid else None):
        if warning:
            reporter.warn(warning)
    assignments = [(str(item.envvar), setting_text(ctx.params[item.name])) for item in run_setting_options()
                   if item.name not in NOT_SETTINGS and item.name and item.envvar
                   and ctx.get_parameter_source(item.name) in SET_BY_USER]
    secrets = [(name, value) for name, value in (("NEZHA_TOKEN", config.token),
                                                 ("NEZHA_AGENT_SECRET", config.agent.secret)) if value]
    after_url = next((i + 1 for i, (name, _) in enumerate(assignments) if name == "NEZHA_DASHBOARD_URL"), 0)
    try:
        return render.env_file(assignments[:after_url] + secrets + assignments[after_url:], comments=comments)
    except ValueError as exc:
        raise SettingsError([str(exc)]) from exc


def run_setting_options() -> list[click.Parameter]:
    """The options `run` takes its settings from (settings_options and agent_options), in order."""
    return click.command()(agent_options(settings_options(lambda **_: None))).params


def setting_text(value: Any) -> str:
    """A click value as its environment variable spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return " ".join(str(item) for item in value)  # multiple=True options: space-separated
    return str(value)


def reconcile_target(ctx: click.Context, params: dict[str, Any], manifest_path: str, username: str | None,
                     password_file: str | None, reporter: Reporter) -> ReconcileTarget:
    """click's values of `reconcile`, checked together (exit 2 lists every problem); the password is
    asked for (not echoed) when a login has no --password-file."""
    from nezha_bootstrap.config import check_target
    from nezha_bootstrap.fleet.manifest import load
    from nezha_bootstrap.fleet.session import Credentials, ReconcileTarget, credential_problems
    from nezha_bootstrap.http import ca_bundle_problem

    problems: list[str] = []
    secret_file_warnings({**params, "password_file": password_file}, reporter)
    token, source = read_token(ctx, params, problems)
    if source == "--token":
        reporter.warn("--token shows in the process list; prefer NEZHA_TOKEN or --token-file")
    password = read_password(username, password_file, problems)
    warnings: list[str] = []
    url, deadline = check_target(params["dashboard_url"], params["deadline"], problems, warnings)
    ca_bundle = Path(params["ca_bundle"]) if params["ca_bundle"] else None
    problems.extend(filter(None, [ca_bundle_problem(ca_bundle) if ca_bundle else None]))
    try:
        manifest = load(Path(manifest_path))
    except SettingsError as exc:
        problems.extend(exc.problems)
    if username and password is None and not problems:
        password = ask_password(username)
        redact.register(password)
    credentials = Credentials(token, username, password)
    problems.extend(credential_problems(credentials))
    if problems:
        raise SettingsError(problems)
    for warning in warnings:
        reporter.warn(warning)
    return ReconcileTarget(url, deadline, ca_bundle, credentials, manifest)
