"""7. hostile: time to exit under header trickle, `100 Continue`, body trickle and a silent resolver,
and from SIGTERM (issue 10's hostile networks: tests/hostile.py, on 127.0.0.1)."""

from __future__ import annotations

import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import TOKEN, Outcome, Plan, Target, base_env, timed_run

HOSTILE_CHILD = (
    "import sys, threading\n"
    "from nezha_bootstrap import http\n"
    "if sys.argv[1] == 'silent-resolver':\n"
    "    http.resolve = lambda host, port: threading.Event().wait(3600) or []\n"
    "from nezha_bootstrap.cli import main\n"
    "sys.argv = ['nezha-bootstrap', *sys.argv[2:]]\n"
    "main()\n"
)
V0_LIST = b'{"code": 200, "result": []}'
V0_SECRET = b"BenchSecret0123456"  # 18 letters and digits: a v0 register answer (simple=true)


def hostile_node(url: str, root: Path, resolver: str = "system", **settings: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment of one `run` against `url` with a fresh root."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
    env = {**base_env(), "NEZHA_DASHBOARD_URL": url, "NEZHA_TOKEN": TOKEN, "NEZHA_BOOTSTRAP_ROOT": str(root),
           "NEZHA_BOOTSTRAP_REHEARSAL": "1",
           "NEZHA_PROBE_ADDRESS": "probe.example.test", "NEZHA_INSTALL_SCRIPT_SHA256": "0" * 64, **settings}
    return [sys.executable, "-c", HOSTILE_CHILD, resolver, "run"], env



def run(plan: Plan) -> Outcome:
    """Seconds to exit under header trickle, `100 Continue`, body trickle and a silent resolver, and
    from SIGTERM to exit while each holds the run."""
    from tests.hostile import HostileServer, Route

    deadline = plan.sizes.hostile_deadline
    cases = {"header_trickle": "header_trickle", "continue": "continue", "body_trickle": "body_trickle",
             "silent_resolver": "silent"}
    figures: dict[str, Any] = {"deadline_s": deadline}
    targets, broken = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, mode in cases.items():
            resolver = "silent-resolver" if name == "silent_resolver" else "system"
            with HostileServer(Route(mode)) as server:
                url = "http://dashboard.invalid:8008" if resolver != "system" else server.url
                argv, env = hostile_node(url, Path(tmp) / name, resolver, NEZHA_DASHBOARD_GENERATION="v0")
                to_exit, code = timed_run([*argv, "--deadline", f"{deadline:g}"], env)
                argv, env = hostile_node(url, Path(tmp) / f"{name}-stop", resolver, NEZHA_DASHBOARD_GENERATION="v0")
                to_stop, stop_code = timed_run([*argv, "--deadline", "60"], env, stop_after=1.5)
            figures[name] = {"start_to_exit_s": to_exit, "exit_code": code, "sigterm_to_exit_s": to_stop,
                             "sigterm_exit_code": stop_code}
            targets.append(Target(f"hostile: {name} start->exit (exit {code})", to_exit, deadline + 2.0, "s",
                                  f"its start; --deadline {deadline:g} s plus 2 s (issue 10)"))
            targets.append(Target(f"hostile: {name} SIGTERM->exit (exit {stop_code})", to_stop, 2.0, "s",
                                  "the SIGTERM sent 1.5 s into the run; README: a signal ends a run within 2 s"))
            # README's exit codes: 4 when the dashboard stays unreachable to the deadline, 143 on SIGTERM
            for what, ended, expected in (("start->exit", code, 4), ("SIGTERM->exit", stop_code, 143)):
                if ended != expected:
                    broken.append(f"hostile: {name} {what} exited with {ended}, expected {expected}")
    return Outcome(figures, targets, broken)

