"""Installer faults: each exits 5, keeps the secret, leaves nothing running or half-written, and the
next run installs again without registering a second server."""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any, Callable

import pytest

from nezha_bootstrap.testing.fake_v0 import FakeDashboard
from tests.conftest import Cli
from tests.processes import leaks, leftovers, stub_processes

pytestmark = pytest.mark.integration

SCRIPT = "/install.sh"
STATE = "var/lib/nezha-bootstrap/state.json"
DEADLINE = 3


def fail_script(*faults: Any) -> Callable[[FakeDashboard], None]:
    def setup(fake: FakeDashboard) -> None:
        fake.faults.only_paths = (SCRIPT,)
        fake.faults.fail_next = list(faults)
    return setup


def alter_script(fake: FakeDashboard) -> None:
    fake.files[SCRIPT] += b"\necho 'one line more'\n"


def no_fault(fake: FakeDashboard) -> None:
    pass


def gave_up(what: str) -> str:
    return f"download install.sh: {what}; gave up after {{n}} attempt(s) within the {DEADLINE} s deadline"


# id, what the fake does, the stub's mode, the error ({url} {root} {sha} {expected} filled in, {n} any
# number of attempts), installer calls
FAULTS = [
    ("404", fail_script(404), None, "downloading {url}/install.sh: HTTP 404", 0),
    ("slow body", fail_script(*[("slow", b"#!/bin/sh\n" * 40)] * 20), None,
     gave_up("no answer from 127.0.0.1 in time"), 0),
    ("truncated body", fail_script(*[("truncated", b"#!/bin/sh\n" * 40)] * 100), None,
     gave_up("the connection to 127.0.0.1 broke: peer closed connection without sending complete "
             "message body (received 400 bytes, expected 800)"), 0),
    ("hash mismatch", alter_script, None,
     "the install script's SHA-256 is {sha}, expected {expected}: refusing to run it "
     "(the URL serves another version, or the download was altered)", 0),
    ("exit 1", no_fault, "exit1", "install.sh exited with status 1; run again with -v to see its output", 1),
    ("never ends", no_fault, "hang", f"install.sh did not finish within {DEADLINE} s; its process group was killed", 1),
    ("no unit", no_fault, "nounit",
     "the installer exited, but wrote no agent unit ({root}/etc/systemd/system/nezha-agent.service "
     "or {root}/etc/init.d/nezha-agent); install.sh reports success even when the agent failed "
     "to install. Run again with -v to see its output", 1),
    ("wrong unit", no_fault, "wrongunit",
     "the agent unit does not start the agent as asked: server address, TLS differ", 1),
]


def saved(cli: Cli) -> dict[str, Any]:
    return json.loads((cli.root / STATE).read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("setup", "mode", "error", "calls"), [row[1:] for row in FAULTS], ids=[row[0] for row in FAULTS]
)
def test_an_installer_fault_exits_5_and_the_next_run_installs_without_registering(
    cli: Cli, setup: Callable[[FakeDashboard], None], mode: str | None, error: str, calls: int
) -> None:
    original = cli.fake.files[SCRIPT]
    pinned = hashlib.sha256(original).hexdigest()
    setup(cli.fake)
    started = time.monotonic()

    outcome = cli("run", "-v", NEZHA_BOOTSTRAP_DEADLINE=str(DEADLINE), NEZHA_STUB_MODE=mode,
                  NEZHA_INSTALL_SCRIPT_SHA256=pinned)

    assert outcome.exit_code == 5, outcome.stderr
    # the documented bound: one step (the download or the install) waits out its deadline, plus 2 s at most
    assert time.monotonic() - started < DEADLINE + 2
    expected = error.format(url=cli.dashboard.url, root=cli.root, expected=pinned, n="<N>",
                            sha=hashlib.sha256(cli.fake.files[SCRIPT]).hexdigest())
    pattern = re.escape(f"error: {expected}").replace("<N>", r"\d+")
    assert re.fullmatch(pattern, outcome.stderr.splitlines()[-1]), outcome.stderr
    [server] = cli.fake.servers
    assert (saved(cli)["secret"], saved(cli)["installed_at"]) == (server.secret, None)
    assert len(cli.calls()) == calls
    assert leftovers(cli.root) == []
    assert stub_processes(cli.record_dir) == []

    cli.fake.faults.fail_next = []
    cli.fake.files[SCRIPT] = original
    again = cli("run", "-v")

    assert again.exit_code == 0, again.stderr
    assert "plan: install only (registered earlier, the install did not finish)" in again.stderr
    assert len(cli.fake.registrations()) == 1 and cli.fake.servers == [server]
    assert cli.calls()[-1].argv[3] == server.secret
    assert saved(cli)["installed_at"] is not None
    assert leftovers(cli.root) == []
    assert leaks(cli) == []
