"""Live v0: `run` registers through the real register API (name, tag, hidden as asked) and the real v0
agent, installed with `--method direct`, shows online; a rerun makes no server; every refusal the
dashboard gives maps to the documented exit code.

v0 has no API that deletes with a token (its DELETE /api/server/:id needs the login's session cookie:
NEZHA_LIVE_V0_SESSION), so tests that create servers run only with that cookie. The note is stored but no
v0 API answer carries it (list and details have id, name, tag, last_active, ips, display_index,
hide_for_guest, host, status), so it is not read back.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nezha_bootstrap.errors import DashboardRefused
from nezha_bootstrap.http import Answer
from nezha_bootstrap.v0.api import classify_register

from .conftest import (
    SETTINGS,
    Ran,
    ReleaseHost,
    Sandbox,
    client,
    need,
    need_generation,
    need_sandbox,
    remove_sandbox,
    sandbox_dir,
    tool,
    unique,
    v0_delete,
    v0_servers,
)

pytestmark = pytest.mark.integration
ONLINE_WITHIN = 10  # seconds: the v0 theme shows a server online when last_active is this recent
NEVER = -62135596800  # last_active before any report
WRONG_TOKEN = "WRONGwrongWRONGwrongWRONGwrong12"


def run_arguments(release: str) -> list[str]:
    return ["--dashboard-url", SETTINGS.url, "--probe-port", SETTINGS.probe_port or "5555",
            "--tls" if SETTINGS.tls else "--no-tls", "--method", "direct", "--agent-base-url", release,
            "--agent-version", SETTINGS.version, "--agent-flag", "--disable-auto-update"]


@pytest.fixture
def made(tmp_path: Path) -> Iterator[list[tuple[Sandbox | None, str]]]:
    """(sandbox, server name) of every server a test registers; agents stopped, servers deleted after."""
    registered: list[tuple[Sandbox | None, str]] = []
    yield registered
    for box, _ in registered:
        if box is not None:
            box.stop_agent()
    for _, name in registered:
        for row in v0_servers():
            if row["name"] == name:
                v0_delete(int(row["id"]))
    for box, _ in registered:
        if box is not None:
            remove_sandbox(box)


def need_v0_writes() -> None:
    need_generation("v0")
    need("TOKEN")
    if not SETTINGS.v0_session:
        pytest.skip("set NEZHA_LIVE_V0_SESSION (the session cookie of a login): v0 deletes servers only with it, "
                    "so no server is created without it")


def details(name: str) -> list[dict[str, Any]]:
    """/api/v1/server/details without parameters: the only v0 answer with the real hide_for_guest."""
    with client() as http:
        body = http.get("/api/v1/server/details", headers={"Authorization": SETTINGS.token}).json()
    return [row for row in body["result"] if row["name"] == name]


def wait_online(name: str) -> tuple[dict[str, Any], float]:
    end = time.monotonic() + SETTINGS.online_timeout
    while True:
        found = details(name)
        if found and found[0]["last_active"] != NEVER and time.time() - found[0]["last_active"] <= ONLINE_WITHIN:
            return found[0], time.time()
        assert time.monotonic() < end, f"{name} not online after {SETTINGS.online_timeout:g} s: {found}"
        time.sleep(0.1)


def test_run_registers_as_asked_and_the_real_agent_shows_online_and_a_rerun_changes_nothing(
        made: list[tuple[Sandbox | None, str]], release_host: ReleaseHost, tmp_path: Path) -> None:
    need_v0_writes()
    need_sandbox()
    box = Sandbox(sandbox_dir())
    name, tag = unique("v0"), unique("tag")
    made.append((box, name))
    args = ["run", "--root", "/", *run_arguments(release_host.base_url), "--name", name, "--tag", tag,
            "--note", "live note", "--hide-for-guest", "--json"]

    first = tool(*args, secrets_env={"NEZHA_TOKEN": SETTINGS.token}, sandbox=box)
    row, online_at = wait_online(name)
    again = tool(*args, secrets_env={"NEZHA_TOKEN": SETTINGS.token}, sandbox=box)

    assert first.exit_code == 0, first.stdout + first.stderr
    assert (row["tag"], row["hide_for_guest"], row["host"]["Version"]) == (tag, True, SETTINGS.version)
    started = box.agent_started()
    assert started is not None
    print(f"\nLIVE {SETTINGS.url} (v0): agent v{SETTINGS.version} start -> online {online_at - started:.2f} s")
    assert again.exit_code == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["outcome"] == "nothing_to_do", again.stdout + again.stderr
    assert [r["id"] for r in details(name)] == [row["id"]]
    assert [r["name"] for r in v0_servers(tag=tag)] == [name]


def test_a_sealed_clone_registers_a_second_server_and_the_first_remains(
        made: list[tuple[Sandbox | None, str]], release_host: ReleaseHost) -> None:
    need_v0_writes()
    need_sandbox()
    image = Sandbox(sandbox_dir())
    name = unique("v0-image")
    made.append((image, name))
    args = ["run", "--root", "/", *run_arguments(release_host.base_url), "--name", name, "--json"]
    first = tool(*args, secrets_env={"NEZHA_TOKEN": SETTINGS.token}, sandbox=image)
    assert first.exit_code == 0, first.stdout + first.stderr
    original, _ = wait_online(name)
    sealed = tool("seal", "--root", "/", "--json", sandbox=image)
    assert sealed.exit_code == 0, sealed.stdout + sealed.stderr
    image.stop_agent()
    clone = image.clone(sandbox_dir())  # the captured image, booted with a new machine-id
    made.append((clone, name))

    second = tool(*args, secrets_env={"NEZHA_TOKEN": SETTINGS.token}, sandbox=clone)

    assert second.exit_code == 0, second.stdout + second.stderr
    assert json.loads(second.stdout)["outcome"] == "registered_and_installed"
    assert f"already had a server named {name!r}" in second.stderr  # the same settings name both
    end = time.monotonic() + SETTINGS.online_timeout
    while not [row for row in details(name) if row["id"] != original["id"] and row["last_active"] != NEVER]:
        assert time.monotonic() < end, f"the clone's server is not online: {details(name)}"
        time.sleep(0.1)
    started = clone.agent_started()
    assert started is not None
    print(f"\nLIVE {SETTINGS.url} (v0): the sealed clone's agent start -> online {time.time() - started:.2f} s")
    found = details(name)
    assert len(found) == 2 and original["id"] in [row["id"] for row in found]  # the first stays until deleted


def test_a_run_with_a_wrong_token_exits_3_and_registers_nothing(release_host: ReleaseHost, tmp_path: Path) -> None:
    need_generation("v0")
    need("TOKEN")
    name = unique("refused")
    root = scratch_root(tmp_path)

    ran: Ran = tool("run", "--root", str(root), "--rehearsal", *run_arguments(release_host.base_url), "--name", name,
                    secrets_env={"NEZHA_TOKEN": WRONG_TOKEN})

    assert ran.exit_code == 3, ran.stdout + ran.stderr
    assert "refused the API token" in ran.stderr
    assert details(name) == []


# The refusals of the register API, sent as is, and the exit code the tool gives each (dashboard-v0-register.md).
REFUSALS = [
    pytest.param({"Authorization": WRONG_TOKEN}, b'{"Name":"x"}', 200, {"code": 403, "message": "访问此接口需要认证"},
                 id="wrong token"),
    pytest.param({"Authorization": "Bearer {token}"}, b'{"Name":"x"}', 200,
                 {"code": 403, "message": "访问此接口需要认证"}, id="Bearer word"),
    pytest.param({"Authorization": "{token}"}, b"{bad", 400,
                 {"code": 400, "message": "Parse JSON failed", "secret": ""}, id="malformed body"),
    pytest.param({"Authorization": "{token}"}, b'{"Name":123}', 400,
                 {"code": 400, "message": "Parse JSON failed", "secret": ""}, id="wrong type"),
]


@pytest.mark.parametrize(("headers", "body", "status", "answer"), REFUSALS)
def test_each_refusal_of_the_register_api_is_exit_3(headers: dict[str, str], body: bytes, status: int,
                                                    answer: dict[str, Any]) -> None:
    need_generation("v0")
    need("TOKEN")
    sent = {key: value.format(token=SETTINGS.token) for key, value in headers.items()}
    with client() as http:
        reply = http.post("/api/v1/server/register?simple=true", content=body,
                          headers={**sent, "Content-Type": "application/json"})

    assert (reply.status_code, reply.json()) == (status, answer)
    with pytest.raises(DashboardRefused) as caught:
        classify_register(Answer(reply.status_code, reply.headers.get("content-type", ""), reply.content))
    assert caught.value.exit_code == 3


def scratch_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
    return root
