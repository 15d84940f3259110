"""The stub scripts of testing/stubs as they are served: each with its `# @include NAME` lines replaced by
stubs/NAME, so a part two stubs share (v0-connect.sh) has one source while each stub still travels as one
file (install.sh downloaded alone, nezha-agent alone in a release zip)."""

from __future__ import annotations

import re
from importlib import resources

_INCLUDE = re.compile(r"^# @include ([\w.-]+)\n", re.MULTILINE)


def stub_script(name: str) -> str:
    """stubs/`name` with its includes in place."""
    stubs = resources.files("nezha_bootstrap.testing").joinpath("stubs")
    text = stubs.joinpath(name).read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda match: stubs.joinpath(match.group(1)).read_text(encoding="utf-8"), text)
