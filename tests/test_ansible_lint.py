"""The collection passes ansible-lint's production profile and `ansible-test sanity` (offline but for
the package index: ansible-test's pip bootstrap comes from tests/ansible/get_pip.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COLLECTION = REPO / "ansible_collections" / "nezha" / "bootstrap"
PIP_BOOTSTRAP = "24_2"  # the pip version ansible-test 2.19 bootstraps into its sanity venvs

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(sys.version_info < (3, 11), reason=(
        "ansible-core 2.19 and ansible-lint need Python >= 3.11 on the controller; the test extra installs "
        "them only there")),
]


def tool(name: str) -> str:
    found = Path(sys.executable).parent / name
    if not found.exists():
        pytest.skip(f"{name} is not installed beside this Python (pip install -e '.[test]')")
    return str(found)


def test_ansible_lint_production_profile_passes() -> None:
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(REPO), "NO_COLOR": "1"}
    done = subprocess.run([tool("ansible-lint"), "--profile", "production", "--offline"], cwd=COLLECTION, env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Profile 'production' was required, and it passed" in done.stdout + done.stderr


def test_ansible_test_sanity_passes(tmp_path: Path) -> None:
    """Every sanity test on this Python, each in the venv ansible-test makes (requirements from PyPI)."""
    cache = tmp_path / "home/.ansible/test/cache"
    cache.mkdir(parents=True)
    shutil.copy(REPO / "tests/ansible/get_pip.py", cache / f"get_pip_{PIP_BOOTSTRAP}.py")
    shutil.rmtree(COLLECTION / "tests/output", ignore_errors=True)
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    done = subprocess.run([tool("ansible-test"), "sanity", "--venv", "--python", python, "--color", "no"],
                          cwd=COLLECTION, env=env, capture_output=True, text=True, timeout=1500,
                          stdin=subprocess.DEVNULL)
    shutil.rmtree(COLLECTION / "tests/output", ignore_errors=True)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert output.count('Running sanity test "') >= 20, output[-3000:]
