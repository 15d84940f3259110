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

The stub agent retries as the real one does. Agent v2.3.3 (nezhahq/agent, cmd/agent/main.go, `run`):
ReportSystemInfo2 under a 10 s context timeout; on any error (connection, timeout, a gRPC status) its
`retry` closes the connection, sleeps `delayWhenError` (10 s, fixed: no backoff, no jitter) and
dials again, forever. Agent v0.20.5 (same file, `run`) does the same around ReportSystemInfo under
`networkTimeOut` (5 s). So here a node's first call is made at once (in `system.run`, as before); if it
fails, a thread per node calls again every --agent-retry-delay (default 10 s), each on a new connection,
until one gets through or the node's run ends (`close_streams`: the thread stops and is joined, bounded;
the run's own verdict decides). Per storm the JSON and the table say what the agents did: attempts,
failures by reason, and the nodes that got through only after a failed attempt or never did, so that a
lost node can be told from a harness artefact. The agents' traffic is not counted as the tool's.

Requests, bytes and status codes are counted per node in the worker (httpx's transport, wrapped),
for the dashboard's address only (release downloads apart). The dashboard's peak RSS and CPU are
sampled with psutil when it runs here (the fakes; a live one with --dashboard-pid); the harness's own CPU
(this process and its workers: the nodes' `run` with the stub agents) per node beside it. Only loopback
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
AGENT_RETRY_DELAY = 10.0  # agents v2.3.3 and v0.20.5 (cmd/agent/main.go): delayWhenError, the pause before a new dial
V2_CALL_TIMEOUT = 10.0  # agent v2.3.3: ReportSystemInfo2's context timeout
V0_CALL_TIMEOUT = 5.0  # agent v0.20.5: networkTimeOut, ReportSystemInfo's


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
    agent_attempts: int = 0  # the stub agent's enrollment (v0: report) calls while the node's run lasted
    agent_failures: dict[str, int] = field(default_factory=dict)  # short reason -> failed calls
    agent_through_at: int | None = None  # the call that first got through (1: the first; None: none did)


class AgentLog:
    """One node's agent calls: how many, why each failed, which first got through (the worker's thread and the
    node's retry thread both record)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts = 0
        self.failures: Counter[str] = Counter()
        self.through_at: int | None = None

    def record(self, reason: str | None) -> None:
        with self.lock:
            self.attempts += 1
            if reason is not None:
                self.failures[reason] += 1
            elif self.through_at is None:
                self.through_at = self.attempts


class Counts:
    """Per-node counters the wrapped transport fills (one node at a time per worker)."""

    def __init__(self) -> None:
        self.dashboard = ""
        self.reset()

    def reset(self) -> None:
        self.requests = self.bytes_in = self.bytes_out = self.timeouts = self.downloads = 0
        self.statuses: Counter[str] = Counter()
        self.paths: Counter[str] = Counter()


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
        ours = not getattr(self, "agent", False) and f"{request.url.host}:{request.url.port}" == COUNTS.dashboard
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


TLS_CONTEXT: list[Any] = []  # one per worker: building one per client costs ~30 ms of CPU (the CA bundle)


def agent_client(http2: bool, timeout: float) -> Any:
    """A client for the stub agent's calls: its transport is marked, so the counts leave it out; it shares the
    worker's TLS context (these calls are plain h2c or HTTP/1, but httpx builds one per client)."""
    import ssl

    import httpx

    if not TLS_CONTEXT:
        TLS_CONTEXT.append(ssl.create_default_context())
    transport = httpx.HTTPTransport(http1=not http2, http2=http2, verify=TLS_CONTEXT[0], trust_env=False)
    transport.agent = True  # type: ignore[attr-defined]  # read by count_transport's wrapper
    return httpx.Client(transport=transport, timeout=timeout, trust_env=False)


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

    def __init__(self, live: bool, retry_delay: float = AGENT_RETRY_DELAY) -> None:
        self.live = live
        self.retry_delay = retry_delay
        self.client: Any = None  # the worker's agent connection for first calls (the retries dial anew)
        self.streams: list[tuple[threading.Event, threading.Thread]] = []
        self.loops: list[tuple[threading.Event, threading.Thread]] = []  # the retrying agents of this node
        self.log = AgentLog()

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
        secret = words[words.index("-p") + 1]
        if self.live:
            address = words[words.index("-s") + 1]
            if address.startswith(UNRESOLVED + ":"):
                return 0, "installed (no agent reports to a live v0 dashboard without --agent-port)"
            return self.start_agent(lambda client: self.v0_report(client, address, secret), V0_CALL_TIMEOUT)
        url, tls = os.environ["NEZHA_DASHBOARD_URL"] + "/_fake/agent-connect", "--tls" in words
        return self.start_agent(lambda client: self.fake_v0_connect(client, url, secret, tls), V0_CALL_TIMEOUT)

    def enroll(self, config: Path) -> tuple[int, str]:
        """The agent's first call: the dashboard creates the server for an unknown uuid."""
        values = yaml_values(config)
        server, secret, uuid = values["server"], values["client_secret"], values["uuid"]
        if not self.live:
            return self.start_agent(lambda client: self.fake_enroll(client, server, secret, uuid), V2_CALL_TIMEOUT)
        return self.start_agent(lambda client: self.grpc_enroll(client, server, secret, uuid), V2_CALL_TIMEOUT,
                                then=lambda: self.report_state(server, secret, uuid))

    def start_agent(self, call: Callable[[Any], str | None], timeout: float,
                    then: Callable[[], None] | None = None) -> tuple[int, str]:
        """The agent (re)starts: its call now (None: it got through, else why not); if that failed, again every
        `retry_delay` s in a thread, each on a new connection, until one gets through or the node's run ends.
        A restart stops the loop the agent had (its call in flight, if any, still ends within `timeout`)."""
        self.stop_loops(join=0.0)
        if self.client is None:
            self.client = agent_client(http2=self.live, timeout=timeout)
        reason = self.attempt(lambda: call(self.client))
        if reason is None:
            if then is not None:
                then()
            return 0, "installed; agent got through"
        stop, log = threading.Event(), self.log

        def again() -> str | None:
            with agent_client(http2=self.live, timeout=timeout) as client:
                return call(client)

        def loop() -> None:
            while not stop.wait(self.retry_delay):
                if self.attempt(again, log) is None:
                    if then is not None and not stop.is_set():
                        then()
                    return

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        self.loops.append((stop, thread))
        return 0, f"installed; agent could not connect ({reason}), retrying every {self.retry_delay:g} s"

    def attempt(self, call: Callable[[], str | None], log: AgentLog | None = None) -> str | None:
        """One call of the agent's, recorded in the node's log: None when it got through, else a short reason
        (an exception's type: the real agent calls again whatever the error, and so does this one)."""
        try:
            reason = call()
        except Exception as exc:  # a stub agent's failure is a figure, never the node's crash
            reason = type(exc).__name__
        (log or self.log).record(reason)
        return reason

    def fake_enroll(self, client: Any, server: str, secret: str, uuid: str) -> str | None:
        answer = client.post(f"http://{server}/_fake/agent-connect", json={"uuid": uuid, "secret": secret})
        if answer.status_code != 200:
            return f"HTTP {answer.status_code}"
        return None

    def fake_v0_connect(self, client: Any, url: str, secret: str, tls: bool) -> str | None:
        answer = client.post(url, json={"secret": secret, "tls": tls})
        if answer.status_code != 200:
            return f"HTTP {answer.status_code}"
        outcome = answer.json().get("outcome")
        return None if outcome == "connected" else f"port: {outcome}"

    def v0_report(self, client: Any, address: str, secret: str) -> str | None:
        """ReportSystemInfo then ReportSystemState, each an empty message (a valid protobuf), over h2c with
        the node secret as `client_secret` metadata: v0.20.13 sets last_active on the state report."""
        for method in ("ReportSystemInfo", "ReportSystemState"):
            answer = client.post(f"http://{address}/proto.NezhaService/{method}", content=GRPC_EMPTY,
                                 headers={"content-type": "application/grpc", "te": "trailers",
                                          "client_secret": secret})
            if answer.status_code != 200:
                return f"{method} HTTP {answer.status_code}"
            if answer.content[5:] != RECEIPT_PROCESSED:
                return f"{method} grpc-status {answer.headers.get('grpc-status', '?')}"
        return None

    def grpc_enroll(self, client: Any, server: str, secret: str, uuid: str) -> str | None:
        version = b"storm"
        host = bytes([0x52, len(version)]) + version  # Host{version: "storm"} (field 10, a string)
        frame = b"\x00" + len(host).to_bytes(4, "big") + host
        answer = client.post(
            f"http://{server}/proto.NezhaService/ReportSystemInfo2", content=frame,
            headers={"content-type": "application/grpc", "te": "trailers", "client_secret": secret,
                     "client_uuid": uuid})
        status = answer.headers.get("grpc-status", "0")
        if answer.status_code != 200:
            return f"HTTP {answer.status_code}"
        if status != "0":
            return f"grpc-status {status}"
        if len(answer.content) < 5:  # an OK answer carries its Uint64Receipt; v2.3.7 (gRPC served over net/http)
            return "no receipt"  # sends a failure's grpc-status in trailers, which httpx does not hand over
        return None

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
            with contextlib.suppress(httpx.HTTPError), agent_client(http2=True, timeout=NODE_DEADLINE + 30) as own:
                own.post(f"http://{server}/proto.NezhaService/ReportSystemState", content=body(),
                         headers={"content-type": "application/grpc", "te": "trailers", "client_secret": secret,
                                  "client_uuid": uuid})

        thread = threading.Thread(target=stream, daemon=True)
        thread.start()
        self.streams.append((done, thread))

    def stop_loops(self, join: float) -> None:
        """Stop the agent's retry loops; wait up to `join` s in all for them to end."""
        until = time.monotonic() + join
        for stop, _ in self.loops:
            stop.set()
        for _, thread in self.loops:
            thread.join(max(until - time.monotonic(), 0.0))
        self.loops.clear()

    def close_streams(self) -> AgentLog:
        """The node's run ended: its agent stops calling and its streams close (within a few seconds); returns
        what the agent did while the run lasted, and starts the next node's log."""
        self.stop_loops(join=V2_CALL_TIMEOUT + 1)  # a call under way ends by its own timeout, within the node
        for done, thread in self.streams:
            done.set()
            thread.join(5)
        self.streams.clear()
        log, self.log = self.log, AgentLog()
        return log


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
    agent_retry_delay: float = AGENT_RETRY_DELAY


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
    agent = STUB.close_streams()
    with agent.lock:
        result.agent_attempts, result.agent_through_at = agent.attempts, agent.through_at
        result.agent_failures = dict(agent.failures)
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
        STUB.close_streams()  # what the agent did on the rerun is not the storm's
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
    STUB.live, STUB.retry_delay = job.live, job.agent_retry_delay
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

def drop_agent_connects(fake: Any, count: int) -> None:
    """The fake drops (closes without an answer) the first `count` /_fake/agent-connect calls: agents whose call
    fails, as some did in a live storm (the others and every other route are served as before)."""
    original, left = fake.handle, [count]

    def handle(method: str, target: str, headers: dict[str, str], body: bytes, client: str) -> Any:
        if target.startswith("/_fake/agent-connect"):
            with fake.lock:
                drop = left[0] > 0
                left[0] -= drop
            if drop:
                return "drop"
        return original(method, target, headers, body, client)

    fake.handle = handle


def fake_child(conn: Any, generation: str, existing: int, tag: str = "fleet", drop_connects: int = 0) -> None:
    """Serve a fake dashboard with `existing` servers; hand back what it holds when told to stop."""
    if generation == "v0":
        from nezha_bootstrap.testing.fake_v0 import FakeDashboard, Server, serve

        fake0 = FakeDashboard(V0_TOKEN)
        for i in range(existing):
            fake0.servers.append(Server(i + 1, f"existing-{i}", tag, "", False, secrets.token_hex(9)))
        fake0._next_id = existing + 1
        drop_agent_connects(fake0, drop_connects)
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
        drop_agent_connects(fake, drop_connects)
        running = serve_v1(fake)
        conn.send({"url": running.url, "pid": os.getpid(), "token": token, "agent_secret": fake.agent_secret})
        conn.recv()
        with fake.lock:
            servers = [{"id": s.id, "name": s.name, "uuid": s.uuid} for s in fake.servers]
    running.stop()
    conn.send({"servers": servers})


class FakeProcess:
    def __init__(self, generation: str, existing: int, tag: str = "fleet", drop_connects: int = 0) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=fake_child, args=(child, generation, existing, tag, drop_connects),
                                       daemon=True)
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
    agent_retry_delay: float = AGENT_RETRY_DELAY  # the stub agent's pause before it calls again
    drop_agent_connects: int = 0  # the fake drops this many of the stub agents' first calls (a fault, to test)


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
        fake = FakeProcess(storm.generation, storm.existing, storm.existing_tag, storm.drop_agent_connects)
        hello = {**fake.hello, "token": fake.hello.get("token", V0_TOKEN)}
        url = release_url = fake.hello["url"]
        pid = fake.hello["pid"]
        before_ids = set(range(1, storm.existing + 1))
    salt = secrets.token_hex(4)
    workdir = tempfile.mkdtemp(prefix="storm-", dir=os.environ.get("STORM_WORKDIR"))
    job = Job(storm.generation, url, node_env(storm, url, hello, release_url), workdir, bool(storm.url),
              storm.rerun, storm.agent_retry_delay)
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
    cpu_before = harness_cpu()
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
    cpu = harness_cpu() - cpu_before
    dashboard = sampler.finish()
    servers = fake.servers() if fake else live_servers(url, storm.generation)
    if releases is not None:
        releases.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    uuids = {resolve(None, machine_id(i, salt), None, None).uuid: i for i in range(storm.nodes)}
    return {**figures(storm, done, servers, before_ids, uuids, first_boot, dashboard),
            "harness_cpu_s": round(cpu, 2), "harness_cpu_ms_per_node": round(cpu / max(storm.nodes, 1) * 1000, 1)}


def harness_cpu() -> float:
    """CPU seconds of this process and of its children waited for (the workers, once joined; a worker that had
    to be killed is not counted). The fake dashboard runs in a child joined later: its CPU is `dashboard`'s."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
    agent_failures: Counter[str] = Counter()
    for n in nodes:
        agent_failures.update(n.agent_failures)
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
        "lost_nodes_agent": lost_agents(storm, nodes, per_node),
        "dashboard_5xx": sum(v for k, v in statuses.items() if k.startswith("5")),
        "dashboard_429": statuses.get("429", 0), "timeouts": sum(n.timeouts for n in nodes),
        "requests_per_node": spread_of([float(n.requests) for n in ran], 1),
        "bytes_in_per_node": spread_of([float(n.bytes_in) for n in ran], 0),
        "bytes_out_per_node": spread_of([float(n.bytes_out) for n in ran], 0),
        "requests_total": sum(n.requests for n in nodes),
        "requests_per_node_by_path": {k: round(v / max(len(ran), 1), 2) for k, v in sorted(paths.items())},
        "bytes_in_total": sum(n.bytes_in for n in nodes),
        # the stub agents' side: calls, failures by reason, nodes through only after a failed call, or never
        "agent_attempts": sum(n.agent_attempts for n in nodes),
        "agent_failures": dict(agent_failures.most_common()),
        "agent_through_after_retry": sum(1 for n in nodes if (n.agent_through_at or 0) > 1),
        "agent_never_through": sum(1 for n in ran if n.agent_attempts and n.agent_through_at is None),
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


def lost_agents(storm: Storm, nodes: list[NodeResult], per_node: Counter[Any]) -> dict[str, int]:
    """What the agent of each node without a server did: got through (the dashboard took its call, yet no
    server: the dashboard's doing), never got through while the run lasted, or never called (the run ended
    before its agent started: the tool's verdict)."""
    lost = [n for n in nodes if (node_name(n.index) if storm.generation == "v0" else n.index) not in per_node]
    kinds = Counter("no call" if not n.agent_attempts else "never through" if n.agent_through_at is None
                    else "through" for n in lost)
    return dict(sorted(kinds.items()))


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
    ("duplicates", "duplicates"), ("lost nodes", "lost_nodes"), ("lost nodes' agents", "lost_nodes_agent"),
    ("server ids saved right / wrong / none", "ids_recorded_right_wrong_none"), ("dashboard 5xx", "dashboard_5xx"),
    ("dashboard 429", "dashboard_429"), ("timeouts", "timeouts"),
    ("requests/node p50/p95/max", "requests_per_node"), ("bytes in/node p50/p95/max", "bytes_in_per_node"),
    ("bytes out/node p50/p95/max", "bytes_out_per_node"),
    ("agent calls / through after retry / never", "agent"), ("agent failures by reason", "agent_failures"),
    ("reruns ok (--rerun)", "reruns_ok"),
    ("rerun requests/node p50/p95/max", "rerun_requests_per_node"),
    ("rerun bytes in/node p50/p95/max", "rerun_bytes_in_per_node"),
    ("first boot -> last done (s)", "first_boot_to_last_done_s"),
    ("node boot->done p50/p95/p99 (s)", "node_boot_to_done_s"), ("node run p50/p95/p99 (s)", "node_run_s"),
    ("node queued p50/p95/p99 (s)", "node_queued_s"), ("load average after", "load_after"),
    ("dashboard peak RSS MiB / CPU s / peak %", "dashboard"),
    ("harness CPU s / ms per node", "harness"),
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


def value_of(result: dict[str, Any], key: str) -> Any:
    """A row's value; the agent's and the harness's rows join several figures (None: a result from before them)."""
    if key == "agent":
        keys: tuple[str, ...] = ("agent_attempts", "agent_through_after_retry", "agent_never_through")
    elif key == "harness":
        keys = ("harness_cpu_s", "harness_cpu_ms_per_node")
    elif key in ("agent_failures", "lost_nodes_agent") and key in result:
        return ", ".join(f"{reason} {count}" for reason, count in result[key].items()) or "none"
    else:
        return result.get(key)
    return [result[k] for k in keys] if all(k in result for k in keys) else None


def table(columns: dict[str, dict[str, Any]]) -> str:
    rows = [("", *columns)]
    rows += [(label, *(cell(value_of(result, key), key) for result in columns.values())) for label, key in ROWS]
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
    parser.add_argument("--agent-retry-delay", type=float, default=AGENT_RETRY_DELAY,
                        help=f"the stub agent's pause before it calls again after a failed call (default "
                        f"{AGENT_RETRY_DELAY:g} s, the real agent's delayWhenError)")
    parser.add_argument("--drop-agent-connects", type=int, default=0,
                        help="the fake drops this many of the stub agents' calls, the first ones (a fault: the "
                        "agents retry)")
    parser.add_argument("--label", default="", help="this storm's column name in the table")
    parser.add_argument("--variants", help="NAME=TREE,...: run the same storm with each tree's nezha_bootstrap "
                        "(a checkout), one column each")
    parser.add_argument("--seed-sqlite", nargs=3, metavar=("DB", "COUNT", "GENERATION"),
                        help="insert COUNT servers into a stopped dashboard's sqlite and exit")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                        help="print one table of the storms in these result files and exit")
    parser.add_argument("--json", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.agent_retry_delay <= 0:  # a stub agent would call again in a tight loop until its node's run ends
        parser.error("--agent-retry-delay must be more than 0 seconds")
    return args


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
                          rerun=args.rerun, agent_retry_delay=args.agent_retry_delay,
                          drop_agent_connects=args.drop_agent_connects)
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
