"""Benchmarks of issue 4: recovery, fleet, overhead and memory, against the local fake dashboard.

    python benchmarks/bench.py [--quick] [--only NAME] [--json OUT] [--check]

One module per benchmark in this package (benchmarks/<name>.py, each with `run(plan) -> Outcome`);
this is the runner. Prints a table and writes JSON (default benchmarks/results/latest.json). Only
127.0.0.1 is used; every wait is bounded. Each target names what it is measured against; a figure
that shows how the fakes are shaped rather than what the tool promises is marked "info" and never
fails. Without --check the figures are measurements, not assertions: the exit status is 0 whether or
not a target is met, and non-zero only if a benchmark broke. With --check the exit status is 1 when a
run it timed ended with another exit code than it should (a crash, a run expected to succeed that
failed, a refusal with the wrong code) or a figure missed its threshold; each is named on stderr as a
`check:` line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: the package (and tests.hostile) from the repository root, and
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # not benchmarks/ (its zipapp.py is not the stdlib's)

from benchmarks.common import HERE, LOOPBACK, QUICK, Outcome, Plan, Sizes, Target
from benchmarks.overhead import SEED_FILE

DEFAULT_OUT = HERE / "results" / "latest.json"
NAMES = ("recovery", "fleet", "overhead", "memory", "v2fleet", "bombs", "hostile", "zipapp")


def benchmark(name: str) -> Callable[[Plan], Outcome]:
    """The `run` of benchmarks/<name>.py (imported when it runs: --only loads only what it needs)."""
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    module = importlib.import_module(f"benchmarks.{name}")
    run: Callable[[Plan], Outcome] = module.run
    return run


BENCHMARKS: dict[str, Callable[[Plan], Outcome]] = {}  # stand-ins by name (the runner's own tests)


def table(targets: list[Target]) -> str:
    rows = [("target", "measured", "threshold", "met", "measured against")]
    rows += [(t.name, "n/a" if t.value is None else f"{t.value:g}{t.unit}", f"< {t.limit:g}{t.unit}", t.verdict,
              t.against) for t in targets]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def meta(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "quick": args.quick,
        "python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts (the CI smoke run)")
    parser.add_argument("--only", choices=NAMES, action="append", help="run only this benchmark (repeatable)")
    parser.add_argument("--seed-file", type=Path, default=SEED_FILE,
                        help=f"the seed script to compare a full run with (default {SEED_FILE})")
    parser.add_argument("--json", type=Path, default=DEFAULT_OUT, help=f"write results here (default {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a run ends with another exit code than expected or a target is missed")
    return parser.parse_args(argv)


def check_failures(targets: list[Target], broken: list[str]) -> list[str]:
    """`check:` lines for every run that broke and every judged target missed (empty: all as it should be)."""
    lines = [f"check: run broke: {what}" for what in broken]
    lines += [f"check: target missed: {t.name}: {'n/a' if t.value is None else f'{t.value:g}{t.unit}'}, "
              f"limit < {t.limit:g}{t.unit}" for t in targets if t.judged and not t.met]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    saved = {name: os.environ.get(name) for name in ("NO_PROXY", "no_proxy")}
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = f"{LOOPBACK},localhost"  # the nodes' httpx trusts env
    try:
        return _main(args)
    finally:
        for name, value in saved.items():  # a caller in the same process (a test) gets its environment back
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _main(args: argparse.Namespace) -> int:
    plan = Plan(QUICK if args.quick else Sizes(), args.seed_file)
    results: dict[str, Any] = {"meta": {**meta(args), "sizes": asdict(plan.sizes)}}
    targets: list[Target] = []
    broken: list[str] = []
    for name in args.only or NAMES:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        outcome = benchmark(name)(plan)
        results[name] = {**outcome.figures, "elapsed_s": round(time.monotonic() - started, 2)}
        targets += outcome.targets
        broken += outcome.broken
    results["meta"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
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
    judged = [t for t in targets if t.judged]
    print(f"check: {'FAILED' if failures else 'passed'} ({len(broken)} runs broke, "
          f"{sum(1 for t in judged if not t.met)} of {len(judged)} targets missed)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
