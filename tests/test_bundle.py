"""The offline bundle: `bundle` writes a zipapp carrying checked agent zips; a run from it downloads nothing.

The bundles here are built from stub agents (fake_v1's release zips) onto a small stand-in zipapp; a run
"from the bundle" puts that bundle on sys.path, where the tool finds its package as it does in a real
zipapp (tests/test_packaging.py runs a bundle of the real zipapp as a node does). Every release host is
unreachable in these runs: --agent-base-url and the install script point at a closed port.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nezha_bootstrap import bundle
from nezha_bootstrap.agent import AGENT_V0, AGENT_V1
from nezha_bootstrap.testing.fake_v1 import FakeV1, agent_zip, serve_v1, stub_agent
from tests.conftest import Cli, V1Cli, make_runner

pytestmark = pytest.mark.integration

CLOSED = "http://127.0.0.1:1"  # nothing listens on port 1: a release host that cannot be reached
UNREACHABLE = {"NEZHA_AGENT_BASE_URL": f"{CLOSED}/releases", "NEZHA_INSTALL_SCRIPT_URL": f"{CLOSED}/install.sh",
               "NEZHA_INSTALL_SCRIPT_SHA256": "0" * 64}
RELEASES_UNREACHABLE = {"NEZHA_AGENT_BASE_URL": f"{CLOSED}/releases"}
AMD64 = "nezha-agent_linux_amd64.zip"
WHEEL = "Wheel-Version: 1.0\nGenerator: bdist_wheel\nRoot-Is-Purelib: false\nTag: cp36-abi3-manylinux_2_12_{arch}\n"


def write_release(agent_dir: Path, version: str, arches: tuple[str, ...] = ("amd64", "arm64")) -> None:
    """v<version>/nezha-agent_linux_<arch>.zip of the stub agent, with the release's checksums.txt."""
    directory = agent_dir / f"v{version}"
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for arch in arches:
        data = agent_zip(stub_agent(version))
        (directory / f"nezha-agent_linux_{arch}.zip").write_bytes(data)
        lines.append(f"{hashlib.sha256(data).hexdigest()}  nezha-agent_linux_{arch}.zip\n")
    (directory / "checksums.txt").write_text("".join(lines))


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    """v0.20.5 and 2.3.3 for amd64 and arm64, as an --agent-base-url tree."""
    target = tmp_path / "agents"
    write_release(target, AGENT_V0)
    write_release(target, AGENT_V1)
    return target


@pytest.fixture
def base_pyz(tmp_path: Path) -> Path:
    """A stand-in zipapp for x86_64: a #! line, __main__.py and psutil's wheel tag (all `bundle` reads of it)."""
    path = tmp_path / "base.pyz"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("__main__.py", "raise SystemExit('stand-in')\n")
        archive.writestr("psutil-7.0.0.dist-info/WHEEL", WHEEL.format(arch="x86_64"))
    path.write_bytes(b"#!/usr/bin/env python3\n" + buffer.getvalue())
    return path


def invoke(*args: str) -> tuple[int, str, str]:
    from nezha_bootstrap.cli import main

    result = make_runner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


MakeBundle = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path, agent_dir: Path, base_pyz: Path) -> MakeBundle:
    def make(*arches: str, name: str = "bundle.pyz", source: Path | None = None) -> Path:
        output = tmp_path / name
        code, out, err = invoke("bundle", "--agent-dir", str(source or agent_dir), "--pyz", str(base_pyz),
                                "--output", str(output), *[f"--arch={arch}" for arch in arches])
        assert code == 0, err
        return output

    return make


@pytest.fixture
def use_bundle(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """Run the tool as from `path`: the bundle's package importable from the zip, as inside a zipapp."""
    def use(path: Path) -> None:
        monkeypatch.syspath_prepend(str(path))
        importlib.invalidate_caches()

    yield use
    sys.modules.pop(bundle.PACKAGE, None)
    sys.path_importer_cache.clear()


def manifest(path: Path) -> dict[str, object]:
    with zipfile.ZipFile(path) as archive:
        return dict(json.loads(archive.read(f"{bundle.PACKAGE}/manifest.json")))


def servers_made(cli: Cli) -> list[object]:
    """Register requests that name a server (the generation probe POSTs `{}`, which makes none)."""
    return [j for j in cli.fake.registrations() if j.body != b"{}"]


def alter_member(path: Path, member: str, data: bytes) -> None:
    """Replace one member's bytes and keep everything else (the manifest's pinned hashes included)."""
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, old in members:
            archive.writestr(info, data if info.filename == member else old)


# --- writing a bundle ------------------------------------------------------------------------------

def test_a_bundle_carries_each_zip_pinned_by_its_hash_and_prints_its_own(make_bundle: MakeBundle,
                                                                          agent_dir: Path, base_pyz: Path) -> None:
    output = make_bundle()
    code, out, err = invoke("bundle", "--agent-dir", str(agent_dir), "--pyz", str(base_pyz),
                            "--output", str(output))

    assert code == 0, err
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    assert f"sha256 {digest}  (for render cloud-init --pyz-url URL --pyz-sha256 {digest})" in out.splitlines()
    assert f"carries nezha-agent {AGENT_V0} (amd64), {AGENT_V1} (amd64), each pinned by its SHA-256" in out
    zipped = {v: (agent_dir / f"v{v}" / AMD64).read_bytes() for v in (AGENT_V0, AGENT_V1)}
    assert manifest(output) == {"format": 1, "agents": [
        {"version": v, "asset": AMD64, "sha256": hashlib.sha256(zipped[v]).hexdigest()} for v in (AGENT_V0, AGENT_V1)]}
    with zipfile.ZipFile(output) as archive:
        assert archive.read(f"{bundle.PACKAGE}/v{AGENT_V0}/{AMD64}") == zipped[AGENT_V0]
        assert archive.read("__main__.py") == b"raise SystemExit('stand-in')\n"
    assert output.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert output.stat().st_mode & 0o777 == 0o755


def test_the_same_inputs_give_the_same_bytes(make_bundle: MakeBundle) -> None:
    assert make_bundle(name="one.pyz").read_bytes() == make_bundle(name="two.pyz").read_bytes()


def test_a_bundle_of_a_bundle_replaces_its_agents(make_bundle: MakeBundle, agent_dir: Path, tmp_path: Path) -> None:
    first = make_bundle("arm64")
    output = tmp_path / "again.pyz"
    code, _, err = invoke("bundle", "--agent-dir", str(agent_dir), "--pyz", str(first), "--output", str(output),
                          "--arch", "x86_64")

    assert code == 0, err
    assert output.read_bytes() == make_bundle("amd64", name="direct.pyz").read_bytes()


def test_architectures_can_be_named_either_way_and_each_is_taken(make_bundle: MakeBundle) -> None:
    agents = manifest(make_bundle("aarch64", "amd64"))["agents"]

    assert [(a["version"], a["asset"]) for a in agents] == [  # type: ignore[attr-defined]
        (v, f"nezha-agent_linux_{arch}.zip") for v in (AGENT_V0, AGENT_V1) for arch in ("arm64", "amd64")]


def test_a_zip_that_does_not_match_its_checksums_is_refused(agent_dir: Path, base_pyz: Path, tmp_path: Path) -> None:
    (agent_dir / f"v{AGENT_V1}" / AMD64).write_bytes(agent_zip(b"#!/bin/sh\necho tampered\n"))
    output = tmp_path / "bundle.pyz"

    code, out, err = invoke("bundle", "--agent-dir", str(agent_dir), "--pyz", str(base_pyz), "--output", str(output))

    assert code == 5
    assert f"v{AGENT_V1}/{AMD64} has SHA-256" in err and "checksums.txt says" in err
    assert not output.exists() and list(tmp_path.glob(".bundle.pyz.*")) == []


@pytest.mark.parametrize(("damage", "code", "words"), [
    (lambda d: (d / f"v{AGENT_V0}" / "checksums.txt").unlink(), 2, "checksums.txt"),
    (lambda d: (d / f"v{AGENT_V0}" / "checksums.txt").write_text("0" * 64 + "  other.zip\n"), 5,
     f"no SHA-256 for {AMD64}"),
    (lambda d: [p.unlink() for p in d.glob("v*/*.zip")], 2, "holds no v<version>/nezha-agent_linux_<arch>.zip"),
])
def test_an_incomplete_release_tree_is_refused(agent_dir: Path, base_pyz: Path, tmp_path: Path,
                                               damage: Callable[[Path], object], code: int, words: str) -> None:
    damage(agent_dir)

    result = invoke("bundle", "--agent-dir", str(agent_dir), "--pyz", str(base_pyz), "--output", str(tmp_path / "b"))

    assert result[0] == code and words in result[2]


def test_a_generation_without_its_agent_is_warned_about(base_pyz: Path, tmp_path: Path) -> None:
    write_release(tmp_path / "only-v1", AGENT_V1)

    code, _, err = invoke("bundle", "--agent-dir", str(tmp_path / "only-v1"), "--pyz", str(base_pyz),
                          "--output", str(tmp_path / "b.pyz"))

    assert code == 0
    assert f"warning: no nezha-agent {AGENT_V0} for amd64: on v0 dashboards such nodes stop before registering" in err


def test_a_bundle_over_the_fetch_cap_is_refused(make_bundle: MakeBundle, agent_dir: Path, base_pyz: Path,
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("nezha_bootstrap.firstboot.zipapp.MAX_PYZ_BYTES", 4000)

    code, _, err = invoke("bundle", "--agent-dir", str(agent_dir), "--pyz", str(base_pyz),
                          "--output", str(tmp_path / "big.pyz"))

    assert code == 2 and "over the 4000-byte cap of the first-boot fetch" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agents", "base.pyz"]


def test_an_output_that_cannot_be_written_is_exit_1_naming_it(agent_dir: Path, base_pyz: Path, tmp_path: Path) -> None:
    output = base_pyz / "bundle.pyz"  # under a file

    code, _, err = invoke("bundle", "--agent-dir", str(agent_dir), "--pyz", str(base_pyz), "--output", str(output))

    assert code == 1 and f"cannot write {output}" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agents", "base.pyz"]


def test_the_installed_tool_asks_for_the_zipapp_to_extend(agent_dir: Path, tmp_path: Path) -> None:
    code, _, err = invoke("bundle", "--agent-dir", str(agent_dir), "--output", str(tmp_path / "b.pyz"))

    assert code == 2 and "this is not running from a zipapp: give --pyz FILE" in err


def test_a_zipapp_of_unknown_architecture_needs_arch(agent_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.pyz"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("__main__.py", "")

    code, _, err = invoke("bundle", "--agent-dir", str(agent_dir), "--pyz", str(plain), "--output", str(tmp_path / "b"))

    assert code == 2 and "cannot tell which architecture it runs on" in err and "give --arch" in err


# --- a v1/v2 run from a bundle ---------------------------------------------------------------------

@pytest.fixture
def v1cli(root: Path) -> Iterator[V1Cli]:
    """A v2.1+ fake that serves no release at all: only the bundle has the agent."""
    fake = FakeV1(profile="v2.1+")
    with serve_v1(fake) as running:
        yield V1Cli(running, fake, root)


def test_v1_installs_the_bundled_agent_and_downloads_nothing(v1cli: V1Cli, make_bundle: MakeBundle,
                                                              use_bundle: Callable[[Path], None]) -> None:
    use_bundle(make_bundle())

    outcome = v1cli(**RELEASES_UNREACHABLE)

    assert outcome.exit_code == 0, outcome.stderr
    assert f"taking nezha-agent v{AGENT_V1} ({AMD64}) from this bundle" in outcome.stderr
    assert [(call.argv[0], call.argv[-1]) for call in v1cli.agent_calls()] == [("service", "install")]
    assert (v1cli.root / "opt/nezha/agent/nezha-agent").read_bytes() == stub_agent(AGENT_V1)
    assert v1cli.state()["agent_version"] == AGENT_V1
    assert not [j.path for j in v1cli.fake.journal if j.path.startswith("/releases")]


def test_v1_refuses_an_embedded_zip_altered_after_bundling(v1cli: V1Cli, make_bundle: MakeBundle,
                                                           use_bundle: Callable[[Path], None]) -> None:
    path = make_bundle()
    alter_member(path, f"{bundle.PACKAGE}/v{AGENT_V1}/{AMD64}", agent_zip(b"#!/bin/sh\necho altered\n"))
    use_bundle(path)

    outcome = v1cli(**RELEASES_UNREACHABLE)

    assert outcome.exit_code == 5
    assert f"this bundle's v{AGENT_V1}/{AMD64} has SHA-256" in outcome.stderr and "altered" in outcome.stderr
    assert not (v1cli.root / "opt").exists() and not (v1cli.root / "var/lib/nezha-bootstrap/state.json").exists()
    assert v1cli.agent_calls() == []


def test_v1_with_a_bundle_for_another_architecture_stops_before_installing(
        v1cli: V1Cli, make_bundle: MakeBundle, use_bundle: Callable[[Path], None]) -> None:
    use_bundle(make_bundle("arm64"))

    outcome = v1cli(**RELEASES_UNREACHABLE)

    assert outcome.exit_code == 2
    assert (f"this bundle has no nezha-agent {AGENT_V1} for amd64 (this node's architecture; {AGENT_V1} is the agent "
            f"of v1/v2 dashboards); it carries nezha-agent {AGENT_V0} (arm64), {AGENT_V1} (arm64)") in outcome.stderr
    assert not (v1cli.root / "opt").exists() and v1cli.agent_calls() == []


def test_check_names_what_the_bundle_carries(v1cli: V1Cli, make_bundle: MakeBundle,
                                             use_bundle: Callable[[Path], None]) -> None:
    use_bundle(make_bundle("amd64", "arm64"))

    outcome = v1cli.invoke(["check"], **RELEASES_UNREACHABLE)

    release = [line for line in outcome.stdout.splitlines() if "release" in line]
    assert release == [f"ok    release    v{AGENT_V1} {AMD64} is in this bundle; its SHA-256 matches the one pinned at "
                       f"bundling (the bundle carries nezha-agent {AGENT_V0} (amd64, arm64), {AGENT_V1} "
                       "(amd64, arm64))"]


def test_check_fails_with_exit_2_for_a_bundle_without_this_architecture(
        v1cli: V1Cli, make_bundle: MakeBundle, use_bundle: Callable[[Path], None]) -> None:
    use_bundle(make_bundle("arm64"))

    outcome = v1cli.invoke(["check"], **RELEASES_UNREACHABLE)

    assert outcome.exit_code == 2
    assert f"FAIL  release    this bundle has no nezha-agent {AGENT_V1} for amd64" in outcome.stdout


def test_the_dry_run_says_the_agent_comes_from_the_bundle(v1cli: V1Cli, make_bundle: MakeBundle,
                                                          use_bundle: Callable[[Path], None]) -> None:
    use_bundle(make_bundle())

    outcome = v1cli("--dry-run", "--dashboard", "v2", **RELEASES_UNREACHABLE)

    assert outcome.exit_code == 0, outcome.stderr
    assert f"take v{AGENT_V1}/{AMD64} from this bundle, nothing downloaded" in outcome.stdout
    assert "download" not in outcome.stdout.replace("nothing downloaded", "")


# --- a v0 run from a bundle ------------------------------------------------------------------------

def test_v0_registers_once_and_installs_the_bundled_agent_directly(cli: Cli, make_bundle: MakeBundle,
                                                                   use_bundle: Callable[[Path], None]) -> None:
    use_bundle(make_bundle())

    first = cli("run", **UNREACHABLE)
    sent = len(cli.fake.journal)
    again = cli("run", **UNREACHABLE)

    assert first.exit_code == 0, first.stderr
    [server] = cli.fake.servers
    assert f"taking nezha-agent v{AGENT_V0} ({AMD64}) from this bundle" in first.stderr
    assert (cli.root / "opt/nezha/agent/nezha-agent").read_bytes() == stub_agent(AGENT_V0)
    unit = (cli.root / "etc/systemd/system/nezha-agent.service").read_text()
    assert f'"-s" "probe.example.test:5555" "-p" "{server.secret}"' in unit
    assert cli.calls() == [], "install.sh never runs: it would download the agent from GitHub"
    assert again.exit_code == 0 and len(servers_made(cli)) == 1
    # With only an API token the bundle's run is a plain v0 run: no generation probe, and a rerun sends nothing.
    assert cli.fake.registrations() == servers_made(cli) and "/api/v1/setting" not in [j.path for j in cli.fake.journal]
    assert len(cli.fake.journal) == sent


def test_v0_refuses_an_embedded_zip_altered_after_bundling_before_registering(
        cli: Cli, make_bundle: MakeBundle, use_bundle: Callable[[Path], None]) -> None:
    path = make_bundle()
    alter_member(path, f"{bundle.PACKAGE}/v{AGENT_V0}/{AMD64}", agent_zip(b"#!/bin/sh\necho altered\n"))
    use_bundle(path)

    outcome = cli("run", **UNREACHABLE)

    assert outcome.exit_code == 5 and "altered" in outcome.stderr
    assert servers_made(cli) == [] and not (cli.root / "opt").exists()


def test_v0_with_a_bundle_for_another_architecture_stops_before_registering(
        cli: Cli, make_bundle: MakeBundle, use_bundle: Callable[[Path], None]) -> None:
    use_bundle(make_bundle("arm64"))

    outcome = cli("run", **UNREACHABLE)

    assert outcome.exit_code == 2
    assert f"this bundle has no nezha-agent {AGENT_V0} for amd64" in outcome.stderr
    assert servers_made(cli) == [] and not (cli.root / "opt").exists()


def test_v0_with_a_bundle_of_only_the_v1_agent_stops_before_registering(
        cli: Cli, base_pyz: Path, tmp_path: Path, make_bundle: MakeBundle,
        use_bundle: Callable[[Path], None]) -> None:
    write_release(tmp_path / "only-v1", AGENT_V1)
    use_bundle(make_bundle(source=tmp_path / "only-v1"))

    outcome = cli("run", **UNREACHABLE)

    assert outcome.exit_code == 2
    assert f"no nezha-agent {AGENT_V0} for amd64 (this node's architecture; {AGENT_V0} is the agent of v0 " \
           "dashboards)" in outcome.stderr
    assert servers_made(cli) == []


@pytest.mark.parametrize(("env", "words"), [
    ({"NEZHA_INSTALL_METHOD": "script"}, "--method script runs the vendor's install.sh"),
    ({"NEZHA_AGENT_VERSION": "0.20.4"}, f"--agent-version 0.20.4: this bundle carries nezha-agent {AGENT_V0}"),
])
def test_settings_a_bundle_cannot_carry_out_are_refused_before_any_request(
        cli: Cli, make_bundle: MakeBundle, use_bundle: Callable[[Path], None], env: dict[str, str],
        words: str) -> None:
    use_bundle(make_bundle())

    outcome = cli("run", **UNREACHABLE, **env)

    assert outcome.exit_code == 2 and words in outcome.stderr
    assert cli.fake.journal == []


# --- render: the bundle is pinned like any zipapp -------------------------------------------------

def test_render_pins_a_bundle_and_says_its_size_against_the_fetch_cap(make_bundle: MakeBundle) -> None:
    from nezha_bootstrap.firstboot.zipapp import MAX_PYZ_BYTES

    path = make_bundle()
    url = "http://files.example.test/nezha-bootstrap-bundle.pyz"

    result = make_runner().invoke(__import__("nezha_bootstrap.cli").cli.main,
                                  ["render", "cloud-init", "--pyz-url", url, "--pyz", str(path)],
                                  env={"NEZHA_DASHBOARD_URL": "https://dash.example.test", "NEZHA_TOKEN": "T" * 32})

    assert result.exit_code == 0, result.stderr
    assert json.dumps({"url": url, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}) in \
        result.stdout.replace('\\"', '"')
    assert (f"--pyz {path}: {path.stat().st_size:,} bytes (the node's fetch takes up to {MAX_PYZ_BYTES:,}); a bundle "
            f"carrying nezha-agent {AGENT_V0} (amd64), {AGENT_V1} (amd64): the node downloads nothing else"
            ) in result.stderr


def test_an_agent_sha256_pin_is_checked_against_the_bundled_zip_too(cli: Cli, make_bundle: MakeBundle,
                                                                    use_bundle: Callable[[Path], None]) -> None:
    use_bundle(make_bundle())

    outcome = cli("run", **UNREACHABLE, NEZHA_AGENT_SHA256="ab" * 32)

    assert outcome.exit_code == 5 and f"but --agent-sha256 pins {'ab' * 32}" in outcome.stderr
    assert servers_made(cli) == [] and not (cli.root / "opt").exists()
