"""Live: a node that reaches only the dashboard installs the real agent from the offline bundle.

The bundle is what an operator makes: `nezha-bootstrap bundle`, run from the zipapp (NEZHA_LIVE_PYZ, else one
packaging/build makes here), over NEZHA_LIVE_AGENT_DIR laid out as v<version>/ (the --agent-base-url tree).
The run, from the bundle, points --agent-base-url at a port where nothing listens, so the agent can come from
nowhere else. v1/v2: it enrolls under the machine's uuid and shows online. v0: it registers, the real v0 agent
installs itself (--method direct, which the bundle implies) and shows online. What the module makes is deleted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nezha_bootstrap.identity import machine_uuid

from .conftest import (
    REPO,
    SETTINGS,
    Ran,
    Sandbox,
    need,
    need_generation,
    unique,
    v0_delete,
    v0_servers,
    v1_delete,
    v1_servers,
)
from .test_live_v0 import wait_online as v0_wait_online
from .test_live_v1 import V1_GENERATIONS
from .test_live_v1 import wait_online as v1_wait_online

pytestmark = pytest.mark.integration
NOWHERE = "http://127.0.0.1:1"  # the release host: nothing listens on port 1


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle of this machine's zipapp and NEZHA_LIVE_AGENT_DIR."""
    need("URL", "GENERATION", "AGENT_DIR")
    work = tmp_path_factory.mktemp("live-bundle")
    pyz = Path(os.environ["NEZHA_LIVE_PYZ"]) if os.environ.get("NEZHA_LIVE_PYZ") else _built_zipapp(work / "dist")
    (work / "agents").mkdir()
    (work / "agents" / f"v{SETTINGS.version}").symlink_to(Path(SETTINGS.agent_dir).resolve())
    output = work / "nezha-bootstrap-bundle.pyz"
    done = subprocess.run([sys.executable, "-I", str(pyz), "bundle", "--agent-dir", str(work / "agents"),
                           "--output", str(output)], capture_output=True, text=True, timeout=300,
                          env={"PATH": os.environ["PATH"], "NEZHA_BOOTSTRAP_CACHE": str(work / "cache")})
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"\nLIVE bundle: {output.stat().st_size:,} bytes, {done.stdout.splitlines()[1]}")
    return output


def _built_zipapp(out: Path) -> Path:
    done = subprocess.run([sys.executable, str(REPO / "packaging" / "build"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    [pyz] = out.glob(f"nezha-bootstrap-*-{os.uname().machine}.pyz")
    return pyz


def from_bundle(bundle: Path, box: Sandbox, *args: str, secrets_env: dict[str, str]) -> Ran:
    """`python3 -I BUNDLE run --root / ...` in the sandbox, as the node's launcher runs it."""
    env = {"PATH": os.environ["PATH"], **secrets_env}
    argv = box.wrap([sys.executable, "-I", str(bundle), "run", "--root", "/", "--dashboard-url", SETTINGS.url,
                     "--agent-base-url", NOWHERE, "--tls" if SETTINGS.tls else "--no-tls", "--json", *args])
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    return Ran(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def test_v1_a_node_with_only_the_dashboard_enrolls_the_bundled_agent_and_it_shows_online(
        bundle: Path, box: Sandbox) -> None:
    need_generation(*V1_GENERATIONS)
    need("AGENT_SECRET")
    uuid = machine_uuid(box.machine_id)
    probe = ["--probe-port", SETTINGS.probe_port] if SETTINGS.probe_port else []
    try:
        ran = from_bundle(bundle, box, *probe, secrets_env={"NEZHA_AGENT_SECRET": SETTINGS.agent_secret})
        assert ran.exit_code == 0, ran.stdout + ran.stderr
        summary = json.loads(ran.stdout)
        assert (summary["outcome"], summary["uuid"]) == ("installed", uuid)
        assert "from this bundle" in ran.stderr
        row, online_at = v1_wait_online(uuid)
        started = box.agent_started()
        assert started is not None
        print(f"\nLIVE {SETTINGS.url} ({SETTINGS.generation}) from the bundle: run {ran.seconds:.2f} s, "
              f"agent v{SETTINGS.version} start -> online {online_at - started:.2f} s")
        assert [r["uuid"] for r in v1_servers() if r.get("uuid") == uuid] == [uuid]
    finally:
        box.stop_agent()
        v1_delete("server", [r["id"] for r in v1_servers() if r.get("uuid") == uuid])


def test_v0_a_node_with_only_the_dashboard_registers_and_the_bundled_agent_shows_online(
        bundle: Path, box: Sandbox) -> None:
    need_generation("v0")
    need("TOKEN")
    if not SETTINGS.v0_session:
        pytest.skip("set NEZHA_LIVE_V0_SESSION: v0 deletes servers only with a login's session cookie")
    name = unique("v0-bundle")
    try:
        ran = from_bundle(bundle, box, "--name", name, "--probe-port", SETTINGS.probe_port or "5555",
                          "--agent-flag", "--disable-auto-update", secrets_env={"NEZHA_TOKEN": SETTINGS.token})
        assert ran.exit_code == 0, ran.stdout + ran.stderr
        summary = json.loads(ran.stdout)
        assert (summary["outcome"], summary["method"]) == ("registered_and_installed", "direct")
        assert "from this bundle" in ran.stderr
        row, online_at = v0_wait_online(name)
        started = box.agent_started()
        assert started is not None
        print(f"\nLIVE {SETTINGS.url} (v0) from the bundle: run {ran.seconds:.2f} s, "
              f"agent v{SETTINGS.version} start -> online {online_at - started:.2f} s")
        assert row["host"]["Version"] == SETTINGS.version
    finally:
        box.stop_agent()
        for row in v0_servers():
            if row["name"] == name:
                v0_delete(int(row["id"]))
