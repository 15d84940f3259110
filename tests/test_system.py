"""system.atomic_write: all or nothing, and durable (fsync) unless the file need not outlive a power loss."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nezha_bootstrap import system


@pytest.mark.parametrize(("durable", "fsyncs"), [(True, 2), (False, 0)])  # the file, then its directory
def test_atomic_write_fsyncs_only_what_must_survive_a_power_loss(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool, fsyncs: int) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    target = tmp_path / "dir" / "file"

    system.atomic_write(target, b"data", mode=0o640, durable=durable)

    assert (target.read_bytes(), target.stat().st_mode & 0o777, len(synced)) == (b"data", 0o640, fsyncs)
    assert [p.name for p in target.parent.iterdir()] == ["file"]  # no temporary file left
