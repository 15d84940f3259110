"""nezha-bootstrap: register a Linux server with a Nezha dashboard and install its agent."""

# This file is the first the interpreter reads on every entry (console script, `python3 -m`, the
# zipapp), so it stays parseable by Python 3.6: no annotations import, no f-strings with `=`.
import sys
from typing import Optional  # noqa: F401 - named by the type comment below (3.6-parseable)

__version__ = "0.1.0"

MIN_PYTHON = (3, 9)
# Exit 2 (settings), never 1: an interpreter too old is the host's setting, and systemd restarts a
# unit that exits 1 six times an hour forever (Restart=on-failure with RestartPreventExitStatus=2).
TOO_OLD_EXIT = 2


def too_old_message(version=None, executable=None):
    # type: (Optional[str], Optional[str]) -> str
    """What an interpreter older than MIN_PYTHON says: its version and the remedy (docs: Python versions)."""
    version = version or sys.version.split()[0]
    executable = executable or sys.executable or "python3"
    return (
        f"nezha-bootstrap needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer; this is Python {version} "
        f"({executable}). Install a newer python3 (RHEL/Rocky/Alma 8: `dnf install python39`, then run the "
        "tool with python3.9; Ubuntu 20.04: `apt install python3.9`) or use an image whose python3 is 3.9+; "
        "see the documentation: Get the tool, Python versions"
    )


if sys.version_info < MIN_PYTHON:
    sys.stderr.write("error: " + too_old_message() + "\n")
    sys.exit(TOO_OLD_EXIT)
