"""README.md is short and opens with what works on a fresh machine: the demo command, then the test command
(the one CI runs). Every setting and exit code is documented once, in the site (tests/test_docs.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def code_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"^```(?:sh|bash|shell)?\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


def ci_test_command() -> str:
    ci = (REPO / ".ci/run").read_text(encoding="utf-8")
    [assignment] = re.findall(r"^TEST_COMMAND=(.*)$", ci, re.MULTILINE)
    [value] = shlex.split(assignment)  # the shell's own quoting rules
    return value


def test_readme_opens_with_the_demo_command_then_the_test_command() -> None:
    before_first_section = README.split("\n## ", 1)[0]

    demo_command, test_command = code_blocks(before_first_section)[:2]

    assert re.search(r"(nezha-bootstrap|-m nezha_bootstrap) demo$", demo_command), demo_command
    assert "pytest" in test_command


def test_ci_runs_exactly_readmes_test_command() -> None:
    test_command = code_blocks(README.split("\n## ", 1)[0])[1]

    assert ci_test_command() == test_command


def test_readme_is_at_most_200_lines() -> None:
    assert len(README.splitlines()) <= 200


def test_every_relative_link_in_readme_leads_to_a_file_of_the_repository() -> None:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    missing = [target for target in targets if "://" not in target and not (REPO / target).exists()]

    assert targets and missing == []
