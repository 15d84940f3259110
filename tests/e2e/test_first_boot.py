"""A real first boot: Debian bookworm under systemd-nspawn, in a netns that holds only the fake dashboard.

1. cloud-init path: the rendered full user-data installs the tool from a wheel and runs the unit;
2. the second boot of that node makes no request at all;
3. golden-image path: `install-service` and `seal` in the image, then two clones register once each;
   and a clone of it whose settings come from the minimal user-data registers as well;
4. the dashboard is down for the first 20 s of the first boot, and the unit still succeeds alone;
5. a v2 dashboard: the rendered user-data enrolls the node's agent under the uuid of its machine-id,
   a reboot makes no server, and two clones of the node, sealed, enroll two servers with two uuids;
6. the zipapp user-data, and 7. the offline bundle's, in a netns with only the dashboard and its host.
The seconds from boot start to the registration request (v2: the agent's enrollment) are printed for
each first boot.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nezha_bootstrap.agent import ARCHES
from nezha_bootstrap.identity import machine_uuid
from tests.conftest import IN_CI

from .harness import (
    FILES_URL,
    GUEST_WHEELHOUSE,
    SERVICE,
    BootRecord,
    Clone,
    FileServer,
    Guest,
    Lab,
    Wheelhouse,
    add_wheelhouse,
    agent_settings,
    base_rootfs,
    booted,
    build_wheelhouse,
    build_zipapp,
    holders,
    missing_requirements,
    mode_of,
    remove_tree,
    run_in_image,
    seed_nocloud,
    serve_files,
    set_identity,
    state_file,
    stub_calls,
    tool_settings,
    wait_for,
    work_dir,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOKEN = secrets.token_hex(16)  # 32 characters like a real v0 token, unique to this run for the leak scans
NODE_NAME = "node-{machine_id}"
DOWN_FOR = 20.0
GUEST_TOOL = "/opt/nezha-bootstrap/bin/nezha-bootstrap"
SETTINGS_FILE = "/etc/nezha-bootstrap/env"
GUEST_WHEELHOUSE_OPTIONS = ("--no-index", f"--find-links={GUEST_WHEELHOUSE}")  # the guest has no route out
PIP_OFFLINE = tuple(f"--pip-option={option}" for option in GUEST_WHEELHOUSE_OPTIONS)


def settings_env() -> dict[str, str]:
    """The settings every scenario gives the tool: the lab's fake, its stub installer, a name per machine."""
    return tool_settings(TOKEN, NODE_NAME=NODE_NAME)


# --- the host, the cached rootfs, the wheelhouse ----------------------------------------------

@pytest.fixture(scope="module")
def host() -> None:
    """Skip (outside CI) or fail (in CI: these tests must run) when the host cannot boot a guest."""
    missing = missing_requirements()
    if missing:
        reason = "the first-boot test needs root, debootstrap, systemd-nspawn and ip netns: " + "; ".join(missing)
        if IN_CI:
            pytest.fail(reason + " (CI is set, so this is a failure, not a skip)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def base(host: None) -> Path:
    return base_rootfs()


@pytest.fixture(scope="module")
def wheelhouse(host: None) -> Iterator[Wheelhouse]:
    directory = work_dir("wheelhouse")
    try:
        yield build_wheelhouse(directory / "wheels")
    finally:
        remove_tree(directory)


def render(*args: str, settings: dict[str, str] | None = None) -> str:
    """`nezha-bootstrap render ...` as a user runs it on their workstation, settings from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEZHA_")}
    done = subprocess.run([sys.executable, "-m", "nezha_bootstrap", "render", *args], capture_output=True,
                          text=True, timeout=60, env={**env, **(settings or settings_env())},
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout


# --- leak scans -------------------------------------------------------------------------------

def token_holders(record: BootRecord, root: Path) -> list[str]:
    """Places outside the settings file and cloud-init's own copy of the user-data that hold the token."""
    texts = {"journal": record.journal, "console": record.console}
    return holders(TOKEN, texts, root, ["/var/log", "/var/lib/nezha-stub", "/opt/nezha"])


def secret_holders(record: BootRecord, root: Path, secret: str) -> list[str]:
    """Places that hold the node secret; the state file, the agent unit and the stub's argv record may."""
    texts = {"journal": record.journal, "console": record.console}
    return holders(secret, texts, root, ["/var/log"])


def report_timing(capsys: pytest.CaptureFixture[str], label: str, record: BootRecord) -> None:
    seconds = record.seconds_to_registration()
    line = f"{label}: registration request {seconds:.1f} s after boot start" if seconds is not None \
        else f"{label}: no registration request"
    with capsys.disabled():
        print(f"\n[first-boot] {line}")


def read_state(root: Path) -> dict[str, object]:
    data = json.loads(state_file(root).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


# --- 1 and 2: the cloud-init path -------------------------------------------------------------

@dataclass
class CloudNode:
    lab: Lab
    clone: Clone


@pytest.fixture(scope="module")
def cloud_node(base: Path, wheelhouse: Wheelhouse) -> Iterator[CloudNode]:
    """A fresh VM seeded with the full user-data, the package spec being our wheel's file:// URL."""
    user_data = render("cloud-init", "--package", f"file://{wheelhouse.guest_wheel()}", *PIP_OFFLINE)
    lab = Lab("cloud-init", TOKEN)
    try:
        clone = lab.clone([base], "node")
        add_wheelhouse(clone.root, wheelhouse)  # stands in for the index a real VM's pip would reach
        set_identity(clone.root, "cloud-node", uuid.uuid4().hex)
        seed_nocloud(clone.root, user_data, instance_id="i-e2e-cloud-0001")
        lab.serve()
        yield CloudNode(lab, clone)
    finally:
        lab.close()


CLOUD_COMMANDS = {"cloud-init status": ["cloud-init", "status", "--long"],
                  "timed log": ["journalctl", "-b", "-u", SERVICE, "--no-pager", "-o", "short-unix"]}


def unit_started(record: BootRecord) -> float | None:
    """Seconds from the boot's start to systemd starting nezha-bootstrap.service (the fetch is its first step)."""
    for line in record.outputs.get("timed log", "").splitlines():
        stamp, _, text = line.partition(" ")
        if "Starting nezha-bootstrap.service" in text:
            return float(stamp) - record.started_at
    return None


def timeline(record: BootRecord) -> list[str]:
    """The unit's log with seconds since the boot's start (where the time to registration goes)."""
    lines = []
    for line in record.outputs.get("timed log", "").splitlines():
        stamp, _, text = line.partition(" ")
        try:
            lines.append(f"  {float(stamp) - record.started_at:6.2f} s  {text.split(': ', 1)[-1]}")
        except ValueError:
            continue
    return lines


@pytest.fixture(scope="module")
def cloud_first_boot(cloud_node: CloudNode) -> BootRecord:
    return cloud_node.lab.boot(cloud_node.clone, "cloud-node", CLOUD_COMMANDS)


@pytest.fixture(scope="module")
def cloud_second_boot(cloud_node: CloudNode, cloud_first_boot: BootRecord) -> BootRecord:
    return cloud_node.lab.boot(cloud_node.clone, "cloud-node", CLOUD_COMMANDS)


def test_cloud_init_first_boot_registers_once_and_installs_the_agent(
        cloud_node: CloudNode, cloud_first_boot: BootRecord, capsys: pytest.CaptureFixture[str]) -> None:
    root, boot = cloud_node.clone.root, cloud_first_boot
    report_timing(capsys, "cloud-init first boot", boot)
    assert boot.system_state == "running", boot.failed
    assert "status: done" in boot.outputs["cloud-init status"], boot.outputs["cloud-init status"]
    assert [r.sent_name() for r in boot.registrations()] == [f"node-{boot.machine_id[:8]}"], boot.service_log
    state = read_state(root)
    assert mode_of(state_file(root)) == 0o600
    assert mode_of(root / SETTINGS_FILE.lstrip("/")) == 0o600
    [call] = stub_calls(root)
    assert (call.argv, call.cwd, call.stdin) == (
        ["install_agent", "127.0.0.1", "5555", state["secret"], "--tls"], "/opt/nezha/agent", "/dev/null")
    assert "NEZHA_TOKEN" not in call.env
    assert (boot.service["ActiveState"], boot.service["Result"], boot.service["UnitFileState"]) == (
        "active", "success", "enabled")
    assert (boot.agent["ActiveState"], boot.agent["UnitFileState"]) == ("active", "enabled")


def test_cloud_init_first_boot_leaks_neither_token_nor_secret(
        cloud_node: CloudNode, cloud_first_boot: BootRecord) -> None:
    root = cloud_node.clone.root
    output_log = (root / "var/log/cloud-init-output.log").read_text(errors="replace")
    assert "nezha-bootstrap" in output_log  # the log exists and covers the tool's install: the scan means something
    assert token_holders(cloud_first_boot, root) == []
    assert secret_holders(cloud_first_boot, root, str(read_state(root)["secret"])) == []


def test_second_boot_makes_no_request_at_all(cloud_node: CloudNode, cloud_second_boot: BootRecord) -> None:
    boot = cloud_second_boot
    assert boot.system_state == "running", boot.failed
    assert boot.requests == []
    assert (boot.service["ActiveState"], boot.service["Result"]) == ("active", "success"), boot.service_log
    assert len(stub_calls(cloud_node.clone.root)) == 1
    assert boot.agent["ActiveState"] == "active"


# --- 3: the golden-image path -----------------------------------------------------------------

@dataclass(frozen=True)
class Golden:
    layers: tuple[Path, ...]
    machine_id: str
    dbus_machine_id_exists: bool
    state_exists: bool
    settings_mode: int
    unit_enabled: bool


def build_golden(image: Clone, wheelhouse: Wheelhouse) -> None:
    """What an image builder does in the image: install the tool, `install-service`, then `seal`."""
    add_wheelhouse(image.root, wheelhouse)
    run_in_image(image.root, ["python3", "-m", "venv", "/opt/nezha-bootstrap"])
    run_in_image(image.root, ["/opt/nezha-bootstrap/bin/pip", "install", "-q", *GUEST_WHEELHOUSE_OPTIONS,
                              "nezha-bootstrap"])
    env = {k: v for k, v in settings_env().items() if k != "NEZHA_TOKEN"}
    run_in_image(image.root, [GUEST_TOOL, "install-service", "--token-file", "-"], env=env, input=TOKEN + "\n")
    run_in_image(image.root, [GUEST_TOOL, "seal"])


@pytest.fixture(scope="module")
def golden(base: Path, wheelhouse: Wheelhouse) -> Iterator[Golden]:
    image = Clone([base], work_dir("golden"))
    try:
        build_golden(image, wheelhouse)
        root = image.root
        machine_id = (root / "etc/machine-id").read_text()
        dbus_machine_id_exists = (root / "var/lib/dbus/machine-id").exists()
        state_exists = state_file(root).exists()
        settings_mode = mode_of(root / SETTINGS_FILE.lstrip("/"))
        wants = root / "etc/systemd/system/multi-user.target.wants/nezha-bootstrap.service"
        unit_enabled = wants.is_symlink() and (root / "etc/systemd/system/nezha-bootstrap.service").is_file()
        yield Golden(image.frozen(), machine_id, dbus_machine_id_exists, state_exists, settings_mode, unit_enabled)
    finally:
        image.close()


@dataclass
class ClonePair:
    lab: Lab
    clones: tuple[Clone, Clone]
    boots: tuple[BootRecord, BootRecord]


@pytest.fixture(scope="module")
def golden_clones(golden: Golden) -> Iterator[ClonePair]:
    lab = Lab("golden-clones", TOKEN)
    try:
        lab.serve()
        clones = (lab.clone(golden.layers, "clone-a"), lab.clone(golden.layers, "clone-b"))
        for clone, name in zip(clones, ("clone-a", "clone-b")):
            set_identity(clone.root, name, None)  # the machine-id stays as `seal` left it
        boots = (lab.boot(clones[0], "clone-a"), lab.boot(clones[1], "clone-b"))
        yield ClonePair(lab, clones, boots)
    finally:
        lab.close()


def test_seal_leaves_an_image_without_identity_but_with_the_enabled_unit(golden: Golden) -> None:
    assert (golden.machine_id, golden.dbus_machine_id_exists, golden.state_exists) == ("", False, False)
    assert (golden.settings_mode, golden.unit_enabled) == (0o600, True)


def test_golden_image_clones_register_once_each_under_their_own_name(
        golden_clones: ClonePair, capsys: pytest.CaptureFixture[str]) -> None:
    (a, b), roots = golden_clones.boots, [c.root for c in golden_clones.clones]
    for label, boot in (("golden clone a", a), ("golden clone b", b)):
        report_timing(capsys, label, boot)
    assert re.fullmatch("[0-9a-f]{32}", a.machine_id) and re.fullmatch("[0-9a-f]{32}", b.machine_id)
    assert a.machine_id != b.machine_id
    assert [r.sent_name() for r in a.registrations()] == [f"node-{a.machine_id[:8]}"], a.service_log
    assert [r.sent_name() for r in b.registrations()] == [f"node-{b.machine_id[:8]}"], b.service_log
    states = [read_state(root) for root in roots]
    assert [s["machine_id"] for s in states] == [a.machine_id, b.machine_id]
    assert states[0]["secret"] != states[1]["secret"]
    for root, state, boot in zip(roots, states, (a, b)):
        assert boot.system_state == "running", boot.failed
        assert [call.argv[3] for call in stub_calls(root)] == [state["secret"]]
        assert (boot.service["ActiveState"], boot.service["Result"]) == ("active", "success"), boot.service_log
        assert boot.agent["ActiveState"] == "active"
        assert token_holders(boot, root) == []


def test_a_clone_keeps_its_machine_id_and_makes_no_request_on_its_second_boot(golden_clones: ClonePair) -> None:
    first = golden_clones.boots[0]
    again = golden_clones.lab.boot(golden_clones.clones[0], "clone-a")
    assert again.machine_id == first.machine_id
    assert again.requests == []
    assert (again.service["ActiveState"], again.service["Result"]) == ("active", "success"), again.service_log


def test_minimal_user_data_gives_an_image_with_the_tool_its_settings_and_it_registers(
        golden: Golden, capsys: pytest.CaptureFixture[str]) -> None:
    user_data = render("cloud-init-minimal")
    lab = Lab("minimal", TOKEN)
    try:
        clone = lab.clone(golden.layers, "minimal")
        set_identity(clone.root, "minimal", None)
        (clone.root / SETTINGS_FILE.lstrip("/")).unlink()  # an image built with the tool and the unit only
        seed_nocloud(clone.root, user_data, instance_id="i-e2e-minimal-0001")
        lab.serve()
        boot = lab.boot(clone, "minimal", CLOUD_COMMANDS)
        report_timing(capsys, "cloud-init-minimal first boot", boot)
        assert boot.system_state == "running", boot.failed
        assert "status: done" in boot.outputs["cloud-init status"], boot.outputs["cloud-init status"]
        assert [r.sent_name() for r in boot.registrations()] == [f"node-{boot.machine_id[:8]}"], boot.service_log
        assert (boot.service["ActiveState"], boot.service["Result"]) == ("active", "success"), boot.service_log
        assert mode_of(clone.root / SETTINGS_FILE.lstrip("/")) == 0o600
        assert [call.argv[3] for call in stub_calls(clone.root)] == [read_state(clone.root)["secret"]]
        assert token_holders(boot, clone.root) == []
    finally:
        lab.close()


# --- 4: the dashboard is down at first boot ---------------------------------------------------

def test_unit_succeeds_alone_when_the_dashboard_comes_up_20_s_after_boot(
        golden: Golden, capsys: pytest.CaptureFixture[str]) -> None:
    lab = Lab("dashboard-down", TOKEN)
    try:
        clone = lab.clone(golden.layers, "late")
        set_identity(clone.root, "late", None)
        lab.serve(down_for=DOWN_FOR)
        boot = lab.boot(clone, "late")
    finally:
        lab.close()
    report_timing(capsys, f"dashboard down for {DOWN_FOR:g} s", boot)
    assert boot.system_state == "running", boot.failed
    assert (boot.service["ActiveState"], boot.service["Result"]) == ("active", "success"), boot.service_log
    assert len(boot.registrations()) == 1
    assert "retrying" in boot.service_log or int(boot.service["NRestarts"]) > 0, boot.service_log
    seconds = boot.seconds_to_registration()
    assert seconds is not None and seconds >= DOWN_FOR - 1


# --- 5: a v2 dashboard: the agent enrolls itself under the machine's uuid -----------------------------

AGENT_SECRET = secrets.token_hex(16)  # 32 letters and digits, like a real agent secret; unique to this run
AGENT_CONFIG = "/opt/nezha/agent/config.yml"


@dataclass
class V2Node:
    lab: Lab
    clone: Clone


@pytest.fixture(scope="module")
def v2_node(base: Path, wheelhouse: Wheelhouse) -> Iterator[V2Node]:
    """A fresh VM seeded with the full user-data for a v2 dashboard (agent secret, the lab's release host)."""
    user_data = render("cloud-init", "--package", f"file://{wheelhouse.guest_wheel()}", *PIP_OFFLINE,
                       settings=agent_settings(AGENT_SECRET))
    lab = Lab("v2", AGENT_SECRET)
    try:
        clone = lab.clone([base], "v2-node")
        add_wheelhouse(clone.root, wheelhouse)
        set_identity(clone.root, "v2-node", uuid.uuid4().hex)
        seed_nocloud(clone.root, user_data, instance_id="i-e2e-v2-0001")
        lab.serve_v1()
        yield V2Node(lab, clone)
    finally:
        lab.close()


@pytest.fixture(scope="module")
def v2_first_boot(v2_node: V2Node) -> BootRecord:
    return v2_node.lab.boot(v2_node.clone, "v2-node", CLOUD_COMMANDS)


@pytest.fixture(scope="module")
def v2_second_boot(v2_node: V2Node, v2_first_boot: BootRecord) -> BootRecord:
    return v2_node.lab.boot(v2_node.clone, "v2-node", CLOUD_COMMANDS)


def report_enrollment(capsys: pytest.CaptureFixture[str], label: str, record: BootRecord) -> None:
    seconds = record.seconds_to_enrollment()
    line = f"{label}: agent enrolled {seconds:.1f} s after boot start" if seconds is not None \
        else f"{label}: no enrollment"
    with capsys.disabled():
        print(f"\n[first-boot] {line}")


def enrolled(record: BootRecord) -> list[tuple[str, str]]:
    return [(e.uuid, e.outcome) for e in record.enrollments]


def agent_secret_holders(record: BootRecord, root: Path) -> list[str]:
    """Places that hold the agent secret besides config.yml and the settings file (both 0600)."""
    texts = {"journal": record.journal, "console": record.console}
    found = holders(AGENT_SECRET, texts, root, ["/var/log", "/var/lib/nezha-stub", "/var/lib/nezha-bootstrap",
                                                 "/opt/nezha", "/etc/systemd"])
    return [place for place in found if place != AGENT_CONFIG]


def test_v2_first_boot_enrolls_one_server_under_the_machine_uuid(
        v2_node: V2Node, v2_first_boot: BootRecord, capsys: pytest.CaptureFixture[str]) -> None:
    root, boot = v2_node.clone.root, v2_first_boot
    report_enrollment(capsys, "v2 cloud-init first boot", boot)
    assert boot.system_state == "running", boot.failed
    assert "status: done" in boot.outputs["cloud-init status"], boot.outputs["cloud-init status"]
    node_uuid = machine_uuid(boot.machine_id)
    assert enrolled(boot) == [(node_uuid, "created")], boot.service_log
    assert [r.path for r in boot.tool_requests()][:3] == ["/api/v1/setting", "/api/v1/server/register",
                                                          "/api/v1/api-tokens"]  # generation probes first
    state = read_state(root)
    assert (state["generation"], state["uuid"], state["machine_id"], state["secret"]) == (
        "v2.1+", node_uuid, boot.machine_id, "")
    config = root / AGENT_CONFIG.lstrip("/")
    assert mode_of(config) == 0o600 and f'uuid: "{node_uuid}"' in config.read_text().splitlines()
    assert (boot.service["ActiveState"], boot.service["Result"]) == ("active", "success"), boot.service_log
    assert (boot.agent["ActiveState"], boot.agent["UnitFileState"]) == ("active", "enabled")
    assert agent_secret_holders(boot, root) == []


def test_v2_reboot_makes_no_server_and_no_request_of_the_tool(v2_node: V2Node, v2_second_boot: BootRecord) -> None:
    boot = v2_second_boot
    assert boot.system_state == "running", boot.failed
    assert boot.tool_requests() == []
    assert enrolled(boot) == [(machine_uuid(boot.machine_id), "known")]  # the agent reconnects: the same server
    assert (boot.service["ActiveState"], boot.service["Result"]) == ("active", "success"), boot.service_log
    assert boot.agent["ActiveState"] == "active"


@dataclass
class V2Clones:
    lab: Lab
    node_uuid: str
    clones: tuple[Clone, Clone]
    boots: tuple[BootRecord, BootRecord]


@pytest.fixture(scope="module")
def v2_clones(v2_node: V2Node, v2_first_boot: BootRecord, v2_second_boot: BootRecord) -> V2Clones:
    """The node sealed as its admin does before capturing it, then two clones of it booted."""
    lab, node = v2_node.lab, v2_node.clone
    with booted(node.root, lab.netns, "v2-node", lab.directory / "console-seal.log") as guest:
        guest.wait_settled(SERVICE)
        guest.run([GUEST_TOOL, "seal"])
    layers = node.frozen()
    clones = (lab.clone(layers, "v2-clone-a"), lab.clone(layers, "v2-clone-b"))
    for clone, name in zip(clones, ("v2-clone-a", "v2-clone-b")):
        set_identity(clone.root, name, None)  # the machine-id stays as `seal` left it: empty
    boots = (lab.boot(clones[0], "v2-clone-a"), lab.boot(clones[1], "v2-clone-b"))
    return V2Clones(lab, machine_uuid(v2_first_boot.machine_id), clones, boots)


def test_v2_sealed_clones_enroll_two_servers_under_their_own_uuids(
        v2_clones: V2Clones, capsys: pytest.CaptureFixture[str]) -> None:
    (a, b), roots = v2_clones.boots, [clone.root for clone in v2_clones.clones]
    for label, boot in (("v2 sealed clone a", a), ("v2 sealed clone b", b)):
        report_enrollment(capsys, label, boot)
    assert re.fullmatch("[0-9a-f]{32}", a.machine_id) and re.fullmatch("[0-9a-f]{32}", b.machine_id)
    uuids = [machine_uuid(a.machine_id), machine_uuid(b.machine_id)]
    assert len({*uuids, v2_clones.node_uuid}) == 3
    for root, boot, clone_uuid in zip(roots, (a, b), uuids):
        assert boot.system_state == "running", boot.failed
        assert enrolled(boot) == [(clone_uuid, "created")], boot.service_log
        assert read_state(root)["uuid"] == clone_uuid
        assert f'uuid: "{clone_uuid}"' in (root / AGENT_CONFIG.lstrip("/")).read_text().splitlines()
        assert (boot.service["ActiveState"], boot.service["Result"]) == ("active", "success"), boot.service_log
        assert boot.agent["ActiveState"] == "active"
        assert agent_secret_holders(boot, root) == []


def test_v2_a_clones_reboot_makes_no_server_and_the_dashboard_has_one_per_machine(v2_clones: V2Clones) -> None:
    again = v2_clones.lab.boot(v2_clones.clones[0], "v2-clone-a")

    assert again.tool_requests() == []
    assert enrolled(again) == [(machine_uuid(again.machine_id), "known")]
    assert (again.service["ActiveState"], again.service["Result"]) == ("active", "success"), again.service_log
    created = [e.uuid for e in v2_clones.lab.fake.enrollments() if e.outcome == "created"]
    assert sorted(created) == sorted({v2_clones.node_uuid, *(machine_uuid(b.machine_id) for b in v2_clones.boots)})


# --- 6: the zipapp user-data: one checked file, no venv, no pip, no apt ----------------------------

@dataclass
class PyzNode:
    lab: Lab
    clone: Clone
    files: FileServer
    pyz: Path


@pytest.fixture(scope="module")
def dist(host: None) -> Iterator[Path]:
    """packaging/build's output, served to the guests by a FileServer."""
    directory = work_dir("dist")
    try:
        build_zipapp(directory / "dist")
        yield directory / "dist"
    finally:
        remove_tree(directory)


def pyz_user_data(pyz: Path, **fetch_bounds: float) -> str:
    """The zipapp user-data as an operator renders it (the hash taken from the local file); `fetch_bounds`
    (attempts, deadline) shorten the fetcher's retries for a test that wants it to give up quickly."""
    text = render("cloud-init", "--pyz-url", f"{FILES_URL}/{pyz.name}", "--pyz", str(pyz))
    extra = "".join(f'\\"{key}\\": {value:g}, ' for key, value in fetch_bounds.items())
    return text.replace('\\"sha256\\": ', extra + '\\"sha256\\": ', 1)


def pyz_of(dist: Path) -> Path:
    [pyz] = dist.glob(f"nezha-bootstrap-*-{os.uname().machine}.pyz")
    return pyz


@pytest.fixture(scope="module")
def pyz_node(base: Path, dist: Path) -> Iterator[PyzNode]:
    """A fresh VM seeded with the zipapp user-data; the zipapp is served on the loopback of its netns."""
    pyz = pyz_of(dist)
    lab = Lab("zipapp", TOKEN)
    try:
        clone = lab.clone([base], "pyz-node")
        set_identity(clone.root, "pyz-node", uuid.uuid4().hex)
        seed_nocloud(clone.root, pyz_user_data(pyz), instance_id="i-e2e-pyz-0001")
        lab.serve()
        yield PyzNode(lab, clone, serve_files(lab, dist), pyz)
    finally:
        lab.close()


@pytest.fixture(scope="module")
def pyz_first_boot(pyz_node: PyzNode) -> BootRecord:
    return pyz_node.lab.boot(pyz_node.clone, "pyz-node", CLOUD_COMMANDS)


@pytest.fixture(scope="module")
def pyz_second_boot(pyz_node: PyzNode, pyz_first_boot: BootRecord) -> BootRecord:
    return pyz_node.lab.boot(pyz_node.clone, "pyz-node", CLOUD_COMMANDS)


GUEST_PYZ = "/opt/nezha-bootstrap/nezha-bootstrap.pyz"


def test_zipapp_first_boot_fetches_the_checked_file_and_registers_once(
        pyz_node: PyzNode, pyz_first_boot: BootRecord, capsys: pytest.CaptureFixture[str]) -> None:
    root, boot = pyz_node.clone.root, pyz_first_boot
    report_timing(capsys, "zipapp cloud-init first boot", boot)
    assert boot.system_state == "running", boot.failed
    assert "status: done" in boot.outputs["cloud-init status"], boot.outputs["cloud-init status"]
    assert pyz_node.files.requests() == [f"GET /{pyz_node.pyz.name} HTTP/1.1"]
    assert "nezha-bootstrap-start.service" in boot.journal, "bootcmd's transient unit started it, not runcmd"
    installed = root / GUEST_PYZ.lstrip("/")
    assert installed.read_bytes() == pyz_node.pyz.read_bytes() and mode_of(installed) == 0o755
    assert not (root / "opt/nezha-bootstrap/bin/python").exists(), "no venv"
    assert [r.sent_name() for r in boot.registrations()] == [f"node-{boot.machine_id[:8]}"], boot.service_log
    state = read_state(root)
    assert [call.argv[3] for call in stub_calls(root)] == [state["secret"]]
    assert (boot.service["ActiveState"], boot.service["Result"], boot.service["UnitFileState"]) == (
        "active", "success", "enabled")
    assert boot.agent["ActiveState"] == "active"
    cache = root / "var/cache/nezha-bootstrap"
    assert mode_of(cache) == 0o700 and [p.name for p in cache.iterdir()] == [
        hashlib.sha256(pyz_node.pyz.read_bytes()).hexdigest()]
    output_log = (root / "var/log/cloud-init-output.log").read_text(errors="replace")
    assert re.search(r"\b(pip|venv|apt-get)\b", output_log) is None, output_log
    assert token_holders(boot, root) == [] and holders(TOKEN, {}, root, ["/var/cache/nezha-bootstrap"]) == []


def test_zipapp_second_boot_makes_no_request_and_fetches_nothing(pyz_node: PyzNode,
                                                                 pyz_second_boot: BootRecord) -> None:
    boot = pyz_second_boot
    assert boot.system_state == "running", boot.failed
    assert boot.requests == []
    assert len(pyz_node.files.requests()) == 1, "the file in place has the pinned hash: no second download"
    assert "nezha-bootstrap-start.service" not in boot.journal, "bootcmd's start runs once per instance"
    assert (boot.service["ActiveState"], boot.service["Result"]) == ("active", "success"), boot.service_log
    assert boot.agent["ActiveState"] == "active"


def test_zipapp_first_boot_registers_sooner_than_the_pip_user_data(
        pyz_first_boot: BootRecord, cloud_first_boot: BootRecord, capsys: pytest.CaptureFixture[str]) -> None:
    """Both from this run: the seconds from the boot's start to the registration request."""
    pyz, pip = pyz_first_boot.seconds_to_registration(), cloud_first_boot.seconds_to_registration()
    with capsys.disabled():
        print(f"\n[first-boot] boot start -> registration request: zipapp {pyz:.2f} s, pip {pip:.2f} s")
    assert pyz is not None and pip is not None and pyz < pip


# --- 7: the offline bundle: the netns holds only the dashboard and the bundle's host ----------------

# Each stub agent zip is padded to the size of a real one (the locally built v0.20.5 zip: 14.9 MB; the
# vendor's are smaller), so the first start extracts as much as with the real agents.
AGENT_ZIP_BYTES = 15 << 20


@dataclass
class BundleNode:
    lab: Lab
    clone: Clone
    files: FileServer
    bundle: Path


def padded_release(directory: Path, version: str, arch: str) -> None:
    """v<version>/nezha-agent_linux_<arch>.zip: the stub agent and incompressible padding, with checksums.txt."""
    import io
    import random
    import zipfile

    from nezha_bootstrap.testing.fake_v1 import stub_agent

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("nezha-agent", date_time=(2026, 8, 1, 0, 0, 0))
        info.external_attr = 0o100755 << 16
        archive.writestr(info, stub_agent(version), zipfile.ZIP_DEFLATED)
        archive.writestr("padding", random.Random(version).randbytes(AGENT_ZIP_BYTES), zipfile.ZIP_STORED)
    target = directory / f"v{version}"
    target.mkdir(parents=True)
    asset = f"nezha-agent_linux_{arch}.zip"
    (target / asset).write_bytes(buffer.getvalue())
    (target / "checksums.txt").write_text(f"{hashlib.sha256(buffer.getvalue()).hexdigest()}  {asset}\n")


@pytest.fixture(scope="module")
def bundle_pyz(dist: Path) -> Path:
    """`nezha-bootstrap bundle`, run from the host's zipapp, over padded stub agents of both generations."""
    from nezha_bootstrap.agent import AGENT_V0, AGENT_V1

    work = dist.parent / "bundle"
    for version in (AGENT_V0, AGENT_V1):
        padded_release(work / "agents", version, ARCHES[os.uname().machine])
    output = work / "served" / "nezha-bootstrap-bundle.pyz"
    done = subprocess.run([sys.executable, "-I", str(pyz_of(dist)), "bundle", "--agent-dir", str(work / "agents"),
                           "--output", str(output)], capture_output=True, text=True, timeout=120,
                          env={"PATH": os.environ["PATH"], "NEZHA_BOOTSTRAP_CACHE": str(work / "cache")})
    assert done.returncode == 0, done.stderr
    return output


@pytest.fixture(scope="module")
def bundle_node(base: Path, bundle_pyz: Path) -> Iterator[BundleNode]:
    """A fresh VM seeded with the bundle's user-data. Its netns holds the fake v0 dashboard and the bundle's
    file server, nothing else: the release host (GitHub, the default --agent-base-url) cannot be reached."""
    lab = Lab("bundle", TOKEN)
    try:
        clone = lab.clone([base], "bundle-node")
        set_identity(clone.root, "bundle-node", uuid.uuid4().hex)
        seed_nocloud(clone.root, pyz_user_data(bundle_pyz), instance_id="i-e2e-bundle-0001")
        lab.serve()
        yield BundleNode(lab, clone, serve_files(lab, bundle_pyz.parent), bundle_pyz)
    finally:
        lab.close()


@pytest.fixture(scope="module")
def bundle_first_boot(bundle_node: BundleNode) -> BootRecord:
    return bundle_node.lab.boot(bundle_node.clone, "bundle-node", CLOUD_COMMANDS)


def test_a_bundle_node_reaching_only_the_dashboard_registers_and_installs_the_agent_it_carries(
        bundle_node: BundleNode, bundle_first_boot: BootRecord, capsys: pytest.CaptureFixture[str]) -> None:
    root, boot = bundle_node.clone.root, bundle_first_boot
    report_timing(capsys, "bundle cloud-init first boot", boot)
    assert boot.system_state == "running", boot.failed
    assert bundle_node.files.requests() == [f"GET /{bundle_node.bundle.name} HTTP/1.1"]
    assert [r.sent_name() for r in boot.registrations()] == [f"node-{boot.machine_id[:8]}"], boot.service_log
    assert "/install.sh" not in [r.path for r in boot.tool_requests()]
    asset = f"nezha-agent_linux_{ARCHES[os.uname().machine]}.zip"
    assert f"taking nezha-agent v0.20.5 ({asset}) from this bundle" in boot.service_log
    state = read_state(root)
    assert (state["method"], state["agent_version"]) == ("direct", "0.20.5")
    unit = (root / "etc/systemd/system/nezha-agent.service").read_text()
    assert f'"-p" "{state["secret"]}"' in unit
    assert (boot.service["ActiveState"], boot.service["Result"]) == ("active", "success"), boot.service_log
    assert boot.agent["ActiveState"] == "active"
    assert token_holders(boot, root) == []


def test_a_bundle_registers_about_as_soon_as_the_plain_zipapp(
        bundle_node: BundleNode, bundle_first_boot: BootRecord, pyz_first_boot: BootRecord,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Both from this run: boot start -> registration request, and the part of it that is ours: from systemd
    starting the unit (its first step fetches the file) to the request. The boots before the unit starts vary
    by a second or more between two guests; the bundle's own cost is its ~30 MB more to fetch and hash."""
    bundled, plain = bundle_first_boot.seconds_to_registration(), pyz_first_boot.seconds_to_registration()
    starts = unit_started(bundle_first_boot), unit_started(pyz_first_boot)
    assert bundled is not None and plain is not None and starts[0] is not None and starts[1] is not None
    ours = bundled - starts[0], plain - starts[1]
    with capsys.disabled():
        print(f"\n[first-boot] boot start -> registration request: bundle {bundled:.2f} s "
              f"({bundle_node.bundle.stat().st_size:,} bytes), plain zipapp {plain:.2f} s; unit start -> "
              f"registration request: bundle {ours[0]:.2f} s, plain zipapp {ours[1]:.2f} s")
        for label, record in (("bundle", bundle_first_boot), ("plain zipapp", pyz_first_boot)):
            print(f"[first-boot] {label}: the unit's log, seconds after boot start\n" + "\n".join(timeline(record)))
    # The target is 0.5 s. Three runs on a shared 2-core host gave +0.70, -0.39 and +1.51 s (the unit's log shows
    # the spread in steps the bundle does not change, e.g. python's start), so this bounds only a gross regression;
    # the agent zips being extracted at the first start again (+0.9 s) is caught by test_packaging's cache check.
    assert ours[0] - ours[1] < 2.5


FILES_DOWN_FOR = 15.0


def test_a_zipapp_fetch_that_fails_at_first_heals_without_a_person(base: Path, dist: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The file server is down for the first 15 s: the fetcher gives up (2 attempts within 5 s), the unit
    fails and Restart=on-failure runs it again 60 s later, when the download succeeds."""
    pyz = pyz_of(dist)
    lab = Lab("zipapp-heals", TOKEN)
    try:
        clone = lab.clone([base], "pyz-late")
        set_identity(clone.root, "pyz-late", uuid.uuid4().hex)
        seed_nocloud(clone.root, pyz_user_data(pyz, attempts=2, deadline=5), instance_id="i-e2e-pyz-0002")
        fake = lab.serve()
        files = serve_files(lab, dist, down_for=FILES_DOWN_FOR)
        with booted(clone.root, lab.netns, "pyz-late", lab.directory / "console-heal.log") as guest:
            service = wait_active(guest, SERVICE)
            log = guest.run(["journalctl", "-b", "-u", SERVICE, "--no-pager", "-o", "cat"]).stdout
            started = guest.started_at
        registrations = [r for r in fake.requests(since=started) if r.is_registration]
        served = files.requests()
    finally:
        lab.close()
    seconds = f"{registrations[0].time - started:.1f} s" if registrations else "none"
    with capsys.disabled():
        print(f"\n[first-boot] zipapp fetch down for {FILES_DOWN_FOR:g} s: registration request {seconds} "
              f"after boot start, {service['NRestarts']} restart(s)")
    assert "gave up on" in log and "installed /opt/nezha-bootstrap/nezha-bootstrap.pyz" in log, log
    assert int(service["NRestarts"]) >= 1
    assert (service["ActiveState"], service["Result"]) == ("active", "success"), log
    assert len(registrations) == 1 and served == [f"GET /{pyz.name} HTTP/1.1"]


def wait_active(guest: Guest, name: str, timeout: float = 240.0) -> dict[str, str]:
    """Wait until `name` is active, through any failed starts and restarts on the way."""
    def active() -> dict[str, str] | None:
        props = guest.unit(name)
        return props if props["ActiveState"] == "active" else None
    return wait_for(f"{name} to become active", active, timeout, interval=0.5)


def test_an_image_built_from_outside_with_the_zipapp_registers_its_clone(base: Path, dist: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`install-service --root IMAGE --pyz FILE` and `seal --root IMAGE`, run by the zipapp on the build host:
    the image names none of the host's paths, and a clone of it registers at its first boot."""
    pyz = pyz_of(dist)
    image = Clone([base], work_dir("golden-pyz"))
    lab = Lab("golden-pyz", TOKEN)
    try:
        env = {**{k: v for k, v in settings_env().items() if k != "NEZHA_TOKEN"}, "PATH": os.environ["PATH"],
               "NEZHA_BOOTSTRAP_CACHE": str(lab.directory / "host-cache")}
        for args in (["install-service", "--pyz", str(pyz), "--token-file", "-"], ["seal"]):
            done = subprocess.run([sys.executable, "-I", str(pyz), *args, "--root", str(image.root)], input=TOKEN,
                                  capture_output=True, text=True, timeout=120, env=env)
            assert done.returncode == 0, done.stderr
        tool_files = [p for p in (image.root / "opt/nezha-bootstrap").rglob("*") if p.is_file()]
        assert sorted(p.name for p in tool_files) == ["nezha-bootstrap", "nezha-bootstrap.pyz"]
        assert [p for p in tool_files if str(image.root).encode() in p.read_bytes()] == []
        lab.serve()
        clone = lab.clone(image.frozen(), "pyz-golden")
        set_identity(clone.root, "pyz-golden", None)  # the machine-id stays as `seal` left it: empty
        boot = lab.boot(clone, "pyz-golden")
    finally:
        lab.close()
        image.close()
    report_timing(capsys, "zipapp golden image clone", boot)
    assert boot.system_state == "running", boot.failed
    assert [r.sent_name() for r in boot.registrations()] == [f"node-{boot.machine_id[:8]}"], boot.service_log
    assert (boot.service["ActiveState"], boot.service["Result"]) == ("active", "success"), boot.service_log
    assert boot.agent["ActiveState"] == "active"


# --- an image captured without `seal` (issue 11): two clones, each its own server ----------------

def test_two_unsealed_clones_say_so_and_register_as_their_own_servers(base: Path, wheelhouse: Wheelhouse) -> None:
    """An image that registered at its own first boot is captured without `seal` (machine-id and state
    kept) and booted twice as new cloud-init instances: each clone warns and registers once."""
    lab = Lab("unsealed-clones", TOKEN)
    machine_id = uuid.uuid4().hex
    try:
        lab.serve()
        image = lab.clone([base], "unsealed-image")
        add_wheelhouse(image.root, wheelhouse)
        run_in_image(image.root, ["python3", "-m", "venv", "/opt/nezha-bootstrap"])
        run_in_image(image.root, ["/opt/nezha-bootstrap/bin/pip", "install", "-q", *GUEST_WHEELHOUSE_OPTIONS,
                                  "nezha-bootstrap"])
        env = {k: v for k, v in settings_env().items() if k != "NEZHA_TOKEN"}
        run_in_image(image.root, [GUEST_TOOL, "install-service", "--token-file", "-"], env=env, input=TOKEN + "\n")
        set_identity(image.root, "unsealed-image", machine_id)
        seed_nocloud(image.root, "#cloud-config\n{}\n", instance_id="i-e2e-original")
        original = lab.boot(image, "unsealed-image")
        layers = image.frozen()  # captured as it is: no `seal`
        boots, roots = [], []
        for name in ("unsealed-a", "unsealed-b"):
            clone = lab.clone(layers, name)
            set_identity(clone.root, name, None)  # the machine-id stays the image's
            seed_nocloud(clone.root, "#cloud-config\n{}\n", instance_id=f"i-e2e-{name}")
            boots.append(lab.boot(clone, name))
            roots.append(clone.root)
        states = [read_state(root) for root in roots]
    finally:
        lab.close()
    assert [r.sent_name() for r in original.registrations()] == [f"node-{machine_id[:8]}"], original.service_log
    for boot, state, name in zip(boots, states, ("unsealed-a", "unsealed-b")):
        assert boot.machine_id == machine_id  # a clone that was not sealed
        assert "THIS MACHINE IS AN UNSEALED CLONE" in boot.service_log
        assert [r.sent_name() for r in boot.registrations()] == [f"node-{machine_id[:8]}"], boot.service_log
        assert (state["instance_id"], state["machine_id"]) == (f"i-e2e-{name}", machine_id)
        assert (boot.service["ActiveState"], boot.service["Result"]) == ("active", "success"), boot.service_log
    assert len({state["secret"] for state in states}) == 2  # two servers, one per clone
