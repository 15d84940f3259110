"""Live: the collection's role, through ansible-playbook, against a live dashboard and the real agent.

The play runs on one local host (ansible_connection=local, --root /) inside a sandbox (a private mount
namespace with overlays, its own machine-id), so the real agent installs there and never on this host.
Check mode makes no server; the first run is `changed`; the second is `ok`; `state: absent` uninstalls.
Each test prints its recap lines. Servers it made are deleted at the end (their agents stopped first).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nezha_bootstrap.identity import machine_uuid

from .conftest import (
    SETTINGS,
    ReleaseHost,
    Sandbox,
    need,
    need_generation,
    unique,
    v0_delete,
    v0_servers,
    v1_delete,
    v1_servers,
)

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    sys.version_info < (3, 11), reason="the pinned ansible-core (2.19) needs Python >= 3.11 on the controller")]
REPO = Path(__file__).resolve().parents[2]
PLAY = """
- name: Nezha agents
  hosts: all
  gather_facts: false
  roles:
    - role: nezha.bootstrap.agent
"""


def play(box: Sandbox, tmp_path: Path, settings: dict[str, Any], *args: str) -> tuple[int, str, list[str]]:
    """ansible-playbook in the sandbox: exit code, output, and the recap lines."""
    playbook = Path(sys.executable).parent / "ansible-playbook"
    if not playbook.exists():
        pytest.skip("ansible-playbook is not installed beside this Python (pip install -e '.[test]')")
    (tmp_path / "play.yml").write_text(PLAY)
    inventory = {"all": {"hosts": {"live": {}}, "vars": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "agent_root": "/",
        "agent_executable": str(Path(sys.executable).parent / "nezha-bootstrap"), **settings}}}
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("NEZHA_", "NZ_"))}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(REPO), ANSIBLE_NOCOLOR="1", PYTHONWARNINGS="ignore",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "local-tmp"), ANSIBLE_REMOTE_TEMP=str(tmp_path / "remote-tmp"))
    argv = box.wrap([str(playbook), "-i", str(tmp_path / "inventory.json"), str(tmp_path / "play.yml"), *args])
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    output = done.stdout + done.stderr
    recap = [line for line in output.splitlines() if line.startswith("live ") and "ok=" in line]
    shown = " ".join(recap[0].split()) if recap else "-"
    print(f"\nLIVE ansible-playbook {' '.join(args)} ({SETTINGS.generation}): {shown}")
    return done.returncode, output, recap


def gone(box: Sandbox, path: str) -> bool:
    """Removed inside the sandbox: absent from its upper layer, or a whiteout there (a 0/0 character device)."""
    found = box.file(path)
    return not found.exists() or (found.is_char_device() and found.stat().st_rdev == 0)


def changed(recap: list[str]) -> int:
    [line] = recap
    return int(line.split("changed=")[1].split()[0])


def common(release: ReleaseHost) -> dict[str, Any]:
    settings: dict[str, Any] = {"agent_dashboard_url": SETTINGS.url, "agent_agent_base_url": release.base_url,
                                "agent_agent_version": SETTINGS.version, "agent_tls": SETTINGS.tls}
    if SETTINGS.probe_port:
        settings["agent_probe_port"] = int(SETTINGS.probe_port)
    return settings


def secrets_shown(output: str) -> list[str]:
    return [name for name, value in (("token", SETTINGS.token), ("agent secret", SETTINGS.agent_secret),
                                     ("password", SETTINGS.password)) if value and value in output]


def test_v0_the_role_registers_once_and_uninstalls(box: Sandbox, tmp_path: Path, release_host: ReleaseHost) -> None:
    need_generation("v0")
    need("TOKEN", "V0_SESSION")
    tag = unique("ansible")
    settings = {**common(release_host), "agent_token": SETTINGS.token, "agent_method": "direct",
                "agent_name": f"{tag}-node", "agent_tag": tag}
    try:
        code, output, recap = play(box, tmp_path, settings, "--check", "--diff")
        assert (code, changed(recap)) == (0, 1), output
        assert v0_servers(tag=tag) == []
        code, output, recap = play(box, tmp_path, settings, "-vvv")
        assert (code, changed(recap)) == (0, 1), output
        assert [server["name"] for server in v0_servers(tag=tag)] == [f"{tag}-node"]
        code, again, recap = play(box, tmp_path, settings)
        assert (code, changed(recap)) == (0, 0), again
        code, removed, recap = play(box, tmp_path, {**settings, "agent_state": "absent"})
        assert (code, changed(recap)) == (0, 1), removed
        assert gone(box, "/var/lib/nezha-bootstrap")
        assert secrets_shown(output + again + removed) == []
    finally:
        box.stop_agent()
        for server in v0_servers(tag=tag):
            v0_delete(int(server["id"]))


def test_v1_the_role_enrolls_names_once_and_uninstalls(box: Sandbox, tmp_path: Path,
                                                       release_host: ReleaseHost) -> None:
    need_generation("v1.0-1.4", "v1.5-1.14", "v2.0", "v2.1+")
    need("AGENT_SECRET")
    name = unique("ansible")
    settings = {**common(release_host), "agent_secret": SETTINGS.agent_secret, "agent_name": name}
    if SETTINGS.has_pat:  # v2.1+: the node names its own server
        settings["agent_token"] = SETTINGS.token
    else:  # reconcile names it afterwards, with a login
        need("USERNAME", "PASSWORD")
        settings.update(agent_reconcile=True, agent_reconcile_username=SETTINGS.username,
                        agent_reconcile_password=SETTINGS.password,
                        agent_reconcile_executable=str(Path(sys.executable).parent / "nezha-bootstrap"))
    uuid = machine_uuid(box.machine_id)
    tasks_that_change = 1 if SETTINGS.has_pat else 2  # the node's run, and reconcile's rename
    try:
        code, output, recap = play(box, tmp_path, settings, "--check", "--diff")
        assert (code, changed(recap)) == (0, 1), output
        assert [row for row in v1_servers() if row.get("uuid") == uuid] == []
        code, output, recap = play(box, tmp_path, settings, "-vvv")
        assert (code, changed(recap)) == (0, tasks_that_change), output
        assert [row["name"] for row in v1_servers() if row.get("uuid") == uuid] == [name]
        code, again, recap = play(box, tmp_path, settings)
        assert (code, changed(recap)) == (0, 0), again
        code, removed, recap = play(box, tmp_path, {**settings, "agent_state": "absent"})
        assert (code, changed(recap)) == (0, 1), removed
        assert gone(box, "/opt/nezha/agent/config.yml")
        assert secrets_shown(output + again + removed) == []
    finally:
        box.stop_agent()
        v1_delete("server", [row["id"] for row in v1_servers() if row.get("uuid") == uuid])
