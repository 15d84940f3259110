"""Boot storm (issue 19): N simulated nodes run `nezha-bootstrap run` at once against one dashboard.

    python benchmarks/storm.py [--generation v2|v0] [--nodes N] [--existing K] [--workers P] [--json OUT]
    python benchmarks/storm.py --url URL --generation v2 ...   (a live dashboard; NEZHA_LIVE_* as tests/live)
    python benchmarks/storm.py --variants before=/tree/a,after=/tree/b ...  (each tree's tool, one table)

Each node has its own root (its own etc/machine-id, hence its own uuid) and runs the real `run`
(`cli.main`, in a worker process forked with the package already imported: a real node pays its
interpreter start on its own CPU, here 5,000 of them share two cores). Only the agent's side is a stub:
`system.run` is replaced in the workers, so the agent's `service` command and install.sh write the
unit the real ones write without a child process, and on v1/v2 the "agent" enrolls at once: against
the fakes through their /_fake/agent-connect hook, against a live v2 with the one gRPC call the real
agent v2.3.3 enrolls with (ReportSystemInfo2 over h2c with client_secret/client_uuid metadata: the
dashboard creates the server then; needs the `h2` package).

Requests, bytes and status codes are counted per node in the worker (httpx's transport, wrapped),
for the dashboard's address only (release downloads apart). The dashboard's peak RSS and CPU are
sampled with psutil when it runs here (the fakes; a live one with --dashboard-pid). Only loopback
is used; every wait is bounded (--time-limit). Prints a table, writes JSON (like bench.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import platform
import queue
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuid_mod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: benchmarks/ off the path (its zipapp.py is not the stdlib's), and
    del sys.path[0]  # the repository root after PYTHONPATH, so that a --variants tree's nezha_bootstrap comes first
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.common import HERE, LOOPBACK, base_env
from benchmarks.common import percentile as nearest_rank

DEFAULT_OUT = HERE / "results" / "storm.json"
V0_TOKEN = "StormT0kenStormT0kenStormT0ken32"
DOWNLOAD_PREFIXES = ("/releases/", "/install.sh")
WORKERS = 96  # most of a node's run is waiting on the network and its agent: many at once fit in two cores
NODE_DEADLINE = 120  # each node's --deadline; its own waits are bounded by it and --enroll-timeout


# --- what one node did ---------------------------------------------------------------------------------

@dataclass
class NodeResult:
    index: int
    boot: float  # monotonic time the node "booted" (its moment in the spread)
    started: float = 0.0  # when a worker began its run (later than boot when every worker was busy)
    finished: float = 0.0
    exit_code: int | None = None
    outcome: str = ""
    error: str = ""
    requests: int = 0
    bytes_in: int = 0  # response bodies from the dashboard
    bytes_out: int = 0  # request lines, headers and bodies to the dashboard
    statuses: dict[str, int] = field(default_factory=dict)
    timeouts: int = 0
    downloads: int = 0
    paths: dict[str, int] = field(default_factory=dict)  # "GET /api/v1/server?id" -> requests
    # --rerun: the node's second `run` right after its first (nothing to do: what a reboot costs the dashboard)
    rerun_exit_code: int | None = None
    rerun_requests: int = 0
    rerun_bytes_in: int = 0
    server_id: int | None = None  # the id the node's state recorded for its server (None: none recorded)


class Counts:
    """Per-node counters the wrapped transport fills (one node at a time per worker)."""

    def __init__(self) -> None:
        self.dashboard = ""
        self.reset()

    def reset(self) -> None:
        self.requests = self.bytes_in = self.bytes_out = self.timeouts = self.downloads = 0
        self.statuses: Counter[str] = Counter()
        self.paths: Counter[str] = Counter()
        self.enabled = True


COUNTS = Counts()


def count_transport() -> None:
    """Wrap httpx.HTTPTransport.handle_request: requests, bytes and status codes to the dashboard."""
    import httpx

    original = httpx.HTTPTransport.handle_request

    class Counted(httpx.SyncByteStream):
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __iter__(self) -> Any:
            for chunk in self.inner:
                COUNTS.bytes_in += len(chunk)
                yield chunk

        def close(self) -> None:
            self.inner.close()

    def handle(self: Any, request: Any) -> Any:
        ours = COUNTS.enabled and f"{request.url.host}:{request.url.port}" == COUNTS.dashboard
        if ours and request.url.path.startswith(DOWNLOAD_PREFIXES):
            COUNTS.downloads += 1
            ours = False
        if ours:
            COUNTS.requests += 1
            query = "?" + "&".join(k for k, _ in request.url.params.multi_items()) if request.url.query else ""
            COUNTS.paths[f"{request.method} {request.url.path.rstrip('0123456789')}{query}"] += 1
            head = len(request.method) + len(request.url.raw_path) + 12
            head += sum(len(k) + len(v) + 4 for k, v in request.headers.raw)
            COUNTS.bytes_out += head + len(getattr(request, "_content", b"") or b"")
        try:
            response = original(self, request)
        except httpx.TimeoutException:
            if ours:
                COUNTS.timeouts += 1
            raise
        if ours:
            code = response.status_code
            COUNTS.statuses[str(code) if code in (429,) or code >= 500 else f"{code // 100}xx"] += 1
            response.stream = Counted(response.stream)
        return response

    httpx.HTTPTransport.handle_request = handle  # type: ignore[method-assign]


# --- the stub agent: system.run carried out in the worker ---------------------------------------------

V1_UNIT = """[Unit]
Description=哪吒监控 Agent
ConditionFileIsExecutable={bin}/nezha-agent

[Service]
StartLimitInterval=5
StartLimitBurst=10
ExecStart={bin}/nezha-agent "-c" "{config}"
WorkingDirectory={bin}
Restart=always
RestartSec=120
EnvironmentFile=-/etc/sysconfig/nezha-agent

[Install]
WantedBy=multi-user.target
"""
V0_UNIT = """[Unit]
Description=Nezha Agent
ConditionFileIsExecutable=/opt/nezha/agent/nezha-agent

[Service]
ExecStart={exec_start}
WorkingDirectory=/opt/nezha/agent
Restart=always
RestartSec=120

[Install]
WantedBy=multi-user.target
"""


def yaml_values(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith(" "):
            values[key.strip()] = value.strip().strip('"')
    return values


class StubAgent:
    """What the agent's `service` command and install.sh leave behind, done in-process."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.client: Any = None
        self.streams: list[tuple[threading.Event, threading.Thread]] = []

    def run(self, argv: list[str], cwd: Path | None) -> tuple[int, str]:
        if argv[0].endswith("/nezha-agent") and "service" in argv:
            return self.service(argv)
        if len(argv) > 2 and argv[2] == "install_agent":
            return self.install_script(argv, cwd)
        return 127, f"storm stub: unexpected command {argv[0]}"

    def service(self, argv: list[str]) -> tuple[int, str]:
        binary = Path(argv[0])
        root = binary.parents[3]
        if "-c" not in argv:  # v0: service install -s HOST:PORT -p SECRET ...
            return self.v0_service(binary, root, argv)
        config, action = Path(argv[argv.index("-c") + 1]), argv[-1]
        unit = root / "etc/systemd/system/nezha-agent.service"
        if action == "install":
            if unit.exists():
                return 1, "Init already exists"
            unit.parent.mkdir(parents=True, exist_ok=True)
            target = "/" + str(config.relative_to(root))
            unit.write_text(V1_UNIT.format(bin="/opt/nezha/agent", config=target), encoding="utf-8")
            return self.enroll(config)
        if action in ("restart", "start"):
            return self.enroll(config)
        if action == "uninstall":
            unit.unlink(missing_ok=True)
        return 0, f"stub: {action}"

    def v0_service(self, binary: Path, root: Path, argv: list[str]) -> tuple[int, str]:
        unit = root / "etc/systemd/system/nezha-agent.service"
        action = argv[argv.index("service") + 1]
        if action == "uninstall":
            unit.unlink(missing_ok=True)
            return 0, "uninstalled"
        if unit.exists():
            return 1, "Init already exists"
        words = argv[argv.index("service") + 2:]
        unit.parent.mkdir(parents=True, exist_ok=True)
        exec_start = "/opt/nezha/agent/nezha-agent " + " ".join(f'"{w}"' for w in words)
        unit.write_text(V0_UNIT.format(exec_start=exec_start), encoding="utf-8")
        return self.v0_connect(words)

    def install_script(self, argv: list[str], cwd: Path | None) -> tuple[int, str]:
        root = (cwd or Path.cwd()).parents[2]
        host, port, secret, flags = argv[3], argv[4], argv[5], argv[6:]
        agent = root / "opt/nezha/agent/nezha-agent"
        agent.parent.mkdir(parents=True, exist_ok=True)
        agent.write_text("#!/bin/sh\nexec sleep 2147483647\n", encoding="utf-8")
        agent.chmod(0o755)
        words = ["-s", f"{host}:{port}", "-p", secret, *flags]
        unit = root / "etc/systemd/system/nezha-agent.service"
        unit.parent.mkdir(parents=True, exist_ok=True)
        exec_start = "/opt/nezha/agent/nezha-agent " + " ".join(f'"{w}"' for w in words)
        unit.write_text(V0_UNIT.format(exec_start=exec_start), encoding="utf-8")
        return self.v0_connect(words)

    def v0_connect(self, words: list[str]) -> tuple[int, str]:
        """The v0 agent's connection, as the fake's agent port meets it (`run` waits for it to show online).

        Against a live v0 dashboard: the first two gRPC calls agent v0.20.5 makes on its port (--agent-port),
        which move the server's last_active (observed on v0.20.13); without --agent-port the probe address
        is a name that does not resolve, no report arrives and each node's online wait ends at
        --online-timeout (exit 4), which the storm counts as a failure."""
        import httpx

        if self.live:
            address = words[words.index("-s") + 1]
            if address.startswith(UNRESOLVED + ":"):
                return 0, "installed (no agent reports to a live v0 dashboard without --agent-port)"
            return self.v0_report(address, words[words.index("-p") + 1])
        secret = words[words.index("-p") + 1]
        COUNTS.enabled = False  # the agent's traffic is not the tool's
        try:
            if self.client is None:
                self.client = httpx.Client(timeout=30, trust_env=False)
            answer = self.client.post(os.environ["NEZHA_DASHBOARD_URL"] + "/_fake/agent-connect",
                                      json={"secret": secret, "tls": "--tls" in words})
            return 0, f"installed; agent {answer.json().get('outcome')}"
        except httpx.HTTPError as exc:  # the real agent keeps retrying; the run's wait tells
            return 0, f"installed; agent could not connect: {exc}"
        finally:
            COUNTS.enabled = True

    def enroll(self, config: Path) -> tuple[int, str]:
        """The agent's first call: the dashboard creates the server for an unknown uuid."""
        import httpx

        values = yaml_values(config)
        server, secret, uuid = values["server"], values["client_secret"], values["uuid"]
        COUNTS.enabled = False  # the agent's traffic is not the tool's
        try:
            if self.client is None:
                self.client = httpx.Client(http1=not self.live, http2=self.live, timeout=30, trust_env=False)
            if not self.live:
                answer = self.client.post(f"http://{server}/_fake/agent-connect", json={"uuid": uuid, "secret": secret})
                return (0, "enrolled") if answer.status_code == 200 else (0, f"agent refused: {answer.text[:80]}")
            return self.grpc_enroll(server, secret, uuid)
        except httpx.HTTPError as exc:  # the real agent keeps retrying; the run's wait tells
            return 0, f"agent could not connect: {exc}"
        finally:
            COUNTS.enabled = True

    def v0_report(self, address: str, secret: str) -> tuple[int, str]:
        """ReportSystemInfo then ReportSystemState, each an empty message (a valid protobuf), over h2c with
        the node secret as `client_secret` metadata: v0.20.13 sets last_active on the state report."""
        import httpx

        COUNTS.enabled = False  # the agent's traffic is not the tool's
        try:
            if self.client is None:
                self.client = httpx.Client(http1=False, http2=True, timeout=30, trust_env=False)
            for method in ("ReportSystemInfo", "ReportSystemState"):
                answer = self.client.post(f"http://{address}/proto.NezhaService/{method}", content=GRPC_EMPTY,
                                          headers={"content-type": "application/grpc", "te": "trailers",
                                                   "client_secret": secret})
                if answer.status_code != 200 or answer.content[5:] != RECEIPT_PROCESSED:
                    return 0, f"agent refused: {method} HTTP {answer.status_code} {answer.content[:40]!r}"
            return 0, "installed; agent reported"
        except httpx.HTTPError as exc:  # the real agent keeps retrying; the run's wait tells
            return 0, f"installed; agent could not connect: {exc}"
        finally:
            COUNTS.enabled = True

    def grpc_enroll(self, server: str, secret: str, uuid: str) -> tuple[int, str]:
        version = b"storm"
        host = bytes([0x52, len(version)]) + version  # Host{version: "storm"} (field 10, a string)
        frame = b"\x00" + len(host).to_bytes(4, "big") + host
        answer = self.client.post(
            f"http://{server}/proto.NezhaService/ReportSystemInfo2", content=frame,
            headers={"content-type": "application/grpc", "te": "trailers", "client_secret": secret,
                     "client_uuid": uuid})
        status = answer.headers.get("grpc-status", "0")
        if answer.status_code != 200 or status != "0":
            return 0, f"agent refused: HTTP {answer.status_code} grpc-status {status}"
        self.report_state(server, secret, uuid)
        return 0, "enrolled"

    def report_state(self, server: str, secret: str, uuid: str) -> None:
        """The agent's state stream (ReportSystemState), one empty State, held open until the node's run ends:
        v2.3.7 sets last_active on the report and resets it to zero when the stream closes (issue 17), and
        `run` waits for last_active to change. In a thread, on its own connection."""
        import httpx

        done = threading.Event()

        def body() -> Any:
            yield GRPC_EMPTY
            done.wait(NODE_DEADLINE)

        def stream() -> None:
            with contextlib.suppress(httpx.HTTPError), \
                    httpx.Client(http1=False, http2=True, timeout=NODE_DEADLINE + 30, trust_env=False) as own:
                own.post(f"http://{server}/proto.NezhaService/ReportSystemState", content=body(),
                         headers={"content-type": "application/grpc", "te": "trailers", "client_secret": secret,
                                  "client_uuid": uuid})

        thread = threading.Thread(target=stream, daemon=True)
        thread.start()
        self.streams.append((done, thread))

    def close_streams(self) -> None:
        """The node's run ended: its agent's streams close (each thread joins within a few seconds)."""
        for done, thread in self.streams:
            done.set()
            thread.join(5)
        self.streams.clear()


UNRESOLVED = "probe.example.test"  # the v0 nodes' probe address when no agent port is given (never resolved)
GRPC_EMPTY = b"\x00\x00\x00\x00\x00"  # one gRPC frame: not compressed, length 0 (an empty message)
RECEIPT_PROCESSED = b"\x08\x01"  # Receipt{proced: true}, v0.20.13's answer to an accepted report


STUB = StubAgent(live=False)  # the worker's stub agent (one node at a time per worker)


def stub_system_run(stub: StubAgent) -> None:
    from nezha_bootstrap import system

    def run(argv: Any, *, cwd: Path | None = None, env: Any = None, timeout: float = 0.0,
            on_line: Callable[[str], None] | None = None, track: Path | None = None) -> Any:
        started = time.monotonic()
        code, output = stub.run(list(argv), cwd)
        return system.Completed(code, output, False, time.monotonic() - started)

    system.run = run  # type: ignore[assignment]


# --- the workers --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """What every node shares; each node adds its root, machine-id and name."""

    generation: str
    url: str
    env: dict[str, str]
    workdir: str
    live: bool
    rerun: bool = False


def machine_id(index: int, salt: str) -> str:
    return uuid_mod.uuid5(uuid_mod.NAMESPACE_OID, f"storm-{salt}-{index}").hex


def node_name(index: int) -> str:
    return f"storm-{index:05d}"


def run_node(job: Job, index: int, boot: float, salt: str) -> NodeResult:
    from nezha_bootstrap.cli import main

    result = NodeResult(index, boot)
    root = Path(job.workdir) / f"node-{index}"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/machine-id").write_text(machine_id(index, salt) + "\n", encoding="utf-8")
    os.environ.clear()
    os.environ.update({**job.env, "NEZHA_BOOTSTRAP_ROOT": str(root), "NODE_NAME": node_name(index)})
    COUNTS.reset()
    out, err = io.StringIO(), io.StringIO()
    result.started = time.monotonic()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(["run", "--json"], prog_name="nezha-bootstrap")
        result.exit_code = 0
    except SystemExit as exc:
        result.exit_code = exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # a crash of one node is a result, not the end of the storm
        result.exit_code, result.error = 99, f"{type(exc).__name__}: {exc}"
    result.finished = time.monotonic()
    STUB.close_streams()
    try:
        answer = json.loads(out.getvalue().strip().splitlines()[-1])
        result.outcome = str(answer.get("exit_reason") or answer.get("outcome", ""))
        if result.exit_code:  # --json's error: the message's lines
            result.error = result.error or " ".join(answer.get("error") or [])[:200]
    except (ValueError, IndexError, AttributeError):
        result.error = result.error or (err.getvalue().strip().splitlines() or [""])[-1][:200]
    result.requests, result.bytes_in, result.bytes_out = COUNTS.requests, COUNTS.bytes_in, COUNTS.bytes_out
    result.statuses, result.timeouts, result.downloads = dict(COUNTS.statuses), COUNTS.timeouts, COUNTS.downloads
    result.paths = dict(COUNTS.paths)  # the roots are removed after the storm: not the nodes' time
    result.server_id = recorded_id(root)
    if job.rerun and result.exit_code == 0:
        COUNTS.reset()
        result.rerun_exit_code = run_cli()[0]
        result.rerun_requests, result.rerun_bytes_in = COUNTS.requests, COUNTS.bytes_in
    return result


def recorded_id(root: Path) -> int | None:
    """The server id in the node's saved state, if any."""
    try:
        value = json.loads((root / "var/lib/nezha-bootstrap/state.json").read_text(encoding="utf-8")).get("server_id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def run_cli() -> tuple[int, str, str]:
    """One `nezha-bootstrap run --json` in this worker: its exit code, stdout and stderr."""
    from nezha_bootstrap.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(["run", "--json"], prog_name="nezha-bootstrap")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def worker(job: Job, jobs: Any, results: Any, salt: str, stop_at: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    host = job.url.split("://", 1)[1].split("/", 1)[0]
    COUNTS.dashboard = host if ":" in host else f"{host}:80"
    count_transport()
    STUB.live = job.live
    stub_system_run(STUB)
    while True:
        item = jobs.get()
        if item is None:
            return
        index, boot = item
        time.sleep(max(boot - time.monotonic(), 0.0))
        if time.monotonic() > stop_at:
            results.put(NodeResult(index, boot, error="not started: the storm's time limit passed"))
            continue
        results.put(run_node(job, index, boot, salt))


# --- dashboards: the fakes in a child process, or a live one ------------------------------------------

def fake_child(conn: Any, generation: str, existing: int, tag: str = "fleet") -> None:
    """Serve a fake dashboard with `existing` servers; hand back what it holds when told to stop."""
    if generation == "v0":
        from nezha_bootstrap.testing.fake_v0 import FakeDashboard, Server, serve

        fake0 = FakeDashboard(V0_TOKEN)
        for i in range(existing):
            fake0.servers.append(Server(i + 1, f"existing-{i}", tag, "", False, secrets.token_hex(9)))
        fake0._next_id = existing + 1
        running = serve(fake0, LOOPBACK)
        conn.send({"url": running.url, "pid": os.getpid(), "script_sha256": fake0.script_sha256})
        conn.recv()
        with fake0.lock:
            servers = [{"id": s.id, "name": s.name, "uuid": None} for s in fake0.servers]
    else:
        from nezha_bootstrap.agent import AGENT_V1
        from nezha_bootstrap.testing.fake_v1 import FakeV1, V1Server, serve_v1

        fake = FakeV1(profile="v2.1+")
        fake.add_release(AGENT_V1)
        token = fake.add_token()
        for i in range(existing):
            fake.servers.append(V1Server(i + 1, f"existing-{i}", str(uuid_mod.uuid4()), 1))
        fake._next_id = existing + 1
        running = serve_v1(fake)
        conn.send({"url": running.url, "pid": os.getpid(), "token": token, "agent_secret": fake.agent_secret})
        conn.recv()
        with fake.lock:
            servers = [{"id": s.id, "name": s.name, "uuid": s.uuid} for s in fake.servers]
    running.stop()
    conn.send({"servers": servers})


class FakeProcess:
    def __init__(self, generation: str, existing: int, tag: str = "fleet") -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=fake_child, args=(child, generation, existing, tag), daemon=True)
        self.process.start()
        if not self.conn.poll(120):
            self.process.kill()
            raise RuntimeError("the fake dashboard did not start")
        self.hello: dict[str, Any] = self.conn.recv()

    def servers(self) -> list[dict[str, Any]]:
        self.conn.send("stop")
        if not self.conn.poll(120):
            self.process.kill()
            raise RuntimeError("the fake dashboard did not answer")
        servers: list[dict[str, Any]] = self.conn.recv()["servers"]
        self.process.join(30)
        return servers


class Sampler:
    """Peak RSS and CPU of the dashboard process while the storm runs (psutil; 0.5 s samples)."""

    def __init__(self, pid: int | None) -> None:
        import psutil

        self.process = psutil.Process(pid) if pid else None
        self.peak_rss = 0
        self.peak_cpu = 0.0
        self.stop = threading.Event()
        self.cpu0 = self._cpu()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _cpu(self) -> float:
        if self.process is None:
            return 0.0
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def _loop(self) -> None:
        if self.process is None:
            return
        last_cpu, last = self._cpu(), time.monotonic()
        while not self.stop.wait(0.5):
            try:
                self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
                cpu, now = self._cpu(), time.monotonic()
            except Exception:  # the process went away: keep what was seen
                return
            self.peak_cpu = max(self.peak_cpu, (cpu - last_cpu) / max(now - last, 1e-6) * 100)
            last_cpu, last = cpu, now

    def finish(self) -> dict[str, Any] | None:
        self.stop.set()
        self.thread.join(5)
        if self.process is None:
            return None
        try:
            cpu = self._cpu() - self.cpu0
        except Exception:
            cpu = float("nan")
        return {"pid": self.process.pid, "peak_rss_mib": round(self.peak_rss / 2**20, 1),
                "cpu_s": round(cpu, 2), "peak_cpu_percent": round(self.peak_cpu, 1)}


def live_servers(url: str, generation: str) -> list[dict[str, Any]]:
    """Every server of the live dashboard (v2: admin login or access token; v0: the API token)."""
    import httpx

    env = os.environ
    with httpx.Client(base_url=url, timeout=120, trust_env=False) as http:
        if generation == "v0":
            answer = http.get("/api/v1/server/list", headers={"Authorization": env["NEZHA_LIVE_TOKEN"]})
            return [{"id": s["id"], "name": s["name"], "uuid": None} for s in answer.json().get("result") or []]
        if env.get("NEZHA_LIVE_USERNAME"):
            login = http.post("/api/v1/login", json={"username": env["NEZHA_LIVE_USERNAME"],
                                                     "password": env["NEZHA_LIVE_PASSWORD"]}).json()
            headers = {"Authorization": f"Bearer {login['data']['token']}"}
        else:
            headers = {"Authorization": f"Bearer {env['NEZHA_LIVE_TOKEN']}"}
        data = http.get("/api/v1/server", headers=headers).json().get("data") or []
        return [{"id": s["id"], "name": s["name"], "uuid": s.get("uuid")} for s in data]


# --- a storm --------------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float | None:
    return nearest_rank(values, q) if values else None


def spread_of(values: list[float], digits: int = 3) -> dict[str, float | None]:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, digits)
    return {"p50": rounded(percentile(values, 50)), "p95": rounded(percentile(values, 95)),
            "p99": rounded(percentile(values, 99)), "max": rounded(max(values) if values else None)}


@dataclass(frozen=True)
class Storm:
    generation: str
    nodes: int
    workers: int
    spread: float
    time_limit: float
    existing: int
    url: str | None
    dashboard_pid: int | None
    seed: int
    agent_port: int | None = None  # a live v0 dashboard's gRPC port (the stub agent reports there)
    existing_tag: str = "fleet"  # v0: the existing servers' tag (AutoRegister: the nodes' own, in their list)
    rerun: bool = False  # each node runs twice: the second run's requests and bytes are reported apart


def node_env(storm: Storm, url: str, hello: dict[str, Any], release_url: str | None) -> dict[str, str]:
    env = base_env()  # the same few variables as bench.py's runs, loopback exempt from proxies
    env.update({"NEZHA_DASHBOARD_URL": url, "NEZHA_BOOTSTRAP_DEADLINE": str(NODE_DEADLINE),
                # A root other than /: the installers are the fakes' stubs (and here carried out in-process).
                "NEZHA_BOOTSTRAP_REHEARSAL": "1"})
    if storm.generation == "v0":
        probe = {"NEZHA_PROBE_ADDRESS": UNRESOLVED}
        if storm.agent_port:
            probe = {"NEZHA_PROBE_ADDRESS": LOOPBACK, "NEZHA_PROBE_PORT": str(storm.agent_port)}
        env.update({"NEZHA_TOKEN": hello["token"], **probe,
                    "NEZHA_INSTALL_SCRIPT_URL": f"{release_url}/install.sh",
                    "NEZHA_INSTALL_SCRIPT_SHA256": hello["script_sha256"]})
    else:
        env.update({"NEZHA_TOKEN": hello["token"], "NEZHA_AGENT_SECRET": hello["agent_secret"],
                    "NEZHA_AGENT_BASE_URL": f"{release_url}/releases"})
    return env


def live_hello(storm: Storm) -> dict[str, Any]:
    env = os.environ
    missing = [n for n in ("NEZHA_LIVE_TOKEN",) if not env.get(n)]
    if storm.generation != "v0" and not env.get("NEZHA_LIVE_AGENT_SECRET"):
        missing.append("NEZHA_LIVE_AGENT_SECRET")
    if missing:
        raise SystemExit(f"--url needs {', '.join(missing)} (as tests/live takes them)")
    return {"token": env["NEZHA_LIVE_TOKEN"], "agent_secret": env.get("NEZHA_LIVE_AGENT_SECRET", "")}


def release_host(generation: str) -> tuple[Any, str, str]:
    """A fake on 127.0.0.1 serving only what a live run downloads: the agent release, or install.sh."""
    from nezha_bootstrap.agent import AGENT_V1
    from nezha_bootstrap.testing.fake_v0 import FakeDashboard, serve
    from nezha_bootstrap.testing.fake_v1 import FakeV1, serve_v1

    if generation == "v0":
        fake0 = FakeDashboard(V0_TOKEN)
        running = serve(fake0, LOOPBACK)
        return running, running.url, fake0.script_sha256
    fake = FakeV1(profile="v2.1+")
    fake.add_release(AGENT_V1)
    running = serve_v1(fake)
    return running, running.url, ""


def run_storm(storm: Storm) -> dict[str, Any]:
    import nezha_bootstrap.cli  # noqa: F401  # imported before the fork: the workers start warm
    from nezha_bootstrap.identity import resolve

    fake = None
    releases = None
    if storm.url:
        hello = live_hello(storm)
        url = storm.url.rstrip("/")
        releases, release_url, sha = release_host(storm.generation)
        hello["script_sha256"] = sha
        pid = storm.dashboard_pid
        before_ids = {s["id"] for s in live_servers(url, storm.generation)}
    else:
        fake = FakeProcess(storm.generation, storm.existing, storm.existing_tag)
        hello = {**fake.hello, "token": fake.hello.get("token", V0_TOKEN)}
        url = release_url = fake.hello["url"]
        pid = fake.hello["pid"]
        before_ids = set(range(1, storm.existing + 1))
    salt = secrets.token_hex(4)
    workdir = tempfile.mkdtemp(prefix="storm-", dir=os.environ.get("STORM_WORKDIR"))
    job = Job(storm.generation, url, node_env(storm, url, hello, release_url), workdir, bool(storm.url),
              storm.rerun)
    context = multiprocessing.get_context("fork")
    jobs, results = context.Queue(), context.Queue()
    rng = random.Random(storm.seed)
    first_boot = time.monotonic() + 1.0
    boots = sorted((first_boot + rng.uniform(0, storm.spread), i) for i in range(storm.nodes))
    for boot, index in boots:
        jobs.put((index, boot))
    for _ in range(storm.workers):
        jobs.put(None)
    stop_at = first_boot + storm.time_limit
    sampler = Sampler(pid)
    processes = [context.Process(target=worker, args=(job, jobs, results, salt, stop_at), daemon=True)
                 for _ in range(storm.workers)]
    for process in processes:
        process.start()
    done: dict[int, NodeResult] = {}
    hard_stop = stop_at + NODE_DEADLINE + 60
    while len(done) < storm.nodes and time.monotonic() < hard_stop:
        try:
            node = results.get(timeout=1.0)
        except queue.Empty:
            if not any(p.is_alive() for p in processes):
                break
            continue
        done[node.index] = node
    for process in processes:
        process.join(2)
        if process.is_alive():
            process.kill()
    dashboard = sampler.finish()
    servers = fake.servers() if fake else live_servers(url, storm.generation)
    if releases is not None:
        releases.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    uuids = {resolve(None, machine_id(i, salt), None, None).uuid: i for i in range(storm.nodes)}
    return figures(storm, done, servers, before_ids, uuids, first_boot, dashboard)


def figures(storm: Storm, done: dict[int, NodeResult], servers: list[dict[str, Any]], before_ids: set[int],
            uuids: dict[str, int], first_boot: float, dashboard: dict[str, Any] | None) -> dict[str, Any]:
    nodes = [done.get(i) or NodeResult(i, 0.0, error="lost: no result from its worker") for i in range(storm.nodes)]
    new = [s for s in servers if s["id"] not in before_ids]
    names = {node_name(i) for i in range(storm.nodes)}
    if storm.generation == "v0":
        per_node = Counter(s["name"] for s in new if s["name"] in names)
    else:
        per_node = Counter(uuids[s["uuid"]] for s in new if s.get("uuid") in uuids)
    named = sum(1 for s in new if s["name"] in names)
    if storm.generation == "v0":  # each node's own server: the one of its name (a duplicate: none is surely its)
        own = {int(s["id"]): names_index[s["name"]] for s in new if per_node.get(s["name"]) == 1
               for names_index in [{node_name(i): i for i in range(storm.nodes)}]}
    else:
        own = {int(s["id"]): uuids[s["uuid"]] for s in new if s.get("uuid") in uuids}
    node_of = {index: server_id for server_id, index in own.items()}
    recorded = [n for n in nodes if n.server_id is not None]
    ok = [n for n in nodes if n.exit_code == 0]
    errors = Counter((n.error or n.outcome or "?")[:160] for n in nodes if n.exit_code != 0)
    statuses: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    for n in nodes:
        statuses.update(n.statuses)
        paths.update(n.paths)
    ran = [n for n in nodes if n.finished]
    last_done = max((n.finished for n in ran), default=first_boot)
    return {
        "nodes": storm.nodes, "existing_servers": len(before_ids), "succeeded": len(ok),
        "failures": storm.nodes - len(ok), "errors": dict(errors.most_common(6)),
        "servers_made": len(new), "nodes_with_a_server": len(per_node), "named": named,
        "duplicates": sum(c - 1 for c in per_node.values() if c > 1),
        "ids_recorded_right_wrong_none": [sum(1 for n in recorded if node_of.get(n.index) == n.server_id),
                                          sum(1 for n in recorded if node_of.get(n.index) != n.server_id),
                                          storm.nodes - len(recorded)],
        "lost_nodes": storm.nodes - len(per_node),
        "dashboard_5xx": sum(v for k, v in statuses.items() if k.startswith("5")),
        "dashboard_429": statuses.get("429", 0), "timeouts": sum(n.timeouts for n in nodes),
        "requests_per_node": spread_of([float(n.requests) for n in ran], 1),
        "bytes_in_per_node": spread_of([float(n.bytes_in) for n in ran], 0),
        "bytes_out_per_node": spread_of([float(n.bytes_out) for n in ran], 0),
        "requests_total": sum(n.requests for n in nodes),
        "requests_per_node_by_path": {k: round(v / max(len(ran), 1), 2) for k, v in sorted(paths.items())},
        "bytes_in_total": sum(n.bytes_in for n in nodes),
        "reruns_ok": sum(1 for n in nodes if n.rerun_exit_code == 0) if storm.rerun else None,
        "rerun_requests_per_node": spread_of([float(n.rerun_requests) for n in ran if n.rerun_exit_code is not None], 1)
        if storm.rerun else None,
        "rerun_bytes_in_per_node": spread_of([float(n.rerun_bytes_in) for n in ran if n.rerun_exit_code is not None], 0)
        if storm.rerun else None,
        "first_boot_to_last_done_s": round(last_done - first_boot, 2),
        "node_boot_to_done_s": spread_of([n.finished - n.boot for n in ran]),
        "node_run_s": spread_of([n.finished - n.started for n in ran]),
        "node_queued_s": spread_of([n.started - n.boot for n in ran]),
        "dashboard": dashboard,
        "load_after": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


# --- seeding a real dashboard's sqlite before it starts ----------------------------------------------

def seed_sqlite(db: Path, count: int, generation: str, tag: str = "fleet") -> int:
    """Insert `count` servers into a stopped dashboard's sqlite (the tables its first start made)."""
    stamp = "2026-12-01 00:00:00"
    with sqlite3.connect(db) as con:
        columns = {row[1] for row in con.execute("PRAGMA table_info(servers)")}
        start = (con.execute("SELECT COALESCE(MAX(id), 0) FROM servers").fetchone()[0]) + 1
        rows = []
        for i in range(start, start + count):
            row: dict[str, Any] = {"id": i, "created_at": stamp, "updated_at": stamp, "name": f"fleet-{i}",
                                   "secret": secrets.token_hex(12), "tag": tag, "note": "",
                                   "display_index": 0, "hide_for_guest": 0}
            if generation != "v0":
                row.update({"uuid": str(uuid_mod.uuid4()), "user_id": 1, "public_note": "", "enable_ddns": 0,
                            "ddns_profiles_raw": "[]", "override_ddns_domains_raw": "{}"})
            rows.append({k: v for k, v in row.items() if k in columns})
        keys = list(rows[0]) if rows else []
        con.executemany(f"INSERT INTO servers ({', '.join(keys)}) VALUES ({', '.join('?' for _ in keys)})",
                        [tuple(r[k] for k in keys) for r in rows])
        return int(con.execute("SELECT COUNT(*) FROM servers").fetchone()[0])


# --- the table, the JSON, the command line ------------------------------------------------------------

ROWS = (
    ("nodes", "nodes"), ("existing servers", "existing_servers"), ("succeeded", "succeeded"),
    ("failures", "failures"), ("servers made", "servers_made"), ("named", "named"),
    ("duplicates", "duplicates"), ("lost nodes", "lost_nodes"),
    ("server ids saved right / wrong / none", "ids_recorded_right_wrong_none"), ("dashboard 5xx", "dashboard_5xx"),
    ("dashboard 429", "dashboard_429"), ("timeouts", "timeouts"),
    ("requests/node p50/p95/max", "requests_per_node"), ("bytes in/node p50/p95/max", "bytes_in_per_node"),
    ("bytes out/node p50/p95/max", "bytes_out_per_node"), ("reruns ok (--rerun)", "reruns_ok"),
    ("rerun requests/node p50/p95/max", "rerun_requests_per_node"),
    ("rerun bytes in/node p50/p95/max", "rerun_bytes_in_per_node"),
    ("first boot -> last done (s)", "first_boot_to_last_done_s"),
    ("node boot->done p50/p95/p99 (s)", "node_boot_to_done_s"), ("node run p50/p95/p99 (s)", "node_run_s"),
    ("node queued p50/p95/p99 (s)", "node_queued_s"), ("load average after", "load_after"),
    ("dashboard peak RSS MiB / CPU s / peak %", "dashboard"),
)


def cell(value: Any, key: str) -> str:
    if isinstance(value, list):
        return " / ".join(str(v) for v in value)
    if isinstance(value, dict) and key == "dashboard":
        return f"{value['peak_rss_mib']} / {value['cpu_s']} / {value['peak_cpu_percent']}"
    if isinstance(value, dict):
        keys = ("p50", "p95", "max") if "per_node" in key else ("p50", "p95", "p99")
        return " / ".join("-" if value.get(k) is None else f"{value[k]:,.0f}" if value[k] >= 1000 else f"{value[k]:g}"
                          for k in keys)
    return "n/a" if value is None else str(value)


def table(columns: dict[str, dict[str, Any]]) -> str:
    rows = [("", *columns)]
    rows += [(label, *(cell(result.get(key), key) for result in columns.values())) for label, key in ROWS]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generation", choices=("v2", "v0"), default="v2",
                        help="v2: a v2.1+ dashboard in token mode (agent secret + access token); v0: register API")
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--existing", default="0",
                        help="servers the fake holds before the storm; a comma list runs one storm each")
    parser.add_argument("--workers", type=int, default=WORKERS,
                        help=f"worker processes, each running one node at a time: the nodes that can run at once "
                        f"(default {WORKERS}: a real storm's nodes all run at once, each on its own CPU; too few "
                        "workers queue them here, which 'node queued' shows)")
    parser.add_argument("--spread", type=float, default=5.0, help="nodes boot at random moments within this (s)")
    parser.add_argument("--existing-tag", default="fleet",
                        help="the existing servers' tag (the fake v0's and --seed-sqlite's): AutoRegister puts them "
                        "in the list every v0 node reads (its own tag), any other keeps them out of it")
    parser.add_argument("--time-limit", type=float, default=600.0, help="no node starts after this (s)")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--rerun", action="store_true",
                        help="each node runs `run` a second time right after the first (a reboot: nothing to do); "
                        "its requests and bytes are reported apart")
    parser.add_argument("--url", help="a live dashboard (credentials: NEZHA_LIVE_TOKEN, NEZHA_LIVE_AGENT_SECRET, "
                        "and for reading back NEZHA_LIVE_USERNAME/_PASSWORD)")
    parser.add_argument("--dashboard-pid", type=int, help="the live dashboard's pid, to sample its RSS and CPU")
    parser.add_argument("--agent-port", type=int,
                        help="a live v0 dashboard's agent (gRPC) port: the nodes' probe port, where the stub agent "
                        "reports as agent v0.20.5 does, so that each node's online wait can end; without it the "
                        "nodes of a live v0 storm end with exit 4 (no agent report)")
    parser.add_argument("--label", default="", help="this storm's column name in the table")
    parser.add_argument("--variants", help="NAME=TREE,...: run the same storm with each tree's nezha_bootstrap "
                        "(a checkout), one column each")
    parser.add_argument("--seed-sqlite", nargs=3, metavar=("DB", "COUNT", "GENERATION"),
                        help="insert COUNT servers into a stopped dashboard's sqlite and exit")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                        help="print one table of the storms in these result files and exit")
    parser.add_argument("--json", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def run_variants(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Each variant: this script in a child with PYTHONPATH=TREE (its tool), same storm, one column each."""
    columns: dict[str, Any] = {}
    rest = [a for a in argv if not a.startswith("--variants")]
    if "--variants" in argv:
        i = argv.index("--variants")
        rest = argv[:i] + argv[i + 2:]
    for spec in args.variants.split(","):
        name, _, tree = spec.partition("=")
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
            path = Path(out.name)
        env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *rest, "--json", str(path),
                               "--label", name], env=env, timeout=args.time_limit * 4 + 1200)
        if done.returncode != 0:
            raise RuntimeError(f"variant {name} failed (exit {done.returncode})")
        for label, result in json.loads(path.read_text())["storms"].items():
            columns[label] = result
        path.unlink()
    return columns


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.seed_sqlite:
        db, count, generation = args.seed_sqlite
        print(f"{seed_sqlite(Path(db), int(count), generation, args.existing_tag)} servers in {db}")
        return 0
    if args.merge:
        print(table({label: result for path in args.merge
                     for label, result in json.loads(path.read_text(encoding="utf-8"))["storms"].items()}))
        return 0
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = f"{LOOPBACK},localhost"
    started = time.monotonic()
    if args.variants:
        columns = run_variants(args, argv)
    else:
        columns = {}
        for existing in (int(x) for x in args.existing.split(",")):
            storm = Storm(args.generation, args.nodes, args.workers, args.spread, args.time_limit, existing,
                          args.url, args.dashboard_pid, args.seed, args.agent_port, existing_tag=args.existing_tag,
                          rerun=args.rerun)
            print(f"storm: {storm.nodes} nodes, {existing} existing, {storm.workers} workers ...",
                  file=sys.stderr, flush=True)
            label = "/".join(x for x in (args.label, f"{args.nodes}n", f"{existing}e" if not args.url else "live")
                             if x)
            columns[label] = run_storm(storm)
    load = os.getloadavg()
    results = {"meta": {"command": " ".join(["storm.py", *argv]), "python": platform.python_version(),
                        "cpus": os.cpu_count(), "loadavg_after": [round(x, 2) for x in load],
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "elapsed_s": round(time.monotonic() - started, 1),
                        "tool": str(Path(__import__("nezha_bootstrap").__file__).parent)},
               "storms": columns}
    print(table(columns))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, allow_nan=False, default=str) + "\n", encoding="utf-8")
    print(f"results written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
