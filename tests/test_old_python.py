"""An interpreter older than 3.9 exits 2 (settings: the first-boot unit does not restart it) with its
version and the remedy, on every entry: `python3 -m nezha_bootstrap`, the package's import (the
console script) and the zipapp's __main__.py. Runs the pyenv interpreters 3.6-3.8 where present."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nezha_bootstrap import MIN_PYTHON, too_old_message

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
OLD = [Path(f"/root/.pyenv/versions/{v}/bin/python") for v in ("3.6.15", "3.7.16", "3.8.18")]
ENTRIES = {
    "python -m nezha_bootstrap": ["-m", "nezha_bootstrap", "--version"],
    "the console script's import": ["-c", "from nezha_bootstrap.cli import main; main()"],
    "the zipapp's __main__.py": [str(REPO / "packaging/zipapp_main.py"), "--version"],
}


@pytest.mark.parametrize("python", OLD, ids=[p.parent.parent.name for p in OLD])
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_an_old_python_exits_2_naming_its_version_and_the_remedy(python: Path, entry: str) -> None:
    if not python.exists():
        pytest.skip(f"{python} is not installed")
    done = subprocess.run([str(python), *ENTRIES[entry]], cwd=REPO, capture_output=True, text=True, timeout=60)

    version = python.parent.parent.name
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"needs Python 3.9 or newer; this is Python {version} ({python})" in done.stderr
    assert "dnf install python39" in done.stderr and "documentation: Get the tool, Python versions" in done.stderr


def test_the_message_names_the_minimum_version_and_the_interpreter() -> None:
    text = too_old_message("3.6.8", "/usr/bin/python3")
    assert MIN_PYTHON == (3, 9)
    assert text.startswith("nezha-bootstrap needs Python 3.9 or newer; this is Python 3.6.8 (/usr/bin/python3). ")
