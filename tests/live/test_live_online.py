"""Live: done means online (issue 17). With the real agent installed in a sandbox, `run` exits 0 only once
the real dashboard sees the node, and each failure is named and coded: a wrong secret and a TLS mismatch
either way exit 3 with the agent stopped, a closed probe port exits 4 naming host:port. Each scenario
prints one `LIVE-ONLINE` line (generation, scenario, exit code, seconds from the start of `run`) for the
issue's table.

Besides the settings of the other live modules: NEZHA_LIVE_TLS_PORT, a port on the dashboard's host
that speaks TLS (a v1/v2 dashboard's https.listen_port; for v0 a TLS proxy, or any TLS port), for the
plain-against-TLS scenario (skipped without it).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

from nezha_bootstrap.identity import machine_uuid

from . import test_live_v0 as live_v0
from . import test_live_v1 as live_v1
from .conftest import (
    SETTINGS,
    Ran,
    ReleaseHost,
    Sandbox,
    need,
    need_generation,
    need_sandbox,
    remove_sandbox,
    sandbox_dir,
    tool,
    unique,
    v0_delete,
    v0_servers,
    v1_delete,
    v1_servers,
)

pytestmark = pytest.mark.integration
TLS_PORT = os.environ.get("NEZHA_LIVE_TLS_PORT", "").strip()
VERDICT_WITHIN = 10.0  # seconds from the start of `run` to a failure verdict (issue 17's target)


@dataclass
class Runs:
    """The sandboxes and v0 names this module made, for the cleanup; `run` in one of them."""

    release: ReleaseHost
    boxes: list[Sandbox] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def box(self) -> Sandbox:
        made = Sandbox(sandbox_dir())
        self.boxes.append(made)
        return made

    def run(self, box: Sandbox, *args: str, secret: str | None = None) -> Ran:
        if SETTINGS.is_v0:
            name = unique("online")
            self.names.append(name)
            base = live_v0.run_arguments(self.release.base_url) + ["--name", name]
            env = {"NEZHA_TOKEN": SETTINGS.token}
        else:
            base = live_v1.run_arguments(self.release.base_url)
            env = {"NEZHA_AGENT_SECRET": secret or SETTINGS.agent_secret}
        # The later flags win (click): a scenario's --tls/--no-tls/--probe-port replace the live settings'.
        return tool("run", "--root", "/", *base, "--json", *args, secrets_env=env, sandbox=box)


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest) -> Iterator[Runs]:
    need_generation("v0", *live_v1.V1_GENERATIONS)
    need_sandbox()
    if SETTINGS.is_v0:
        live_v0.need_v0_writes()
    else:
        need("AGENT_SECRET")
    made = Runs(request.getfixturevalue("release_host"))
    yield made
    for box in made.boxes:
        box.stop_agent()
    if SETTINGS.is_v0:
        for row in v0_servers():
            if row["name"] in made.names:
                v0_delete(int(row["id"]))
    else:
        uuids = {machine_uuid(box.machine_id) for box in made.boxes}
        v1_delete("server", [row["id"] for row in v1_servers() if row.get("uuid") in uuids])
    for box in made.boxes:
        remove_sandbox(box)


def report(scenario: str, ran: Ran) -> dict[str, Any]:
    try:
        result = dict(json.loads(ran.stdout))
    except ValueError:
        result = {}
    steps = " ".join(f"{step['step']} {step['seconds']:.2f}" for step in result.get("steps", []))
    print(f"\nLIVE-ONLINE {SETTINGS.generation} {SETTINGS.url} {scenario}: exit {ran.exit_code} in {ran.seconds:.2f} s "
          f"(steps: {steps})")
    return result


def closed_port() -> int:
    host = urlsplit(SETTINGS.url).hostname or "127.0.0.1"
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def test_run_exits_0_only_once_the_dashboard_sees_the_node_online(runs: Runs) -> None:
    box = runs.box()
    ran = runs.run(box)
    result = report("online after install", ran)

    assert ran.exit_code == 0, ran.stdout + ran.stderr
    assert result["online"] is True and result["online_after_s"] is not None
    if SETTINGS.is_v0:  # the dashboard's own view agrees, at once
        [row] = [row for row in v0_servers() if row["name"] == runs.names[-1]]
        assert time.time() - row["last_active"] <= live_v0.ONLINE_WITHIN
    else:
        [row] = live_v1.rows(machine_uuid(box.machine_id))
        seen = live_v1.last_active(row)
        assert seen is not None and time.time() - seen <= live_v1.ONLINE_WITHIN
    again = runs.run(box)
    assert again.exit_code == 0 and json.loads(again.stdout)["outcome"] == "nothing_to_do", again.stderr


def test_a_wrong_agent_secret_is_exit_3_and_the_agent_is_stopped(runs: Runs) -> None:
    need_generation(*live_v1.V1_GENERATIONS)  # v0's secret comes from the dashboard itself
    box = runs.box()
    ran = runs.run(box, secret="Wrong" + "x" * 27)
    report("wrong agent secret", ran)

    assert ran.exit_code == 3, ran.stdout + ran.stderr
    assert "the dashboard refused the agent secret" in ran.stderr
    assert box.agent_pid() is None, "the agent still runs after a refused secret"
    assert ran.seconds <= VERDICT_WITHIN + 5  # +5: the release download and the agent's install


def test_a_v0_server_deleted_in_the_dashboard_refuses_the_node_secret_exit_3(runs: Runs) -> None:
    need_generation("v0")
    box = runs.box()
    assert runs.run(box).exit_code == 0
    name = runs.names[-1]
    for row in v0_servers():
        if row["name"] == name:
            v0_delete(int(row["id"]))
    box.stop_agent()
    box.file("/etc/init.d/nezha-agent").unlink()  # the next run installs again, with the saved secret
    ran = tool("run", "--root", "/", *live_v0.run_arguments(runs.release.base_url), "--name", name, "--json",
               secrets_env={"NEZHA_TOKEN": SETTINGS.token}, sandbox=box)
    report("v0 server deleted: node secret refused", ran)

    assert ran.exit_code == 3, ran.stdout + ran.stderr
    assert "the dashboard refused the node secret" in ran.stderr


def test_tls_against_a_plain_port_is_exit_3_naming_no_tls(runs: Runs) -> None:
    if SETTINGS.tls:
        pytest.skip("the live agent port speaks TLS: no plain port to point --tls at")
    box = runs.box()
    ran = runs.run(box, "--tls")
    report("--tls against the plain port", ran)

    assert ran.exit_code == 3, ran.stdout + ran.stderr
    assert "with TLS (--tls), but the port speaks plain gRPC" in ran.stderr and "--no-tls" in ran.stderr
    assert box.agent_pid() is None
    assert ran.seconds <= VERDICT_WITHIN + 5


def test_plain_against_a_tls_port_is_exit_3_naming_tls(runs: Runs) -> None:
    if not TLS_PORT:
        pytest.skip("set NEZHA_LIVE_TLS_PORT to a port of the dashboard's host that speaks TLS")
    box = runs.box()
    ran = runs.run(box, "--no-tls", "--probe-port", TLS_PORT, "--allow-plaintext")
    report("--no-tls against a TLS port", ran)

    assert ran.exit_code == 3, ran.stdout + ran.stderr
    assert "without TLS (--no-tls), but the port speaks TLS" in ran.stderr and "--tls" in ran.stderr
    assert box.agent_pid() is None
    assert ran.seconds <= VERDICT_WITHIN + 5


def test_a_closed_probe_port_is_exit_4_naming_host_and_port(runs: Runs) -> None:
    box = runs.box()
    port = closed_port()
    ran = runs.run(box, "--probe-port", str(port))
    report("closed probe port", ran)

    assert ran.exit_code == 4, ran.stdout + ran.stderr
    assert f":{port} refused the agent's connection" in ran.stderr
    assert ran.seconds <= VERDICT_WITHIN + 5
