"""README.md says what the tool does: its first two commands, every exit code, every env var."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from nezha_bootstrap.errors import EXIT_CODES
from tests.test_cli import env_vars_in_help

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def code_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"^```(?:sh|bash|shell)?\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


def ci_test_command() -> str:
    ci = (REPO / ".ci/run").read_text(encoding="utf-8")
    [assignment] = re.findall(r"^TEST_COMMAND=(.*)$", ci, re.MULTILINE)
    [value] = shlex.split(assignment)  # the shell's own quoting rules
    return value


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.MULTILINE | re.DOTALL)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_readme_opens_with_the_demo_command_then_the_test_command() -> None:
    before_first_section = README.split("\n## ", 1)[0]

    demo_command, test_command = code_blocks(before_first_section)[:2]

    assert re.search(r"(nezha-bootstrap|-m nezha_bootstrap) demo$", demo_command), demo_command
    assert "pytest" in test_command


def test_ci_runs_exactly_readmes_test_command() -> None:
    test_command = code_blocks(README.split("\n## ", 1)[0])[1]

    assert ci_test_command() == test_command


def test_readme_documents_every_exit_code() -> None:
    rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", section("Exit codes"), re.MULTILINE))

    assert sorted(int(code) for code in rows) == [code for code, _ in EXIT_CODES]


def test_readme_documents_every_env_var_of_run() -> None:
    missing = sorted(var for var in env_vars_in_help("run") if f"`{var}`" not in README)

    assert missing == []
