"""The installer plan (exact argv, env, cwd), the hash check, and the verification of the unit it leaves."""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path
from typing import Any

import pytest

from nezha_bootstrap.agent import read_exec_start
from nezha_bootstrap.agent import verify_v0_unit as verify_unit
from nezha_bootstrap.config import Config, Settings, build
from nezha_bootstrap.errors import InstallerFailed
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.v0 import script as script_mod
from nezha_bootstrap.v0.script import InstallPlan, check_script, plan
from tests.conftest import TOKEN, Cli

SECRET = "gv4eGLwyvHIR9y5E7p"
FACTS = Facts(hostname="web-1", primary_ipv4="192.0.2.10", machine_id="0123456789abcdef", systemd_running=False)
SCRIPT_URL = "https://mirror.example/install.sh"
SHA = hashlib.sha256(b"#!/bin/sh\necho hi\n").hexdigest()

# The unit the real agent writes for `install_agent probe.example.test 5555 S3cr3t --tls` (installer-v0.md).
REFERENCE_UNIT = """\
[Unit]
ConditionFileIsExecutable=/opt/nezha/agent/nezha-agent
[Service]
ExecStart=/opt/nezha/agent/nezha-agent "-s" "probe.example.test:5555" "-p" "S3cr3t" "--tls"
WorkingDirectory=/root
Restart=always
RestartSec=120
[Install]
WantedBy=multi-user.target
"""


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(tmp_path / "root")


def make_config(paths: Paths, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "dashboard_url": "https://dash.example.com", "token": TOKEN, "probe_address": "probe.example.test",
        "script_url": SCRIPT_URL, "script_sha256": SHA, "root": str(paths.root),
    }
    values.update(overrides)
    return build(Settings(**values), FACTS).config


def install_agent_binary(paths: Paths, mode: int = 0o755) -> None:
    paths.agent_dir.mkdir(parents=True, exist_ok=True)
    paths.agent_binary.write_text("#!/bin/sh\n")
    paths.agent_binary.chmod(mode)


def write_unit(paths: Paths, text: str) -> None:
    paths.agent_unit.parent.mkdir(parents=True, exist_ok=True)
    paths.agent_unit.write_text(text)


def unit_with(exec_start: str) -> str:
    return REFERENCE_UNIT.replace(
        '"-s" "probe.example.test:5555" "-p" "S3cr3t" "--tls"', exec_start
    )


# --- the plan ----------------------------------------------------------------------------------------

def test_the_plan_runs_sh_with_an_argument_list_from_the_agent_directory(paths: Paths) -> None:
    got = plan(make_config(paths), paths, SECRET)

    script = paths.root / "var/lib/nezha-bootstrap/installer/install.sh"
    assert got == InstallPlan(
        script_url=SCRIPT_URL,
        script_sha256=SHA,
        script_path=script,
        argv=("sh", str(script), "install_agent", "probe.example.test", "5555", SECRET, "--tls"),
        cwd=paths.root / "opt/nezha/agent",
        env_set=(),
        env_unset=("CN", "NEZHA_TOKEN"),
        uninstall_first=None,
        unit=paths.root / "etc/systemd/system/nezha-agent.service",
        expect_server="probe.example.test:5555",
        expect_tls=True,
    )


@pytest.mark.parametrize(
    ("overrides", "tail"),
    [
        ({"tls": False}, ("probe.example.test", "5555", SECRET)),
        ({"probe_port": "443"}, ("probe.example.test", "443", SECRET, "--tls")),
        ({"probe_address": "192.0.2.7"}, ("192.0.2.7", "5555", SECRET, "--tls")),
        ({"probe_address": "2001:db8::1"}, ("[2001:db8::1]", "5555", SECRET, "--tls")),
        ({"probe_address": "[2001:db8::1]"}, ("[2001:db8::1]", "5555", SECRET, "--tls")),
        ({"agent_flags": ("--gpu", "--report-delay=2")},
         ("probe.example.test", "5555", SECRET, "--tls", "--gpu", "--report-delay", "2")),
    ],
)
def test_the_argv_carries_host_port_secret_tls_and_flags_exactly(
    paths: Paths, overrides: dict[str, Any], tail: tuple[str, ...]
) -> None:
    got = plan(make_config(paths, **overrides), paths, SECRET)

    assert got.argv[:3] == ("sh", str(paths.script_dir / "install.sh"), "install_agent")
    assert got.argv[3:] == tail


def test_an_ipv6_probe_is_expected_bracketed_in_the_unit(paths: Paths) -> None:
    got = plan(make_config(paths, probe_address="2001:db8::1", tls=False), paths, SECRET)

    assert (got.expect_server, got.expect_tls) == ("[2001:db8::1]:5555", False)


@pytest.mark.parametrize(
    ("mirror", "env_set", "env_unset"),
    [(None, (), ("CN", "NEZHA_TOKEN")), ("cn", (("CN", "1"),), ("NEZHA_TOKEN",))],
)
def test_cn_is_set_only_for_the_china_mirror_and_the_token_never_reaches_the_installer(
    paths: Paths, mirror: str | None, env_set: tuple[tuple[str, str], ...], env_unset: tuple[str, ...]
) -> None:
    got = plan(make_config(paths, mirror=mirror), paths, SECRET)

    assert (got.env_set, got.env_unset) == (env_set, env_unset)


def test_an_installed_agent_is_uninstalled_first(paths: Paths) -> None:
    install_agent_binary(paths)

    got = plan(make_config(paths), paths, SECRET)

    assert got.uninstall_first == (str(paths.root / "opt/nezha/agent/nezha-agent"), "service", "uninstall")


@pytest.mark.parametrize("secret", ["", "abc def", "abc\n", "abc;reboot", "$(reboot)", "sécret"])
def test_a_secret_that_is_not_letters_and_digits_never_reaches_install_sh(paths: Paths, secret: str) -> None:
    with pytest.raises(InstallerFailed) as caught:
        plan(make_config(paths), paths, secret)

    assert str(caught.value) == "refusing to pass a secret that is not letters and digits to install.sh"
    assert caught.value.exit_code == 5


def test_an_invalid_probe_address_never_reaches_install_sh(paths: Paths) -> None:
    config = make_config(paths).replace(probe_address="x;reboot")

    with pytest.raises(InstallerFailed) as caught:
        plan(config, paths, SECRET)

    assert str(caught.value) == "refusing to pass an invalid probe address to install.sh"


def test_describe_shows_the_whole_plan_with_the_secret_masked(paths: Paths) -> None:
    install_agent_binary(paths)
    got = plan(make_config(paths, mirror="cn"), paths, SECRET)

    lines = got.describe()

    script = paths.script_dir / "install.sh"
    assert lines == [
        f"download {SCRIPT_URL} (at most 1048576 bytes)",
        f"check SHA-256 {SHA}",
        f"store it as {script} (directory 0700)",
        f"uninstall the existing agent: {shlex.join([str(paths.agent_binary), 'service', 'uninstall'])}",
        f"run: sh {script} install_agent probe.example.test 5555 '<secret>' --tls",
        f"  cwd {paths.agent_dir}, stdin /dev/null, environment: CN=1, unset NEZHA_TOKEN",
        f"verify {paths.agent_unit}: ExecStart has -s probe.example.test:5555, the secret, --tls",
    ]
    assert all(SECRET not in line for line in lines)
    assert SECRET not in repr(got)


def test_describe_says_when_there_is_no_hash_check(paths: Paths) -> None:
    got = plan(make_config(paths, script_sha256=None, tls=False), paths, SECRET)

    lines = got.describe()

    assert lines[1] == "no SHA-256 check (none given)"
    assert lines[-1] == f"verify {paths.agent_unit}: ExecStart has -s probe.example.test:5555, the secret, no --tls"


# --- the hash check -------------------------------------------------------------------------------------

def test_a_script_with_the_pinned_hash_passes() -> None:
    assert check_script(b"#!/bin/sh\necho hi\n", SHA) is None  # it raises InstallerFailed otherwise


def test_without_a_hash_any_script_passes() -> None:
    assert check_script(b"anything", None) is None


def test_a_script_with_another_hash_is_refused() -> None:
    content = b"#!/bin/sh\necho changed\n"

    with pytest.raises(InstallerFailed) as caught:
        check_script(content, SHA)

    assert str(caught.value) == (
        f"the install script's SHA-256 is {hashlib.sha256(content).hexdigest()}, expected {SHA}: refusing to run it "
        "(the URL serves another version, or the download was altered)"
    )
    assert caught.value.exit_code == 5


# --- reading and verifying the unit ------------------------------------------------------------------

def test_read_exec_start_reads_the_references_unit(tmp_path: Path) -> None:
    unit = tmp_path / "nezha-agent.service"
    unit.write_text(REFERENCE_UNIT)

    assert read_exec_start(unit) == [
        "/opt/nezha/agent/nezha-agent", "-s", "probe.example.test:5555", "-p", "S3cr3t", "--tls",
    ]


@pytest.mark.parametrize(
    "text",
    [None, "[Service]\nRestart=always\n", 'ExecStart=/opt/nezha/agent/nezha-agent "-s" "unbalanced\n'],
)
def test_read_exec_start_gives_none_without_a_readable_exec_start(tmp_path: Path, text: str | None) -> None:
    unit = tmp_path / "nezha-agent.service"
    if text is not None:
        unit.write_text(text)

    assert read_exec_start(unit) is None


def test_verify_accepts_the_unit_the_reference_shows(paths: Paths) -> None:
    install_agent_binary(paths)
    write_unit(paths, REFERENCE_UNIT)
    got = plan(make_config(paths), paths, "S3cr3t")

    assert verify_unit(got, paths, "S3cr3t") is None  # it raises InstallerFailed naming each difference


def test_verify_accepts_an_ipv6_server_without_tls(paths: Paths) -> None:
    install_agent_binary(paths)
    write_unit(paths, unit_with('"-s" "[2001:db8::1]:5555" "-p" "S3cr3t"'))
    got = plan(make_config(paths, probe_address="2001:db8::1", tls=False), paths, "S3cr3t")

    assert verify_unit(got, paths, "S3cr3t") is None


@pytest.mark.parametrize(
    ("exec_start", "differ"),
    [
        ('"-s" "wrong.example:5555" "-p" "S3cr3t" "--tls"', "server address"),
        ('"-s" "probe.example.test:5556" "-p" "S3cr3t" "--tls"', "server address"),
        ('"-s" "probe.example.test:5555" "-p" "Other" "--tls"', "secret"),
        ('"-s" "probe.example.test:5555" "-p" "S3cr3t"', "TLS"),
        ('"-p" "S3cr3t" "--tls"', "server address"),
        ('"-s" "wrong:1" "-p" "Other"', "server address, secret, TLS"),
    ],
)
def test_verify_refuses_a_unit_that_starts_the_agent_otherwise(paths: Paths, exec_start: str, differ: str) -> None:
    install_agent_binary(paths)
    write_unit(paths, unit_with(exec_start))
    got = plan(make_config(paths), paths, "S3cr3t")

    with pytest.raises(InstallerFailed) as caught:
        verify_unit(got, paths, "S3cr3t")

    assert str(caught.value) == f"the agent unit does not start the agent as asked: {differ} differ"
    assert "S3cr3t" not in str(caught.value)


def test_verify_refuses_when_tls_was_not_asked_but_the_unit_has_it(paths: Paths) -> None:
    install_agent_binary(paths)
    write_unit(paths, REFERENCE_UNIT)
    got = plan(make_config(paths, tls=False), paths, "S3cr3t")

    with pytest.raises(InstallerFailed) as caught:
        verify_unit(got, paths, "S3cr3t")

    assert str(caught.value) == "the agent unit does not start the agent as asked: TLS differ"


def test_verify_refuses_a_unit_without_exec_start(paths: Paths) -> None:
    install_agent_binary(paths)
    write_unit(paths, "[Service]\nRestart=always\n")
    got = plan(make_config(paths), paths, SECRET)

    with pytest.raises(InstallerFailed) as caught:
        verify_unit(got, paths, SECRET)

    assert str(caught.value) == f"the installer exited, but {paths.agent_unit} has no readable ExecStart"


def test_verify_refuses_when_no_unit_was_written(paths: Paths) -> None:
    install_agent_binary(paths)
    got = plan(make_config(paths), paths, SECRET)

    with pytest.raises(InstallerFailed) as caught:
        verify_unit(got, paths, SECRET)

    assert str(caught.value) == (
        f"the installer exited, but wrote no agent unit ({paths.agent_unit} or {paths.agent_openrc}); "
        "install.sh reports success even when the agent failed to install. Run again with -v to see its output"
    )


@pytest.mark.parametrize("binary", ["missing", "not executable"])
def test_verify_refuses_when_the_agent_binary_is_missing_or_not_executable(paths: Paths, binary: str) -> None:
    if binary == "not executable":
        install_agent_binary(paths, mode=0o644)
    write_unit(paths, REFERENCE_UNIT)
    got = plan(make_config(paths), paths, "S3cr3t")

    with pytest.raises(InstallerFailed) as caught:
        verify_unit(got, paths, "S3cr3t")

    assert str(caught.value) == f"the installer exited, but {paths.agent_binary} is missing or not executable"


@pytest.mark.parametrize(
    ("script", "ok"),
    [
        ('command_args="-s probe.example.test:5555 -p S3cr3t --tls"\n', True),
        ('command_args="-s other.example:5555 -p S3cr3t --tls"\n', False),
        ('command_args="-s probe.example.test:5555 -p Other --tls"\n', False),
    ],
)
def test_verify_reads_the_openrc_script_when_there_is_no_systemd_unit(paths: Paths, script: str, ok: bool) -> None:
    install_agent_binary(paths)
    paths.agent_openrc.parent.mkdir(parents=True)
    paths.agent_openrc.write_text("#!/sbin/openrc-run\n" + script)
    got = plan(make_config(paths), paths, "S3cr3t")

    if ok:
        verify_unit(got, paths, "S3cr3t")
        return
    with pytest.raises(InstallerFailed) as caught:
        verify_unit(got, paths, "S3cr3t")
    assert str(caught.value) == "the agent unit does not start the agent as asked: server or secret differ"


# --- the install script's cap, end to end -------------------------------------------------------------

@pytest.mark.integration
def test_an_install_script_over_its_cap_exits_5_runs_nothing_and_keeps_only_the_secret(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = len(cli.fake.files["/install.sh"])
    monkeypatch.setattr(script_mod, "SCRIPT_CAP", size - 1)

    outcome = cli("run")

    assert outcome.exit_code == 5, outcome.stderr
    assert outcome.stderr.splitlines()[-1] == (
        f"error: download install.sh: {cli.dashboard.url}/install.sh is larger than {size - 1} bytes; refusing it")
    assert cli.calls() == []
    left = {str(p.relative_to(cli.root)) for p in cli.root.rglob("*") if not p.is_dir()}
    assert left == {"etc/machine-id", "var/lib/nezha-bootstrap/state.json", "var/lib/nezha-bootstrap/lock"}


@pytest.mark.integration
def test_an_install_script_at_its_cap_is_run(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(script_mod, "SCRIPT_CAP", len(cli.fake.files["/install.sh"]))

    outcome = cli("run")

    assert outcome.exit_code == 0, outcome.stderr
    assert len(cli.calls()) == 1


# --- what the mutation run of agent.py let through (issue 25) -----------------------------------------

@pytest.mark.parametrize(("exec_start", "differ"), [
    ('"--server" "probe.example.test:5555" "--password" "S3cr3t" "--tls"', None),
    ('"--server" "other.example:5555" "--password" "S3cr3t" "--tls"', "server address"),
    ('"--server" "probe.example.test:5555" "--password" "Other" "--tls"', "secret"),
])
def test_verify_reads_the_long_flag_names_as_the_short_ones(paths: Paths, exec_start: str, differ: str | None) -> None:
    install_agent_binary(paths)
    write_unit(paths, unit_with(exec_start))
    got = plan(make_config(paths), paths, "S3cr3t")

    if differ is None:
        assert verify_unit(got, paths, "S3cr3t") is None  # it raises InstallerFailed naming each difference
        return
    with pytest.raises(InstallerFailed) as caught:
        verify_unit(got, paths, "S3cr3t")
    assert str(caught.value) == f"the agent unit does not start the agent as asked: {differ} differ"


def test_verify_reads_a_unit_that_links_to_an_absolute_path_in_the_image_not_on_the_host(
    paths: Paths, tmp_path: Path,
) -> None:
    install_agent_binary(paths)
    on_host = tmp_path / "host-nezha-agent.service"
    on_host.write_text(unit_with('"-s" "other.example:5555" "-p" "Other"'))
    in_image = paths.root / str(on_host).lstrip("/")
    in_image.parent.mkdir(parents=True)
    in_image.write_text(REFERENCE_UNIT)
    paths.agent_unit.parent.mkdir(parents=True)
    paths.agent_unit.symlink_to(on_host)

    assert verify_unit(plan(make_config(paths), paths, "S3cr3t"), paths, "S3cr3t") is None  # raises when it differs


def test_verify_refuses_an_openrc_script_it_cannot_read(paths: Paths) -> None:
    install_agent_binary(paths)
    paths.agent_openrc.parent.mkdir(parents=True)
    paths.agent_openrc.mkdir()  # there, but no file to read

    with pytest.raises(InstallerFailed) as caught:
        verify_unit(plan(make_config(paths), paths, "S3cr3t"), paths, "S3cr3t")
    assert str(caught.value) == "the agent unit does not start the agent as asked: server or secret differ"
