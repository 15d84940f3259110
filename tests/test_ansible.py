"""The collection nezha.bootstrap through ansible-playbook: local hosts (ansible_connection=local, each
with its own --root and the stub installer) against the fake dashboards, as an operator runs it."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import zipapp
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nezha_bootstrap.agent import AGENT_V1
from nezha_bootstrap.identity import machine_uuid
from nezha_bootstrap.testing.fake_v0 import FakeDashboard, Running
from nezha_bootstrap.testing.fake_v1 import FakeV1, serve_v1
from tests.conftest import TOKEN

REPO = Path(__file__).resolve().parent.parent
COLLECTION = REPO / "ansible_collections" / "nezha" / "bootstrap"
MACHINE_IDS = {"node1": "11111111111111111111111111111111", "node2": "22222222222222222222222222222222"}
WRONG_TOKEN = "Wr0ngWr0ngWr0ngWr0ngWr0ngWr0ng32"
PASSWORD = "pass word 1"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(sys.version_info < (3, 11), reason=(
        "the pinned ansible-core (2.19) needs Python >= 3.11 on the controller; the test extra installs it "
        "only there (the module itself runs on the host's python3 >= 3.9: see the 3.9 host test)")),
]


def ansible_playbook() -> Path:
    found = Path(sys.executable).parent / "ansible-playbook"
    if not found.exists():
        pytest.skip("ansible-playbook is not installed beside this Python (pip install -e '.[test]')")
    return found


@dataclass(frozen=True)
class Play:
    """How one ansible-playbook run ended: exit code, output, and the recap per host."""

    code: int
    output: str

    def recap(self) -> dict[str, dict[str, int]]:
        found = {}
        for host, counts in re.findall(r"^(\S+)\s+: (ok=.*)$", self.output, re.MULTILINE):
            found[host] = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counts)}
        return found

    def changed(self) -> dict[str, int]:
        return {host: counts["changed"] for host, counts in self.recap().items()}


@dataclass
class Lab:
    """Two local hosts, each a scratch root with its own machine-id, and a playbook per test."""

    tmp: Path
    hosts: dict[str, Path] = field(default_factory=dict)
    plays: list[Play] = field(default_factory=list)

    def __post_init__(self) -> None:
        for host, machine_id in MACHINE_IDS.items():
            root = self.tmp / host
            (root / "etc").mkdir(parents=True)
            (root / "etc/machine-id").write_text(machine_id + "\n")
            self.hosts[host] = root

    def inventory(self, **group_vars: Any) -> Path:
        # A scratch root runs the fakes' stubs only (--rehearsal): never a real installer or agent.
        hosts = {host: {"agent_root": str(root), "agent_name": f"web-{host}", "agent_rehearsal": True}
                 for host, root in self.hosts.items()}
        inventory = {"all": {"hosts": hosts, "vars": {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable, **group_vars}}}
        path = self.tmp / "inventory.json"
        path.write_text(json.dumps(inventory))
        return path

    def play(self, playbook: str, *args: str, **group_vars: Any) -> Play:
        path = self.tmp / "play.yml"
        path.write_text(playbook)
        env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(REPO), "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_HOST_KEY_CHECKING": "0", "ANSIBLE_LOCAL_TEMP": str(self.tmp / "ansible-local"),
               "ANSIBLE_REMOTE_TEMP": str(self.tmp / "ansible-remote"), "NEZHA_STUB_RECORD": str(self.tmp / "stub"),
               "PYTHONWARNINGS": "ignore", "NEZHA_BOOTSTRAP_CACHE": str(self.tmp / "zipapp-cache")}
        # The stub agents connect to the fake dashboard they are given (the module passes the URL as a
        # flag, where the stubs cannot see it), so that `run` sees the node online.
        dashboard = group_vars.get("agent_dashboard_url") or group_vars.get("url")
        if dashboard:
            env["NEZHA_STUB_DASHBOARD"] = str(dashboard)
        done = subprocess.run([str(ansible_playbook()), "-i", str(self.inventory(**group_vars)), str(path), *args],
                              capture_output=True, text=True, env=env, timeout=180, stdin=subprocess.DEVNULL)
        play = Play(done.returncode, done.stdout + done.stderr)
        self.plays.append(play)
        return play


ROLE_PLAY = """
- name: Nezha agents
  hosts: all
  gather_facts: false
  roles:
    - role: nezha.bootstrap.agent
"""


def thin_zipapp(dest: Path) -> Path:
    """This checkout's nezha_bootstrap as a zipapp (its dependencies come from the host's Python)."""
    source = dest.parent / "zipapp-src"
    (source / "nezha_bootstrap").mkdir(parents=True)
    for path in (REPO / "nezha_bootstrap").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            target = source / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    (source / "__main__.py").write_text("from nezha_bootstrap.cli import main\nmain()\n")
    zipapp.create_archive(source, dest)
    return dest


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return thin_zipapp(tmp_path_factory.mktemp("pyz") / "nezha-bootstrap.pyz")


def v0_vars(running: Running, fake: FakeDashboard, lab: Lab, pyz: Path, token: str = TOKEN) -> dict[str, Any]:
    return {"agent_dashboard_url": running.url, "agent_token": token, "agent_pyz": str(pyz),
            "agent_pyz_dest": str(lab.tmp / "pyz-on-host" / "nezha-bootstrap.pyz"),
            "agent_probe_address": "probe.example.test", "agent_script_url": f"{running.url}/install.sh",
            "agent_script_sha256": fake.script_sha256, "agent_deadline": 10}


def secrets_in(text: str, fake: Any, *extra: str) -> list[str]:
    needles = [TOKEN, WRONG_TOKEN, *extra] + [s.secret for s in getattr(fake, "servers", []) if hasattr(s, "secret")]
    return [needle for needle in needles if needle and needle in text]


# --- v0: the role with the zipapp ------------------------------------------------------------------

def test_first_run_changes_each_host_and_the_second_is_ok_with_no_request(dashboard: Running, fake: FakeDashboard,
                                                                         lab: Lab, pyz: Path) -> None:
    settings = v0_vars(dashboard, fake, lab, pyz)
    first = lab.play(ROLE_PLAY, "-vvv", **settings)
    assert first.code == 0, first.output
    assert first.changed() == {"node1": 1, "node2": 1}
    assert sorted(s.name for s in fake.servers) == ["web-node1", "web-node2"]
    for root in lab.hosts.values():
        assert (root / "etc/systemd/system/nezha-agent.service").exists()
    seen = len(fake.journal)
    second = lab.play(ROLE_PLAY, **settings)
    assert second.code == 0, second.output
    assert second.changed() == {"node1": 0, "node2": 0}
    assert len(fake.journal) == seen  # a finished v0 node's rerun sends nothing
    assert secrets_in(first.output + second.output, fake) == []  # -vvv included


def test_check_mode_sends_nothing_writes_nothing_and_shows_the_plan(dashboard: Running, fake: FakeDashboard, lab: Lab,
                                                                  pyz: Path) -> None:
    checked = lab.play(ROLE_PLAY, "--check", "--diff", **v0_vars(dashboard, fake, lab, pyz))
    assert checked.code == 0, checked.output
    assert checked.changed() == {"node1": 1, "node2": 1}
    assert fake.journal == []
    assert "POST " + dashboard.url + "/api/v1/server/register?simple=true" in checked.output  # the diff: the plan
    assert "Authorization: <token>" in checked.output
    for root in lab.hosts.values():
        assert sorted(p.name for p in root.rglob("*")) == ["etc", "machine-id"]
    assert not (lab.tmp / "pyz-on-host").exists()  # check mode runs the upload, puts nothing in place


def test_a_wrong_token_fails_the_task_with_the_tools_message_and_exit_reason(dashboard: Running, fake: FakeDashboard,
                                                                            lab: Lab, pyz: Path) -> None:
    failed = lab.play(ROLE_PLAY, "-vvv", **v0_vars(dashboard, fake, lab, pyz, token=WRONG_TOKEN))
    assert failed.code == 2, failed.output
    assert {host: counts["failed"] for host, counts in failed.recap().items()} == {"node1": 1, "node2": 1}
    assert "the dashboard refused the API token" in failed.output
    assert "(exit 3: the dashboard refused" in failed.output
    assert '"exit_reason": "the dashboard refused' in failed.output
    assert "Check the token in the task's token option" in failed.output  # not a temporary file's path
    assert fake.servers == []
    assert secrets_in(failed.output, fake) == []


def test_state_absent_uninstalls_and_a_second_absent_is_ok(dashboard: Running, fake: FakeDashboard, lab: Lab,
                                                           pyz: Path) -> None:
    settings = v0_vars(dashboard, fake, lab, pyz)
    assert lab.play(ROLE_PLAY, **settings).code == 0
    removed = lab.play(ROLE_PLAY, "--diff", **{**settings, "agent_state": "absent"})
    assert removed.code == 0, removed.output
    assert removed.changed() == {"node1": 1, "node2": 1}
    for root in lab.hosts.values():
        assert not (root / "etc/systemd/system/nezha-agent.service").exists()
        assert not (root / "var/lib/nezha-bootstrap").exists()
    assert "remove " in removed.output  # the diff: what uninstall removed
    again = lab.play(ROLE_PLAY, **{**settings, "agent_state": "absent"})
    assert again.code == 0, again.output
    assert again.changed() == {"node1": 0, "node2": 0}


def test_a_zipapp_with_another_hash_than_the_pin_is_never_copied(dashboard: Running, fake: FakeDashboard, lab: Lab,
                                                                 pyz: Path) -> None:
    failed = lab.play(ROLE_PLAY, **v0_vars(dashboard, fake, lab, pyz), agent_pyz_sha256="0" * 64)
    assert failed.code == 2, failed.output
    assert "not the pinned pyz_sha256" in failed.output
    assert not (lab.tmp / "pyz-on-host").exists() and fake.journal == []


def test_a_zipapp_changed_on_the_host_is_replaced_before_it_runs(dashboard: Running, fake: FakeDashboard, lab: Lab,
                                                                 pyz: Path) -> None:
    settings = v0_vars(dashboard, fake, lab, pyz)
    assert lab.play(ROLE_PLAY, **settings).code == 0
    placed = Path(settings["agent_pyz_dest"])
    placed.write_bytes(b"print('tampered')\n")
    again = lab.play(ROLE_PLAY, **settings)
    assert again.code == 0, again.output
    assert placed.read_bytes() == pyz.read_bytes()
    assert again.changed() == {"node1": 1, "node2": 1}  # the zipapp was put back: a change, and only that


# --- the module on its own: the installed tool, a 3.9 host -------------------------------------------

def test_the_release_zipapp_runs_with_a_python_3_9_host_interpreter(dashboard: Running, fake: FakeDashboard,
                                                                     lab: Lab) -> None:
    """RHEL 9's python3: the module and the real zipapp (packaging/build, every dependency inside) on 3.9."""
    from nezha_bootstrap import __version__
    from tests.test_packaging import PY39, run_build

    if PY39 is None:
        pytest.skip("no Python 3.9 under pyenv to be the host's python3")
    run_build(lab.tmp / "dist")
    release = lab.tmp / "dist" / f"nezha-bootstrap-{__version__}-{platform.machine()}.pyz"
    settings = {**v0_vars(dashboard, fake, lab, release), "ansible_python_interpreter": str(PY39)}
    first = lab.play(ROLE_PLAY, **settings)
    assert first.code == 0, first.output
    assert first.changed() == {"node1": 1, "node2": 1}
    assert sorted(s.name for s in fake.servers) == ["web-node1", "web-node2"]
    again = lab.play(ROLE_PLAY, **settings)
    assert (again.code, again.changed()) == (0, {"node1": 0, "node2": 0}), again.output


NODE_PLAY = """
- name: Nezha agents
  hosts: all
  gather_facts: false
  tasks:
    - name: Run nezha-bootstrap
      nezha.bootstrap.node:
        executable: "{{ tool }}"
        dashboard_url: "{{ url }}"
        token: "{{ token }}"
        root: "{{ agent_root }}"
        rehearsal: "{{ agent_rehearsal }}"
        name: "{{ agent_name }}"
        probe_address: probe.example.test
        script_url: "{{ url }}/install.sh"
        script_sha256: "{{ sha }}"
        deadline: 10
      register: result
    - name: Show the result
      ansible.builtin.debug:
        var: result
"""


def test_without_pyz_the_module_runs_the_tool_installed_on_the_host(dashboard: Running, fake: FakeDashboard,
                                                                    lab: Lab) -> None:
    tool = Path(sys.executable).parent / "nezha-bootstrap"
    done = lab.play(NODE_PLAY, url=dashboard.url, token=TOKEN, sha=fake.script_sha256, tool=str(tool))
    assert done.code == 0, done.output
    assert done.changed() == {"node1": 1, "node2": 1}
    assert '"outcome": "registered_and_installed"' in done.output and '"generation": "v0"' in done.output


# --- v1/v2: install, then reconcile names and groups from inventory variables ---------------------------

@pytest.fixture
def v1() -> Iterator[tuple[Running, FakeV1]]:
    fake = FakeV1(profile="v2.0")
    fake.add_release(AGENT_V1)
    fake.add_login(1, "admin", PASSWORD)
    with serve_v1(fake) as running:
        yield running, fake


def test_a_v1_fleet_is_enrolled_then_named_and_grouped_from_the_inventory(v1: tuple[Running, FakeV1], lab: Lab,
                                                                          pyz: Path) -> None:
    running, fake = v1
    settings = {"agent_dashboard_url": running.url, "agent_secret": fake.agent_secret, "agent_pyz": str(pyz),
                "agent_pyz_dest": str(lab.tmp / "pyz-on-host" / "nezha-bootstrap.pyz"),
                "agent_agent_base_url": f"{running.url}/releases", "agent_deadline": 5, "agent_group": "web",
                "agent_reconcile": True, "agent_reconcile_username": "admin", "agent_reconcile_password": PASSWORD,
                "agent_reconcile_pyz": str(pyz), "agent_reconcile_defaults": {"hide_for_guest": True}}
    checked = lab.play(ROLE_PLAY, "--check", "--diff", **settings)
    assert checked.code == 0, checked.output
    assert (fake.servers, fake.changes, fake.groups) == ([], [], [])  # only the probes and reads were sent
    first = lab.play(ROLE_PLAY, "--diff", "-vvv", **settings)
    assert first.code == 0, first.output
    names = {server.uuid: server.name for server in fake.servers}
    assert names == {machine_uuid(mid): f"web-{host}" for host, mid in MACHINE_IDS.items()}
    assert [sorted(group.servers) for group in fake.groups if group.name == "web"] == [
        sorted(s.id for s in fake.servers)]
    assert "ACTION" in first.output and "rename" in first.output  # the diff: reconcile's table
    second = lab.play(ROLE_PLAY, **settings)
    assert second.code == 0, second.output
    assert sum(second.changed().values()) == 0
    assert secrets_in(first.output + second.output, fake, fake.agent_secret, PASSWORD) == []


# --- the options are the tool's: every `run` flag, under its long name in snake_case --------------------

def test_every_run_flag_is_an_option_of_the_node_module_and_documented() -> None:
    import importlib

    import yaml

    from nezha_bootstrap.cli import run

    node = importlib.import_module("ansible_collections.nezha.bootstrap.plugins.modules.node")
    output_only = {"dry_run", "json", "quiet", "verbose", "help"}  # check mode is --dry-run; --json always
    flags = {max(param.opts, key=len).lstrip("-").replace("-", "_") for param in run.params}
    spec = node.argument_spec()
    assert sorted(flags - output_only - set(spec)) == []
    documented = yaml.safe_load(node.DOCUMENTATION)["options"]
    assert sorted(set(spec) ^ set(documented)) == []
    assert {name for name, option in spec.items() if option.get("no_log")} == {"token", "agent_secret"}
