"""Simulated v0 nodes registering in threads (the package's own registration code) against a fake v0
dashboard in its own process: the recovery and fleet benchmarks."""

from __future__ import annotations

import multiprocessing
import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Callable

from benchmarks.common import LOOPBACK, PROCESS_TIMEOUT, TOKEN
from nezha_bootstrap.config import Settings, build
from nezha_bootstrap.errors import BootstrapError, DashboardUnreachable
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.http import make_client
from nezha_bootstrap.retry import with_retries
from nezha_bootstrap.testing.fake_v0 import FakeDashboard, serve
from nezha_bootstrap.v0.api import Dashboard, Registration

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

