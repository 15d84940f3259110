"""3. overhead: start-up against `import click` and the seed script, and the heavy modules a command loads."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks.common import (
    LOOPBACK,
    PROCESS_TIMEOUT,
    TOKEN,
    Outcome,
    Plan,
    Sample,
    Target,
    base_env,
    interleaved,
    measure,
    median_seconds,
    tool_argv,
)
from nezha_bootstrap.testing.fake_v0 import FakeDashboard, serve

# The seed lives in shared/ beside the repository (a CI clone gets a copy there too).
SEED_FILE = Path(__file__).resolve().parents[2] / "shared/seed/nezha-api-and-register-script.txt"
SEED_INSTALL_URL = "https://raw.githubusercontent.com/nezhahq/scripts/main/install.sh"
# The fakes' stub install.sh reports its "agent" with `python3 -c CODE URL TLS` (the secret on stdin): in
# both the seed script and `run` that Python start is the agent's cost, not the registration's. This
# stand-in, first on both commands' PATH, makes the same POST with curl (which the seed script needs anyway).
AGENT_CONNECT_SHIM = """#!/bin/sh
read -r secret
tls=false; [ "$4" = "true" ] && tls=true
curl -s -H 'Content-Type: application/json' -d "{\\"secret\\": \\"$secret\\", \\"tls\\": $tls}" \\
  "$3/_fake/agent-connect" >/dev/null
"""


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

    def shimmed_env(self) -> dict[str, str]:
        """base_env with the agent-connect stand-in first on PATH (AGENT_CONNECT_SHIM)."""
        shim = self.workdir / "shim"
        if not (shim / "python3").exists():
            shim.mkdir(exist_ok=True)
            (shim / "python3").write_text(AGENT_CONNECT_SHIM, encoding="utf-8")
            (shim / "python3").chmod(0o755)
        env = base_env()
        return {**env, "PATH": f"{shim}{os.pathsep}{env.get('PATH', os.defpath)}"}

    def tool_env(self, root: Path) -> dict[str, str]:
        return {**self.shimmed_env(), "NEZHA_DASHBOARD_URL": self.url, "NEZHA_TOKEN": TOKEN,
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
        env = {**self.shimmed_env(), "NEZHA_TOKEN": TOKEN, "NEZHA_PROBE_ADDRESS": "probe.example.test",
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



def run(plan: Plan) -> Outcome:
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
        Target("overhead: --help / import click", ratios["help_vs_import_click"], 2.0, "x",
               "`python -c 'import click'`, medians, interleaved (any click CLI pays it); issue 4's target"),
        Target("overhead: heavy modules loaded by --help", len(loaded["help"]), 1, "",
               f"{', '.join(HEAVY)}: --help needs none of them (python -X importtime)"),
    ]
    figures: dict[str, Any] = {"runs_each": plan.sizes.overhead_runs, "median": medians, "ratio": ratios,
                               "heavy_modules_loaded": loaded, "seed_file": str(plan.seed_file)}
    if "seed_script_s" in medians:
        ratios["full_run_vs_seed_script"] = round(medians["full_run_s"] / medians["seed_script_s"], 2)
        targets.append(Target("overhead: full run / seed script", ratios["full_run_vs_seed_script"], 4.0, "x",
                              "the seed script (bash, curl) against the same fake, medians, interleaved; "
                              "issue 19's target"))
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

