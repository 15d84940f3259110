"""The pieces of the direct agent install: assets, checksums, zip, config.yml, environment, leftovers."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import zipfile
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from nezha_bootstrap import agent as agent_mod
from nezha_bootstrap.agent import (
    Leftover,
    Release,
    asset_name,
    check_zip,
    extract_binary,
    installed_unit,
    override_warnings,
    parse_checksums,
    read_init_command,
    render_config,
    service_argv,
    unit_problems,
    vendor_leftovers,
)
from nezha_bootstrap.config import AgentSettings, Config, is_public_host
from nezha_bootstrap.config import validate_agent as validate
from nezha_bootstrap.errors import InstallerFailed
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.retry import Notify
from nezha_bootstrap.system import child_env
from nezha_bootstrap.testing.fake_v1 import agent_zip
from nezha_bootstrap.v0.direct import plan_v0
from tests.conftest import V1Cli

ZIP = agent_zip(b"#!/bin/sh\necho agent\n")
SHA = hashlib.sha256(ZIP).hexdigest()
ASSET = "nezha-agent_linux_amd64.zip"


@pytest.mark.parametrize(("machine", "asset"), [
    ("x86_64", "nezha-agent_linux_amd64.zip"), ("aarch64", "nezha-agent_linux_arm64.zip"),
    ("i686", "nezha-agent_linux_386.zip"), ("armv7l", "nezha-agent_linux_arm.zip"),
    ("riscv64", "nezha-agent_linux_riscv64.zip"), ("mipsel", "nezha-agent_linux_mipsle.zip"),
    ("loongarch64", "nezha-agent_linux_loong64.zip"),
])
def test_the_asset_follows_the_architecture(machine: str, asset: str) -> None:
    assert asset_name(machine) == asset


def test_an_unknown_architecture_is_refused() -> None:
    with pytest.raises(InstallerFailed, match="sparc64"):
        asset_name("sparc64")


def test_release_urls_are_base_version_asset() -> None:
    release = Release("https://mirror.example/agent", "2.3.3", ASSET)
    assert (release.asset_url, release.checksums_url) == (
        "https://mirror.example/agent/v2.3.3/nezha-agent_linux_amd64.zip",
        "https://mirror.example/agent/v2.3.3/checksums.txt",
    )


def test_checksums_txt_gives_the_assets_hash() -> None:
    text = f"{'a' * 64} nezha-agent_linux_arm64.zip\n{SHA} {ASSET}\n"
    assert parse_checksums(text, ASSET) == SHA


@pytest.mark.parametrize("text", ["", f"{'a' * 64} nezha-agent_linux_arm64.zip\n", f"xyz {ASSET}\n"])
def test_checksums_without_the_asset_are_refused(text: str) -> None:
    with pytest.raises(InstallerFailed, match="no SHA-256 for"):
        parse_checksums(text, ASSET)


@pytest.mark.parametrize(("listed", "pinned", "says"), [
    ("0" * 64, None, "checksums.txt says"),
    (SHA, "0" * 64, "--agent-sha256 pins"),
])
def test_a_zip_with_another_hash_is_refused(listed: str, pinned: str | None, says: str) -> None:
    with pytest.raises(InstallerFailed, match=says):
        check_zip(ZIP, Release("http://x", "2.3.3", ASSET, pinned), listed)


def test_a_matching_zip_is_accepted_and_its_binary_extracted() -> None:
    check_zip(ZIP, Release("http://x", "2.3.3", ASSET, SHA), SHA)
    binary = io.BytesIO()
    assert extract_binary(ZIP, binary) == 21
    assert binary.getvalue() == b"#!/bin/sh\necho agent\n"


def test_a_broken_zip_is_refused() -> None:
    with pytest.raises(InstallerFailed, match="not a valid zip"):
        extract_binary(b"not a zip", io.BytesIO())


def test_a_zip_without_the_agent_is_refused() -> None:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("README.md", "hi")
    with pytest.raises(InstallerFailed, match="holds no `nezha-agent`"):
        extract_binary(buffer.getvalue(), io.BytesIO())


def test_config_yml_quotes_strings_and_writes_yaml_booleans() -> None:
    import yaml

    text = render_config({"server": "h:1", "client_secret": 'a"b: #c', "tls": True, "report_delay": 2})
    assert text == 'server: "h:1"\nclient_secret: "a\\"b: #c"\ntls: true\nreport_delay: 2\n'
    assert yaml.safe_load(text) == {"server": "h:1", "client_secret": 'a"b: #c', "tls": True, "report_delay": 2}


def test_the_agent_environment_drops_nz_and_our_secrets() -> None:
    env = {"PATH": "/bin", "NZ_UUID": "x", "NZ_CLIENT_SECRET": "y", "NEZHA_AGENT_SECRET": "s", "NEZHA_TOKEN": "t",
           "NEZHA_STUB_RECORD": "/r", "CN": "1"}
    assert child_env(env) == {"PATH": "/bin", "NEZHA_STUB_RECORD": "/r"}


def test_service_commands_carry_the_config_never_the_secret(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    assert service_argv(paths, "install") == [
        str(tmp_path / "opt/nezha/agent/nezha-agent"), "service", "-c", str(tmp_path / "opt/nezha/agent/config.yml"),
        "install",
    ]


def test_sysconfig_and_nz_environment_are_warned_about(tmp_path: Path) -> None:
    sysconfig = tmp_path / "etc/sysconfig/nezha-agent"
    sysconfig.parent.mkdir(parents=True)
    sysconfig.write_text("NZ_UUID=abc\nexport NZ_SERVER=x:1\n")

    warnings = override_warnings(Paths(tmp_path), {"NZ_UUID": "1", "PATH": "/bin"})

    assert warnings[0].startswith("NZ_UUID set in this environment: ignored")
    assert warnings[1].startswith("/etc/sysconfig/nezha-agent exists (it sets NZ_SERVER, NZ_UUID)")


def test_vendor_leftovers_pair_configs_with_their_hashed_units(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.agent_dir.mkdir(parents=True)
    (paths.agent_dir / "config-one.yml").write_text("uuid: 11111111-2222-3333-4444-555555555555\n")
    (paths.agent_dir / "config-two.yml").write_text('uuid: "66666666-7777-8888-9999-000000000000"\n')
    (paths.agent_dir / "config.yml").write_text("uuid: ours\n")
    digest = hashlib.md5(b"/opt/nezha/agent/config-one.yml").hexdigest()[:7]
    unit = tmp_path / f"etc/systemd/system/nezha-agent-{digest}.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\n")

    assert vendor_leftovers(paths) == [
        Leftover(paths.agent_dir / "config-one.yml", "11111111-2222-3333-4444-555555555555", unit),
        Leftover(paths.agent_dir / "config-two.yml", "66666666-7777-8888-9999-000000000000", None),
    ]


def test_verification_names_each_difference(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.agent_dir.mkdir(parents=True)
    (paths.agent_dir / "config.yml").write_text("uuid: changed\n")
    paths.agent_unit.parent.mkdir(parents=True)
    paths.agent_unit.write_text('[Service]\nExecStart=/opt/nezha/agent/nezha-agent "-c" "/elsewhere.yml"\n')

    assert unit_problems(paths, "uuid: written\n") == [
        f"{paths.agent_unit}'s ExecStart does not run the agent with -c /opt/nezha/agent/config.yml",
        f"{paths.agent_dir / 'config.yml'} is not what was written (changed by the agent?)",
        f"{paths.agent_binary} is missing or not executable",
    ]


# The `cmd=` line the real agent v2.3.3's `service install` wrote to /etc/init.d/nezha-agent on a host
# without systemd (observed), and the OpenRC form of the same service library's template.
SYSV_SCRIPT = '#!/bin/sh\ncmd="/opt/nezha/agent/nezha-agent "-c" "/opt/nezha/agent/config.yml""\nname=$(basename $0)\n'
OPENRC_SCRIPT = ('#!/sbin/openrc-run\nsupervisor=supervise-daemon\ncommand=/opt/nezha/agent/nezha-agent\n'
                 'command_args="-c /opt/nezha/agent/config.yml "\n')


@pytest.mark.parametrize(("script", "argv"), [
    (SYSV_SCRIPT, ["/opt/nezha/agent/nezha-agent", "-c", "/opt/nezha/agent/config.yml"]),
    (OPENRC_SCRIPT, ["/opt/nezha/agent/nezha-agent", "-c", "/opt/nezha/agent/config.yml"]),
    ('#!/bin/sh\ncmd="/opt/nezha/agent/nezha-agent "-s" "a:1" "-p" "x""\n',
     ["/opt/nezha/agent/nezha-agent", "-s", "a:1", "-p", "x"]),
    ("#!/bin/sh\necho no command here\n", None),
])
def test_an_init_script_gives_the_agent_command_it_runs(tmp_path: Path, script: str, argv: list[str] | None) -> None:
    path = tmp_path / "nezha-agent"
    path.write_text(script)

    assert read_init_command(path) == argv


def installed_agent(tmp_path: Path, script: str) -> Paths:
    paths = Paths(tmp_path)
    paths.agent_dir.mkdir(parents=True)
    (paths.agent_dir / "config.yml").write_text("uuid: written\n")
    paths.agent_binary.write_text("#!/bin/sh\n")
    paths.agent_binary.chmod(0o755)
    paths.agent_openrc.parent.mkdir(parents=True)
    paths.agent_openrc.write_text(script)
    return paths


@pytest.mark.parametrize("script", [SYSV_SCRIPT, OPENRC_SCRIPT])
def test_an_init_script_that_runs_the_agent_with_our_config_is_an_install(tmp_path: Path, script: str) -> None:
    paths = installed_agent(tmp_path, script)

    assert installed_unit(paths) == paths.agent_openrc
    assert unit_problems(paths, "uuid: written\n") == []


def test_an_init_script_that_runs_the_agent_otherwise_is_named(tmp_path: Path) -> None:
    paths = installed_agent(tmp_path, SYSV_SCRIPT.replace("/opt/nezha/agent/config.yml", "/elsewhere.yml"))

    assert unit_problems(paths, "uuid: written\n") == [
        f"{paths.agent_openrc}'s command does not run the agent with -c /opt/nezha/agent/config.yml",
    ]


def test_neither_unit_nor_init_script_is_no_install(tmp_path: Path) -> None:
    paths = Paths(tmp_path)

    assert installed_unit(paths) is None
    assert unit_problems(paths, "uuid: written\n") == [
        f"no agent unit ({paths.agent_unit} or {paths.agent_openrc}) was written",
    ]


@pytest.mark.parametrize(("host", "public"), [
    ("127.0.0.1", False), ("localhost", True), ("10.1.2.3", False), ("192.168.0.9", False), ("fd00::1", False),
    ("203.0.113.7", True), ("8.8.8.8", True), ("dash.example.com", True),
])
def test_which_hosts_count_as_public_for_plaintext(host: str, public: bool) -> None:
    assert is_public_host(host) is public


@pytest.mark.parametrize(("raw", "problem"), [
    (AgentSettings(secret="short"), "the agent secret must be 8 to 128 letters and digits"),
    (AgentSettings(version="latest"), "--agent-version must look like 2.3.3"),
    (AgentSettings(sha256="abc"), "--agent-sha256 must be 64 hexadecimal digits"),
    (AgentSettings(uuid="nope"), "--uuid: the uuid must be 36 characters"),
    (AgentSettings(base_url="ftp://x"), "--agent-base-url 'ftp://x' must be an http(s) URL"),
    (AgentSettings(base_url="http://[x"), "--agent-base-url 'http://[x' must be an http(s) URL"),
    (AgentSettings(base_url="https://h:99999/r"), "--agent-base-url 'https://h:99999/r' must be an http(s) URL"),
    (AgentSettings(base_url="https://:pw@h/r"), "--agent-base-url 'https://***@h/r' must be an http(s) URL"),
    (AgentSettings(base_url="https://bad_host!/r"), "--agent-base-url 'https://bad_host!/r' must be an http(s) URL"),
    (AgentSettings(options=("uuid=x",)), "agent option uuid is set by the tool itself"),
    (AgentSettings(options=("report_delay=9",)), "agent option 'report_delay=9' is not KEY=VALUE"),
])
def test_bad_v1_settings_are_collected(raw: AgentSettings, problem: str) -> None:
    problems: list[str] = []
    validate(raw, problems, [])
    assert len(problems) == 1 and problems[0].startswith(problem)


def test_agent_options_land_typed() -> None:
    config = validate(AgentSettings(options=("report_delay=2 gpu=true", "disable_command_execute=false")), [], [])
    assert config.options == (("report_delay", 2), ("gpu", True), ("disable_command_execute", False))


def v0_config(**overrides: object) -> Config:
    from nezha_bootstrap.config import Settings, build
    from nezha_bootstrap.facts import STAND_IN

    config = build(Settings(dashboard_url="https://dash.example.com", token="T0ken", name="web-1"), STAND_IN).config
    return config.replace(**overrides)


RELEASE_V0 = Release("https://mirror.example/agent", "0.20.5", ASSET)


def test_method_direct_is_valid_for_a_v0_dashboard() -> None:
    problems: list[str] = []
    validate(AgentSettings(generation="v0", method="direct"), problems, [])
    assert problems == []


def test_the_v0_agent_installs_itself_with_server_secret_tls_and_flags(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    config = v0_config(agent_flags=("--disable-auto-update", "--report-delay", "2"))

    plan = plan_v0(config, paths, "S3cretS3cretS3cret", RELEASE_V0)

    assert plan.argv == (str(paths.agent_binary), "service", "install", "-s", "dash.example.com:5555", "-p",
                         "S3cretS3cretS3cret", "--tls", "--disable-auto-update", "--report-delay", "2")
    assert (plan.cwd, plan.unit, plan.uninstall_first) == (paths.agent_dir, paths.agent_unit, None)
    assert (plan.expect_server, plan.expect_tls) == ("dash.example.com:5555", True)
    assert "S3cretS3cretS3cret" not in "\n".join(plan.describe())
    assert f"run: {paths.agent_binary} service install -s dash.example.com:5555 -p '<secret>' --tls " \
           "--disable-auto-update --report-delay 2" in plan.describe()


def test_an_existing_unit_is_uninstalled_first_and_ipv6_goes_in_brackets(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.agent_unit.parent.mkdir(parents=True)
    paths.agent_unit.write_text("[Service]\n")

    plan = plan_v0(v0_config(probe_address="2001:db8::1", tls=False), paths, "S3cret", RELEASE_V0)

    assert plan.uninstall_first == (str(paths.agent_binary), "service", "uninstall")
    assert plan.argv[3:] == ("-s", "[2001:db8::1]:5555", "-p", "S3cret")


@pytest.mark.parametrize(("secret", "address", "refusal"), [
    ("S3cret; reboot", "dash.example.com", "a secret that is not letters and digits"),
    ("S3cret\n", "dash.example.com", "a secret that is not letters and digits"),
    ("S3cret", "$(reboot)", "an invalid probe address"),
])
def test_values_that_are_not_what_the_agent_expects_are_refused(tmp_path: Path, secret: str, address: str,
                                                                refusal: str) -> None:
    with pytest.raises(InstallerFailed, match=refusal):
        plan_v0(v0_config(probe_address=address), Paths(tmp_path), secret, RELEASE_V0)


@pytest.mark.integration
def test_a_command_run_without_an_environment_gets_the_scrubbed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from nezha_bootstrap import system

    monkeypatch.setenv("NEZHA_TOKEN", "T0kenT0kenT0kenT0kenT0kenT0ken32")
    monkeypatch.setenv("NEZHA_AGENT_SECRET", "S3cretS3cretS3cret")
    monkeypatch.setenv("NZ_UUID", "x")

    done = system.run(["sh", "-c", "env"], timeout=10)

    names = {line.split("=", 1)[0] for line in done.output.splitlines()}
    assert not names & {"NEZHA_TOKEN", "NEZHA_AGENT_SECRET", "NZ_UUID"}
    assert "PATH" in names


# --- the caps: the agent member, the zip, checksums.txt ----------------------------------------------

def test_an_agent_member_over_its_cap_is_refused_and_one_at_the_cap_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    binary = b"#!/bin/sh\necho agent\n"
    zipped = agent_zip(binary)

    monkeypatch.setattr(agent_mod, "BINARY_CAP", len(binary))
    out = io.BytesIO()
    assert (extract_binary(zipped, out), out.getvalue()) == (len(binary), binary)
    monkeypatch.setattr(agent_mod, "BINARY_CAP", len(binary) - 1)
    with pytest.raises(InstallerFailed) as refused:
        extract_binary(zipped, io.BytesIO())
    assert str(refused.value) == f"nezha-agent in the zip is {len(binary)} bytes, over the {len(binary) - 1} cap"


def test_a_small_zip_that_unpacks_past_the_cap_is_refused_by_the_size_it_declares(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bomb = agent_zip(b"\0" * (4 << 20))  # 4 MiB of zeros: a zip of a few KiB
    monkeypatch.setattr(agent_mod, "BINARY_CAP", 1 << 20)

    assert len(bomb) < 64 * 1024
    with pytest.raises(InstallerFailed, match=f"is {4 << 20} bytes, over the {1 << 20} cap"):
        extract_binary(bomb, io.BytesIO())


@pytest.mark.integration
@pytest.mark.parametrize(("cap", "what"), [("ZIP_CAP", "download nezha-agent_linux_amd64.zip"),
                                          ("CHECKSUMS_CAP", "download checksums.txt")])
def test_a_release_file_over_its_cap_exits_5_and_leaves_nothing(
    v1cli: V1Cli, monkeypatch: pytest.MonkeyPatch, cap: str, what: str
) -> None:
    monkeypatch.setattr(agent_mod, cap, 16)  # smaller than any zip or checksums.txt of the fake release
    before = files_under(v1cli.root)

    outcome = v1cli()

    assert outcome.exit_code == 5, outcome.stderr
    assert f"{what}: " in outcome.stderr and " is larger than 16 bytes; refusing it" in outcome.stderr
    assert files_under(v1cli.root) - before <= {"var/lib/nezha-bootstrap/lock"}
    assert v1cli.agent_calls() == []
    assert v1cli.fake.servers == []


def files_under(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if not path.is_dir()}


# --- drift: how the agent on disk differs from what the last install put there (issue 25's mutation run) -----

CONFIG_TARGET = agent_mod.CONFIG_TARGET
V0_UNIT = ('[Service]\nExecStart=/opt/nezha/agent/nezha-agent "-s" "dash.example.com:5555" "-p" "S3cretS3cret" '
           '"--tls" "--disable-auto-update"\n')


def installed(tmp_path: Path, unit: str | None = V0_UNIT, binary: bytes | None = b"\x7fELF", mode: int = 0o755,
              openrc: str | None = None) -> Paths:
    paths = Paths(tmp_path / "root")
    paths.agent_dir.mkdir(parents=True)
    if binary is not None:
        paths.agent_binary.write_bytes(binary)
        paths.agent_binary.chmod(mode)
    if unit is not None:
        paths.agent_unit.parent.mkdir(parents=True)
        paths.agent_unit.write_text(unit)
    if openrc is not None:
        paths.agent_openrc.parent.mkdir(parents=True)
        paths.agent_openrc.write_text(openrc)
    return paths


def v0_drift(paths: Paths, secret: str = "S3cretS3cret", server: str = "dash.example.com:5555", tls: bool = True,
             flags: tuple[str, ...] | None = ("--disable-auto-update",)) -> list[str]:
    return agent_mod.installed_drift(paths, secret, None, server, tls, flags)


def test_an_agent_as_installed_has_no_drift(tmp_path: Path) -> None:
    assert v0_drift(installed(tmp_path)) == []


def test_each_v0_difference_is_named(tmp_path: Path) -> None:
    paths = installed(tmp_path)

    assert v0_drift(paths, server="other.example.com:5555") == [
        "the unit's server is dash.example.com:5555, the install was for other.example.com:5555"]
    assert v0_drift(paths, secret="Another1Secret") == ["the unit's secret is not the saved one"]
    assert v0_drift(paths, tls=False) == ["the unit runs the agent with --tls, the install did not"]
    assert v0_drift(paths, flags=("--disable-auto-update", "--skip-conn", "--skip-procs")) == [
        "the unit lacks the agent flags --skip-conn --skip-procs"]
    assert v0_drift(paths, flags=None) == []


def test_a_v0_unit_without_server_or_tls_says_what_it_lacks(tmp_path: Path) -> None:
    paths = installed(tmp_path, unit="[Service]\nExecStart=/opt/nezha/agent/nezha-agent\n")

    assert v0_drift(paths, flags=None) == [
        "the unit's server is missing, the install was for dash.example.com:5555",
        "the unit's secret is not the saved one",
        "the unit runs the agent without --tls, the install did not"]


@pytest.mark.parametrize(("binary", "mode", "problem"), [
    (None, 0o755, "is gone"), (b"", 0o755, "is empty"), (b"\x7fELF", 0o644, "is not executable"),
])
def test_a_binary_that_cannot_run_is_drift(tmp_path: Path, binary: bytes | None, mode: int, problem: str) -> None:
    paths = installed(tmp_path, binary=binary, mode=mode)

    assert v0_drift(paths) == [f"the agent binary {paths.agent_binary} {problem}"]


def test_a_binary_that_is_a_directory_or_a_link_is_drift(tmp_path: Path) -> None:
    paths = installed(tmp_path, binary=None)
    paths.agent_binary.mkdir()
    assert v0_drift(paths) == [f"the agent binary {paths.agent_binary} is not a regular file"]

    paths.agent_binary.rmdir()
    paths.agent_binary.symlink_to("/bin/sh")
    assert v0_drift(paths) == [f"the agent binary {paths.agent_binary} is not a regular file"]


def test_a_gone_unit_is_drift_beside_the_binary(tmp_path: Path) -> None:
    paths = installed(tmp_path, unit=None, binary=None)

    assert v0_drift(paths) == [f"the agent binary {paths.agent_binary} is gone", "the agent unit is gone"]


def test_a_v0_init_script_is_not_parsed(tmp_path: Path) -> None:
    assert v0_drift(installed(tmp_path, unit=None, openrc="#!/sbin/openrc-run\n")) == []


@pytest.mark.parametrize(("unit", "openrc", "drift"), [
    (f'[Service]\nExecStart=/opt/nezha/agent/nezha-agent "-c" "{CONFIG_TARGET}"\n', None, False),
    ('[Service]\nExecStart=/opt/nezha/agent/nezha-agent "-c" "/elsewhere.yml"\n', None, True),
    ("[Service]\n", None, True),
    (None, f'#!/sbin/openrc-run\ncommand=/opt/nezha/agent/nezha-agent\ncommand_args="-c {CONFIG_TARGET} "\n', False),
    (None, '#!/sbin/openrc-run\ncommand=/opt/nezha/agent/nezha-agent\ncommand_args="-c /elsewhere.yml "\n', True),
])
def test_a_v1_unit_or_init_script_must_run_the_agent_with_its_config(tmp_path: Path, unit: str | None,
                                                                     openrc: str | None, drift: bool) -> None:
    paths = installed(tmp_path, unit=unit, openrc=openrc)
    where = paths.agent_unit if unit is not None else paths.agent_openrc

    found = agent_mod.installed_drift(paths, "", "0000abcd-0f41-5a6b-9c7d-1e2f3a4b5c6d", "", True, None)

    assert found == ([f"{where} does not run the agent with -c {CONFIG_TARGET}"] if drift else [])


def test_a_v0_unit_with_the_long_flag_names_is_read_the_same(tmp_path: Path) -> None:
    paths = installed(tmp_path, unit='[Service]\nExecStart=/opt/nezha/agent/nezha-agent "--server" '
                                     '"dash.example.com:5555" "--password" "S3cretS3cret" "--tls"\n')

    assert v0_drift(paths, flags=None) == []


# --- what the mutation run of agent.py let through (issue 25) -----------------------------------------

def test_an_unknown_architecture_is_refused_naming_every_known_one() -> None:
    with pytest.raises(InstallerFailed) as refused:
        asset_name("sparc64")

    assert str(refused.value) == ("no nezha-agent release for the architecture 'sparc64'; known: "
                                  f"{', '.join(sorted(agent_mod.ARCHES))}")
    assert "aarch64, amd64, arm64, armv6l" in str(refused.value)


def test_checksums_txt_in_sha256sums_binary_mode_gives_the_hash_too() -> None:
    assert parse_checksums(f"{SHA} *{ASSET}\n", ASSET) == SHA
    with pytest.raises(InstallerFailed, match="no SHA-256 for"):
        parse_checksums(f"{SHA} **{ASSET}\n", ASSET)


def test_config_yml_writes_false_and_keeps_non_ascii_text_as_it_is() -> None:
    assert render_config({"gpu": False, "name": "wéb-1 ✓"}) == 'gpu: false\nname: "wéb-1 ✓"\n'


def test_a_zip_whose_hash_differs_from_checksums_txt_is_refused_as_a_broken_download() -> None:
    with pytest.raises(InstallerFailed) as refused:
        check_zip(ZIP, Release("http://x", "2.3.3", ASSET), "0" * 64)

    assert str(refused.value) == (f"{ASSET} has SHA-256 {SHA}, but the release's checksums.txt says {'0' * 64}: "
                                  "refusing it (a broken download or mirror)")


class Reads(io.BytesIO):
    """A file that keeps the size of every read and write asked of it."""

    def __init__(self, data: bytes = b"") -> None:
        super().__init__(data)
        self.reads: list[int | None] = []
        self.writes: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        self.reads.append(size)
        return super().read(size)

    def write(self, data: object) -> int:
        self.writes.append(len(data))  # type: ignore[arg-type]
        return super().write(data)  # type: ignore[arg-type]


def test_a_zip_in_a_file_is_hashed_from_its_start_a_mebibyte_at_a_time() -> None:
    big = agent_zip(os.urandom(3 << 20))  # random: it stays ~3 MiB zipped
    zipped = Reads(big)
    zipped.seek(0, io.SEEK_END)  # where a download leaves it

    check_zip(zipped, Release("http://x", "2.3.3", ASSET), hashlib.sha256(big).hexdigest())  # passes: no raise

    assert zipped.reads and all(size == 1 << 20 for size in zipped.reads)
    with pytest.raises(InstallerFailed, match="checksums.txt says"):
        check_zip(Reads(big), Release("http://x", "2.3.3", ASSET), hashlib.sha256(big[:-1]).hexdigest())


def test_the_binary_is_extracted_from_a_zip_in_a_file_a_mebibyte_at_a_time() -> None:
    binary = os.urandom((2 << 20) + 5)
    out = Reads()

    assert extract_binary(Reads(agent_zip(binary)), out) == len(binary)

    assert out.getvalue() == binary
    assert out.writes and max(out.writes) <= 1 << 20


def test_a_member_that_streams_past_the_cap_is_refused_whatever_its_header_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agent_mod, "BINARY_CAP", (1 << 20) + (1 << 19))  # 1.5 MiB: the second block passes it
    out = io.BytesIO()

    with pytest.raises(InstallerFailed) as refused:
        agent_mod._copy_capped(io.BytesIO(b"\0" * (2 << 20)), out)

    assert str(refused.value) == f"nezha-agent in the zip is larger than the {(1 << 20) + (1 << 19)} bytes cap"
    assert len(out.getvalue()) == 1 << 20  # the block past the cap is never written


def test_a_zip_without_the_agent_is_refused_saying_so() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("README.md", "hi")

    with pytest.raises(InstallerFailed) as refused:
        extract_binary(buffer.getvalue(), io.BytesIO())

    assert str(refused.value) == "the release zip holds no `nezha-agent`"


# --- the download: checksums.txt, then the zip, within one deadline -------------------------------------

RELEASE_HOST = "https://release.test/agent"
STORAGE = "https://storage.test/blob/agent.zip"
RELEASE_V1 = Release(RELEASE_HOST, "2.3.3", ASSET)


class Hosts:
    """A MockTransport: each URL answers with its list of responses in turn (404 when none is left)."""

    def __init__(self, answers: dict[str, list[httpx.Response]]) -> None:
        self.answers = answers
        self.requests: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        waiting = self.answers.get(str(request.url), [])
        return waiting.pop(0) if waiting else httpx.Response(404)


def release_hosts(checksums: bytes = f"{SHA}  {ASSET}\n".encode(), first: httpx.Response | None = None) -> Hosts:
    """The release host: checksums.txt, and the zip by a redirect to its storage (as GitHub does)."""
    return Hosts({
        RELEASE_V1.checksums_url: [*([first] if first else []), httpx.Response(200, content=checksums)],
        RELEASE_V1.asset_url: [httpx.Response(302, headers={"location": STORAGE})],
        STORAGE: [httpx.Response(200, content=ZIP)],
    })


def fetch(hosts: Hosts, release: Release = RELEASE_V1, notify: Notify = print) -> tuple[int, bytes]:
    from nezha_bootstrap.http import make_download_client

    out = io.BytesIO()
    with make_download_client(transport=httpx.MockTransport(hosts)) as client:
        size = agent_mod.fetch_binary(client, release, 30.0, notify, out)
    return size, out.getvalue()


def test_the_agent_is_fetched_checked_and_extracted_following_the_release_hosts_redirect() -> None:
    hosts = release_hosts()

    assert fetch(hosts) == (21, b"#!/bin/sh\necho agent\n")
    assert hosts.requests == [RELEASE_V1.checksums_url, RELEASE_V1.asset_url, STORAGE]


def test_checksums_txt_with_bytes_that_are_not_utf8_still_gives_the_hash() -> None:
    assert fetch(release_hosts(checksums=b"\xff\xfe junk\n" + f"{SHA}  {ASSET}\n".encode()))[0] == 21


def test_a_failed_download_is_retried_and_the_retry_told() -> None:
    told: list[str] = []

    assert fetch(release_hosts(first=httpx.Response(503, headers={"retry-after": "0"})), notify=told.append)[0] == 21
    assert len(told) == 1 and "HTTP 503" in told[0]


def test_a_version_the_release_host_does_not_have_is_named_as_such() -> None:
    with pytest.raises(InstallerFailed) as refused:
        fetch(Hosts({}), release=Release(RELEASE_HOST, "9.9.9", ASSET))

    assert str(refused.value) == (f"downloading {RELEASE_HOST}/v9.9.9/checksums.txt: HTTP 404: "
                                  "no such agent version or asset")


def test_a_zip_that_does_not_match_checksums_txt_is_refused_after_download() -> None:
    with pytest.raises(InstallerFailed, match="but the release's checksums.txt says 0{64}: refusing it"):
        fetch(release_hosts(checksums=f"{'0' * 64}  {ASSET}\n".encode()))


def test_a_zip_that_does_not_match_the_pinned_hash_is_refused() -> None:
    with pytest.raises(InstallerFailed, match="but --agent-sha256 pins 0{64}: refusing it"):
        fetch(release_hosts(), release=Release(RELEASE_HOST, "2.3.3", ASSET, "0" * 64))


class Clock:
    """time as fetch_binary sees it: each download takes the seconds it is given."""

    def __init__(self, takes: dict[str, float]) -> None:
        self.now = 100.0
        self.takes = takes
        self.deadlines: dict[str, float] = {}

    def monotonic(self) -> float:
        return self.now

    def download(self, client: object, url: str, *, cap: int, deadline: float, what: str,
                 into: io.BytesIO | None = None, **ignored: object) -> bytes:
        self.deadlines[url.rsplit("/", 1)[1]] = deadline
        self.now += self.takes[url.rsplit("/", 1)[1]]
        if into is None:
            return f"{SHA}  {ASSET}\n".encode()
        into.write(ZIP)
        return b""


def timed_fetch(monkeypatch: pytest.MonkeyPatch, checksums_take: float) -> Clock:
    from nezha_bootstrap import http

    clock = Clock({"checksums.txt": checksums_take, ASSET: 1.0})
    monkeypatch.setattr(agent_mod, "time", clock)
    monkeypatch.setattr(http, "download", clock.download)
    agent_mod.fetch_binary(None, RELEASE_V1, 10.0, print, io.BytesIO())  # type: ignore[arg-type]
    return clock


def test_the_zip_gets_what_is_left_of_the_one_deadline_after_checksums_txt(monkeypatch: pytest.MonkeyPatch) -> None:
    assert timed_fetch(monkeypatch, 4.0).deadlines == {"checksums.txt": 10.0, ASSET: 6.0}
    assert timed_fetch(monkeypatch, 9.5).deadlines == {"checksums.txt": 10.0, ASSET: 0.5}


def test_no_zip_download_starts_when_checksums_txt_took_the_whole_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InstallerFailed) as refused:
        timed_fetch(monkeypatch, 10.0)

    assert str(refused.value) == f"download {ASSET}: no time left within the 10 s deadline after checksums.txt"
    assert refused.value.exit_code == 5


class FullDisk(io.BytesIO):
    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["creating", "writing"])
def test_a_temporary_file_that_cannot_be_made_or_written_names_the_step(monkeypatch: pytest.MonkeyPatch,
                                                                        where: str) -> None:
    import tempfile

    def no_space() -> io.BytesIO:
        if where == "creating":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return FullDisk()

    monkeypatch.setattr(tempfile, "TemporaryFile", no_space)
    with pytest.raises(InstallerFailed) as refused:
        fetch(release_hosts())

    assert str(refused.value) == f"cannot store {ASSET} in a temporary file: No space left on device"


# --- a release carried by the bundle this tool runs from --------------------------------------------------

def bundled_release(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pinned: str | None = None,
                    carried: bytes = ZIP) -> Release:
    """Release 2.3.3 as a bundle carries it: its zip at v2.3.3/ASSET in the bundle's package, pinned to SHA."""
    from nezha_bootstrap import bundle

    package = tmp_path / "bundle-package"
    (package / "v2.3.3").mkdir(parents=True, exist_ok=True)
    (package / "v2.3.3" / ASSET).write_bytes(carried)
    monkeypatch.setattr(bundle, "_files", lambda: package)
    return Release(RELEASE_HOST, "2.3.3", ASSET, pinned, bundle.Bundle((bundle.Embedded("2.3.3", ASSET, SHA),)))


def test_a_bundled_release_is_extracted_from_the_bundle_and_nothing_is_downloaded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    hosts = Hosts({})

    assert fetch(hosts, release=bundled_release(monkeypatch, tmp_path, pinned=SHA)) == (21, b"#!/bin/sh\necho agent\n")
    assert hosts.requests == []
    assert agent_mod.check_bundled(bundled_release(monkeypatch, tmp_path, pinned=SHA)) is None  # raises when refused


def test_a_bundled_zip_that_does_not_match_agent_sha256_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    release = bundled_release(monkeypatch, tmp_path, pinned="0" * 64)

    for step in (agent_mod.check_bundled, lambda r: agent_mod.bundled_binary(r, io.BytesIO())):
        with pytest.raises(InstallerFailed) as refused:
            step(release)
        assert str(refused.value) == f"{ASSET} has SHA-256 {SHA}, but --agent-sha256 pins {'0' * 64}: refusing it"


def test_a_bundled_zip_altered_since_it_was_bundled_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    release = bundled_release(monkeypatch, tmp_path, carried=agent_zip(b"#!/bin/sh\necho altered\n"))

    for step in (agent_mod.check_bundled, lambda r: agent_mod.bundled_binary(r, io.BytesIO())):
        with pytest.raises(InstallerFailed, match=f"this bundle's v2.3.3/{ASSET} has SHA-256 .* not the {SHA} pinned"):
            step(release)


def test_a_bundle_without_the_asked_release_is_a_settings_error(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    from nezha_bootstrap.errors import SettingsError

    release = replace(bundled_release(monkeypatch, tmp_path), version="2.3.4")

    for step in (agent_mod.check_bundled, lambda r: agent_mod.bundled_binary(r, io.BytesIO())):
        with pytest.raises(SettingsError, match="this bundle has no nezha-agent 2.3.4 for amd64"):
            step(release)


def test_dry_run_describes_the_download_with_its_caps_and_the_pinned_hash() -> None:
    assert RELEASE_V1.describe() == [
        f"download {RELEASE_HOST}/v2.3.3/checksums.txt (at most {agent_mod.CHECKSUMS_CAP} bytes)",
        f"download {RELEASE_HOST}/v2.3.3/{ASSET} (at most {agent_mod.ZIP_CAP} bytes, redirects followed)",
        "check its SHA-256 against checksums.txt; extract nezha-agent (0755)",
    ]
    assert replace(RELEASE_V1, pinned_sha256=SHA).describe()[2] == (
        f"check its SHA-256 against checksums.txt and the pinned {SHA}; extract nezha-agent (0755)")
    assert agent_mod.obtaining(RELEASE_V1) == f"downloading nezha-agent v2.3.3 ({ASSET})"


def test_dry_run_describes_a_bundled_release_or_the_stop_when_the_bundle_lacks_it() -> None:
    from nezha_bootstrap.bundle import Bundle, Embedded

    carried = Bundle((Embedded("2.3.3", ASSET, SHA), Embedded("2.3.3", "nezha-agent_linux_arm64.zip", "1" * 64)))
    release = replace(RELEASE_V1, bundled=carried)

    assert release.describe() == [f"take v2.3.3/{ASSET} from this bundle, nothing downloaded: check its SHA-256 "
                                  f"against the {SHA} pinned in the bundle; extract nezha-agent (0755)"]
    assert replace(release, pinned_sha256="2" * 64).describe()[0].endswith(
        f"pinned in the bundle and the pinned {'2' * 64}; extract nezha-agent (0755)")
    assert replace(release, asset="nezha-agent_linux_386.zip").describe() == [
        "stop (exit 2): this bundle has no v2.3.3/nezha-agent_linux_386.zip; it carries nezha-agent 2.3.3 "
        "(amd64, arm64)"]
    assert replace(release, version="0.20.5").describe()[0].startswith("stop (exit 2): this bundle has no v0.20.5/")
    assert agent_mod.obtaining(release) == f"taking nezha-agent v2.3.3 ({ASSET}) from this bundle"


# --- is the agent running ----------------------------------------------------------------------------

class Polls:
    """`systemctl is-active` answers in turn, on a clock that only sleeping moves."""

    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers
        self.now = 0.0
        self.asked_at: list[float] = []
        self.slept: list[float] = []

    def is_active(self) -> bool:
        self.asked_at.append(self.now)
        return self.answers.pop(0) if self.answers else False

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_agent_is_waited_for_until_it_is_active(monkeypatch: pytest.MonkeyPatch) -> None:
    polls = Polls([False, False, True])
    monkeypatch.setattr(agent_mod, "time", polls)

    assert agent_mod.wait_active(polls.is_active, 5.0) is None  # raises when it never becomes active

    assert (polls.asked_at, polls.slept) == ([0.0, 0.5, 1.0], [0.5, 0.5])


def test_an_agent_not_active_by_the_deadline_fails_the_install_after_a_last_look(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    polls = Polls([])
    monkeypatch.setattr(agent_mod, "time", polls)

    with pytest.raises(InstallerFailed) as refused:
        agent_mod.wait_active(polls.is_active, 2.0)

    assert polls.asked_at == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert str(refused.value) == ("the agent unit was written, but `systemctl is-active nezha-agent` is not active "
                                  "after 2 s; see `journalctl -u nezha-agent`")
    assert refused.value.exit_code == 5


@pytest.mark.parametrize(("outcome", "active"), [(0, True), (3, False), (OSError(2, "no systemctl"), False)])
def test_the_agent_is_active_when_systemctl_is_active_says_so(monkeypatch: pytest.MonkeyPatch,
                                                               outcome: int | OSError, active: bool) -> None:
    from nezha_bootstrap import system

    asked: list[tuple[list[str], float]] = []

    def run(argv: list[str], *, timeout: float) -> system.Completed:
        asked.append((argv, timeout))
        if isinstance(outcome, OSError):
            raise outcome
        return system.Completed(outcome, "", False, 0.1)

    monkeypatch.setattr(system, "run", run)

    assert agent_mod.is_active() is active
    assert asked == [(["systemctl", "is-active", "--quiet", "nezha-agent"], 10)]


# --- reading what is installed: confined to the image, whatever the files say ------------------------

def link_to_host(path: Path, root: Path, tmp_path: Path, in_image: str, on_host: str) -> None:
    """`path` a link to an absolute path: in the image (under `root`) it holds `in_image`; on the host, `on_host`."""
    host_file = tmp_path / f"host-{path.name}"
    host_file.write_text(on_host)
    image_file = root / str(host_file).lstrip("/")
    image_file.parent.mkdir(parents=True, exist_ok=True)
    image_file.write_text(in_image)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(host_file)


V1_UNIT = f'[Service]\nExecStart=/opt/nezha/agent/nezha-agent "-c" "{CONFIG_TARGET}"\n'
V1_OPENRC = f'#!/sbin/openrc-run\ncommand=/opt/nezha/agent/nezha-agent\ncommand_args="-c {CONFIG_TARGET} "\n'
ELSEWHERE = '[Service]\nExecStart=/opt/nezha/agent/nezha-agent "-c" "/elsewhere.yml"\n'


@pytest.mark.parametrize("systemd", [True, False])
def test_a_unit_that_links_to_an_absolute_path_is_read_in_the_image_not_on_the_host(tmp_path: Path,
                                                                                     systemd: bool) -> None:
    paths = installed(tmp_path, unit=None)
    (paths.agent_dir / "config.yml").write_text("uuid: written\n")
    unit = paths.agent_unit if systemd else paths.agent_openrc
    link_to_host(unit, paths.root, tmp_path, V1_UNIT if systemd else V1_OPENRC, ELSEWHERE)
    uuid = "0000abcd-0f41-5a6b-9c7d-1e2f3a4b5c6d"

    assert agent_mod.installed_drift(paths, "", uuid, "", True, None) == []
    assert unit_problems(paths, "uuid: written\n") == []


def test_a_v0_unit_that_links_to_an_absolute_path_is_read_in_the_image_not_on_the_host(tmp_path: Path) -> None:
    paths = installed(tmp_path, unit=None)
    link_to_host(paths.agent_unit, paths.root, tmp_path, V0_UNIT, V0_UNIT.replace("S3cretS3cret", "0ther0ther"))

    assert v0_drift(paths) == []


def test_a_leftover_config_that_links_to_an_absolute_path_is_read_in_the_image(tmp_path: Path) -> None:
    paths = installed(tmp_path)
    link_to_host(paths.agent_dir / "config-one.yml", paths.root, tmp_path, "uuid: in-the-image\n", "uuid: on-host\n")

    assert [leftover.uuid for leftover in vendor_leftovers(paths)] == ["in-the-image"]


def test_a_systemd_unit_that_runs_the_agent_with_our_config_is_an_install(tmp_path: Path) -> None:
    paths = installed(tmp_path, unit=V1_UNIT)
    (paths.agent_dir / "config.yml").write_text("uuid: written\n")

    assert unit_problems(paths, "uuid: written\n") == []


def test_a_config_yml_that_is_not_utf8_is_never_what_was_written(tmp_path: Path) -> None:
    paths = installed(tmp_path, unit=V1_UNIT)
    (paths.agent_dir / "config.yml").write_bytes(b"uuid: \xff\n")

    assert unit_problems(paths, "uuid: \ufffd\n") == [
        f"{paths.agent_dir / 'config.yml'} is not what was written (changed by the agent?)"]


@pytest.mark.parametrize(("text", "uuid"), [
    (b'uuid: "0000abcd-0f41-5a6b-9c7d-1e2f3a4b5c6d"\nname: "w\xffb"\n', "0000abcd-0f41-5a6b-9c7d-1e2f3a4b5c6d"),
    (b"server: h:1\n", None),
    (None, None),
])
def test_the_uuid_of_a_config_yml_is_read_when_it_has_one(tmp_path: Path, text: bytes | None, uuid: str | None) -> None:
    config = tmp_path / "config.yml"
    if text is not None:
        config.write_bytes(text)

    assert agent_mod.config_uuid(config) == uuid


def test_a_binary_writable_by_others_but_executable_by_none_is_not_executable(tmp_path: Path) -> None:
    paths = installed(tmp_path, mode=0o646)

    assert v0_drift(paths) == [f"the agent binary {paths.agent_binary} is not executable"]
    assert v0_drift(installed(tmp_path / "other", mode=0o601)) == []  # anyone may run it: runnable


# --- the environment and /etc/sysconfig/nezha-agent ----------------------------------------------------

def test_the_warnings_say_what_overrides_what(tmp_path: Path) -> None:
    sysconfig = tmp_path / "etc/sysconfig/nezha-agent"
    sysconfig.parent.mkdir(parents=True)
    sysconfig.write_text("NZ_SERVER=h:1=2\nexport NZ_UUID = abc\n# a comment\nOTHER=1\n")

    assert override_warnings(Paths(tmp_path), {"NZ_UUID": "1", "NZ_SERVER": "x", "PATH": "/bin"}) == [
        "NZ_SERVER, NZ_UUID set in this environment: ignored (the agent's commands run without NZ_*); "
        "the identity comes from config.yml",
        "/etc/sysconfig/nezha-agent exists (it sets NZ_SERVER, NZ_UUID): the agent reads NZ_* from it, which "
        "overrides config.yml (NZ_UUID changes the server it enrolls as); remove it unless you mean it",
    ]


@pytest.mark.parametrize("text", ["", "# nothing set\n", "OTHER=1\n"])
def test_a_sysconfig_file_that_sets_no_nz_value_is_still_named_but_names_no_value(tmp_path: Path, text: str) -> None:
    sysconfig = tmp_path / "etc/sysconfig/nezha-agent"
    sysconfig.parent.mkdir(parents=True)
    sysconfig.write_text(text)

    assert override_warnings(Paths(tmp_path), {}) == [
        "/etc/sysconfig/nezha-agent exists: the agent reads NZ_* from it, which overrides config.yml "
        "(NZ_UUID changes the server it enrolls as); remove it unless you mean it"]


# --- the command of a unit or an init script ---------------------------------------------------------

def test_an_exec_start_whose_arguments_hold_equals_signs_is_read_whole(tmp_path: Path) -> None:
    unit = tmp_path / "nezha-agent.service"
    unit.write_text('[Service]\nExecStart=/opt/nezha/agent/nezha-agent "-c" "/etc/a=b.yml"\n')

    assert agent_mod.read_exec_start(unit) == ["/opt/nezha/agent/nezha-agent", "-c", "/etc/a=b.yml"]


@pytest.mark.parametrize(("script", "argv"), [
    ('#!/bin/sh\ncmd="/opt/nezha/agent/nezha-agent -c /etc/a=b.yml"\n',
     ["/opt/nezha/agent/nezha-agent", "-c", "/etc/a=b.yml"]),
    ('#!/bin/sh\ncmd="/opt/nezha/agent/nezha-agent -c /first.yml"\ncmd="/usr/bin/other"\n',
     ["/opt/nezha/agent/nezha-agent", "-c", "/first.yml"]),
    ("#!/sbin/openrc-run\ncommand=/opt/nezha/agent/nezha-agent\n", ["/opt/nezha/agent/nezha-agent"]),
    ('#!/sbin/openrc-run\ncommand=/opt/nezha/agent/nezha-agent\ncommand_args="-c /a.yml" "/b.yml"\n',
     ["/opt/nezha/agent/nezha-agent", "-c", "/a.yml"]),
    ("#!/bin/sh\ncmd=\n", None),
    ('#!/bin/sh\ncmd="/opt/nezha/agent/nezha-agent\n', None),
])
def test_an_init_script_is_read_as_sh_assigns_its_variables(tmp_path: Path, script: str,
                                                            argv: list[str] | None) -> None:
    path = tmp_path / "nezha-agent"
    path.write_text(script)

    assert read_init_command(path) == argv
