"""8. zipapp: cold and warm starts of the .pyz against the installed tool."""

from __future__ import annotations

import functools
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from benchmarks.common import (
    HERE,
    LOOPBACK,
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


def build_pyz(out: Path) -> Path:
    """packaging/build into `out` (its pinned downloads are cached in build/packaging-cache); this machine's .pyz."""
    done = subprocess.run([sys.executable, str(HERE.parent / "packaging" / "build"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"packaging/build failed: {done.stderr[-500:]}")
    [pyz] = out.glob(f"nezha-bootstrap-*-{platform.machine()}.pyz")
    return pyz


def run(plan: Plan) -> Outcome:
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
    targets = [Target(f"zipapp: warm {name} / installed", ratios[f"pyz_warm_{name}_vs_installed"], 1.5, "x",
                      "the installed tool's same command, medians, interleaved; issue 13's target")
               for name in ("help", "dry_run")]
    figures = {"runs_each": runs, "pyz_bytes": size, "median": medians, "ratio": ratios,
               "first_boot": "boot start -> registration request, zipapp vs pip user-data: measured by "
                             "tests/e2e/test_first_boot.py (systemd-nspawn, root), printed as [first-boot] lines"}
    return Outcome(figures, targets)

