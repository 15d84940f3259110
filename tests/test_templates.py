"""The first-boot templates: one packaged copy, the unit's settings, and the real validators.

The validators are the real ones: `cloud-init schema --config-file`, `systemd-analyze verify` and,
for the settings file, systemd itself (PID 1 in a throwaway systemd-nspawn container that reads it
through EnvironmentFile=). In CI they must be there; elsewhere a missing one skips with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import trustme
import yaml

from nezha_bootstrap.cli import main
from nezha_bootstrap.config import DEFAULT_DEADLINE, DEFAULT_LOCK_TIMEOUT
from nezha_bootstrap.firstboot import render
from nezha_bootstrap.paths import Paths
from tests import envfile
from tests.conftest import IN_CI, TOKEN, make_runner
from tests.test_render import HOSTILE

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "nezha_bootstrap/firstboot/templates"
PYZ_SHA256 = "0123456789abcdef" * 4
URL = "https://nezha.example.com"
VALIDATOR_TIMEOUT = 120


def require(*tools: str) -> None:
    """Skip (or, in CI, fail) unless every tool is on PATH."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        reason = f"needs {', '.join(missing)} (apt-get install cloud-init systemd systemd-container)"
        if IN_CI:
            pytest.fail(reason + " (CI is set, so this is a failure, not a skip)")
        pytest.skip(reason)


def unit_settings(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values of a unit file, comments left out."""
    found: dict[tuple[str, str], list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault((section, key), []).append(value)
    return found


def filled_documents() -> dict[str, str]:
    """Every rendered document, with the hostile values in the settings file."""
    settings = render.env_file([("NEZHA_DASHBOARD_URL", URL), ("NEZHA_TOKEN", TOKEN)]
                               + [(f"NEZHA_NOTE_{i}", value) for i, value in enumerate(HOSTILE)])
    return {
        "cloud-init": render.cloud_init(settings, ["--index-url=https://pypi.example.test/simple",
                                                   "nezha-bootstrap @ https://example.test/nezha.whl"]),
        "cloud-init-minimal": render.cloud_init_minimal(settings),
        "cloud-init-pyz": render.cloud_init_pyz(settings, "https://example.test/nezha-bootstrap.pyz?sig=a&b=%20",
                                                PYZ_SHA256),
        # As `render` prints them by default: no comments; and with a private CA for the trust store.
        "lean cloud-init-pyz with a CA": render.cloud_init_pyz(
            render.env_file([("NEZHA_DASHBOARD_URL", URL), ("NEZHA_TOKEN", TOKEN)], comments=False),
            "https://example.test/nezha-bootstrap.pyz", PYZ_SHA256, comments=False,
            ca=render.ca_certificates(trustme.CA().cert_pem.bytes().decode())),
    }


# --- one source, and the contents --------------------------------------------------------------------

def repository_files() -> list[Path]:
    """The repository's own files: not version control, virtualenvs, caches or build output."""
    skipped = {"build", "dist", "node_modules", "__pycache__", "site"}
    found = []
    for directory, subdirectories, files in os.walk(REPO):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".") and d not in skipped
                             and not d.endswith(".egg-info")]
        found.extend(Path(directory) / name for name in files)
    return found


def test_the_templates_have_one_copy_the_packaged_one() -> None:
    packaged = {path.read_bytes(): path for path in TEMPLATES.iterdir()}

    copies = [path for path in repository_files() if path.parent != TEMPLATES and not path.is_symlink()
              and path.stat().st_size < 1 << 20 and path.read_bytes() in packaged]

    assert copies == []


TOP_LEVEL = {
    "systemd": {"nezha-bootstrap.service", "nezha-bootstrap.env", "nezha-bootstrap-fetch.conf",
                "nezha-bootstrap-launcher"},
    "cloud-init": {"cloud-init-full.yaml", "cloud-init-minimal.yaml", "cloud-init-pyz.yaml", "nezha-bootstrap-fetch"},
}


@pytest.mark.parametrize("folder", sorted(TOP_LEVEL))
def test_the_top_level_folders_are_links_to_the_packaged_templates(folder: str) -> None:
    """systemd/ and cloud-init/ are where an operator looks first; each entry points into the package."""
    entries = sorted((REPO / folder).iterdir())

    assert entries, f"{folder}/ is empty"
    for entry in entries:
        assert entry.is_symlink(), f"{entry} is a copy, not a link to the packaged template"
        assert entry.resolve().parent == TEMPLATES.resolve(), f"{entry} points outside the packaged templates"
        assert entry.resolve().is_file(), f"{entry} is a broken link"
    names = {entry.name for entry in entries}
    assert names == TOP_LEVEL[folder]


def test_every_packaged_template_is_one_render_uses() -> None:
    assert {p.name for p in TEMPLATES.iterdir()} == set(render.TEMPLATES.values())


@pytest.mark.parametrize(("section", "key", "values"), [
    ("Unit", "Wants", ["network-online.target"]),
    ("Unit", "After", ["network-online.target nss-lookup.target time-sync.target"]),
    ("Unit", "ConditionPathExists", ["/etc/nezha-bootstrap/env"]),
    ("Unit", "StartLimitIntervalSec", ["1h"]),
    ("Unit", "StartLimitBurst", ["6"]),
    ("Service", "Type", ["oneshot"]),
    ("Service", "RemainAfterExit", ["yes"]),
    ("Service", "EnvironmentFile", ["/etc/nezha-bootstrap/env"]),
    ("Service", "ExecStart", [f"{render.TOOL} run"]),
    ("Service", "TimeoutStartSec", [f"{render.UNIT_START_TIMEOUT // 60}min"]),
    ("Service", "Restart", ["on-failure"]),
    ("Service", "RestartSec", ["60s"]),
    ("Service", "RestartPreventExitStatus", ["2 3"]),
    ("Service", "ProtectHome", ["read-only"]),
    ("Install", "WantedBy", ["multi-user.target"]),
])
def test_the_unit_says(section: str, key: str, values: list[str]) -> None:
    assert unit_settings(render.unit())[(section, key)] == values


@pytest.mark.parametrize("key", [
    "ConditionFirstBoot", "ProtectSystem", "NoNewPrivileges", "ProtectKernelTunables", "PrivateDevices",
    "ProtectClock", "DeviceAllow", "CapabilityBoundingSet", "SystemCallFilter", "ReadOnlyPaths", "DynamicUser", "User",
])
def test_the_unit_neither_waits_for_a_first_boot_flag_nor_fences_in_the_installer(key: str) -> None:
    assert [k for _, k in unit_settings(render.unit())].count(key) == 0


def test_the_unit_is_never_ordered_after_cloud_init() -> None:
    ordering = [value for (_, key), values in unit_settings(render.unit()).items() for value in values
                if key in ("After", "Requires", "Wants", "BindsTo", "Requisite")]

    assert not [value for value in ordering if "cloud" in value]


def test_the_units_start_timeout_covers_the_longest_run_with_default_settings() -> None:
    assert render.timeout_warning(DEFAULT_DEADLINE, DEFAULT_LOCK_TIMEOUT) is None


def test_the_settings_template_sets_nothing_and_no_comment_continues_a_line() -> None:
    text = render.template("env")

    assert envfile.parse(text) == {}
    assert not [line for line in text.splitlines() if line.startswith("#") and line.endswith("\\")]


@pytest.mark.parametrize("kind", ["cloud-init", "cloud-init-minimal", "cloud-init-pyz"])
def test_user_data_holds_only_the_keys_we_mean(kind: str) -> None:
    # cloud-init's schema accepts any unknown top-level key, so this one is ours to check.
    keys = {"write_files", "runcmd", *(["bootcmd"] if kind == "cloud-init-pyz" else [])}
    for text in (render.template(kind), filled_documents()[kind]):
        assert text.startswith("#cloud-config\n")
        assert set(yaml.safe_load(text)) == keys


# --- the real validators -----------------------------------------------------------------------------

def cloud_init_schema(path: Path) -> str:
    """Problems `cloud-init schema` finds in the file ('' when none)."""
    done = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True,
                          timeout=VALIDATOR_TIMEOUT)
    noise = re.sub(r"Cloud config schema deprecations:\s*", "", done.stderr).strip()  # an empty list is printed
    if done.returncode != 0 or "Valid cloud-config" not in done.stdout or noise:
        return f"exit {done.returncode}: {done.stdout}{done.stderr}"
    return ""


@pytest.mark.integration
@pytest.mark.parametrize("name", ["cloud-init", "cloud-init-minimal", "cloud-init-pyz", "filled cloud-init",
                                  "filled cloud-init-minimal", "filled cloud-init-pyz",
                                  "filled lean cloud-init-pyz with a CA"])
def test_cloud_init_accepts_the_templates_and_what_render_makes(tmp_path: Path, name: str) -> None:
    require("cloud-init")
    kind = name.replace("filled ", "")
    path = tmp_path / "user-data"
    path.write_text(filled_documents()[kind] if name.startswith("filled") else render.template(kind))

    assert cloud_init_schema(path) == ""


@pytest.mark.integration
def test_cloud_init_schema_does_find_problems(tmp_path: Path) -> None:
    require("cloud-init")
    path = tmp_path / "user-data"
    path.write_text("#cloud-config\nwrite_files:\n  - path: /x\n    mode: 600\nruncmd: 3\n")

    assert "runcmd" in cloud_init_schema(path)


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with the host's system units and the tool where the unit runs it, for `verify --root`."""
    root = tmp_path_factory.mktemp("unit-root")
    units = Path("/usr/lib/systemd/system")
    if units.is_dir():
        shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    tool = root / render.TOOL.lstrip("/")
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    return root


def systemd_verify(root: Path, unit_text: str) -> str:
    """What `systemd-analyze verify` says about the unit installed under root ('' when nothing)."""
    path = root / "etc/systemd/system" / render.UNIT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(unit_text)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", render.UNIT_NAME],
                          capture_output=True, text=True, timeout=VALIDATOR_TIMEOUT)
    said = done.stdout + done.stderr
    return f"exit {done.returncode}: {said}" if done.returncode or said else ""


@pytest.mark.integration
def test_systemd_accepts_the_unit_without_a_single_warning(unit_root: Path) -> None:
    require("systemd-analyze")

    assert systemd_verify(unit_root, render.unit()) == ""


@pytest.mark.integration
def test_systemd_accepts_the_unit_install_service_writes(unit_root: Path) -> None:
    require("systemd-analyze")
    outcome = make_runner().invoke(main, ["install-service", "--root", str(unit_root), "-q"],
                                   env={"NEZHA_DASHBOARD_URL": URL, "NEZHA_TOKEN": TOKEN})
    assert outcome.exit_code == 0, outcome.output
    written = Paths(unit_root).service_unit.read_text()

    assert systemd_verify(unit_root, written) == ""


@pytest.mark.integration
def test_systemd_accepts_the_unit_with_the_zipapp_fetch_drop_in(unit_root: Path) -> None:
    require("systemd-analyze")
    drop_in = unit_root / "etc/systemd/system" / f"{render.UNIT_NAME}.d" / "fetch.conf"
    env = unit_root / "usr/bin/env"  # what ExecStartPre runs: it must exist and be executable in the root
    env.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2("/usr/bin/env", env)
    drop_in.parent.mkdir(parents=True)
    drop_in.write_text(render.template("fetch-drop-in"))
    try:
        assert systemd_verify(unit_root, render.unit()) == ""
        drop_in.write_text(render.template("fetch-drop-in").replace("ExecStartPre=", "ExecStartPre=/nonexistent "))
        assert "not executable" in systemd_verify(unit_root, render.unit())
    finally:
        shutil.rmtree(drop_in.parent)
        env.unlink()


@pytest.mark.integration
@pytest.mark.parametrize(("line", "complaint"), [("Bogus=1", "Unknown key"), ("RestartSec=soon", "Failed to parse"),
                                                 ("ExecStartPre=/nonexistent/tool", "not executable")])
def test_systemd_analyze_does_find_problems(unit_root: Path, line: str, complaint: str) -> None:
    require("systemd-analyze")
    broken = render.unit().replace("[Service]\n", f"[Service]\n{line}\n")

    assert complaint in systemd_verify(unit_root, broken)


# --- the settings file, read by systemd itself --------------------------------------------------------

SYSTEMD_CASES = {  # systemd's own test files (src/test/test-env-file.c) and the documented quoting rules
    "vector1": "a=a\nb=b\\\nc\nd=d\\\ne\\\nf\ng=g\\ \nh=h\ni=i\\",
    "vector3": '#SPAMD_ARGS="-d --socketpath=/var/lib/bulwark/spamd \\\n#--nouser-config   \\\nnormal=line',
    "vector4": '# Generated\n\nHWMON_MODULES="coretemp f71882fg"\n\nMODULE_0=coretemp\nMODULE_1=f71882fg',
    "vector5": "a=\nb=",
    "quotes": "A='single $quoted \\n'\nB=\"\\\"\\\\\\`\\$ \\q\"\nC=\"two\nlines\"\n  D = padded value  \n",
    "names": "; comment\nE=1\nE=2\n1BAD=x\nBAD-NAME=y\nno equals sign\n",
}


def run_systemd_on(files: dict[str, str], workdir: Path) -> dict[str, dict[str, str]]:
    """Boot systemd in a throwaway container (host /usr read-only, everything else a tmpfs, no network)
    and return, for each file, the environment a service got from it through EnvironmentFile=."""
    units, data = workdir / "units", workdir / "data"
    units.mkdir()
    data.mkdir()
    names = ["baseline", *files]
    for name, text in {"baseline": "", **files}.items():
        (data / f"{name}.env").write_bytes(text.encode("utf-8"))
    (units / "envtest@.service").write_text(
        "[Unit]\nDefaultDependencies=no\n[Service]\nType=oneshot\nEnvironmentFile=/envtest/%i.env\n"
        "ExecStart=/usr/bin/env -0\nStandardOutput=file:/envtest/%i.out\n")
    instances = " ".join(f"envtest@{name}.service" for name in names)
    (units / "envtest-done.service").write_text(
        f"[Unit]\nDefaultDependencies=no\nWants={instances}\nAfter={instances}\nSuccessAction=exit-force\n"
        "FailureAction=exit-force\n[Service]\nType=oneshot\nExecStart=/usr/bin/true\n")
    done = subprocess.run(
        ["systemd-nspawn", "-q", "-D", "/", "--volatile=yes", "--private-network", "--register=no", "--keep-unit",
         "-M", f"nzb-envtest-{os.getpid()}", f"--bind-ro={units}:/etc/systemd/system", f"--bind={data}:/envtest",
         "-b", "systemd.unit=envtest-done.service"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=VALIDATOR_TIMEOUT)
    outputs = {}
    for name in names:
        out = data / f"{name}.out"
        assert out.exists(), f"systemd ran no service for {name}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        text = out.read_bytes().decode("utf-8")  # not read_text: universal newlines would turn \r into \n
        outputs[name] = dict(item.split("=", 1) for item in text.split("\0") if item)
    baseline = set(outputs.pop("baseline"))  # what systemd itself sets: PATH, LANG, INVOCATION_ID, ...
    return {name: {k: v for k, v in env.items() if k not in baseline} for name, env in outputs.items()}


@pytest.mark.root
def test_systemd_reads_rendered_settings_files_exactly_as_our_parser_does(tmp_path: Path) -> None:
    require("systemd-nspawn")
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI runs as root: systemd-nspawn needs it")
        pytest.skip("needs root for systemd-nspawn")
    hostile = {f"NEZHA_NOTE_{i}": value for i, value in enumerate(HOSTILE)}
    files = {**SYSTEMD_CASES, "rendered": render.env_file(list(hostile.items())),
             "template": render.template("env")}

    seen = run_systemd_on(files, tmp_path)

    assert seen["rendered"] == hostile
    assert {name: seen[name] for name in files} == {name: envfile.parse(text) for name, text in files.items()}
