"""Reading what the stub install.sh recorded about each call (demo and tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StubCall:
    argv: list[str]
    cwd: str
    stdin: str
    env: dict[str, str]


def read_calls(record_dir: Path) -> list[StubCall]:
    """The stub's calls in order (`call-1`, `call-2`, ...)."""
    calls = []
    n = 1
    while (record_dir / f"call-{n}").is_dir():
        call = record_dir / f"call-{n}"
        argv = (call / "argv").read_bytes().split(b"\0")[:-1]
        env = {}
        for line in (call / "env").read_text(errors="replace").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                env[key] = value
        calls.append(StubCall(
            argv=[a.decode() for a in argv],
            cwd=(call / "cwd").read_text(),
            stdin=(call / "stdin").read_text().strip(),
            env=env,
        ))
        n += 1
    return calls
