"""What the benchmarks share: sizes, targets and outcomes, percentiles, timed child processes, loopback."""

from __future__ import annotations

import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent  # benchmarks/
LOOPBACK = "127.0.0.1"
TOKEN = "BenchT0kenBenchT0kenBenchT0ken32"
PROCESS_TIMEOUT = 60.0  # no single child process may run longer than this


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
    """One figure against its threshold. `against`: what the figure is measured against and where the
    threshold comes from. `judged` False: the figure shows how the fakes are shaped (their fault model,
    their clock), not a promise of the tool: the table says "info" and --check does not count it."""

    name: str
    value: float | None  # None: nothing to measure (e.g. no node registered): not met
    limit: float
    unit: str
    against: str = ""
    judged: bool = True

    @property
    def met(self) -> bool:
        return self.value is not None and self.value < self.limit

    @property
    def verdict(self) -> str:
        """yes / NO for a promise; info (within) / info (outside) for a figure of the fakes' shape."""
        if not self.judged:
            return f"info ({'within' if self.met else 'outside'})"
        return "yes" if self.met else "NO"


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



def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])



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

