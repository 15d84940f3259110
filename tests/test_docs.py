"""The documentation site (mkdocs.yml, docs/) documents what the code does: every page in the nav, every
flag and env var of every command in the reference, the exit codes of the error tree, and it builds strictly."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from nezha_bootstrap import errors
from nezha_bootstrap.cli import main
from nezha_bootstrap.errors import EXIT_CODES

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
REFERENCE = DOCS / "reference" / "commands.md"


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def nav_pages(entries: list[Any]) -> list[str]:
    """Every page a mkdocs nav names, depth first: 'page.md', {'Title': 'page.md'} or {'Section': [...]}."""
    pages: list[str] = []
    for entry in entries:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            pages.extend(nav_pages(value) if isinstance(value, list) else [value])
    return pages


def nav() -> list[str]:
    return nav_pages(yaml.safe_load(read(REPO / "mkdocs.yml"))["nav"])


def pages_on_disk() -> list[str]:
    return sorted(path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md"))


def commands() -> dict[str, click.Command]:
    ctx = click.Context(main, info_name="nezha-bootstrap")
    return {name: main.get_command(ctx, name) for name in main.list_commands(ctx)}  # type: ignore[misc]


def reference_section(name: str) -> str:
    match = re.search(rf"^## {re.escape(name)}\n(.*?)(?=^## |\Z)", read(REFERENCE), re.MULTILINE | re.DOTALL)
    assert match, f"{REFERENCE.relative_to(REPO)} has no '## {name}' section"
    return match.group(1)


def env_vars(param: click.Parameter) -> list[str]:
    envvar = getattr(param, "envvar", None)
    return [] if not envvar else [envvar] if isinstance(envvar, str) else list(envvar)


def table_codes(path: Path) -> list[int]:
    return sorted({int(code) for row in re.findall(r"^\| ([\d, ]+) \|", read(path), re.MULTILINE)
                   for code in re.split(r",\s*", row.strip())})


# --- the site's structure ---------------------------------------------------------------------------

def test_every_page_under_docs_is_in_the_nav_and_every_nav_entry_is_a_page() -> None:
    assert sorted(nav()) == pages_on_disk()


def test_no_page_is_in_the_nav_twice() -> None:
    assert sorted(set(nav())) == sorted(nav())


def test_there_is_a_before_you_start_page_for_each_dashboard_generation() -> None:
    assert {"before-you-start/v0.md", "before-you-start/v1-v2.0.md", "before-you-start/v2.1.md"} <= set(nav())


def test_the_user_documentation_says_nothing_of_how_the_project_is_developed() -> None:
    words = ("mutmut", "mutation", ".ci/run", "benchmarks/", "tests/e2e", "conftest", "CONTRIBUTING")
    found = {page: word for page in pages_on_disk() for word in words if word in read(DOCS / page)}

    assert found == {}


# --- the reference ----------------------------------------------------------------------------------

def generator() -> Any:
    spec = importlib.util.spec_from_file_location("docs_reference", REPO / "scripts/docs_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_command_reference_is_what_the_commands_say() -> None:
    # Out of date after a change to an option or its help: run `python scripts/docs_reference.py`.
    assert read(REFERENCE) == generator().page()


def test_every_command_flag_and_env_var_is_in_the_reference() -> None:
    missing = []
    for name, command in commands().items():
        section = reference_section(name)
        for param in command.params:
            names = [*param.opts, *getattr(param, "secondary_opts", [])] if isinstance(param, click.Option) else []
            missing += [f"{name} {flag}" for flag in names if f"`{flag}`" not in section]
            missing += [f"{name} {var}" for var in env_vars(param) if f"`{var}`" not in section]

    assert missing == []


def test_every_env_var_of_run_and_reconcile_is_documented() -> None:
    # Moved from README: the reference is where every setting is documented once.
    reference = read(REFERENCE)
    for name in ("run", "reconcile"):
        assert [var for p in commands()[name].params for var in env_vars(p) if f"`{var}`" not in reference] == []


def test_the_exit_codes_page_lists_exactly_the_codes_of_the_error_tree() -> None:
    documented = table_codes(DOCS / "reference/exit-codes.md")
    tree = {cls.exit_code for cls in vars(errors).values()
            if isinstance(cls, type) and issubclass(cls, errors.BootstrapError)}

    assert documented == [code for code, _ in EXIT_CODES]
    assert tree <= set(documented)


def test_troubleshooting_says_what_to_do_about_every_failing_exit_code() -> None:
    assert table_codes(DOCS / "how-to/troubleshoot.md") == [code for code, _ in EXIT_CODES if code != 0]


def test_the_settings_page_names_exactly_the_commands_that_take_dry_run() -> None:
    takes = sorted(name for name, command in commands().items()
                   for p in command.params if "--dry-run" in [*p.opts, *getattr(p, "secondary_opts", [])])
    rows = [line.split("|") for line in read(DOCS / "reference/settings.md").splitlines() if line.startswith("| `")]
    documented = sorted(name for cells in rows if cells[2].strip().startswith("`--dry-run`")
                        for name in re.findall(r"`([a-z-]+)`", cells[1]))

    assert documented == takes


# --- the build --------------------------------------------------------------------------------------

@pytest.mark.integration
def test_the_site_builds_strictly_with_no_broken_link_or_anchor(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs and mkdocs-material are not installed: pip install -e '.[docs]' to build the site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site/index.html").exists()
