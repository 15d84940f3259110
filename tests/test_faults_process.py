"""Process faults: signals mid-step, runs racing on one root, a broken, read-only or full state dir."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import pytest

from tests.conftest import IN_CI, Cli
from tests.processes import (
    STATE_DIR,
    finish,
    leaks,
    leftovers,
    lock_is_free,
    run,
    start,
    stub_processes,
    wait_for,
)

pytestmark = pytest.mark.integration

STATE = f"{STATE_DIR}/state.json"
REGISTER = "/api/v1/server/register"
SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]
DEADLINE = 6  # one register attempt gets a third of it (2 s): the stop comes before that attempt's timeout


def stopped_line(signum: int) -> str:
    return f"error: stopped by {signal.Signals(signum).name}; nothing was left half-done: run again to finish"


def saved(cli: Cli) -> dict[str, Any]:
    return json.loads((cli.root / STATE).read_text())  # type: ignore[no-any-return]


def error_line(stderr: str) -> str:
    return stderr.rstrip("\n").splitlines()[-1]


# --- signals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_during_an_unanswered_registration_leaves_no_state_no_temp_files_and_a_free_lock(
    cli: Cli, signum: int
) -> None:
    cli.fake.faults.only_paths = (REGISTER,)
    cli.fake.faults.fail_next = ["hang"]
    proc = start(cli, "run", "-v", "--deadline", str(DEADLINE))
    wait_for(lambda: bool(cli.fake.registrations()), what="the register request")
    signalled = time.monotonic()

    proc.send_signal(signum)
    finished = finish(proc, signalled, timeout=10)

    assert finished.exit_code == 128 + signum
    assert finished.seconds < 2  # the documented bound: a stop ends a run within 2 s, never waits for the network
    assert error_line(finished.stderr) == (
        f"error: stopped by {signal.Signals(signum).name} after the register request got no answer; if the "
        "dashboard made the server anyway, its secret never arrived: delete it there. Run again to finish"
    )
    assert len(cli.fake.registrations()) == 1  # not retried after the stop
    assert "Traceback" not in finished.stderr
    assert not (cli.root / STATE).exists()
    assert leftovers(cli.root) == []
    assert lock_is_free(cli.root)
    assert leaks(cli, finished) == []


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_while_the_register_answer_is_on_its_way_stops_within_2_s_and_says_the_secret_may_be_lost(
    cli: Cli, signum: int
) -> None:
    # A stop waits only between a complete answer and its save (issue 10): never for the network.
    cli.fake.faults.answer_delay = 5.0  # the server exists; its secret is on its way
    proc = start(cli, "run", "-v", "--deadline", "30")
    wait_for(lambda: bool(cli.fake.servers), what="the server to be made")
    signalled = time.monotonic()

    proc.send_signal(signum)
    finished = finish(proc, signalled, timeout=10)

    assert finished.exit_code == 128 + signum
    assert finished.seconds < 2
    assert error_line(finished.stderr) == (
        f"error: stopped by {signal.Signals(signum).name} after the register request got no answer; if the "
        "dashboard made the server anyway, its secret never arrived: delete it there. Run again to finish"
    )
    assert not (cli.root / STATE).exists()
    assert cli.calls() == []  # stopped before the installer
    assert leftovers(cli.root) == [] and lock_is_free(cli.root)
    assert leaks(cli, finished) == []


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_during_install_kills_the_installer_and_the_next_run_only_installs(cli: Cli, signum: int) -> None:
    started = time.monotonic()
    proc = start(cli, "run", "-v", "--deadline", "60", NEZHA_STUB_MODE="hang")
    wait_for(lambda: any("sleep 3600" in p for p in stub_processes(cli.record_dir)), what="the installer")

    proc.send_signal(signum)
    finished = finish(proc, started, timeout=10)

    assert finished.exit_code == 128 + signum
    assert error_line(finished.stderr) == stopped_line(signum)
    assert "Traceback" not in finished.stderr
    assert stub_processes(cli.record_dir) == []
    [server] = cli.fake.servers
    assert (saved(cli)["secret"], saved(cli)["installed_at"]) == (server.secret, None)
    assert leftovers(cli.root) == []
    assert lock_is_free(cli.root)

    again = cli("run", "-v")

    assert again.exit_code == 0, again.stderr
    assert len(cli.fake.registrations()) == 1
    assert leaks(cli, finished) == []


# --- runs racing ---------------------------------------------------------------------------------

def test_eight_runs_started_at_once_register_exactly_once_and_all_succeed(cli: Cli) -> None:
    started = time.monotonic()
    procs = [start(cli, "run", "-v") for _ in range(8)]

    finished = [finish(proc, started, timeout=60) for proc in procs]

    assert [f.exit_code for f in finished] == [0] * 8, [f.stderr for f in finished]
    assert sorted(f.stdout.split(":")[0] for f in finished) == ["nothing to do"] * 7 + ["registered and installed"]
    assert len(cli.fake.registrations()) == 1 and len(cli.fake.servers) == 1
    assert len(cli.calls()) == 1
    assert leftovers(cli.root) == []
    assert leaks(cli, *finished) == []


# --- a state file that is not ours -------------------------------------------------------------

def full_state(cli: Cli, **changes: Any) -> bytes:
    state = {
        "version": 1, "dashboard_url": cli.dashboard.url, "name": "web-1", "tag": None,
        "probe_address": "probe.example.test", "probe_port": 5555, "tls": True,
        "secret": "AbCdEfGhIjKlMnOpQr", "machine_id": "0123456789abcdef0123456789abcdef",
        "registered_at": "2026-01-01T00:00:00+00:00", "installed_at": None,
    }
    state.update(changes)
    return json.dumps({k: v for k, v in state.items() if v != "<absent>"}).encode()


CORRUPT = [
    ("empty", lambda cli: b"", "it is not valid state JSON"),
    ("binary", lambda cli: b"\x00\xff\xfe garbage", "it is not valid state JSON"),
    ("nested too deep", lambda cli: b"[" * 100_000, "it is not valid state JSON"),
    ("a list", lambda cli: b"[1, 2]", "it has no version number"),
    ("version as text", lambda cli: full_state(cli, version="1"), "it has no version number"),
    ("version true", lambda cli: full_state(cli, version=True), "it has no version number"),
    ("secret missing", lambda cli: full_state(cli, secret="<absent>"), "fields are missing: secret"),
    ("secret a number", lambda cli: full_state(cli, secret=123), "fields have the wrong type: secret"),
    ("url null, port text", lambda cli: full_state(cli, dashboard_url=None, probe_port="5555"),
     "fields have the wrong type: dashboard_url, probe_port"),
    ("secret with a shell word", lambda cli: full_state(cli, secret="abc;reboot"),
     "the node secret is not letters and digits"),
]


@pytest.mark.parametrize(("content", "why"), [row[1:] for row in CORRUPT], ids=[row[0] for row in CORRUPT])
def test_a_corrupt_state_file_is_kept_aside_with_a_clear_message_never_a_traceback(
    cli: Cli, content: Any, why: str
) -> None:
    state_file = cli.root / STATE
    state_file.parent.mkdir(parents=True, mode=0o700)
    data = content(cli)
    state_file.write_bytes(data)

    outcome = cli("run", "-v")

    assert outcome.exit_code == 1
    [aside] = state_file.parent.glob("state.json.corrupt-*")
    assert error_line(outcome.stderr) == (
        f"error: the state file {state_file} is unreadable ({why}); it was kept aside as {aside}. "
        "Run again: it looks in the dashboard for this node's server before registering anything (a server "
        "whose secret went with that file is never registered twice)."
    )
    assert aside.read_bytes() == data
    assert "Traceback" not in outcome.stderr and "internal error" not in outcome.stderr
    assert cli.fake.journal == [] and cli.calls() == []
    assert leaks(cli) == []


def test_a_state_from_a_future_version_is_left_alone_and_nothing_is_sent(cli: Cli) -> None:
    state_file = cli.root / STATE
    state_file.parent.mkdir(parents=True, mode=0o700)
    future = full_state(cli, version=2, agent_uuid="9b1f0c4e-0000-4000-8000-000000000000")
    state_file.write_bytes(future)

    outcome = cli("run", "-v")

    assert outcome.exit_code == 1
    assert error_line(outcome.stderr) == (
        f"error: the state file {state_file} has version 2, written by a newer nezha-bootstrap (this one "
        "reads version 1); it was left as it is. Upgrade nezha-bootstrap, or move the file away to "
        "register this node again."
    )
    assert state_file.read_bytes() == future
    assert list(state_file.parent.glob("state.json.corrupt-*")) == []
    assert cli.fake.journal == [] and cli.calls() == []


# --- a read-only or full state directory ---------------------------------------------------------

def _namespace_mounts_work() -> bool:
    try:
        probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"],
                               capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.fixture(scope="module")
def mount_namespace() -> None:
    if not _namespace_mounts_work():
        if IN_CI:
            pytest.fail("CI must allow `unshare -m` and mounts (root): the read-only and full disk tests need them")
        pytest.skip("needs `unshare -m` and mount rights (root)")


# Each command runs in a private mount namespace: the mount is seen by the run alone and vanishes with it.
READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
FULL = 'mount -t tmpfs -o size=16k,mode=0700 tmpfs "$0" && (head -c 1M /dev/zero > "$0/filler" || true) && exec "$@"'


@pytest.mark.root
@pytest.mark.parametrize(
    ("script", "error"),
    [
        pytest.param(READ_ONLY, "error: cannot make the directory {dir} private (mode 0700): Read-only file system",
                     id="read-only"),
        pytest.param(FULL, "error: cannot write the state file {dir}/state.json: the disk is full; "
                           "nothing was registered", id="full"),
    ],
)
@pytest.mark.usefixtures("mount_namespace")
def test_a_state_directory_that_cannot_take_the_state_exits_1_before_registering(
    cli: Cli, script: str, error: str
) -> None:
    state_dir = cli.root / STATE_DIR
    state_dir.mkdir(parents=True, mode=0o700)

    finished = run(cli, "run", "-v", prefix=("unshare", "-m", "sh", "-c", script, str(state_dir)))

    assert finished.exit_code == 1, finished.stderr
    assert error_line(finished.stderr) == error.format(dir=state_dir)
    assert "Traceback" not in finished.stderr and "internal error" not in finished.stderr
    assert cli.fake.registrations() == []  # a server whose secret cannot be kept is never made
    assert leaks(cli, finished) == []
