"""The command line itself: help, the token sources, --json, -q, and the exit code of every failure kind."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from nezha_bootstrap import __version__
from nezha_bootstrap.cli import main as cli_main
from nezha_bootstrap.errors import EXIT_CODES
from tests.conftest import TOKEN, Cli, make_runner

SETTINGS_ENV = {
    "NEZHA_DASHBOARD_URL", "NEZHA_TOKEN_FILE", "NEZHA_TOKEN", "NEZHA_PROBE_ADDRESS", "NEZHA_PROBE_PORT",
    "NEZHA_PROBE_TLS", "NODE_NAME", "NEZHA_TAG", "NEZHA_NOTE", "NEZHA_HIDE_FOR_GUEST", "NEZHA_AGENT_FLAGS",
    "NEZHA_INSTALL_SCRIPT_URL", "NEZHA_INSTALL_SCRIPT_SHA256", "NEZHA_MIRROR", "NEZHA_BOOTSTRAP_ROOT",
    "NEZHA_BOOTSTRAP_DEADLINE", "NEZHA_BOOTSTRAP_LOCK_TIMEOUT", "NEZHA_CA_BUNDLE",
}


def help_text(*args: str) -> str:
    """`--help` of a command, with click's line wrapping undone."""
    from nezha_bootstrap.cli import main

    result = make_runner().invoke(main, [*args, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return " ".join(result.stdout.split())


def env_vars_in_help(*args: str) -> set[str]:
    return set(re.findall(r"\[env var: ([A-Z0-9_]+)", help_text(*args)))


# --- help and version -----------------------------------------------------------------------------

@pytest.mark.integration
def test_python_dash_m_shows_the_help() -> None:
    done = subprocess.run([sys.executable, "-m", "nezha_bootstrap", "--help"], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)

    assert done.returncode == 0, done.stderr
    # click 8.2+ shows the optional command in brackets; 8.1 (the last for Python 3.9) does not.
    assert re.match(r"Usage: python -m nezha_bootstrap \[OPTIONS\] \[?COMMAND\]? \[ARGS\]\.\.\.", done.stdout)
    for command in ("run", "check", "status", "demo"):
        assert re.search(rf"^\s+{command}\s", done.stdout, re.MULTILINE), command


# --- the process ends at once (console.start): all output written, the exit code kept --------------------

def run_process(cli: Cli, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    """`python -m nezha_bootstrap ARGS` (console.start, as the console command) with the output in pipes."""
    settings = {**os.environ, **{key: value for key, value in cli.env(**env).items() if value is not None}}
    for key in [key for key, value in cli.env(**env).items() if value is None]:
        settings.pop(key, None)
    return subprocess.run([sys.executable, "-m", "nezha_bootstrap", *args], env=settings, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.integration
def test_a_process_ends_with_its_whole_output_written(cli: Cli) -> None:
    # The whole run in a real process, its output in pipes (the flush itself: the test below).
    done = run_process(cli, "run", "-v", "--json")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] == "registered_and_installed"
    assert "registering" in done.stderr


@pytest.mark.integration
def test_a_process_ends_with_the_commands_exit_code_and_its_error(cli: Cli) -> None:
    done = run_process(cli, "run", "--dry-run", NEZHA_TOKEN=None, NEZHA_TOKEN_FILE=None)

    assert done.returncode == 2
    assert done.stderr.startswith("error: "), done.stderr


@pytest.mark.parametrize(("code", "status", "printed"), [
    (None, 0, ""), (0, 0, ""), (2, 2, ""), (130, 130, ""), ("a message", 1, "a message\n"),
])
def test_the_exit_status_is_pythons_for_each_kind_of_exit_code(
    code: object, status: int, printed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from nezha_bootstrap.console import exit_status

    assert exit_status(code) == status
    assert capsys.readouterr().err == printed


class Ended(Exception):
    """Stands in for os._exit in-process."""


@pytest.mark.parametrize(("ending", "status"), [(None, 0), (SystemExit(2), 2), (SystemExit("no"), 1)])
def test_start_runs_the_command_line_with_a_rare_collector_and_ends_with_its_status(
    ending: SystemExit | None, status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from nezha_bootstrap import cli, console

    seen: dict[str, object] = {}

    def command_line() -> None:
        seen["threshold"] = gc.get_threshold()[0]
        if ending is not None:
            raise ending

    def end(code: int) -> None:
        seen["status"] = code
        raise Ended

    monkeypatch.setattr(cli, "main", command_line)
    monkeypatch.setattr(console.os, "_exit", end)
    before = gc.get_threshold()
    try:
        with pytest.raises(Ended):
            console.start()
    finally:
        gc.set_threshold(*before)

    assert seen == {"threshold": console.GC_THRESHOLD, "status": status}


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_what_is_still_buffered_is_written_before_the_process_ends(stream: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from nezha_bootstrap.console import flushed

    written = io.BytesIO()
    buffered = io.TextIOWrapper(io.BufferedWriter(written, buffer_size=1 << 16), encoding="utf-8")
    monkeypatch.setattr(sys, stream, buffered)
    print("the last line", file=buffered)  # no flush: a pipe's buffer holds it
    assert written.getvalue() == b""

    assert flushed(0) == 0
    assert written.getvalue() == b"the last line\n"


class Unwritable:
    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_that_cannot_be_written_ends_with_status_120_as_pythons_shutdown_would(
    stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nezha_bootstrap.console import flushed

    assert flushed(0) == 0
    monkeypatch.setattr(sys, stream, Unwritable())

    assert flushed(0) == 120
    assert flushed(2) == 120


def test_no_command_prints_the_help_and_exits_0() -> None:
    outcome = make_runner().invoke(cli_main, [])

    assert outcome.exit_code == 0
    assert "Usage:" in outcome.output and "Exit codes:" in outcome.output


@pytest.mark.parametrize("command", ["run", "check", "status", "render", "install-service", "seal", "reconcile"])
def test_the_exit_codes_are_listed_once_on_the_top_level_help_only(command: str) -> None:
    assert "Exit codes:" not in make_runner().invoke(cli_main, [command, "--help"]).output
    assert make_runner().invoke(cli_main, ["--help"]).output.count("Exit codes:") == 1


def test_dashboard_v2_is_accepted_as_v1_or_newer() -> None:
    outcome = make_runner().invoke(cli_main, ["run", "--dry-run", "--dashboard", "v2", "--dashboard-url",
                                        "http://127.0.0.1:9", "--agent-secret-file", "/nonexistent"])

    assert "is not one of" not in outcome.stderr
    assert "cannot read the agent secret file /nonexistent" in outcome.stderr


@pytest.mark.parametrize("command", ["run", "check"])
def test_help_shows_the_env_var_of_every_setting(command: str) -> None:
    assert SETTINGS_ENV <= env_vars_in_help(command)


@pytest.mark.parametrize("command", ["run", "check"])
def test_every_option_but_the_per_invocation_ones_has_an_env_var(command: str) -> None:
    from nezha_bootstrap.cli import main

    options = [p for p in main.commands[command].params if isinstance(p, click.Option)]
    without = sorted(o.name or "" for o in options if not (o.envvar and o.show_envvar))

    assert set(without) <= {"help", "as_json", "quiet", "verbose", "dry_run", "force"}, without


SECTIONED = ["run", "check", "render", "install-service"]


def help_sections(command: str) -> dict[str, list[str]]:
    """Each section title of a command's --help and the options listed under it, in order."""
    result = make_runner().invoke(cli_main, [command, "--help"], terminal_width=100)
    sections: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        if re.match(r"^\S.*:$", line) and not line.startswith("Usage"):
            current = sections.setdefault(line[:-1], [])
        elif re.match(r"^  -", line):
            current.append(re.findall(r"--[a-z][a-z0-9-]*", line)[0])
    return sections


def test_run_help_lists_its_options_in_sections_in_order() -> None:
    sections = help_sections("run")

    assert list(sections) == ["Connection", "Credentials", "Server", "Naming on v2.1+ (with an access token)", "Agent",
                              "Behaviour"]
    assert sections["Connection"][:2] == ["--dashboard-url", "--dashboard"]
    assert sections["Credentials"] == ["--token", "--token-file", "--agent-secret", "--agent-secret-file"]
    assert sections["Naming on v2.1+ (with an access token)"] == [
        "--public-note", "--display-index", "--group", "--group-id", "--create-group", "--enroll-timeout"]
    assert "--help" in sections["Behaviour"] and "--dry-run" in sections["Behaviour"]


def test_render_help_has_a_first_boot_section() -> None:
    assert help_sections("render")["First boot"] == [
        "--pyz-url", "--pyz-sha256", "--pyz", "--package", "--pip-option", "--ca-file", "--comments",
        "--no-size-limit", "--output"]


@pytest.mark.parametrize("command", SECTIONED)
def test_every_option_is_placed_in_a_section_and_listed_once(command: str) -> None:
    from nezha_bootstrap.options import SECTIONS

    options = [p for p in cli_main.commands[command].params if isinstance(p, click.Option) and not p.hidden]
    listed = [option for names in help_sections(command).values() for option in names]

    assert [o.name for o in options if not any(o.name in names for names in SECTIONS.values())] == []
    assert sorted(listed) == sorted(["--help", *(next(d for d in o.opts if d.startswith("--")) for o in options)])


@pytest.mark.parametrize(("command", "option", "metavar"), [
    ("run", "--probe-port", "PORT"), ("run", "--token-file", "FILE"), ("run", "--agent-secret-file", "FILE"),
    ("run", "--ca-bundle", "FILE"), ("run", "--root", "DIR"), ("run", "--dashboard-url", "URL"),
    ("run", "--display-index", "INTEGER"), ("render", "--ca-file", "PEM"), ("render", "--pyz-sha256", "HEX"),
    ("reconcile", "--token-file", "FILE"), ("reconcile", "--password-file", "FILE"),
    ("reconcile", "--ca-bundle", "FILE"),
])
def test_metavars_say_what_a_value_is(command: str, option: str, metavar: str) -> None:
    assert f"{option} {metavar} " in help_text(command)


def test_no_option_of_a_port_a_file_or_a_url_says_text() -> None:
    for command in ["run", "render", "install-service", "reconcile"]:
        assert not re.search(r"--[a-z-]*(port|file|url|bundle|root|sha256)[a-z-]* TEXT", help_text(command)), command


def test_the_display_index_help_states_its_integer_range() -> None:
    assert "sort weight, -2147483648 to 2147483647 (higher first)" in help_text("run")
    assert "e+09" not in help_text("run")


@pytest.mark.parametrize(("flag", "what"), [("--token-file", "token"), ("--agent-secret-file", "agent secret")])
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_secret_file_others_can_read_is_used_with_a_warning(cli: Cli, tmp_path: Path, flag: str, what: str,
                                                              mode: int) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s" * 32 + "\n")
    secret_file.chmod(mode)

    outcome = cli("render", "env", flag, str(secret_file), NEZHA_TOKEN=None)

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stderr == (f"warning: the {what} file {secret_file} can be read by its group or others "
                              f"(mode {mode:04o}): chmod 600 {secret_file}\n")


def test_a_private_secret_file_is_read_without_a_warning(cli: Cli, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s" * 32 + "\n")
    secret_file.chmod(0o600)

    outcome = cli("render", "env", "--agent-secret-file", str(secret_file), NEZHA_TOKEN=None)

    assert outcome.exit_code == 0 and outcome.stderr == ""


MEANINGLESS_TO_USERS = re.compile(r"\bissues?\b|\bseed|done right", re.IGNORECASE)


def test_no_help_speaks_of_how_the_tool_was_made(capsys: pytest.CaptureFixture[str]) -> None:
    from nezha_bootstrap.testing import fake_v0, fake_v1

    texts = {"": help_text(), **{command: help_text(command) for command in cli_main.commands}}
    for module in (fake_v0, fake_v1):
        with pytest.raises(SystemExit):
            module.main(["--help"])
        texts[module.__name__] = capsys.readouterr().out

    assert {name: MEANINGLESS_TO_USERS.findall(text) for name, text in texts.items()
            if MEANINGLESS_TO_USERS.search(text)} == {}


def test_no_message_the_package_prints_speaks_of_how_the_tool_was_made() -> None:
    import ast

    package = Path(__file__).resolve().parent.parent / "nezha_bootstrap"
    found = []
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        found += [f"{path.name}:{node.lineno}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                  and MEANINGLESS_TO_USERS.search(node.value)]

    assert found == []


def test_the_top_level_help_documents_every_exit_code() -> None:
    text = help_text()

    for code, meaning in EXIT_CODES:
        assert f"{code} {meaning}" in text


def test_version_is_the_package_version(cli: Cli) -> None:
    outcome = cli("--version")

    assert (outcome.exit_code, outcome.stdout) == (0, f"nezha-bootstrap, version {__version__}\n")


@pytest.mark.parametrize("args", [("frobnicate",), ("run", "--no-such-flag"), ("run", "--tls=maybe")])
def test_a_usage_error_exits_2_on_stderr(cli: Cli, args: tuple[str, ...]) -> None:
    outcome = cli(*args)

    assert outcome.exit_code == 2
    assert outcome.stdout == ""
    assert "Error: " in outcome.stderr
    assert cli.fake.journal == []


# --- where the token comes from ---------------------------------------------------------------------

@pytest.mark.integration
def test_token_file_is_read_and_nothing_warns(cli: Cli, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)

    outcome = cli("run", "--token-file", str(token_file), NEZHA_TOKEN=None)

    assert outcome.exit_code == 0, outcome.stderr
    assert cli.fake.registrations()[0].headers["authorization"] == TOKEN
    assert "warning" not in outcome.stderr


@pytest.mark.integration
def test_token_file_env_var_is_read(cli: Cli, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)

    outcome = cli("run", NEZHA_TOKEN=None, NEZHA_TOKEN_FILE=str(token_file))

    assert outcome.exit_code == 0, outcome.stderr
    assert cli.fake.registrations()[0].headers["authorization"] == TOKEN


@pytest.mark.integration
def test_token_file_dash_reads_stdin(cli: Cli) -> None:
    outcome = cli("run", "--token-file", "-", input=TOKEN + "\n", NEZHA_TOKEN=None)

    assert outcome.exit_code == 0, outcome.stderr
    assert cli.fake.registrations()[0].headers["authorization"] == TOKEN


@pytest.mark.integration
def test_token_flag_works_and_warns_about_the_process_list(cli: Cli) -> None:
    outcome = cli("run", "--token", TOKEN, NEZHA_TOKEN=None)

    assert outcome.exit_code == 0, outcome.stderr
    assert "warning: --token puts the token in the process list" in outcome.stderr
    assert TOKEN not in outcome.stderr + outcome.stdout


@pytest.mark.parametrize("command", ["run", "check"])
def test_token_file_and_agent_secret_file_both_from_stdin_are_refused_as_ambiguous(cli: Cli, command: str) -> None:
    outcome = cli(command, "--token-file", "-", "--agent-secret-file", "-",
                  input="Agent5ecretAgent5ecret\n" + TOKEN + "\n", NEZHA_TOKEN=None)

    assert outcome.exit_code == 2
    assert "--token-file - and --agent-secret-file - both read stdin: give one of them a file" in outcome.stderr
    assert "Agent5ecretAgent5ecret" not in outcome.stderr and TOKEN not in outcome.stderr
    assert cli.fake.journal == []


def test_token_and_token_file_together_exit_2(cli: Cli, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)

    outcome = cli("run", "--token", TOKEN, "--token-file", str(token_file))

    assert outcome.exit_code == 2
    assert "give either --token or --token-file, not both" in outcome.stderr
    assert TOKEN not in outcome.stderr
    assert cli.fake.journal == []


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {"NEZHA_TOKEN": None}, "a credential is required: the v0 API token"),
        (("--token-file", "/nonexistent/token"), {"NEZHA_TOKEN": None}, "cannot read the token file /nonexistent"),
        (("--token-file", "-"), {"NEZHA_TOKEN": None}, "stdin gave no token (--token-file -)"),
        ((), {"NEZHA_TOKEN": "two words"}, "the API token in NEZHA_TOKEN must be one word"),
    ],
)
def test_a_missing_or_unreadable_token_exits_2(
    cli: Cli, args: tuple[str, ...], env: dict[str, str | None], message: str
) -> None:
    outcome = cli("run", *args, input="", **env)

    assert outcome.exit_code == 2
    assert message in outcome.stderr
    assert cli.fake.journal == []


# --- --json, progress and -q -------------------------------------------------------------------------

@pytest.mark.integration
def test_json_success_is_one_object_on_stdout_and_progress_on_stderr(cli: Cli) -> None:
    outcome = cli("run", "--json", NODE_NAME="web-1")

    assert outcome.exit_code == 0, outcome.stderr
    report = json.loads(outcome.stdout)
    assert outcome.stdout.count("\n") == 1
    assert {k: report[k] for k in ("outcome", "name", "dashboard", "exit_code", "generation", "warnings")} == {
        "outcome": "registered_and_installed", "name": "web-1", "dashboard": cli.dashboard.url, "exit_code": 0,
        "generation": "v0", "warnings": [],
    }
    assert [(step["step"], step["ok"]) for step in report["steps"]] == [
        ("register", True), ("download", True), ("install", True), ("verify", True), ("online", True)]
    assert report["online"] is True and isinstance(report["online_after_s"], float)
    assert all(isinstance(step["seconds"], float) and step["seconds"] >= 0 for step in report["steps"])
    assert re.search(r"^  register: done in \d+\.\d\d s$", outcome.stderr, re.MULTILINE)


@pytest.mark.integration
def test_json_of_a_second_run_says_nothing_to_do(cli: Cli) -> None:
    assert cli("run").exit_code == 0

    report = json.loads(cli("run", "--json").stdout)

    assert (report["outcome"], report["steps"], report["exit_code"]) == ("nothing_to_do", [], 0)


@pytest.mark.integration
def test_json_failure_is_one_object_with_the_error_and_the_failed_step(cli: Cli) -> None:
    outcome = cli("run", "--json", NODE_NAME="web-1", NEZHA_STUB_MODE="exit1")

    assert outcome.exit_code == 5
    report = json.loads(outcome.stdout)
    assert {k: report[k] for k in ("outcome", "name", "dashboard", "exit_code")} == {
        "outcome": "failed", "name": "web-1", "dashboard": cli.dashboard.url, "exit_code": 5,
    }
    assert report["error"][0].startswith("install.sh exited with status 1")
    assert [(step["step"], step["ok"]) for step in report["steps"]] == [
        ("register", True), ("download", True), ("install", False)]
    assert "error: install.sh exited with status 1" in outcome.stderr


def test_json_of_invalid_settings_lists_every_problem(cli: Cli) -> None:
    outcome = cli("run", "--json", "--deadline", "soon", NEZHA_PROBE_PORT="0", NEZHA_MIRROR="us",
                  NEZHA_BOOTSTRAP_LOCK_TIMEOUT="-1")

    assert outcome.exit_code == 2
    report = json.loads(outcome.stdout)
    assert (report["outcome"], report["exit_code"]) == ("failed", 2)
    assert report["error"] == [
        "invalid settings:",
        "  - the probe port must be a number from 1 to 65535, got '0'",
        "  - the mirror must be 'cn' or unset, got 'us'",
        "  - the deadline must be a number of seconds up to 86400, got 'soon'",
        "  - the lock timeout must be a number of seconds up to 86400, got '-1'",
    ]
    assert cli.fake.journal == []


@pytest.mark.parametrize("port", ["1_0", "+10", "\u0661\u0660"])
def test_a_probe_port_that_only_int_would_read_is_refused_before_any_request(cli: Cli, port: str) -> None:
    outcome = cli("run", "--probe-port", port)

    assert outcome.exit_code == 2
    assert f"the probe port must be a number from 1 to 65535, got {port!r}" in outcome.stderr
    assert cli.fake.journal == []


@pytest.mark.integration
def test_quiet_prints_no_progress_only_the_summary(cli: Cli) -> None:
    outcome = cli("run", "-q", NODE_NAME="web-1")

    assert outcome.exit_code == 0
    assert outcome.stderr == ""
    assert outcome.stdout.startswith(f"registered and installed: 'web-1' on {cli.dashboard.url}, online after ")


@pytest.mark.integration
def test_quiet_still_shows_warnings_and_errors(cli: Cli) -> None:
    outcome = cli("run", "-q", "--token", TOKEN, NEZHA_TOKEN=None, NEZHA_STUB_MODE="exit1")

    assert outcome.exit_code == 5
    assert outcome.stderr.splitlines() == [
        "warning: --token puts the token in the process list; use NEZHA_TOKEN or --token-file instead",
        "error: install.sh exited with status 1; run again with -v to see its output",
    ]


@pytest.mark.integration
def test_verbose_shows_the_installer_output(cli: Cli) -> None:
    outcome = cli("run", "-v")

    assert outcome.exit_code == 0
    assert "  | stub install.sh: installing agent for probe.example.test:5555" in outcome.stderr.splitlines()


# --- what a command loads: httpx, psutil, zipfile, hashlib only when it needs them (the overhead target) ---

LOADED_PROBE = """
import json, sys
from nezha_bootstrap.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(name for name in ("httpx", "psutil", "zipfile", "hashlib") if name in sys.modules)))
"""


def heavy_modules_loaded(cli: Cli, *args: str, **env: str) -> list[str]:
    settings = {key: value for key, value in cli.env(**env).items() if value is not None}
    done = subprocess.run([sys.executable, "-c", LOADED_PROBE, *args], env={**os.environ, **settings},
                          capture_output=True, text=True, timeout=60)
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


@pytest.mark.integration
@pytest.mark.parametrize(("args", "name", "loaded"), [
    (("--help",), "web-1", []),
    (("run", "--help"), "web-1", []),
    (("run", "--dry-run"), "web-1", []),
    (("run", "--dry-run"), "web-{hostname}", []),
    (("run", "--dry-run"), "web-{ip}", ["psutil"]),  # the address comes from psutil
    (("run", "--dry-run", "--method", "direct", "--dashboard", "v0"), "web-1", []),
    (("check", "--help"), "web-1", []),
    (("render", "--help"), "web-1", []),
])
def test_httpx_and_psutil_load_only_when_the_command_needs_them(
    cli: Cli, args: tuple[str, ...], name: str, loaded: list[str]
) -> None:
    assert heavy_modules_loaded(cli, *args, NODE_NAME=name) == loaded


@pytest.mark.integration
@pytest.mark.parametrize("args", [("run", "--dry-run"), ("run", "--dry-run", "--dashboard", "v1")])
def test_a_v1_dry_run_loads_no_http_client_nor_zip_reader(cli: Cli, args: tuple[str, ...]) -> None:
    env = cli.env(NEZHA_AGENT_SECRET="A" * 32, NEZHA_PROBE_ADDRESS="127.0.0.1")
    settings = {key: value for key, value in env.items() if value is not None}
    done = subprocess.run([sys.executable, "-c", LOADED_PROBE, *args], env={**os.environ, **settings},
                          capture_output=True, text=True, timeout=60)

    assert "plan: install the agent (not enrolled from this machine yet)" in done.stdout, done.stderr
    # hashlib it may load: the uuid is a UUIDv5 (SHA-1) of the machine-id
    assert [name for name in json.loads(done.stdout.splitlines()[-1]) if name != "hashlib"] == []


UNUSED_PROBE = """
import json, sys
from nezha_bootstrap.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
loaded = [name for name in ("httpx", "httpx._main", "anyio", "pygments") if sys.modules.get(name) is not None]
print(json.dumps([code, loaded]))
"""


@pytest.mark.integration
def test_a_run_skips_what_httpx_loads_for_its_own_cli_and_async_clients(cli: Cli) -> None:
    settings = {key: value for key, value in cli.env().items() if value is not None}
    done = subprocess.run([sys.executable, "-c", UNUSED_PROBE, "run", "-q"], env={**os.environ, **settings},
                          capture_output=True, text=True, timeout=60)

    assert json.loads(done.stdout.splitlines()[-1]) == [0, ["httpx"]], done.stderr


OTHER_COMMANDS_PROBE = """
import json, sys
from nezha_bootstrap.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps([code, sorted(name for name in sys.modules if name.startswith("nezha_bootstrap."))]))
"""

# Modules only other commands use: `run` (every start of a node) does not pay for their import. A plain v0
# run (an API token, no v1/v2 setting) sends no generation probe, and install.sh needs no v0/direct.py.
NOT_FOR_RUN = ("nezha_bootstrap.firstboot.render", "nezha_bootstrap.firstboot.service",
               "nezha_bootstrap.firstboot.zipapp", "nezha_bootstrap.fleet", "nezha_bootstrap.bundle",
               "nezha_bootstrap.status", "nezha_bootstrap.demo", "nezha_bootstrap.testing",
               "nezha_bootstrap.handshake", "nezha_bootstrap.checks", "nezha_bootstrap.v1",
               "nezha_bootstrap.generation", "nezha_bootstrap.v0.direct")


@pytest.mark.integration
def test_a_run_loads_no_module_of_the_other_commands(cli: Cli) -> None:
    settings = {key: value for key, value in cli.env().items() if value is not None}
    done = subprocess.run([sys.executable, "-c", OTHER_COMMANDS_PROBE, "run", "-q"], env={**os.environ, **settings},
                          capture_output=True, text=True, timeout=60)

    code, loaded = json.loads(done.stdout.splitlines()[-1])
    assert code == 0, done.stderr
    assert "nezha_bootstrap.v0.flow" in loaded  # the probe saw a real run
    assert [name for name in loaded if name.startswith(NOT_FOR_RUN)] == []


@pytest.mark.integration
def test_an_ip_in_the_name_is_still_filled_in(cli: Cli) -> None:
    from nezha_bootstrap.facts import primary_ipv4

    outcome = cli("run", "--dry-run", "--json", NODE_NAME="web-{ip}")

    address = primary_ipv4()
    if address is None:  # a host without a non-loopback IPv4
        assert outcome.exit_code == 2
        assert "the node name uses {ip} but this host has no value for it" in outcome.stderr
    else:
        assert outcome.exit_code == 0, outcome.stderr
        assert json.loads(outcome.stdout)["name"] == f"web-{address}"
