"""The agent release host: `/releases/v<X>/nezha-agent_linux_<arch>.zip`, whose `nezha-agent` is a stub
agent (stubs/stub-agent-v1.sh, or stub-agent-v0.sh for a 0.x version), and its checksums.txt."""

from __future__ import annotations

import hashlib
import io
import zipfile

from nezha_bootstrap.testing.stubscripts import stub_script

ARCHES = ("amd64", "arm64", "386", "arm", "s390x", "riscv64", "mips", "mipsle", "loong64")


def stub_agent(version: str) -> bytes:
    """The stub agent of `version` (v0.x: the v0 agent's `service install -s -p`), printing it for -v."""
    template = "stub-agent-v0.sh" if version.startswith("0.") else "stub-agent-v1.sh"
    return stub_script(template).replace("@VERSION@", version).encode("utf-8")


def agent_zip(binary: bytes) -> bytes:
    """A release zip holding only `nezha-agent`, executable."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("nezha-agent", date_time=(2026, 8, 1, 0, 0, 0))
        info.external_attr = 0o100755 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, binary)
    return buffer.getvalue()


def release_files(version: str, arches: tuple[str, ...] = ARCHES) -> dict[str, bytes]:
    """The files of release v<version>: one zip per arch and checksums.txt, keyed by their URL path."""
    files: dict[str, bytes] = {}
    lines = []
    for arch in arches:
        asset = f"nezha-agent_linux_{arch}.zip"
        data = agent_zip(stub_agent(version))
        files[f"/releases/v{version}/{asset}"] = data
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {asset}\n")  # sha256sum's two spaces, as released
    files[f"/releases/v{version}/checksums.txt"] = "".join(lines).encode()
    return files
