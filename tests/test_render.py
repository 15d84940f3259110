"""render.py and `nezha-bootstrap render`: every value lands quoted, and parses back exactly."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import ssl
import stat
from pathlib import Path

import pytest
import trustme
import yaml
from hypothesis import given
from hypothesis import strategies as st

from nezha_bootstrap.cli import main
from nezha_bootstrap.firstboot import render
from tests import envfile
from tests.conftest import TOKEN, Outcome, make_runner

URL = "https://nezha.example.com/sub"

# Values that would break a naive template: YAML and env-file syntax, shell, Unicode line breaks.
HOSTILE = [
    'say "hi"',
    "it's",
    "line one\nline two",
    "ends with a newline\n",
    "# not a comment",
    "key: value",
    "- [list, item]",
    "{flow: map}",
    "$HOME ${HOME} $(reboot) `reboot`",
    "back\\slash\\",
    "\\",
    "\\\nnot a continuation",
    'X="evil"\nINJECTED=1',
    "\"\nINJECTED: 1\n\"",
    "  padded  ",
    "tab\there",
    "cr\rlf\r\n",
    "ünïcödé 名前",
    "astral 😀 𝄞",
    "line\u2028separators\u2029and\x85next line",
    "bom\ufeff and \x7f del",
    "@ENV_FILE@",
    '"@UNIT@"',
    "",
]
# What validation lets through into a name, tag or note: no control characters. (An empty env var
# is unset for click, here and on the server alike.)
PRINTABLE_HOSTILE = [v for v in HOSTILE if v and not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in v)]

texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"))  # no lone surrogates, no NUL


def comment_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("#")]


def explanatory_comments(template: str) -> list[str]:
    """The comment lines of a template that rendering keeps with comments on: not the "##" ones about the template."""
    return [line for line in comment_lines(template) if not line.lstrip().startswith("##")]


# --- the settings file and systemd's EnvironmentFile= rules ---------------------------------------

# Files and results from systemd's own test suite (src/test/test-env-file.c, systemd 252).
@pytest.mark.parametrize(("text", "expected"), [
    ("a=a\nb=b\\\nc\nd=d\\\ne\\\nf\ng=g\\ \nh=h\ni=i\\",
     {"a": "a", "b": "bc", "d": "def", "g": "g ", "h": "h", "i": "i"}),
    ("a=a\\\n", {"a": "a"}),
    ('#SPAMD_ARGS="-d --socketpath=/var/lib/bulwark/spamd \\\n#--nouser-config                 \\\nnormal=line', {}),
    ('# Generated\n\nHWMON_MODULES="coretemp f71882fg"\n\n# For compatibility reasons\n\nMODULE_0=coretemp\n'
     "MODULE_1=f71882fg", {"HWMON_MODULES": "coretemp f71882fg", "MODULE_0": "coretemp", "MODULE_1": "f71882fg"}),
    ("a=\nb=", {"a": "", "b": ""}),
])
def test_the_parser_reads_systemds_own_test_files_as_systemd_does(text: str, expected: dict[str, str]) -> None:
    assert envfile.parse(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("A='single $quoted \\n'", {"A": "single $quoted \\n"}),
    ('A="\\"\\\\\\`\\$ \\q"', {"A": '"\\`$ \\q'}),
    ('A="two\nlines"', {"A": "two\nlines"}),
    ("  A = padded value  \n", {"A": "padded value"}),
    ("; comment\n# comment\nA=1\nA=2", {"A": "2"}),
    ("1BAD=x\nBAD-NAME=y\nno equals sign\nGOOD=z", {"GOOD": "z"}),
])
def test_the_parser_follows_the_documented_quoting_rules(text: str, expected: dict[str, str]) -> None:
    assert envfile.parse(text) == expected


@pytest.mark.parametrize("value", HOSTILE)
def test_a_settings_value_parses_back_exactly_and_adds_no_key(value: str) -> None:
    text = render.env_file([("NODE_NAME", value), ("NEZHA_TAG", "after")])

    assert envfile.parse(text) == {"NODE_NAME": value, "NEZHA_TAG": "after"}


@given(texts, texts)
def test_any_settings_values_parse_back_exactly(first: str, second: str) -> None:
    text = render.env_file([("NODE_NAME", first), ("NEZHA_NOTE", second)])

    assert envfile.parse(text) == {"NODE_NAME": first, "NEZHA_NOTE": second}


def test_the_settings_file_keeps_the_templates_comments_and_order() -> None:
    text = render.env_file([("NEZHA_DASHBOARD_URL", URL), ("NEZHA_TOKEN", TOKEN)])

    assert comment_lines(text) == comment_lines(render.template("env"))
    assert text.endswith(f'NEZHA_DASHBOARD_URL="{URL}"\nNEZHA_TOKEN="{TOKEN}"\n')


@pytest.mark.parametrize(("name", "value"), [("BAD-NAME", "x"), ("1ST", "x"), ("A=B", "x"), ("NODE_NAME", "nul\x00"),
                                             ("NODE_NAME", "lone \udc80 surrogate")])
def test_a_settings_file_that_systemd_would_misread_is_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        render.env_file([(name, value)])


# --- YAML ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", HOSTILE)
def test_a_yaml_value_parses_back_exactly_and_adds_no_key(value: str) -> None:
    document = f"a: {render.yaml_string(value)}\nb: after\n"

    assert yaml.safe_load(document) == {"a": value, "b": "after"}


@given(texts)
def test_any_yaml_value_parses_back_exactly_as_printable_ascii(value: str) -> None:
    quoted = render.yaml_string(value)

    assert yaml.safe_load(f"a: {quoted}") == {"a": value}
    assert all(0x20 <= ord(ch) < 0x7F for ch in quoted)


def test_a_yaml_value_is_a_json_string_where_json_can_say_it() -> None:
    value = 'quote " backslash \\ newline \n é 名'

    assert json.loads(render.yaml_string(value)) == value


def test_fill_replaces_scalars_and_flow_items_but_never_comments() -> None:
    text = '# "@A@" stays\nx: "@A@"\ny: [first, "@B@"]\n'

    filled = render.fill(text, {"A": "v: 1", "B": ["p", "q #"]})

    assert filled.splitlines()[0] == '# "@A@" stays'
    assert yaml.safe_load(filled) == {"x": "v: 1", "y": ["first", "p", "q #"]}


@pytest.mark.parametrize(("text", "values"), [('x: "@A@"\n', {}), ('x: "@A@"\n', {"A": "1", "B": "2"})])
def test_fill_refuses_a_placeholder_left_empty_or_a_value_without_a_place(text: str, values: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        render.fill(text, values)


# --- the user-data documents ---------------------------------------------------------------------

def test_full_user_data_carries_the_settings_the_unit_and_the_package() -> None:
    settings = render.env_file([("NEZHA_DASHBOARD_URL", URL), ("NEZHA_TOKEN", TOKEN)])

    text = render.cloud_init(settings, ["--index-url=https://pypi.example.test/simple", "nezha-bootstrap==1.0"])

    data = yaml.safe_load(text)
    assert text.startswith("#cloud-config\n")
    assert comment_lines(text) == explanatory_comments(render.template("cloud-init"))
    assert data["write_files"] == [
        {"path": "/etc/nezha-bootstrap/env", "owner": "root:root", "permissions": "0600", "content": settings},
        {"path": "/etc/systemd/system/nezha-bootstrap.service", "owner": "root:root", "permissions": "0644",
         "content": render.unit()},
    ]
    assert data["runcmd"][2] == ["/opt/nezha-bootstrap/bin/python", "-m", "pip", "install", "--quiet",
                                 "--disable-pip-version-check", "--index-url=https://pypi.example.test/simple",
                                 "nezha-bootstrap==1.0"]
    assert data["runcmd"][-1] == ["systemctl", "start", "--no-block", render.UNIT_NAME]
    assert TOKEN not in json.dumps(data["runcmd"])


PYZ_URL = "https://downloads.example.test/nezha-bootstrap-0.1.0-x86_64.pyz"
PYZ_SHA256 = "ab" * 32


def test_zipapp_user_data_writes_the_tool_its_fetcher_and_the_unit_and_starts_the_unit() -> None:
    settings = render.env_file([("NEZHA_DASHBOARD_URL", URL), ("NEZHA_TOKEN", TOKEN)])

    text = render.cloud_init_pyz(settings, PYZ_URL, PYZ_SHA256)

    data = yaml.safe_load(text)
    assert comment_lines(text) == explanatory_comments(render.template("cloud-init-pyz"))
    assert [(f["path"], f["owner"], f["permissions"], f["content"]) for f in data["write_files"]] == [
        ("/etc/nezha-bootstrap/env", "root:root", "0600", settings),
        ("/etc/nezha-bootstrap/pyz-source.json", "root:root", "0644",
         json.dumps({"url": PYZ_URL, "sha256": PYZ_SHA256}) + "\n"),
        ("/opt/nezha-bootstrap/bin/nezha-bootstrap-fetch", "root:root", "0755", render.template("fetch")),
        (render.TOOL, "root:root", "0755", render.launcher()),
        ("/etc/systemd/system/nezha-bootstrap.service.d/fetch.conf", "root:root", "0644",
         render.template("fetch-drop-in")),
        ("/etc/systemd/system/nezha-bootstrap.service", "root:root", "0644", render.unit()),
    ]
    assert data["runcmd"] == [["systemctl", "daemon-reload"], ["systemctl", "enable", render.UNIT_NAME],
                              ["systemctl", "start", "--no-block", render.UNIT_NAME]]
    # Earlier than runcmd: once per instance, a transient unit after cloud-init.service (which writes the files).
    assert data["bootcmd"] == [[
        "cloud-init-per", "instance", "nezha-bootstrap-start", "systemd-run", "--no-block", "--quiet",
        "--unit=nezha-bootstrap-start", "--property=After=cloud-init.service", "--", "sh", "-c",
        f"systemctl daemon-reload && systemctl start --no-block {render.UNIT_NAME}"]]


def test_zipapp_user_data_needs_no_venv_pip_apt_or_download_tool() -> None:
    data = yaml.safe_load(render.cloud_init_pyz("", PYZ_URL, PYZ_SHA256))
    commands = json.dumps([data["bootcmd"], data["runcmd"]]) + render.launcher() + render.template("fetch-drop-in")

    for word in ("venv", "pip", "apt", "curl", "wget"):
        assert word not in commands
    assert render.launcher().splitlines()[-1] == 'exec python3 -I /opt/nezha-bootstrap/nezha-bootstrap.pyz "$@"'


def test_the_drop_in_fetches_to_where_the_launcher_runs_from() -> None:
    [line] = [line for line in render.template("fetch-drop-in").splitlines() if line.startswith("ExecStartPre=")]

    assert line.split()[-2:] == ["/etc/nezha-bootstrap/pyz-source.json", "/opt/nezha-bootstrap/nezha-bootstrap.pyz"]
    assert line.split()[-2] in render.template("cloud-init-pyz")


def test_zipapp_user_data_with_real_settings_fits_in_16_kib() -> None:
    """EC2 refuses user-data over 16 KiB (before base64); others allow more."""
    settings = render.env_file([("NEZHA_DASHBOARD_URL", URL), ("NEZHA_TOKEN", TOKEN), ("NODE_NAME", "web-{ip}"),
                                ("NEZHA_TAG", "edge"), ("NEZHA_CA_BUNDLE", "/etc/ssl/private/ca.pem")])

    assert len(render.cloud_init_pyz(settings, PYZ_URL, PYZ_SHA256).encode()) < 16384


def test_minimal_user_data_only_writes_the_settings_and_starts_the_unit() -> None:
    settings = render.env_file([("NEZHA_DASHBOARD_URL", URL), ("NEZHA_TOKEN", TOKEN)])

    data = yaml.safe_load(render.cloud_init_minimal(settings))

    assert data == {
        "write_files": [{"path": "/etc/nezha-bootstrap/env", "owner": "root:root", "permissions": "0600",
                         "content": settings}],
        "runcmd": [["systemctl", "enable", "--now", "--no-block", render.UNIT_NAME]],
    }


@pytest.mark.parametrize(("package", "options", "problem"), [
    (None, (), "needs --package"),
    ("  ", (), "needs --package"),
    ("--editable=.", (), "must be a package spec"),
    ("nezha-bootstrap\n--pre", (), "must be a package spec"),
    ("nezha-bootstrap", ("https://x.test/simple",), "must be a pip option"),
])
def test_a_package_spec_or_pip_option_that_pip_would_misread_is_a_problem(
        package: str | None, options: tuple[str, ...], problem: str) -> None:
    [found] = render.install_problems(package, options)

    assert problem in found


@pytest.mark.parametrize(("package", "options", "refused"), [
    ("http://mirror.example/nezha_bootstrap-0.1.0-py3-none-any.whl", (), True),
    ("http://mirror.example/nezha_bootstrap-0.1.0-py3-none-any.whl#sha256=" + "a" * 64, (), False),
    ("nezha-bootstrap==0.1.0", ("--index-url=http://pypi.example/simple",), True),
    ("nezha-bootstrap==0.1.0", ("--index-url=http://pypi.example/simple", "--require-hashes"), False),
    ("https://mirror.example/nezha_bootstrap-0.1.0-py3-none-any.whl", (), False),
    ("http://127.0.0.1:8000/nezha_bootstrap-0.1.0-py3-none-any.whl", (), False),
    ("http://[::1]:8000/nezha_bootstrap-0.1.0-py3-none-any.whl", (), False),
    # Only a loopback IP literal is exempt: a name goes to a resolver, which may answer anything.
    ("http://localhost:8000/nezha_bootstrap-0.1.0-py3-none-any.whl", (), True),
    ("http://evil.localhost/nezha_bootstrap-0.1.0-py3-none-any.whl", (), True),
    ("http://127.0.0.1.nip.io/nezha_bootstrap-0.1.0-py3-none-any.whl", (), True),
    ("nezha-bootstrap==0.1.0", ("--index-url=http://LOCALHOST./simple",), True),
])
def test_a_plain_http_package_source_needs_a_pinned_hash(package: str, options: tuple[str, ...],
                                                         refused: bool) -> None:
    problems = render.install_problems(package, options)

    assert bool(problems) is refused
    assert all("fetched over plain http and would run as root unchecked" in problem for problem in problems)


@pytest.mark.parametrize(("deadline", "lock_timeout", "online_timeout", "warns"),
                         [(300, 60, 60, False), (335, 60, 60, False), (336, 60, 60, True), (300, 166, 60, True),
                          (300, 60, 165, False), (300, 60, 166, True)])
def test_a_deadline_the_units_start_timeout_cannot_cover_is_a_warning(deadline: float, lock_timeout: float,
                                                                      online_timeout: float, warns: bool) -> None:
    assert (render.timeout_warning(deadline, lock_timeout, online_timeout) is not None) == warns


# --- the command -----------------------------------------------------------------------------------

def invoke(*args: str, input: str | None = None, **env: str) -> Outcome:
    result = make_runner().invoke(main, ["render", *args], env=env, input=input, catch_exceptions=False)
    return Outcome(result, result.stdout, result.stderr)


BASE = {"NEZHA_DASHBOARD_URL": URL, "NEZHA_TOKEN": TOKEN}


def test_render_env_writes_what_the_user_set_and_no_default() -> None:
    outcome = invoke("env", "--probe-port", "443", "--no-tls", "--agent-flag", "--gpu", "--agent-flag", "--skip-conn",
                     "--name", "{hostname}-{ip}-{machine_id}", **BASE, NEZHA_TAG="edge",
                     NEZHA_BOOTSTRAP_DEADLINE="120", NEZHA_BOOTSTRAP_ROOT="/")

    assert outcome.exit_code == 0, outcome.stderr
    assert envfile.parse(outcome.stdout) == {
        "NEZHA_DASHBOARD_URL": URL, "NEZHA_TOKEN": TOKEN, "NEZHA_PROBE_PORT": "443", "NEZHA_PROBE_TLS": "false",
        "NODE_NAME": "{hostname}-{ip}-{machine_id}", "NEZHA_TAG": "edge", "NEZHA_AGENT_FLAGS": "--gpu --skip-conn",
        "NEZHA_BOOTSTRAP_DEADLINE": "120",
    }
    assert outcome.stderr == ""


@pytest.mark.parametrize("value", PRINTABLE_HOSTILE)
def test_render_cloud_init_keeps_hostile_names_tags_and_notes_exact(value: str) -> None:
    outcome = invoke("cloud-init", "--package", "nezha-bootstrap==1.0", **BASE, NODE_NAME=f"n{value}",
                     NEZHA_TAG=value, NEZHA_NOTE=value)

    assert outcome.exit_code == 0, outcome.stderr
    data = yaml.safe_load(outcome.stdout)
    assert set(data) == {"write_files", "runcmd"}
    settings = envfile.parse(data["write_files"][0]["content"])
    assert settings == {"NEZHA_DASHBOARD_URL": URL, "NEZHA_TOKEN": TOKEN, "NODE_NAME": f"n{value}",
                        "NEZHA_TAG": value, "NEZHA_NOTE": value}


@pytest.mark.parametrize("kind", ["cloud-init", "cloud-init-minimal"])
def test_the_token_is_only_in_the_settings_file_content(kind: str) -> None:
    package = ["--package", "nezha-bootstrap==1.0"] if kind == "cloud-init" else []

    outcome = invoke(kind, *package, **BASE)

    data = yaml.safe_load(outcome.stdout)
    settings = data["write_files"][0]["content"]
    assert f'NEZHA_TOKEN="{TOKEN}"' in settings
    assert TOKEN not in json.dumps(data["runcmd"]) and TOKEN not in json.dumps(data["write_files"][1:])
    assert outcome.stdout.count(TOKEN) == 1
    assert TOKEN not in outcome.stderr


@pytest.mark.parametrize(("args", "stdin"), [(["--token-file", "-"], f"{TOKEN}\n"), (["--token-file", "FILE"], None)])
def test_the_token_comes_from_a_file_or_stdin_and_its_value_is_written(tmp_path: Path, args: list[str],
                                                                       stdin: str | None) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    args = [str(token_file) if arg == "FILE" else arg for arg in args]

    outcome = invoke("env", *args, input=stdin, NEZHA_DASHBOARD_URL=URL)

    assert outcome.exit_code == 0, outcome.stderr
    assert envfile.parse(outcome.stdout) == {"NEZHA_DASHBOARD_URL": URL, "NEZHA_TOKEN": TOKEN}


def test_an_agent_secret_replaces_the_token_for_v1_dashboards(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("AgentSecret0123456789\n")

    outcome = invoke("env", "--agent-secret-file", str(secret_file), "--dashboard", "v1", NEZHA_DASHBOARD_URL=URL)

    assert outcome.exit_code == 0, outcome.stderr
    assert envfile.parse(outcome.stdout) == {"NEZHA_DASHBOARD_URL": URL, "NEZHA_AGENT_SECRET": "AgentSecret0123456789",
                                             "NEZHA_DASHBOARD_GENERATION": "v1"}


def test_settings_for_other_machines_are_not_checked_against_this_one() -> None:
    outcome = invoke("env", "--ca-bundle", "/etc/ssl/private-ca-on-the-server.pem", "--name", "{ip}", **BASE)

    assert outcome.exit_code == 0, outcome.stderr
    assert envfile.parse(outcome.stdout)["NEZHA_CA_BUNDLE"] == "/etc/ssl/private-ca-on-the-server.pem"


@pytest.mark.parametrize(("args", "env", "warning"), [
    (["--deadline", "600"], {}, "TimeoutStartSec"),
    (["--uuid", "0b0e3f5e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "--agent-secret", "AgentSecret0123456789"], {},
     "every server using it enrolls as the same server"),
])
def test_settings_that_misbehave_in_a_unit_or_an_image_are_warned_about(args: list[str], env: dict[str, str],
                                                                        warning: str) -> None:
    outcome = invoke("env", *args, **BASE, **env)

    assert outcome.exit_code == 0, outcome.stderr
    assert warning in outcome.stderr


def test_invalid_settings_are_all_reported_and_nothing_is_printed() -> None:
    outcome = invoke("cloud-init", "--probe-port", "0", "--name", "two\nlines")

    assert outcome.exit_code == 2
    assert outcome.stdout == ""
    for problem in ("needs --pyz-url URL", "dashboard URL is required", "a credential is required", "probe port",
                    "control characters"):
        assert problem in outcome.stderr


def test_package_options_belong_to_the_full_user_data_only() -> None:
    outcome = invoke("env", "--package", "nezha-bootstrap", **BASE)

    assert outcome.exit_code == 2
    assert "for `render cloud-init` only" in outcome.stderr


def make_pyz(path: Path, main: bytes = b"print('zipapp')\n") -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("__main__.py", main)
    return path


def test_render_cloud_init_pins_the_hash_of_a_local_zipapp(tmp_path: Path) -> None:
    pyz = make_pyz(tmp_path / "nezha-bootstrap.pyz")

    outcome = invoke("cloud-init", "--pyz-url", PYZ_URL, "--pyz", str(pyz), **BASE)

    assert outcome.exit_code == 0, outcome.stderr
    [source] = [f for f in yaml.safe_load(outcome.stdout)["write_files"] if f["path"].endswith("pyz-source.json")]
    assert json.loads(source["content"]) == {"url": PYZ_URL, "sha256": hashlib.sha256(pyz.read_bytes()).hexdigest()}


def test_render_cloud_init_takes_the_pinned_hash_as_given_in_lower_case() -> None:
    outcome = invoke("cloud-init", **BASE, NEZHA_BOOTSTRAP_PYZ_URL=PYZ_URL, NEZHA_BOOTSTRAP_PYZ_SHA256="AB" * 32)

    assert outcome.exit_code == 0, outcome.stderr
    assert json.dumps({"url": PYZ_URL, "sha256": PYZ_SHA256}) in outcome.stdout.replace('\\"', '"')


@pytest.mark.parametrize(("args", "problem"), [
    (["--pyz-sha256", PYZ_SHA256], "--pyz-url is required"),
    (["--pyz-url", PYZ_URL], "needs --pyz-sha256 HEX or --pyz FILE"),
    (["--pyz-url", "ftp://downloads.example.test/x.pyz", "--pyz-sha256", PYZ_SHA256], "must be an http or https URL"),
    (["--pyz-url", "/srv/x.pyz", "--pyz-sha256", PYZ_SHA256], "must be an http or https URL"),
    (["--pyz-url", "https://example.test/a b.pyz", "--pyz-sha256", PYZ_SHA256], "must not hold spaces"),
    (["--pyz-url", PYZ_URL, "--pyz-sha256", "abc"], "must be 64 hexadecimal digits"),
    (["--pyz-url", PYZ_URL, "--pyz-sha256", "g" * 64], "must be 64 hexadecimal digits"),
    (["--pyz-url", PYZ_URL, "--pyz", "PYZ", "--pyz-sha256", PYZ_SHA256], "not --pyz-sha256 " + PYZ_SHA256),
    (["--pyz-url", PYZ_URL, "--pyz", "NOT_A_ZIP"], "not a zipapp"),
    (["--pyz-url", PYZ_URL, "--pyz", "MISSING"], "No such file"),
    (["--pyz-url", PYZ_URL, "--pyz-sha256", PYZ_SHA256, "--package", "nezha-bootstrap"], "exclude each other"),
])
def test_a_zipapp_source_nodes_could_not_use_is_refused_before_anything_is_printed(
        tmp_path: Path, args: list[str], problem: str) -> None:
    files = {"PYZ": make_pyz(tmp_path / "x.pyz"), "NOT_A_ZIP": tmp_path / "plain.txt", "MISSING": tmp_path / "none"}
    files["NOT_A_ZIP"].write_text("not a zip\n")

    outcome = invoke("cloud-init", *[str(files.get(arg, arg)) for arg in args], **BASE)

    assert outcome.exit_code == 2
    assert outcome.stdout == ""
    assert problem in outcome.stderr


@pytest.mark.parametrize("kind", ["env", "cloud-init-minimal"])
def test_zipapp_options_belong_to_the_full_user_data_only(kind: str) -> None:
    outcome = invoke(kind, "--pyz-url", PYZ_URL, "--pyz-sha256", PYZ_SHA256, **BASE)

    assert outcome.exit_code == 2
    assert "for `render cloud-init` only" in outcome.stderr


def test_the_token_is_only_in_the_settings_file_of_the_zipapp_user_data() -> None:
    outcome = invoke("cloud-init", "--pyz-url", PYZ_URL, "--pyz-sha256", PYZ_SHA256, **BASE)

    data = yaml.safe_load(outcome.stdout)
    assert outcome.stdout.count(TOKEN) == 1
    assert f'NEZHA_TOKEN="{TOKEN}"' in data["write_files"][0]["content"]


def test_render_systemd_prints_the_unit_and_needs_no_settings() -> None:
    outcome = invoke("systemd")

    assert outcome.exit_code == 0
    assert outcome.stdout == render.unit(comments=False)
    assert comment_lines(outcome.stdout) == []
    assert invoke("systemd", "--comments").stdout == render.template("systemd")


def test_render_output_goes_to_a_private_file(tmp_path: Path) -> None:
    target = tmp_path / "user-data"

    outcome = invoke("cloud-init-minimal", "--output", str(target), **BASE)

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout == ""
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert yaml.safe_load(target.read_text())["write_files"][0]["path"] == "/etc/nezha-bootstrap/env"
    assert TOKEN not in outcome.stderr


def _planted(tmp_path: Path, kind: str) -> Path:
    import os

    path = tmp_path / kind
    if kind == "symlink":
        (tmp_path / "elsewhere").write_text("kept\n")
        path.symlink_to(tmp_path / "elsewhere")
    elif kind == "fifo":
        os.mkfifo(path)
    return path


@pytest.mark.parametrize(("kind", "says"), [("symlink", "a symbolic link"), ("fifo", "a pipe")])
def test_render_output_refuses_anything_but_a_regular_file(tmp_path: Path, kind: str, says: str) -> None:
    target = _planted(tmp_path, kind)
    before = target.lstat()

    outcome = invoke("env", "--output", str(target), **BASE)

    assert outcome.exit_code == 2
    assert f"--output {target}: it is {says}; give the path of a regular file" in outcome.stderr
    assert target.lstat().st_mode == before.st_mode and target.lstat().st_ino == before.st_ino
    if kind == "symlink":
        assert (tmp_path / "elsewhere").read_text() == "kept\n"


@pytest.mark.parametrize("device", ["/dev/null", "/dev/stdout"])
def test_render_output_never_replaces_a_device_or_its_link(device: str) -> None:
    before = Path(device).lstat()

    outcome = invoke("env", "--output", device, **BASE)

    assert outcome.exit_code == 2
    assert "give the path of a regular file" in outcome.stderr
    after = Path(device).lstat()
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)


def test_render_refuses_root_which_it_would_ignore(tmp_path: Path) -> None:
    outcome = invoke("env", "--root", str(tmp_path), **BASE)

    assert outcome.exit_code == 2
    assert "--root is for install-service, seal and uninstall" in outcome.stderr


def test_render_systemd_to_a_file_is_readable_as_install_service_writes_it(tmp_path: Path) -> None:
    output = tmp_path / "nezha-bootstrap.service"

    outcome = invoke("systemd", "--output", str(output))

    assert outcome.exit_code == 0, outcome.stderr
    assert stat.S_IMODE(output.stat().st_mode) == 0o644
    assert "(mode 0644)" in outcome.stderr


# --- what rendered text carries: comments, a private CA, the user-data size -------------------------

PYZ_ARGS = ("cloud-init", "--pyz-url", PYZ_URL, "--pyz-sha256", PYZ_SHA256)
USER_DATA = {"cloud-init": PYZ_ARGS, "cloud-init pip": ("cloud-init", "--package", "nezha-bootstrap==1.0"),
             "cloud-init-minimal": ("cloud-init-minimal",)}


def embedded_files(text: str) -> str:
    """The user-data and every file its write_files carry, one text."""
    return text + "".join(item["content"] for item in yaml.safe_load(text)["write_files"])


@pytest.mark.parametrize("args", USER_DATA.values(), ids=list(USER_DATA))
def test_rendered_user_data_and_its_files_have_no_comments_unless_asked(args: tuple[str, ...]) -> None:
    plain, commented = invoke(*args, **BASE), invoke(*args, "--comments", **BASE)

    assert plain.exit_code == commented.exit_code == 0, plain.stderr + commented.stderr
    assert [line for line in comment_lines(embedded_files(plain.stdout)) if not line.startswith("#!")] \
        == ["#cloud-config"]
    assert len(comment_lines(embedded_files(commented.stdout))) > 10
    assert [{**item, "content": None} for item in yaml.safe_load(plain.stdout)["write_files"]] \
        == [{**item, "content": None} for item in yaml.safe_load(commented.stdout)["write_files"]]


@pytest.mark.parametrize("kind", ["env", "systemd"])
def test_the_settings_file_and_the_unit_have_no_comments_unless_asked(kind: str) -> None:
    plain, commented = invoke(kind, **BASE), invoke(kind, "--comments", **BASE)

    assert comment_lines(plain.stdout) == []
    assert comment_lines(commented.stdout) == explanatory_comments(render.template(kind))


@pytest.mark.parametrize("args", [*USER_DATA.values(), ("env",), ("systemd",)], ids=[*USER_DATA, "env", "systemd"])
def test_the_templates_own_instructions_never_reach_rendered_text(args: tuple[str, ...]) -> None:
    outcome = invoke(*args, "--comments", **BASE)

    files = embedded_files(outcome.stdout) if args[0].startswith("cloud-init") else outcome.stdout
    assert "By hand" not in files and "##" not in files
    assert not re.search(r"@[A-Z_]+@", files)


def test_the_fetcher_without_comments_is_the_same_program() -> None:
    source = render.template("fetch")
    lean = render.without_comments(source)

    assert ast.dump(ast.parse(lean)) == ast.dump(ast.parse(source))
    assert lean.startswith("#!/usr/bin/env python3\n") and comment_lines(lean) == ["#!/usr/bin/env python3"]


def test_without_comments_keeps_the_first_line_a_reader_needs_and_one_blank_line() -> None:
    text = "#cloud-config\n## about the template\n# about the file\n\nkey: 1\n\n\n  # indented\nother: 2\n"

    assert render.without_comments(text) == "#cloud-config\nkey: 1\n\nother: 2\n"
    assert render.without_comments(text, keep=True) == text.replace("## about the template\n", "")


def write_ca(path: Path, *extra: str) -> str:
    ca = trustme.CA()
    pem = ca.cert_pem.bytes().decode()
    path.write_text("subject=CN = private CA\n" + pem + "".join(extra))
    return pem


@pytest.mark.parametrize("args", USER_DATA.values(), ids=list(USER_DATA))
def test_a_private_ca_joins_the_nodes_trust_store(tmp_path: Path, args: tuple[str, ...]) -> None:
    pem = write_ca(tmp_path / "ca.pem")

    outcome = invoke(*args, "--ca-file", str(tmp_path / "ca.pem"), **BASE)

    assert outcome.exit_code == 0, outcome.stderr
    data = yaml.safe_load(outcome.stdout)
    assert data["ca_certs"] == {"trusted": [pem]}
    assert ssl.create_default_context(cadata=data["ca_certs"]["trusted"][0])  # loads as a certificate
    assert "subject=" not in outcome.stdout  # the certificates only, re-encoded


@pytest.mark.parametrize(("content", "says"), [
    ("not a certificate\n", "holds no PEM certificate"),
    ("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n", "cannot be read"),
    ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "PRIVATE KEY besides certificates"),
    ("-----BEGIN CERTIFICATE-----\n" + "QUFB\n" * 4000 + "-----END CERTIFICATE-----\n", "larger than 16,384 bytes"),
])
def test_a_ca_file_that_is_not_only_certificates_is_refused(tmp_path: Path, content: str, says: str) -> None:
    (tmp_path / "ca.pem").write_text(content)

    outcome = invoke(*PYZ_ARGS, "--ca-file", str(tmp_path / "ca.pem"), **BASE)

    assert outcome.exit_code == 2
    assert f"--ca-file {tmp_path / 'ca.pem'}: " in outcome.stderr and says in outcome.stderr
    assert outcome.stdout == ""


def test_a_ca_file_with_a_private_key_beside_the_certificate_is_refused(tmp_path: Path) -> None:
    write_ca(tmp_path / "ca.pem", "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n")

    outcome = invoke(*PYZ_ARGS, "--ca-file", str(tmp_path / "ca.pem"), **BASE)

    assert outcome.exit_code == 2 and "EC PRIVATE KEY besides certificates" in outcome.stderr
    assert "AAAA" not in outcome.stdout + outcome.stderr


@pytest.mark.parametrize("kind", ["env", "systemd"])
def test_a_ca_file_is_for_user_data_only(tmp_path: Path, kind: str) -> None:
    write_ca(tmp_path / "ca.pem")

    outcome = invoke(kind, "--ca-file", str(tmp_path / "ca.pem"), **BASE)

    assert outcome.exit_code == 2 and "--ca-file is for the cloud-init kinds" in outcome.stderr


V2_SETTINGS = {"NEZHA_TOKEN": "nzp_" + "a1" * 16, "NEZHA_AGENT_SECRET": "s3cret" * 6, "NEZHA_DASHBOARD_URL": URL,
               "NEZHA_PROBE_ADDRESS": "grpc.example.com", "NEZHA_PROBE_PORT": "443", "NEZHA_GROUP": "web",
               "NEZHA_PUBLIC_NOTE": "public", "NODE_NAME": "web-{hostname}"}


def test_user_data_with_v2_settings_a_private_ca_and_comments_fits(tmp_path: Path) -> None:
    write_ca(tmp_path / "ca.pem")

    outcome = invoke(*PYZ_ARGS, "--ca-file", str(tmp_path / "ca.pem"), "--comments", **V2_SETTINGS)

    assert outcome.exit_code == 0, outcome.stderr
    assert len(outcome.stdout.encode()) <= render.USER_DATA_LIMIT


def test_user_data_over_the_ec2_limit_is_refused_naming_its_size_and_what_to_drop() -> None:
    note = "n" * 3000

    outcome = invoke(*PYZ_ARGS, "--comments", **BASE, NEZHA_NOTE=note)

    assert outcome.exit_code == 2 and outcome.stdout == ""
    size = len(invoke(*PYZ_ARGS, "--comments", "--no-size-limit", **BASE, NEZHA_NOTE=note).stdout.encode())
    assert size > render.USER_DATA_LIMIT
    assert f"the user-data is {size:,} bytes, over EC2's limit of 16,384 by {size - 16384:,}" in outcome.stderr
    assert re.search(r"drop or shorten --comments \([0-9,]+ bytes\); --note/NEZHA_NOTE \(3,0[0-9]{2} bytes\)",
                     outcome.stderr)
    assert "--no-size-limit" in outcome.stderr


def test_user_data_of_exactly_the_limit_is_written_and_one_byte_more_is_not() -> None:
    base = len(invoke(*PYZ_ARGS, **BASE, NEZHA_NOTE="n").stdout.encode())
    fits = "n" * (render.USER_DATA_LIMIT - base + 1)

    assert invoke(*PYZ_ARGS, **BASE, NEZHA_NOTE=fits).exit_code == 0
    assert invoke(*PYZ_ARGS, **BASE, NEZHA_NOTE=fits + "n").exit_code == 2
    assert invoke(*PYZ_ARGS, "--no-size-limit", **BASE, NEZHA_NOTE=fits + "n").exit_code == 0


def test_the_size_limit_is_for_user_data_only() -> None:
    outcome = invoke("env", **BASE, NEZHA_NOTE="n" * 20000)

    assert outcome.exit_code == 0 and len(outcome.stdout) > render.USER_DATA_LIMIT
