"""Start a zipapp as a node does, with this python3 and nothing installed: `--version`, `demo`, and a
real `run` against the fake v0 dashboard the archive itself carries (on 127.0.0.1), twice.

    python3 packaging/smoke_zipapp.py dist/nezha-bootstrap-<version>-x86_64.pyz

Exit 0 when every check passes. The release workflow runs it on Python 3.9 and 3.11 (setup-python:
no packages beyond pip); tests/test_packaging.py runs it too. Standard library only.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

TIMEOUT = 120


def start(pyz: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python3 -I PYZ ARGS` (no site-packages), its output kept; exit status checked by the caller."""
    return subprocess.run([sys.executable, "-I", str(pyz), *args], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL, cwd=env["HOME"])


def check(what: str, done: subprocess.CompletedProcess[str], expect: str = "") -> None:
    if done.returncode != 0 or expect not in done.stdout:
        sys.exit(f"FAIL {what}: exit {done.returncode}, wanted {expect!r} on stdout\n{done.stdout}{done.stderr}")
    print(f"ok   {what}")


def run_against_fake(pyz: Path, env: dict[str, str], work: Path) -> None:
    """Two `run`s against the fake: one registration, the stub agent installed, nothing on the second."""
    sys.path.insert(0, str(pyz))  # the fake dashboard and its stub installer, from the archive under test
    from nezha_bootstrap.testing.fake_v0 import FakeDashboard, serve

    token = secrets.token_hex(16)
    fake = FakeDashboard(token)
    root = work / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
    with serve(fake) as running:
        node = {**env, "NEZHA_DASHBOARD_URL": running.url, "NEZHA_TOKEN": token, "NODE_NAME": "smoke-node",
                "NEZHA_PROBE_ADDRESS": "probe.example.test", "NEZHA_INSTALL_SCRIPT_URL": f"{running.url}/install.sh",
                "NEZHA_INSTALL_SCRIPT_SHA256": fake.script_sha256, "NEZHA_BOOTSTRAP_ROOT": str(root),
                "NEZHA_BOOTSTRAP_REHEARSAL": "1",
                "NEZHA_BOOTSTRAP_DEADLINE": "30", "NEZHA_STUB_RECORD": str(work / "stub-record"),
                "NO_PROXY": "127.0.0.1"}
        check("run (registers and installs the stub agent)", start(pyz, ["run"], node), "registered")
        check("run again (nothing to do)", start(pyz, ["run"], node))
        registrations = len(fake.registrations())
    if registrations != 1 or not (root / "etc/systemd/system/nezha-agent.service").is_file():
        sys.exit(f"FAIL run: {registrations} registrations, agent unit present: "
                 f"{(root / 'etc/systemd/system/nezha-agent.service').is_file()}")
    print("ok   one registration, the agent unit written")


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: python3 packaging/smoke_zipapp.py PYZ")
    pyz = Path(argv[1]).resolve()
    print(f"{pyz.name} on Python {sys.version.split()[0]} ({sys.executable})")
    with tempfile.TemporaryDirectory(prefix="nezha-smoke-") as tmp:
        work = Path(tmp)
        (work / "home").mkdir()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work / "home"),
               "NEZHA_BOOTSTRAP_CACHE": str(work / "cache")}
        version = pyz.name.split("-")[2]
        check("--version", start(pyz, ["--version"], env), version)
        check("demo", start(pyz, ["demo"], env), "127.0.0.1")
        run_against_fake(pyz, env, work)


if __name__ == "__main__":
    main(sys.argv)
