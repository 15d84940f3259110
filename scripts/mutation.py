#!/usr/bin/env python3
"""Mutation testing of one module with the tests named for it: `python scripts/mutation.py MODULE`.

MODULE is a path (`nezha_bootstrap/redact.py`) or a dotted name (`v0.api`, `nezha_bootstrap.v0.api`)
of one module in pyproject.toml's `[tool.nezha-bootstrap.mutation]`. The run happens in a copy of the
checkout (tracked and untracked files, without .venv), so the working tree stays free of mutmut's
`mutants/` and the run sees pyproject's `[tool.mutmut]` narrowed to this module and its tests. mutmut
runs under `nice`, on `--jobs` processes. The last line printed is the score; the exit status is 0
when at least `--min-score` percent of the mutants were killed (a timeout counts as killed: the
tests did notice), 1 when fewer were, 2 on a usage error or a failed run. `--list` names the modules.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - mutmut needs 3.10+ anyway; the tool itself stays 3.9-compatible
    sys.exit("scripts/mutation.py needs Python 3.11+ (tomllib)")

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Score:
    """mutmut's counts for one module, from mutants/mutmut-cicd-stats.json."""

    killed: int
    survived: int
    timeout: int
    suspicious: int
    no_tests: int
    skipped: int
    total: int

    @property
    def caught(self) -> int:
        return self.killed + self.timeout

    @property
    def percent(self) -> float:
        return 100.0 * self.caught / self.total if self.total else 0.0

    def line(self, module: str) -> str:
        return (f"{module}: {self.total} mutants, {self.killed} killed, {self.timeout} timed out, "
                f"{self.survived} survived, {self.no_tests} without tests, {self.suspicious} suspicious, "
                f"{self.skipped} skipped: {self.percent:.1f}% caught")


def modules(pyproject: dict) -> dict[str, list[str]]:
    """Each module under mutation testing and the tests named for it."""
    return dict(pyproject["tool"]["nezha-bootstrap"]["mutation"])


def resolve(name: str, known: dict[str, list[str]]) -> str:
    """The module path for `name`, given as a path or a dotted name, with or without the package."""
    path = name if name.endswith(".py") else name.replace(".", "/") + ".py"
    for candidate in (path, f"nezha_bootstrap/{path}"):
        if candidate in known:
            return candidate
    raise SystemExit(f"unknown module {name!r}; known: {', '.join(known)}")


def narrowed(pyproject_text: str, module: str, tests: list[str]) -> str:
    """pyproject.toml with `[tool.mutmut]` mutating only `module` and selecting only `tests`."""
    def replace(key: str, values: list[str], text: str) -> str:
        pattern = re.compile(rf"^{key} = \[.*?\]\n", re.S | re.M)
        new, count = pattern.subn(f"{key} = {json.dumps(values)}\n", text, count=1)
        if count != 1:
            raise SystemExit(f"pyproject.toml: [tool.mutmut] has no {key} list")
        return new

    text = replace("only_mutate", [module], pyproject_text)
    return replace("pytest_add_cli_args_test_selection", tests, text)


def copy_checkout(workdir: Path) -> None:
    """The checkout's tracked and untracked (not ignored) files, as they are now, into `workdir`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = workdir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


# The verdicts a resumed run keeps: killed (1; 3, pytest's internal error), timed out (SIGXCPU and mutmut's own
# codes) and caught by the type check. Every other one is tested again: survived, no tests (a new test may reach
# it now), suspicious, and SIGKILL (mutmut's "segfault": most often a run stopped with its mutants under test).
CAUGHT = frozenset({1, 3, 24, -24, 36, 152, 255, 37})


def not_caught_again(mutants: Path) -> int:
    """Mark every verdict of an earlier run but the caught ones untried, so that a resumed run tests those
    mutants against today's tests (mutmut keeps every verdict otherwise); how many."""
    count = 0
    for meta in mutants.rglob("*.py.meta"):
        data = json.loads(meta.read_text())
        codes = data.get("exit_code_by_key", {})
        again = [name for name, code in codes.items() if code is not None and code not in CAUGHT]
        for name in again:
            codes[name] = None
        if again:
            meta.write_text(json.dumps(data, indent=4))
        count += len(again)
    return count


def stale_copies(mutants: Path) -> None:
    """Remove mutmut's copies of the tests and the settings from an earlier run, keeping its verdicts.

    mutmut copies files into mutants/ once and never again, so an earlier run's tests would be used.
    The package stays: mutmut copies its unmutated modules every run and remakes a mutated one when the
    source is newer; the verdicts (`*.meta`) and the stats (which tests reach which function) are kept.
    """
    for entry in mutants.iterdir():
        if entry.name in ("nezha_bootstrap", "mutmut-stats.json"):
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def read_score(workdir: Path) -> Score:
    mutmut = [sys.executable, "-m", "mutmut"]
    subprocess.run([*mutmut, "export-cicd-stats"], cwd=workdir, check=True, capture_output=True)
    stats = json.loads((workdir / "mutants/mutmut-cicd-stats.json").read_text())
    return Score(**{key: int(stats[key]) for key in Score.__dataclass_fields__})


def main(argv: list[str] | None = None) -> int:
    pyproject_text = (REPO / "pyproject.toml").read_text()
    known = modules(tomllib.loads(pyproject_text))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("module", nargs="?", help="e.g. nezha_bootstrap/redact.py or v0.api")
    parser.add_argument("--list", action="store_true", help="name the modules and their tests, then stop")
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once (default 1)")
    parser.add_argument("--min-score", type=float, default=90.0, help="percent caught to pass (default 90)")
    parser.add_argument("--workdir", type=Path, help="where to copy the checkout (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (to `mutmut show` survivors)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the caught verdicts of an earlier run in --workdir: mutmut tests again only "
                             "the mutants not caught then, those of functions changed since, and those never "
                             "tried (the kept verdicts are not checked against today's tests: a fresh run is)")
    args = parser.parse_args(argv)
    if args.list or not args.module:
        for module, tests in known.items():
            print(f"{module}: {' '.join(tests)}")
        return 0 if args.list else 2
    module = resolve(args.module, known)
    if args.resume and not (args.workdir and (args.workdir / "mutants").is_dir()):
        parser.error("--resume needs the --workdir of an earlier run")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nezha-mutation-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.resume:
        stale_copies(workdir / "mutants")
        print(f"resuming: {not_caught_again(workdir / 'mutants')} mutants not caught before to test again; the "
              "caught ones keep their verdicts (a fresh run, as the weekly workflow's, confirms them)", flush=True)
    else:
        shutil.rmtree(workdir / "mutants", ignore_errors=True)
    copy_checkout(workdir)
    (workdir / "pyproject.toml").write_text(narrowed(pyproject_text, module, known[module]))
    print(f"mutating {module} with {' '.join(known[module])} in {workdir}", flush=True)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    run = subprocess.run(["nice", "-n", "19", sys.executable, "-m", "mutmut", "run",
                          "--max-children", str(args.jobs)], cwd=workdir, env=env)
    if run.returncode != 0:
        print(f"mutmut run failed (exit {run.returncode}); its work is in {workdir}", file=sys.stderr)
        return 2
    score = read_score(workdir)
    survivors = subprocess.run([sys.executable, "-m", "mutmut", "results"], cwd=workdir,
                               capture_output=True, text=True).stdout
    if survivors.strip():
        print(survivors.rstrip())
        print(f"see one with: cd {workdir} && {sys.executable} -m mutmut show NAME")
    if not args.keep and not survivors.strip():
        shutil.rmtree(workdir, ignore_errors=True)
    print(score.line(module))
    return 0 if score.percent >= args.min_score else 1


if __name__ == "__main__":
    sys.exit(main())
