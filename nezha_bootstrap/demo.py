"""`demo`: the real `run` flow against the local fake dashboard and the stub installer, twice."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nezha_bootstrap import redact
from nezha_bootstrap.config import Settings, build
from nezha_bootstrap.facts import gather
from nezha_bootstrap.node import ThisNode
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter
from nezha_bootstrap.testing.fake_v0 import FakeDashboard, serve
from nezha_bootstrap.testing.stubrecord import read_calls
from nezha_bootstrap.v0 import flow


def run_demo(reporter: Reporter) -> None:
    """Register and install into a temporary root, show what happened, then show the rerun does nothing."""
    token = secrets.token_hex(16)
    redact.register(token)
    fake = FakeDashboard(token)
    root = Path(tempfile.mkdtemp(prefix="nezha-bootstrap-demo-"))
    try:
        with serve(fake) as running, _demo_environment(root / "var/lib/nezha-stub", running.url):
            (root / "etc").mkdir()
            (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
            paths = Paths(root)
            settings = Settings(
                dashboard_url=running.url, token=token, name="demo-{hostname}", tag="demo",
                script_url=f"{running.url}/install.sh", script_sha256=fake.script_sha256,
                root=str(root), deadline=30,
            )
            facts = gather(paths)
            config = build(settings, facts).config
            reporter.result(f"fake v0 dashboard on {running.url}; temporary root {root}")
            reporter.result("\n== first run ==")
            this = ThisNode(config, facts, paths, reporter)
            first = flow.run(this)
            _show_first(reporter, fake, paths, first.outcome)
            reporter.result("\n== second run ==")
            before = len(fake.journal)
            second = flow.run(this)
            reporter.result(f"outcome: {second.outcome}; requests made: {len(fake.journal) - before}")
            reporter.emit_json({
                "first": first.outcome, "second": second.outcome,
                "registrations": len(fake.registrations()), "second_run_requests": len(fake.journal) - before,
                "exit_code": 0,
            })
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _demo_environment(record: Path, dashboard: str) -> Iterator[None]:
    """The stub records where the demo reads and installs normally, the stub agent connects to the fake
    (so that the run sees it online), and the local fake is reached directly (httpx sends even 127.0.0.1
    through HTTP(S)_PROXY unless NO_PROXY names it)."""
    keys = ("NEZHA_STUB_RECORD", "NEZHA_STUB_MODE", "NEZHA_STUB_DASHBOARD", "NO_PROXY", "no_proxy")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ["NEZHA_STUB_RECORD"] = str(record)
    os.environ["NEZHA_STUB_DASHBOARD"] = dashboard
    os.environ.pop("NEZHA_STUB_MODE", None)
    for key in ("NO_PROXY", "no_proxy"):
        os.environ[key] = ",".join(filter(None, [saved[key], "127.0.0.1"]))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _show_first(reporter: Reporter, fake: FakeDashboard, paths: Paths, outcome: str) -> None:
    reporter.result(f"outcome: {outcome}")
    for entry in fake.journal:
        line = f"dashboard received: {entry.method} {entry.path}" + (f"?{entry.query}" if entry.query else "")
        if entry.body:
            line += f" body={entry.body.decode('utf-8', 'replace')}"
        reporter.result(line + f" (Authorization: {'<token>' if entry.headers.get('authorization') else 'none'})")
    for call in read_calls(paths.under("/var/lib/nezha-stub")):
        reporter.result(f"installer called: sh install.sh {' '.join(call.argv)}")
        reporter.result(f"  cwd {call.cwd}, stdin {call.stdin}, CN {call.env.get('CN', '(unset)')}")
    reporter.result(f"unit written ({paths.agent_unit}):")
    for line in paths.agent_unit.read_text().splitlines():
        reporter.result(f"  {line}")
    reporter.result("dashboard now lists: " + json.dumps([s.listed()["name"] for s in fake.servers]))
