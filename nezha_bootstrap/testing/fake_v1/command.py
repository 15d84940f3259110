"""A local Nezha v1/v2 dashboard and agent release host for rehearsals (profiles v1.x to v2.1+).

It answers as the real dashboards do (the project's notes on them: dashboard-v1-v2.md).

The command line of `python -m nezha_bootstrap.testing.fake_v1` (README, "Rehearsing with the fakes").
"""

from __future__ import annotations

import json
import time
from typing import Any

from nezha_bootstrap.testing.fake_v1.dashboard import FakeV1, serve_v1
from nezha_bootstrap.testing.fake_v1.records import new_agent_secret
from nezha_bootstrap.testing.fake_v1.versions import PROFILES


def _first_line(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.readline().rstrip("\n")


def _fake_from(args: Any, parser: Any) -> FakeV1:
    """The fake the command line asks for: credentials come from files, never from argv."""
    secret = _first_line(args.agent_secret_file).strip() if args.agent_secret_file else new_agent_secret()
    fake = FakeV1(profile=args.profile, agent_secrets={secret: 1})
    if args.token_file:
        token = _first_line(args.token_file).strip()
        if not (token.startswith("nzp_") and len(token) == 36 and token[4:].isalnum()) or not fake.has_tokens:
            parser.error("--token-file must hold nzp_ and 32 letters and digits, with --profile v2.1+")
        fake.add_token(value=token)
    if bool(args.username) != bool(args.password_file):
        parser.error("--username and --password-file go together")
    if args.username:
        fake.add_login(1, args.username, _first_line(args.password_file))
    return fake


def main(argv: list[str] | None = None) -> None:
    """Serve a fake v1/v2 dashboard and its release host in the foreground (the first-boot test runs it
    in a network namespace); `--journal`: one JSON line per request, `--enrollments`: one per agent call."""
    import argparse

    from nezha_bootstrap.config import AGENT_V1
    from nezha_bootstrap.testing.fake_v0 import append_json_lines, journal_line

    parser = argparse.ArgumentParser(prog="python -m nezha_bootstrap.testing.fake_v1",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8008)
    parser.add_argument("--profile", default="v2.1+", choices=PROFILES)
    parser.add_argument("--agent-secret-file", help="file holding the admin's agent secret [default: random]")
    parser.add_argument("--token-file", help="file holding an access token nzp_... the admin may use (v2.1+)")
    parser.add_argument("--username", help="a login of the admin, for `reconcile --username` (with --password-file)")
    parser.add_argument("--password-file", help="file holding that login's password (its first line)")
    parser.add_argument("--release", action="append", help=f"serve this agent version (repeatable) [{AGENT_V1}]")
    parser.add_argument("--journal", help="append one JSON line per request to this file")
    parser.add_argument("--enrollments", help="append one JSON line per agent-connect call to this file")
    args = parser.parse_args(argv)
    fake = _fake_from(args, parser)
    for version in args.release or [AGENT_V1]:
        fake.add_release(version)
    running = serve_v1(fake, args.host, args.port)
    print(json.dumps({"url": running.url, "profile": fake.profile, "releases": args.release or [AGENT_V1]}),
          flush=True)
    seen = joined = 0
    try:
        while True:
            time.sleep(0.2)
            with fake.lock:
                new, seen = fake.journal[seen:], len(fake.journal)
                calls, joined = fake.connections[joined:], len(fake.connections)
                names = {server.id: server.name for server in fake.servers}
            # The hook's body carries the agent secret: the enrollments file has what it tells.
            append_json_lines(args.journal, [{**journal_line(entry), "body": ""} if entry.path == "/_fake/agent-connect"
                                             else journal_line(entry) for entry in new])
            append_json_lines(args.enrollments, [
                {"uuid": call.uuid, "outcome": call.outcome, "server_id": call.server_id,
                 "server_name": names.get(call.server_id or 0), "time": call.at} for call in calls])
    except KeyboardInterrupt:
        running.stop()
