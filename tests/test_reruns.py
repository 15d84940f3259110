"""Every rerun converges on one server per machine: after a killed registration, changed settings, a
deleted agent or an image captured without `seal` (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from nezha_bootstrap.identity import instance_uuid, machine_uuid
from tests.conftest import MACHINE_ID, Cli, V1Cli

pytestmark = pytest.mark.integration

STATE = "var/lib/nezha-bootstrap/state.json"
PENDING = "var/lib/nezha-bootstrap/pending.json"
UNIT = "etc/systemd/system/nezha-agent.service"
INSTANCE_ID = "var/lib/cloud/data/instance-id"


def saved(root: Path) -> dict[str, Any]:
    return json.loads((root / STATE).read_text())  # type: ignore[no-any-return]


def plant_pending(root: Path, name: str, before: list[int], dashboard_url: str, tag: str = "AutoRegister") -> None:
    """What a run killed after recording its registration and before saving the secret leaves."""
    (root / PENDING).parent.mkdir(parents=True, exist_ok=True)
    (root / PENDING).write_text(json.dumps({
        "version": 1, "dashboard_url": dashboard_url, "name": name, "tag": tag, "before": before,
        "machine_id": MACHINE_ID, "started_at": "2026-01-01T00:00:00+00:00",
    }))


def node_name(cli: Cli) -> str:
    """The name `run` registers this node under (the fixture's default)."""
    outcome = cli("run", "--dry-run", "--json")
    return str(json.loads(outcome.stdout)["name"])


# --- 1. a registration killed while its answer was on its way -------------------------------------

def test_the_pending_registration_is_recorded_before_the_post_and_removed_with_the_saved_secret(cli: Cli) -> None:
    cli.fake.faults.answer_delay = 0.5
    import threading

    seen: list[bool] = []
    run_ended = threading.Event()
    watcher = threading.Thread(target=lambda: seen.append(_wait_for_file(cli.root / PENDING, run_ended)))
    watcher.start()
    outcome = cli("run")
    run_ended.set()
    watcher.join()

    assert outcome.exit_code == 0, outcome.stderr
    assert seen == [True]  # it existed while the register answer was on its way
    assert not (cli.root / PENDING).exists()


def _wait_for_file(path: Path, run_ended: Any) -> bool:
    """Whether `path` appeared before the run ended (`run_ended`, a threading.Event): no fixed time limit,
    which a slow start on a loaded machine could pass before the file is written."""
    import time

    while not run_ended.is_set():
        if path.exists():
            return True
        time.sleep(0.005)
    return False


def test_a_rerun_that_finds_the_server_a_killed_run_made_refuses_to_register_again(cli: Cli) -> None:
    name = node_name(cli)
    plant_pending(cli.root, name, [], cli.dashboard.url)
    orphan = cli.fake.create(name)  # the dashboard made it; the answer died with the run

    outcome = cli("run")

    assert outcome.exit_code == 3
    assert (f"an earlier run was stopped while registering {name!r} under tag 'AutoRegister' "
            f"(2026-01-01T00:00:00+00:00), and the dashboard now has a new server so named (id {orphan.id})"
            in outcome.stderr)
    assert "Not registering again: delete that server in the dashboard, then run again" in outcome.stderr
    assert cli.fake.registrations() == [] and len(cli.fake.servers) == 1
    assert (cli.root / PENDING).exists()  # still looked for on the next run


def test_once_the_orphan_is_deleted_the_rerun_registers_exactly_once(cli: Cli) -> None:
    name = node_name(cli)
    kept = cli.fake.create(name)  # a server of the same name that was there before the killed run
    plant_pending(cli.root, name, [kept.id], cli.dashboard.url)

    outcome = cli("run")

    assert outcome.exit_code == 0, outcome.stderr
    assert "an earlier run was stopped while registering" in outcome.stderr
    assert len(cli.fake.registrations()) == 1 and len(cli.fake.servers) == 2
    assert saved(cli.root)["secret"] == cli.fake.servers[-1].secret
    assert not (cli.root / PENDING).exists()


def test_a_pending_record_older_than_the_saved_secret_is_dropped_without_a_request(cli: Cli) -> None:
    assert cli("run").exit_code == 0
    plant_pending(cli.root, node_name(cli), [], cli.dashboard.url)
    seen = len(cli.fake.journal)

    outcome = cli("run")

    assert outcome.exit_code == 0, outcome.stderr
    assert len(cli.fake.journal) == seen
    assert not (cli.root / PENDING).exists()


# --- 4. a v0 rerun follows changed settings, with the saved secret ---------------------------------

@pytest.mark.parametrize(("change", "reason"), [
    ({"args": ("--agent-flag", "--disable-command-execute")},
     "the agent flags changed (none -> --disable-command-execute)"),
    ({"delete": "opt/nezha/agent/nezha-agent"}, "the agent binary {root}/opt/nezha/agent/nezha-agent is gone"),
    ({"args": ("--no-tls",)}, "the probe address, port or TLS setting changed"),
])
def test_a_changed_setting_or_a_deleted_agent_reinstalls_with_the_saved_secret(
    cli: Cli, change: dict[str, Any], reason: str
) -> None:
    assert cli("run").exit_code == 0
    [server] = cli.fake.servers
    if "delete" in change:
        (cli.root / change["delete"]).unlink()

    outcome = cli("run", *change.get("args", ()))

    assert outcome.exit_code == 0, outcome.stderr
    assert f"plan: install only ({reason.format(root=cli.root)})" in outcome.stderr
    assert len(cli.fake.registrations()) == 1 and len(cli.fake.servers) == 1
    assert cli.calls()[-1].argv[3] == server.secret
    assert cli("run", *change.get("args", ())).stdout.startswith("nothing to do")


def edit_unit(old: str, new: str) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        unit = root / UNIT
        unit.write_text(unit.read_text().replace(old, new))
    return edit


def empty_binary(root: Path) -> None:
    (root / "opt/nezha/agent/nezha-agent").write_bytes(b"")


def unexecutable_binary(root: Path) -> None:
    (root / "opt/nezha/agent/nezha-agent").chmod(0o644)


@pytest.mark.parametrize(("damage", "reason"), [
    (edit_unit('"probe.example.test:5555"', '"other.example.test:5555"'),
     "the unit's server is other.example.test:5555, the install was for probe.example.test:5555"),
    (edit_unit('"probe.example.test:5555"', '"probe.example.test:6666"'),
     "the unit's server is probe.example.test:6666, the install was for probe.example.test:5555"),
    (empty_binary, "the agent binary {root}/opt/nezha/agent/nezha-agent is empty"),
    (unexecutable_binary, "the agent binary {root}/opt/nezha/agent/nezha-agent is not executable"),
], ids=["unit-server", "unit-port", "empty-binary", "unexecutable-binary"])
def test_run_reinstalls_whatever_status_calls_drift_with_the_saved_secret(
    cli: Cli, damage: Callable[[Path], None], reason: str
) -> None:
    """Issue 18 item 12: status showed drift that run called nothing_to_do."""
    assert cli("run").exit_code == 0
    [server] = cli.fake.servers
    damage(cli.root)
    assert json.loads(cli("status", "--json").stdout)["drift"] == [reason.format(root=cli.root)]

    outcome = cli("run")

    assert outcome.exit_code == 0, outcome.stderr
    assert f"plan: install only ({reason.format(root=cli.root)})" in outcome.stderr
    assert len(cli.fake.servers) == 1 and cli.calls()[-1].argv[3] == server.secret
    assert json.loads(cli("status", "--json").stdout)["drift"] == []
    assert cli("run").stdout.startswith("nothing to do")


def test_the_state_records_what_was_installed(cli: Cli) -> None:
    assert cli("run", "--agent-flag", "--disable-command-execute").exit_code == 0

    state = saved(cli.root)

    assert (state["method"], state["agent_flags"], state["agent_version"]) == (
        "script", ["--disable-command-execute"], None)


def test_status_shows_the_drift_between_the_install_and_the_disk(cli: Cli) -> None:
    assert cli("run", "--agent-flag", "--disable-command-execute").exit_code == 0
    unit = cli.root / UNIT
    unit.write_text(unit.read_text().replace(' "--disable-command-execute"', "").replace(' "--tls"', ""))
    (cli.root / "opt/nezha/agent/nezha-agent").unlink()

    info = json.loads(cli("status", "--json").stdout)

    assert info["drift"] == [
        f"the agent binary {cli.root / 'opt/nezha/agent/nezha-agent'} is gone",
        "the unit runs the agent without --tls, the install did not",
        "the unit lacks the agent flags --disable-command-execute",
    ]
    assert json.loads(cli("status", "--json").stdout)["drift"] == info["drift"]
    assert cli("run", "--agent-flag", "--disable-command-execute").exit_code == 0
    assert json.loads(cli("status", "--json").stdout)["drift"] == []


# --- 6. an image captured without `seal` --------------------------------------------------------

def boot_as(root: Path, instance_id: str) -> None:
    (root / INSTANCE_ID).parent.mkdir(parents=True, exist_ok=True)
    (root / INSTANCE_ID).write_text(instance_id + "\n")


def test_a_v0_unsealed_clone_says_so_loudly_and_registers_as_its_own_server(cli: Cli) -> None:
    boot_as(cli.root, "i-original")
    assert cli("run").exit_code == 0
    assert saved(cli.root)["instance_id"] == "i-original"
    boot_as(cli.root, "i-clone")  # the same disk (machine-id, state) booted as another instance

    outcome = cli("run")

    assert outcome.exit_code == 0, outcome.stderr
    assert "warning: THIS MACHINE IS AN UNSEALED CLONE: cloud-init's instance-id is i-clone" in outcome.stderr
    assert len(cli.fake.servers) == 2
    assert saved(cli.root)["secret"] == cli.fake.servers[1].secret
    assert saved(cli.root)["instance_id"] == "i-clone"
    assert cli("run").stdout.startswith("nothing to do")


LATE_NOTE = ("warning: the state has no cloud-init instance-id (written before cloud-init ran here); recording "
             "this one, i-first. If this machine is a clone of an image captured without `nezha-bootstrap seal`")


def test_a_v0_state_without_an_instance_id_records_the_one_it_sees_and_warns_once(cli: Cli) -> None:
    """Issue 18 item 13: an image prepared without cloud-init, then booted by it."""
    assert cli("run").exit_code == 0
    boot_as(cli.root, "i-first")
    seen = len(cli.fake.journal)

    first, second = cli("run"), cli("run")

    assert (first.exit_code, second.exit_code) == (0, 0)
    assert first.stderr.count(LATE_NOTE) == 1 and LATE_NOTE not in second.stderr
    assert saved(cli.root)["instance_id"] == "i-first" and len(cli.fake.journal) == seen


def test_two_v1_unsealed_clones_enroll_under_uuids_of_their_own(v1cli: V1Cli, tmp_path: Path) -> None:
    import shutil

    boot_as(v1cli.root, "i-original")
    assert v1cli().exit_code == 0
    image = tmp_path / "image"
    shutil.copytree(v1cli.root, image, symlinks=True)  # captured without `seal`
    uuids = []
    for n, instance in enumerate(["i-clone-1", "i-clone-2"]):
        clone = V1Cli(v1cli.running, v1cli.fake, tmp_path / f"clone-{n}" / "root")
        shutil.copytree(image, clone.root, symlinks=True)
        boot_as(clone.root, instance)
        outcome = clone()
        assert outcome.exit_code == 0, outcome.stderr
        assert "THIS MACHINE IS AN UNSEALED CLONE" in outcome.stderr
        uuids.append(clone.state()["uuid"])
        assert clone().exit_code == 0  # and it stays that server

    assert uuids == [instance_uuid(MACHINE_ID, "i-clone-1"), instance_uuid(MACHINE_ID, "i-clone-2")]
    assert sorted(server.uuid for server in v1cli.fake.servers) == sorted([machine_uuid(MACHINE_ID), *uuids])


def test_a_v1_state_without_an_instance_id_records_the_one_it_sees_and_warns_once(v1cli: V1Cli) -> None:
    assert v1cli().exit_code == 0
    boot_as(v1cli.root, "i-first")

    first, second = v1cli(), v1cli()

    assert (first.exit_code, second.exit_code) == (0, 0)
    assert first.stderr.count(LATE_NOTE) == 1 and LATE_NOTE not in second.stderr
    assert v1cli.state()["instance_id"] == "i-first" and v1cli.state()["uuid"] == machine_uuid(MACHINE_ID)


@pytest.mark.parametrize(("damage", "reason"), [
    (edit_unit('"-c" "/opt/nezha/agent/config.yml"', '"-c" "/tmp/other.yml"'),
     "{root}/etc/systemd/system/nezha-agent.service does not run the agent with -c /opt/nezha/agent/config.yml"),
    (empty_binary, "the agent binary {root}/opt/nezha/agent/nezha-agent is empty"),
    (unexecutable_binary, "the agent binary {root}/opt/nezha/agent/nezha-agent is not executable"),
], ids=["unit-config", "empty-binary", "unexecutable-binary"])
def test_a_v1_run_reinstalls_whatever_status_calls_drift(v1cli: V1Cli, damage: Callable[[Path], None],
                                                         reason: str) -> None:
    assert v1cli().exit_code == 0
    damage(v1cli.root)
    assert json.loads(v1cli.invoke(["status", "--json"]).stdout)["drift"] == [reason.format(root=v1cli.root)]

    outcome = v1cli()

    assert outcome.exit_code == 0, outcome.stderr
    assert f"plan: install the agent ({reason.format(root=v1cli.root)})" in outcome.stderr
    assert [server.uuid for server in v1cli.fake.servers] == [machine_uuid(MACHINE_ID)]
    assert json.loads(v1cli.invoke(["status", "--json"]).stdout)["drift"] == []


KILLED_RUNS = 40  # each a fresh machine: a SIGKILL at a random moment of its first run, then a rerun


def test_sigkill_at_random_moments_never_makes_a_second_server(cli: Cli) -> None:
    import random
    import signal
    import time

    from tests.processes import finish, run, start, wait_for

    chance = random.Random(11)
    cli.fake.faults.answer_delay = 0.6  # widen the window between the server's creation and its secret
    outcomes = []
    for n in range(KILLED_RUNS):
        machine = Cli(cli.dashboard, cli.fake, cli.root.parent / f"machine-{n}" / "root")
        (machine.root / "etc").mkdir(parents=True)
        (machine.root / "etc/machine-id").write_text(f"{n:032x}\n")
        name = f"node-{n}"
        proc = start(machine, "run", NODE_NAME=name)
        if n % 4 == 0:  # inside the window, whatever the machine's load: the server made, its answer delayed
            wait_for(lambda name=name: any(s.name == name for s in cli.fake.servers), what="the server")
            time.sleep(chance.uniform(0.0, 0.4))
        else:  # a moment anywhere in the run (on a loaded machine it may come before the run sends anything)
            time.sleep(chance.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        finish(proc, time.monotonic(), timeout=10)
        rerun = run(machine, "run", NODE_NAME=name, timeout=60)
        named = [server for server in cli.fake.servers if server.name == name]
        assert len(named) <= 1, f"machine {n}: {len(named)} servers; rerun said:\n{rerun.stderr}"
        if rerun.exit_code == 0:
            assert [server.secret for server in named] == [saved(machine.root)["secret"]], rerun.stderr
        else:  # the killed run's server exists without its secret: found, and nothing registered again
            assert rerun.exit_code == 3 and "Not registering again" in rerun.stderr, rerun.stderr
            assert len(named) == 1
        outcomes.append(rerun.exit_code)
    assert set(outcomes) <= {0, 3}
    assert outcomes.count(3) >= 1  # some kills did land between the server's creation and its saved secret
    print(f"reruns: {outcomes.count(0)} finished, {outcomes.count(3)} found the killed run's server")


# --- 1b. a state or pending record damaged by a power loss (issue 18 item 6) ------------------------

DAMAGE = {
    "empty": lambda data: b"",
    "truncated": lambda data: data[: len(data) // 2],
    "NUL-filled": lambda data: bytes(len(data)),  # a file system without data journaling after a power loss
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_state_never_makes_a_second_server_the_rerun_looks_first(cli: Cli, damage: str) -> None:
    assert cli("run").exit_code == 0
    state = cli.root / STATE
    state.write_bytes(DAMAGE[damage](state.read_bytes()))

    first, second = cli("run"), cli("run")  # the unit restarts a run that exits 1

    assert first.exit_code == 1 and "it looks in the dashboard for this node's server" in first.stderr
    assert second.exit_code == 3, second.stderr
    assert "this node's saved state was damaged (kept aside as " in second.stderr
    assert "Not registering again: delete that server in the dashboard" in second.stderr
    assert len(cli.fake.servers) == 1 and len(cli.fake.registrations()) == 1

    cli.fake.servers.clear()  # the operator deletes the server whose secret was lost
    third = cli("run")
    assert third.exit_code == 0, third.stderr
    assert len(cli.fake.servers) == 1 and saved(cli.root)["secret"] == cli.fake.servers[0].secret
    assert cli("run").stdout.startswith("nothing to do")


def test_force_registers_beside_the_server_of_a_damaged_state(cli: Cli) -> None:
    assert cli("run").exit_code == 0
    (cli.root / STATE).write_bytes(b"")
    assert cli("run").exit_code == 1

    outcome = cli("run", "--force")

    assert outcome.exit_code == 0, outcome.stderr
    assert len(cli.fake.servers) == 2


@pytest.mark.parametrize("content", ["", '{"version": 1, "dash', "\0" * 64, '{"before": [1e999]}',
                                     '{"version": 1, "dashboard_url": "u", "name": "n", "tag": "t", '
                                     '"before": [1e999], "started_at": "s"}'])
def test_a_damaged_pending_record_on_a_finished_node_is_kept_aside_with_one_warning(cli: Cli, content: str) -> None:
    assert cli("run").exit_code == 0
    (cli.root / PENDING).write_text(content)
    seen = len(cli.fake.journal)

    first, second = cli("run"), cli("run")

    assert (first.exit_code, second.exit_code) == (0, 0), first.stderr
    assert "internal error" not in first.stderr
    assert first.stderr.count("it was kept aside, and a registration looks in the dashboard") == 1
    assert "kept aside" not in second.stderr and len(cli.fake.journal) == seen
    assert [p.name.startswith("pending.json.corrupt-") for p in (cli.root / PENDING).parent.glob("pending*")] == [True]


def test_a_damaged_pending_record_before_any_state_looks_for_the_server_first(cli: Cli) -> None:
    name = node_name(cli)
    cli.fake.create(name)  # the killed run's registration made it; its record was damaged
    (cli.root / PENDING).parent.mkdir(parents=True)
    (cli.root / PENDING).write_text('{"before": [1e999]}')

    outcome = cli("run")

    assert outcome.exit_code == 3, outcome.stderr
    assert "internal error" not in outcome.stderr and "Not registering again" in outcome.stderr
    assert len(cli.fake.servers) == 1 and cli.fake.registrations() == []


# --- 1c. the same dashboard under another spelling or name (issue 18 item 8) --------------------------

SPELLINGS = ["{url}/", "{url}/./", "{url}//", "HTTP://127.0.0.1:{port}", "http://[::ffff:127.0.0.1]:{port}",
             "http://127.0.0.1:{port}/a/../"]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_the_same_dashboard_spelled_otherwise_is_the_same_registration_without_a_request(cli: Cli,
                                                                                         spelling: str) -> None:
    assert cli("run").exit_code == 0
    seen = len(cli.fake.journal)
    url = spelling.format(url=cli.dashboard.url, port=cli.dashboard.port)

    outcome = cli("run", NEZHA_DASHBOARD_URL=url)

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.startswith("nothing to do")
    assert len(cli.fake.servers) == 1 and len(cli.fake.journal) == seen


def test_the_same_dashboard_under_another_name_is_found_by_the_saved_id_and_adopted(cli: Cli) -> None:
    assert cli("run").exit_code == 0
    [server] = cli.fake.servers
    assert saved(cli.root)["server_id"] == server.id
    other = f"http://localhost:{cli.dashboard.port}"

    outcome = cli("run", NEZHA_DASHBOARD_URL=other)

    assert outcome.exit_code == 0, outcome.stderr
    assert f"lists this node's server {server.id} ('{server.name}', tag 'AutoRegister'): the same dashboard" in (
        outcome.stderr)
    assert len(cli.fake.servers) == 1 and cli.fake.registrations()[1:] == []
    assert saved(cli.root)["dashboard_url"] == other and saved(cli.root)["secret"] == server.secret
    assert cli("run", NEZHA_DASHBOARD_URL=other).stdout.startswith("nothing to do")


def test_another_dashboard_without_the_saved_server_is_registered_with(cli: Cli) -> None:
    assert cli("run").exit_code == 0
    cli.fake.servers.clear()  # as a dashboard that never had this node's server

    outcome = cli("run", NEZHA_DASHBOARD_URL=f"http://localhost:{cli.dashboard.port}")

    assert outcome.exit_code == 0, outcome.stderr
    assert "this one has no server 1 named" in outcome.stderr
    assert len(cli.fake.servers) == 1 and saved(cli.root)["server_id"] == cli.fake.servers[0].id


def test_a_v1_node_under_another_url_of_its_dashboard_keeps_its_agent_and_records_the_url(v1cli: V1Cli) -> None:
    assert v1cli().exit_code == 0
    calls = len(v1cli.agent_calls())
    other = f"http://localhost:{v1cli.running.port}"

    outcome = v1cli(NEZHA_DASHBOARD_URL=other, NEZHA_PROBE_ADDRESS="127.0.0.1")  # as derived from the first URL

    assert outcome.exit_code == 0, outcome.stderr
    assert "the agent's config is the same: its uuid is this server on any URL of the dashboard" in outcome.stderr
    assert len(v1cli.agent_calls()) == calls and len(v1cli.fake.servers) == 1
    assert v1cli.state()["dashboard_url"] == other


# --- 2. SIGHUP, and an installer an earlier run left running --------------------------------------

def test_sighup_is_a_stop_like_sigterm_and_takes_the_installer_with_it(cli: Cli) -> None:
    import signal
    import time

    from tests.processes import finish, leftovers, lock_is_free, start, stub_processes, wait_for

    proc = start(cli, "run", "-v", "--deadline", "60", NEZHA_STUB_MODE="hang")
    wait_for(lambda: any("sleep 3600" in p for p in stub_processes(cli.record_dir)), what="the installer")

    proc.send_signal(signal.SIGHUP)
    finished = finish(proc, time.monotonic(), timeout=10)

    assert finished.exit_code == 129
    assert finished.stderr.rstrip("\n").splitlines()[-1] == (
        "error: stopped by SIGHUP; nothing was left half-done: run again to finish")
    assert stub_processes(cli.record_dir) == []
    assert leftovers(cli.root) == [] and lock_is_free(cli.root)
    assert not (cli.root / "var/lib/nezha-bootstrap/child").exists()
    assert saved(cli.root)["installed_at"] is None


def test_a_rerun_stops_the_installer_a_killed_run_left_before_starting_its_own(cli: Cli) -> None:
    import signal
    import time

    from tests.processes import finish, run, start, stub_processes, wait_for

    proc = start(cli, "run", "--deadline", "60", NEZHA_STUB_MODE="hang")
    wait_for(lambda: any("sleep 3600" in p for p in stub_processes(cli.record_dir)), what="the installer")
    proc.send_signal(signal.SIGKILL)
    finish(proc, time.monotonic(), timeout=10)
    assert any("sleep 3600" in p for p in stub_processes(cli.record_dir))  # install.sh runs on, orphaned

    rerun = run(cli, "run", timeout=60)

    assert rerun.exit_code == 0, rerun.stderr
    assert "warning: a command an earlier run started was still running (pid " in rerun.stderr
    assert stub_processes(cli.record_dir) == []
    assert len(cli.fake.servers) == 1 and len(cli.calls()) == 2


@pytest.mark.slow
@pytest.mark.parametrize("command", [("seal",), ("uninstall", "--purge")])
def test_seal_and_uninstall_stop_the_installer_a_killed_run_left_before_removing(cli: Cli,
                                                                                command: tuple[str, ...]) -> None:
    """Issue 18 item 11: the killed run's installer, still running, would write the old node's unit and
    secret into the sealed image after the removals."""
    import signal
    import time

    from tests.processes import finish, run, start, stub_processes, wait_for

    proc = start(cli, "run", "--deadline", "60", NEZHA_STUB_MODE="slow", NEZHA_STUB_DELAY="2")
    wait_for(lambda: any("sleep 2" in p for p in stub_processes(cli.record_dir)), what="the installer")
    proc.send_signal(signal.SIGKILL)
    finish(proc, time.monotonic(), timeout=10)

    done = run(cli, *command, "--root", str(cli.root), timeout=30)
    time.sleep(3)  # past the moment the orphaned installer would have written the unit

    assert done.exit_code == 0, done.stderr
    assert "a command an earlier run started was still running (pid " in done.stderr
    assert stub_processes(cli.record_dir) == []
    assert not (cli.root / "etc/systemd/system/nezha-agent.service").exists()
    assert [path for path in cli.root.rglob("*") if path.is_file() and cli.fake.servers[0].secret.encode()
            in path.read_bytes()] == []


# --- 10. what install.sh leaves in /opt/nezha/agent ----------------------------------------------

def test_the_release_zip_and_readme_install_sh_leaves_are_removed_after_a_verified_install(cli: Cli) -> None:
    outcome = cli("run")

    assert outcome.exit_code == 0, outcome.stderr
    assert sorted(path.name for path in (cli.root / "opt/nezha/agent").iterdir()) == ["nezha-agent"]


def test_the_leftovers_stay_when_the_install_did_not_verify(cli: Cli) -> None:
    outcome = cli("run", NEZHA_STUB_MODE="wrongunit")

    assert outcome.exit_code == 5
    assert (cli.root / "opt/nezha/agent/README.md").exists()  # nothing is cleaned up on an unverified install


def test_dry_run_shows_the_lookup_of_a_registration_left_under_way(cli: Cli) -> None:
    plant_pending(cli.root, "web-9", [3], cli.dashboard.url)

    outcome = cli("run", "--dry-run")

    assert outcome.exit_code == 0, outcome.stderr
    assert (f"GET {cli.dashboard.url}/api/v1/server/list?tag=AutoRegister (the registration of 'web-9' an earlier "
            "run left under way at 2026-01-01T00:00:00+00:00: stop if it made a server)") in outcome.stdout
    assert cli.fake.journal == []


def test_sigterm_while_the_register_answer_is_on_its_way_never_costs_a_second_server(cli: Cli) -> None:
    import signal
    import time

    from tests.processes import finish, run, start, wait_for

    cli.fake.faults.answer_delay = 2.0  # the server exists; its secret is on its way
    proc = start(cli, "run", "--deadline", "6")
    wait_for(lambda: bool(cli.fake.servers), what="the server")
    proc.send_signal(signal.SIGTERM)
    stopped = finish(proc, time.monotonic(), timeout=10)
    cli.fake.faults.answer_delay = 0.0

    rerun = run(cli, "run", timeout=60)

    assert stopped.exit_code in (0, 143), stopped.stderr  # 0: the answer arrived and its save was waited for
    assert len(cli.fake.servers) == 1
    if stopped.exit_code == 143:
        assert rerun.exit_code == 3 and "Not registering again" in rerun.stderr, rerun.stderr
    else:
        assert rerun.exit_code == 0, rerun.stderr
