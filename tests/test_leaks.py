"""No scenario shows the API token or a node secret: not on stdout or stderr, not in --json, not in a file.

Every scenario of the other CLI tests runs here again with -v (and once more with --json); then every
output and every file under the root, except the 0600 state file and the agent unit, is searched.
"""

from __future__ import annotations

import fcntl
import json
import shlex
import stat
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from nezha_bootstrap import demo
from nezha_bootstrap.agent import AGENT_V0, AGENT_V1
from nezha_bootstrap.testing.fake_v0 import FakeDashboard, serve
from nezha_bootstrap.testing.fake_v1 import FakeV1, serve_v1
from nezha_bootstrap.testing.grpc_port import AgentPort
from tests import processes
from tests.conftest import TOKEN, Cli, V1Cli, leak_scan, refusing_port, secrets_of
from tests.processes import Finished
from tests.test_run import STATE, UNIT

pytestmark = pytest.mark.integration

WRONG_TOKEN = "NotTheTokenNotTheTokenNotTheTok1"
URL_PASSWORD = "pa55w0rdInTheUrl"
Scenario = Callable[[Cli, tuple[str, ...]], tuple[str, ...]]  # returns extra values that must not show


def first_and_second_run(cli: Cli, flags: tuple[str, ...]) -> tuple[str, ...]:
    cli("run", *flags)
    cli("run", *flags)
    return ()


def every_request_field(cli: Cli, flags: tuple[str, ...]) -> tuple[str, ...]:
    cli("run", *flags, "--tag", "edge", "--note", "rack 4", "--show-for-guest", "--mirror", "cn",
        "--agent-flag", "--gpu", NODE_NAME='say "hi" 🚀 {machine_id}', NEZHA_PROBE_ADDRESS="2001:db8::1",
        NEZHA_PROBE_PORT="8443", CN="1")
    return ()


def installer_fails_then_resumes(cli: Cli, flags: tuple[str, ...]) -> tuple[str, ...]:
    cli("run", *flags, NEZHA_STUB_MODE="exit1")
    cli("run", *flags, "--dry-run")
    cli("run", *flags)
    return ()


def installer_that_prints_the_secret(cli: Cli, flags: tuple[str, ...]) -> tuple[str, ...]:
    script = cli.fake.files["/install.sh"]
    shebang, rest = script.split(b"\n", 1)
    cli.fake.files["/install.sh"] = (
        shebang + b'\necho "called with: $*"\necho "secret: ${4:-}" >&2\nenv | grep -i token || true\n' + rest
    )
    cli("run", *flags, NEZHA_STUB_MODE="exit1")
    cli("run", *flags)
    return ()


def unit_not_as_asked(cli: Cli, flags: tuple[str, ...]) -> tuple[str, ...]:
    cli("run", *flags, NEZHA_STUB_MODE="nounit")
    cli("run", *flags, NEZHA_STUB_MODE="wrongunit")
    return ()


def installer_hangs(cli: Cli, flags: tuple[str, ...]) -> tuple[str, ...]:
    cli("run", *flags, NEZHA_STUB_MODE="hang", NEZHA_BOOTSTRAP_DEADLINE="1")
    return ()


def bad_script(cli: Cli, flags: tuple[str, ...]) -> tuple[str, ...]:
    cli("run", *flags, NEZHA_INSTALL_SCRIPT_SHA256="0" * 64)
    cli("run", *flags, NEZHA_INSTALL_SCRIPT_URL=f"{cli.dashboard.url}/missing.sh")
    return ()


def registers_anew(cli: Cli, flags: tuple[str, ...]) -> tuple[str, ...]:
    cli("run", *flags)
    (cli.root / "etc/machine-id").write_text("f" * 32 + "\n")
    cli("run", *flags)
    cli("run", *flags, "--force")
    cli("run", *flags, NEZHA_PROBE_ADDRESS="probe2.example.test")
    cli("run", *flags, NODE_NAME="renamed")
    other = FakeDashboard(TOKEN)
    with serve(other) as running:
        cli("run", *flags, NEZHA_DASHBOARD_URL=running.url)
    return tuple(secrets_of(other))


def token_sources(cli: Cli, flags: tuple[str, ...]) -> tuple[str, ...]:
    token_file = cli.root.parent / "token"
    token_file.write_text(TOKEN + "\n")
    cli("run", *flags, "--token", TOKEN, NEZHA_TOKEN=None)
    cli("run", *flags, "--token-file", str(token_file), "--force", NEZHA_TOKEN=None)
    cli("run", *flags, "--token-file", "-", "--force", input=TOKEN + "\n", NEZHA_TOKEN=None)
    cli("run", *flags, "--token", TOKEN, "--token-file", str(token_file))
    return ()


def refused(cli: Cli, flags: tuple[str, ...]) -> tuple[str, ...]:
    cli("run", *flags, NEZHA_TOKEN=WRONG_TOKEN)
    cli("run", *flags, NEZHA_TOKEN=f"Bearer:{TOKEN}")
    cli.fake.faults.v1 = "v1.0"
    cli("run", *flags)
    return (WRONG_TOKEN,)


def dashboard_trouble(cli: Cli, flags: tuple[str, ...]) -> tuple[str, ...]:
    with refusing_port() as port:
        cli("run", *flags, NEZHA_DASHBOARD_URL=f"http://127.0.0.1:{port}", NEZHA_BOOTSTRAP_DEADLINE="1")
    cli.fake.faults.fail_next = [503, 429, "drop"]
    cli.fake.faults.retry_after = "0"
    cli("run", *flags)
    return ()


def lost_answer(cli: Cli, flags: tuple[str, ...]) -> tuple[str, ...]:
    cli.fake.faults.lost_response = 1
    cli("run", *flags)
    return ()


def local_trouble(cli: Cli, flags: tuple[str, ...]) -> tuple[str, ...]:
    cli("run", *flags)
    lock = cli.root / "var/lib/nezha-bootstrap/lock"
    with open(lock, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        cli("run", *flags, "--force", "--lock-timeout", "0.2")
    (cli.root / STATE).write_text((cli.root / STATE).read_text()[:40])  # cut off in the middle
    cli("status", *flags)
    cli("run", *flags, "--dry-run")
    cli("run", *flags)  # keeps the broken file aside
    cli("run", *flags)
    return ()


def invalid_settings(cli: Cli, flags: tuple[str, ...]) -> tuple[str, ...]:
    url = cli.dashboard.url.replace("http://", f"http://admin:{URL_PASSWORD}@")
    cli("run", *flags, NEZHA_DASHBOARD_URL=url, NEZHA_PROBE_PORT="0", NEZHA_AGENT_FLAGS="--insecure")
    cli("run", *flags, NEZHA_TOKEN=f"{TOKEN} extra")
    cli("check", *flags, NEZHA_DASHBOARD_URL=url)
    return (URL_PASSWORD,)


def dry_runs(cli: Cli, flags: tuple[str, ...]) -> tuple[str, ...]:
    cli("run", *flags, "--dry-run", "--tag", "edge")
    cli("run", *flags)
    cli("run", *flags, "--dry-run", "--force")
    cli("run", *flags, "--dry-run", NEZHA_PROBE_ADDRESS="probe2.example.test")
    return ()


def checks_and_status(cli: Cli, flags: tuple[str, ...]) -> tuple[str, ...]:
    cli("status", *flags)
    with refusing_port() as port:
        cli("check", *flags, NEZHA_PROBE_ADDRESS="127.0.0.1", NEZHA_PROBE_PORT=str(port))
    cli("check", *flags, NEZHA_PROBE_ADDRESS="127.0.0.1", NEZHA_TOKEN=WRONG_TOKEN,
        NEZHA_INSTALL_SCRIPT_SHA256="0" * 64)
    cli("run", *flags)
    with AgentPort() as agent_port:
        cli("check", *flags, "--no-tls", NEZHA_PROBE_ADDRESS="127.0.0.1", NEZHA_PROBE_PORT=str(agent_port.port))
    cli("status", *flags)
    return (WRONG_TOKEN,)


SCENARIOS: list[Scenario] = [
    first_and_second_run, every_request_field, installer_fails_then_resumes, installer_that_prints_the_secret,
    unit_not_as_asked, installer_hangs, bad_script, registers_anew, token_sources, refused, dashboard_trouble,
    lost_answer, local_trouble, invalid_settings, dry_runs, checks_and_status,
]


@pytest.mark.parametrize("flags", [("-v",), ("-v", "--json")], ids=["verbose", "json"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_no_output_and_no_file_shows_a_secret(cli: Cli, scenario: Scenario, flags: tuple[str, ...]) -> None:
    extra = scenario(cli, flags)

    assert cli.outputs, "the scenario ran nothing"
    assert leak_scan(cli, extra) == []
    assert installer_environments_with_the_token(cli.record_dir) == []


def installer_environments_with_the_token(record_dir: Path) -> list[str]:
    """The installer never needs the API token, so its environment never holds it."""
    return [str(env) for env in record_dir.glob("call-*/env") if TOKEN.encode() in env.read_bytes()]


def test_the_scenarios_do_reach_the_secrets(cli: Cli) -> None:
    """The scan is not vacuous: the secret is in the state file and the unit, which it skips."""
    installer_that_prints_the_secret(cli, ("-v",))

    [server] = cli.fake.servers
    assert server.secret in (cli.root / STATE).read_text()
    assert server.secret in (cli.root / UNIT).read_text()
    assert any("called with: install_agent probe.example.test 5555 *** --tls" in o.stderr for o in cli.outputs)


# --- demo: its own fake dashboard with its own token ----------------------------------------------

@pytest.fixture
def demo_fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeDashboard]]:
    made: list[FakeDashboard] = []

    class Recorded(FakeDashboard):
        def __init__(self, token: str) -> None:
            super().__init__(token)
            made.append(self)

    monkeypatch.setattr(demo, "FakeDashboard", Recorded)
    yield made


@pytest.mark.parametrize("flags", [("-v",), ("-v", "--json")], ids=["verbose", "json"])
def test_demo_shows_no_secret(cli: Cli, demo_fakes: list[FakeDashboard], flags: tuple[str, ...]) -> None:
    outcome = cli("demo", *flags)

    [fake] = demo_fakes
    needles = [*fake.tokens, *(server.secret for server in fake.servers)]
    assert outcome.exit_code == 0
    assert len(needles) == 2
    assert [n for n in needles if n in outcome.stdout + outcome.stderr] == []


# --- every flow as its own processes: nothing carries over from an earlier run in the same process -----
#
# In-process scenarios share the redaction registry between runs: a secret registered by the first run
# still masks the second. Here each command is a separate `python -m nezha_bootstrap`, as on a real
# machine (a rerun after a reboot, `status` from a shell), so a run that forgets to register a secret it
# read back from the state shows it.

SECRET_FILES = (  # written 0600 on purpose: the secret is their content
    "var/lib/nezha-bootstrap/state.json",
    "var/lib/nezha-bootstrap/pending.json",
    "etc/systemd/system/nezha-agent.service",  # v0: the agent's own install writes `-p SECRET` into ExecStart
    "opt/nezha/agent/config.yml",  # v1/v2: the agent's config, its client_secret
)


def spellings(secret: str) -> set[str]:
    """Every way a secret could be written out: raw, stripped, URL-encoded, JSON-escaped (ASCII and not,
    with and without quotes), shell-quoted (single and double quotes), and Python's repr."""
    found = set()
    for value in {secret, secret.strip()}:
        found |= {
            value,
            urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value),
            json.dumps(value), json.dumps(value)[1:-1],
            json.dumps(value, ensure_ascii=False), json.dumps(value, ensure_ascii=False)[1:-1],
            shlex.quote(value), '"' + "".join("\\" + c if c in '"\\`$' else c for c in value) + '"',
            repr(value), repr(value)[1:-1],
        }
    return found


def test_spellings_cover_each_escape() -> None:
    secret = ' a"b\\c$d é '

    assert {
        ' a"b\\c$d é ', 'a"b\\c$d é', "%20a%22b%5Cc%24d%20%C3%A9%20", "+a%22b%5Cc%24d+%C3%A9+",
        'a\\"b\\\\c$d \\u00e9', 'a\\"b\\\\c$d é', "' a\"b\\c$d é '", '"a\\"b\\\\c\\$d é"', "' a\"b\\\\c$d é '",
    } <= spellings(secret)


@dataclass
class Leaks:
    """What a sequence of processes showed, and where a secret turned up in it."""

    runs: list[tuple[str, Finished]] = field(default_factory=list)

    def run(self, session: Any, *args: str, expect: int | None = 0, **env: str | None) -> Finished:
        finished = processes.run(session, *args, timeout=60, **env)
        self.runs.append((" ".join(args), finished))
        if expect is not None:
            assert finished.exit_code == expect, f"{args}: exit {finished.exit_code}\n{finished.stderr}"
        return finished

    def found(self, secrets: Iterable[str], root: Path) -> list[str]:
        forms = {form: secret for secret in secrets for form in spellings(secret) if len(form) >= 3}
        places = []
        for i, (args, finished) in enumerate(self.runs):
            for stream, text in (("stdout", finished.stdout), ("stderr", finished.stderr)):
                places += [f"run {i} ({args}) {stream}: {form!r}" for form in forms if form in text]
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            relative = str(path.relative_to(root))
            if relative in SECRET_FILES:
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{relative} holds a secret but is not 0600"
                continue
            data = path.read_bytes()
            places += [f"{relative}: {form!r}" for form in forms if form.encode() in data]
        return places


FLAGS = [("-v",), ("-v", "--json")]
FLAG_IDS = ["verbose", "json"]


@pytest.mark.slow
@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
def test_v0_register_first_run_resumed_run_status_check_and_uninstall_each_in_its_own_process(
    cli: Cli, flags: tuple[str, ...]
) -> None:
    script = cli.fake.files["/install.sh"]
    shebang, rest = script.split(b"\n", 1)
    # An installer that echoes what it was given: the node secret is its 4th argument.
    cli.fake.files["/install.sh"] = shebang + b'\necho "secret: ${4:-}" >&2\n' + rest
    leaks = Leaks()

    leaks.run(cli, "run", *flags, expect=5, NEZHA_STUB_MODE="exit1")  # registered, the install fails
    leaks.run(cli, "run", *flags)  # a new process resumes: the secret comes from the state only
    leaks.run(cli, "run", *flags)  # nothing to do
    leaks.run(cli, "status", *flags)
    leaks.run(cli, "check", *flags, expect=None, NEZHA_PROBE_ADDRESS="127.0.0.1")
    leaks.run(cli, "uninstall", "--root", str(cli.root), *flags)

    [server] = cli.fake.servers
    assert any("secret: ***" in finished.stderr for _, finished in leaks.runs[:2]), "the installer echoed nothing"
    assert leaks.found(secrets_of(cli.fake), cli.root) == []


@pytest.mark.slow
@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
def test_v0_direct_first_run_rerun_status_check_and_seal_each_in_its_own_process(
    cli: Cli, flags: tuple[str, ...]
) -> None:
    host = FakeV1()
    host.add_release(AGENT_V0)
    leaks = Leaks()
    with serve_v1(host) as releases:
        direct = {"NEZHA_INSTALL_METHOD": "direct", "NEZHA_AGENT_BASE_URL": f"{releases.url}/releases"}
        leaks.run(cli, "run", *flags, expect=5, NEZHA_STUB_MODE="exit1", **direct)
        leaks.run(cli, "run", *flags, **direct)
        leaks.run(cli, "run", *flags, **direct)
        leaks.run(cli, "status", *flags)
        leaks.run(cli, "check", *flags, expect=None, NEZHA_PROBE_ADDRESS="127.0.0.1", **direct)
        leaks.run(cli, "seal", "--root", str(cli.root), *flags)

    assert len(cli.fake.servers) == 1
    assert leaks.found(secrets_of(cli.fake), cli.root) == []


@pytest.mark.slow
@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
@pytest.mark.parametrize("with_token", [False, True], ids=["v1-direct", "v2-token"])
def test_v1_v2_first_run_rerun_status_check_and_uninstall_each_in_its_own_process(
    root: Path, flags: tuple[str, ...], with_token: bool
) -> None:
    fake = FakeV1(profile="v2.1+")
    fake.add_release(AGENT_V1)
    token = fake.add_token() if with_token else None
    wrong = "nzp_" + "Z" * 32
    leaks = Leaks()
    with serve_v1(fake) as running:
        session = V1Cli(running, fake, root)
        named = {"NEZHA_TOKEN": token, "NODE_NAME": "web-1"} if token else {}
        leaks.run(session, "run", *flags, **named)  # enrolls: the agent gets the secret from config.yml
        leaks.run(session, "run", *flags, **named)
        leaks.run(session, "run", *flags, **named)
        leaks.run(session, "status", *flags)
        leaks.run(session, "check", *flags, expect=None, **named)
        if token:
            leaks.run(session, "run", *flags, expect=3, NEZHA_TOKEN=wrong, NODE_NAME="web-2")
        leaks.run(session, "uninstall", "--root", str(root), *flags)

    assert len(fake.servers) == 1
    secrets = [fake.agent_secret, *([token, wrong] if token else [])]
    assert leaks.found(secrets, root) == []
