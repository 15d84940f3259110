"""Benchmarks of issue 4: recovery, fleet, overhead and memory, against the local fake dashboard.

    python benchmarks/bench.py [--quick] [--only NAME] [--json OUT] [--check]

Prints a table and writes JSON (default benchmarks/results/latest.json). Only 127.0.0.1 is used;
every wait is bounded. Without --check the figures are measurements, not assertions: the exit status
is 0 whether or not a target is met (the table and the JSON say which), and non-zero only if a
benchmark broke. With --check the exit status is 1 when a run it timed ended with another exit code
than it should (a crash, a run expected to succeed that failed, a refusal with the wrong code) or a
figure missed its target; each is named on stderr as a `check:` line.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

from nezha_bootstrap.config import Settings, build
from nezha_bootstrap.errors import BootstrapError, DashboardUnreachable
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.http import make_client
from nezha_bootstrap.retry import with_retries
from nezha_bootstrap.testing.fake_v0 import FakeDashboard, serve
from nezha_bootstrap.testing.fake_v1 import FakeV1, serve_v1
from nezha_bootstrap.v0.api import Dashboard, Registration

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.hostile: the hostile server the tests use too
DEFAULT_OUT = HERE / "results" / "latest.json"
# The seed lives in shared/ beside the repository (a CI clone gets a copy there too).
SEED_FILE = Path(__file__).resolve().parents[2] / "shared/seed/nezha-api-and-register-script.txt"
SEED_INSTALL_URL = "https://raw.githubusercontent.com/nezhahq/scripts/main/install.sh"
TOKEN = "BenchT0kenBenchT0kenBenchT0ken32"
LOOPBACK = "127.0.0.1"
REGISTER_PATH = "/api/v1/server/register"
PROCESS_TIMEOUT = 60.0  # no single child process may run longer than this
NAMES = ("recovery", "fleet", "overhead", "memory", "v2fleet", "bombs", "hostile", "zipapp")


@dataclass(frozen=True)
class Sizes:
    """Counts and durations; --quick shrinks them for the CI smoke run."""

    recovery_nodes: int = 20
    recovery_down: float = 30.0
    fleet_nodes: int = 300
    overhead_runs: int = 15
    memory_runs: int = 5
    v2fleet_nodes: int = 100
    bomb_mib: int = 1024  # the decoded size of each `gzip, gzip` bomb (1.8 KB on the wire for 1 GiB)
    member_mib: int = 127  # the `nezha-agent` of a checksum-valid release zip (130 KB compressed at 127 MiB)
    hostile_deadline: float = 10.0  # --deadline of the runs against a hostile server
    zipapp_runs: int = 9


@dataclass(frozen=True)
class Plan:
    sizes: Sizes
    seed_file: Path


QUICK = Sizes(recovery_nodes=4, recovery_down=2.0, fleet_nodes=16, overhead_runs=3, memory_runs=2, v2fleet_nodes=6,
              bomb_mib=64, member_mib=32, hostile_deadline=3.0, zipapp_runs=2)


@dataclass
class Target:
    name: str
    value: float | None  # None: nothing to measure (e.g. no node registered): not met
    limit: float
    unit: str

    @property
    def met(self) -> bool:
        return self.value is not None and self.value < self.limit


@dataclass
class Outcome:
    """What one benchmark hands back: its figures for the JSON and its targets for the table."""

    figures: dict[str, Any]
    targets: list[Target] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # runs that ended with another exit code than expected


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    return {"p50": round(percentile(values, 50), 3), "p95": round(percentile(values, 95), 3),
            "max": round(max(values), 3)}


# --- the fake dashboard in its own process (its own GIL, so 300 client threads do not starve it) ---

SHARE_503 = 0.30
SHARE_429 = 0.20


def fault_injector(seed: int, only_path: str | None) -> Callable[[str], Any]:
    """503 to 30% and 429 with Retry-After: 1 to 20% of requests (of `only_path`'s, when given)."""
    rng = random.Random(seed)  # called under the fake's lock: one deterministic sequence of rolls

    def fault(path: str) -> Any:
        if only_path is not None and path != only_path:
            return None
        roll = rng.random()
        if roll < SHARE_503:
            return 503
        if roll < SHARE_503 + SHARE_429:
            return 429, "text/plain", b"too many requests", {"Retry-After": "1"}
        return None

    return fault


def dashboard_process(conn: Connection, port: int, seed: int | None, only_path: str | None) -> None:
    """Child: serve a fake dashboard on `port`, report when it listens, and its journal when told to stop."""
    fake = FakeDashboard(TOKEN)
    if seed is not None:
        fake.faults.random_faults = fault_injector(seed, only_path)
    running = serve(fake, LOOPBACK, port)
    conn.send({"url": running.url, "up": time.monotonic()})
    if conn.poll(PROCESS_TIMEOUT * 10):
        conn.recv()
    with fake.lock:
        journal = [(entry.method, entry.path) for entry in fake.journal]
        servers = [(server.name, server.secret) for server in fake.servers]
    conn.send({"requests": journal, "servers": servers})
    running.stop()


class DashboardProcess:
    """Handle on the child: `up` is its monotonic time of listening (CLOCK_MONOTONIC is system-wide)."""

    def __init__(self, port: int = 0, seed: int | None = None, only_path: str | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=dashboard_process, args=(child, port, seed, only_path), daemon=True)
        self.process.start()
        if not self.conn.poll(PROCESS_TIMEOUT):
            self.process.kill()
            raise RuntimeError("the fake dashboard process did not start")
        hello = self.conn.recv()
        self.url: str = hello["url"]
        self.up: float = hello["up"]

    def finish(self) -> dict[str, Any]:
        """Stop the child and return what it saw: requests (method, path) and servers (name, secret)."""
        self.conn.send("stop")
        if not self.conn.poll(PROCESS_TIMEOUT):
            self.process.kill()
            raise RuntimeError("the fake dashboard process did not answer")
        seen: dict[str, Any] = self.conn.recv()
        self.process.join(PROCESS_TIMEOUT)
        return seen


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# --- one simulated node: the package's own registration code, as Runner._register uses it ---

@dataclass
class Node:
    name: str
    secret: str | None = None
    error: str | None = None
    attempts: int = 0
    failures: list[str] = field(default_factory=list)  # why each failed attempt failed
    started: float = 0.0
    finished: float = 0.0


def node_config(url: str, name: str, deadline: float) -> Any:
    facts = Facts(hostname=name, primary_ipv4=None, machine_id=secrets.token_hex(16), systemd_running=False)
    settings = Settings(dashboard_url=url, token=TOKEN, name=name, tag="bench", deadline=deadline)
    return build(settings, facts).config


def prepare(node: Node, url: str, deadline: float) -> Callable[[], None]:
    """Build the node's config and client before the start: set-up a real node does on its own CPU
    would otherwise be paid here by all threads one after another, under the GIL."""
    config = node_config(url, node.name, deadline)
    client = make_client(config.ca_bundle, urls=(config.dashboard_url, config.script_url))
    registration = Registration(Dashboard(client, config.dashboard_url, config.token),
                                config.register_body(), tag=config.tag or "AutoRegister")

    def attempt(seconds_left: float) -> str:
        node.attempts += 1
        return registration.attempt(seconds_left)

    def note(message: str) -> None:  # "register: <why>; retrying in <n> s"
        node.failures.append(message.split(": ", 1)[-1].rsplit("; retrying", 1)[0])

    def register() -> None:
        """Exactly what `run` does (Runner._register): Registration's attempts inside with_retries."""
        node.started = time.monotonic()
        try:
            node.secret = with_retries(attempt, deadline=config.deadline, what="register",
                                       give_up=DashboardUnreachable, notify=note)
        except BootstrapError as exc:
            node.error = f"{type(exc).__name__}: {exc}"
        finally:
            node.finished = time.monotonic()
            client.close()

    return register


def run_nodes(nodes: list[Node], url: str, deadline: float, spread: float, seed: int,
              released: threading.Event | None = None) -> None:
    """One thread per node, each starting at a random moment within `spread` seconds of the release."""
    rng = random.Random(seed)
    jobs = [prepare(node, url, deadline) for node in nodes]
    start = time.monotonic() + 0.2
    moments = [start + rng.uniform(0.0, spread) for _ in nodes]

    def one(job: Callable[[], None], moment: float) -> None:
        time.sleep(max(moment - time.monotonic(), 0.0))
        job()

    threads = [threading.Thread(target=one, args=(j, m), daemon=True) for j, m in zip(jobs, moments)]
    for thread in threads:
        thread.start()
    time.sleep(max(start - time.monotonic(), 0.0))
    if released is not None:
        released.set()
    stop = start + spread + deadline + 30.0
    for thread in threads:
        thread.join(max(stop - time.monotonic(), 0.0))
    for node in nodes:
        if node.finished == 0.0:
            node.error = node.error or "still running after the deadline"


# --- 1. recovery ---

def bench_recovery(plan: Plan) -> Outcome:
    """Nodes start while the port is closed; the dashboard comes up after `recovery_down` seconds."""
    port = free_port()
    sizes = plan.sizes
    nodes = [Node(f"recovery-{i:02d}") for i in range(sizes.recovery_nodes)]
    deadline = sizes.recovery_down + 60.0
    released = threading.Event()
    worker = threading.Thread(target=run_nodes, args=(nodes, f"http://{LOOPBACK}:{port}", deadline, 0.0, 1, released))
    worker.start()
    if not released.wait(PROCESS_TIMEOUT):
        raise RuntimeError("the recovery nodes did not start")
    time.sleep(sizes.recovery_down)
    dashboard = DashboardProcess(port=port)
    worker.join(deadline + 60.0)
    seen = dashboard.finish()
    after_up = [n.finished - dashboard.up for n in nodes if n.secret is not None]
    failures = sum(1 for n in nodes if n.secret is None)
    up_to_registered = summary(after_up)
    figures = {
        "nodes": len(nodes), "down_s": sizes.recovery_down, "registered": len(after_up),
        "failures": failures, "servers": len(seen["servers"]),
        "attempts_per_node": summary([float(n.attempts) for n in nodes]),
        "up_to_registered_s": up_to_registered,
    }
    return Outcome(figures, [Target("recovery: p95 up->registered", up_to_registered["p95"], 5.0, "s"),
                             Target("recovery: failures", failures, 1, "")])


# --- 2. fleet ---

def bench_fleet(plan: Plan) -> Outcome:
    """Both fault placements: on the register POST only, and on every request (list GET too)."""
    figures: dict[str, Any] = {}
    targets: list[Target] = []
    for label, only_path in (("register_only", REGISTER_PATH), ("all_requests", None)):
        figures[label] = fleet_variant(plan.sizes.fleet_nodes, only_path)
        result = figures[label]
        targets += [
            Target(f"fleet[{label}]: duplicates", result["duplicates"], 1, ""),
            Target(f"fleet[{label}]: failures", result["failures"], 1, ""),
            Target(f"fleet[{label}]: requests/node", result["requests_per_node"], 3.0, "x"),
            Target(f"fleet[{label}]: requests/node expected", result["expected_requests_per_node"], 3.0, "x"),
        ]
    return Outcome(figures, targets)


def expected_requests(only_path: str | None) -> float:
    """Mean requests per node under the fault model: one list GET and one POST must each get through,
    and a request that meets a fault takes 1 / (1 - share) tries on average (the seeded total is one draw)."""
    tries = 1 / (1 - SHARE_503 - SHARE_429)
    return round((1 if only_path else tries) + tries, 3)


def fleet_variant(count: int, only_path: str | None) -> dict[str, Any]:
    dashboard = DashboardProcess(seed=4, only_path=only_path)
    nodes = [Node(f"fleet-{i:03d}") for i in range(count)]
    run_nodes(nodes, dashboard.url, deadline=120.0, spread=1.0, seed=2)
    seen = dashboard.finish()
    names = Counter(name for name, _ in seen["servers"])
    secret_of = dict(seen["servers"])
    paths = Counter(f"{method} {path}" for method, path in seen["requests"])
    registered = [n for n in nodes if n.secret is not None]
    return {
        "nodes": count,
        "faults_on": only_path or "every request",
        "registered": len(registered),
        "failures": count - len(registered),
        "errors": sorted({n.error for n in nodes if n.error})[:5],
        "servers": sum(names.values()),
        "nodes_with_exactly_one_server": sum(1 for n in nodes if names[n.name] == 1),
        "duplicates": sum(c - 1 for c in names.values() if c > 1),
        "secret_mismatches": sum(1 for n in registered if secret_of.get(n.name) != n.secret),
        "requests": len(seen["requests"]),
        "requests_by_path": dict(paths),
        "requests_per_node": round(len(seen["requests"]) / count, 3),
        "expected_requests_per_node": expected_requests(only_path),
        "attempts_per_node": summary([float(n.attempts) for n in nodes]),
        "failed_attempts_by_reason": dict(Counter(why for n in nodes for why in n.failures).most_common(8)),
        "time_s": summary([n.finished - n.started for n in registered]),
    }


# --- 3. overhead and 4. memory: real processes ---

@dataclass
class Sample:
    seconds: float
    maxrss_kib: int
    returncode: int


# A fork's child inherits its parent's RSS high-water mark until exec, so a child forked from this
# (large, multi-threaded) process would report our peak, not its own. A fresh, small interpreter
# starts the measured command instead and reports that command's own ru_maxrss.
RSS_PROBE = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,"
    " stderr=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))\n"
)


def measure(argv: list[str], env: dict[str, str], cwd: Path | None = None, rss: bool = False) -> Sample:
    """Run once: wall time, exit status and (with `rss`) the command's peak RSS; killed at PROCESS_TIMEOUT."""
    command = [sys.executable, "-c", RSS_PROBE, *argv] if rss else argv
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise RuntimeError(f"{argv[0]} ran longer than {PROCESS_TIMEOUT:g} s") from None
    elapsed = time.perf_counter() - started
    if not rss:
        return Sample(elapsed, 0, process.returncode)
    kib, code = out.split()
    return Sample(elapsed, int(kib), int(code))


def tool_argv() -> list[str]:
    script = Path(sys.executable).parent / "nezha-bootstrap"
    return [str(script)] if script.exists() else [sys.executable, "-m", "nezha_bootstrap"]


def base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "SYSTEMROOT", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["NO_PROXY"] = env["no_proxy"] = f"{LOOPBACK},localhost"
    return env


@dataclass
class Bench:
    """A fake dashboard (in this process: the child's work is what is timed) and fresh roots."""

    url: str
    script_sha256: str
    fake: FakeDashboard
    workdir: Path
    counter: int = 0

    def new_root(self) -> Path:
        self.counter += 1
        root = self.workdir / f"root-{self.counter}"
        (root / "etc").mkdir(parents=True)
        (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
        return root

    def tool_env(self, root: Path) -> dict[str, str]:
        return {**base_env(), "NEZHA_DASHBOARD_URL": self.url, "NEZHA_TOKEN": TOKEN,
                "NEZHA_PROBE_ADDRESS": "probe.example.test", "NEZHA_INSTALL_SCRIPT_URL": f"{self.url}/install.sh",
                "NEZHA_INSTALL_SCRIPT_SHA256": self.script_sha256, "NEZHA_BOOTSTRAP_ROOT": str(root),
                "NEZHA_BOOTSTRAP_REHEARSAL": "1",
                "NEZHA_STUB_RECORD": str(root / "stub-record"), "NODE_NAME": f"bench-{self.counter}",
                "NEZHA_BOOTSTRAP_DEADLINE": "30"}

    def full_run(self, rss: bool = False) -> Sample:
        root = self.new_root()
        sample = measure(tool_argv() + ["run", "-q"], self.tool_env(root), rss=rss)
        check_installed(sample, root, "nezha-bootstrap run")
        return sample

    def seed_run(self, script: Path) -> Sample:
        root = self.new_root()
        cwd = root / "opt/nezha/agent"  # the stub installer writes relative to its cwd, like `run` sets it
        cwd.mkdir(parents=True)
        env = {**base_env(), "NEZHA_TOKEN": TOKEN, "NEZHA_PROBE_ADDRESS": "probe.example.test",
               "NEZHA_PROBE_PORT": "5555", "NEZHA_DASHBOARD_URL": self.url, "NODE_NAME": f"bench-{self.counter}",
               "NEZHA_STUB_RECORD": str(root / "stub-record")}
        sample = measure(["bash", str(script)], env, cwd=cwd)
        check_installed(sample, root, "the seed script")
        return sample


def check_installed(sample: Sample, root: Path, what: str) -> None:
    unit = root / "etc/systemd/system/nezha-agent.service"
    if sample.returncode != 0 or not unit.is_file():
        raise RuntimeError(f"{what} did not do the work (exit {sample.returncode}, unit present: {unit.is_file()})")


@contextmanager
def bench_setup() -> Iterator[Bench]:
    fake = FakeDashboard(TOKEN)
    workdir = Path(tempfile.mkdtemp(prefix="nezha-bench-"))
    try:
        with serve(fake, LOOPBACK) as running:
            yield Bench(running.url, fake.script_sha256, fake, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def seed_script(source: Path, url: str, workdir: Path) -> Path:
    """The seed's bash block (`#!/bin/bash` .. `eval $CMD`), its install.sh URL pointed at the fake."""
    lines = source.read_text(encoding="utf-8").splitlines()
    start = lines.index("#!/bin/bash")
    end = next(i for i in range(start, len(lines)) if lines[i].strip() == "eval $CMD")
    text = "\n".join(lines[start:end + 1]) + "\n"
    if SEED_INSTALL_URL not in text:
        raise RuntimeError("the seed script no longer downloads the expected install.sh URL")
    path = workdir / "seed-register.sh"
    path.write_text(text.replace(SEED_INSTALL_URL, f"{url}/install.sh"), encoding="utf-8")
    return path


def median_seconds(samples: list[Sample]) -> float:
    return round(statistics.median(s.seconds for s in samples), 4)


def interleaved(commands: dict[str, Callable[[], Sample]], runs: int) -> dict[str, list[Sample]]:
    """Run every command once per round, so drift in machine load hits all of them alike."""
    samples: dict[str, list[Sample]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            sample = command()
            if sample.returncode != 0:
                raise RuntimeError(f"{name} exited with {sample.returncode}")
            samples[name].append(sample)
    return samples


def bench_overhead(plan: Plan) -> Outcome:
    """Median wall time of each command; the seed comparison needs the seed file (--seed-file)."""
    with bench_setup() as bench:
        dry_env = bench.tool_env(bench.new_root())
        commands: dict[str, Callable[[], Sample]] = {
            "import_click": lambda: measure([sys.executable, "-c", "import click"], base_env()),
            "help": lambda: measure(tool_argv() + ["--help"], base_env()),
            "dry_run": lambda: measure(tool_argv() + ["run", "--dry-run"], dry_env),
            "full_run": bench.full_run,
        }
        if plan.seed_file.is_file():
            seed = seed_script(plan.seed_file, bench.url, bench.workdir)
            commands["seed_script"] = lambda: bench.seed_run(seed)
        samples = interleaved(commands, plan.sizes.overhead_runs)
        loaded = {"help": heavy_modules(["--help"], base_env()),
                  "dry_run": heavy_modules(["run", "--dry-run"], dry_env)}
    medians = {f"{name}_s": median_seconds(runs) for name, runs in samples.items()}
    ratios = {
        "help_vs_import_click": round(medians["help_s"] / medians["import_click_s"], 2),
        "dry_run_vs_import_click": round(medians["dry_run_s"] / medians["import_click_s"], 2),
    }
    targets = [
        Target("overhead: --help / import click", ratios["help_vs_import_click"], 2.0, "x"),
        Target("overhead: heavy modules loaded by --help", len(loaded["help"]), 1, ""),
    ]
    figures: dict[str, Any] = {"runs_each": plan.sizes.overhead_runs, "median": medians, "ratio": ratios,
                               "heavy_modules_loaded": loaded, "seed_file": str(plan.seed_file)}
    if "seed_script_s" in medians:
        ratios["full_run_vs_seed_script"] = round(medians["full_run_s"] / medians["seed_script_s"], 2)
        targets.append(Target("overhead: full run / seed script", ratios["full_run_vs_seed_script"], 8.0, "x"))
    else:
        figures["seed_missing"] = f"{plan.seed_file} not found: full run vs seed script not measured"
    return Outcome(figures, targets)


HEAVY = ("httpx", "httpcore", "h11", "psutil", "ssl")


def heavy_modules(args: list[str], env: dict[str, str]) -> list[str]:
    """Which of HEAVY a CLI invocation imports (python -X importtime); it must succeed."""
    code = "import sys; from nezha_bootstrap.cli import main; main(sys.argv[1:], prog_name='nezha-bootstrap')"
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *args], env=env,
                          capture_output=True, text=True, timeout=PROCESS_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"nezha-bootstrap {' '.join(args)} exited with {done.returncode}")
    names = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return sorted(name for name in names if name in HEAVY)


def bench_memory(plan: Plan) -> Outcome:
    """Peak RSS of full runs, next to the floor the probe itself adds (its own RSS before exec)."""
    with bench_setup() as bench:
        samples = [bench.full_run(rss=True) for _ in range(plan.sizes.memory_runs)]
    floor = measure(["true"], base_env(), rss=True)
    peaks = [s.maxrss_kib / 1024 for s in samples]
    peak = round(max(peaks), 1)
    figures = {"runs": len(samples), "probe_floor_mib": round(floor.maxrss_kib / 1024, 1),
               "peak_rss_mib": {"max": peak, "median": round(statistics.median(peaks), 1)}}
    return Outcome(figures, [Target("memory: peak RSS of a full run", peak, 50.0, "MiB")])


# --- 5. v2fleet: nodes enrolling at once in v2.1+ token mode, the group race switch on ---

V2_GROUP = "fleet"
V2_TIMEOUT = 300.0  # the whole fleet; each node's own waits are bounded by its deadline and enroll timeout


def v2_node(url: str, fake: FakeV1, token: str, root: Path, index: int) -> subprocess.Popen[str]:
    """One `nezha-bootstrap run` in token mode, with its own root and machine-id."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
    env = {**base_env(), "NEZHA_DASHBOARD_URL": url, "NEZHA_AGENT_SECRET": fake.agent_secret, "NEZHA_TOKEN": token,
           "NEZHA_AGENT_BASE_URL": f"{url}/releases", "NEZHA_BOOTSTRAP_ROOT": str(root),
           "NEZHA_BOOTSTRAP_REHEARSAL": "1",
           "NEZHA_STUB_RECORD": str(root / "stub-record"), "NODE_NAME": f"v2-{index:03d}",
           "NEZHA_GROUP": V2_GROUP, "NEZHA_BOOTSTRAP_DEADLINE": "120"}
    return subprocess.Popen(tool_argv() + ["run", "-q"], env=env, text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def bench_v2fleet(plan: Plan) -> Outcome:
    """Real processes against the fake v2.1+ dashboard (in this process; its clock times the rows)."""
    from nezha_bootstrap.agent import AGENT_V1

    count = plan.sizes.v2fleet_nodes
    fake = FakeV1(profile="v2.1+", group_race=True)
    fake.add_release(AGENT_V1)
    fake.add_group(V2_GROUP)
    token = fake.add_token()
    with tempfile.TemporaryDirectory() as workdir, serve_v1(fake) as running:
        nodes = [v2_node(running.url, fake, token, Path(workdir) / f"node-{i}", i) for i in range(count)]
        end = time.monotonic() + V2_TIMEOUT
        codes, errors = [], []
        for node in nodes:
            try:
                codes.append(node.wait(timeout=max(end - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                node.kill()
                codes.append(node.wait())
            if codes[-1] != 0:
                errors.append((node.stderr.read() if node.stderr else "").strip().splitlines()[-1:])
    figures, targets = v2fleet_figures(fake, count, codes, errors)
    broken = [f"v2fleet: node {i} exited with {code}, expected 0" for i, code in enumerate(codes) if code != 0]
    return Outcome(figures, targets, broken)


def v2fleet_figures(fake: FakeV1, count: int, codes: list[int], errors: list[list[str]]) -> tuple[dict[str, Any],
                                                                                               list[Target]]:
    uuids = Counter(server.uuid for server in fake.servers)
    wanted = {f"v2-{i:03d}" for i in range(count)}
    named = {server.name for server in fake.servers} & wanted
    members = set(fake.groups[0].servers)
    named_at = {change.server_id: change.at for change in fake.changes if change.fields["name"] in wanted}
    start_to_named = [named_at[s.id] - s.created_at for s in fake.servers if s.id in named_at]
    api = [j for j in fake.journal if "authorization" in j.headers]
    figures = {
        "nodes": count, "succeeded": codes.count(0), "failures": count - codes.count(0),
        "errors": sorted({" ".join(e) for e in errors})[:5],
        "servers": len(fake.servers), "named": len(named), "hidden": sum(1 for s in fake.servers if s.hide_for_guest),
        "in_group": len(members & {s.id for s in fake.servers}),
        "duplicates": sum(c - 1 for c in uuids.values() if c > 1),
        "api_requests_per_node": round(len(api) / count, 3),
        "requests_per_node": round(len(fake.journal) / count, 3),  # with the probes, downloads and agent calls
        "api_requests_by_path": dict(Counter(f"{j.method} {j.path.rstrip('0123456789')}" for j in api)),
        "group_patches": sum(1 for j in api if j.method == "PATCH" and "server-group" in j.path),
        "agent_start_to_named_s": summary(start_to_named),
    }
    targets = [
        Target("v2fleet: servers missing", count - figures["servers"], 1, ""),
        Target("v2fleet: unnamed", count - figures["named"], 1, ""),
        Target("v2fleet: not in the group", count - figures["in_group"], 1, ""),
        Target("v2fleet: duplicates", figures["duplicates"], 1, ""),
        # The issue sets no limit: 5 s is the v0 recovery target's (a guest page may show the random name until then).
        Target("v2fleet: p95 agent start->named", figures["agent_start_to_named_s"]["p95"], 5.0, "s"),
    ]
    return figures, targets


# --- 6. bombs and 7. hostile: issue 10's hostile networks (tests/hostile.py, on 127.0.0.1) ---

# The CLI in a fresh interpreter; with "silent-resolver" first, http.resolve never answers (the
# in-process seam the tests use: the system resolver and /etc/hosts stay untouched).
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


def bench_bombs(plan: Plan) -> Outcome:
    """Peak RSS (and seconds) of a run whose probes, register answer or checksums.txt is a `gzip, gzip`
    bomb, of one whose release zip is junk of `bomb_mib` / 16 MiB (up to ZIP_CAP) with a matching
    checksums.txt, and (issue 18) of runs whose release download is redirected by a 302 carrying the
    bomb or an endless chunked body, or whose checksum-valid zip holds a `member_mib` MiB nezha-agent;
    for the redirects, seconds from SIGTERM to exit too."""
    import hashlib

    from nezha_bootstrap.agent import AGENT_V0, ZIP_CAP, asset_name
    from tests.hostile import HostileServer, Route, bomb

    payload = bomb(plan.sizes.bomb_mib << 20)
    junk = os.urandom(min(ZIP_CAP - 1, (plan.sizes.bomb_mib << 20) // 16 * 15 // 16))
    asset = asset_name(platform.machine())
    sums = hashlib.sha256(junk).hexdigest().encode() + b"  " + asset.encode() + b"\n"
    member = agent_zip(plan.sizes.member_mib << 20)
    member_sums = hashlib.sha256(member).hexdigest().encode() + b"  " + asset.encode() + b"\n"
    listing, secret = Route("ok", body=V0_LIST), Route("ok", body=V0_SECRET)
    registered = {"/api/v1/server/list": listing, "/api/v1/server/register": secret}
    direct = {"NEZHA_DASHBOARD_GENERATION": "v0", "NEZHA_INSTALL_METHOD": "direct"}
    redirected = {**direct, "NEZHA_BOOTSTRAP_DEADLINE": "10"}  # issue 18 measured them against 10 s
    release = f"/releases/v{AGENT_V0}"
    cases = {  # name: (the answer to other paths, routes, settings, the exit code expected)
        "probes": (Route("bomb", body=payload), {}, {"NEZHA_AGENT_SECRET": "BenchAgentSecret01"}, 3),
        "register_answer": (Route("bomb", body=payload), {"/api/v1/server/list": listing},
                            {"NEZHA_DASHBOARD_GENERATION": "v0"}, 3),
        "checksums_txt": (Route("bomb", body=payload), registered, direct, 5),
        "big_junk_zip": (Route("ok", body=junk), {**registered, f"{release}/checksums.txt": Route("ok", body=sums)},
                         direct, 5),
        "redirect_bomb_checksums_txt": (Route("ok", body=member), {
            **registered, f"{release}/checksums.txt": Route("redirect_bomb", body=payload, location="/storage/sums"),
            "/storage/sums": Route("ok", body=member_sums)}, redirected, 5),
        "redirect_bomb_zip": (Route("ok", body=member), {
            **registered, f"{release}/checksums.txt": Route("ok", body=member_sums),
            f"{release}/{asset}": Route("redirect_bomb", body=payload, location="/storage/zip")}, redirected, 5),
        "redirect_endless_body": (Route("ok", body=member), {
            **registered, f"{release}/checksums.txt": Route("redirect_endless", location=f"{release}/checksums.txt")},
            redirected, 5),
        # Downloaded, checked and extracted (written to disk); then refused (exit 2) as no stub under a root.
        "big_member": (Route("ok", body=member),
                       {**registered, f"{release}/checksums.txt": Route("ok", body=member_sums)}, direct, 2),
    }
    figures: dict[str, Any] = {"wire_bytes": len(payload), "decoded_mib": plan.sizes.bomb_mib,
                               "junk_zip_mib": round(len(junk) / (1 << 20), 1), "member_mib": plan.sizes.member_mib,
                               "member_zip_kib": round(len(member) / 1024, 1)}
    targets, broken = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (default, routes, settings, expected) in cases.items():
            with HostileServer(default, routes=routes) as server:
                argv, env = hostile_node(server.url, Path(tmp) / name, **settings,
                                         NEZHA_AGENT_BASE_URL=f"{server.url}/releases")
                sample = measure(argv, env, rss=True)
                stop = None
                if name.startswith("redirect_"):
                    argv, env = hostile_node(server.url, Path(tmp) / f"{name}-stop", **settings,
                                             NEZHA_AGENT_BASE_URL=f"{server.url}/releases")
                    stop = timed_run(argv, env, stop_after=1.0)
            peak = round(sample.maxrss_kib / 1024, 1)
            figures[name] = {"peak_rss_mib": peak, "exit_code": sample.returncode, "expected_exit": expected,
                             "seconds": round(sample.seconds, 2)}
            targets.append(Target(f"bombs: peak RSS, {name} (exit {sample.returncode})", peak, 64.0, "MiB"))
            if stop is not None:
                figures[name].update(sigterm_to_exit_s=stop[0], sigterm_exit_code=stop[1])
                targets.append(Target(f"bombs: {name} start->exit", round(sample.seconds, 2), 10.0 + 2.0, "s"))
                targets.append(Target(f"bombs: {name} SIGTERM->exit (exit {stop[1]})", stop[0], 2.0, "s"))
            if sample.returncode != expected:
                broken.append(f"bombs: {name} exited with {sample.returncode}, expected {expected}")
    return Outcome(figures, targets, broken)


def agent_zip(size: int) -> bytes:
    """A release zip whose `nezha-agent` is `size` zero bytes, deflated, written a MiB at a time."""
    import io
    import zipfile

    buffer = io.BytesIO()
    info = zipfile.ZipInfo("nezha-agent")
    info.compress_type = zipfile.ZIP_DEFLATED
    block = bytes(1 << 20)
    with zipfile.ZipFile(buffer, "w") as archive, archive.open(info, "w", force_zip64=True) as member:
        for start in range(0, size, len(block)):
            member.write(block[: min(len(block), size - start)])
    return buffer.getvalue()


def timed_run(argv: list[str], env: dict[str, str], stop_after: float | None = None) -> tuple[float, int]:
    """Seconds from start to exit (or from SIGTERM to exit, with `stop_after`) and the exit code."""
    process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    started = time.monotonic()
    if stop_after is not None:
        time.sleep(stop_after)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise RuntimeError(f"a run against a hostile server ran longer than {PROCESS_TIMEOUT:g} s") from None
    return round(time.monotonic() - started, 2), code


def bench_hostile(plan: Plan) -> Outcome:
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
            targets.append(Target(f"hostile: {name} start->exit (exit {code})", to_exit, deadline + 2.0, "s"))
            targets.append(Target(f"hostile: {name} SIGTERM->exit (exit {stop_code})", to_stop, 2.0, "s"))
            # README's exit codes: 4 when the dashboard stays unreachable to the deadline, 143 on SIGTERM
            for what, ended, expected in (("start->exit", code, 4), ("SIGTERM->exit", stop_code, 143)):
                if ended != expected:
                    broken.append(f"hostile: {name} {what} exited with {ended}, expected {expected}")
    return Outcome(figures, targets, broken)


# --- 8. zipapp: cold and warm starts of the .pyz against the installed tool ---

def build_pyz(out: Path) -> Path:
    """packaging/build into `out` (its pinned downloads are cached in build/packaging-cache); this machine's .pyz."""
    done = subprocess.run([sys.executable, str(HERE.parent / "packaging" / "build"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"packaging/build failed: {done.stderr[-500:]}")
    [pyz] = out.glob(f"nezha-bootstrap-*-{platform.machine()}.pyz")
    return pyz


def bench_zipapp(plan: Plan) -> Outcome:
    """`--help` and `run --dry-run`: the zipapp cold (empty cache: it extracts its tree) and warm (cached
    bytecode), against the installed tool, interleaved; plus the first-boot figures, measured elsewhere."""
    runs = plan.sizes.zipapp_runs
    with tempfile.TemporaryDirectory(prefix="nezha-bench-pyz-") as tmp:
        pyz, cache = build_pyz(Path(tmp) / "dist"), Path(tmp) / "cache"
        root = Path(tmp) / "root"
        (root / "etc").mkdir(parents=True)
        (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
        env = {**base_env(), "NEZHA_BOOTSTRAP_CACHE": str(cache), "NEZHA_DASHBOARD_URL": f"http://{LOOPBACK}:9",
               "NEZHA_TOKEN": TOKEN, "NEZHA_BOOTSTRAP_ROOT": str(root), "NEZHA_BOOTSTRAP_REHEARSAL": "1"}
        zipapp = [sys.executable, "-I", str(pyz)]

        def cold(args: list[str]) -> Sample:
            shutil.rmtree(cache, ignore_errors=True)
            return measure(zipapp + args, env)

        commands: dict[str, Callable[[], Sample]] = {}
        for name, args in (("help", ["--help"]), ("dry_run", ["run", "--dry-run"])):
            commands[f"installed_{name}"] = functools.partial(measure, tool_argv() + args, env)
            commands[f"pyz_cold_{name}"] = functools.partial(cold, args)
            commands[f"pyz_warm_{name}"] = functools.partial(measure, zipapp + args, env)
        samples = interleaved(commands, runs)
        size = pyz.stat().st_size
    medians = {f"{name}_s": median_seconds(runs_) for name, runs_ in samples.items()}
    ratios = {f"pyz_{kind}_{name}_vs_installed":
              round(medians[f"pyz_{kind}_{name}_s"] / medians[f"installed_{name}_s"], 2)
              for kind in ("warm", "cold") for name in ("help", "dry_run")}
    targets = [Target(f"zipapp: warm {name} / installed", ratios[f"pyz_warm_{name}_vs_installed"], 1.5, "x")
               for name in ("help", "dry_run")]
    figures = {"runs_each": runs, "pyz_bytes": size, "median": medians, "ratio": ratios,
               "first_boot": "boot start -> registration request, zipapp vs pip user-data: measured by "
                             "tests/e2e/test_first_boot.py (systemd-nspawn, root), printed as [first-boot] lines"}
    return Outcome(figures, targets)


# --- the table, the JSON, the command line ---

BENCHMARKS: dict[str, Callable[[Plan], Outcome]] = {
    "recovery": bench_recovery, "fleet": bench_fleet, "overhead": bench_overhead, "memory": bench_memory,
    "v2fleet": bench_v2fleet, "bombs": bench_bombs, "hostile": bench_hostile, "zipapp": bench_zipapp,
}


def table(targets: list[Target]) -> str:
    rows = [("target", "measured", "limit", "met")]
    rows += [(t.name, "n/a" if t.value is None else f"{t.value:g}{t.unit}", f"< {t.limit:g}{t.unit}",
              "yes" if t.met else "NO") for t in targets]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def meta(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "quick": args.quick,
        "python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts (the CI smoke run)")
    parser.add_argument("--only", choices=NAMES, action="append", help="run only this benchmark (repeatable)")
    parser.add_argument("--seed-file", type=Path, default=SEED_FILE,
                        help=f"the seed script to compare a full run with (default {SEED_FILE})")
    parser.add_argument("--json", type=Path, default=DEFAULT_OUT, help=f"write results here (default {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a run ends with another exit code than expected or a target is missed")
    return parser.parse_args(argv)


def check_failures(targets: list[Target], broken: list[str]) -> list[str]:
    """`check:` lines for every run that broke and every target missed (empty: all as it should be)."""
    lines = [f"check: run broke: {what}" for what in broken]
    lines += [f"check: target missed: {t.name}: {'n/a' if t.value is None else f'{t.value:g}{t.unit}'}, "
              f"limit < {t.limit:g}{t.unit}" for t in targets if not t.met]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = f"{LOOPBACK},localhost"  # the nodes' httpx trusts env
    plan = Plan(QUICK if args.quick else Sizes(), args.seed_file)
    results: dict[str, Any] = {"meta": {**meta(args), "sizes": asdict(plan.sizes)}}
    targets: list[Target] = []
    broken: list[str] = []
    for name in args.only or NAMES:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        outcome = BENCHMARKS[name](plan)
        results[name] = {**outcome.figures, "elapsed_s": round(time.monotonic() - started, 2)}
        targets += outcome.targets
        broken += outcome.broken
    results["targets"] = [{**asdict(t), "met": t.met} for t in targets]
    results["broken_runs"] = broken
    print(table(targets))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    print(f"results written to {args.json}", file=sys.stderr)
    if not args.check:
        return 0
    failures = check_failures(targets, broken)
    for line in failures:
        print(line, file=sys.stderr)
    print(f"check: {'FAILED' if failures else 'passed'} ({len(broken)} runs broke, "
          f"{sum(1 for t in targets if not t.met)} of {len(targets)} targets missed)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
